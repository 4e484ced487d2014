//! ACL endpoints and enforcement over TCP: bootstrap once, token and policy CRUD (HCL and JSON
//! rules), bad policies naming the line, durability across restarts, capability checks, token
//! header forms, the JWKS document, and no secret in the agent's log.

mod common;
use common::*;
use serde_json::{json, Value};

fn req(agent: &TestAgent, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let hdrs: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    agent.request(method, path, &hdrs, body.as_bytes())
}

fn bootstrap(agent: &TestAgent) -> String {
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["SecretID"].as_str().unwrap().to_string()
}

fn put_policy(agent: &TestAgent, mgmt: &str, name: &str, rules: &str, job_acl: Value) -> Response {
    let body =
        json!({"Name": name, "Description": "d", "Rules": rules, "JobACL": job_acl}).to_string();
    req(
        agent,
        "POST",
        &format!("/v1/acl/policy/{name}"),
        Some(mgmt),
        &body,
    )
}

fn client_token(agent: &TestAgent, mgmt: &str, policies: &[&str]) -> Value {
    let body = json!({"Name": "c", "Type": "client", "Policies": policies}).to_string();
    let r = req(agent, "POST", "/v1/acl/token", Some(mgmt), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn acl_endpoints_say_support_disabled_when_acls_are_off() {
    let agent = TestAgent::start(&[]);
    for (m, p) in [
        ("POST", "/v1/acl/bootstrap"),
        ("GET", "/v1/acl/tokens"),
        ("GET", "/v1/acl/policies"),
    ] {
        let r = agent.request(m, p, &[], b"");
        assert_eq!(
            (r.status, r.text()),
            (400, "ACL support disabled".to_string()),
            "{m} {p}"
        );
    }
    // Everything else is open, whatever token is sent.
    let r = req(&agent, "GET", "/v1/client/metadata", Some("garbage"), "");
    assert_eq!(r.status, 200);
}

#[test]
fn bootstrap_works_once_and_the_second_call_is_refused() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["Type"], "management");
    assert_eq!(t["Name"], "Bootstrap Token");
    assert_eq!(t["Policies"], Value::Null);
    assert_eq!(t["Global"], true);
    assert_eq!(t["SecretID"].as_str().unwrap().len(), 36);
    assert!(t["Hash"].as_str().unwrap().ends_with('='));
    assert!(t["CreateTime"].as_str().unwrap().ends_with('Z'));
    let index = t["CreateIndex"].as_u64().unwrap();
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        format!("ACL bootstrap already done (reset index: {index})")
    );
    assert!(!r.text().contains(t["SecretID"].as_str().unwrap()));

    // A chosen bootstrap secret must be a UUID (on a fresh agent).
    let fresh = TestAgent::start(&["-acl-enabled"]);
    let r = fresh.request(
        "POST",
        "/v1/acl/bootstrap",
        &[],
        br#"{"BootstrapSecret": "not-a-uuid"}"#,
    );
    assert_eq!((r.status, r.text()), (400, "invalid acl token".into()));
    let chosen = "2b778dd9-f5f1-6f29-b4b4-9a5fa948757a";
    let body = json!({ "BootstrapSecret": chosen }).to_string();
    let r = fresh.request("POST", "/v1/acl/bootstrap", &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["SecretID"], chosen);
    assert_eq!(
        req(&fresh, "GET", "/v1/acl/tokens", Some(chosen), "").status,
        200
    );
}

