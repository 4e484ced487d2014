//! Server garbage collection on the real binary: the leader's periodic collection
//! (`server.job_gc_interval` and the thresholds) and `PUT /v1/system/gc` forget finished jobs,
//! their evals and allocs (and the client destroys the collected allocs' dirs), while live
//! jobs, running allocs and parameterized parents stay.

mod common;
mod workloads_helpers;
use common::*;
use workloads_helpers::*;

use serde_json::{json, Value};
use std::time::Duration;

/// An agent whose config file sets the `server` block `server`.
fn agent_with(server: Value) -> TestAgent {
    TestAgent::start_with_config("json", &json!({ "server": server }).to_string())
}

fn job_status(agent: &TestAgent, id: &str) -> Option<String> {
    let r = agent.request("GET", &format!("/v1/job/{id}"), &[], b"");
    (r.status == 200).then(|| r.json()["Status"].as_str().unwrap_or("").to_string())
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["ID"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_dead(agent: &TestAgent, id: &str) {
    wait_until(Duration::from_secs(20), &format!("job {id} dead"), || {
        job_status(agent, id).as_deref() == Some("dead")
    });
}

#[test]
fn a_forced_gc_forgets_finished_jobs_evals_and_allocs_and_keeps_live_ones() {
    let agent = TestAgent::start(&[]);
    register(&agent, &sh_job("done", "batch", "echo finished"));
    let done_alloc = first_alloc(&agent, "done");
    wait_dead(&agent, "done");
    register(&agent, &sh_job("live", "service", "exec sleep 600"));
    let live_alloc = first_alloc(&agent, "live");
    wait_task_running(&agent, &live_alloc, "t");
    let live_evals = ids(&agent.get_json("/v1/job/live/evaluations"));
    assert!(!live_evals.is_empty());
    let done_dir = alloc_dir(&agent, &done_alloc);
    wait_until(Duration::from_secs(10), "the finished alloc's dir", || {
        done_dir.exists()
    });

    let r = agent.request("PUT", "/v1/system/gc", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());

    // The finished batch job is forgotten with its evals and allocs, on the server...
    assert_eq!(job_status(&agent, "done"), None);
    let r = agent.request("GET", &format!("/v1/allocation/{done_alloc}"), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let evals = ids(&agent.get_json("/v1/evaluations"));
    let allocs = ids(&agent.get_json("/v1/allocations"));
    assert_eq!(allocs, vec![live_alloc.clone()]);
    for e in &live_evals {
        assert!(
            evals.contains(e),
            "the live job's eval {e} stays: {evals:?}"
        );
    }
    assert_eq!(evals.len(), live_evals.len(), "{evals:?}");
    // ... and on the client its dir goes.
    wait_until(
        Duration::from_secs(10),
        "the collected alloc's dir gone",
        || !done_dir.exists(),
    );
    // The live job runs on, untouched.
    assert_eq!(job_status(&agent, "live").as_deref(), Some("running"));
    assert_eq!(alloc(&agent, &live_alloc)["ClientStatus"], "running");

    // A stopped service job is collected once its alloc is done.
    let r = agent.request("DELETE", "/v1/job/live", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_dead(&agent, "live");
    wait_until(Duration::from_secs(20), "the stopped job collected", || {
        let r = agent.request("PUT", "/v1/system/gc", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        job_status(&agent, "live").is_none()
    });
    assert_eq!(
        ids(&agent.get_json("/v1/allocations")),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&agent.get_json("/v1/evaluations")),
        Vec::<String>::new()
    );
    // A job registered again under a collected ID starts afresh.
    register(&agent, &sh_job("done", "batch", "echo again"));
    wait_dead(&agent, "done");
    assert_eq!(
        agent
            .get_json("/v1/job/done/allocations")
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn the_leader_collects_on_its_interval_and_spares_parameterized_parents() {
    let agent = agent_with(json!({
        "job_gc_interval": "1s",
        "job_gc_threshold": "1s",
        "eval_gc_threshold": "1s",
        "batch_eval_gc_threshold": "1s",
    }));
    let mut parent = sh_job("param", "batch", "echo child ran");
    parent["Job"]["ParameterizedJob"] = json!({"Payload": "optional"});
    register(&agent, &parent);
    let r = agent.request("POST", "/v1/job/param/dispatch", &[], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let child = r.json()["DispatchedJobID"].as_str().unwrap().to_string();
    register(&agent, &sh_job("once", "batch", "echo once"));

    // Within a few intervals the finished jobs are gone (they may go before a poll sees them
    // dead: the thresholds are a second), without any request asking.
    wait_until(Duration::from_secs(20), "the periodic collection", || {
        job_status(&agent, "once").is_none() && job_status(&agent, &child).is_none()
    });
    assert!(agent
        .log()
        .lines()
        .any(|l| l.contains("gc: collected") && l.contains("jobs")));
    // The parent that makes children stays, and can dispatch again.
    assert!(job_status(&agent, "param").is_some());
    let r = agent.request("POST", "/v1/job/param/dispatch", &[], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn gc_settings_that_are_not_durations_are_refused_at_start() {
    let dir = temp_dir("gc-bad");
    let config = dir.with_extension("json");
    std::fs::write(
        &config,
        json!({"server": {"job_gc_threshold": "soon"}}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nomadlet"))
        .args(["agent", "-dev", "-data-dir"])
        .arg(&dir)
        .arg("-config")
        .arg(&config)
        .output()
        .expect("run nomadlet");
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.job_gc_threshold"), "{err}");
}
