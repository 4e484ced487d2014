//! A job's life over real HTTP against the real binary: its status kept on the job (a
//! blocking query wakes when it changes), purge and re-register, versions with Nomad's
//! diffs, revert, stable, the submitted source, evaluate with ForceReschedule, scale and
//! the scaling policies — each with Nomad's shapes, statuses and error texts.

mod common;
mod workloads_helpers;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

fn put(agent: &TestAgent, path: &str, body: &Value) -> Response {
    agent.request("PUT", path, &[], body.to_string().as_bytes())
}

fn index_of(r: &Response) -> u64 {
    r.header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Nomad-Index: {r:?}"))
}

/// A batch job whose one task runs `script`, with a `Meta` tag to make versions differ.
fn batch(id: &str, script: &str, tag: &str) -> Value {
    let mut j = sh_job(id, "batch", script);
    j["Job"]["Meta"] = json!({ "tag": tag });
    j
}

#[test]
fn a_status_change_moves_the_jobs_modify_index_and_wakes_a_blocking_query() {
    let agent = TestAgent::start(&[]);
    let reg = register(&agent, &batch("st", "sleep 0.5", "a"));
    let jmi = reg["JobModifyIndex"].as_u64().unwrap();
    // Follow the job the way `nomadtools watch` does: blocking queries on the job alone.
    let first = agent.get("/v1/job/st");
    assert_eq!(first.status, 200);
    let mut index = index_of(&first);
    let first = first.json();
    assert_ne!(
        first["Status"], "dead",
        "a job just registered is not dead: {first}"
    );
    let mut seen = vec![first["Status"].as_str().unwrap().to_string()];
    let deadline = Instant::now() + WAIT;
    while seen.last().map(String::as_str) != Some("dead") {
        assert!(Instant::now() < deadline, "job never went dead: {seen:?}");
        let r = agent.get(&format!("/v1/job/st?index={index}&wait=10s"));
        assert_eq!(r.status, 200, "{}", r.text());
        let job = r.json();
        let now = index_of(&r);
        assert!(
            now > index,
            "a blocking query answered without a change: {now} <= {index}"
        );
        assert_eq!(
            job["ModifyIndex"].as_u64().unwrap(),
            now,
            "the header is the job's ModifyIndex"
        );
        assert_eq!(
            job["JobModifyIndex"].as_u64().unwrap(),
            jmi,
            "a status change is not a new spec"
        );
        index = now;
        seen.push(job["Status"].as_str().unwrap().to_string());
    }
    // The job changed when its alloc finished: its ModifyIndex is at least the index at which
    // the alloc became complete.
    let allocs = allocs(&agent, "st");
    assert_eq!(allocs.len(), 1, "statuses seen: {seen:?}");
    let a = alloc(&agent, allocs[0]["ID"].as_str().unwrap());
    assert_eq!(a["ClientStatus"], "complete", "seen {seen:?} alloc {a}");
    let job = agent.get_json("/v1/job/st");
    assert_eq!(job["Status"], "dead");
    assert!(job["ModifyIndex"].as_u64().unwrap() > jmi, "{job}");
    assert!(seen.contains(&"dead".to_string()));
}

