//! Blocking queries (`?index=N&wait=D`): a read waits until its object's index passes N, the
//! wait elapses, or the agent stops.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn index_of(r: &Response) -> u64 {
    r.header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("X-Nomad-Index")
}

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

#[test]
fn a_node_read_blocks_until_the_batcher_publishes_metadata() {
    let agent = TestAgent::start(&["-meta-batch-window", "1s"]);
    let id = agent.get_json("/v1/nodes")[0]["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let first = agent.get(&format!("/v1/node/{id}"));
    let seen = index_of(&first);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            let r = agent.get(&format!("/v1/node/{id}?index={seen}&wait=20s"));
            (r, started.elapsed())
        });
        // The change reaches the node record only when the 1 s window closes, so the waiter
        // is parked on the index by then (had it not been, it would still see the newer index).
        let r = agent.request(
            "POST",
            "/v1/client/metadata",
            &[],
            br#"{"Meta": {"woke": "yes"}}"#,
        );
        assert_eq!(r.status, 200);
        let (r, elapsed) = waiter.join().unwrap();
        assert_eq!(r.status, 200);
        assert!(index_of(&r) > seen, "answered with a newer index");
        assert_eq!(r.json()["Meta"]["woke"], "yes");
        assert!(
            elapsed < Duration::from_secs(15),
            "woken by the change, not the wait ({elapsed:?})"
        );
    });
}

#[test]
fn a_blocking_read_answers_at_the_wait_with_the_same_index() {
    let agent = TestAgent::start(&[]);
    let seen = index_of(&agent.get("/v1/nodes"));
    let started = Instant::now();
    let r = agent.get(&format!("/v1/nodes?index={seen}&wait=300ms"));
    assert_eq!(r.status, 200);
    assert_eq!(index_of(&r), seen);
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    let r = agent.get("/v1/nodes?index=1&wait=10s");
    assert_eq!(r.status, 200, "an index already passed answers at once");
    let r = agent.get("/v1/nodes?index=1&wait=forever");
    assert_eq!((r.status, r.text().as_str()), (400, "Invalid wait time"));
}

#[test]
fn job_allocations_block_until_the_alloc_changes() {
    let agent = TestAgent::start(&[]);
    let job = br#"{"Job": {"ID": "b", "Type": "batch", "Datacenters": ["dc1"], "TaskGroups": [{"Name": "g", "Count": 1,
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/sh", "args": ["-c", "sleep 1"]}}]}]}}"#;
    assert_eq!(agent.request("POST", "/v1/jobs", &[], job).status, 200);
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = agent.get(&format!("/v1/job/b/allocations?index={seen}&wait=5s"));
        assert_eq!(r.status, 200);
        if r.json()[0]["ClientStatus"] == "complete" {
            break;
        }
        let next = index_of(&r);
        assert!(next >= seen);
        seen = next;
        assert!(Instant::now() < deadline, "the alloc never completed");
    }
}

#[test]
fn sigterm_ends_open_blocking_queries_promptly() {
    let mut agent = TestAgent::start(&[]);
    let seen = index_of(&agent.get("/v1/nodes"));
    // Start from no open connection, so the thread counted below is the blocking request's.
    wait_until(
        Duration::from_secs(10),
        "earlier connections to close",
        || conn_threads(agent.pid()) == 0,
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(
        &mut s,
        &build_request(
            "GET",
            &format!("/v1/nodes?index={seen}&wait=120s"),
            &[],
            b"",
        ),
    )
    .unwrap();
    let waiter = std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(s);
        let _ = read_response(&mut r, false);
    });
    wait_until(
        Duration::from_secs(10),
        "the blocking request to be served",
        || conn_threads(agent.pid()) >= 1,
    );
    let started = Instant::now();
    let st = agent.stop();
    assert!(st.success(), "{st}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?}",
        started.elapsed()
    );
    waiter.join().unwrap();
}
