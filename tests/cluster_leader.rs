//! Three servers on loopback (one Raft cluster): a follower passes writes and consistent reads
//! to the leader and answers `?stale` reads itself (ref §5.5–5.6), node calls made to a
//! follower reach the leader, and a client whose server dies goes on through the others
//! without losing its allocations.

mod common;
mod fs_util;

use std::time::{Duration, Instant};

use common::{live_shims, wait_until, Response, TestAgent};
use fs_util::{run_job, wait_alloc};

/// How long three fresh servers get to gossip, bootstrap and elect a leader.
const FORM: Duration = Duration::from_secs(30);

/// Server config: three expected; heartbeats every second or two with a grace long enough for
/// a failover to a live server.
fn server_config(join: Option<u16>) -> String {
    let join = join
        .map(|p| {
            format!(
                "  server_join {{\n    retry_join = [\"127.0.0.1:{p}\"]\n    retry_interval = \"1s\"\n  }}\n"
            )
        })
        .unwrap_or_default();
    format!(
        "server {{\n  bootstrap_expect = 3\n  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"5s\"\n{join}}}\n"
    )
}

/// Three servers joined through the first one's serf port.
fn three_servers() -> Vec<TestAgent> {
    let first = TestAgent::server(&server_config(None), &[]);
    let serf = first.serf_port;
    let mut servers = vec![first];
    for _ in 0..2 {
        servers.push(TestAgent::server(&server_config(Some(serf)), &[]));
    }
    servers
}

/// The index of the leader, once every server names the same one (its own `?stale` view).
fn leader_of(servers: &[TestAgent]) -> usize {
    let mut leader = None;
    wait_until(FORM, "one leader all servers agree on", || {
        let seen: Vec<String> = servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| {
                let r = s.get("/v1/status/leader?stale");
                if r.status == 200 {
                    r.json().as_str().unwrap_or_default().to_string()
                } else {
                    String::new()
                }
            })
            .collect();
        let first = seen[0].clone();
        if first.is_empty() || seen.iter().any(|l| *l != first) {
            return false;
        }
        // A leader just killed may still be named until the others elect another.
        leader = servers
            .iter()
            .position(|s| s.rpc_addr() == first && s.child.is_some());
        leader.is_some()
    });
    leader.expect("a leader")
}

fn meta(r: &Response) -> (Option<&str>, Option<&str>) {
    (
        r.header("X-Nomad-KnownLeader"),
        r.header("X-Nomad-LastContact"),
    )
}

