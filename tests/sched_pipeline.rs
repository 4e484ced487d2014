//! The scheduler's pipeline across a leader's death, three server processes on loopback:
//! jobs registered from several writers at once keep the leader's scheduler planning ahead
//! of apply; the leader is killed with SIGKILL right after the burst (plans in flight die
//! with it); the next leader's scheduler plans every eval left pending, so none stays
//! pending and every acknowledged job has its eval processed.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::time::Duration;

/// How long a cluster may take to form (gossip join, bootstrap, first election).
const FORM: Duration = Duration::from_secs(30);
/// How long the new leader may take to plan what was left.
const SETTLE: Duration = Duration::from_secs(20);
/// Writers registering jobs at once, and jobs each.
const WRITERS: usize = 4;
const JOBS_EACH: usize = 10;

/// The evals `a` holds (its own state): `(job, status)`.
fn evals_on(a: &TestAgent) -> Option<Vec<(String, String)>> {
    let r = try_get(a, "/v1/evaluations?stale")?;
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    Some(
        v.as_array()?
            .iter()
            .map(|e| {
                (
                    e["JobID"].as_str().unwrap_or_default().to_string(),
                    e["Status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn evals_left_pending_by_a_killed_leader_are_all_planned_by_the_next_one() {
    let mut servers = cluster(3);
    let all = [0, 1, 2];
    let old = wait_leader(&servers, &all, FORM);
    let (host, port) = (servers[old].host.clone(), servers[old].port);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let host = host.clone();
            std::thread::spawn(move || {
                (0..JOBS_EACH)
                    .map(|i| format!("pipe-{w}-{i}"))
                    .filter(|id| register_job_at(&host, port, id, Duration::from_secs(10)))
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.join().expect("writer"));
    }
    assert!(
        acked.len() >= WRITERS * JOBS_EACH - 2,
        "acknowledged: {}",
        acked.len()
    );
    servers[old].kill9();
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let new = wait_leader(&servers, &live, FORM);
    let mut last = Vec::new();
    wait_until(
        SETTLE,
        "every acknowledged job's eval processed, none pending",
        || {
            let Some(evals) = evals_on(&servers[new]) else {
                return false;
            };
            let processed: BTreeSet<&String> = evals
                .iter()
                .filter(|(_, s)| s != "pending")
                .map(|(j, _)| j)
                .collect();
            let done = evals.iter().all(|(_, s)| s != "pending")
                && acked.iter().all(|j| processed.contains(j));
            last = evals;
            done
        },
    );
    assert!(last.len() >= acked.len(), "{last:?}");
}
