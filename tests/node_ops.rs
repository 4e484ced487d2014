//! Node operations on a single real agent: eligibility (toggles, no-op, errors, events),
//! drain (migrate flagged, alloc stopped, drain complete, `LastDrain`, events, ineligible;
//! max_parallel then the deadline; cancel), evaluate (node-update evals), purge (the node is
//! removed, its allocs lost, the live client registers again), hostile bodies and ACLs.

mod common;
#[path = "workloads_helpers/mod.rs"]
mod workloads_helpers;

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

/// This agent's one node.
fn node_id(agent: &TestAgent) -> String {
    let nodes = agent.get_json("/v1/nodes");
    nodes[0]["ID"].as_str().expect("a node").to_string()
}

fn node(agent: &TestAgent, id: &str) -> Value {
    agent.get_json(&format!("/v1/node/{id}"))
}

fn put(agent: &TestAgent, path: &str, body: &str) -> Response {
    agent.request("PUT", path, &[], body.as_bytes())
}

fn events(n: &Value) -> Vec<(String, String)> {
    n["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["Subsystem"].as_str().unwrap_or("").to_string(),
                e["Message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn has_event(n: &Value, subsystem: &str, message: &str) -> bool {
    events(n)
        .iter()
        .any(|(s, m)| s == subsystem && m == message)
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

fn index_header(r: &Response) -> u64 {
    r.header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("X-Nomad-Index")
}

/// A service job of `count` long-running allocs, with `migrate { max_parallel }`.
fn service(id: &str, count: u32, max_parallel: u32) -> Value {
    json!({"Job": {"ID": id, "Type": "service", "TaskGroups": [{"Name": "g", "Count": count,
        "Migrate": {"MaxParallel": max_parallel},
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "KillTimeout": 1_000_000_000u64,
            "Config": {"command": "/bin/sh", "args": ["-c", "sleep 300"]}}]}]}})
}

/// Wait until every alloc of `job` runs; their IDs.
fn running(agent: &TestAgent, job: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    wait_until(WAIT, &format!("{count} running allocs of {job}"), || {
        let all = allocs(agent, job);
        ids = all
            .iter()
            .filter(|a| a["ClientStatus"] == "running")
            .map(|a| a["ID"].as_str().unwrap().to_string())
            .collect();
        ids.len() == count
    });
    ids
}

#[test]
fn eligibility_toggles_with_events_a_silent_noop_and_nomads_errors() {
    let agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    let path = format!("/v1/node/{id}/eligibility");

    let r = put(&agent, &path, r#"{"Eligibility":"ineligible"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let index = v["Index"].as_u64().unwrap();
    assert!(index > 0 && v["NodeModifyIndex"] == index, "{v}");
    assert_eq!(v["EvalIDs"], Value::Null);
    assert_eq!(index_header(&r), index);
    let n = node(&agent, &id);
    assert_eq!(n["SchedulingEligibility"], "ineligible");
    assert!(
        has_event(&n, "Cluster", "Node marked as ineligible for scheduling"),
        "{n}"
    );
    let stub = &agent.get_json("/v1/nodes")[0];
    assert_eq!(stub["SchedulingEligibility"], "ineligible");

    // The same value again: nothing is written, every index is 0.
    let r = agent.request("POST", &path, &[], br#"{"Eligibility":"ineligible"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"NodeModifyIndex": 0, "EvalIDs": null, "EvalCreateIndex": 0, "Index": 0})
    );
    assert_eq!(index_header(&r), 0);

    // Back to eligible; the body's NodeID overrides the path's.
    let body = json!({"Eligibility": "eligible", "NodeID": id}).to_string();
    let r = put(&agent, "/v1/node/not-this-one/eligibility", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let n = node(&agent, &id);
    assert_eq!(n["SchedulingEligibility"], "eligible");
    assert!(has_event(
        &n,
        "Cluster",
        "Node marked as eligible for scheduling"
    ));

    for (body, status, text) in [
        (
            r#"{"Eligibility":"maybe"}"#,
            500,
            r#"invalid scheduling eligibility "maybe""#,
        ),
        ("{}", 500, r#"invalid scheduling eligibility """#),
        ("", 400, "Request body is empty"),
        (
            r#"{"Eligibility":5}"#,
            400,
            "json: cannot unmarshal number into Go struct field NodeUpdateEligibilityRequest.Eligibility of type string",
        ),
        (
            "[1]",
            400,
            "json: cannot unmarshal array into Go value of type structs.NodeUpdateEligibilityRequest",
        ),
        (
            r#"{"Eligibility":"eligible","NodeEvent":{"Message":"x"}}"#,
            500,
            "node event must not be set",
        ),
    ] {
        let r = put(&agent, &path, body);
        assert_eq!((r.status, r.text().as_str()), (status, text), "body {body}");
    }
    let r = put(
        &agent,
        "/v1/node/00000000-0000-0000-0000-000000000000/eligibility",
        r#"{"Eligibility":"eligible"}"#,
    );
    assert_eq!((r.status, r.text().as_str()), (500, "node not found"));
    let r = agent.get(&path);
    assert_eq!((r.status, r.text().as_str()), (405, "Invalid method"));
    // Deep or broken JSON is refused before any recursive parse, with a 400.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(put(&agent, &path, &deep).status, 400);
    assert_eq!(put(&agent, &path, "{\"Eligibility\":").status, 400);
    // Nothing of the refused requests changed the node.
    assert_eq!(node(&agent, &id)["SchedulingEligibility"], "eligible");
}

#[test]
fn a_drained_service_alloc_is_migrated_and_the_drain_completes_ineligible() {
    let agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    register(&agent, &service("web", 1, 1));
    let alloc_id = running(&agent, "web", 1).remove(0);

    let body = json!({"DrainSpec": {"Deadline": 60_000_000_000u64, "IgnoreSystemJobs": false},
        "Meta": {"message": "kernel upgrade"}});
    let r = put(&agent, &format!("/v1/node/{id}/drain"), &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["NodeModifyIndex"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["EvalIDs"], Value::Null);
    assert_eq!(v["EvalCreateIndex"], 0);
    assert_eq!(index_header(&r), v["Index"].as_u64().unwrap());
    let n = node(&agent, &id);
    assert_eq!(n["SchedulingEligibility"], "ineligible", "{n}");
    assert!(has_event(&n, "Drain", "Node drain strategy set"), "{n}");
    assert_eq!(n["LastDrain"]["Meta"]["message"], "kernel upgrade");
    assert_eq!(n["LastDrain"]["StartedAt"], n["LastDrain"]["UpdatedAt"]);

    // The alloc is marked for migration and, with no other node to go to, stopped.
    let mut a = Value::Null;
    wait_until(WAIT, "the alloc migrated and stopped", || {
        a = alloc(&agent, &alloc_id);
        a["DesiredTransition"]["Migrate"] == true && a["ClientStatus"] == "complete"
    });
    assert_eq!(a["DesiredStatus"], "stop", "{a}");
    assert_eq!(a["DesiredDescription"], "alloc is being migrated");
    let stub = allocs(&agent, "web");
    assert_eq!(stub[0]["DesiredTransition"]["Migrate"], true);

    // The drain completes: strategy cleared, LastDrain complete, still ineligible.
    let mut n = Value::Null;
    wait_until(WAIT, "the drain completes", || {
        n = node(&agent, &id);
        n["LastDrain"]["Status"] == "complete"
    });
    assert_eq!(n["DrainStrategy"], Value::Null, "{n}");
    assert_eq!(n["Drain"], false);
    assert_eq!(n["SchedulingEligibility"], "ineligible");
    assert!(has_event(&n, "Drain", "Node drain complete"), "{n}");
    let complete = n["Events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Message"] == "Node drain complete")
        .unwrap();
    assert_eq!(
        complete["Details"],
        Value::Null,
        "not forced by the deadline"
    );
    assert_eq!(
        agent.get_json("/v1/nodes")[0]["LastDrain"]["Status"],
        "complete"
    );

    // One pending node-drain eval for the job, naming the node.
    let evals = agent.get_json("/v1/job/web/evaluations");
    let drain: Vec<&Value> = evals
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["TriggeredBy"] == "node-drain")
        .collect();
    assert_eq!(drain.len(), 1, "{evals}");
    assert_eq!(drain[0]["NodeID"], id.as_str());
}

#[test]
fn max_parallel_migrates_one_at_a_time_and_the_deadline_forces_the_rest() {
    let agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    register(&agent, &service("pair", 2, 1));
    let ids = running(&agent, "pair", 2);

    let body = json!({"DrainSpec": {"Deadline": 3_000_000_000u64}});
    let started = std::time::Instant::now();
    let r = put(&agent, &format!("/v1/node/{id}/drain"), &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let n = node(&agent, &id);
    assert_eq!(n["DrainStrategy"]["Deadline"], 3_000_000_000u64, "{n}");
    assert_ne!(n["DrainStrategy"]["ForceDeadline"], "0001-01-01T00:00:00Z");
    assert_eq!(n["LastDrain"]["Status"], "draining");
    assert_eq!(n["Drain"], true);

    let migrating = |agent: &TestAgent| {
        ids.iter()
            .filter(|a| alloc(agent, a)["DesiredTransition"]["Migrate"] == true)
            .count()
    };
    wait_until(WAIT, "one alloc migrating", || migrating(&agent) >= 1);
    assert!(
        thread_names(agent.pid()).iter().any(|n| n == "drainer"),
        "a drain in progress has its thread"
    );
    if started.elapsed() < std::time::Duration::from_millis(2500) {
        // Its replacement cannot run anywhere: the second waits for the deadline.
        assert_eq!(migrating(&agent), 1, "max_parallel 1");
    }
    let mut n = Value::Null;
    wait_until(WAIT, "the deadline completes the drain", || {
        n = node(&agent, &id);
        n["LastDrain"]["Status"] == "complete"
    });
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    assert_eq!(migrating(&agent), 2);
    let complete = n["Events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Message"] == "Node drain complete")
        .cloned()
        .unwrap();
    assert_eq!(complete["Details"]["deadline_reached"], "true", "{n}");
}

#[test]
fn a_drain_is_updated_then_canceled_and_mark_eligible_restores_eligibility() {
    let agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    // A batch alloc is left alone until the deadline; there is none, so the drain waits.
    register(&agent, &sh_job("b", "batch", "sleep 300"));
    let batch = running(&agent, "b", 1).remove(0);
    let path = format!("/v1/node/{id}/drain");
    assert_eq!(
        put(&agent, &path, r#"{"DrainSpec":{"Deadline":0}}"#).status,
        200
    );
    let first = node(&agent, &id);
    assert_eq!(
        first["DrainStrategy"]["ForceDeadline"],
        "0001-01-01T00:00:00Z"
    );
    let r = put(
        &agent,
        &path,
        r#"{"DrainSpec":{"Deadline":0,"IgnoreSystemJobs":true},"Meta":{"why":"again"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let n = node(&agent, &id);
    assert!(has_event(&n, "Drain", "Node drain strategy updated"), "{n}");
    assert_eq!(
        n["DrainStrategy"]["StartedAt"],
        first["DrainStrategy"]["StartedAt"]
    );
    assert_eq!(n["DrainStrategy"]["IgnoreSystemJobs"], true);
    assert_eq!(n["LastDrain"]["StartedAt"], first["LastDrain"]["StartedAt"]);
    assert_eq!(n["LastDrain"]["Meta"]["why"], "again");
    // Eligible while draining is refused.
    let r = put(
        &agent,
        &format!("/v1/node/{id}/eligibility"),
        r#"{"Eligibility":"eligible"}"#,
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            500,
            "can not set node's scheduling eligibility to eligible while it is draining"
        )
    );

    let r = put(&agent, &path, r#"{"DrainSpec":null,"MarkEligible":true}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // Made eligible again: the node's jobs are evaluated.
    assert_eq!(v["EvalIDs"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(v["EvalCreateIndex"].as_u64().unwrap() > 0);
    let n = node(&agent, &id);
    assert_eq!(n["DrainStrategy"], Value::Null);
    assert_eq!(n["Drain"], false);
    assert_eq!(n["LastDrain"]["Status"], "canceled");
    assert_eq!(n["SchedulingEligibility"], "eligible");
    assert!(has_event(&n, "Drain", "Node drain disabled"), "{n}");
    let a = alloc(&agent, &batch);
    assert_eq!(a["DesiredStatus"], "run", "{a}");
    assert!(a.get("DesiredTransition").is_none(), "{a}");

    // Hostile and wrong bodies: 400 with Go's texts; an unknown node 500.
    for (body, text) in [
        ("", "Request body is empty"),
        (
            r#"{"DrainSpec":{"Deadline":"1h"}}"#,
            "json: cannot unmarshal string into Go struct field NodeUpdateDrainRequest.DrainSpec.Deadline of type time.Duration",
        ),
        (
            r#"{"DrainSpec":{"Deadline":1.5}}"#,
            "json: cannot unmarshal number 1.5 into Go struct field NodeUpdateDrainRequest.DrainSpec.Deadline of type time.Duration",
        ),
        (
            r#"{"MarkEligible":"yes"}"#,
            "json: cannot unmarshal string into Go struct field NodeUpdateDrainRequest.MarkEligible of type bool",
        ),
        (
            r#"{"Meta":{"a":1}}"#,
            "json: cannot unmarshal number into Go struct field NodeUpdateDrainRequest.Meta of type string",
        ),
        (
            "7",
            "json: cannot unmarshal number into Go value of type api.NodeUpdateDrainRequest",
        ),
    ] {
        let r = put(&agent, &path, body);
        assert_eq!((r.status, r.text().as_str()), (400, text), "body {body}");
    }
    let r = put(
        &agent,
        "/v1/node/00000000-0000-0000-0000-000000000000/drain",
        "{}",
    );
    assert_eq!((r.status, r.text().as_str()), (500, "node not found"));
    assert_eq!(node(&agent, &id)["LastDrain"]["Status"], "canceled");
}

#[test]
fn evaluate_makes_a_node_update_eval_per_job_on_the_node() {
    let agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    let path = format!("/v1/node/{id}/evaluate");
    let r = put(&agent, &path, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["EvalIDs"], Value::Null, "{v}");
    assert_eq!(
        (v["EvalCreateIndex"].clone(), v["Index"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(v["NumNodes"], 1);
    assert_eq!(v["SchedulingEligibility"], "eligible");
    assert!(v["Servers"][0]["RPCAdvertiseAddr"].is_string(), "{v}");

    register(&agent, &service("web", 1, 1));
    running(&agent, "web", 1);
    let r = agent.request("POST", &path, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let ids = v["EvalIDs"].as_array().cloned().unwrap_or_default();
    assert_eq!(ids.len(), 1, "{v}");
    let index = v["EvalCreateIndex"].as_u64().unwrap();
    assert!(index > 0 && v["Index"] == index);
    assert_eq!(index_header(&r), index);
    let e = agent.get_json(&format!("/v1/evaluation/{}", ids[0].as_str().unwrap()));
    assert_eq!(e["TriggeredBy"], "node-update", "{e}");
    assert_eq!(e["JobID"], "web");
    assert_eq!(e["NodeID"], id.as_str());
    // Pending until a scheduler took it.
    assert!(e["Status"] == "pending" || e["Status"] == "complete", "{e}");
    assert_eq!(e["CreateIndex"], index);

    let r = put(&agent, "/v1/node/nope/evaluate", "");
    assert_eq!((r.status, r.text().as_str()), (500, "node not found"));
    let r = agent.request("DELETE", &path, &[], b"");
    assert_eq!(r.status, 405);
}

#[test]
fn purge_removes_the_node_loses_its_allocs_and_the_live_client_registers_again() {
    let agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    let before = node(&agent, &id);
    register(&agent, &service("web", 1, 1));
    let alloc_id = running(&agent, "web", 1).remove(0);

    let r = put(&agent, &format!("/v1/node/{id}/purge"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let index = v["Index"].as_u64().unwrap();
    assert!(index > 0 && v["NodeModifyIndex"] == index, "{v}");
    assert_eq!(v["EvalIDs"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["LeaderRPCAddr"], "");
    assert_eq!(v["NumNodes"], 0);
    assert_eq!(v["Servers"], Value::Null);

    // The alloc on the purged node is lost.
    let a = alloc(&agent, &alloc_id);
    assert_eq!(a["ClientStatus"], "lost", "{a}");
    assert_eq!(a["DesiredStatus"], "stop");
    assert_eq!(
        a["DesiredDescription"],
        "alloc is lost since its node is down"
    );

    // The live client hears "unknown node" and registers again, same ID, fresh record.
    let mut n = Value::Null;
    wait_until(WAIT, "the node registered again", || {
        let r = agent.get(&format!("/v1/node/{id}"));
        if r.status == 200 {
            n = r.json();
            true
        } else {
            false
        }
    });
    assert!(
        n["CreateIndex"].as_u64().unwrap() > before["CreateIndex"].as_u64().unwrap(),
        "{n}"
    );
    assert_eq!(
        events(&n),
        vec![("Cluster".into(), "Node registered".into())]
    );
    assert_eq!(n["Status"], "ready");
    // Its task was stopped: the alloc it knew is not wanted any more.
    wait_until(WAIT, "the lost alloc's task stopped", || {
        alloc(&agent, &alloc_id)["TaskStates"]["t"]["State"] == "dead"
    });
    let r = put(
        &agent,
        "/v1/node/00000000-0000-0000-0000-000000000000/purge",
        "",
    );
    assert_eq!((r.status, r.text().as_str()), (500, "node not found"));
}

#[test]
fn node_operations_need_node_write() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let mgmt = r.json()["SecretID"].as_str().unwrap().to_string();
    let call = |method: &str, path: &str, token: Option<&str>, body: &str| {
        let h: Vec<(&str, &str)> = token.map(|t| ("X-Nomad-Token", t)).into_iter().collect();
        agent.request(method, path, &h, body.as_bytes())
    };
    let nodes = call("GET", "/v1/nodes", Some(&mgmt), "");
    let id = nodes.json()[0]["ID"].as_str().unwrap().to_string();
    let mut tokens = Vec::new();
    for (name, rules) in [
        ("read", r#"node { policy = "read" }"#),
        ("write", r#"node { policy = "write" }"#),
    ] {
        let body = json!({"Name": name, "Rules": rules}).to_string();
        assert_eq!(
            call(
                "POST",
                &format!("/v1/acl/policy/{name}"),
                Some(&mgmt),
                &body
            )
            .status,
            200
        );
        let body = json!({"Name": name, "Type": "client", "Policies": [name]}).to_string();
        let t = call("POST", "/v1/acl/token", Some(&mgmt), &body);
        assert_eq!(t.status, 200, "{}", t.text());
        tokens.push(t.json()["SecretID"].as_str().unwrap().to_string());
    }
    let body = r#"{"Eligibility":"ineligible"}"#;
    for op in ["eligibility", "drain", "evaluate", "purge"] {
        let path = format!("/v1/node/{id}/{op}");
        for token in [None, Some(tokens[0].as_str())] {
            let r = call("PUT", &path, token, body);
            assert_eq!(
                (r.status, r.text().as_str()),
                (403, "Permission denied"),
                "{op}"
            );
        }
    }
    let r = call(
        "PUT",
        &format!("/v1/node/{id}/eligibility"),
        Some(&tokens[1]),
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let n = call("GET", &format!("/v1/node/{id}"), Some(&tokens[0]), "").json();
    assert_eq!(n["SchedulingEligibility"], "ineligible");
}

/// Run the CLI against `agent`; (exit code, stdout, stderr).
fn cli(agent: &TestAgent, args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(bin())
        .args(args)
        .env("NOMAD_ADDR", format!("http://{}", agent.addr()))
        .env_remove("NOMAD_TOKEN")
        .env_remove("NOMAD_REGION")
        .env_remove("NOMAD_NAMESPACE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the cli");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_cli_toggles_eligibility_and_drains_a_node() {
    let agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    let prefix = &id[..8];

    let (code, out, err) = cli(&agent, &["node", "eligibility", "-disable", prefix]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!("Node {id:?} scheduling eligibility set: ineligible for scheduling\n")
    );
    assert_eq!(node(&agent, &id)["SchedulingEligibility"], "ineligible");
    let (code, out, _) = cli(&agent, &["node", "eligibility", "-enable", "-self"]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with("eligible for scheduling\n") && !out.contains("ineligible"),
        "{out}"
    );
    let (code, _, err) = cli(&agent, &["node", "eligibility", prefix]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Either the '-enable' or '-disable' flag must be set"),
        "{err}"
    );

    let (code, out, err) = cli(
        &agent,
        &[
            "node",
            "drain",
            "-enable",
            "-deadline",
            "5m",
            "-m",
            "patching",
            "-yes",
            "-detach",
            prefix,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("Node {id:?} drain strategy set\n"));
    let n = node(&agent, &id);
    // Nothing runs on the node: the drainer completes the drain at once.
    assert_eq!(n["LastDrain"]["Meta"]["message"], "patching", "{n}");
    wait_until(WAIT, "the empty node's drain completes", || {
        node(&agent, &id)["LastDrain"]["Status"] == "complete"
    });
    let (code, out, err) = cli(&agent, &["node", "drain", "-disable", "-yes", prefix]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("Node {id:?} drain strategy unset\n"));
    assert_eq!(node(&agent, &id)["SchedulingEligibility"], "eligible");

    // Monitoring (no -detach) ends when the drain does.
    let (code, out, err) = cli(&agent, &["node", "drain", "-enable", "-force", "-self"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("Drain complete for node {id:?}")),
        "{out}"
    );
    assert!(out.contains("have stopped"), "{out}");
    let n = node(&agent, &id);
    assert_eq!(n["SchedulingEligibility"], "ineligible");
    let (code, _, err) = cli(
        &agent,
        &["node", "drain", "-enable", "-deadline", "nope", prefix],
    );
    assert_eq!(code, 1);
    assert!(err.contains("Failed to parse deadline"), "{err}");
}

#[test]
fn a_server_drains_and_purges_a_client_on_another_agent() {
    let server = TestAgent::server("", &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let mut id = String::new();
    wait_until(WAIT, "the client's node ready on the server", || {
        let nodes = server.get_json("/v1/nodes");
        match nodes.as_array().and_then(|n| n.first()) {
            Some(n) if n["Status"] == "ready" => {
                id = n["ID"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    });
    register(&server, &service("web", 1, 1));
    let alloc_id = running(&server, "web", 1).remove(0);
    assert_eq!(alloc(&server, &alloc_id)["NodeID"], id.as_str());

    // The server's drainer moves the alloc off the client's node; the client stops it.
    let r = put(
        &server,
        &format!("/v1/node/{id}/drain"),
        r#"{"DrainSpec":{"Deadline":60000000000}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "the client stopped the migrating alloc", || {
        let a = alloc(&server, &alloc_id);
        a["DesiredTransition"]["Migrate"] == true && a["ClientStatus"] == "complete"
    });
    wait_until(WAIT, "the client's drain completes", || {
        node(&server, &id)["LastDrain"]["Status"] == "complete"
    });

    // Purged on the server, the client registers again (same ID) over RPC.
    let before = node(&server, &id)["CreateIndex"].as_u64().unwrap();
    let r = put(&server, &format!("/v1/node/{id}/purge"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "the client registered again", || {
        let r = server.get(&format!("/v1/node/{id}"));
        r.status == 200 && r.json()["CreateIndex"].as_u64().unwrap_or(0) > before
    });
    drop(client);
}

#[test]
fn a_drain_moves_a_service_alloc_to_another_client() {
    let server = TestAgent::server("", &[]);
    let clients: Vec<TestAgent> = (0..2)
        .map(|_| TestAgent::client(&[&server.rpc_addr()], "", &[]))
        .collect();
    let mut ids: Vec<String> = Vec::new();
    wait_until(WAIT, "two ready client nodes on the server", || {
        let nodes = server.get_json("/v1/nodes");
        ids = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["Status"] == "ready")
            .map(|n| n["ID"].as_str().unwrap().to_string())
            .collect();
        ids.len() == 2
    });
    register(&server, &service("web", 1, 1));
    let old = running(&server, "web", 1).remove(0);
    let from = alloc(&server, &old)["NodeID"].as_str().unwrap().to_string();
    let to = ids.iter().find(|i| **i != from).unwrap().clone();

    let r = put(
        &server,
        &format!("/v1/node/{from}/drain"),
        r#"{"DrainSpec":{"Deadline":60000000000}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The replacement runs on the other client; the old alloc is stopped there.
    let mut new = Value::Null;
    wait_until(WAIT, "the replacement running on the other client", || {
        new = allocs(&server, "web")
            .into_iter()
            .find(|a| a["NodeID"] == to.as_str() && a["ClientStatus"] == "running")
            .unwrap_or(Value::Null);
        !new.is_null()
    });
    wait_until(WAIT, "the old alloc stopped", || {
        alloc(&server, &old)["ClientStatus"] == "complete"
    });
    let a = alloc(&server, &old);
    assert_eq!(a["DesiredTransition"]["Migrate"], true, "{a}");
    assert_eq!(a["DesiredStatus"], "stop");
    assert_eq!(a["DesiredDescription"], "alloc is being migrated");
    wait_until(WAIT, "the drain completes", || {
        node(&server, &from)["LastDrain"]["Status"] == "complete"
    });
    let n = node(&server, &from);
    assert_eq!(n["SchedulingEligibility"], "ineligible");
    assert!(has_event(&n, "Drain", "Node drain complete"), "{n}");
    drop(clients);
}

#[test]
fn a_drain_survives_an_agent_restart_and_its_deadline_still_completes_it() {
    let mut agent = TestAgent::start(&[]);
    let id = node_id(&agent);
    register(&agent, &sh_job("b", "batch", "sleep 300"));
    let batch = running(&agent, "b", 1).remove(0);
    // A batch alloc waits for the deadline, which comes after the restart.
    let r = put(
        &agent,
        &format!("/v1/node/{id}/drain"),
        r#"{"DrainSpec":{"Deadline":4000000000}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let started = std::time::Instant::now();
    agent.restart();
    let n = node(&agent, &id);
    if started.elapsed() < std::time::Duration::from_secs(4) {
        assert_eq!(n["LastDrain"]["Status"], "draining", "{n}");
    }
    assert_eq!(n["SchedulingEligibility"], "ineligible");
    let mut n = Value::Null;
    wait_until(WAIT, "the drain completes at its deadline", || {
        n = node(&agent, &id);
        n["LastDrain"]["Status"] == "complete"
    });
    assert!(started.elapsed() >= std::time::Duration::from_secs(4));
    let complete = n["Events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Message"] == "Node drain complete")
        .cloned()
        .unwrap();
    assert_eq!(complete["Details"]["deadline_reached"], "true", "{n}");
    wait_until(WAIT, "the batch alloc migrated and stopped", || {
        let a = alloc(&agent, &batch);
        a["DesiredTransition"]["Migrate"] == true && a["ClientStatus"] == "complete"
    });
}
