//! ACLs across a cluster, multi-process on loopback: a server-only agent and a client-only
//! agent, both `acl { enabled = true }`. The client holds no signing key and no ACL state: a
//! task's identity is signed by the server (and accepted by it), the client resolves tokens
//! through the server and caches them for `acl.token_ttl` only, verifies identities with the
//! server's public keys, and refuses what it cannot resolve.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{unix_request, wait_until, Response, TestAgent};
use serde_json::{json, Value};

/// The token (and policy) cache TTL both agents are configured with.
const TTL: Duration = Duration::from_secs(2);

fn acl_config() -> String {
    format!(
        "acl {{\n  enabled = true\n  token_ttl = \"{}s\"\n  policy_ttl = \"{}s\"\n}}\n",
        TTL.as_secs(),
        TTL.as_secs()
    )
}

fn call(
    agent: &TestAgent,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Response {
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    agent.request(method, path, &headers, &body)
}

/// A server and a client, ACLs bootstrapped on the server, the client's node ready: (server,
/// client, management secret, client node ID).
fn cluster() -> (TestAgent, TestAgent, String, String) {
    let server = TestAgent::server(&acl_config(), &[]);
    let r = call(&server, "POST", "/v1/acl/bootstrap", None, &Value::Null);
    assert_eq!(r.status, 200, "bootstrap: {}", r.text());
    let mgmt = r.json()["SecretID"].as_str().unwrap().to_string();
    let client = TestAgent::client(&[&server.rpc_addr()], &acl_config(), &[]);
    let mut node = String::new();
    wait_until(Duration::from_secs(15), "the client's node ready", || {
        let nodes = call(&server, "GET", "/v1/nodes", Some(&mgmt), &Value::Null).json();
        node = nodes
            .as_array()
            .and_then(|n| n.iter().find(|n| n["Status"] == "ready"))
            .and_then(|n| n["ID"].as_str())
            .unwrap_or_default()
            .to_string();
        !node.is_empty()
    });
    (server, client, mgmt, node)
}

/// Register a batch job of one raw_exec task with a workload identity (env and file) and wait
/// until its alloc runs: the alloc ID.
fn run_job(server: &TestAgent, mgmt: &str, id: &str) -> String {
    let job = json!({"Job": {"ID": id, "Type": "batch", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", "sleep 120"]},
        "Identity": {"Env": true, "File": true}}]}]}});
    let r = call(server, "POST", "/v1/jobs", Some(mgmt), &job);
    assert_eq!(r.status, 200, "register {id}: {}", r.text());
    let mut alloc = String::new();
    wait_until(Duration::from_secs(20), "the alloc running", || {
        let list = call(
            server,
            "GET",
            &format!("/v1/job/{id}/allocations"),
            Some(mgmt),
            &Value::Null,
        )
        .json();
        alloc = list
            .as_array()
            .and_then(|l| l.iter().find(|a| a["ClientStatus"] == "running"))
            .and_then(|a| a["ID"].as_str())
            .unwrap_or_default()
            .to_string();
        !alloc.is_empty()
    });
    alloc
}

/// Stops the tasks a test left on its client (a client-only agent leaves them running for
/// the next agent when it stops).
struct KillTasks(PathBuf);

impl Drop for KillTasks {
    fn drop(&mut self) {
        common::kill_leftover_tasks(&self.0);
    }
}

fn secrets_dir(client: &TestAgent, alloc: &str) -> PathBuf {
    client.data_dir.join(format!("alloc/{alloc}/t/secrets"))
}

/// The task's workload identity, as the client wrote it.
fn identity_of(client: &TestAgent, alloc: &str) -> String {
    let file = secrets_dir(client, alloc).join("nomad_token");
    wait_until(Duration::from_secs(10), "the identity file", || {
        file.exists()
    });
    std::fs::read_to_string(&file).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    use base64ct::Encoding;
    base64ct::Base64UrlUnpadded::encode_string(bytes)
}

