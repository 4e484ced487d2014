//! Dynamic node metadata: Nomad's merge, tombstone and validation rules, durability across
//! restarts, and the batcher carrying changes to the node record within its window.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn post_meta(agent: &TestAgent, body: &str) -> Response {
    agent.request("POST", "/v1/client/metadata", &[], body.as_bytes())
}

fn node_id(agent: &TestAgent) -> String {
    agent.get_json("/v1/nodes")[0]["ID"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn get_shows_static_defaults_and_config_meta() {
    let agent = TestAgent::start(&["-meta", "rack=r1"]);
    let m = agent.get_json("/v1/client/metadata");
    assert_eq!(m["Dynamic"], json!({}));
    assert_eq!(m["Static"]["connect.log_level"], "info");
    assert_eq!(
        m["Static"]["connect.sidecar_image"],
        "docker.io/envoyproxy/envoy:v${NOMAD_envoy_version}"
    );
    assert_eq!(
        m["Static"]["connect.transparent_proxy.default_outbound_port"],
        "15001"
    );
    assert_eq!(m["Static"]["rack"], "r1");
    assert_eq!(m["Meta"]["rack"], "r1");
}

#[test]
fn set_unset_and_tombstone_follow_nomad() {
    let agent = TestAgent::start(&[]);
    let r = post_meta(&agent, r#"{"Meta": {"example": "Hello World!"}}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(m["Meta"]["example"], "Hello World!");
    assert_eq!(m["Dynamic"], json!({"example": "Hello World!"}));
    assert!(m["Static"].get("example").is_none());

    let m = post_meta(&agent, r#"{"Meta": {"example": null}}"#).json();
    assert!(m["Meta"].get("example").is_none());
    assert_eq!(
        m["Dynamic"],
        json!({}),
        "a null for a non-static key leaves no tombstone"
    );

    let m = post_meta(
        &agent,
        r#"{"Meta": {"connect.log_level": null, "empty": ""}}"#,
    )
    .json();
    assert!(m["Meta"].get("connect.log_level").is_none());
    assert_eq!(m["Meta"]["empty"], "");
    assert_eq!(
        m["Dynamic"],
        json!({"connect.log_level": null, "empty": ""})
    );
    assert_eq!(m["Static"]["connect.log_level"], "info");

    let r = post_meta(&agent, r#"{"Meta": {"connect.log_level": "debug"}}"#);
    let m = r.json();
    assert_eq!(m["Meta"]["connect.log_level"], "debug");
    assert_eq!(agent.get_json("/v1/client/metadata"), m);
    // A GET serves JSON cached at the change: byte for byte what the POST answered, and the
    // same document with ?pretty.
    assert_eq!(agent.get("/v1/client/metadata").body, r.body);
    assert_eq!(agent.get_json("/v1/client/metadata?pretty=true"), m);
}

#[test]
fn bad_requests_get_nomads_messages_and_change_nothing() {
    let agent = TestAgent::start(&[]);
    post_meta(&agent, r#"{"Meta": {"keep": "me"}}"#);
    let before = agent.get_json("/v1/client/metadata");
    let cases: &[(&str, &str)] = &[
        ("", "Request body is empty"),
        (r#"{"Meta": {}}"#, "missing required Meta object"),
        (r#"{}"#, "missing required Meta object"),
        (r#"{"Meta": {"": "x"}}"#, "metadata keys must not be empty"),
        (r#"{"Meta": {"ok": "1", "some/path": "x"}}"#, r#""some/path" is invalid; metadata keys must be valid dotted hcl identifiers"#),
        (r#"{"Meta": {"a..b": "x"}}"#, r#""a..b" is invalid; metadata keys must be valid dotted hcl identifiers"#),
        (r#"{"Meta": {"1abc": "x"}}"#, r#""1abc" is invalid; metadata keys must be valid dotted hcl identifiers"#),
        (r#"{"Meta": {"a": 1}}"#, "json: cannot unmarshal number into Go struct field NodeMetaApplyRequest.Meta of type string"),
        (r#"{"Meta": ["a"]}"#, "json: cannot unmarshal array into Go struct field NodeMetaApplyRequest.Meta of type map[string]*string"),
        (r#"[1]"#, "json: cannot unmarshal array into Go value of type structs.NodeMetaApplyRequest"),
    ];
    for (body, msg) in cases {
        let r = post_meta(&agent, body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.text(), *msg, "{body}");
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    }
    let r = post_meta(&agent, r#"{"Meta": {"x": "#);
    assert_eq!(r.status, 400);
    let r = agent.request(
        "PUT",
        "/v1/client/metadata",
        &[],
        br#"{"Meta": {"x": "y"}}"#,
    );
    assert_eq!((r.status, r.text().as_str()), (405, "Invalid method"));
    let r = agent.request(
        "POST",
        "/v1/client/metadata?node_id=00000000-0000-0000-0000-000000000000",
        &[],
        br#"{"Meta": {"x": "y"}}"#,
    );
    assert_eq!(r.status, 404);
    assert_eq!(agent.get_json("/v1/client/metadata"), before);
    let id = node_id(&agent);
    let r = agent.request(
        "POST",
        &format!("/v1/client/metadata?node_id={id}"),
        &[],
        br#"{"Meta": {"x": "y"}}"#,
    );
    assert_eq!(r.status, 200);
}

#[test]
fn dynamic_metadata_and_tombstones_survive_a_restart() {
    let mut agent = TestAgent::start(&["-meta", "rack=r1"]);
    post_meta(&agent, r#"{"Meta": {"a": "1", "rack": null}}"#);
    agent.restart();
    let m = agent.get_json("/v1/client/metadata");
    assert_eq!(m["Dynamic"], json!({"a": "1", "rack": null}));
    assert!(m["Meta"].get("rack").is_none());
    let node = agent.get_json(&format!("/v1/node/{}", node_id(&agent)));
    assert_eq!(
        node["Meta"]["a"], "1",
        "the node registers with its dynamic metadata"
    );
    assert!(node["Meta"].get("rack").is_none());
}

#[test]
fn concurrent_updates_lose_nothing() {
    let agent = TestAgent::start(&[]);
    std::thread::scope(|s| {
        for i in 0..16 {
            let agent = &agent;
            s.spawn(move || {
                let r = post_meta(agent, &format!(r#"{{"Meta": {{"k{i}": "v{i}"}}}}"#));
                assert_eq!(r.status, 200);
            });
        }
    });
    let m = agent.get_json("/v1/client/metadata");
    for i in 0..16 {
        assert_eq!(m["Dynamic"][format!("k{i}")], format!("v{i}"));
    }
}

#[test]
fn batch_window_coalesces_changes_into_one_node_update() {
    let agent = TestAgent::start(&["-meta-batch-window", "2s"]);
    let id = node_id(&agent);
    let path = format!("/v1/node/{id}");
    let before = agent.get_json(&path)["ModifyIndex"].as_u64().unwrap();
    let start = Instant::now();
    post_meta(&agent, r#"{"Meta": {"a": "1"}}"#);
    post_meta(&agent, r#"{"Meta": {"b": "2"}}"#);
    assert_eq!(
        agent.get_json("/v1/client/metadata")["Meta"]["b"],
        "2",
        "the client endpoint reflects it at once"
    );
    let node = agent.get_json(&path);
    assert!(
        node["Meta"].get("a").is_none(),
        "not published before the window closes"
    );
    // The first change of the node record after `before` already carries both keys...
    let first = agent.get(&format!("{path}?index={before}&wait=10s"));
    let elapsed = start.elapsed();
    let node = first.json();
    assert!(
        node["ModifyIndex"].as_u64().unwrap() > before,
        "published within the wait"
    );
    assert!(
        elapsed >= Duration::from_millis(1500),
        "published after {elapsed:?}, before the window"
    );
    assert_eq!(node["Meta"]["a"], "1", "one node update for both changes");
    assert_eq!(node["Meta"]["b"], "2", "one node update for both changes");
    // ...and no second update follows within another window.
    let after = node["ModifyIndex"].as_u64().unwrap();
    let again = agent
        .get(&format!("{path}?index={after}&wait=2500ms"))
        .json();
    assert_eq!(
        again["ModifyIndex"].as_u64().unwrap(),
        after,
        "a single publish"
    );
    let stub = &agent.get_json("/v1/nodes")[0];
    assert_eq!(stub["ModifyIndex"], node["ModifyIndex"]);
    let r = agent.get("/v1/nodes?filter=Meta.a%20%3D%3D%20%221%22");
    assert_eq!(r.json().as_array().unwrap().len(), 1);
}

#[test]
fn dev_window_publishes_within_ten_seconds() {
    let agent = TestAgent::start(&[]);
    let path = format!("/v1/node/{}", node_id(&agent));
    post_meta(&agent, r#"{"Meta": {"example": "Hello World!"}}"#);
    wait_until(
        Duration::from_secs(10),
        "node record to show example",
        || agent.get_json(&path)["Meta"]["example"] == "Hello World!",
    );
}
