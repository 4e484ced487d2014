//! Helpers shared by the workloads test files: register jobs, find and wait for allocations.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

pub const WAIT: Duration = Duration::from_secs(20);

/// A one-group, one-task raw_exec job running `sh -c script`.
pub fn sh_job(id: &str, job_type: &str, script: &str) -> Value {
    json!({"Job": {"ID": id, "Type": job_type, "TaskGroups": [{"Name": "g", "Count": 1,
        "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", script]}}]}]}})
}

pub fn register(agent: &TestAgent, job: &Value) -> Value {
    let r = agent.request("PUT", "/v1/jobs", &[], job.to_string().as_bytes());
    assert_eq!(r.status, 200, "register: {}", r.text());
    r.json()
}

/// Allocation stubs of a job.
pub fn allocs(agent: &TestAgent, job: &str) -> Vec<Value> {
    agent
        .get_json(&format!("/v1/job/{job}/allocations"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The ID of the job's (first) allocation that should be running.
pub fn first_alloc(agent: &TestAgent, job: &str) -> String {
    let mut id = String::new();
    wait_until(WAIT, "an allocation", || {
        if let Some(a) = allocs(agent, job)
            .iter()
            .find(|a| a["DesiredStatus"] == "run")
        {
            id = a["ID"].as_str().unwrap().to_string();
            true
        } else {
            false
        }
    });
    id
}

pub fn alloc(agent: &TestAgent, id: &str) -> Value {
    agent.get_json(&format!("/v1/allocation/{id}"))
}

/// Wait until the allocation's ClientStatus is `status`; returns the allocation.
pub fn wait_status(agent: &TestAgent, id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT, &format!("alloc {id} {status}"), || {
        last = alloc(agent, id);
        last["ClientStatus"] == status
    });
    last
}

/// Wait until the scheduler has run the evaluation (it is no longer `pending`); returns it.
pub fn wait_eval_done(agent: &TestAgent, id: &str) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT, &format!("eval {id} evaluated"), || {
        last = agent.get_json(&format!("/v1/evaluation/{id}"));
        last["Status"] != "pending"
    });
    last
}

/// Wait until a task is running.
pub fn wait_task_running(agent: &TestAgent, id: &str, task: &str) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT, &format!("task {task} running"), || {
        last = alloc(agent, id);
        last["TaskStates"][task]["State"] == "running"
    });
    last
}

pub fn event_types(alloc: &Value, task: &str) -> Vec<String> {
    alloc["TaskStates"][task]["Events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["Type"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn events_of<'a>(alloc: &'a Value, task: &str, ty: &str) -> Vec<&'a Value> {
    alloc["TaskStates"][task]["Events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["Type"] == ty).collect())
        .unwrap_or_default()
}

pub fn alloc_dir(agent: &TestAgent, id: &str) -> std::path::PathBuf {
    agent.data_dir.join("alloc").join(id)
}

pub fn read_log(agent: &TestAgent, id: &str, task: &str, stream: &str) -> String {
    let p = alloc_dir(agent, id)
        .join("alloc/logs")
        .join(format!("{task}.{stream}.0"));
    std::fs::read_to_string(p).unwrap_or_default()
}
