//! Hostile input to the parsers fed from requests, against the real binary: deeply nested ACL
//! policies (the 833-byte agent killer and its cousins), deep JSON bodies, deep and
//! long `?filter=` expressions — each a 400 in Nomad's plain-text format while the agent keeps
//! serving — and `?filter=` applied, or refused, on every list endpoint.

mod common;
use common::*;
use serde_json::{json, Value};

/// Percent-encode everything but unreserved characters, for query values.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn call(agent: &TestAgent, method: &str, path: &str, token: &str, body: &[u8]) -> Response {
    agent.request(method, path, &[("X-Nomad-Token", token)], body)
}

fn bootstrap(agent: &TestAgent) -> String {
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["SecretID"].as_str().unwrap().to_string()
}

fn assert_healthy(agent: &TestAgent) {
    let r = agent.get("/v1/agent/health");
    assert_eq!(r.status, 200, "agent no longer healthy: {}", r.text());
}

/// The attacks, at the sizes it names (`[` 400 deep was 833 bytes of body).
fn policy_attacks() -> Vec<(&'static str, String)> {
    let nest = |open: &str, inner: &str, close: &str, n: usize| {
        format!("x = {}{inner}{}", open.repeat(n), close.repeat(n))
    };
    vec![
        ("[", nest("[", "1", "]", 400)),
        ("${", nest("\"${", "1", "}\"", 300)),
        ("{a=", nest("{a=", "1", "}", 500)),
        ("f(", nest("f(", "1", ")", 500)),
        ("(", nest("(", "1", ")", 1000)),
        (
            "?:",
            format!("x = {}1{}", "a ? ".repeat(1000), " : 2".repeat(1000)),
        ),
        ("+", format!("x = 1{}", "+1".repeat(1000))),
        ("-", format!("x = {}1", "-".repeat(5000))),
        ("!", format!("x = {}a", "!".repeat(5000))),
        (
            "%{",
            format!(
                "x = \"{}x{}\"",
                "%{if a}".repeat(500),
                "%{endif}".repeat(500)
            ),
        ),
        (
            "block",
            format!(
                "{}node {{ policy = \"read\" }}{}",
                "a {\n".repeat(500),
                "}\n".repeat(500)
            ),
        ),
    ]
}

#[test]
fn deeply_nested_acl_policies_are_400_and_the_agent_keeps_serving() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    for (kind, rules) in policy_attacks() {
        let body = json!({"Name": "deep", "Rules": rules}).to_string();
        let r = call(
            &agent,
            "POST",
            "/v1/acl/policy/deep",
            &mgmt,
            body.as_bytes(),
        );
        let text = r.text();
        assert_eq!(r.status, 400, "{kind}: {text}");
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{kind}"
        );
        assert!(
            text.starts_with("policy 0 invalid: failed to parse rules: At ")
                && (text.contains("nesting deeper than 10 levels")
                    || text.contains("more than 4 operators")
                    || text.contains("template directives are not allowed here")),
            "{kind}: {text}"
        );
        assert_healthy(&agent);
    }
    // The same in the policy's JSON form.
    let deep_json = format!("{{\"node\": {}1{}}}", "[".repeat(5000), "]".repeat(5000));
    let body = json!({"Name": "deep", "Rules": deep_json}).to_string();
    let r = call(
        &agent,
        "POST",
        "/v1/acl/policy/deep",
        &mgmt,
        body.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("nesting deeper than 16 levels"),
        "{}",
        r.text()
    );
    // Nothing was stored, and an ordinary policy still goes in.
    let r = call(&agent, "GET", "/v1/acl/policy/deep", &mgmt, b"");
    assert_eq!(r.status, 404);
    let body = json!({"Name": "ok", "Rules": "namespace \"default\" {\n  policy = \"read\"\n  capabilities = [\"read-logs\"]\n}\nnode { policy = \"write\" }"}).to_string();
    let r = call(&agent, "POST", "/v1/acl/policy/ok", &mgmt, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_healthy(&agent);
}

#[test]
fn deep_json_bodies_are_400() {
    let agent = TestAgent::start(&[]);
    let deep = format!("{{\"Job\": {}", "[".repeat(100_000));
    let r = agent.request("POST", "/v1/jobs", &[], deep.as_bytes());
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "Failed to decode body: nesting deeper than 64 levels at line 1 column 72"
    );
    let deep = format!("{{\"Meta\": {}", "{\"a\":".repeat(100_000));
    let r = agent.request("POST", "/v1/client/metadata", &[], deep.as_bytes());
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .starts_with("invalid JSON: nesting deeper than 64 levels"),
        "{}",
        r.text()
    );
    // Just under the bound, the body decodes and is judged on its content.
    let ok_depth = format!("{{\"X\": {}1{}}}", "[".repeat(62), "]".repeat(62));
    let r = agent.request("POST", "/v1/jobs", &[], ok_depth.as_bytes());
    assert_eq!(
        (r.status, r.text()),
        (400, "Job must be specified".to_string())
    );
    assert_healthy(&agent);
}

const LIST_ENDPOINTS: &[&str] = &[
    "/v1/jobs",
    "/v1/allocations",
    "/v1/evaluations",
    "/v1/acl/tokens",
    "/v1/acl/policies",
    "/v1/nodes",
];

