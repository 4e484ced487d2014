//! `nomad job plan` through the real binary: the real scheduler's dry run on the published
//! state with Nomad's `JobPlanResponse` — desired updates per group, an annotated diff, failed
//! placements with the blocked eval they would make, the next periodic launch — and nothing
//! written: no job, no eval, no alloc.

mod common;
mod workloads_helpers;

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

fn web(count: u64, script: &str) -> Value {
    let mut j = sh_job("web", "service", script);
    j["Job"]["TaskGroups"][0]["Count"] = json!(count);
    j
}

fn plan(agent: &TestAgent, id: &str, job: &Value, diff: bool) -> (common::Response, Value) {
    let mut body = job.clone();
    body["Diff"] = json!(diff);
    let r = agent.request(
        "POST",
        &format!("/v1/job/{id}/plan"),
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "plan: {}", r.text());
    let v = r.json();
    (r, v)
}

#[test]
fn a_plan_is_the_real_schedulers_dry_run_and_writes_nothing() {
    let agent = TestAgent::start(&[]);
    let (_, p) = plan(&agent, "web", &web(2, "sleep 30"), true);
    let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "Annotations",
            "FailedTGAllocs",
            "JobModifyIndex",
            "CreatedEvals",
            "Diff",
            "NextPeriodicLaunch",
            "Warnings",
            "Index"
        ]
    );
    let g = &p["Annotations"]["DesiredTGUpdates"]["g"];
    assert_eq!(
        (g["Place"].as_u64(), g["Ignore"].as_u64()),
        (Some(2), Some(0)),
        "{p}"
    );
    assert_eq!(p["JobModifyIndex"], 0);
    assert_eq!(p["FailedTGAllocs"], Value::Null);
    assert_eq!(p["CreatedEvals"], Value::Null);
    assert_eq!(p["Diff"]["Type"], "Added");
    assert_eq!(p["Diff"]["TaskGroups"][0]["Updates"]["create"], 2);
    assert_eq!(p["NextPeriodicLaunch"], "0001-01-01T00:00:00Z");
    assert_eq!(
        agent.get("/v1/job/web").status,
        404,
        "planning registers nothing"
    );
    assert_eq!(agent.get_json("/v1/evaluations"), json!([]));

    let r = register(&agent, &web(2, "sleep 30"));
    let jmi = r["JobModifyIndex"].as_u64().unwrap();
    wait_until(WAIT, "two allocs placed", || {
        allocs(&agent, "web")
            .iter()
            .filter(|a| a["DesiredStatus"] == "run")
            .count()
            == 2
    });
    let evals_before = agent.get_json("/v1/evaluations").as_array().unwrap().len();
    let (r, p) = plan(&agent, "web", &web(2, "sleep 30"), true);
    assert_eq!(
        p["Annotations"]["DesiredTGUpdates"]["g"]["Ignore"], 2,
        "{p}"
    );
    assert_eq!(p["Annotations"]["DesiredTGUpdates"]["g"]["Place"], 0);
    assert_eq!(p["Diff"]["Type"], "None");
    assert_eq!(p["JobModifyIndex"], jmi);
    assert_eq!(r.header("X-Nomad-Index").unwrap(), jmi.to_string());

    // A new version with one more: the scheduler replaces both and places one.
    let (_, p) = plan(&agent, "web", &web(3, "sleep 31"), true);
    let g = &p["Annotations"]["DesiredTGUpdates"]["g"];
    assert_eq!(g["DestructiveUpdate"], 2, "{p}");
    assert_eq!(g["Place"], 1);
    assert_eq!(g["Ignore"], 0);
    let d = &p["Diff"];
    assert_eq!(d["Type"], "Edited");
    let tg = &d["TaskGroups"][0];
    assert_eq!(
        tg["Updates"],
        json!({"create": 1, "create/destroy update": 2})
    );
    assert_eq!(
        tg["Tasks"][0]["Annotations"],
        json!(["forces create/destroy update"])
    );
    let count = tg["Fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["Name"] == "Count")
        .expect("the count change");
    assert_eq!(
        (count["Old"].as_str(), count["New"].as_str()),
        (Some("2"), Some("3"))
    );
    assert_eq!(count["Annotations"], json!(["forces create"]));
    // Nothing of it happened.
    assert_eq!(
        agent.get_json("/v1/evaluations").as_array().unwrap().len(),
        evals_before
    );
    assert_eq!(agent.get_json("/v1/job/web")["Version"], 0);
    assert_eq!(allocs(&agent, "web").len(), 2);
    // What the plan said is what the scheduler does.
    register(&agent, &web(3, "sleep 31"));
    wait_until(WAIT, "the new version placed", || {
        let a = allocs(&agent, "web");
        a.iter()
            .filter(|a| a["DesiredStatus"] == "run" && a["JobVersion"] == 1)
            .count()
            == 3
            && a.iter().filter(|a| a["DesiredStatus"] == "stop").count() == 2
    });
}

#[test]
fn failed_placements_periodic_launches_and_bad_requests() {
    let agent = TestAgent::start(&[]);
    let mut nowhere = sh_job("nowhere", "batch", "true");
    nowhere["Job"]["Constraints"] =
        json!([{"LTarget": "${attr.kernel.name}", "RTarget": "plan9", "Operand": "="}]);
    let (_, p) = plan(&agent, "nowhere", &nowhere, false);
    let m = &p["FailedTGAllocs"]["g"];
    assert!(m["NodesEvaluated"].as_u64().unwrap() >= 1, "{p}");
    assert!(m["NodesFiltered"].as_u64().unwrap() >= 1, "{p}");
    assert_eq!(p["Annotations"]["DesiredTGUpdates"]["g"]["Place"], 1);
    assert_eq!(p["CreatedEvals"][0]["Status"], "blocked");
    assert_eq!(p["CreatedEvals"][0]["TriggeredBy"], "queued-allocs");
    assert_eq!(p["Diff"], Value::Null, "no diff unless asked");
    assert_eq!(
        agent.get_json("/v1/evaluations"),
        json!([]),
        "the blocked eval is not made"
    );

    let mut cron = sh_job("cron", "batch", "true");
    cron["Job"]["Periodic"] = json!({"Spec": "0 3 * * *", "TimeZone": "Asia/Tokyo"});
    let (_, p) = plan(&agent, "cron", &cron, false);
    let next = p["NextPeriodicLaunch"].as_str().unwrap();
    assert!(next.ends_with("T03:00:00+09:00"), "{next}");

    let bad: &[(&str, &[u8], u16, &str)] = &[
        ("/v1/job/web/plan", b"", 400, "Request body is empty"),
        ("/v1/job/web/plan", b"{}", 400, "Job must be specified"),
        (
            "/v1/job/web/plan",
            br#"{"Job": {"Name": "x"}}"#,
            400,
            "Job must have a valid ID",
        ),
        (
            "/v1/job/web/plan",
            br#"{"Job": {"ID": "other"}}"#,
            400,
            "Job ID does not match",
        ),
        ("/v1/job/web/plan", b"[1", 400, "Failed to decode body"),
    ];
    for (path, body, status, text) in bad {
        let r = agent.request("PUT", path, &[], body);
        assert_eq!(r.status, *status, "{}", r.text());
        assert!(r.text().starts_with(text), "{}", r.text());
    }
    let r = agent.request(
        "PUT",
        "/v1/job/web/plan",
        &[],
        br#"{"Job": {"ID": "web", "TaskGroups": []}}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Missing job task groups"), "{}", r.text());
    assert_eq!(
        agent.request("GET", "/v1/job/web/plan", &[], b"").status,
        405
    );
}