fn b64url_json(seg: &str) -> Value {
    use base64ct::Encoding;
    let bytes = base64ct::Base64UrlUnpadded::decode_vec(seg).expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

/// `claims` signed RS256 by a key of our own, under header `kid`.
fn sign_with_other_key(kid: &str, claims: &Value) -> String {
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key");
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = signer.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", b64url(&sig))
}

#[test]
fn a_client_only_agent_gets_identities_from_the_server_and_resolves_tokens_through_it() {
    let (server, client, mgmt, node) = cluster();
    let _tasks = KillTasks(client.data_dir.clone());
    // The authentication calls need the node's secret like every other call.
    for (path, body) in [
        (
            "/v1/rpc/acl/resolve",
            json!({"node_id": node, "subject": {"Token": {"secret_id": mgmt}}}),
        ),
        (
            "/v1/rpc/identity/sign",
            json!({"node_id": node, "alloc_id": "x", "task": "t", "identities": []}),
        ),
        ("/v1/rpc/acl/keys", json!({"node_id": node})),
    ] {
        let r = server.rpc_request(
            "POST",
            path,
            &[("X-Nomad-Node-Secret", "not-the-secret")],
            body.to_string().as_bytes(),
        );
        assert_eq!(
            (r.status, r.text()),
            (403, "Permission denied".to_string()),
            "{path}"
        );
    }
    // The job's identity may read its job and write node metadata.
    let rules =
        "namespace \"default\" {\n  policy = \"read\"\n}\nnode {\n  policy = \"write\"\n}\n";
    let policy = json!({"Name": "wi", "Description": "", "Rules": rules,
        "JobACL": {"Namespace": "default", "JobID": "wi"}});
    let r = call(&server, "POST", "/v1/acl/policy/wi", Some(&mgmt), &policy);
    assert_eq!(r.status, 200, "{}", r.text());
    let alloc = run_job(&server, &mgmt, "wi");
    let jwt = identity_of(&client, &alloc);

    // The client holds no signing key: the identity is the server's.
    assert!(
        !client
            .data_dir
            .join("server/workload-identity-key.pem")
            .exists(),
        "a client-only agent made a signing key"
    );
    let jwks = call(&server, "GET", "/.well-known/jwks.json", None, &Value::Null).json();
    let header = b64url_json(jwt.split('.').next().unwrap());
    assert_eq!(
        header["kid"], jwks["keys"][0]["kid"],
        "signed by the server's key"
    );
    // The client publishes the server's key (it has none of its own).
    let on_client = call(&client, "GET", "/.well-known/jwks.json", None, &Value::Null);
    assert_eq!(on_client.status, 200, "{}", on_client.text());
    assert_eq!(on_client.json(), jwks);
    let claims = b64url_json(jwt.split('.').nth(1).unwrap());
    assert_eq!(claims["nomad_allocation_id"], alloc.as_str());
    assert_eq!(claims["sub"], "global:default:wi:g:t:default");

    // The server accepts it: the task reads its own job through the server's API.
    let r = call(&server, "GET", "/v1/job/wi", Some(&jwt), &Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ID"], "wi");
    assert_eq!(
        call(&server, "GET", "/v1/job/wi", None, &Value::Null).status,
        403
    );

    // The client's Task API socket accepts it (verified with the server's public key).
    let sock = secrets_dir(&client, &alloc).join("api.sock");
    let r = unix_request(
        &sock,
        "GET",
        "/v1/client/metadata",
        &[("X-Nomad-Token", &jwt)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A token signed by another key, under the server's kid or an unknown one, and a
    // tampered one are refused on the socket and on the client's TCP API.
    let kid = header["kid"].as_str().unwrap();
    let forged = [
        sign_with_other_key(kid, &claims),
        sign_with_other_key("not-a-known-key", &claims),
        {
            let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
            let mut c = claims.clone();
            c["nomad_task"] = "other".into();
            parts[1] = b64url(c.to_string().as_bytes());
            parts.join(".")
        },
    ];
    for bad in &forged {
        let r = unix_request(
            &sock,
            "GET",
            "/v1/client/metadata",
            &[("X-Nomad-Token", bad)],
            b"",
        );
        assert_eq!((r.status, r.text()), (403, "Forbidden".to_string()));
        let r = call(
            &client,
            "GET",
            "/v1/client/metadata",
            Some(bad),
            &Value::Null,
        );
        assert_eq!((r.status, r.text()), (403, "Permission denied".to_string()));
    }
    // The real identity on the client's TCP API too.
    let r = call(
        &client,
        "GET",
        "/v1/client/metadata",
        Some(&jwt),
        &Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // A management token works against the client's fs API; no token is Nomad's 403.
    let ls = format!("/v1/client/fs/ls/{alloc}?path=/");
    let r = call(&client, "GET", &ls, Some(&mgmt), &Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["Name"] == "t")),
        "{}",
        r.text()
    );
    let r = call(&client, "GET", &ls, None, &Value::Null);
    assert_eq!((r.status, r.text()), (403, "Permission denied".to_string()));
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = call(&client, "GET", &ls, Some(&unknown), &Value::Null);
    assert_eq!(
        (r.status, r.text()),
        (403, "ACL token not found".to_string())
    );

    // A client token with read-fs; deleted on the server, the client refuses it once its
    // cached answer is older than the TTL.
    let fs_rules = "namespace \"default\" {\n  capabilities = [\"read-fs\"]\n}\n";
    let r = call(
        &server,
        "POST",
        "/v1/acl/policy/fs",
        Some(&mgmt),
        &json!({"Name": "fs", "Description": "", "Rules": fs_rules}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        &server,
        "POST",
        "/v1/acl/token",
        Some(&mgmt),
        &json!({"Name": "reader", "Type": "client", "Policies": ["fs"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (accessor, secret) = {
        let t = r.json();
        (
            t["AccessorID"].as_str().unwrap().to_string(),
            t["SecretID"].as_str().unwrap().to_string(),
        )
    };
    let r = call(&client, "GET", &ls, Some(&secret), &Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    // Its policy gives no node rights.
    let r = call(
        &client,
        "GET",
        "/v1/client/metadata",
        Some(&secret),
        &Value::Null,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = call(
        &server,
        "DELETE",
        &format!("/v1/acl/token/{accessor}"),
        Some(&mgmt),
        &Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let deleted = Instant::now();
    assert_eq!(
        call(&server, "GET", &ls, Some(&secret), &Value::Null).status,
        403,
        "the server refuses it at once"
    );
    wait_until(TTL * 3, "the client refuses the deleted token", || {
        let r = call(&client, "GET", &ls, Some(&secret), &Value::Null);
        assert!(
            r.status == 200 || r.status == 403,
            "{} {}",
            r.status,
            r.text()
        );
        r.status == 403 && r.text() == "ACL token not found"
    });
    assert!(
        deleted.elapsed() <= TTL + Duration::from_secs(2),
        "refused within the TTL: {:?}",
        deleted.elapsed()
    );
}

#[test]
fn a_client_whose_server_died_keeps_cached_tokens_for_the_ttl_and_then_refuses() {
    let (mut server, client, mgmt, _node) = cluster();
    let _tasks = KillTasks(client.data_dir.clone());
    let alloc = run_job(&server, &mgmt, "kept");
    let ls = format!("/v1/client/fs/ls/{alloc}?path=/");
    let fetched = Instant::now();
    let r = call(&client, "GET", &ls, Some(&mgmt), &Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    server.kill9();
    // Within the TTL the cached answer stands (and nothing not cached is allowed).
    let r = call(&client, "GET", &ls, Some(&mgmt), &Value::Null);
    assert!(
        r.status == 200 || fetched.elapsed() > TTL,
        "cached token refused within the TTL: {} {}",
        r.status,
        r.text()
    );
    let r = call(&client, "GET", &ls, None, &Value::Null);
    assert_eq!(r.status, 500, "anonymous without a server: {}", r.text());
    assert!(r.text().starts_with("rpc error: "), "{}", r.text());
    let other = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        call(&client, "GET", &ls, Some(&other), &Value::Null).status,
        500
    );
    // Past the TTL: refused with the RPC error, never allowed.
    let mut refused = None;
    wait_until(TTL * 4, "the cached token refused after the TTL", || {
        let r = call(&client, "GET", &ls, Some(&mgmt), &Value::Null);
        if r.status == 200 {
            return false;
        }
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(r.text().starts_with("rpc error: "), "{}", r.text());
        refused = Some(fetched.elapsed());
        true
    });
    let refused = refused.unwrap();
    assert!(refused >= TTL, "refused before the TTL passed: {refused:?}");
}
