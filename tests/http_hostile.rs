//! The HTTP layer against hostile clients, on the real binary: huge and numerous headers,
//! floods of idle and half-sent connections, oversized bodies, smuggling framings, and an
//! agent with too few file descriptors. After each case the agent is alive, its memory is
//! bounded and a normal request is still served within a second.

mod common;
use common::*;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Short deadlines so the cases do not wait out the real ones.
const ENV: &[(&str, &str)] = &[
    ("NOMADLET_HTTP_HEAD_TIMEOUT_MS", "1000"),
    ("NOMADLET_HTTP_BODY_TIMEOUT_MS", "1000"),
    ("NOMADLET_HTTP_IDLE_TIMEOUT_MS", "1000"),
];
const MAX_RSS_KIB: u64 = 64 * 1024;
/// Per-listener cap (limits.rs MAX_CONNS_PER_LISTENER) plus the agent's own threads.
const MAX_THREADS: u64 = 256 + 64;

fn start(nofile: Option<u32>) -> TestAgent {
    TestAgent::start_with(&temp_dir("hostile"), &[], ENV, nofile)
}

fn sock_addr(agent: &TestAgent) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], agent.port))
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with(['R', 'S', 'D']))
        })
        .unwrap_or(false)
}

/// One `GET /v1/does-not-exist` within what is left of `deadline`.
fn normal_request(agent: &TestAgent, deadline: Instant) -> Result<u16, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("deadline passed".into());
    }
    let s = TcpStream::connect_timeout(&sock_addr(agent), left).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    let r = exchange(s, &build_request("GET", "/v1/does-not-exist", &[], b""))
        .map_err(|e| e.to_string())?;
    Ok(r.status)
}

/// Served within 1 s (retrying a refusal inside that second).
fn served_within_a_second(agent: &TestAgent) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1);
    let mut last = String::new();
    while Instant::now() < deadline {
        match normal_request(agent, deadline) {
            Ok(404) => return Ok(started.elapsed()),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(last)
}

/// The checks after every case.
fn assert_healthy(agent: &TestAgent, case: &str) {
    let pid = agent.pid();
    assert!(alive(pid), "{case}: agent died\n{}", agent.log());
    let took = match served_within_a_second(agent) {
        Ok(t) => t,
        Err(e) => panic!(
            "{case}: a normal request was not served within 1 s: {e}\n{}",
            agent.log()
        ),
    };
    let rss = status_field(pid, "VmRSS:").unwrap_or(u64::MAX);
    assert!(rss < MAX_RSS_KIB, "{case}: RSS {rss} KiB");
    let threads = status_field(pid, "Threads:").unwrap_or(u64::MAX);
    assert!(threads < MAX_THREADS, "{case}: {threads} threads");
    eprintln!("{case}: normal request in {took:?}, RSS {rss} KiB, {threads} threads");
    assert!(alive(pid), "{case}: agent died\n{}", agent.log());
}

/// Raise this test process's open-files limit (for the floods of client sockets).
fn raise_nofile(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let r = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    if r.current.is_some_and(|cur| cur < want) {
        let current = Some(r.maximum.map_or(want, |max| want.min(max)));
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current,
                maximum: r.maximum,
            },
        );
    }
}