#[test]
fn a_purged_jobs_allocations_are_never_shown_for_its_successor() {
    let agent = TestAgent::start(&[]);
    register(&agent, &batch("re", "exit 0", "first"));
    let old = first_alloc(&agent, "re");
    wait_status(&agent, &old, "complete");
    let r = agent.request("DELETE", "/v1/job/re?purge=true", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(agent.get("/v1/job/re").status, 404);
    // Unknown (already purged) job: 200 with an empty EvalID, as Nomad answers.
    let again = agent.request("DELETE", "/v1/job/re?purge=true", &[], b"");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["EvalID"], "");
    // Once purged, `/allocations` still lists what is left of it (no job to compare with).
    assert!(allocs(&agent, "re").iter().any(|a| a["ID"] == old.as_str()));

    // The successor: only its own allocations, its own summary, its own status.
    register(&agent, &batch("re", "sleep 30", "second"));
    let job = agent.get_json("/v1/job/re");
    assert_eq!(
        job["Version"], 0,
        "a new job after a purge starts at version 0"
    );
    let mut new = String::new();
    wait_until(WAIT, "the successor's alloc", || {
        let list = allocs(&agent, "re");
        assert!(
            list.iter().all(|a| a["ID"] != old.as_str()),
            "the purged job's alloc is shown for its successor: {list:?}"
        );
        if let Some(a) = list.first() {
            new = a["ID"].as_str().unwrap().to_string();
        }
        !new.is_empty()
    });
    wait_status(&agent, &new, "running");
    let all: Vec<Value> = agent
        .get_json("/v1/job/re/allocations?all=true")
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(all.len(), 2, "all=true shows both: {all:?}");
    let summary = agent.get_json("/v1/job/re/summary");
    assert_eq!(summary["Summary"]["g"]["Complete"], 0, "{summary}");
    assert_eq!(summary["Summary"]["g"]["Running"], 1, "{summary}");
    let job = agent.get_json("/v1/job/re");
    assert_eq!(job["Status"], "running");
    let list = agent.get_json("/v1/jobs");
    assert_eq!(list[0]["JobSummary"]["Summary"]["g"]["Complete"], 0);
}

/// Register `v` (a change each time) and return the write's answer.
fn versions_of(agent: &TestAgent, q: &str) -> Value {
    agent.get_json(&format!("/v1/job/v/versions{q}"))
}

