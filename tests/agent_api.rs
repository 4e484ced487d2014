//! The Agent API, nodes and status endpoints, and Nomad's HTTP conventions, against the real
//! binary.

mod common;
use common::*;

#[test]
fn health_is_ok_with_both_parts_and_type_selects_parts() {
    let agent = TestAgent::start(&[]);
    let r = agent.get("/v1/agent/health");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"client":{"ok":true,"message":"ok"},"server":{"ok":true,"message":"ok"}}"#
    );
    let r = agent.get("/v1/agent/health?type=client");
    assert_eq!(r.text(), r#"{"client":{"ok":true,"message":"ok"}}"#);
    let r = agent.get("/v1/agent/health?type=server");
    assert_eq!(r.text(), r#"{"server":{"ok":true,"message":"ok"}}"#);
    let r = agent.get("/v1/agent/health?type=server&pretty");
    assert_eq!(
        r.text(),
        "{\n    \"server\": {\n        \"ok\": true,\n        \"message\": \"ok\"\n    }\n}\n"
    );
    let r = agent.request("POST", "/v1/agent/health", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (405, "Invalid method"));
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert!(r.header("Server").is_none());
}

#[test]
fn health_reports_the_parts_the_agent_runs_and_a_part_it_does_not_is_a_500() {
    // A client-only agent with a server address (nothing listens there: health looks at the
    // server list, not at a live connection).
    let port = free_port();
    let server = format!("127.0.0.1:{port}");
    let agent = TestAgent::client(&[server.as_str()], "", &[]);
    let r = agent.get("/v1/agent/health");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"client":{"ok":true,"message":"ok"}}"#);
    let r = agent.get("/v1/agent/health?type=server");
    assert_eq!(r.status, 500);
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        r.text(),
        r#"{"server":{"ok":false,"message":"server not enabled"}}"#
    );
    let r = agent.get("/v1/agent/health?type=client&type=server");
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        r#"{"client":{"ok":true,"message":"ok"},"server":{"ok":false,"message":"server not enabled"}}"#
    );
}

#[test]
fn health_of_a_raft_server_without_a_leader_is_a_500() {
    // Waiting for two more servers that never come: Raft elects no leader.
    let agent = TestAgent::server("server {\n  bootstrap_expect = 3\n}\n", &[]);
    let r = agent.get("/v1/agent/health");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.text(), r#"{"server":{"ok":false,"message":"no leader"}}"#);
}

#[test]
fn unknown_paths_are_empty_404s_and_pretty_indents_four_spaces() {
    let agent = TestAgent::start(&[]);
    for p in [
        "/v1/foo",
        "/v1/agent/unknown",
        "/v1/client/unknown",
        "/v2/agent/health",
        "/v1/agent/health/",
    ] {
        let r = agent.get(p);
        assert_eq!(r.status, 404, "{p}");
        assert!(r.body.is_empty(), "{p}");
    }
    let r = agent.get("/v1/regions?pretty");
    assert_eq!(r.text(), "[\n    \"global\"\n]\n");
    let r = agent.get("/v1/regions?pretty=0");
    assert_eq!(r.text(), "[\"global\"]");
}

