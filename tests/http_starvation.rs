//! Starving the HTTP layer, on the real binary: bodies declared and never sent, one client
//! hogging the body budget, blocking queries whose clients left, one address filling the
//! connection caps, a server full of idle keep-alives, and an agent short of descriptors.
//! In every case other clients are still served, and promptly.

mod common;
use common::*;

use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const OTHER: [u8; 4] = [127, 0, 0, 2];
const ME: [u8; 4] = [127, 0, 0, 1];

/// Threads of the agent serving a connection (`http-conn-*`).
fn conn_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with("http-conn"))
                .count()
        })
        .unwrap_or(0)
}

/// `Threads:` of /proc/<pid>/status.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u64::MAX)
}

/// The send and receive queues (`tx_queue`, `rx_queue`) of the loopback TCP socket from
/// `local` to `remote`, from /proc/net/tcp.
fn tcp_queues(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        std::net::SocketAddr::V6(_) => None,
    };
    let (l, r) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// Whether everything written on `s` has reached the agent and been read by it: nothing
/// unacknowledged on our side, nothing unread on the agent's.
fn taken_in(s: &TcpStream) -> bool {
    let (Ok(me), Ok(agent)) = (s.local_addr(), s.peer_addr()) else {
        return false;
    };
    tcp_queues(me, agent).is_some_and(|(tx, _)| tx == 0)
        && tcp_queues(agent, me).is_some_and(|(_, rx)| rx == 0)
}

/// A connection from `from` with 5 s read and write deadlines.
fn open(agent: &TestAgent, from: [u8; 4]) -> TcpStream {
    let s = connect_from(from, agent.port).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One request with `Connection: close` from `from`.
fn request_from(
    agent: &TestAgent,
    from: [u8; 4],
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    exchange(
        open(agent, from),
        &build_request(method, path, headers, body),
    )
}

/// A metadata write whose JSON body is padded with whitespace to `size` bytes.
fn padded_meta(size: usize) -> Vec<u8> {
    let mut body = br#"{"Meta": {"starved": "no"}}"#.to_vec();
    body.resize(size, b' ');
    body
}

/// Wait until the agent serves requests and no connection thread is left: the harness's
/// readiness probes (accepted before this request) are gone, so they count against no cap.
fn settle(agent: &TestAgent) {
    assert_eq!(agent.get("/v1/agent/health").status, 200);
    wait_until(Duration::from_secs(10), "no open connection", || {
        conn_threads(agent.pid()) == 0
    });
}

#[test]
fn declared_bodies_hold_no_budget_and_one_client_cannot_take_it_all() {
    // 1.5 MiB for bodies in all, 1 MiB of it for any one client.
    let agent = TestAgent::start_with(
        &temp_dir("starve"),
        &[],
        &[
            ("NOMADLET_HTTP_MAX_BODY_BYTES_IN_FLIGHT", "1572864"),
            ("NOMADLET_HTTP_MAX_BODY_BYTES_PER_CLIENT", "1048576"),
            ("NOMADLET_HTTP_BODY_TIMEOUT_MS", "10000"),
        ],
        None,
    );
    // Eight connections declare 8 MiB job bodies and send none of it. The 100 Continue each
    // gets shows its head was taken in.
    let mut silent = Vec::new();
    for _ in 0..8 {
        let mut s = open(&agent, OTHER);
        s.write_all(
            b"PUT /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        let mut line = [0u8; 25];
        s.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"HTTP/1.1 100 Continue\r\n\r\n");
        silent.push(s);
    }
    let r = request_from(
        &agent,
        ME,
        "POST",
        "/v1/client/metadata",
        &[],
        &padded_meta(256 * 1024),
    )
    .unwrap();
    assert_eq!(
        r.status,
        200,
        "a write beside declared bodies: {}",
        r.text()
    );

    // Bodies that do arrive are counted, per client: three 500 KiB uploads from one address
    // pass its 1 MiB share. Each is sent once the one before is all taken in, so the first
    // two hold 1000 KiB and the third is refused (sent at once, a race could refuse all three:
    // each can be short of the same last bytes at the same moment).
    let head = b"PUT /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 614400\r\n\r\n";
    let mut uploads: Vec<TcpStream> = Vec::new();
    for i in 0..3 {
        let mut s = open(&agent, OTHER);
        s.write_all(head).unwrap();
        // The one refused may be cut off while it is still being written.
        let _ = s.write_all(&vec![b' '; 500 * 1024]);
        if i < 2 {
            wait_until(
                Duration::from_secs(10),
                "the agent to take in an upload",
                || taken_in(&s),
            );
        }
        s.set_nonblocking(true).unwrap();
        uploads.push(s);
    }
    let mut got = vec![Vec::new(); uploads.len()];
    wait_until(
        Duration::from_secs(5),
        "an upload over its client's share to be refused",
        || {
            for (s, g) in uploads.iter_mut().zip(got.iter_mut()) {
                let mut buf = [0u8; 512];
                if let Ok(n) = s.read(&mut buf) {
                    g.extend_from_slice(&buf[..n]);
                }
            }
            got.iter().any(|g| g.starts_with(b"HTTP/1.1 503"))
        },
    );
    let refused: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(g).to_string())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(
        refused
            .iter()
            .all(|t| t.starts_with("HTTP/1.1 503") && t.ends_with("server busy, retry later")),
        "{refused:?}"
    );
    assert_eq!(
        (got[0].len(), got[1].len(), refused.len()),
        (0, 0, 1),
        "only the upload past the share is refused: {refused:?}"
    );
    // The rest of the server's budget is still there for everyone else.
    let r = request_from(
        &agent,
        ME,
        "POST",
        "/v1/client/metadata",
        &[],
        &padded_meta(256 * 1024),
    )
    .unwrap();
    assert_eq!(
        r.status,
        200,
        "a write beside a client at its share: {}",
        r.text()
    );
    drop(uploads);
    drop(silent);
}