#[test]
fn token_crud_and_deleting_the_token_in_use() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    assert_eq!(
        put_policy(
            &agent,
            &mgmt,
            "readnode",
            r#"node { policy = "read" }"#,
            Value::Null
        )
        .status,
        200
    );
    let tok = client_token(&agent, &mgmt, &["readnode"]);
    let acc = tok["AccessorID"].as_str().unwrap();
    let secret = tok["SecretID"].as_str().unwrap();

    let list = req(&agent, "GET", "/v1/acl/tokens", Some(&mgmt), "");
    assert_eq!(list.status, 200);
    assert!(list.header("X-Nomad-Index").is_some());
    let list = list.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("SecretID").is_none()),
        "stubs carry no secret"
    );

    let got = req(
        &agent,
        "GET",
        &format!("/v1/acl/token/{acc}"),
        Some(&mgmt),
        "",
    )
    .json();
    assert_eq!(got["SecretID"], secret);
    assert_eq!(got["Policies"], json!(["readnode"]));
    // A client token may read itself, by accessor and as self.
    assert_eq!(
        req(
            &agent,
            "GET",
            &format!("/v1/acl/token/{acc}"),
            Some(secret),
            ""
        )
        .status,
        200
    );
    assert_eq!(
        req(&agent, "GET", "/v1/acl/token/self", Some(secret), "").json()["AccessorID"],
        acc
    );
    assert_eq!(
        req(&agent, "GET", "/v1/acl/tokens", Some(secret), "").text(),
        "Permission denied"
    );

    // Update: accessor in body must match the path.
    let upd = json!({"AccessorID": "00000000-0000-0000-0000-000000000000", "Name": "x", "Type": "client", "Policies": ["readnode"]});
    let r = req(
        &agent,
        "POST",
        &format!("/v1/acl/token/{acc}"),
        Some(&mgmt),
        &upd.to_string(),
    );
    assert_eq!(
        (r.status, r.text()),
        (400, "ACL token accessor does not match request path".into())
    );
    let upd =
        json!({"AccessorID": acc, "Name": "renamed", "Type": "client", "Policies": ["readnode"]});
    let r = req(
        &agent,
        "POST",
        &format!("/v1/acl/token/{acc}"),
        Some(&mgmt),
        &upd.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Name"], "renamed");
    assert_eq!(r.json()["SecretID"], secret);

    // Bad token bodies.
    let r = req(
        &agent,
        "POST",
        "/v1/acl/token",
        Some(&mgmt),
        r#"{"Type":"client"}"#,
    );
    assert_eq!(
        (r.status, r.text()),
        (
            400,
            "token 0 invalid: client token missing policies or roles".into()
        )
    );
    let r = req(
        &agent,
        "POST",
        "/v1/acl/token",
        Some(&mgmt),
        r#"{"Type":"root"}"#,
    );
    assert_eq!(
        (r.status, r.text()),
        (
            400,
            "token 0 invalid: token type must be client or management".into()
        )
    );
    let r = req(&agent, "POST", "/v1/acl/token", Some(&mgmt), "");
    assert_eq!((r.status, r.text()), (400, "Request body is empty".into()));

    // Unknown accessors, bad bootstrap secrets.
    let ghost = "00000000-0000-0000-0000-000000000000";
    let r = req(
        &agent,
        "DELETE",
        &format!("/v1/acl/token/{ghost}"),
        Some(&mgmt),
        "",
    );
    assert_eq!(
        (r.status, r.text()),
        (400, format!("Cannot delete nonexistent tokens: {ghost}"))
    );
    let upd = json!({"Name": "x", "Type": "client", "Policies": ["readnode"]}).to_string();
    let r = req(
        &agent,
        "POST",
        &format!("/v1/acl/token/{ghost}"),
        Some(&mgmt),
        &upd,
    );
    assert_eq!(
        (r.status, r.text()),
        (400, format!("cannot find token {ghost}"))
    );
    let r = req(
        &agent,
        "GET",
        &format!("/v1/acl/token/{ghost}"),
        Some(&mgmt),
        "",
    );
    assert_eq!((r.status, r.text()), (404, "ACL token not found".into()));
    let r = req(
        &agent,
        "GET",
        &format!("/v1/acl/token/{ghost}"),
        Some(secret),
        "",
    );
    assert_eq!((r.status, r.text()), (403, "Permission denied".into()));
    // A client token lists and reads only its own policies.
    assert_eq!(
        put_policy(
            &agent,
            &mgmt,
            "other",
            r#"agent { policy = "read" }"#,
            Value::Null
        )
        .status,
        200
    );
    let mine = req(&agent, "GET", "/v1/acl/policies", Some(secret), "").json();
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["Name"], "readnode");
    assert_eq!(
        req(&agent, "GET", "/v1/acl/policy/other", Some(secret), "").status,
        403
    );
    assert_eq!(
        req(&agent, "GET", "/v1/acl/policy/readnode", Some(secret), "").status,
        200
    );

    // Delete the client token, then the management token deletes itself.
    assert_eq!(
        req(
            &agent,
            "DELETE",
            &format!("/v1/acl/token/{acc}"),
            Some(&mgmt),
            ""
        )
        .status,
        200
    );
    let r = req(&agent, "GET", "/v1/client/metadata", Some(secret), "");
    assert_eq!((r.status, r.text()), (403, "ACL token not found".into()));
    let self_acc = req(&agent, "GET", "/v1/acl/token/self", Some(&mgmt), "").json()["AccessorID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        req(
            &agent,
            "DELETE",
            &format!("/v1/acl/token/{self_acc}"),
            Some(&mgmt),
            ""
        )
        .status,
        200
    );
    let r = req(&agent, "GET", "/v1/acl/tokens", Some(&mgmt), "");
    assert_eq!((r.status, r.text()), (403, "ACL token not found".into()));
}