fn connect(agent: &TestAgent) -> TcpStream {
    let s = TcpStream::connect_timeout(&sock_addr(agent), Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Read one response if the agent sent one before closing.
fn response_of(s: TcpStream) -> Option<Response> {
    read_response(&mut BufReader::new(s), false).ok()
}

#[test]
fn a_100_mib_header_line_is_refused_without_being_buffered() {
    let agent = start(None);
    let mut s = connect(&agent);
    s.write_all(b"GET /v1/does-not-exist HTTP/1.1\r\nHost: x\r\nX-Big: ")
        .unwrap();
    let chunk = vec![b'a'; 1024 * 1024];
    let mut sent = 0usize;
    for _ in 0..100 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(
        sent < 100 * 1024 * 1024,
        "the agent read a 100 MiB header line to the end"
    );
    if let Some(r) = response_of(s) {
        assert_eq!(r.status, 431);
    }
    assert_healthy(&agent, "100 MiB header line");
}

#[test]
fn ten_thousand_one_byte_headers_get_431() {
    let agent = start(None);
    let mut s = connect(&agent);
    let mut raw = b"GET /v1/does-not-exist HTTP/1.1\r\n".to_vec();
    for i in 0..10_000 {
        raw.extend_from_slice(format!("{}: y\r\n", (b'a' + (i % 26) as u8) as char).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let _ = s.write_all(&raw);
    let r = response_of(s).expect("a 431 before the close");
    assert_eq!(r.status, 431);
    assert_eq!(r.text(), "request header fields too large");
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_healthy(&agent, "10 000 headers");
}

#[test]
fn a_thousand_idle_and_a_thousand_half_sent_connections() {
    raise_nofile(8192);
    let agent = start(None);
    let mut held = Vec::new();
    for i in 0..2000 {
        let Ok(mut s) = TcpStream::connect_timeout(&sock_addr(&agent), Duration::from_secs(2))
        else {
            continue;
        };
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /v1/does-not-exist HTTP/1.1\r\nHost: half-");
        }
        held.push(s);
    }
    assert!(held.len() > 1000, "only {} connections opened", held.len());
    let pid = agent.pid();
    let threads = status_field(pid, "Threads:").unwrap_or(u64::MAX);
    assert!(threads < MAX_THREADS, "{threads} threads under the flood");
    // Those over the per-client cap (Nomad's 429) or the per-listener cap (503) are told so
    // (as the acceptor reaches them).
    let mut refused = vec![false; held.len()];
    for s in &held {
        s.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while refused.iter().filter(|r| **r).count() <= 500 && Instant::now() < deadline {
        for (s, r) in held.iter().zip(refused.iter_mut()) {
            let mut buf = [0u8; 12];
            if !*r
                && (&*s).read(&mut buf).is_ok()
                && (&buf == b"HTTP/1.1 503" || &buf == b"HTTP/1.1 429")
            {
                *r = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = refused.iter().filter(|r| **r).count();
    assert!(
        refused > 500,
        "only {refused} connections over the caps got a 429 or 503"
    );
    // While the flood is still open, the head deadline frees the slots it holds.
    wait_until(
        Duration::from_secs(5),
        "a request served during the flood",
        || normal_request(&agent, Instant::now() + Duration::from_millis(500)) == Ok(404),
    );
    drop(held);
    assert_healthy(&agent, "2000 idle and half-sent connections");
}

#[test]
fn bodies_over_the_limit_get_413_by_length_and_by_chunks() {
    let agent = start(None);
    // By Content-Length: refused before the body is sent at all.
    let mut s = connect(&agent);
    s.write_all(b"POST /v1/does-not-exist HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let r = response_of(s).expect("413 before the body");
    assert_eq!(
        (r.status, r.text().as_str()),
        (413, "request body too large")
    );

    // By chunks: refused once the decoded size passes the limit.
    let mut s = connect(&agent);
    s.write_all(
        b"POST /v1/does-not-exist HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'z', 0x10000));
    chunk.extend_from_slice(b"\r\n");
    for _ in 0..64 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    let r = response_of(s).expect("413 while decoding chunks");
    assert_eq!(r.status, 413);
    assert_healthy(&agent, "bodies over the limit");
}

#[test]
fn smuggling_framings_get_400() {
    let agent = start(None);
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
    ] {
        let mut s = connect(&agent);
        let raw = format!("POST /v1/does-not-exist HTTP/1.1\r\nHost: x\r\n{head}\r\n0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\n\r\n");
        s.write_all(raw.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let first = read_response(&mut r, false).expect("a 400");
        assert_eq!(first.status, 400, "{head:?}");
        assert_eq!(first.header("Connection"), Some("close"));
        // Nothing after it: the smuggled request is never answered.
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "{head:?}: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert_healthy(&agent, "smuggling framings");
}

#[test]
fn an_agent_with_64_fds_survives_more_connections_than_fds() {
    raise_nofile(4096);
    let agent = start(Some(64));
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect_timeout(&sock_addr(&agent), Duration::from_millis(300)) {
            held.push(s);
        }
    }
    assert!(held.len() > 64, "only {} connections opened", held.len());
    // Refused at the connection cap fitted to its fd limit, or at accept failing for want of
    // descriptors.
    wait_until(
        Duration::from_secs(5),
        "the agent to hit its fd limit",
        || {
            let log = agent.log();
            log.contains("accept on") || log.contains("connection cap reached")
        },
    );
    assert!(
        alive(agent.pid()),
        "agent died under EMFILE\n{}",
        agent.log()
    );
    drop(held);
    assert_healthy(&agent, "more connections than fds");
}

#[test]
fn a_slowloris_head_is_cut_by_the_whole_head_deadline_and_logged_by_phase() {
    let agent = TestAgent::start_with(&temp_dir("hostile"), &["-log-level", "DEBUG"], ENV, None);
    let mut s = connect(&agent);
    let started = Instant::now();
    // One byte every 100 ms: each read is quick, the head never completes.
    for b in
        b"GET /v1/does-not-exist HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
    {
        if s.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the trickle was never cut"
    );
    if let Some(r) = response_of(s) {
        assert_eq!(r.status, 408);
    }
    wait_until(
        Duration::from_secs(2),
        "a log line naming the phase",
        || agent.log().contains("request head timeout"),
    );
    assert_healthy(&agent, "slowloris");
}

#[test]
fn sigterm_with_idle_and_half_sent_connections_exits_promptly() {
    let mut agent = start(None);
    let mut idle = connect(&agent);
    idle.write_all(&build_request("GET", "/v1/does-not-exist", &[], b"")[..])
        .unwrap();
    let mut keep = connect(&agent);
    keep.write_all(b"GET /v1/does-not-exist HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(keep.try_clone().unwrap());
    assert_eq!(read_response(&mut r, false).unwrap().status, 404);
    let mut half = connect(&agent);
    half.write_all(b"GET /v1/does-not-exist HTTP/1.1\r\nHo")
        .unwrap();
    let started = Instant::now();
    let st = agent.stop();
    assert!(st.success(), "exit status {st}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
}