#[test]
fn versions_with_diffs_revert_stable_and_the_submitted_source_survive_a_restart() {
    let dir = temp_dir("versions");
    let mut agent = TestAgent::start_in(&dir, &[]);
    let mut v0 = batch("v", "exit 0", "zero");
    v0["Submission"] = json!({"Source": "job \"v\" { }", "Format": "hcl2",
        "VariableFlags": {"who": "me"}, "Variables": "x = 1"});
    register(&agent, &v0);
    let mut v1 = batch("v", "exit 0", "one");
    v1["Job"]["TaskGroups"][0]["Count"] = json!(2);
    register(&agent, &v1);

    let out = versions_of(&agent, "?diffs=true");
    let versions = out["Versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["Version"], 1, "newest first");
    assert_eq!(versions[1]["Version"], 0);
    let diffs = out["Diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 1);
    let d = &diffs[0];
    assert_eq!(d["Type"], "Edited");
    assert_eq!(d["ID"], "v");
    assert_eq!(
        d["Fields"],
        json!([{"Type": "Edited", "Name": "Meta[tag]", "Old": "zero", "New": "one", "Annotations": null}])
    );
    let g = &d["TaskGroups"][0];
    assert_eq!(
        (g["Name"].as_str(), g["Type"].as_str()),
        (Some("g"), Some("Edited"))
    );
    assert_eq!(
        g["Fields"],
        json!([{"Type": "Edited", "Name": "Count", "Old": "1", "New": "2", "Annotations": null}])
    );
    assert_eq!(g["Tasks"][0]["Type"], "None");
    assert!(versions_of(&agent, "")["Diffs"].is_null());
    let bad = agent.get("/v1/job/v/versions?diffs=maybe");
    assert_eq!(bad.status, 500);
    assert!(bad
        .text()
        .starts_with("Failed to parse value of \"diffs\" (maybe) as a bool"));
    let none = agent.get("/v1/job/nope/versions");
    assert_eq!(
        (none.status, none.text().as_str()),
        (404, "job versions not found")
    );

    // The source of version 0; version 1 was registered without one.
    let s = agent.get_json("/v1/job/v/submission?version=0");
    assert_eq!(s["Source"], "job \"v\" { }");
    assert_eq!(s["Format"], "hcl2");
    assert_eq!(s["VariableFlags"], json!({"who": "me"}));
    assert_eq!(s["Variables"], "x = 1");
    assert_eq!(
        (s["JobID"].as_str(), s["Version"].as_u64()),
        (Some("v"), Some(0))
    );
    let missing = agent.get("/v1/job/v/submission?version=1");
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, "job source not found")
    );
    let unparsable = agent.get("/v1/job/v/submission?version=x");
    assert_eq!(
        (unparsable.status, unparsable.text().as_str()),
        (400, "Unable to parse job submission version parameter")
    );

    // Stable: version 1 is the current one; the job follows.
    let r = put(
        &agent,
        "/v1/job/v/stable",
        &json!({"JobID": "v", "JobVersion": 1, "Stable": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["Index"].as_u64().unwrap() > 0);
    assert_eq!(agent.get_json("/v1/job/v")["Stable"], true);
    let r = put(
        &agent,
        "/v1/job/v/stable",
        &json!({"JobID": "v", "JobVersion": 7, "Stable": true}),
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            500,
            r#"job "v" in namespace "default" at version 7 not found"#
        )
    );
    let r = put(
        &agent,
        "/v1/job/v/stable",
        &json!({"JobID": "w", "JobVersion": 1}),
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Job ID does not match")
    );
    let r = put(&agent, "/v1/job/v/stable", &json!({"JobVersion": 1}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "JobID must be specified")
    );

    // Revert: the errors first, then back to version 0 as a new version 2.
    let revert = |body: Value| put(&agent, "/v1/job/v/revert", &body);
    let r = revert(json!({"JobID": "v", "JobVersion": 1}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "can't revert to current version")
    );
    let r = revert(json!({"JobID": "v", "JobVersion": 9}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            500,
            r#"job "v" in namespace "default" at version 9 not found"#
        )
    );
    let r = revert(json!({"JobID": "v", "JobVersion": 0, "EnforcePriorVersion": 0}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "Current job has version 1; enforcing version 0")
    );
    let r = revert(json!({"JobID": "v", "JobVersion": 0, "EnforcePriorVersion": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(!body["EvalID"].as_str().unwrap().is_empty());
    assert_eq!(index_of(&r), body["Index"].as_u64().unwrap());
    let job = agent.get_json("/v1/job/v");
    assert_eq!(job["Version"], 2);
    assert_eq!(job["Meta"]["tag"], "zero");
    assert_eq!(job["TaskGroups"][0]["Count"], 1);
    let s = agent.get_json("/v1/job/v/submission?version=2");
    assert_eq!(
        s["Source"], "job \"v\" { }",
        "a revert keeps the version's source"
    );

    // Everything is in the state's log: a restarted agent answers the same.
    let before = versions_of(&agent, "?diffs=true");
    agent.stop();
    agent.restart_after_stop();
    wait_until(WAIT, "the agent back", || {
        agent.get("/v1/job/v").status == 200
    });
    let after = versions_of(&agent, "?diffs=true");
    assert_eq!(after["Versions"].as_array().unwrap().len(), 3);
    assert_eq!(after["Diffs"], before["Diffs"]);
    assert_eq!(
        after["Versions"][1]["Stable"], true,
        "version 1 stays stable"
    );
    assert_eq!(
        agent.get_json("/v1/job/v/submission?version=0")["Variables"],
        "x = 1"
    );
}

#[test]
fn only_the_last_six_versions_are_kept_and_a_purge_drops_them() {
    let agent = TestAgent::start(&[]);
    for i in 0..8 {
        register(&agent, &batch("many", "exit 0", &format!("t{i}")));
    }
    let out = agent.get_json("/v1/job/many/versions");
    let kept: Vec<u64> = out["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [7, 6, 5, 4, 3, 2]);
    let r = agent.request("DELETE", "/v1/job/many?purge=true", &[], b"");
    assert_eq!(r.status, 200);
    register(&agent, &batch("many", "exit 0", "again"));
    let out = agent.get_json("/v1/job/many/versions");
    assert_eq!(out["Versions"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(out["Versions"][0]["Version"], 0);
}

#[test]
fn evaluate_makes_an_eval_and_force_reschedule_replaces_a_failed_alloc_now() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("ev", "batch", "exit 3");
    // One reschedule, an hour away: only a forced reschedule places the replacement now.
    job["Job"]["TaskGroups"][0]["ReschedulePolicy"] = json!({"Attempts": 1,
        "Interval": 86_400_000_000_000u64, "Delay": 3_600_000_000_000u64,
        "DelayFunction": "constant", "Unlimited": false});
    register(&agent, &job);
    let failed = first_alloc(&agent, "ev");
    wait_status(&agent, &failed, "failed");

    let r = put(&agent, "/v1/job/ev/evaluate", &json!({"JobID": "other"}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "JobID not same as job name")
    );
    let r = put(&agent, "/v1/job/ev/evaluate", &json!({"EvalOptions": {}}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Job ID must be specified")
    );
    let r = agent.request("PUT", "/v1/job/nope/evaluate", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (500, "job not found"));
    let r = agent.request("GET", "/v1/job/ev/evaluate", &[], b"");
    assert_eq!(r.status, 405);

    // Without force: an eval, and the failed alloc still waits for its delay.
    let r = agent.request("POST", "/v1/job/ev/evaluate", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let plain = r.json()["EvalID"].as_str().unwrap().to_string();
    let e = wait_eval_done(&agent, &plain);
    assert_eq!(e["TriggeredBy"], "job-register");
    assert_eq!(
        allocs(&agent, "ev").len(),
        1,
        "nothing placed without force"
    );

    let r = put(
        &agent,
        "/v1/job/ev/evaluate",
        &json!({"JobID": "ev", "EvalOptions": {"ForceReschedule": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["EvalCreateIndex"], body["Index"]);
    let mut replacement = Value::Null;
    wait_until(WAIT, "the forced replacement", || {
        replacement = allocs(&agent, "ev")
            .into_iter()
            .find(|a| a["ID"] != failed.as_str())
            .unwrap_or(Value::Null);
        !replacement.is_null()
    });
    let full = alloc(&agent, replacement["ID"].as_str().unwrap());
    assert_eq!(full["PreviousAllocation"], failed.as_str());
}

fn scalable(id: &str) -> Value {
    let mut j = sh_job(id, "service", "sleep 60");
    j["Job"]["TaskGroups"][0]["Scaling"] =
        json!({"Min": 1, "Max": 3, "Enabled": true, "Policy": {"cooldown": "1m"}});
    j
}

#[test]
fn scale_sets_a_groups_count_within_its_policy_and_the_policies_are_listed() {
    let agent = TestAgent::start(&[]);
    let reg = register(&agent, &scalable("sc"));
    let v0_jmi = reg["JobModifyIndex"].as_u64().unwrap();
    let scale = |body: Value| put(&agent, "/v1/job/sc/scale", &body);
    let target = |group: &str| json!({"Group": group});

    let r = scale(json!({"Count": 5, "Target": target("g")}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "group count was greater than scaling policy maximum: 5 > 3"
        )
    );
    let r = scale(json!({"Count": 0, "Target": target("g")}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "group count was less than scaling policy minimum: 0 < 1"
        )
    );
    let r = scale(json!({"Count": 2, "Target": target("nope")}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            r#"task group "nope" specified for scaling does not exist in job"#
        )
    );
    let r = scale(json!({"Count": 2, "Target": {}}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "missing task group name for scaling action")
    );
    let r = scale(json!({"Count": -1, "Target": target("g")}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "scaling action count can't be negative")
    );
    let r = scale(json!({"Count": 2, "Target": {"Group": "g", "Job": "other"}}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "job ID in payload did not match URL")
    );
    let r = put(
        &agent,
        "/v1/job/nope/scale",
        &json!({"Count": 2, "Target": target("g")}),
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, r#"job "nope" not found"#)
    );
    assert_eq!(
        agent.get_json("/v1/job/sc")["Version"],
        0,
        "refused scales change nothing"
    );

    let r = scale(json!({"Count": 2, "Target": {"Group": "g", "Job": "sc"}, "Message": "more"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let eval = body["EvalID"].as_str().unwrap().to_string();
    assert!(body["JobModifyIndex"].as_u64().unwrap() > v0_jmi);
    let e = wait_eval_done(&agent, &eval);
    assert_eq!(e["TriggeredBy"], "job-scaling");
    let job = agent.get_json("/v1/job/sc");
    assert_eq!(
        (
            job["Version"].as_u64(),
            job["TaskGroups"][0]["Count"].as_i64()
        ),
        (Some(1), Some(2))
    );
    wait_until(WAIT, "two running allocs", || {
        let st = agent.get_json("/v1/job/sc/scale");
        st["TaskGroups"]["g"]["Running"] == 2
    });
    let st = agent.get_json("/v1/job/sc/scale");
    assert_eq!(st["JobID"], "sc");
    assert_eq!(st["TaskGroups"]["g"]["Desired"], 2);
    assert_eq!(st["JobStopped"], false);
    let ev = &st["TaskGroups"]["g"]["Events"][0];
    assert_eq!(
        (ev["Message"].as_str(), ev["Count"].as_i64()),
        (Some("more"), Some(2)),
        "{st}"
    );
    assert_eq!(
        (ev["PreviousCount"].as_i64(), ev["EvalID"].as_str()),
        (Some(1), Some(eval.as_str()))
    );
    // A report without a count (an autoscaler's error) is recorded and changes nothing else.
    let r = scale(json!({"Target": target("g"), "Error": true, "Message": "boom"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["EvalID"], "");
    assert_eq!(agent.get_json("/v1/job/sc")["Version"], 1);
    let events = agent.get_json("/v1/job/sc/scale")["TaskGroups"]["g"]["Events"].clone();
    assert_eq!(events.as_array().map(Vec::len), Some(2), "{events}");
    assert_eq!(
        (events[0]["Error"].as_bool(), events[0]["Count"].is_null()),
        (Some(true), true)
    );
    let r = scale(json!({"Count": 2, "Error": true, "Target": target("g")}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "scaling action should not contain count if error is true"
        )
    );
    // The scale is a version like any other: its diff names the count.
    let d = &agent.get_json("/v1/job/sc/versions?diffs=true")["Diffs"][0];
    assert_eq!(d["TaskGroups"][0]["Fields"][0]["Name"], "Count");

    let list = agent.get_json("/v1/scaling/policies");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["Target"],
        json!({"Namespace": "default", "Job": "sc", "Group": "g"})
    );
    assert_eq!(list[0]["Type"], "horizontal");
    let id = list[0]["ID"].as_str().unwrap();
    let p = agent.get_json(&format!("/v1/scaling/policy/{id}"));
    assert_eq!((p["Min"].as_i64(), p["Max"].as_i64()), (Some(1), Some(3)));
    assert_eq!(p["Policy"], json!({"cooldown": "1m"}));
    assert_eq!(p["Enabled"], true);
    assert!(agent
        .get_json("/v1/scaling/policies?job=other")
        .as_array()
        .unwrap()
        .is_empty());
    let r = agent.get("/v1/scaling/policy/00000000-0000-0000-0000-000000000000");
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, "scaling policy not found")
    );
    let r = agent.get("/v1/job/nope/scale");
    assert_eq!((r.status, r.text().as_str()), (404, "job not found"));
    let r = agent.request("DELETE", "/v1/job/sc/scale", &[], b"");
    assert_eq!(r.status, 405);
    agent.request("DELETE", "/v1/job/sc", &[], b"");
}

/// The CLI against the agent (`NOMAD_ADDR`), its stdout when it exits 0.
fn cli(agent: &TestAgent, args: &[&str]) -> String {
    let o = std::process::Command::new(bin())
        .args(args)
        .env("NOMAD_ADDR", format!("http://{}", agent.addr()))
        .env_remove("NOMAD_TOKEN")
        .env_remove("NOMAD_NAMESPACE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the CLI");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}\nstdout: {out}\nstderr: {err}"
    );
    out
}

#[test]
fn the_cli_shows_history_with_diffs_reverts_and_scales() {
    let agent = TestAgent::start(&[]);
    register(&agent, &scalable("cl"));
    let mut v1 = scalable("cl");
    v1["Job"]["Meta"] = json!({"rev": "1"});
    register(&agent, &v1);
    let h = cli(&agent, &["job", "history", "-p", "cl"]);
    assert!(h.starts_with("Version     = 1\n"), "{h}");
    assert!(h.contains("Version     = 0\n"), "{h}");
    assert!(h.contains("+ Meta[rev]: \"1\""), "{h}");
    let one = cli(&agent, &["job", "history", "-version", "0", "cl"]);
    assert!(
        one.starts_with("Version     = 0\n") && !one.contains("Version     = 1"),
        "{one}"
    );

    let eval = cli(&agent, &["job", "revert", "-detach", "cl", "0"]);
    wait_eval_done(&agent, eval.trim());
    let job = agent.get_json("/v1/job/cl");
    assert_eq!(
        (job["Version"].as_u64(), job["Meta"].is_null()),
        (Some(2), true),
        "{job}"
    );

    let eval = cli(&agent, &["job", "scale", "-detach", "cl", "3"]);
    assert_eq!(
        wait_eval_done(&agent, eval.trim())["TriggeredBy"],
        "job-scaling"
    );
    assert_eq!(agent.get_json("/v1/job/cl")["TaskGroups"][0]["Count"], 3);
    let eval = cli(&agent, &["job", "scale", "-detach", "cl", "g", "1"]);
    wait_eval_done(&agent, eval.trim());
    assert_eq!(agent.get_json("/v1/job/cl")["TaskGroups"][0]["Count"], 1);
    agent.request("DELETE", "/v1/job/cl", &[], b"");
}

#[test]
fn hostile_bodies_and_paths_get_a_clear_4xx_and_change_nothing() {
    let agent = TestAgent::start(&[]);
    register(&agent, &batch("h", "exit 0", "a"));
    let before = agent.get_json("/v1/job/h");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for path in [
        "/v1/job/h/revert",
        "/v1/job/h/stable",
        "/v1/job/h/scale",
        "/v1/job/h/evaluate",
    ] {
        let wrong_types =
            r#"{"JobID": 5, "JobVersion": "x", "Count": "x", "Target": {"Group": "g"}}"#;
        for body in [deep.as_str(), "{", "[1]", wrong_types] {
            let r = agent.request("PUT", path, &[], body.as_bytes());
            assert!(
                (400..500).contains(&r.status),
                "{path} {}: {} {}",
                &body[..body.len().min(40)],
                r.status,
                r.text()
            );
        }
        let r = agent.request("PUT", path, &[], b"");
        if path.ends_with("/evaluate") {
            assert_eq!(r.status, 200, "evaluate takes an empty body: {}", r.text());
        } else {
            assert_eq!(
                (r.status, r.text().as_str()),
                (400, "Request body is empty")
            );
        }
    }
    let after = agent.get_json("/v1/job/h");
    assert_eq!(after["Version"], before["Version"]);
    assert_eq!(after["JobModifyIndex"], before["JobModifyIndex"]);
    let r = agent.get("/v1/job/h/versions?diffs=true&diff_version=zz");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = agent.get("/v1/job/h/submission");
    assert_eq!(r.status, 400);
    assert_eq!(agent.get("/v1/scaling/nope").status, 404);
}

#[test]
fn python_nomads_lifecycle_calls_work() {
    let agent = TestAgent::start(&[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/lifecycle_compat.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(agent.port.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python-nomad lifecycle checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stopped job turns `dead` only where its deregister eval completes (Nomad's
/// `getJobStatus` has no case for a stop): nomad-tools tells a stop from a purge by the job's
/// ModifyIndex reaching that eval's, and took every stop for a purge while the job turned
/// dead at the stop itself.
#[test]
fn a_stopped_job_turns_dead_where_its_deregister_eval_completes() {
    let agent = TestAgent::start(&[]);
    register(&agent, &sh_job("stp", "service", "exec sleep 60"));
    let alloc = first_alloc(&agent, "stp");
    wait_task_running(&agent, &alloc, "t");
    let r = agent.request("DELETE", "/v1/job/stp", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let eval_id = r.json()["EvalID"].as_str().unwrap().to_string();
    assert!(!eval_id.is_empty());
    let mut last = Value::Null;
    wait_until(
        std::time::Duration::from_secs(20),
        "the deregister eval complete and the job dead",
        || {
            let eval = agent.get_json(&format!("/v1/evaluation/{eval_id}"));
            let job = agent.get_json("/v1/job/stp");
            last = json!({"eval": eval, "job": job});
            eval["Status"] == "complete" && job["Status"] == "dead"
        },
    );
    let eval_index = last["eval"]["ModifyIndex"].as_u64().unwrap();
    let job_index = last["job"]["ModifyIndex"].as_u64().unwrap();
    assert!(
        job_index >= eval_index,
        "the job turned dead before its deregister eval completed: {last}"
    );
}