#[test]
fn members_self_and_status_describe_this_agent() {
    let agent = TestAgent::start(&["-node", "edge-1", "-dc", "dc7", "-region", "r1"]);
    let m = agent.get_json("/v1/agent/members");
    assert_eq!(m["ServerName"], "edge-1");
    assert_eq!(m["ServerRegion"], "r1");
    assert_eq!(m["ServerDC"], "dc7");
    let me = &m["Members"][0];
    assert_eq!(me["Name"], "edge-1.r1");
    assert_eq!(me["Addr"], "127.0.0.1");
    assert_eq!(me["Status"], "alive");
    assert_eq!(me["Tags"]["region"], "r1");
    assert_eq!(me["Tags"]["dc"], "dc7");

    let s = agent.get_json("/v1/agent/self");
    assert_eq!(s["config"]["Region"], "r1");
    assert_eq!(s["config"]["Datacenter"], "dc7");
    assert_eq!(s["config"]["Ports"]["HTTP"], agent.port);
    assert_eq!(s["member"]["Name"], "edge-1.r1");
    let node_id = s["stats"]["client"]["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(node_id.len(), 36);
    let node = agent.get_json(&format!("/v1/node/{node_id}"));
    assert_eq!(node["Name"], "edge-1");
    assert_eq!(node["Datacenter"], "dc7");
    assert_eq!(node["Status"], "ready");
    assert_eq!(node["SecretID"], "");
    assert_eq!(node["Attributes"]["kernel.name"], "linux");
    assert_eq!(node["Attributes"]["driver.raw_exec"], "1");
    assert!(
        node["Attributes"]["cpu.numcores"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert!(
        node["Attributes"]["memory.totalbytes"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );

    assert_eq!(agent.get_json("/v1/status/leader"), "127.0.0.1:4647");
    assert_eq!(
        agent.get_json("/v1/status/peers"),
        serde_json::json!(["127.0.0.1:4647"])
    );
    assert_eq!(agent.get_json("/v1/regions"), serde_json::json!(["r1"]));
}

#[test]
fn servers_are_validated_replaced_and_survive_a_restart() {
    let mut agent = TestAgent::start(&[]);
    assert_eq!(
        agent.get_json("/v1/agent/servers"),
        serde_json::json!(["127.0.0.1:4647"])
    );
    let r = agent.request("PUT", "/v1/agent/servers", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "missing server address")
    );
    let r = agent.request("PUT", "/v1/agent/servers?address=127.0.0.9", &[], b"");
    assert_eq!(r.status, 400);
    assert_eq!(
        agent.get_json("/v1/agent/servers"),
        serde_json::json!(["127.0.0.1:4647"])
    );
    let r = agent.request(
        "PUT",
        "/v1/agent/servers?address=127.0.0.9:4647&address=127.0.0.2:4647",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    let want = serde_json::json!(["127.0.0.2:4647", "127.0.0.9:4647"]);
    assert_eq!(agent.get_json("/v1/agent/servers"), want);
    agent.restart();
    assert_eq!(agent.get_json("/v1/agent/servers"), want);
    let r = agent.request("DELETE", "/v1/agent/servers", &[], b"");
    assert_eq!(r.status, 405);
}

#[test]
fn join_reports_failures_and_force_leave_checks_its_parameters() {
    // Joining real servers over gossip is tests/gossip.rs.
    let a = TestAgent::start(&["-node", "a"]);
    let r = a.request("PUT", "/v1/agent/join", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "missing address to join")
    );
    let r = a.request("PUT", "/v1/agent/join?address=127.0.0.1:1", &[], b"");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["num_joined"], 0);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("Failed to join 127.0.0.1:1"),
        "{j}"
    );

    let r = a.request("PUT", "/v1/agent/force-leave", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "missing node to force leave")
    );
    let r = a.request(
        "PUT",
        "/v1/agent/force-leave?node=b.global&prune=maybe",
        &[],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (400, "invalid prune value"));
    // An unknown member is no error (as Serf); the agent itself cannot be forced out.
    let r = a.request("PUT", "/v1/agent/force-leave?node=b.global", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    let r = a.request("PUT", "/v1/agent/force-leave?node=a.global", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "cannot force-leave the local agent")
    );
    assert_eq!(
        a.get_json("/v1/agent/members")["Members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn nodes_list_prefix_filter_and_missing_node() {
    let agent = TestAgent::start(&["-meta", "rack=r1"]);
    let nodes = agent.get_json("/v1/nodes");
    let id = nodes[0]["ID"].as_str().unwrap().to_string();
    assert!(nodes[0].get("Meta").is_none(), "stubs carry no Meta");
    let r = agent.get("/v1/nodes");
    assert!(r.header("X-Nomad-Index").is_some());
    assert_eq!(r.header("X-Nomad-KnownLeader"), Some("true"));
    assert_eq!(
        agent
            .get_json(&format!("/v1/nodes?prefix={}", &id[..4]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        agent
            .get_json("/v1/nodes?prefix=zzzz")
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let f = |q: &str| {
        agent
            .get_json(&format!("/v1/nodes?filter={q}"))
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(f("Meta.rack%20%3D%3D%20%22r1%22"), 1);
    assert_eq!(f("Meta.rack%20%3D%3D%20%22r2%22"), 0);
    let r = agent.get("/v1/nodes?filter=Meta.rack%20%3D%3D");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("failed to read filter expression"));
    let r = agent.get("/v1/nodes?os=maybe");
    assert_eq!(r.status, 400);
    assert_eq!(
        agent.get_json("/v1/nodes?os=true")[0]["Attributes"]["os.name"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true)
    );
    let r = agent.get("/v1/node/00000000-0000-0000-0000-000000000000");
    assert_eq!((r.status, r.text().as_str()), (404, "node not found"));
    let r = agent.get("/v1/nodes?stale=maybe");
    assert_eq!(r.status, 400);
    let r = agent.get("/v1/nodes?index=x");
    assert_eq!((r.status, r.text().as_str()), (400, "Invalid index"));
}

#[test]
fn node_id_is_kept_across_restarts() {
    let mut agent = TestAgent::start(&[]);
    let before = agent.get_json("/v1/agent/self")["stats"]["client"]["node_id"].clone();
    agent.restart();
    let after = agent.get_json("/v1/agent/self")["stats"]["client"]["node_id"].clone();
    assert_eq!(before, after);
}

#[test]
fn cli_errors_are_one_line_and_exit_one() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["agent", "-dev", "-bogus"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _) = run(&["agent", "-dev", "-http-port", "notaport"]);
    assert_eq!(code, Some(1));
    let (code, err) = run(&["agent"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("data dir"), "{err}");
    let (code, err) = run(&["agent", "-data-dir", "/proc/nomadlet-cannot-write"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = temp_dir("busy");
    let (code, err) = run(&[
        "agent",
        "-dev",
        "-data-dir",
        dir.to_str().unwrap(),
        "-http-port",
        &port,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot listen"), "{err}");
    let out = std::process::Command::new(bin())
        .arg("version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("nomadlet v"));
    let out = std::process::Command::new(bin())
        .arg("-h")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-data-dir"));
}

#[test]
fn json_config_file_sets_nomad_keys() {
    let dir = temp_dir("cfg");
    let cfg = dir.join("agent.json");
    std::fs::write(&cfg, r#"{"name":"from-file","datacenter":"dcf","client":{"meta":{"tier":"gold"},"servers":["127.1.1.1:4647"]}}"#).unwrap();
    let agent = TestAgent::start(&["-config", cfg.to_str().unwrap()]);
    let node = agent.get_json(&format!(
        "/v1/node/{}",
        agent.get_json("/v1/nodes")[0]["ID"].as_str().unwrap()
    ));
    assert_eq!(node["Name"], "from-file");
    assert_eq!(node["Datacenter"], "dcf");
    assert_eq!(node["Meta"]["tier"], "gold");
    assert_eq!(
        agent.get_json("/v1/agent/servers"),
        serde_json::json!(["127.1.1.1:4647"])
    );
}
