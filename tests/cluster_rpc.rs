//! A cluster over the RPC port, multi-process on loopback: a server-only agent and client-only
//! agents (each its own ports and data dir) — registration, placement on a client, heartbeats
//! and missed heartbeats, restarts of either side, the node secret, metadata.

mod common;

use std::time::Duration;

use common::{wait_until, TestAgent};
use serde_json::Value;

/// Short heartbeats so a dead client is noticed in seconds: TTL 1–2 s, grace 1 s.
const FAST_HEARTBEATS: &str =
    "server {\n  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"1s\"\n}\n";

fn nodes(server: &TestAgent) -> Vec<Value> {
    server
        .get_json("/v1/nodes")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn node_status(server: &TestAgent, id: &str) -> String {
    let r = server.get(&format!("/v1/node/{id}"));
    if r.status != 200 {
        return String::new();
    }
    r.json()["Status"].as_str().unwrap_or_default().to_string()
}

fn wait_status(server: &TestAgent, id: &str, want: &str, within: Duration) {
    wait_until(within, &format!("node {id} {want}"), || {
        node_status(server, id) == want
    });
}

/// A job of one raw_exec task running `script` (batch: never rescheduled elsewhere).
fn register_job(server: &TestAgent, id: &str, script: &str) {
    let body = serde_json::json!({"Job": {"ID": id, "Type": "batch", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", script]}}]}]}});
    let r = server.request("POST", "/v1/jobs", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "register {id}: {}", r.text());
}

/// The job's allocs on the server: (alloc ID, node ID, client status).
fn allocs_of(server: &TestAgent, job: &str) -> Vec<(String, String, String)> {
    server
        .get_json(&format!("/v1/job/{job}/allocations"))
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("ID"), s("NodeID"), s("ClientStatus"))
        })
        .collect()
}

fn wait_running(server: &TestAgent, job: &str) -> (String, String) {
    let mut found = None;
    wait_until(
        Duration::from_secs(20),
        &format!("job {job} running"),
        || {
            found = allocs_of(server, job)
                .into_iter()
                .find(|(_, _, status)| status == "running")
                .map(|(a, n, _)| (a, n));
            found.is_some()
        },
    );
    found.unwrap_or_default()
}

#[test]
fn clients_register_a_job_runs_on_one_and_calls_need_the_node_secret() {
    let server = TestAgent::server("", &[]);
    let rpc = server.rpc_addr();
    let a = TestAgent::client(&[&rpc], "", &[]);
    let b = TestAgent::client(&[&rpc], "", &[]);
    let ids = [a.node_id(), b.node_id()];
    assert_ne!(ids[0], ids[1]);
    wait_until(Duration::from_secs(15), "both clients ready", || {
        let n = nodes(&server);
        ids.iter().all(|id| {
            n.iter()
                .any(|x| x["ID"] == id.as_str() && x["Status"] == "ready")
        })
    });
    assert_eq!(
        nodes(&server).len(),
        2,
        "the server runs no client of its own"
    );
    // The node record keeps what the client fingerprinted, and never shows its secret.
    let rec = server.get_json(&format!("/v1/node/{}", ids[0]));
    assert_eq!(rec["Events"][0]["Message"], "Node registered");
    assert_eq!(rec["Drivers"]["raw_exec"]["Healthy"], true);
    assert_eq!(rec["SecretID"], "");

    register_job(&server, "hello", "echo hello-from-a-client; sleep 60");
    let (alloc, node) = wait_running(&server, "hello");
    let holder = if node == ids[0] { &a } else { &b };
    assert!(ids.contains(&node), "placed on a client: {node}");
    let log = holder
        .data_dir
        .join(format!("alloc/{alloc}/alloc/logs/t.stdout.0"));
    wait_until(
        Duration::from_secs(10),
        "the task's output on its client",
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("hello-from-a-client")),
    );
    // The client's own API serves the alloc it runs.
    let cat = holder.get(&format!(
        "/v1/client/fs/cat/{alloc}?path=alloc/logs/t.stdout.0"
    ));
    assert_eq!(cat.status, 200, "{}", cat.text());
    assert!(cat.text().contains("hello-from-a-client"));

    // Every call but register needs the node's secret.
    let beat = serde_json::json!({"node_id": ids[0]}).to_string();
    for secret in [Some("not-the-secret"), None] {
        let headers: Vec<(&str, &str)> = secret
            .map(|s| vec![("X-Nomad-Node-Secret", s)])
            .unwrap_or_default();
        let r = server.rpc_request("POST", "/v1/rpc/node/heartbeat", &headers, beat.as_bytes());
        assert_eq!(
            (r.status, r.text().trim()),
            (403, "Permission denied"),
            "{secret:?}"
        );
    }
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/heartbeat",
        &[("X-Nomad-Node-Secret", "x")],
        br#"{"node_id":"no-such-node"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server.rpc_request("POST", "/v1/rpc/node/heartbeat", &[], b"{not json");
    assert_eq!(r.status, 400, "{}", r.text());
    // A registration taking over a known node ID with another secret is refused.
    let mut reg = serde_json::json!({"node_id": ids[0], "name": "thief", "datacenter": "dc1",
        "http_addr": "127.0.0.1:1", "tls_enabled": false, "node_pool": "default",
        "node_class": "", "version": "0", "attributes": {}, "meta": {}, "resources": null,
        "drivers": {}, "status": "ready", "secret_id": "guess"});
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/register",
        &[],
        reg.to_string().as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    reg["secret_id"] = "".into();
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/register",
        &[],
        reg.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        server.get_json(&format!("/v1/node/{}", ids[0]))["Name"],
        rec["Name"],
        "refused registrations changed nothing"
    );
    // Every other path on the RPC port is the HTTP API.
    let r = server.rpc_request("GET", "/v1/nodes", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().map(Vec::len), Some(2));
}

