//! The idle `-dev` agent runs at most three threads (main, the HTTP acceptor, the metadata
//! batcher): the scheduler, the state committer and the alloc puller run only while they
//! have work. A job registered then runs to completion (they come back on demand), and the
//! agent is idle again afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{true_job, wait_until, TestAgent, WAIT_SLACK};

/// Threads an idle `-dev` agent may run.
const IDLE_THREADS: usize = 3;

/// How long the agent may take to become idle: start-up or a job, plus the workers' idle
/// period (3 s), with room for a loaded machine (times `WAIT_SLACK`).
const IDLE_WITHIN: Duration = Duration::from_secs(10);

/// The names of the agent's threads now.
fn threads(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return names;
    };
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        names.push(comm.trim().to_string());
    }
    names.sort();
    names
}

/// Wait until the agent runs at most [`IDLE_THREADS`] threads; the failure names them.
fn wait_idle(a: &TestAgent, when: &str) {
    let deadline = Instant::now() + IDLE_WITHIN * WAIT_SLACK;
    loop {
        let seen = threads(a.pid());
        if !seen.is_empty() && seen.len() <= IDLE_THREADS {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: the idle agent still runs {} threads (at most {IDLE_THREADS} expected): {seen:?}",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Register a batch job running `/bin/true` and wait until its alloc completed.
fn run_job(a: &TestAgent, id: &str) {
    let r = a.request("POST", "/v1/jobs", &[], &true_job(id));
    assert_eq!(r.status, 200, "register {id}: {}", r.text());
    wait_until(
        Duration::from_secs(20),
        &format!("job {id} completes"),
        || {
            let allocs = a.get_json(&format!("/v1/job/{id}/allocations"));
            allocs
                .as_array()
                .is_some_and(|v| !v.is_empty() && v.iter().all(|x| x["ClientStatus"] == "complete"))
        },
    );
}

#[test]
fn an_idle_dev_agent_runs_three_threads_and_its_workers_come_back_on_demand() {
    let mut a = TestAgent::start(&[]);
    wait_idle(&a, "after start-up");
    // The workers start for the job (scheduler, committer, puller, the task's runner) ...
    run_job(&a, "idle-first");
    // ... and end again: the finished task's runner is joined as well.
    wait_idle(&a, "after a job");
    // Twice more from idle, one right after the other: each finds its workers gone.
    run_job(&a, "idle-second");
    run_job(&a, "idle-third");
    wait_idle(&a, "after two more jobs");
    let names = threads(a.pid());
    assert!(
        names.iter().any(|n| n == "meta-batcher"),
        "the metadata batcher stays: {names:?}"
    );
    assert!(a.stop().success(), "the agent stops cleanly");
}
