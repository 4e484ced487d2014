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
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/heartbeat",
        &[("X-Nomad-Node-Secret", "x")],
        b"{not json",
    );
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

#[test]
fn task_states_reached_while_the_server_was_down_reach_it_afterwards() {
    let mut server = TestAgent::server("", &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let id = client.node_id();
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    register_job(&server, "short", "echo started; sleep 2; echo finished");
    let (alloc, _) = wait_running(&server, "short");
    let st = server.stop();
    assert!(st.success(), "{st}");
    let log = client
        .data_dir
        .join(format!("alloc/{alloc}/alloc/logs/t.stdout.0"));
    wait_until(
        Duration::from_secs(15),
        "the task finished with its server away",
        || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("finished"))
                && client.log().contains("cannot save task state")
        },
    );
    server.restart_after_stop();
    wait_until(
        Duration::from_secs(15),
        "the finished task on the server",
        || {
            allocs_of(&server, "short")
                .iter()
                .any(|(a, _, s)| *a == alloc && s == "complete")
        },
    );
}

#[test]
fn a_restarted_server_arms_timers_for_known_nodes_and_marks_a_silent_one_down() {
    // Grace long enough that the node cannot go down before the server restarted; the
    // restarted server takes office with a failover TTL short enough for a test.
    let slow = "server {\n  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"5s\"\n  failover_heartbeat_ttl = \"3s\"\n}\n";
    let mut server = TestAgent::server(slow, &[]);
    let mut client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let id = client.node_id();
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    client.kill9();
    server.restart();
    // The log is the restarted server's own: the node was still ready when it started.
    assert!(!server.log().contains("missed its heartbeat"));
    wait_status(&server, &id, "down", Duration::from_secs(15));
    // The line is logged once the change is visible, so it may trail the status by a moment.
    wait_until(
        Duration::from_secs(5),
        "the heartbeat timer's log line",
        || server.log().contains("missed its heartbeat"),
    );
}

#[test]
fn the_clients_server_list_is_what_its_link_uses() {
    let server = TestAgent::server(FAST_HEARTBEATS, &[]);
    let rpc = server.rpc_addr();
    let client = TestAgent::client(&[&rpc], "", &[]);
    let id = client.node_id();
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    assert_eq!(
        client.get_json("/v1/agent/servers"),
        serde_json::json!([rpc])
    );
    // Only a server that is not there: the heartbeats stop reaching the server.
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let r = client.request(
        "PUT",
        &format!("/v1/agent/servers?address={nowhere}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_status(&server, &id, "down", Duration::from_secs(10));
    // Both: the link fails over from the dead one to the live one.
    let r = client.request(
        "PUT",
        &format!("/v1/agent/servers?address={nowhere}&address={rpc}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_status(&server, &id, "ready", Duration::from_secs(10));
}

#[test]
fn a_stopped_client_whose_allocs_may_reconnect_is_disconnected_then_ready_again() {
    let server = TestAgent::server(FAST_HEARTBEATS, &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let id = client.node_id();
    wait_status(&server, &id, "ready", Duration::from_secs(10));
    let body = serde_json::json!({"Job": {"ID": "edge", "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Disconnect": {"LostAfter": 3_600_000_000_000u64},
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", "sleep 60"]}}]}]}});
    let r = server.request("POST", "/v1/jobs", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    wait_running(&server, "edge");
    let pid = client.pid() as i32;
    common::kill(pid, libc::SIGSTOP);
    let stopped = std::panic::catch_unwind(|| {
        wait_status(&server, &id, "disconnected", Duration::from_secs(10));
    });
    common::kill(pid, libc::SIGCONT);
    if let Err(e) = stopped {
        std::panic::resume_unwind(e);
    }
    // Back: through initializing (its allocs first) to ready.
    wait_status(&server, &id, "ready", Duration::from_secs(15));
    let events = server.get_json(&format!("/v1/node/{id}"))["Events"].clone();
    assert!(
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["Message"] == "Node heartbeat missed")),
        "{events}"
    );
}

#[test]
fn the_rpc_port_refuses_hostile_calls_with_clear_errors() {
    let server = TestAgent::server("", &[]);
    let secret = [("X-Nomad-Node-Secret", "s")];
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for (method, path, headers, body, want) in [
        ("GET", "/v1/rpc/node/heartbeat", &secret[..], "", 405),
        ("POST", "/v1/rpc/no/such/call", &secret[..], "{}", 404),
        (
            "POST",
            "/v1/rpc/node/heartbeat",
            &secret[..],
            deep.as_str(),
            400,
        ),
        (
            "POST",
            "/v1/rpc/node/heartbeat",
            &secret[..],
            r#"{"node_id": 7}"#,
            400,
        ),
        ("POST", "/v1/rpc/node/register", &[][..], "{}", 400),
        ("POST", "/v1/rpc/alloc/updates", &[][..], "{}", 403),
    ] {
        let r = server.rpc_request(method, path, headers, body.as_bytes());
        assert_eq!(r.status, want, "{method} {path}: {}", r.text());
        assert!(!r.text().is_empty(), "{method} {path}: a reason");
    }
    // A body past the limit is refused before it is read.
    let s = std::net::TcpStream::connect(("127.0.0.1", server.rpc_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let head = "POST /v1/rpc/node/register HTTP/1.1\r\nHost: x\r\nContent-Length: 5242880\r\n\r\n";
    let r = common::exchange(s, head.as_bytes()).expect("413 before the body");
    assert_eq!(r.status, 413);
    // The server is still fine.
    assert_eq!(server.get_json("/v1/nodes"), serde_json::json!([]));
}

#[test]
fn a_server_and_client_in_one_agent_heartbeats_its_own_timer_and_serves_rpc() {
    let both = "server {\n  enabled = true\n  bootstrap_expect = 1\n}\nclient { enabled = true }\nplugin \"raw_exec\" {\n  config { enabled = true }\n}\n";
    let agent = TestAgent::cluster_agent("both", &common::short_dir(), both, FAST_HEARTBEATS, &[]);
    let id = agent.node_id();
    wait_status(&agent, &id, "ready", Duration::from_secs(10));
    // Past several TTL + grace: its own heartbeats keep it ready.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    wait_until(
        Duration::from_secs(10),
        "TTLs passing with the node ready",
        || {
            assert_eq!(node_status(&agent, &id), "ready");
            std::time::Instant::now() > until
        },
    );
    register_job(&agent, "local", "sleep 60");
    let (_, node) = wait_running(&agent, "local");
    assert_eq!(node, id);
    // Its RPC port takes a remote client too.
    let client = TestAgent::client(&[&agent.rpc_addr()], "", &[]);
    wait_status(&agent, &client.node_id(), "ready", Duration::from_secs(10));
}
