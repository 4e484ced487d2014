//! Linearizability of job writes and reads against a real server: four workers register,
//! deregister (purge) and read a handful of job IDs concurrently while the server is killed
//! with SIGKILL and restarted on the same data dir in the middle; the history (with the
//! outcomes a crash left unknown) must be linearizable (`common/linearize.rs`, which also
//! holds the checker's own unit tests). `run_history` takes the servers' addresses, so the
//! same run drives a Raft cluster.

mod common;
#[path = "common/linearize.rs"]
mod linearize;

use common::*;
use linearize::{run_history, Op, Ret};

#[test]
fn job_writes_and_reads_stay_linearizable_across_a_kill_9_and_restart() {
    let mut server = TestAgent::server("", &[]);
    let addrs = vec![server.addr()];
    let history = run_history(&addrs, |_| {
        server.kill9();
        server.restart_after_stop();
    });
    // Not a vacuous history: reads saw jobs (durability of acknowledged writes across the
    // crash is what the linearizability check above judged).
    assert!(
        history.iter().any(|e| matches!(e.op, Op::Read { .. })
            && matches!(&e.done, Some((_, Ret::Value(Some(_)))))),
        "no read ever saw a job"
    );
}
