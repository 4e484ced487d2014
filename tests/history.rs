//! Linearizability of job writes and reads against a real server: four workers register,
//! deregister (purge) and read a handful of job IDs concurrently while the server is killed
//! with SIGKILL and restarted on the same data dir in the middle; the history (with the
//! outcomes a crash left unknown) must be linearizable (`common/linearize.rs`, which also
//! holds the checker's own unit tests). `run_history` takes the servers' addresses, so the
//! same run drives a Raft cluster.

mod common;
#[path = "common/linearize.rs"]
mod linearize;

use std::time::Duration;

use common::*;
use linearize::{Entry, Op, Ret, Running, Workload};

/// Each phase (before the fault, after it) runs until this many more operations answered.
const OPS_PER_PHASE: usize = 400;
/// ... or at most this long (then the run fails: too little happened to prove anything).
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// At least this many operations must have completed in a phase (a run that did nothing
/// proves nothing).
const MIN_DONE_PER_PHASE: usize = 20;

/// Completed operations in `h` invoked after `since` (ns).
fn done_since(h: &[Entry], since: u64) -> usize {
    h.iter()
        .filter(|e| e.invoke >= since && e.done.is_some())
        .count()
}

/// Run the workload against `addrs`, calling `fault` between the two phases (it gets the
/// running workload, e.g. to kill and restart a server), then check the history.
pub fn run_history(addrs: &[String], fault: impl FnOnce(&Running)) -> Vec<Entry> {
    let run = linearize::run_workload(addrs, &Workload::default());
    wait_until(PHASE_DEADLINE, "operations before the fault", || {
        run.completed() >= OPS_PER_PHASE
    });
    let fault_at = run.now();
    fault(&run);
    let resumed_at = run.now();
    let target = run.completed() + OPS_PER_PHASE;
    wait_until(PHASE_DEADLINE, "operations after the fault", || {
        run.completed() >= target
    });
    let history = run.finish();
    eprintln!(
        "history: {} operations ({}); fault at {:.0} ms, resumed at {:.0} ms",
        history.len(),
        linearize::summary(&history),
        fault_at as f64 / 1e6,
        resumed_at as f64 / 1e6
    );
    let before = history
        .iter()
        .filter(|e| e.done.as_ref().is_some_and(|(at, _)| *at <= fault_at))
        .count();
    assert!(
        before >= MIN_DONE_PER_PHASE,
        "only {before} operations completed before the fault"
    );
    let after = done_since(&history, resumed_at);
    assert!(
        after >= MIN_DONE_PER_PHASE,
        "only {after} operations completed after the restart"
    );
    for kind in ["register", "deregister", "read"] {
        assert!(
            history.iter().any(|e| e.done.is_some()
                && match e.op {
                    Op::Register { .. } => kind == "register",
                    Op::Deregister { .. } => kind == "deregister",
                    Op::Read { .. } => kind == "read",
                }),
            "no completed {kind}"
        );
    }
    let mut evidence = linearize::evidence(history.clone());
    if let Err(v) = linearize::check(&evidence) {
        panic!("{v}");
    }
    // The checker is engaged with this very history: one read made to see a marker nobody
    // wrote must make it fail.
    let last_read = evidence
        .iter()
        .rposition(|e| matches!(e.op, Op::Read { .. }) && e.done.is_some())
        .expect("a completed read");
    if let Some((at, _)) = evidence[last_read].done.clone() {
        evidence[last_read].done = Some((at, Ret::Value(Some("never-written".into()))));
    }
    assert!(
        linearize::check(&evidence).is_err(),
        "a read of a marker never written went unnoticed"
    );
    history
}

#[test]
fn job_writes_and_reads_stay_linearizable_across_a_kill_9_and_restart() {
    let mut server = TestAgent::server("", &[]);
    let addrs = vec![server.addr()];
    let history = run_history(&addrs, |_| {
        server.kill9();
        server.restart_after_stop();
    });
    // The registers acknowledged before the crash are durable: some read after the restart
    // saw a marker written before it (unless a later write or purge replaced it, which the
    // check above already judged).
    assert!(
        history.iter().any(|e| matches!(e.op, Op::Read { .. })
            && matches!(&e.done, Some((_, Ret::Value(Some(_)))))),
        "no read ever saw a job"
    );
}
