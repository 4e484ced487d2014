//! One client cut off from every server by a network partition (its host's link downed in a
//! network namespace, `common/netns.rs`: packets lost both ways, no reset), as Nomad handles
//! it (ref §2.5, §3.5): after its heartbeat TTL and grace the server marks the node `down`,
//! its alloc `lost` (desired `stop`) and places a replacement on the other client, while the
//! cut-off client, which cannot know, keeps running the original; on heal the client
//! heartbeats again, its node goes back to `ready`, and it stops the lost alloc, so the job
//! runs once, not twice.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::netns::{self, Net};
use common::{kill_leftover_tasks, try_get, wait_until, TestAgent};
use serde_json::{json, Value};

/// Short heartbeats: TTL 1–2 s, 2 s of grace (a fresh leader's failover TTL short too).
const SERVER: &str = "server {\n  bootstrap_expect = 1\n  min_heartbeat_ttl = \"1s\"\n  \
    heartbeat_grace = \"2s\"\n  failover_heartbeat_ttl = \"3s\"\n}\n";

/// Generous bound for each step (times WAIT_SLACK in `wait_until`).
const STEP: Duration = Duration::from_secs(20);

/// The task records its pid, then sleeps.
const SCRIPT: &str = "echo $$ > \"$NOMAD_TASK_DIR/pid\"; exec sleep 1000";

fn node_status(server: &TestAgent, id: &str) -> String {
    try_get(server, &format!("/v1/node/{id}"))
        .filter(|r| r.status == 200)
        .and_then(|r| r.json()["Status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The job's allocs on the server: ID → (node, desired, client status).
fn allocs(server: &TestAgent, job: &str) -> BTreeMap<String, (String, String, String)> {
    let Some(r) = try_get(server, &format!("/v1/job/{job}/allocations")) else {
        return BTreeMap::new();
    };
    let list: Value = if r.status == 200 {
        r.json()
    } else {
        Value::Null
    };
    list.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (
                s("ID"),
                (s("NodeID"), s("DesiredStatus"), s("ClientStatus")),
            )
        })
        .collect()
}

/// Whether process `pid` is alive (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

fn task_pid(client: &TestAgent, alloc: &str) -> i32 {
    let path = client.data_dir.join(format!("alloc/{alloc}/t/local/pid"));
    let mut pid = 0;
    wait_until(STEP, "the task's pid file", || {
        pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    pid
}

fn scenario(net: &Net) {
    let server = net.server(1, SERVER);
    let rpc = vec![server.rpc_addr()];
    let cut = net.client(2, &rpc, "");
    let cut_node = cut.node_id();
    wait_until(STEP, "the first client ready", || {
        node_status(&server, &cut_node) == "ready"
    });
    let job = json!({"Job": {"ID": "once", "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", SCRIPT]}}]}]}});
    let r = server.request("POST", "/v1/jobs", &[], job.to_string().as_bytes());
    assert_eq!(r.status, 200, "register: {}", r.text());
    let mut original = String::new();
    wait_until(STEP, "the alloc running on the first client", || {
        let all = allocs(&server, "once");
        match all.iter().next() {
            Some((id, (node, _, status))) if all.len() == 1 => {
                original = id.clone();
                node == &cut_node && status == "running"
            }
            _ => false,
        }
    });
    let pid = task_pid(&cut, &original);
    assert!(alive(pid));
    // The other client joins only now: the alloc could go nowhere else.
    let other = net.client(3, &rpc, "");
    let other_node = other.node_id();
    wait_until(STEP, "the second client ready", || {
        node_status(&server, &other_node) == "ready"
    });

    net.cut(2);
    wait_until(STEP, "the cut-off node down", || {
        node_status(&server, &cut_node) == "down"
    });
    let mut replacement = String::new();
    wait_until(STEP, "the original lost and a replacement running", || {
        let all = allocs(&server, "once");
        let lost = all
            .get(&original)
            .is_some_and(|(_, desired, status)| desired == "stop" && status == "lost");
        let running: Vec<_> = all
            .iter()
            .filter(|(id, (_, d, s))| **id != original && d == "run" && s == "running")
            .collect();
        if let [(id, (node, _, _))] = running.as_slice() {
            assert_eq!(
                node.as_str(),
                other_node.as_str(),
                "the replacement is on the reachable client"
            );
            replacement = (*id).clone();
        }
        lost && !replacement.is_empty()
    });
    // The cut-off client cannot know: the original still runs there (no
    // `stop_on_client_after` in the group, as Nomad).
    assert!(
        alive(pid),
        "the cut-off client keeps its task while it hears nothing"
    );

    net.heal(2);
    wait_until(STEP, "the node ready again", || {
        node_status(&server, &cut_node) == "ready"
    });
    wait_until(STEP, "the lost alloc's task stopped by its client", || {
        !alive(pid)
    });
    // Once settled: the replacement is the only alloc running, and nothing new was placed.
    wait_until(STEP, "one alloc running, the original not", || {
        let all = allocs(&server, "once");
        let running: Vec<&String> = all
            .iter()
            .filter(|(_, (_, _, s))| s == "running")
            .map(|(id, _)| id)
            .collect();
        all.len() == 2 && running == vec![&replacement]
    });
    // The node's events tell the story, as Nomad's (ref §2.2, §2.5).
    let node = server.get_json(&format!("/v1/node/{cut_node}"));
    let events: Vec<&str> = node["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["Message"].as_str())
        .collect();
    let missed = events.iter().position(|m| *m == "Node heartbeat missed");
    let back = events
        .iter()
        .position(|m| *m == "Node reregistered by heartbeat");
    assert!(
        matches!((missed, back), (Some(a), Some(b)) if a < b),
        "{events:?}"
    );
    let all = allocs(&server, "once");
    assert_eq!(all[&original].1, "stop", "{all:?}");
    assert_eq!(all[&replacement].1, "run", "{all:?}");
    kill_leftover_tasks(&cut.data_dir);
    kill_leftover_tasks(&other.data_dir);
}

#[test]
fn a_client_cut_off_goes_down_its_alloc_is_replaced_and_on_heal_stops_the_lost_one() {
    netns::run(3, scenario);
}