fn batch_job(id: &str) -> Vec<u8> {
    serde_json::json!({"Job": {"ID": id, "Type": "batch", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/true"}}]}]}})
    .to_string()
    .into_bytes()
}

#[test]
fn a_follower_passes_writes_and_consistent_reads_to_the_leader() {
    let servers = three_servers();
    let l = leader_of(&servers);
    let f = (l + 1) % 3;
    let (leader, follower) = (&servers[l], &servers[f]);

    // A write sent to a follower is applied by the leader: readable there at once.
    let r = follower.request("POST", "/v1/jobs", &[], &batch_job("via-follower"));
    assert_eq!(r.status, 200, "{}", r.text());
    let write_index: u64 = r
        .header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("the write's index");
    let on_leader = leader.get("/v1/job/via-follower");
    assert_eq!(on_leader.status, 200, "{}", on_leader.text());

    // A consistent read through the follower is the leader's, with the leader's meta.
    let via = follower.get("/v1/job/via-follower");
    assert_eq!(via.status, 200, "{}", via.text());
    assert_eq!(via.json(), leader.get_json("/v1/job/via-follower"));
    assert_eq!(meta(&via), (Some("true"), Some("0")));
    let index: u64 = via
        .header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("an index");
    assert!(index >= write_index, "{index} < {write_index}");

    // A stale read is the follower's own: the job arrives by replication; the meta is its
    // view (a known leader, heard from within the last few seconds).
    wait_until(Duration::from_secs(5), "the job replicated", || {
        follower.get("/v1/job/via-follower?stale").status == 200
    });
    let stale = follower.get("/v1/jobs?stale");
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("X-Nomad-KnownLeader"), Some("true"));
    let contact: u64 = stale
        .header("X-Nomad-LastContact")
        .and_then(|v| v.parse().ok())
        .expect("LastContact in ms");
    assert!(contact < 5_000, "last contact {contact} ms ago");

    // A request another server passed on is never passed on again.
    let r = follower.request("GET", "/v1/jobs", &[("X-Nomadlet-Forwarded-By", "x")], b"");
    assert_eq!((r.status, r.text().as_str()), (500, "No cluster leader"));
    // Agent endpoints are the follower's own.
    let me = follower.get_json("/v1/agent/self");
    assert_eq!(
        me["config"]["Ports"]["RPC"].as_u64(),
        Some(u64::from(follower.rpc_port)),
        "{me}"
    );

    // A node registering with a follower's RPC port is registered by the leader; the reply
    // lists every server.
    let id = "0000000b-0000-4000-8000-00000000fa4e";
    let reg = serde_json::json!({
        "node_id": id, "name": "fake", "datacenter": "dc1",
        "http_addr": "127.0.0.1:1", "tls_enabled": false, "node_pool": "default",
        "node_class": "", "version": "1.9.0", "attributes": {}, "meta": {},
        "resources": {}, "drivers": {}, "status": "ready",
        "secret_id": "0000000b-5ec2-4000-8000-000000000000",
    });
    let r = follower.rpc_request(
        "POST",
        "/v1/rpc/node/register",
        &[],
        reg.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut all: Vec<String> = servers.iter().map(|s| s.rpc_addr()).collect();
    all.sort();
    assert_eq!(r.json()["servers"], serde_json::json!(all));
    assert_eq!(leader.get(&format!("/v1/node/{id}")).status, 200);
}

#[test]
fn a_client_whose_follower_dies_goes_on_through_the_others_and_keeps_its_allocs() {
    client_failover(false);
}

#[test]
fn a_client_whose_leader_dies_goes_on_through_the_others_and_keeps_its_allocs() {
    client_failover(true);
}

/// A client that knows one server at first (the leader, or a follower) learns the others;
/// that server is killed; the client goes on through the others without losing its alloc.
fn client_failover(kill_leader: bool) {
    let mut servers = three_servers();
    let l = leader_of(&servers);
    let gone = if kill_leader { l } else { (l + 1) % 3 };
    let client = TestAgent::client(&[&servers[gone].rpc_addr()], "", &[]);
    let node = client.node_id();
    wait_until(Duration::from_secs(15), "the node ready", || {
        let r = servers[l].get(&format!("/v1/node/{node}"));
        r.status == 200 && r.json()["Status"] == "ready"
    });
    // It learns them all from its server's replies.
    let mut all: Vec<String> = servers.iter().map(|s| s.rpc_addr()).collect();
    all.sort();
    wait_until(Duration::from_secs(10), "every server learned", || {
        client.get_json("/v1/agent/servers") == serde_json::json!(all)
    });

    let job = run_job(
        &client,
        "keeps",
        "service",
        "while true; do sleep 0.1; done",
        fs_util::default_logs(),
    );
    let alloc = wait_alloc(&servers[l], &job);
    let shims = live_shims(&client.data_dir);
    assert_eq!(shims.len(), 1, "one task running");

    // Its server dies. The client goes on through the others: the node stays ready past
    // several TTLs plus the grace, the alloc stays the same one and running, the task is the
    // same process.
    servers[gone].kill9();
    let l = if kill_leader { leader_of(&servers) } else { l };
    let leader = &servers[l];
    let watch = Instant::now() + Duration::from_secs(10);
    while Instant::now() < watch {
        let n = leader.get_json(&format!("/v1/node/{node}"));
        assert_eq!(n["Status"], "ready", "the node stayed up: {n}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let allocs = leader.get_json(&format!("/v1/job/{job}/allocations"));
    let allocs = allocs.as_array().expect("allocs");
    assert_eq!(allocs.len(), 1, "not replaced: {allocs:?}");
    assert_eq!(allocs[0]["ID"], alloc.as_str());
    assert_eq!(allocs[0]["ClientStatus"], "running");
    assert_eq!(live_shims(&client.data_dir), shims, "the same task process");

    // New work reaches it, and its alloc is reachable through the leader (a tunnel reopened
    // to a live server).
    let r = client.request("POST", "/v1/jobs", &[], &batch_job("after-failover"));
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(Duration::from_secs(15), "the new job ran", || {
        leader.get_json("/v1/job/after-failover")["Status"] == "dead"
    });
    wait_until(
        Duration::from_secs(10),
        "alloc stats through the leader",
        || {
            leader
                .get(&format!("/v1/client/allocation/{alloc}/stats"))
                .status
                == 200
        },
    );
    // Once gossip has the dead server failed, replies drop it and so does the client.
    let live: Vec<String> = all
        .iter()
        .filter(|a| **a != servers[gone].rpc_addr())
        .cloned()
        .collect();
    wait_until(Duration::from_secs(30), "the dead server dropped", || {
        client.get_json("/v1/agent/servers") == serde_json::json!(live)
    });
}

#[test]
fn servers_that_are_clients_too_register_and_report_through_the_leader() {
    // Three agents, each server and client: a follower's own node writes go to the leader.
    let role = |join: Option<u16>| {
        format!(
            "{}client {{\n  enabled = true\n}}\nplugin \"raw_exec\" {{\n  config {{ enabled = true }}\n}}\n",
            server_config(join)
        )
    };
    let first = TestAgent::cluster_agent(
        "both",
        &common::short_dir(),
        "server { enabled = true }\n",
        &role(None),
        &[],
    );
    let serf = first.serf_port;
    let mut agents = vec![first];
    for _ in 0..2 {
        agents.push(TestAgent::cluster_agent(
            "both",
            &common::short_dir(),
            "server { enabled = true }\n",
            &role(Some(serf)),
            &[],
        ));
    }
    let l = leader_of(&agents);
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();
    for id in &ids {
        wait_until(Duration::from_secs(20), &format!("node {id} ready"), || {
            let r = agents[l].get(&format!("/v1/node/{id}"));
            r.status == 200 && r.json()["Status"] == "ready"
        });
    }
    // A system job runs on every node; each one's status reaches the leader.
    let body = serde_json::json!({"Job": {"ID": "everywhere", "Type": "system",
        "Datacenters": ["dc1"], "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t",
        "Driver": "raw_exec", "Config": {"command": "/bin/sh",
        "args": ["-c", "while true; do sleep 0.1; done"]}}]}]}});
    let f = (l + 1) % 3;
    let r = agents[f].request("POST", "/v1/jobs", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(
        Duration::from_secs(20),
        "an alloc running on every node",
        || {
            let v = agents[l].get_json("/v1/job/everywhere/allocations");
            let running: Vec<&str> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x["ClientStatus"] == "running")
                        .filter_map(|x| x["NodeID"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            ids.iter().all(|id| running.contains(&id.as_str())) && running.len() == 3
        },
    );
}
