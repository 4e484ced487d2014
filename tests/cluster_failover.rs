//! Clients and their servers, multi-process on loopback: a client learns the server list from
//! its register/heartbeat replies (ref §5.2) and shows it in `/v1/agent/servers`, a dead
//! server in its list costs nothing but a refused connect, and reads carry the query meta of
//! the answering server's leader view (ref §5.5) with `?stale` answered where it arrives.

mod common;
mod fs_util;

use std::time::Duration;

use common::{free_port, wait_until, TestAgent};
use fs_util::{run_job, wait_alloc};

/// Heartbeats every second or two, so a reply comes soon.
const FAST_BEAT: &str = "server {\n  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"5s\"\n}\n";

fn wait_ready(server: &TestAgent, id: &str) {
    wait_until(Duration::from_secs(15), &format!("node {id} ready"), || {
        let r = server.get(&format!("/v1/node/{id}"));
        r.status == 200 && r.json()["Status"] == "ready"
    });
}

/// An address nothing listens on (a server that died).
fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn a_client_replaces_its_server_list_with_the_servers_its_server_names() {
    let server = TestAgent::server(FAST_BEAT, &[]);
    let dead = dead_addr();
    // The dead server first: every call must get past it.
    let client = TestAgent::client(&[&dead, &server.rpc_addr()], "", &[]);
    let node = client.node_id();
    wait_ready(&server, &node);

    // The registration's reply named the live server alone: the list is replaced by it.
    wait_until(Duration::from_secs(10), "the learned server list", || {
        client.get_json("/v1/agent/servers") == serde_json::json!([server.rpc_addr()])
    });
    let me = client.get_json("/v1/agent/self");
    assert_eq!(
        me["stats"]["client"]["known_servers"],
        server.rpc_addr().as_str(),
        "{me}"
    );

    // The client works: a job registered through it runs on it, its alloc is reported.
    let job = run_job(
        &client,
        "learned",
        "service",
        "echo up; while true; do sleep 0.1; done",
        fs_util::default_logs(),
    );
    let alloc = wait_alloc(&server, &job);
    let a = server.get_json(&format!("/v1/allocation/{alloc}"));
    assert_eq!(a["NodeID"], node.as_str());
    wait_until(Duration::from_secs(10), "the alloc running", || {
        server.get_json(&format!("/v1/allocation/{alloc}"))["ClientStatus"] == "running"
    });

    // A list set by hand holds until the next reply replaces it (ref §5.2): the dead server
    // goes again, the node stays ready meanwhile.
    let r = client.request(
        "PUT",
        &format!(
            "/v1/agent/servers?address={dead}&address={}",
            server.rpc_addr()
        ),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut both = vec![dead.clone(), server.rpc_addr()];
    both.sort();
    assert_eq!(
        client.get_json("/v1/agent/servers"),
        serde_json::json!(both)
    );
    // The next heartbeat (within the TTL) replaces it.
    wait_until(Duration::from_secs(10), "the list replaced again", || {
        client.get_json("/v1/agent/servers") == serde_json::json!([server.rpc_addr()])
    });
    assert_eq!(
        server.get_json(&format!("/v1/node/{node}"))["Status"],
        "ready"
    );
}

#[test]
fn register_and_heartbeat_replies_list_the_live_servers() {
    let server = TestAgent::server("", &[]);
    let id = "0000000a-0000-4000-8000-00000000fa4e";
    let secret = "0000000a-5ec2-4000-8000-000000000000";
    let reg = serde_json::json!({
        "node_id": id, "name": "fake", "datacenter": "dc1",
        "http_addr": "127.0.0.1:1", "tls_enabled": false, "node_pool": "default",
        "node_class": "", "version": "1.9.0", "attributes": {}, "meta": {},
        "resources": {}, "drivers": {}, "status": "ready", "secret_id": secret,
    });
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/register",
        &[],
        reg.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // One server, gossiping alone: itself, at its RPC address.
    assert_eq!(v["servers"], serde_json::json!([server.rpc_addr()]), "{v}");
    assert!(v["ttl_ms"].as_u64().is_some_and(|t| t > 0), "{v}");
    let hb = serde_json::json!({ "node_id": id });
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/heartbeat",
        &[("X-Nomad-Node-Secret", secret)],
        hb.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["servers"], serde_json::json!([server.rpc_addr()]));
    // A server that is the leader never refuses a call as passed on once before.
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/heartbeat",
        &[
            ("X-Nomad-Node-Secret", secret),
            ("X-Nomadlet-Forwarded-By", "127.0.0.1:1"),
        ],
        hb.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The query meta headers of a reply: (KnownLeader, LastContact).
fn meta(r: &common::Response) -> (Option<String>, Option<String>) {
    (
        r.header("X-Nomad-KnownLeader").map(str::to_string),
        r.header("X-Nomad-LastContact").map(str::to_string),
    )
}

#[test]
fn reads_carry_the_leader_view_and_stale_reads_are_answered_where_they_arrive() {
    let server = TestAgent::server("", &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    wait_ready(&server, &client.node_id());
    let leader = (Some("true".to_string()), Some("0".to_string()));
    for path in [
        "/v1/jobs",
        "/v1/jobs?stale",
        "/v1/jobs?stale=true",
        "/v1/nodes?stale=",
        "/v1/allocations",
        "/v1/evaluations?stale",
    ] {
        // On the leader itself, and through a client-only agent (the server's headers).
        for agent in [&server, &client] {
            let r = agent.get(path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(meta(&r), leader, "{path}");
            assert!(r.header("X-Nomad-Index").is_some(), "{path}");
        }
    }
    // A bad stale value is Nomad's 400 wherever it arrives.
    for agent in [&server, &client] {
        let r = agent.get("/v1/jobs?stale=maybe");
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(
            r.text(),
            "Expect `true` or `false` for `stale` query string parameter"
        );
    }
    // Writes carry the index alone.
    let body = serde_json::json!({"Job": {"ID": "meta", "Type": "batch",
        "Datacenters": ["dc1"], "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t",
        "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}});
    let r = server.request("POST", "/v1/jobs", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("X-Nomad-Index").is_some());
    assert_eq!(meta(&r), (None, None));
    // Agent-local endpoints carry none.
    let r = server.get("/v1/agent/self");
    assert_eq!(meta(&r), (None, None));
    // The leader answers a request another server passed on (it does not pass it again).
    let r = server.request(
        "GET",
        "/v1/job/meta",
        &[("X-Nomadlet-Forwarded-By", "x")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(meta(&r), leader);
}
