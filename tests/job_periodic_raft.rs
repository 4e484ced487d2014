//! The periodic dispatcher is a leader duty: in a cluster of three replicated servers only
//! the leader runs a `periodic` thread, and each launch (`<id>/periodic-<unix>`) is made once
//! and replicated, so every server sees the same children, each with exactly one eval.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const FORM: Duration = Duration::from_secs(30);

/// The index of the server every server names as leader, once they agree.
fn leader(servers: &[TestAgent]) -> Option<usize> {
    let named: BTreeSet<String> = servers
        .iter()
        .map(|a| {
            try_get(a, "/v1/status/leader?stale")
                .filter(|r| r.status == 200)
                .and_then(|r| r.json().as_str().map(str::to_string))
        })
        .collect::<Option<_>>()?;
    let addr = named.into_iter().next().filter(|a| !a.is_empty())?;
    servers.iter().position(|s| s.rpc_addr() == addr)
}

fn has_thread(agent: &TestAgent, name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", agent.pid())) else {
        return false;
    };
    dir.flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

fn children(a: &TestAgent) -> Vec<String> {
    try_get(a, "/v1/jobs?prefix=beat/periodic-&stale")
        .filter(|r| r.status == 200)
        .and_then(|r| r.json().as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|j| j["ID"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn only_the_leader_launches_periodic_children_and_every_server_sees_each_once() {
    let servers = cluster(3);
    let mut l = None;
    wait_until(FORM, "one leader named by every server", || {
        l = leader(&servers);
        l.is_some()
    });
    let l = l.unwrap();
    let job: Value = json!({"Job": {"ID": "beat", "Type": "batch", "Datacenters": ["dc1"],
        "Periodic": {"Spec": "* * * * * * *"},
        "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}});
    let r = servers[l].request("PUT", "/v1/jobs", &[], job.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(FORM, "three children on every server", || {
        servers.iter().all(|s| children(s).len() >= 3)
    });
    assert!(has_thread(&servers[l], "periodic"), "the leader dispatches");
    for (i, s) in servers.iter().enumerate() {
        if i != l {
            assert!(
                !has_thread(s, "periodic"),
                "follower {i} runs no dispatcher"
            );
        }
    }
    let on_leader = children(&servers[l]);
    for child in on_leader.iter().take(3) {
        let evals = try_get(&servers[l], &format!("/v1/job/{child}/evaluations"))
            .map(|r| r.json())
            .unwrap_or(Value::Null);
        // With no client the launch's eval blocks (a `queued-allocs` eval follows it).
        let launches: Vec<Value> = evals
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["TriggeredBy"] == "periodic-job")
            .collect();
        assert_eq!(launches.len(), 1, "one launch of {child}: {launches:?}");
    }
}
