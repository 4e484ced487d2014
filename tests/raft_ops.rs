//! The operator side of a Raft cluster on loopback (ref §5.8, §6): a new leader's failover
//! heartbeat TTL, autopilot's configuration and health, leadership transfer, servers that
//! join as non-voters first, `bootstrap_expect = 0`, and errors relayed through a hop.

mod common;

use std::time::{Duration, Instant};

use common::{cluster_with, raft_configuration, wait_leader, wait_until, TestAgent};

/// How long fresh servers get to gossip, bootstrap and elect a leader.
const FORM: Duration = Duration::from_secs(30);

fn node_status(server: &TestAgent, id: &str) -> Option<String> {
    let r = common::try_get(server, &format!("/v1/node/{id}"))?;
    (r.status == 200).then(|| r.json()["Status"].as_str().unwrap_or_default().to_string())
}

/// Ref §2.3: a new leader arms every node that is not down with the flat
/// `failover_heartbeat_ttl`, so a client that was heartbeating the old leader is not marked
/// down after the normal (here 1–2 s + 1 s) TTL; once the failover TTL passes without a
/// heartbeat it is.
#[test]
fn a_new_leader_gives_every_node_the_failover_ttl_before_marking_it_down() {
    let failover = Duration::from_secs(8);
    let mut servers = cluster_with(
        3,
        "",
        "  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"1s\"\n  failover_heartbeat_ttl = \"8s\"",
    );
    let leader = wait_leader(&servers, &[0, 1, 2], FORM);
    let addrs: Vec<String> = servers.iter().map(|s| s.rpc_addr()).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut client = TestAgent::client(&addrs, "", &[]);
    let mut node = String::new();
    wait_until(FORM, "the client's node ready", || {
        node = client.node_id();
        !node.is_empty() && node_status(&servers[leader], &node).as_deref() == Some("ready")
    });
    // The node and the leader die together: only the failover TTL is left for the node.
    client.kill9();
    servers[leader].kill9();
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new = wait_leader(&servers, &live, FORM);
    let elected = Instant::now();
    // Well past the normal TTL + grace (at most 3 s), well short of the failover TTL.
    let mut last = String::new();
    while elected.elapsed() < Duration::from_secs(5) {
        if let Some(s) = node_status(&servers[new], &node) {
            last = s;
            assert_eq!(
                last,
                "ready",
                "marked {last} {:?} after the new leader took over",
                elected.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last, "ready");
    wait_until(failover * 2, "the silent node marked down", || {
        node_status(&servers[new], &node).as_deref() == Some("down")
    });
}

fn put(a: &TestAgent, path: &str, body: &str) -> common::Response {
    a.request("PUT", path, &[], body.as_bytes())
}

/// The Raft configuration's servers (ID, address, voter) as `a` reads it.
fn raft_servers(a: &TestAgent) -> Option<Vec<(String, String, bool)>> {
    Some(
        raft_configuration(a)?
            .into_iter()
            .map(|c| (c.id, c.address, c.voter))
            .collect(),
    )
}

/// The server UUID of `a` as the Raft configuration names it.
fn uuid_of(servers: &[TestAgent], a: usize) -> String {
    raft_servers(&servers[a])
        .expect("raft configuration")
        .into_iter()
        .find(|(_, addr, _)| *addr == servers[a].rpc_addr())
        .map(|(id, _, _)| id)
        .expect("server in its own configuration")
}

/// An autopilot body with Nomad's defaults but for the given overrides (JSON members).
fn autopilot_body(overrides: &str) -> String {
    let mut v: serde_json::Value = serde_json::json!({
        "CleanupDeadServers": true, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250,
        "MinQuorum": 0, "ServerStabilizationTime": "10s",
    });
    let o: serde_json::Value = serde_json::from_str(overrides).expect("overrides");
    for (k, x) in o.as_object().expect("object") {
        v[k] = x.clone();
    }
    v.to_string()
}

/// Ref §5.8: the leader stores Nomad's defaults on taking office; a set replicates through
/// Raft (every server reads it back), `?cas=` answers `true` only at the current modify
/// index, and bad input is a 400 in Nomad's words.
#[test]
fn autopilot_configuration_replicates_and_checks_and_sets_like_nomads() {
    let servers = cluster_with(3, "", "");
    let leader = wait_leader(&servers, &[0, 1, 2], FORM);
    let f = (leader + 1) % 3;
    let path = "/v1/operator/autopilot/configuration";
    let mut cfg = serde_json::Value::Null;
    wait_until(FORM, "the default autopilot config stored", || {
        let r = servers[f].get(path);
        cfg = if r.status == 200 {
            r.json()
        } else {
            serde_json::Value::Null
        };
        r.status == 200
    });
    assert_eq!(cfg["CleanupDeadServers"], true);
    assert_eq!(cfg["LastContactThreshold"], "200ms");
    assert_eq!(cfg["MaxTrailingLogs"], 250);
    assert_eq!(cfg["MinQuorum"], 0);
    assert_eq!(cfg["ServerStabilizationTime"], "10s");
    for k in [
        "EnableRedundancyZones",
        "DisableUpgradeMigration",
        "EnableCustomUpgrades",
    ] {
        assert_eq!(cfg[k], false, "{k}");
    }
    let created = cfg["CreateIndex"].as_u64().expect("CreateIndex");
    assert!(created > 0);
    assert_eq!(cfg["ModifyIndex"].as_u64(), Some(created));

    let new = r#"{"CleanupDeadServers":false,"LastContactThreshold":"1s","MaxTrailingLogs":100,"MinQuorum":3,"ServerStabilizationTime":"5s"}"#;
    // A stale check-and-set index changes nothing.
    let r = put(&servers[f], &format!("{path}?cas={}", created + 1000), new);
    assert_eq!(
        (r.status, r.text().trim().to_string()),
        (200, "false".into())
    );
    let r = put(&servers[f], &format!("{path}?cas={created}"), new);
    assert_eq!(
        (r.status, r.text().trim().to_string()),
        (200, "true".into())
    );
    for s in &servers {
        wait_until(FORM, "the new config on every server", || {
            let r = s.get(&format!("{path}?stale"));
            r.status == 200 && r.json()["MinQuorum"] == 3
        });
        let c = s.get_json(&format!("{path}?stale"));
        assert_eq!(c["CleanupDeadServers"], false);
        assert_eq!(c["LastContactThreshold"], "1s");
        assert_eq!(c["ServerStabilizationTime"], "5s");
        assert_eq!(c["MaxTrailingLogs"], 100);
        assert_eq!(c["CreateIndex"].as_u64(), Some(created));
        assert!(c["ModifyIndex"].as_u64().expect("ModifyIndex") > created);
    }
    // The old index no longer matches; a set without one always answers true.
    let r = put(&servers[leader], &format!("{path}?cas={created}"), new);
    assert_eq!(r.text().trim(), "false");
    let r = put(&servers[leader], path, &autopilot_body("{}"));
    assert_eq!(
        (r.status, r.text().trim().to_string()),
        (200, "true".into())
    );

    for (body, query, want) in [
        (
            "{\"LastContactThreshold\":\"soon\"}",
            "",
            "Error parsing autopilot config",
        ),
        ("[1]", "", "Error parsing autopilot config"),
        ("{}", "?cas=abc", "Error parsing cas value"),
    ] {
        let r = put(&servers[f], &format!("{path}{query}"), body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().starts_with(want), "{body}: {}", r.text());
    }
    let r = servers[f].request("DELETE", path, &[], b"");
    assert_eq!((r.status, r.text()), (404, "Invalid method".to_string()));
}

/// The agent config's top-level `autopilot {}` block is what the cluster's first leader
/// stores (every key it leaves out keeps Nomad's default); a bad duration there stops the
/// agent at start with the key named.
#[test]
fn the_agent_configs_autopilot_block_is_what_the_first_leader_stores() {
    let server = TestAgent::server(
        "autopilot {\n  cleanup_dead_servers = false\n  last_contact_threshold = \"1s\"\n  max_trailing_logs = 100\n  server_stabilization_time = \"3s\"\n  enable_redundancy_zones = true\n}\n",
        &[],
    );
    let path = "/v1/operator/autopilot/configuration";
    let mut cfg = serde_json::Value::Null;
    wait_until(FORM, "the autopilot config stored", || {
        let r = server.get(path);
        cfg = if r.status == 200 {
            r.json()
        } else {
            serde_json::Value::Null
        };
        r.status == 200 && cfg["CreateIndex"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(cfg["CleanupDeadServers"], false, "{cfg}");
    assert_eq!(cfg["LastContactThreshold"], "1s", "{cfg}");
    assert_eq!(cfg["MaxTrailingLogs"], 100, "{cfg}");
    assert_eq!(cfg["ServerStabilizationTime"], "3s", "{cfg}");
    assert_eq!(cfg["EnableRedundancyZones"], true, "{cfg}");
    assert_eq!(
        cfg["MinQuorum"], 0,
        "a key left out keeps Nomad's default: {cfg}"
    );
    let dir = common::temp_dir("autopilot-bad");
    let file = dir.join("bad.hcl");
    std::fs::write(
        &file,
        "autopilot {\n  last_contact_threshold = \"soon\"\n}\n",
    )
    .expect("write config");
    let out = std::process::Command::new(common::bin())
        .args(["agent", "-dev", "-config"])
        .arg(&file)
        .output()
        .expect("run nomadlet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("autopilot.last_contact_threshold"), "{err}");
}

/// Ref §5.8, §6.3: health comes from the leader's real Raft progress and gossip (every
/// server healthy, one failure tolerated); a killed server turns it 429 with that server
/// unhealthy. With `CleanupDeadServers` off the dead server stays in the configuration past
/// autopilot's cleanup delay; turned on, it is removed.
#[test]
fn autopilot_health_follows_raft_and_gossip_and_cleanup_follows_the_config() {
    let mut servers = cluster_with(3, "", "");
    let leader = wait_leader(&servers, &[0, 1, 2], FORM);
    let f = (leader + 1) % 3;
    let dead = (leader + 2) % 3;
    let cfg = "/v1/operator/autopilot/configuration";
    wait_until(FORM, "the autopilot config stored", || {
        servers[f].get(cfg).status == 200
    });
    // A generous contact threshold: a loaded machine must not make a live server unhealthy.
    let r = put(
        &servers[f],
        cfg,
        &autopilot_body(r#"{"CleanupDeadServers":false,"LastContactThreshold":"2s"}"#),
    );
    assert_eq!(r.text().trim(), "true");
    let mut h = serde_json::Value::Null;
    wait_until(FORM, "a healthy cluster", || {
        let r = servers[f].get("/v1/operator/autopilot/health");
        h = r.json();
        r.status == 200 && h["Healthy"] == true
    });
    assert_eq!(h["FailureTolerance"], 1);
    let list = h["Servers"].as_array().expect("Servers");
    assert_eq!(list.len(), 3);
    let leader_id = uuid_of(&servers, leader);
    assert_eq!(h["Leader"], leader_id.as_str());
    assert_eq!(h["Voters"].as_array().map(Vec::len), Some(3));
    for s in list {
        assert_eq!(s["SerfStatus"], "alive", "{s}");
        assert_eq!(s["Voter"], true);
        assert_eq!(s["Healthy"], true);
        assert_eq!(s["Leader"], s["ID"] == leader_id.as_str());
        assert!(s["LastIndex"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(s["LastTerm"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(s["LastContact"].as_str().is_some_and(|c| c.ends_with('s')));
        assert!(s["StableSince"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(s["Name"].as_str().is_some_and(|n| n.ends_with(".global")));
    }

    let dead_id = uuid_of(&servers, dead);
    servers[dead].kill9();
    wait_until(FORM, "an unhealthy cluster (429)", || {
        let r = servers[f].get("/v1/operator/autopilot/health");
        h = r.json();
        r.status == 429 && h["Healthy"] == false
    });
    assert_eq!(h["FailureTolerance"], 0);
    let gone = h["Servers"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["ID"] == dead_id.as_str()).cloned())
        .expect("the dead server listed");
    assert_eq!(gone["Healthy"], false);

    // Gossip marks it failed; autopilot would remove it 10 s later, but cleanup is off.
    wait_until(FORM, "gossip marks the killed server failed", || {
        let m = servers[f].get_json("/v1/agent/members");
        m["Members"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x["Tags"]["id"] == dead_id.as_str() && x["Status"] == "failed")
        })
    });
    let failed_at = Instant::now();
    while failed_at.elapsed() < Duration::from_secs(15) {
        let ids = raft_servers(&servers[f]).expect("configuration");
        assert!(
            ids.iter().any(|(id, _, _)| *id == dead_id),
            "removed {:?} after gossip said failed, with CleanupDeadServers off",
            failed_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = put(
        &servers[f],
        cfg,
        &autopilot_body(r#"{"CleanupDeadServers":true,"LastContactThreshold":"2s"}"#),
    );
    assert_eq!(r.text().trim(), "true");
    wait_until(FORM, "the dead server removed once cleanup is on", || {
        raft_servers(&servers[f]).is_some_and(|l| l.len() == 2)
    });
}

/// Ref §5.8: `PUT /v1/operator/raft/transfer-leadership?id=` through a follower hands
/// leadership to that voter (raft-rs `transfer_leader`); Nomad's 400s for bad parameters
/// and unknown peers.
#[test]
fn leadership_moves_to_the_named_voter_on_request() {
    let servers = cluster_with(3, "", "");
    let leader = wait_leader(&servers, &[0, 1, 2], FORM);
    let via = (leader + 1) % 3;
    let target = (leader + 2) % 3;
    let path = "/v1/operator/raft/transfer-leadership";
    for (query, want) in [
        ("", "must specify id or address"),
        ("?id=a&address=b", "must specify either id or address"),
        ("?id=", "id must be non-empty"),
        (
            "?id=3f2a0c1e-0000-4000-8000-000000000001",
            "id \"3f2a0c1e-0000-4000-8000-000000000001\" was not found in the Raft configuration",
        ),
        (
            "?address=127.0.0.1:1",
            "address \"127.0.0.1:1\" was not found in the Raft configuration",
        ),
    ] {
        let r = put(&servers[via], &format!("{path}{query}"), "");
        assert_eq!((r.status, r.text()), (400, want.to_string()), "{query}");
    }
    assert_eq!(servers[via].get(path).status, 405);

    let target_id = uuid_of(&servers, target);
    let r = put(&servers[via], &format!("{path}?id={target_id}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["To"]["ID"], target_id.as_str());
    assert_eq!(v["From"]["ID"], uuid_of(&servers, leader).as_str());
    assert_eq!(v["Noop"], false);
    let now = wait_leader(&servers, &[0, 1, 2], FORM);
    assert_eq!(now, target, "leadership went elsewhere");
    // Naming the leader is a no-op; by address works too.
    let r = put(
        &servers[via],
        &format!("{path}?address={}", servers[target].rpc_addr()),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Noop"], true);

    // Ref §5.6: an error of the leader's comes back through a follower's hop as
    // `rpc error: …`; the leader's own HTTP answer has no prefix, nor has a 400 of input.
    let path = "/v1/node/00000000-0000-4000-8000-000000000000/eligibility";
    let body = r#"{"Eligibility":"eligible"}"#;
    let r = put(&servers[target], path, body);
    assert_eq!((r.status, r.text()), (500, "node not found".to_string()));
    let r = put(&servers[via], path, body);
    assert_eq!(
        (r.status, r.text()),
        (500, "rpc error: node not found".to_string())
    );
    let r = put(&servers[via], path, "{");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().starts_with("rpc error"), "{}", r.text());
}

fn batch_job(id: &str) -> Vec<u8> {
    serde_json::json!({"Job": {"ID": id, "Type": "batch", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/true"}}]}]}})
    .to_string()
    .into_bytes()
}

fn register(a: &TestAgent, id: &str) -> u64 {
    let r = a.request("PUT", "/v1/jobs", &[], &batch_job(id));
    assert_eq!(r.status, 200, "register {id}: {}", r.text());
    r.json()["JobModifyIndex"].as_u64().expect("JobModifyIndex")
}

fn index_of(r: &common::Response) -> u64 {
    r.header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("X-Nomad-Index")
}

/// A snapshot restored into a fresh server whose Raft index is far below the snapshot's:
/// the restore and every later write get indexes above every restored object's, across a
/// restart too (the index never goes back, as with Nomad's raft restore).
#[test]
fn a_restore_into_a_fresh_server_keeps_indexes_moving_forward() {
    let old = TestAgent::server("", &[]);
    let mut restored_max = 0;
    for i in 0..30 {
        restored_max = restored_max.max(register(&old, &format!("old-{i}")));
    }
    let snap = old.get("/v1/operator/snapshot");
    assert_eq!(snap.status, 200);
    let snap_index = index_of(&snap);
    assert!(snap_index >= restored_max);

    let mut fresh = TestAgent::server("", &[]);
    let before = index_of(&fresh.get("/v1/jobs"));
    assert!(
        before < restored_max,
        "precondition: the fresh server's index {before} is below the snapshot's {restored_max}"
    );
    let r = fresh.request("PUT", "/v1/operator/snapshot", &[], &snap.body);
    assert_eq!(r.status, 200, "{}", r.text());
    let at = index_of(&r);
    assert!(
        at > snap_index,
        "restored at {at}, the snapshot was at {snap_index}"
    );
    let jobs = fresh.get_json("/v1/jobs");
    assert_eq!(jobs.as_array().map(Vec::len), Some(30));
    let new = register(&fresh, "new-1");
    assert!(
        new > at,
        "a write after the restore got index {new}, not above {at}"
    );
    let listed = fresh.get("/v1/jobs");
    assert!(index_of(&listed) >= new);
    let job = fresh.get_json("/v1/job/new-1");
    assert!(job["CreateIndex"].as_u64().expect("CreateIndex") > restored_max);

    fresh.restart();
    let after_restart = register(&fresh, "new-2");
    assert!(
        after_restart > new,
        "after a restart a write got index {after_restart}, not above {new}"
    );
}

/// Three servers whose autopilot promotes a non-voter after `stabilization` (a Go duration),
/// the index of their leader, and a fourth server expecting none that joins them through
/// gossip.
fn three_and_a_late_server(stabilization: &str) -> (Vec<TestAgent>, usize, TestAgent) {
    let servers = cluster_with(3, "", "");
    let leader = wait_leader(&servers, &[0, 1, 2], FORM);
    let cfg = "/v1/operator/autopilot/configuration";
    wait_until(FORM, "the autopilot config stored", || {
        servers[leader].get(cfg).status == 200
    });
    let r = put(
        &servers[leader],
        cfg,
        &autopilot_body(&format!(
            r#"{{"ServerStabilizationTime":"{stabilization}","LastContactThreshold":"2s"}}"#
        )),
    );
    assert_eq!(r.text().trim(), "true");
    // `cluster_with` set the serf ports in config: the agent says which.
    let serf = servers[0].get_json("/v1/agent/self")["config"]["Ports"]["Serf"]
        .as_u64()
        .expect("serf port");
    let late = TestAgent::server(
        &format!(
            "server {{\n  bootstrap_expect = 0\n  server_join {{\n    retry_join = [\"127.0.0.1:{serf}\"]\n    retry_interval = \"1s\"\n  }}\n}}\n"
        ),
        &[],
    );
    (servers, leader, late)
}

/// Ref §6.1, §6.3: a server with `bootstrap_expect = 0` never elects itself; joined to a
/// running cluster it is added as a non-voter (`Voter: false`) and promoted once it has been
/// healthy for `ServerStabilizationTime`, not before.
#[test]
fn a_server_that_expects_none_waits_then_joins_as_a_non_voter_and_is_promoted() {
    let lone = TestAgent::server("server {\n  bootstrap_expect = 0\n}\n", &[]);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let (state, _) = common::raft_state(&lone).expect("raft state");
        assert_ne!(state, "Leader", "a server expecting none elected itself");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(common::leader_of(&lone).as_deref(), Some(""));

    let (mut servers, leader, late) = three_and_a_late_server("4s");
    let addr = late.rpc_addr();
    let mut seen_as_learner = None;
    wait_until(
        FORM,
        "the new server in the configuration as a non-voter",
        || {
            let voter = raft_servers(&servers[leader]).and_then(|l| {
                l.into_iter()
                    .find(|(_, a, _)| *a == addr)
                    .map(|(_, _, v)| v)
            });
            if voter == Some(false) {
                seen_as_learner = Some(Instant::now());
            }
            voter.is_some()
        },
    );
    let first = seen_as_learner.expect("added as a non-voter first, not straight as a voter");
    wait_until(FORM, "the new server promoted", || {
        raft_servers(&servers[leader]).is_some_and(|l| l.iter().any(|(_, a, v)| *a == addr && *v))
    });
    assert!(
        // 4 s of stability required; 2 s leaves the first sighting room to lag on a loaded
        // machine while still telling "at once" from "after the stabilization time".
        first.elapsed() >= Duration::from_secs(2),
        "promoted {:?} after it was added: before ServerStabilizationTime",
        first.elapsed()
    );
    // It follows the leader and serves reads like any server.
    wait_until(FORM, "the new server knows the leader", || {
        common::leader_of(&late).as_deref() == Some(servers[leader].rpc_addr().as_str())
    });
    servers.push(late);
}

/// Ref §6.1: a cluster that lost its quorum for good recovers with `peers.json`: the last
/// server, stopped, is given a configuration of itself alone; started, it leads with every
/// write the cluster had, takes new writes, and the file is consumed (`peers.info` left).
#[test]
fn peers_json_brings_back_a_cluster_that_lost_its_quorum() {
    let mut servers = cluster_with(3, "", "");
    let leader = wait_leader(&servers, &[0, 1, 2], FORM);
    register(&servers[leader], "before-outage");
    let last = (leader + 1) % 3;
    wait_until(FORM, "the job on the last server", || {
        common::try_get(&servers[last], "/v1/job/before-outage?stale")
            .is_some_and(|r| r.status == 200)
    });
    let id = uuid_of(&servers, last);
    for i in (0..3).filter(|i| *i != last) {
        servers[i].kill9();
    }
    // No quorum: nothing is written.
    let r = servers[last].request("PUT", "/v1/jobs", &[], &batch_job("lost"));
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(servers[last].stop().success());
    let raft_dir = servers[last].data_dir.join("server").join("raft");
    std::fs::create_dir_all(&raft_dir).expect("raft dir");
    let peers = serde_json::json!([
        {"id": id, "address": servers[last].rpc_addr(), "non_voter": false}
    ]);
    std::fs::write(raft_dir.join("peers.json"), peers.to_string()).expect("peers.json");
    servers[last].restart_after_stop();
    wait_leader(&servers, &[last], FORM);
    assert_eq!(
        raft_servers(&servers[last]).map(|l| l.len()),
        Some(1),
        "the configuration is the one peers.json gave"
    );
    assert_eq!(servers[last].get("/v1/job/before-outage").status, 200);
    register(&servers[last], "after-recovery");
    assert!(
        !raft_dir.join("peers.json").exists(),
        "peers.json is consumed"
    );
    assert!(raft_dir.join("peers.info").exists());
}

/// A token for `rules` made with the management token `mgmt`.
fn token_for(a: &TestAgent, mgmt: &str, name: &str, rules: &str) -> String {
    let policy = serde_json::json!({"Name": name, "Rules": rules});
    let r = a.request(
        "POST",
        &format!("/v1/acl/policy/{name}"),
        &[("X-Nomad-Token", mgmt)],
        policy.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "policy: {}", r.text());
    let body = serde_json::json!({"Name": name, "Type": "client", "Policies": [name]});
    let r = a.request(
        "POST",
        "/v1/acl/token",
        &[("X-Nomad-Token", mgmt)],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "token: {}", r.text());
    r.json()["SecretID"].as_str().expect("SecretID").to_string()
}

/// Nomad's ACLs on the operator endpoints: autopilot reads need `operator:read`, a set
/// `operator:write`; leadership transfer needs a management token.
#[test]
fn operator_endpoints_check_operator_read_write_and_management() {
    let server = TestAgent::server("acl {\n  enabled = true\n}\n", &[]);
    let r = server.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "bootstrap: {}", r.text());
    let mgmt = r.json()["SecretID"].as_str().expect("secret").to_string();
    let reader = token_for(
        &server,
        &mgmt,
        "op-read",
        "operator {\n  policy = \"read\"\n}\n",
    );
    let writer = token_for(
        &server,
        &mgmt,
        "op-write",
        "operator {\n  policy = \"write\"\n}\n",
    );
    let cfg = "/v1/operator/autopilot/configuration";
    let health = "/v1/operator/autopilot/health";
    let body = autopilot_body("{}");
    let call = |method: &str, path: &str, token: Option<&str>, body: &str| {
        let headers: Vec<(&str, &str)> = token
            .map(|t| vec![("X-Nomad-Token", t)])
            .unwrap_or_default();
        server.request(method, path, &headers, body.as_bytes())
    };
    wait_until(FORM, "the autopilot config stored", || {
        call("GET", cfg, Some(&mgmt), "").status == 200
    });
    for (method, path, token, want) in [
        ("GET", cfg, None, 403),
        ("GET", cfg, Some(reader.as_str()), 200),
        ("GET", health, None, 403),
        ("GET", health, Some(reader.as_str()), 200),
        ("PUT", cfg, Some(reader.as_str()), 403),
        ("PUT", cfg, Some(writer.as_str()), 200),
        ("GET", cfg, Some(writer.as_str()), 200),
    ] {
        let r = call(
            method,
            path,
            token,
            if method == "PUT" { &body } else { "" },
        );
        assert_eq!(r.status, want, "{method} {path} {token:?}: {}", r.text());
        if want == 403 {
            assert_eq!(r.text(), "Permission denied");
        }
    }
    let transfer = format!(
        "/v1/operator/raft/transfer-leadership?address={}",
        server.rpc_addr()
    );
    let r = call("PUT", &transfer, Some(&writer), "");
    assert_eq!((r.status, r.text()), (403, "Permission denied".to_string()));
    let r = call("PUT", &transfer, Some(&mgmt), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Noop"], true, "the only server already leads");
}

/// Autopilot's dead-server cleanup takes a dead non-voter out of the configuration too
/// (it counts for no quorum): a server that joined as a non-voter and is killed before its
/// promotion is removed once gossip has marked it failed for the cleanup delay.
#[test]
fn a_dead_non_voter_is_removed_by_autopilots_cleanup() {
    // Never promoted while the test runs.
    let (servers, leader, mut late) = three_and_a_late_server("1h");
    let addr = late.rpc_addr();
    wait_until(
        FORM,
        "the new server in the configuration as a non-voter",
        || {
            raft_servers(&servers[leader])
                .is_some_and(|l| l.iter().any(|(_, a, v)| *a == addr && !*v))
        },
    );
    late.kill9();
    wait_until(
        Duration::from_secs(40),
        "the dead non-voter removed from the configuration",
        || raft_servers(&servers[leader]).is_some_and(|l| !l.iter().any(|(_, a, _)| *a == addr)),
    );
    let left = raft_servers(&servers[leader]).expect("configuration");
    assert_eq!(left.len(), 3, "only the non-voter went: {left:?}");
    assert!(left.iter().all(|(_, _, v)| *v), "{left:?}");
}
