//! Periodic jobs through the real binary: the `periodic` thread launches
//! `<id>/periodic-<unix>` children at cron times (7-field, every second or two here) that
//! real tasks run; `prohibit_overlap` skips launches while a child runs; `/periodic/force`;
//! Nomad's validation errors; launches go on after an agent restart.

mod common;
mod workloads_helpers;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

fn periodic_job(id: &str, cron: &str, overlap: bool, script: &str) -> Value {
    let mut j = sh_job(id, "batch", script);
    j["Job"]["Periodic"] =
        json!({"Spec": cron, "ProhibitOverlap": overlap, "TimeZone": "Europe/Berlin"});
    j
}

/// The children of a parent, by ID.
fn children(agent: &TestAgent, id: &str) -> Vec<Value> {
    agent
        .get_json(&format!("/v1/jobs?prefix={id}/periodic-"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_children(agent: &TestAgent, id: &str, n: usize) -> Vec<Value> {
    let mut last = Vec::new();
    wait_until(
        Duration::from_secs(30),
        &format!("{n} children of {id}"),
        || {
            last = children(agent, id);
            last.len() >= n
        },
    );
    last
}

#[test]
fn children_launch_at_cron_times_and_run_and_overlap_is_prohibited_when_asked() {
    let agent = TestAgent::start(&[]);
    let r = register(
        &agent,
        &periodic_job("tick", "*/2 * * * * * *", false, "echo tick"),
    );
    assert_eq!(r["EvalID"], "", "a periodic parent gets no eval");
    // Sleeps far longer than the test: with prohibit_overlap only its first child launches.
    register(
        &agent,
        &periodic_job("slow", "* * * * * * *", true, "sleep 60"),
    );
    let parent = agent.get_json("/v1/job/tick");
    assert_eq!(parent["Status"], "running");
    assert_eq!(parent["Periodic"]["TimeZone"], "Europe/Berlin");
    assert_eq!(parent["Periodic"]["Enabled"], true);

    let kids = wait_children(&agent, "tick", 3);
    for k in &kids {
        let id = k["ID"].as_str().unwrap();
        let at: i64 = id.strip_prefix("tick/periodic-").unwrap().parse().unwrap();
        assert_eq!(at % 2, 0, "launched at an even second: {id}");
        assert_eq!(k["ParentID"], "tick");
        assert_eq!(k["Periodic"], false, "a child is not periodic itself");
    }
    let child = kids[0]["ID"].as_str().unwrap().to_string();
    let evals = agent.get_json(&format!("/v1/job/{child}/evaluations"));
    assert_eq!(evals[0]["TriggeredBy"], "periodic-job");
    let alloc_id = first_alloc(&agent, &child);
    wait_status(&agent, &alloc_id, "complete");
    assert_eq!(read_log(&agent, &alloc_id, "t", "stdout"), "tick\n");
    assert!(agent
        .get_json("/v1/job/tick/evaluations")
        .as_array()
        .unwrap()
        .is_empty());
    let summary = agent.get_json("/v1/job/tick/summary");
    let c = &summary["Children"];
    let total = c["Pending"].as_u64().unwrap()
        + c["Running"].as_u64().unwrap()
        + c["Dead"].as_u64().unwrap();
    assert!(total >= 3 && c["Dead"].as_u64().unwrap() >= 1, "{summary}");

    // By now "slow" passed several of its once-a-second launch times; one child runs.
    let slow = children(&agent, "slow");
    assert_eq!(slow.len(), 1, "prohibit_overlap: {slow:?}");
    let a = first_alloc(&agent, slow[0]["ID"].as_str().unwrap());
    wait_task_running(&agent, &a, "t");
    let before = children(&agent, "tick").len();
    wait_children(&agent, "tick", before + 2);
    assert_eq!(children(&agent, "slow").len(), 1, "still one while it runs");

    // Force: a child now, even while the schedule waits.
    let r = agent.request("POST", "/v1/job/tick/periodic/force", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let f = r.json();
    let keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["EvalID", "EvalCreateIndex", "Index"]);
    let eval = agent.get_json(&format!("/v1/evaluation/{}", f["EvalID"].as_str().unwrap()));
    assert_eq!(eval["TriggeredBy"], "periodic-job");
    assert!(eval["JobID"]
        .as_str()
        .unwrap()
        .starts_with("tick/periodic-"));

    // Stopped: no more launches, and force refuses.
    assert_eq!(
        agent.request("DELETE", "/v1/job/tick", &[], b"").status,
        200
    );
    let r = agent.request("POST", "/v1/job/tick/periodic/force", &[], b"");
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        "force launch for job \"tick\" failed: can't force run non-tracked job tick (default)"
    );
    let after_stop = children(&agent, "tick").len();
    wait_children(&agent, "slow", 1);
    register(
        &agent,
        &periodic_job("pace", "* * * * * * *", false, "true"),
    );
    wait_children(&agent, "pace", 2);
    assert!(
        children(&agent, "tick").len() <= after_stop + 1,
        "a launch may have been in flight"
    );
}

#[test]
fn bad_periodic_blocks_are_refused_with_nomads_errors_and_launches_survive_a_restart() {
    let dir = temp_dir("periodic");
    let mut agent = TestAgent::start_in(&dir, &[]);
    let cases: &[(Value, &str)] = &[
        (
            periodic_job("a", "61 * * * *", false, "true"),
            "Invalid cron spec \"61 * * * *\"",
        ),
        (
            {
                let mut j = periodic_job("b", "* * * * *", false, "true");
                j["Job"]["Periodic"]["TimeZone"] = json!("Mars/Olympus_Mons");
                j
            },
            "Invalid time zone \"Mars/Olympus_Mons\"",
        ),
        (
            {
                let mut j = periodic_job("c", "* * * * *", false, "true");
                j["Job"]["Type"] = json!("service");
                j
            },
            "Periodic can only be used with \"batch\" or \"sysbatch\" scheduler",
        ),
        (
            {
                let mut j = periodic_job("d", "", false, "true");
                j["Job"]["Periodic"]["Spec"] = json!("");
                j
            },
            "Must specify a spec",
        ),
    ];
    for (job, text) in cases {
        let r = agent.request("PUT", "/v1/jobs", &[], job.to_string().as_bytes());
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(text), "{text}: {}", r.text());
    }
    assert_eq!(agent.get_json("/v1/jobs"), json!([]));
    register(&agent, &sh_job("plain", "batch", "true"));
    let r = agent.request("POST", "/v1/job/plain/periodic/force", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "can't force launch non-periodic job")
    );
    let r = agent.request("POST", "/v1/job/nope/periodic/force", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (500, "job not found"));
    let r = agent.request(
        "PUT",
        "/v1/jobs",
        &[],
        periodic_job("plain", "* * * * *", false, "true")
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "cannot update non-periodic job to being periodic")
    );

    // No periodic job: no dispatcher thread.
    assert!(!has_thread(&agent, "periodic"));
    register(
        &agent,
        &periodic_job("beat", "* * * * * * *", false, "true"),
    );
    wait_until(Duration::from_secs(10), "the periodic thread", || {
        has_thread(&agent, "periodic")
    });
    wait_children(&agent, "beat", 1);
    agent.restart();
    let n = children(&agent, "beat").len();
    wait_children(&agent, "beat", n + 2);
    // The last periodic job stopped: the thread ends by itself.
    assert_eq!(
        agent.request("DELETE", "/v1/job/beat", &[], b"").status,
        200
    );
    wait_until(Duration::from_secs(10), "no periodic thread", || {
        !has_thread(&agent, "periodic")
    });
}

/// Whether the agent has a thread of this name.
fn has_thread(agent: &TestAgent, name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", agent.pid())) else {
        return false;
    };
    dir.flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}
