//! The binary starts, listens, answers an unknown path with Nomad's empty 404, and stops
//! cleanly on SIGTERM; idle, it runs six threads.

mod common;
use common::TestAgent;

#[test]
fn unknown_path_is_an_empty_404_and_sigterm_exits_zero() {
    let mut agent = TestAgent::start(&[]);
    let r = agent.get("/v1/does-not-exist");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    assert!(r.header("Content-Type").is_none());
    let st = agent.stop();
    assert!(st.success(), "exit status {st}");
}

#[test]
fn an_idle_agent_settles_at_six_threads() {
    // main (signal wait + stats sampling), the TCP acceptor, the state committer (the command
    // log's group commit), the metadata batcher (node updates and heartbeats), the client's
    // alloc puller (its blocking pull over the server link), the scheduler (pending evals →
    // plans); the one-shot key warm-up ends by itself.
    let agent = TestAgent::start(&[]);
    // Counted once the agent answers: the listening socket accepts before start-up is done.
    assert_eq!(agent.get("/v1/agent/health").status, 200);
    let threads = || {
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    common::wait_until(
        // Generous: the key warm-up makes an RSA key on a fresh data dir.
        std::time::Duration::from_secs(30),
        "at most 6 threads",
        || threads() <= 6,
    );
    assert_eq!(agent.get("/v1/agent/health").status, 200);
}
