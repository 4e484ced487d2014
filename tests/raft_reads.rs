//! Consistent reads on a Raft leader are linearizable: a leader cut off from its majority
//! (SIGSTOPped while the others elect a new leader and take a write) that comes back
//! (SIGCONT) never answers a consistent read from its stale state — its read barrier
//! (ReadIndex: a heartbeat round a quorum answers) fails or sends the read to the new
//! leader. Separate server processes on loopback, each its own ports and data dir. And the
//! linearizability workload (`common/linearize.rs`) against three servers whose leader is
//! SIGSTOPped until the others elect a new one, then resumed.

mod common;
#[path = "common/linearize.rs"]
mod linearize;
use common::*;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a cluster may take to form (gossip join, bootstrap, first election).
const FORM: Duration = Duration::from_secs(30);
/// How long the majority may take to elect a new leader without the stopped one.
const FAILOVER: Duration = Duration::from_secs(10);
/// Reads queued at the stopped leader's HTTP port, answered once it runs again.
const QUEUED_READS: usize = 4;

/// A consistent GET written to `port` now (the kernel queues it while the agent is
/// stopped); its answer is read later.
fn queue_get(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the stopped leader");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s.write_all(&build_request("GET", path, &[], b""))
        .expect("queue a read");
    s
}

#[test]
fn a_leader_back_from_sigstop_answers_no_consistent_read_from_its_stale_state() {
    let servers = cluster(3);
    let all = [0, 1, 2];
    let old = wait_leader(&servers, &all, FORM);
    assert!(register_job_at(
        &servers[old].host,
        servers[old].port,
        "before",
        Duration::from_secs(10)
    ));
    // A healthy leader passes its barrier: a consistent read answers at once.
    let r = try_get(&servers[old], "/v1/job/before").expect("read on the leader");
    assert_eq!(r.status, 200, "{}", r.text());
    let pid = servers[old].pid() as i32;
    kill(pid, libc::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
        let new = wait_leader(&servers, &live, FAILOVER);
        assert!(
            register_job_at(
                &servers[new].host,
                servers[new].port,
                "fresh",
                Duration::from_secs(10)
            ),
            "the majority takes a write"
        );
        // Reads for the new job wait at the stopped leader, so they are the first thing it
        // sees when it runs again, before anything tells it of the newer term.
        (0..QUEUED_READS)
            .map(|_| queue_get(servers[old].port, "/v1/job/fresh"))
            .collect::<Vec<_>>()
    }));
    kill(pid, libc::SIGCONT);
    let queued = match result {
        Ok(q) => q,
        Err(p) => std::panic::resume_unwind(p),
    };
    for (i, s) in queued.into_iter().enumerate() {
        let r = read_response(&mut BufReader::new(s), false).expect("an answer");
        eprintln!("queued read {i}: {}", r.status);
        assert_ne!(r.status, 404, "read {i} answered from the stale state");
        if r.status == 200 {
            assert_eq!(r.json()["ID"], "fresh", "read {i}");
        } else {
            assert!(r.status >= 500, "read {i}: {} {}", r.status, r.text());
            assert!(r.text().contains("No cluster leader"), "{}", r.text());
        }
    }
    // Once it stepped down, the same read goes to the new leader.
    wait_until(FORM, "the old leader forwards the read", || {
        try_get(&servers[old], "/v1/job/fresh").is_some_and(|r| r.status == 200)
    });
}

#[test]
fn job_writes_and_reads_stay_linearizable_while_the_leader_is_sigstopped_and_resumed() {
    let servers = cluster(3);
    let all = [0, 1, 2];
    wait_leader(&servers, &all, FORM);
    let addrs: Vec<String> = servers.iter().map(TestAgent::addr).collect();
    let history = linearize::run_history(&addrs, |_| {
        let old = wait_leader(&servers, &all, FORM);
        let pid = servers[old].pid() as i32;
        kill(pid, libc::SIGSTOP);
        let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_leader(&servers, &live, FAILOVER)
        }));
        kill(pid, libc::SIGCONT);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    // Not a vacuous history: reads saw jobs.
    assert!(
        history
            .iter()
            .any(|e| matches!(e.op, linearize::Op::Read { .. })
                && matches!(&e.done, Some((_, linearize::Ret::Value(Some(_)))))),
        "no read ever saw a job"
    );
}