#[test]
fn policy_crud_in_hcl_and_json_and_bad_rules_name_the_line() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    let hcl = "namespace \"default\" {\n  policy = \"read\"\n  capabilities = [\"read-logs\"]\n}\nnode { policy = \"write\" }\n";
    let r = put_policy(&agent, &mgmt, "hcl-one", hcl, Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    assert!(r.header("X-Nomad-Index").is_some());
    let js = r#"{"namespace": [{"default": {"policy": "write"}}], "agent": {"policy": "read"}}"#;
    let r = put_policy(
        &agent,
        &mgmt,
        "json-one",
        js,
        json!({"Namespace": "default", "JobID": "web"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let p = req(&agent, "GET", "/v1/acl/policy/hcl-one", Some(&mgmt), "").json();
    assert_eq!(p["Rules"], hcl);
    assert_eq!(p["Name"], "hcl-one");
    assert_eq!(p["RulesJSON"]["Node"]["Policy"], "write");
    assert_eq!(p["JobACL"], Value::Null);
    let p = req(&agent, "GET", "/v1/acl/policy/json-one", Some(&mgmt), "").json();
    assert_eq!(p["JobACL"]["JobID"], "web");
    assert_eq!(p["RulesJSON"]["Namespaces"][0]["Policy"], "write");
    let list = req(&agent, "GET", "/v1/acl/policies", Some(&mgmt), "").json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hcl-one", "json-one"]);

    // A syntax error: 400 naming line 3, and nothing stored.
    let bad = "node {\n  policy = \"write\"\n  policy policy\n}\n";
    let r = put_policy(&agent, &mgmt, "broken", bad, Value::Null);
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .starts_with("policy 0 invalid: failed to parse rules: At 3:"),
        "{}",
        r.text()
    );
    let r = put_policy(
        &agent,
        &mgmt,
        "broken",
        "{\n\"node\": {\"policy\": }\n}",
        Value::Null,
    );
    assert!(r.text().contains("At 2:"), "{}", r.text());
    let r = put_policy(
        &agent,
        &mgmt,
        "broken",
        r#"node { policy = "sudo" }"#,
        Value::Null,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        req(&agent, "GET", "/v1/acl/policy/broken", Some(&mgmt), "").status,
        404
    );
    let r = req(
        &agent,
        "POST",
        "/v1/acl/policy/other",
        Some(&mgmt),
        r#"{"Name":"x","Rules":""}"#,
    );
    assert_eq!(
        (r.status, r.text()),
        (400, "ACL policy name does not match request path".into())
    );
    let r = put_policy(&agent, &mgmt, "jobacl", "", json!({"Group": "g"}));
    assert_eq!(
        (r.status, r.text()),
        (
            400,
            "policy 0 invalid: job ID must be set to set group".into()
        )
    );

    assert_eq!(
        req(&agent, "DELETE", "/v1/acl/policy/hcl-one", Some(&mgmt), "").status,
        200
    );
    let r = req(&agent, "GET", "/v1/acl/policy/hcl-one", Some(&mgmt), "");
    assert_eq!((r.status, r.text()), (404, "ACL policy not found".into()));
}

#[test]
fn tokens_and_policies_survive_a_restart() {
    let mut agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    assert_eq!(
        put_policy(
            &agent,
            &mgmt,
            "readnode",
            r#"node { policy = "read" }"#,
            Value::Null
        )
        .status,
        200
    );
    let tok = client_token(&agent, &mgmt, &["readnode"]);
    let secret = tok["SecretID"].as_str().unwrap().to_string();
    let before = req(&agent, "GET", "/v1/acl/policy/readnode", Some(&mgmt), "").json()
        ["ModifyIndex"]
        .clone();
    let jwks_before = agent.get_json("/.well-known/jwks.json");
    agent.restart();
    assert_eq!(
        req(&agent, "GET", "/v1/client/metadata", Some(&secret), "").status,
        200
    );
    assert_eq!(
        req(&agent, "GET", "/v1/acl/policy/readnode", Some(&mgmt), "").json()["ModifyIndex"],
        before
    );
    assert_eq!(
        agent.request("POST", "/v1/acl/bootstrap", &[], b"").status,
        400
    );
    assert_eq!(
        agent.get_json("/.well-known/jwks.json"),
        jwks_before,
        "the signing key is kept"
    );
    // Indexes keep growing after a restart.
    let r = put_policy(
        &agent,
        &mgmt,
        "another",
        r#"agent { policy = "read" }"#,
        Value::Null,
    );
    let idx: u64 = r.header("X-Nomad-Index").unwrap().parse().unwrap();
    assert!(idx > before.as_u64().unwrap());
    let key = agent.data_dir.join("server/workload-identity-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn capabilities_are_enforced_with_nomads_messages() {
    let agent = TestAgent::start(&["-acl-enabled", "-log-level", "DEBUG"]);
    let mgmt = bootstrap(&agent);
    put_policy(
        &agent,
        &mgmt,
        "readnode",
        r#"node { policy = "read" }"#,
        Value::Null,
    );
    put_policy(
        &agent,
        &mgmt,
        "writenode",
        r#"node { policy = "write" }"#,
        Value::Null,
    );
    put_policy(
        &agent,
        &mgmt,
        "agentonly",
        r#"agent { policy = "read" }"#,
        Value::Null,
    );
    let reader = client_token(&agent, &mgmt, &["readnode"])["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let writer = client_token(&agent, &mgmt, &["writenode"])["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let other = client_token(&agent, &mgmt, &["agentonly"])["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let body = r#"{"Meta": {"k": "v"}}"#;

    let cases: Vec<(Option<&str>, &str, u16, &str)> = vec![
        (None, "GET", 403, "Permission denied"),
        (Some(&other), "GET", 403, "Permission denied"),
        (Some(&reader), "GET", 200, ""),
        (Some(&reader), "POST", 403, "Permission denied"),
        (Some(&writer), "POST", 200, ""),
        (Some(&mgmt), "POST", 200, ""),
        (Some("garbage"), "GET", 403, "Permission denied"),
        (
            Some("eyJhbGciOiJub25lIn0.e30."),
            "GET",
            403,
            "Permission denied",
        ),
        (
            Some("6a0f9c1e-1111-2222-3333-444455556666"),
            "GET",
            403,
            "ACL token not found",
        ),
    ];
    for (tok, method, status, text) in cases {
        let b = if method == "POST" { body } else { "" };
        let r = req(&agent, method, "/v1/client/metadata", tok, b);
        assert_eq!(r.status, status, "{tok:?} {method}: {}", r.text());
        if !text.is_empty() {
            assert_eq!(r.text(), text);
        }
    }
    // The anonymous policy applies to requests without a token.
    put_policy(
        &agent,
        &mgmt,
        "anonymous",
        r#"node { policy = "read" }"#,
        Value::Null,
    );
    assert_eq!(
        req(&agent, "GET", "/v1/client/metadata", None, "").status,
        200
    );
    assert_eq!(
        req(&agent, "POST", "/v1/client/metadata", None, body).status,
        403
    );

    // Token header forms: Bearer (any case, first word), X-Nomad-Token trimmed and winning.
    let forms: Vec<(Vec<(&str, String)>, u16)> = vec![
        (vec![("Authorization", format!("Bearer {writer}"))], 200),
        (
            vec![("Authorization", format!("bEaReR {writer} trailing"))],
            200,
        ),
        (vec![("X-Nomad-Token", format!("  {writer}  "))], 200),
        (
            vec![
                ("X-Nomad-Token", writer.clone()),
                ("Authorization", format!("Bearer {reader}")),
            ],
            200,
        ),
        (
            vec![
                ("X-Nomad-Token", reader.clone()),
                ("Authorization", format!("Bearer {writer}")),
            ],
            403,
        ),
        (vec![("Authorization", format!("Basic {writer}"))], 200), // anonymous: node read only
        (vec![("Authorization", writer.clone())], 200),
    ];
    for (hdrs, status) in forms {
        let h: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let method = if status == 403 { "POST" } else { "GET" };
        let r = agent.request(method, "/v1/client/metadata", &h, body.as_bytes());
        assert_eq!(r.status, status, "{hdrs:?}: {}", r.text());
    }
    let log = agent.log();
    for secret in [&mgmt, &reader, &writer, &other] {
        assert!(!log.contains(secret.as_str()), "a secret reached the log");
    }
}

#[test]
fn jwks_is_published_and_oidc_discovery_is_disabled() {
    let agent = TestAgent::start(&[]);
    let r = agent.get("/.well-known/jwks.json");
    assert_eq!(r.status, 200);
    assert!(r.header("Cache-Control").unwrap().starts_with("max-age="));
    let k = &r.json()["keys"][0];
    assert_eq!(
        (k["kty"].as_str(), k["alg"].as_str(), k["use"].as_str()),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    assert_eq!(k["e"], "AQAB");
    assert!(k["n"].as_str().unwrap().len() > 300);
    assert!(k.get("d").is_none());
    let r = agent.get("/.well-known/openid-configuration");
    assert_eq!(
        (r.status, r.text()),
        (404, "OIDC Discovery endpoint disabled".into())
    );
    assert_eq!(
        agent
            .request("POST", "/.well-known/jwks.json", &[], b"")
            .status,
        405
    );
}

#[test]
fn token_ttls_are_validated_and_an_expired_token_is_refused() {
    let mut agent = TestAgent::start(&["-acl-enabled"]);
    let boot = agent.request("POST", "/v1/acl/bootstrap", &[], b"").json();
    let mgmt = boot["SecretID"].as_str().unwrap().to_string();
    let h = [("X-Nomad-Token", mgmt.as_str())];
    let r = agent.request(
        "POST",
        "/v1/acl/policy/readers",
        &h,
        br#"{"Name":"readers","Rules":"node { policy = \"read\" }"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for (ttl, msg) in [
        (
            "\"30s\"",
            "token 0 invalid: expiration time cannot be less than 1m0s in the future",
        ),
        (
            "\"48h\"",
            "token 0 invalid: expiration time cannot be more than 24h0m0s in the future",
        ),
        (
            "\"soon\"",
            "Request decode failed: time: invalid duration \"soon\"",
        ),
    ] {
        let body = format!(
            r#"{{"Name":"t","Type":"client","Policies":["readers"],"ExpirationTTL":{ttl}}}"#
        );
        let r = agent.request("POST", "/v1/acl/token", &h, body.as_bytes());
        assert_eq!((r.status, r.text().as_str()), (400, msg), "{ttl}");
    }
    let body =
        br#"{"Name":"short","Type":"client","Policies":["readers"],"ExpirationTTL":3600000000000}"#;
    let t = agent.request("POST", "/v1/acl/token", &h, body).json();
    assert_eq!(t["ExpirationTTL"], 3_600_000_000_000u64);
    assert!(t["ExpirationTime"].is_string(), "{t}");
    let secret = t["SecretID"].as_str().unwrap().to_string();
    assert_eq!(
        agent
            .request("GET", "/v1/nodes", &[("X-Nomad-Token", &secret)], b"")
            .status,
        200
    );

    // The state as an older version kept it (acl.json), with the short token expired: the
    // agent imports it into a fresh store at start.
    let token_of = |secret: &str| {
        let mut t = agent
            .request(
                "GET",
                "/v1/acl/token/self",
                &[("X-Nomad-Token", secret)],
                b"",
            )
            .json();
        t["ExpirationUnixNanos"] = serde_json::json!(null);
        t
    };
    let boot_token = token_of(&mgmt);
    let mut short = token_of(&secret);
    short["ExpirationUnixNanos"] = serde_json::json!(1);
    let policy = agent
        .request("GET", "/v1/acl/policy/readers", &h, b"")
        .json();
    agent.stop();
    let server = agent.data_dir.join("server");
    std::fs::remove_file(server.join("state.redb")).unwrap();
    let old = serde_json::json!({"BootstrapIndex": boot_token["CreateIndex"],
        "Tokens": [boot_token, short], "Policies": {"readers": policy}});
    std::fs::write(server.join("acl.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    agent.restart_after_stop();
    let r = agent.request("GET", "/v1/nodes", &[("X-Nomad-Token", &secret)], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (403, "ACL token expired"),
        "{}",
        agent.log()
    );
    assert_eq!(
        agent.request("GET", "/v1/nodes", &h, b"").status,
        200,
        "other tokens still work"
    );
}
