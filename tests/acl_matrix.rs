//! The auth matrix: endpoints × {no token, garbage, client token without the capability, client
//! token with it, management token, workload identity}, over TCP and over a task's socket, with
//! ACLs on, at debug log level. Afterwards no secret or JWT is in the agent's output, nor in the
//! data dir outside the token store, nor in any allocation or job body.

mod common;
use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn h(token: &str) -> Vec<(&str, &str)> {
    if token.is_empty() {
        vec![]
    } else {
        vec![("X-Nomad-Token", token)]
    }
}

/// Every file under `dir` (recursively) whose contents contain `needle`, except `skip`.
fn files_containing(dir: &Path, needle: &str, skip: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            files_containing(&p, needle, skip, out);
        } else if ft.is_file() && !skip.iter().any(|s| p.ends_with(s)) {
            if let Ok(bytes) = std::fs::read(&p) {
                if String::from_utf8_lossy(&bytes).contains(needle) {
                    out.push(p);
                }
            }
        }
    }
}

struct Row {
    method: &'static str,
    path: String,
    body: &'static str,
    /// Policy granting the capability; the "without" token gets every other policy.
    grant: &'static str,
    /// Does the job-attached policy (node read) let the workload identity through?
    wi_allowed: bool,
}

#[test]
fn auth_matrix_over_tcp_and_the_task_socket() {
    let mut agent = TestAgent::start_in(&short_dir(), &["-acl-enabled", "-log-level", "DEBUG"]);
    let mgmt = agent.request("POST", "/v1/acl/bootstrap", &[], b"").json()["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let policies = [
        ("agent-read", r#"agent { policy = "read" }"#, Value::Null),
        ("node-read", r#"node { policy = "read" }"#, Value::Null),
        ("node-write", r#"node { policy = "write" }"#, Value::Null),
        (
            "ns-read",
            r#"namespace "default" { policy = "read" }"#,
            Value::Null,
        ),
        (
            "ns-fs",
            r#"namespace "default" { capabilities = ["read-fs"] }"#,
            Value::Null,
        ),
        (
            "wi-node-read",
            r#"node { policy = "read" }"#,
            json!({"Namespace": "default", "JobID": "matrix"}),
        ),
    ];
    for (name, rules, job_acl) in &policies {
        let body = json!({"Name": name, "Rules": rules, "JobACL": job_acl}).to_string();
        let r = agent.request(
            "POST",
            &format!("/v1/acl/policy/{name}"),
            &h(&mgmt),
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut tokens = std::collections::HashMap::new();
    for (name, _, _) in &policies[..5] {
        let body = json!({"Name": name, "Type": "client", "Policies": [name]}).to_string();
        let r = agent.request("POST", "/v1/acl/token", &h(&mgmt), body.as_bytes());
        tokens.insert(*name, r.json()["SecretID"].as_str().unwrap().to_string());
    }

    let job = json!({"Job": {"ID": "matrix", "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", "printf '%s' \"$NOMAD_TOKEN\" > \"$NOMAD_SECRETS_DIR/copy\"; sleep 600"]},
            "Identity": {"Env": true}}]}]}});
    let r = agent.request("PUT", "/v1/jobs", &h(&mgmt), job.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let mut alloc = String::new();
    wait_until(Duration::from_secs(10), "the allocation", || {
        let r = agent.request("GET", "/v1/job/matrix/allocations", &h(&mgmt), b"");
        match r.json().as_array().and_then(|a| a.first().cloned()) {
            Some(a) => {
                alloc = a["ID"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    let secrets = agent.data_dir.join("alloc").join(&alloc).join("t/secrets");
    let sock = secrets.join("api.sock");
    wait_until(
        Duration::from_secs(10),
        "the socket and the task's copy of its token",
        || {
            std::fs::symlink_metadata(&sock)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false)
                && std::fs::read(secrets.join("copy"))
                    .map(|b| !b.is_empty())
                    .unwrap_or(false)
        },
    );
    let wi = std::fs::read_to_string(secrets.join("copy")).unwrap();
    // The copy is the test's own doing; remove it so the data-dir scan below sees only ours.
    std::fs::remove_file(secrets.join("copy")).unwrap();
    let node_id = agent.request("GET", "/v1/nodes", &h(&mgmt), b"").json()[0]["ID"]
        .as_str()
        .unwrap()
        .to_string();

    let rows = vec![
        Row {
            method: "GET",
            path: "/v1/agent/self".into(),
            body: "",
            grant: "agent-read",
            wi_allowed: false,
        },
        Row {
            method: "GET",
            path: "/v1/agent/members".into(),
            body: "",
            grant: "node-read",
            wi_allowed: true,
        },
        Row {
            method: "GET",
            path: "/v1/client/metadata".into(),
            body: "",
            grant: "node-read",
            wi_allowed: true,
        },
        Row {
            method: "POST",
            path: "/v1/client/metadata".into(),
            body: r#"{"Meta":{"m":"1"}}"#,
            grant: "node-write",
            wi_allowed: false,
        },
        Row {
            method: "GET",
            path: "/v1/client/stats".into(),
            body: "",
            grant: "node-read",
            wi_allowed: true,
        },
        Row {
            method: "GET",
            path: "/v1/nodes".into(),
            body: "",
            grant: "node-read",
            wi_allowed: true,
        },
        Row {
            method: "GET",
            path: format!("/v1/node/{node_id}"),
            body: "",
            grant: "node-read",
            wi_allowed: true,
        },
        Row {
            method: "GET",
            path: "/v1/jobs".into(),
            body: "",
            grant: "ns-read",
            wi_allowed: false,
        },
        Row {
            method: "GET",
            path: "/v1/job/matrix".into(),
            body: "",
            grant: "ns-read",
            wi_allowed: false,
        },
        Row {
            method: "GET",
            path: "/v1/job/matrix/allocations".into(),
            body: "",
            grant: "ns-read",
            wi_allowed: false,
        },
        Row {
            method: "GET",
            path: format!("/v1/allocation/{alloc}"),
            body: "",
            grant: "ns-read",
            wi_allowed: false,
        },
        Row {
            method: "GET",
            path: "/v1/acl/tokens".into(),
            body: "",
            grant: "",
            wi_allowed: false,
        },
    ];

    let mut failures = Vec::new();
    for row in &rows {
        let without: String = {
            // A client token holding every policy but the one this endpoint needs.
            let names: Vec<&str> = policies[..5]
                .iter()
                .map(|p| p.0)
                .filter(|n| {
                    *n != row.grant && !(row.grant.starts_with("node-") && n.starts_with("node-"))
                })
                .collect();
            let body = json!({"Name": "w", "Type": "client", "Policies": names}).to_string();
            agent
                .request("POST", "/v1/acl/token", &h(&mgmt), body.as_bytes())
                .json()["SecretID"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let with = if row.grant.is_empty() {
            None
        } else {
            Some(tokens[row.grant].clone())
        };
        let deny = 403;
        let mut cases: Vec<(&str, String, u16, u16)> = vec![
            // (name, token, TCP status, socket status)
            ("none", String::new(), deny, 401),
            ("garbage", "not-a-token".into(), deny, 403),
            ("without", without.clone(), deny, deny),
            ("management", mgmt.clone(), 200, 200),
            (
                "workload",
                wi.clone(),
                if row.wi_allowed { 200 } else { deny },
                if row.wi_allowed { 200 } else { deny },
            ),
        ];
        if let Some(w) = &with {
            cases.push(("with", w.clone(), 200, 200));
        }
        for (name, token, tcp, uds) in cases {
            let r = agent.request(row.method, &row.path, &h(&token), row.body.as_bytes());
            if r.status != tcp {
                failures.push(format!(
                    "TCP {} {} [{name}]: {} {:.80}",
                    row.method,
                    row.path,
                    r.status,
                    r.text()
                ));
            }
            let r = unix_request(
                &sock,
                row.method,
                &row.path,
                &h(&token),
                row.body.as_bytes(),
            );
            if r.status != uds {
                failures.push(format!(
                    "socket {} {} [{name}]: {} {:.80}",
                    row.method,
                    row.path,
                    r.status,
                    r.text()
                ));
            }
            if r.status == 401 {
                assert_eq!(r.text(), "Unauthorized");
            }
            if name == "garbage" && r.status == 403 {
                assert_eq!(r.text(), "Forbidden");
            }
            for secret in [&mgmt, &wi, &without] {
                assert!(
                    !r.text().contains(secret.as_str())
                        || name == "management" && row.path.contains("acl")
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "auth matrix mismatches:\n{}",
        failures.join("\n")
    );

    // The workload identity's own file is never served by the filesystem API.
    let r = agent.request(
        "GET",
        &format!("/v1/client/fs/cat/{alloc}?path=t/secrets/api.sock"),
        &h(&mgmt),
        b"",
    );
    assert_ne!(r.status, 200);
    assert!(!r.text().contains("eyJ"));

    // No JWT in any allocation or job body.
    for p in [
        "/v1/allocations",
        "/v1/jobs",
        "/v1/job/matrix",
        "/v1/job/matrix/allocations",
    ] {
        let r = agent.request("GET", p, &h(&mgmt), b"");
        assert!(!r.text().contains("eyJ"), "a JWT in {p}");
    }
    let r = agent.request("GET", &format!("/v1/allocation/{alloc}"), &h(&mgmt), b"");
    assert!(!r.text().contains("eyJ"), "a JWT in the allocation");

    // Stop the agent so everything it writes is flushed, then look for secrets.
    let st = agent.stop();
    assert!(st.success());
    let log = agent.log();
    assert!(log.contains("refused"), "the agent logged at debug level");
    assert!(!log.contains("eyJ"), "a JWT in the agent's output");
    for t in tokens.values().chain([&mgmt]) {
        assert!(
            !log.contains(t.as_str()),
            "an ACL secret in the agent's output"
        );
    }
    let mut found = Vec::new();
    files_containing(&agent.data_dir, "eyJ", &["server/acl.json"], &mut found);
    // The token store: the server state's command log (acl.json in older versions).
    let store = ["server/acl.json", "server/state.redb"];
    files_containing(&agent.data_dir, &mgmt, &store, &mut found);
    assert!(
        found.is_empty(),
        "secrets outside the token store: {found:?}"
    );
}