#[test]
fn a_task_socket_refuses_a_body_without_a_token_before_reading_it() {
    let agent = TestAgent::start_with(
        &short_dir(),
        &[],
        &[("NOMADLET_HTTP_MAX_BODY_BYTES_IN_FLIGHT", "1048576")],
        None,
    );
    let job = json!({"Job": {
        "ID": "sleeper", "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{"Name": "g", "Count": 1,
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/sh", "args": ["-c", "sleep 600"]},
                "Identity": {"File": true}}]}]}});
    let r = agent.request("PUT", "/v1/jobs", &[], job.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let mut alloc = String::new();
    wait_until(Duration::from_secs(10), "an allocation", || {
        let list = agent.get_json("/v1/job/sleeper/allocations");
        match list.as_array().and_then(|a| a.first()) {
            Some(a) => {
                alloc = a["ID"].as_str().unwrap_or_default().to_string();
                true
            }
            None => false,
        }
    });
    let secrets = agent.data_dir.join("alloc").join(&alloc).join("t/secrets");
    let sock = secrets.join("api.sock");
    wait_until(
        Duration::from_secs(10),
        "the task's socket and token",
        || {
            std::fs::symlink_metadata(&sock)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false)
                && secrets.join("nomad_token").exists()
        },
    );

    // Eight 8 MiB bodies without a token: each is told 401 at once, before any body byte.
    let mut refused = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"PUT /v1/client/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n",
        )
        .unwrap();
        let r = read_response(&mut BufReader::new(&mut s), false).expect("a 401");
        assert_eq!((r.status, r.text().as_str()), (401, "Unauthorized"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "401 took {:?}",
            started.elapsed()
        );
        refused.push(s);
    }
    // The task's own write, with its token, still goes through.
    let token = std::fs::read_to_string(secrets.join("nomad_token")).unwrap();
    let r = unix_request(
        &sock,
        "POST",
        "/v1/client/metadata",
        &[("X-Nomad-Token", token.trim())],
        &padded_meta(64 * 1024),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    drop(refused);
}

