//! Hostile clients on one task's socket: an endless header line, hundreds of idle and
//! half-sent connections, a request flood, and a task filling its per-socket connection cap.
//! After each, the agent's memory stays bounded, another task's socket and the TCP API answer
//! within a second, and the agent is still running.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sleeper(id: &str) -> Value {
    json!({"Job": {
        "ID": id, "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{"Name": "g", "Count": 1,
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/sh", "args": ["-c", "sleep 600"]},
                "Identity": {"File": true}}]}]}})
}

fn alloc_of(agent: &TestAgent, job: &str) -> String {
    let mut id = String::new();
    wait_until(Duration::from_secs(10), "an allocation", || {
        match agent
            .get(&format!("/v1/job/{job}/allocations"))
            .json()
            .as_array()
            .and_then(|a| a.first().cloned())
        {
            Some(a) => {
                id = a["ID"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    id
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

struct Setup {
    agent: TestAgent,
    victim: PathBuf,
    bystander: PathBuf,
    token: String,
}

fn setup() -> Setup {
    let agent = TestAgent::start_in(&short_dir(), &[]);
    for id in ["victim", "bystander"] {
        let r = agent.request("PUT", "/v1/jobs", &[], sleeper(id).to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let dir = |job: &str| {
        agent
            .data_dir
            .join("alloc")
            .join(alloc_of(&agent, job))
            .join("t/secrets")
    };
    let (v, b) = (dir("victim"), dir("bystander"));
    for s in [&v, &b] {
        wait_until(Duration::from_secs(10), "sockets and token files", || {
            std::fs::symlink_metadata(s.join("api.sock"))
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false)
                && s.join("nomad_token").exists()
        });
    }
    let token = std::fs::read_to_string(b.join("nomad_token")).unwrap();
    Setup {
        victim: v.join("api.sock"),
        bystander: b.join("api.sock"),
        token,
        agent,
    }
}

/// The other task's socket and the TCP API answer within a second; the agent still runs.
fn others_still_answer(s: &mut Setup, what: &str) {
    let t = Instant::now();
    let r = unix_request(
        &s.bystander,
        "GET",
        "/v1/client/metadata",
        &[("X-Nomad-Token", &s.token)],
        b"",
    );
    assert_eq!(r.status, 200, "bystander socket after {what}");
    assert_eq!(
        s.agent.get("/v1/client/metadata").status,
        200,
        "TCP after {what}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answers took {:?} after {what}",
        t.elapsed()
    );
    let child = s.agent.child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent exited after {what}"
    );
}

fn connect(sock: &Path) -> UnixStream {
    let c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    c
}

#[test]
fn hostile_clients_on_one_socket_leave_the_agent_and_other_sockets_healthy() {
    let mut s = setup();
    let pid = s.agent.pid();
    let rss0 = rss_kib(pid);

    // 1. An endless header line: refused (431 or closed) long before memory grows.
    let mut c = connect(&s.victim);
    c.write_all(b"GET /v1/client/metadata HTTP/1.1\r\nHost: x\r\nX-Long: ")
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 {
        if c.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf[..buf.len().min(40)]).to_string();
    assert!(
        buf.is_empty() || head.contains(" 431 "),
        "endless header got {head:?}"
    );
    assert!(
        sent < 64 * 1024 * 1024,
        "the agent kept reading an endless header line"
    );
    drop(c);
    others_still_answer(&mut s, "an endless header line");

    // 2. Hundreds of idle and half-sent connections.
    let mut held = Vec::new();
    for i in 0..300 {
        let Ok(mut c) = UnixStream::connect(&s.victim) else {
            continue;
        };
        if i % 2 == 0 {
            let _ = c.write_all(b"GET /v1/client/metadata HTTP/1.1\r\nHost: x\r\nX-Nomad-");
        }
        held.push(c);
    }
    others_still_answer(&mut s, "300 idle or half-sent connections");

    // 3. The task's connection cap: with the socket full, a new connection gets a quick 503
    //    (or is closed), never a hang.
    let t = Instant::now();
    let mut c = connect(&s.victim);
    let _ =
        c.write_all(b"GET /v1/client/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    assert!(
        buf.is_empty() || text.starts_with("HTTP/1.1 503"),
        "over the cap: {text:.60}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        t.elapsed()
    );
    drop(held);

    // 4. A request flood from four threads.
    let victim = s.victim.clone();
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let v = victim.clone();
            std::thread::spawn(move || {
                let mut answered = 0;
                for _ in 0..250 {
                    if let Ok(c) = UnixStream::connect(&v) {
                        c.set_read_timeout(Some(Duration::from_secs(15))).ok();
                        let raw = build_request(
                            "GET",
                            "/v1/client/metadata",
                            &[("X-Nomad-Token", "junk")],
                            b"",
                        );
                        if exchange(c, &raw)
                            .map(|r| r.status == 403 || r.status == 503)
                            .unwrap_or(false)
                        {
                            answered += 1;
                        }
                    }
                }
                answered
            })
        })
        .collect();
    // The others answer during the flood, too.
    others_still_answer(&mut s, "the start of a request flood");
    let answered: i32 = floods.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(
        answered > 500,
        "only {answered} of 1000 flood requests were answered"
    );
    others_still_answer(&mut s, "a request flood");

    let rss1 = rss_kib(pid);
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    // The victim's own socket works again once the hostile connections are gone.
    wait_until(
        Duration::from_secs(15),
        "the victim's socket to recover",
        || {
            let tok = std::fs::read_to_string(s.victim.with_file_name("nomad_token")).unwrap();
            unix_request(
                &s.victim,
                "GET",
                "/v1/client/metadata",
                &[("X-Nomad-Token", &tok)],
                b"",
            )
            .status
                == 200
        },
    );
}
