//! The server's scheduler as one agent shows it: evals queued by the register and run by
//! the scheduler thread, the job summary, placement failures with Nomad's metrics, blocked
//! evals that a node metadata change unblocks, system jobs.

mod common;
mod workloads_helpers;
use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

fn with_constraint(job: &mut Value, l: &str, op: &str, r: &str) {
    job["Job"]["Constraints"] = json!([{"LTarget": l, "Operand": op, "RTarget": r}]);
}

fn eval_of(agent: &TestAgent, reply: &Value) -> Value {
    wait_eval_done(agent, reply["EvalID"].as_str().expect("EvalID"))
}

#[test]
fn the_summary_counts_each_groups_allocs_and_what_is_queued() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("sum", "service", "sleep 30");
    job["Job"]["TaskGroups"][0]["Count"] = json!(2);
    let r = register(&agent, &job);
    let eval = eval_of(&agent, &r);
    assert_eq!(eval["Status"], "complete", "{eval}");
    wait_until(WAIT, "both allocs running", || {
        let s = agent.get_json("/v1/job/sum/summary");
        s["Summary"]["g"]["Running"] == 2
    });
    let s = agent.get_json("/v1/job/sum/summary");
    assert_eq!(
        s["Summary"]["g"],
        json!({"Queued": 0, "Complete": 0, "Failed": 0, "Running": 2, "Starting": 0,
            "Lost": 0, "Unknown": 0})
    );
    assert_eq!(s["JobID"], "sum");
    // The list carries the same summary.
    let list = agent.get_json("/v1/jobs");
    let stub = list
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["ID"] == "sum")
        .unwrap();
    assert_eq!(stub["JobSummary"]["Summary"]["g"]["Running"], 2);
    assert_eq!(agent.request("DELETE", "/v1/job/sum", &[], b"").status, 200);
}

#[test]
fn an_impossible_constraint_and_an_impossible_ask_report_nomads_metrics_and_block() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("win", "service", "sleep 30");
    with_constraint(&mut job, "${attr.kernel.name}", "=", "windows");
    let eval = eval_of(&agent, &register(&agent, &job));
    assert_eq!(eval["Status"], "complete", "{eval}");
    let m = &eval["FailedTGAllocs"]["g"];
    assert_eq!(m["NodesEvaluated"], 1, "{m}");
    assert_eq!(m["NodesFiltered"], 1);
    assert_eq!(m["NodesInPool"], 1);
    assert_eq!(m["ConstraintFiltered"]["${attr.kernel.name} = windows"], 1);
    assert!(m["NodesAvailable"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == 1));
    assert_eq!(eval["QueuedAllocations"]["g"], 1);
    let blocked = agent.get_json(&format!(
        "/v1/evaluation/{}",
        eval["BlockedEval"].as_str().expect("BlockedEval")
    ));
    assert_eq!(blocked["Status"], "blocked");
    assert_eq!(blocked["TriggeredBy"], "queued-allocs");
    let s = agent.get_json("/v1/job/win/summary");
    assert_eq!(s["Summary"]["g"]["Queued"], 1, "{s}");
    assert!(allocs(&agent, "win").is_empty());

    // More memory than the node has: exhausted, the dimension named.
    let mut big = sh_job("huge", "batch", "true");
    big["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] =
        json!({"CPU": 100, "MemoryMB": 1_000_000_000i64});
    let eval = eval_of(&agent, &register(&agent, &big));
    let m = &eval["FailedTGAllocs"]["g"];
    assert_eq!(m["NodesExhausted"], 1, "{eval}");
    assert_eq!(m["DimensionExhausted"]["memory"], 1);
    assert_eq!(m["NodesFiltered"], 0);
    assert!(agent.log().contains("placement failed"));
}

#[test]
fn a_blocked_eval_is_placed_once_dynamic_metadata_satisfies_its_constraint() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("gold", "service", "sleep 30");
    with_constraint(&mut job, "${meta.tier}", "=", "gold");
    let eval = eval_of(&agent, &register(&agent, &job));
    let blocked_id = eval["BlockedEval"].as_str().expect("blocked").to_string();
    assert!(allocs(&agent, "gold").is_empty());
    let r = agent.request(
        "POST",
        "/v1/client/metadata",
        &[],
        br#"{"Meta": {"tier": "gold"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The batcher carries it to the node record; the blocked eval wakes and places.
    let id = first_alloc(&agent, "gold");
    wait_task_running(&agent, &id, "t");
    let b = agent.get_json(&format!("/v1/evaluation/{blocked_id}"));
    assert_eq!(b["Status"], "complete", "{b}");
    assert_eq!(
        agent.request("DELETE", "/v1/job/gold", &[], b"").status,
        200
    );
}

#[test]
fn a_system_job_gets_one_alloc_on_the_node_and_a_stopped_alloc_is_replaced() {
    let agent = TestAgent::start(&[]);
    let r = register(&agent, &sh_job("sys", "system", "sleep 30"));
    assert_eq!(eval_of(&agent, &r)["Status"], "complete");
    let id = first_alloc(&agent, "sys");
    wait_task_running(&agent, &id, "t");
    assert_eq!(allocs(&agent, "sys").len(), 1);
    // A user stop: the scheduler places a replacement on the node.
    let r = agent.request("POST", &format!("/v1/allocation/{id}/stop"), &[], b"");
    assert_eq!(r.status, 200);
    let stop_eval = r.json()["EvalID"].as_str().unwrap().to_string();
    assert_eq!(
        wait_eval_done(&agent, &stop_eval)["TriggeredBy"],
        "alloc-stop"
    );
    wait_until(WAIT, "a replacement", || {
        allocs(&agent, "sys")
            .iter()
            .any(|a| a["ID"] != id.as_str() && a["DesiredStatus"] == "run")
    });
    let old = alloc(&agent, &id);
    assert_eq!(old["DesiredStatus"], "stop");
    assert!(
        !old["NextAllocation"].as_str().unwrap_or("").is_empty(),
        "{old}"
    );
    assert_eq!(agent.request("DELETE", "/v1/job/sys", &[], b"").status, 200);
}
