//! A task that exits while no agent runs, as in Nomad (whose restart tracker lives in the
//! client's task runner, not in the executor that outlives it): nothing restarts it while the
//! agent is away; its shim records the exit; the next agent reports the exit with its code and
//! then applies the restart policy.

mod common;
mod workloads_helpers;

use serde_json::{json, Value};

use common::*;
use workloads_helpers::*;

fn started_pids(a: &Value) -> Vec<i32> {
    events_of(a, "t", "Started")
        .iter()
        .filter_map(|e| e["Details"]["pid"].as_str()?.parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn a_task_that_exits_while_no_agent_runs_is_reported_and_restarted_by_the_next_agent() {
    let mut agent = TestAgent::start(&[]);
    let marker = temp_dir("exit-marker");
    std::fs::create_dir_all(&marker).unwrap();
    let stop = marker.join("stop");
    // First run: waits for the marker, then exits 3. Later runs: stay up.
    let script = format!(
        "if [ -f \"$NOMAD_TASK_DIR/ran\" ]; then echo again; exec sleep 60; fi; \
         touch \"$NOMAD_TASK_DIR/ran\"; echo first; \
         while [ ! -f '{}' ]; do sleep 0.05; done; exit 3",
        stop.display()
    );
    let mut job = sh_job("away", "service", &script);
    job["Job"]["TaskGroups"][0]["RestartPolicy"] = json!({"Attempts": 2,
        "Interval": 3_600_000_000_000u64, "Delay": 100_000_000u64, "Mode": "fail"});
    register(&agent, &job);
    let id = first_alloc(&agent, "away");
    let a = wait_task_running(&agent, &id, "t");
    let pid = started_pids(&a)[0];

    assert!(agent.stop().success());
    std::fs::write(&stop, "").unwrap();
    wait_until(WAIT, "the task to exit with no agent", || !alive(pid));
    // Its shim wrote the exit down and is gone; nothing started the task again.
    wait_until(WAIT, "the shim gone", || {
        live_shims(&agent.data_dir).is_empty()
    });
    let out = std::fs::read_to_string(
        agent
            .data_dir
            .join(format!("alloc/{id}/alloc/logs/t.stdout.0")),
    )
    .unwrap();
    assert_eq!(out, "first\n", "not restarted while no agent runs");

    agent.restart_after_stop();
    wait_until(WAIT, "restarted by the next agent", || {
        started_pids(&alloc(&agent, &id)).len() == 2
    });
    let a = wait_task_running(&agent, &id, "t");
    let types = event_types(&a, "t");
    let term = events_of(&a, "t", "Terminated");
    assert_eq!(term.len(), 1, "{types:?}");
    assert_eq!(term[0]["ExitCode"], 3, "{}", term[0]);
    assert!(
        types.ends_with(&[
            "Terminated".to_string(),
            "Restarting".to_string(),
            "Started".to_string()
        ]),
        "{types:?}"
    );
    assert_eq!(a["TaskStates"]["t"]["Restarts"], 1);
    assert_ne!(started_pids(&a)[1], pid);
    assert!(agent.log().contains("exited while the agent was away"));
    assert_eq!(read_log(&agent, &id, "t", "stdout"), "first\nagain\n");
    let _ = std::fs::remove_dir_all(&marker);
}