#[test]
fn a_killed_client_goes_down_within_ttl_and_grace_and_comes_back_with_its_node_id() {
    let server = TestAgent::server(FAST_HEARTBEATS, &[]);
    let mut client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let id = client.node_id();
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    client.kill9();
    let killed = std::time::Instant::now();
    // TTL at most 2 s (min 1 s plus jitter), grace 1 s: down within about 3 s.
    wait_status(&server, &id, "down", Duration::from_secs(8));
    assert!(
        killed.elapsed() >= Duration::from_millis(900),
        "not down before the grace: {:?}",
        killed.elapsed()
    );
    let events = server.get_json(&format!("/v1/node/{id}"))["Events"].clone();
    assert!(
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["Message"] == "Node heartbeat missed")),
        "{events}"
    );
    client.restart_after_stop();
    assert_eq!(client.node_id(), id, "the node ID survives a restart");
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    let rec = server.get_json(&format!("/v1/node/{id}"));
    assert!(
        rec["Events"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["Message"] == "Node reregistered by heartbeat")),
        "{}",
        rec["Events"]
    );
    assert_eq!(nodes(&server).len(), 1, "the same node, not a new one");
}

#[test]
fn a_restarted_server_keeps_nodes_and_jobs_and_its_client_reconnects() {
    let mut server = TestAgent::server(FAST_HEARTBEATS, &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let id = client.node_id();
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    register_job(&server, "before", "sleep 60");
    let (alloc, _) = wait_running(&server, "before");
    server.restart();
    assert_eq!(
        node_status(&server, &id),
        "ready",
        "the node record survives"
    );
    assert_eq!(server.get_json("/v1/job/before")["ID"], "before");
    // The client reaches the restarted server: its heartbeats keep the node ready past a
    // whole TTL + grace, and a job registered now reaches it through its pull.
    register_job(&server, "after", "echo after-restart; sleep 60");
    let (after, node) = wait_running(&server, "after");
    assert_eq!(node, id);
    let log = client
        .data_dir
        .join(format!("alloc/{after}/alloc/logs/t.stdout.0"));
    wait_until(
        Duration::from_secs(10),
        "output of the job placed after the restart",
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("after-restart")),
    );
    assert!(allocs_of(&server, "before")
        .iter()
        .any(|(a, _, s)| *a == alloc && s == "running"));
    // Past a whole TTL + grace of the restarted server's timers the node is still ready:
    // its client heartbeats the new server.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    wait_until(
        Duration::from_secs(10),
        "a TTL + grace with the node ready",
        || {
            assert_eq!(node_status(&server, &id), "ready");
            std::time::Instant::now() > until
        },
    );
}

#[test]
fn dynamic_metadata_set_on_a_client_reaches_the_servers_node_record() {
    let server = TestAgent::server("", &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &["-meta-batch-window", "300ms"]);
    let id = client.node_id();
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    let r = client.request(
        "POST",
        "/v1/client/metadata",
        &[],
        br#"{"Meta": {"rack": "r7"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(Duration::from_secs(5), "the metadata on the server", || {
        server.get_json(&format!("/v1/node/{id}"))["Meta"]["rack"] == "r7"
    });
}