#[test]
fn bad_filters_are_400_on_every_list_endpoint() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    let deep = format!("{}Name == a{}", "(".repeat(2000), ")".repeat(2000));
    let nots = format!("{}Name == a", "not ".repeat(1000));
    let long = format!("Name == \"{}\"", "a".repeat(5000));
    for path in LIST_ENDPOINTS {
        for (bad, says) in [
            ("((((", "failed to read filter expression: "),
            (deep.as_str(), "nested deeper than 32 levels"),
            (nots.as_str(), "nested deeper than 32 levels"),
            (long.as_str(), "longer than 4096 bytes"),
            ("Name ~ 1", "unexpected character"),
        ] {
            let r = call(
                &agent,
                "GET",
                &format!("{path}?filter={}", enc(bad)),
                &mgmt,
                b"",
            );
            let text = r.text();
            assert_eq!(r.status, 400, "{path} {bad:.20}: {text}");
            assert!(
                text.starts_with("failed to read filter expression: ") && text.contains(says),
                "{path} {bad:.20}: {text}"
            );
        }
    }
    assert_healthy(&agent);
}

fn filtered(agent: &TestAgent, token: &str, path: &str, filter: &str) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = call(
        agent,
        "GET",
        &format!("{path}{sep}filter={}", enc(filter)),
        token,
        b"",
    );
    assert_eq!(r.status, 200, "{path} {filter}: {}", r.text());
    r.json().as_array().cloned().unwrap()
}

fn field(items: &[Value], key: &str) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|i| i[key].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn filters_select_the_right_items_on_every_list_endpoint() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    for (id, team) in [("alpha", "red"), ("beta", "blue"), ("gamma", "red")] {
        let job = json!({"Job": {"ID": id, "Type": "batch", "Meta": {"team": team},
            "TaskGroups": [{"Name": "g", "Count": 1,
                "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
                "Tasks": [{"Name": "t", "Driver": "raw_exec",
                    "Config": {"command": "/bin/sh", "args": ["-c", "exit 0"]}}]}]}});
        let r = call(&agent, "PUT", "/v1/jobs", &mgmt, job.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Jobs: on the full job (Meta), and combined with the prefix.
    let jobs = filtered(&agent, &mgmt, "/v1/jobs", "Meta.team == red");
    assert_eq!(field(&jobs, "ID"), ["alpha", "gamma"]);
    let jobs = filtered(&agent, &mgmt, "/v1/jobs?prefix=g", "Meta.team == red");
    assert_eq!(field(&jobs, "ID"), ["gamma"]);
    let jobs = filtered(&agent, &mgmt, "/v1/jobs", "not (Meta.team == red)");
    assert_eq!(field(&jobs, "ID"), ["beta"]);
    // Allocations and evaluations of one job.
    let mut allocs = Vec::new();
    wait_until(
        std::time::Duration::from_secs(20),
        "allocs of three jobs",
        || {
            allocs = call(&agent, "GET", "/v1/allocations", &mgmt, b"")
                .json()
                .as_array()
                .cloned()
                .unwrap_or_default();
            allocs.len() == 3
        },
    );
    let beta = filtered(&agent, &mgmt, "/v1/allocations", "JobID == beta");
    assert_eq!(field(&beta, "JobID"), ["beta"]);
    let two = filtered(
        &agent,
        &mgmt,
        "/v1/allocations",
        "JobID == alpha or Job.Meta.team == blue",
    );
    assert_eq!(field(&two, "JobID"), ["alpha", "beta"]);
    let evals = filtered(&agent, &mgmt, "/v1/evaluations", "JobID == gamma");
    assert_eq!(field(&evals, "JobID"), ["gamma"]);
    let r = call(
        &agent,
        "GET",
        &format!("/v1/evaluations?job=gamma&filter={}", enc("JobID == gamma")),
        &mgmt,
        b"",
    );
    assert_eq!(
        (r.status, r.text()),
        (
            400,
            "Filter expression cannot be used with other filter parameters".to_string()
        )
    );
    // ACL tokens (stubs) and policies (full, rules included).
    for name in ["reader", "writer"] {
        let body = json!({"Name": name, "Type": "client", "Policies": ["p-read"]}).to_string();
        let r = call(&agent, "POST", "/v1/acl/token", &mgmt, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let tokens = filtered(&agent, &mgmt, "/v1/acl/tokens", "Name == reader");
    assert_eq!(field(&tokens, "Name"), ["reader"]);
    let tokens = filtered(&agent, &mgmt, "/v1/acl/tokens", "Type == management");
    assert_eq!(tokens.len(), 1);
    for (name, level) in [("p-read", "read"), ("p-write", "write")] {
        let rules = format!("node {{ policy = \"{level}\" }}");
        let body = json!({"Name": name, "Rules": rules}).to_string();
        let r = call(
            &agent,
            "POST",
            &format!("/v1/acl/policy/{name}"),
            &mgmt,
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let policies = filtered(&agent, &mgmt, "/v1/acl/policies", "Rules contains write");
    assert_eq!(field(&policies, "Name"), ["p-write"]);
    let policies = filtered(&agent, &mgmt, "/v1/acl/policies", "Name != p-write");
    assert_eq!(field(&policies, "Name"), ["p-read"]);
    // Nodes still filter on the full node.
    let nodes = filtered(&agent, &mgmt, "/v1/nodes", "Status == ready");
    assert_eq!(nodes.len(), 1);
    let nodes = filtered(&agent, &mgmt, "/v1/nodes", "Status == nope");
    assert!(nodes.is_empty());
    // An empty filter is no filter.
    let r = call(&agent, "GET", "/v1/jobs?filter=", &mgmt, b"");
    assert_eq!(r.json().as_array().unwrap().len(), 3);
}