#[test]
fn an_invalid_acl_token_is_refused_before_its_body() {
    let agent = TestAgent::start_with(
        &temp_dir("starve"),
        &["-acl-enabled"],
        &[("NOMADLET_HTTP_BODY_TIMEOUT_MS", "10000")],
        None,
    );
    let started = Instant::now();
    let mut s = open(&agent, ME);
    s.write_all(
        b"PUT /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Nomad-Token: 00000000-0000-0000-0000-000000000000\r\nContent-Length: 8388608\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(&mut s), false).expect("a 403");
    assert_eq!((r.status, r.text().as_str()), (403, "ACL token not found"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "403 took {:?}",
        started.elapsed()
    );
}

#[test]
fn blocking_queries_free_their_slots_as_soon_as_their_clients_leave() {
    const CAP: usize = 40;
    let agent = TestAgent::start_with(
        &temp_dir("starve"),
        &[],
        &[("NOMADLET_HTTP_MAX_CONNS_PER_LISTENER", "40")],
        None,
    );
    let pid = agent.pid();
    settle(&agent);
    let baseline = threads(pid);
    let waiters: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = open(&agent, ME);
            s.write_all(&build_request(
                "GET",
                "/v1/nodes?index=18446744073709551615&wait=300s",
                &[],
                b"",
            ))
            .unwrap();
            s
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "every blocking query to wait",
        || conn_threads(pid) == CAP,
    );
    // The listener is full of waiting queries.
    let r = request_from(&agent, ME, "GET", "/v1/agent/health", &[], b"").unwrap();
    assert_eq!((r.status, r.text().as_str()), (503, "too many connections"));

    drop(waiters);
    let left = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "the waiters' slots and threads to be freed",
        || conn_threads(pid) == 0 && threads(pid) <= baseline,
    );
    let freed = left.elapsed();
    // As they leave, not at a poll interval or the query's 5 min wait.
    assert!(freed < Duration::from_secs(3), "freed after {freed:?}");
    let r = request_from(&agent, ME, "GET", "/v1/agent/health", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!("{CAP} abandoned blocking queries freed in {freed:?}");
}

/// An agent whose config file sets `limits.http_max_conns_per_client`.
fn with_conns_per_client(n: usize) -> TestAgent {
    TestAgent::start_with_config(
        "json",
        &json!({"limits": {"http_max_conns_per_client": n}}).to_string(),
    )
}

/// Whatever the server sends before it closes (to the read deadline).
fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn one_address_is_capped_at_http_max_conns_per_client_with_nomads_429() {
    const CAP: usize = 5;
    let agent = with_conns_per_client(CAP);
    settle(&agent);
    let mut held: Vec<TcpStream> = (0..CAP).map(|_| open(&agent, ME)).collect();
    let deadline = Instant::now() + Duration::from_secs(5) * WAIT_SLACK;
    let mut seen = conn_threads(agent.pid());
    while seen != CAP && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        // A held connection the agent refused (the place of an earlier connection of this
        // address, such as the harness's start-up probe, not yet given back when it came)
        // is opened again.
        for s in held.iter_mut() {
            let mut b = [0u8; 1];
            let _ = s.set_nonblocking(true);
            let refused = s.peek(&mut b).is_ok();
            let _ = s.set_nonblocking(false);
            if refused {
                *s = open(&agent, ME);
            }
        }
        seen = conn_threads(agent.pid());
    }
    assert_eq!(
        seen,
        CAP,
        "connection threads serving the client; agent log:\n{}",
        agent.log()
    );
    // One more from the same address: Nomad's answer, then the close.
    let started = Instant::now();
    let mut over = open(&agent, ME);
    let _ = over.write_all(&build_request("GET", "/v1/agent/health", &[], b""));
    let text = read_all(over);
    assert_eq!(
        text,
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 81\r\n\
         Connection: close\r\n\r\nYour IP is issuing too many concurrent connections, please rate limit your calls\n"
    );
    // At once, not at the 5 s read deadline.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "429 after {took:?}");
    // Another address is served meanwhile.
    let r = request_from(&agent, OTHER, "GET", "/v1/agent/health", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A place given back is a place to use again.
    drop(held);
    wait_until(
        Duration::from_secs(5),
        "the address to be admitted again",
        || {
            request_from(&agent, ME, "GET", "/v1/agent/health", &[], b"")
                .map(|r| r.status == 200)
                .unwrap_or(false)
        },
    );
}

#[test]
fn http_max_conns_per_client_zero_turns_the_cap_off() {
    let agent = with_conns_per_client(0);
    // More than the default cap of 100, all from one address, all kept open.
    let mut held = Vec::new();
    for i in 0..120 {
        let mut s = open(&agent, ME);
        s.write_all(b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_response(&mut BufReader::new(&mut s), false)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(r.status, 200, "connection {i}: {}", r.text());
        held.push(s);
    }
}

#[test]
fn a_server_full_of_idle_keep_alives_sheds_one_for_a_newcomer() {
    const TOTAL: usize = 8;
    let agent = TestAgent::start_with(
        &temp_dir("starve"),
        &[],
        &[("NOMADLET_HTTP_MAX_CONNS_TOTAL", "8")],
        None,
    );
    settle(&agent);
    let mut idle = Vec::new();
    for _ in 0..TOTAL {
        let mut s = open(&agent, ME);
        s.write_all(b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
        idle.push(r.into_inner());
    }
    // A newcomer is served: one idle keep-alive (the one idle longest; the unit tests pin
    // which) made room, and only one.
    let r = request_from(&agent, OTHER, "GET", "/v1/agent/health", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let closed = |s: &TcpStream| {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let gone = match (&*s).read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        };
        s.set_nonblocking(false).unwrap();
        gone
    };
    wait_until(
        Duration::from_secs(2),
        "an idle keep-alive to be shed",
        || idle.iter().any(&closed),
    );
    let shed: Vec<usize> = (0..TOTAL).filter(|i| closed(&idle[*i])).collect();
    assert_eq!(shed.len(), 1, "shed {shed:?}");
    for (i, s) in idle.iter_mut().enumerate().filter(|(i, _)| *i != shed[0]) {
        s.write_all(b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_response(&mut BufReader::new(&mut *s), false)
            .unwrap_or_else(|e| panic!("keep-alive {i} was shed too: {e}"));
        assert_eq!(r.status, 200);
    }
}

#[test]
fn with_128_descriptors_every_connection_is_answered_promptly() {
    raise_open_files_limit(4096);
    let agent = TestAgent::start_with(
        &temp_dir("starve"),
        &[],
        &[("NOMADLET_HTTP_MAX_CONNS_PER_CLIENT", "0")],
        Some(128),
    );
    // 500 keep-alive requests whose clients stay: more than the agent has descriptors.
    let mut conns = Vec::new();
    for _ in 0..500 {
        let Ok(mut s) = TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", agent.port).parse().unwrap(),
            Duration::from_secs(2),
        ) else {
            continue;
        };
        if s.write_all(b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_ok()
        {
            s.set_nonblocking(true).unwrap();
            conns.push((s, Vec::new(), false));
        }
    }
    assert!(
        conns.len() >= 450,
        "only {} connections opened",
        conns.len()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut open = 0;
        for (s, got, done) in conns.iter_mut().filter(|(_, _, d)| !*d) {
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(0) => *done = true,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    *done = got.windows(4).any(|w| w == b"\r\n\r\n");
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                Err(_) => *done = true,
            }
        }
        if open == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let hanging = conns.iter().filter(|(_, _, d)| !*d).count();
    let status = |code: &[u8]| {
        conns
            .iter()
            .filter(|(_, g, _)| g.starts_with(b"HTTP/1.1 ") && g.get(9..12) == Some(code))
            .count()
    };
    let (ok, busy) = (status(b"200"), status(b"503"));
    eprintln!(
        "{} connections: {ok} answered 200, {busy} answered 503, {hanging} unanswered",
        conns.len()
    );
    assert_eq!(hanging, 0, "connections left unanswered");
    assert!(ok > 0, "nothing was served");
    drop(conns);
    assert!(Path::new(&format!("/proc/{}", agent.pid())).exists());
    let r = agent.get("/v1/agent/health");
    assert_eq!(r.status, 200);
}
