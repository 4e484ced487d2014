//! `/v1/agent/join` is not a port scanner: it needs `agent:write` when ACLs are on, ends within
//! one deadline however slowly a peer answers, adds only real nomadlet peers, and never echoes
//! what a non-nomadlet service said.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A marker a hostile service puts in its answers: it must never come back to the caller.
const BANNER: &str = "SECRET-BANNER-7f3a";

/// A one-shot TCP service on loopback that answers every connection with `reply`, a byte at a
/// time every `gap` (or all at once with no gap), until `stop` is set.
fn fake_service(reply: Vec<u8>, gap: Option<Duration>) -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    l.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        while !stop2.load(Ordering::SeqCst) && Instant::now() < end {
            let Ok((mut s, _)) = l.accept() else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            s.set_nonblocking(false).ok();
            s.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            match gap {
                None => {
                    let _ = s.write_all(&reply);
                }
                Some(gap) => {
                    for b in &reply {
                        if stop2.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                            break;
                        }
                        thread::sleep(gap);
                    }
                }
            }
        }
    });
    (addr, stop)
}

fn member_names(agent: &TestAgent, token: &str) -> Vec<String> {
    let r = agent.request("GET", "/v1/agent/members", &[("X-Nomad-Token", token)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["Members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["Name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn anonymous_join_is_refused_with_acls_and_a_management_token_joins_a_real_peer() {
    let a = TestAgent::start(&["-node", "a", "-acl-enabled"]);
    let b = TestAgent::start(&["-node", "b"]);
    let path = format!("/v1/agent/join?address={}", b.addr());
    let r = a.request("PUT", &path, &[], b"");
    assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    let r = a.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let mgmt = r.json()["SecretID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(member_names(&a, &mgmt), ["a.global"]);
    let r = a.request("PUT", &path, &[("X-Nomad-Token", &mgmt)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["num_joined"], 1, "{}", r.text());
    assert_eq!(member_names(&a, &mgmt), ["a.global", "b.global"]);
}

#[test]
fn join_ends_within_its_deadline_however_slowly_a_peer_answers() {
    let a = TestAgent::start(&["-node", "a"]);
    // One byte every two seconds of a plausible reply: each read succeeds, so only an
    // overall deadline ends it (per-read timeouts alone held a join for 24 s).
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{BANNER}");
    let (slow1, stop1) = fake_service(reply.clone().into_bytes(), Some(Duration::from_secs(2)));
    let (slow2, stop2) = fake_service(reply.into_bytes(), Some(Duration::from_secs(2)));
    let started = Instant::now();
    let r = a.request(
        "PUT",
        &format!("/v1/agent/join?address={slow1}&address={slow2}"),
        &[],
        b"",
    );
    let took = started.elapsed();
    stop1.store(true, Ordering::SeqCst);
    stop2.store(true, Ordering::SeqCst);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["num_joined"], 0, "{j}");
    assert!(!r.text().contains(BANNER), "{j}");
    // The join's deadline is 5 s for everything; allow scheduling slack, far under 2 × 24 s.
    assert!(took < Duration::from_secs(9), "join took {took:?}");
    let err = j["error"].as_str().unwrap_or_default();
    assert!(err.contains(&format!("Failed to join {slow1}")), "{err}");
    assert!(err.contains(&format!("Failed to join {slow2}")), "{err}");
}

#[test]
fn join_adds_only_real_peers_and_never_echoes_what_a_service_said() {
    let a = TestAgent::start(&["-node", "a"]);
    let b = TestAgent::start(&["-node", "b"]);
    // A service that is not HTTP at all.
    let (banner, s1) = fake_service(format!("SSH-2.0-{BANNER}\r\n").into_bytes(), None);
    // An HTTP service answering an error page.
    let (page, s2) = fake_service(
        format!("HTTP/1.1 401 {BANNER}\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        None,
    );
    // A forged nomadlet answer: b's member document, copied, served from another address —
    // it claims to be b, but it is not the agent that was dialed.
    let forged_body = b.get_json("/v1/agent/self").to_string();
    let forged = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        forged_body.len(),
        forged_body
    );
    let (fake, s3) = fake_service(forged.into_bytes(), None);
    for addr in [&banner, &page, &fake] {
        let r = a.request("PUT", &format!("/v1/agent/join?address={addr}"), &[], b"");
        assert_eq!(r.status, 200, "{addr}: {}", r.text());
        let j = r.json();
        assert_eq!(j["num_joined"], 0, "{addr}: {j}");
        assert!(!r.text().contains(BANNER), "{addr}: {j}");
        assert!(
            j["error"]
                .as_str()
                .unwrap_or_default()
                .contains("is not a nomadlet agent"),
            "{addr}: {j}"
        );
    }
    for s in [s1, s2, s3] {
        s.store(true, Ordering::SeqCst);
    }
    let members = a.get_json("/v1/agent/members");
    assert_eq!(
        members["Members"].as_array().map(Vec::len),
        Some(1),
        "{members}"
    );
    // Too many addresses at once is refused outright.
    let many: String = (0..17)
        .map(|i| format!("address=127.0.0.1:{}&", 1000 + i))
        .collect();
    let r = a.request("PUT", &format!("/v1/agent/join?{many}"), &[], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    // The real peer still joins.
    let r = a.request(
        "PUT",
        &format!("/v1/agent/join?address={}", b.addr()),
        &[],
        b"",
    );
    assert_eq!(r.json()["num_joined"], 1, "{}", r.text());
}
