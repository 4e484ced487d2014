//! The Task API over each task's Unix socket: a credential is always needed (401/403), the
//! workload identity in NOMAD_TOKEN / secrets/nomad_token works on it, the socket's mode and
//! lifetime, the too-long-path warning, and the seed's example with ACLs off and on.

mod common;
use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn start(extra: &[&str]) -> TestAgent {
    TestAgent::start_in(&short_dir(), extra)
}

fn auth(token: Option<&str>) -> Vec<(&str, &str)> {
    token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default()
}

fn register(agent: &TestAgent, token: Option<&str>, job: &Value) {
    let body = json!({ "Job": job }).to_string();
    let r = agent.request("PUT", "/v1/jobs", &auth(token), body.as_bytes());
    assert_eq!(r.status, 200, "register: {}", r.text());
}

/// A raw_exec job with one task running `script` under /bin/sh.
fn sh_job(id: &str, task: &str, script: &str, identity: Value) -> Value {
    json!({
        "ID": id, "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{"Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": false},
            "Tasks": [{"Name": task, "Driver": "raw_exec",
                "Config": {"command": "/bin/sh", "args": ["-c", script]},
                "Identity": identity}]}]
    })
}

fn alloc_of(agent: &TestAgent, token: Option<&str>, job: &str) -> String {
    let mut id = String::new();
    wait_until(Duration::from_secs(10), "an allocation", || {
        let r = agent.request(
            "GET",
            &format!("/v1/job/{job}/allocations"),
            &auth(token),
            b"",
        );
        if r.status != 200 {
            return false;
        }
        match r.json().as_array().and_then(|a| a.first().cloned()) {
            Some(a) => {
                id = a["ID"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    id
}

fn task_dir(agent: &TestAgent, alloc: &str, task: &str) -> PathBuf {
    agent.data_dir.join("alloc").join(alloc).join(task)
}

fn wait_socket(sock: &Path) {
    wait_until(Duration::from_secs(10), "the task API socket", || {
        std::fs::symlink_metadata(sock)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false)
    });
}

fn task_state(agent: &TestAgent, token: Option<&str>, alloc: &str, task: &str) -> Value {
    let r = agent.request("GET", &format!("/v1/allocation/{alloc}"), &auth(token), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["TaskStates"][task].clone()
}

fn node_meta(agent: &TestAgent, token: Option<&str>) -> Value {
    let nodes = agent.request("GET", "/v1/nodes", &auth(token), b"").json();
    let id = nodes[0]["ID"].as_str().unwrap().to_string();
    agent
        .request("GET", &format!("/v1/node/{id}"), &auth(token), b"")
        .json()["Meta"]
        .clone()
}

fn stdout_of(agent: &TestAgent, alloc: &str, task: &str) -> String {
    let p = agent
        .data_dir
        .join("alloc")
        .join(alloc)
        .join("alloc/logs")
        .join(format!("{task}.stdout.0"));
    std::fs::read_to_string(p).unwrap_or_default()
}

fn b64url_json(seg: &str) -> Value {
    let mut bits = 0u32;
    let mut acc = 0u32;
    let mut out = Vec::new();
    for c in seg.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            _ => 63,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn socket_needs_a_credential_and_dies_with_its_task() {
    let agent = start(&["-log-level", "DEBUG"]);
    let idf = json!({"Env": true, "File": true});
    register(&agent, None, &sh_job("one", "t", "sleep 600", idf.clone()));
    register(&agent, None, &sh_job("two", "t", "sleep 600", idf));
    let a1 = alloc_of(&agent, None, "one");
    let a2 = alloc_of(&agent, None, "two");
    let s1 = task_dir(&agent, &a1, "t").join("secrets/api.sock");
    let s2 = task_dir(&agent, &a2, "t").join("secrets/api.sock");
    wait_socket(&s1);
    wait_socket(&s2);
    assert_eq!(
        std::fs::metadata(&s1).unwrap().permissions().mode() & 0o777,
        0o666
    );

    let tf = task_dir(&agent, &a1, "t").join("secrets/nomad_token");
    wait_until(Duration::from_secs(10), "the token file", || tf.exists());
    assert_eq!(
        std::fs::metadata(&tf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let jwt1 = std::fs::read_to_string(&tf).unwrap();
    let tf2 = task_dir(&agent, &a2, "t").join("secrets/nomad_token");
    wait_until(Duration::from_secs(10), "the second token file", || {
        tf2.exists()
    });
    let jwt2 = std::fs::read_to_string(&tf2).unwrap();

    // Claims and header as Nomad writes them.
    let parts: Vec<&str> = jwt1.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = b64url_json(parts[0]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(
        header["kid"],
        agent.get_json("/.well-known/jwks.json")["keys"][0]["kid"]
    );
    let claims = b64url_json(parts[1]);
    assert_eq!(claims["nomad_allocation_id"], a1.as_str());
    assert_eq!(claims["nomad_job_id"], "one");
    assert_eq!(claims["nomad_namespace"], "default");
    assert_eq!(claims["nomad_task"], "t");
    assert_eq!(claims["aud"], "nomadproject.io");
    assert_eq!(claims["sub"], "global:default:one:g:t:default");
    assert!(claims.get("exp").is_none());

    let get = |sock: &Path, hdrs: &[(&str, &str)]| {
        unix_request(sock, "GET", "/v1/client/metadata", hdrs, b"")
    };
    let r = get(&s1, &[]);
    assert_eq!((r.status, r.text()), (401, "Unauthorized".into()));
    let bearer = format!("Bearer {jwt1}");
    let truncated = &jwt1[..jwt1.len() - 10];
    let mut tampered = jwt1.clone().into_bytes();
    let mid = parts[0].len() + 5;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        "garbage",
        "6a0f9c1e-1111-2222-3333-444455556666",
        truncated,
        &tampered,
        "eyJhbGciOiJub25lIn0.e30.",
    ] {
        let r = get(&s1, &[("X-Nomad-Token", bad)]);
        assert_eq!(
            (r.status, r.text()),
            (403, "Forbidden".into()),
            "token {bad:.12}"
        );
    }
    assert_eq!(get(&s1, &[("X-Nomad-Token", &jwt1)]).status, 200);
    assert_eq!(get(&s1, &[("Authorization", &bearer)]).status, 200);
    assert_eq!(
        get(&s2, &[("X-Nomad-Token", &jwt1)]).status,
        200,
        "any live alloc's identity"
    );
    // Basic auth is no credential.
    assert_eq!(
        get(&s1, &[("Authorization", &format!("Basic {jwt1}"))]).status,
        401
    );

    // No JWT in any allocation or job body.
    for path in [
        format!("/v1/allocation/{a1}"),
        "/v1/allocations".to_string(),
        "/v1/job/one".to_string(),
        "/v1/job/one/allocations".to_string(),
        "/v1/jobs".to_string(),
    ] {
        let r = agent.get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.text().contains("eyJ"), "a JWT in {path}");
    }

    // Stop job one: its socket goes, its identity stops working elsewhere.
    assert_eq!(agent.request("DELETE", "/v1/job/one", &[], b"").status, 200);
    wait_until(Duration::from_secs(15), "the socket to be removed", || {
        !s1.exists()
    });
    wait_until(
        Duration::from_secs(10),
        "alloc one's identity to be refused",
        || get(&s2, &[("X-Nomad-Token", &jwt1)]).status == 403,
    );
    assert_eq!(get(&s2, &[("X-Nomad-Token", &jwt2)]).status, 200);

    // Stopping the agent closes and removes every task socket.
    let mut agent = agent;
    assert!(agent.stop().success());
    assert!(!s2.exists(), "the socket outlived the agent");
    let log = agent.log();
    assert!(!log.contains("eyJ"), "a JWT reached the agent's log");
}

#[test]
fn identity_env_gives_nomad_token_and_unix_addr() {
    let agent = start(&[]);
    let script = r#"printf '%s\n' "$NOMAD_UNIX_ADDR" > "$NOMAD_TASK_DIR/addr"; printf '%s' "$NOMAD_TOKEN" > "$NOMAD_TASK_DIR/tok"; sleep 600"#;
    register(
        &agent,
        None,
        &sh_job("envy", "t", script, json!({"Env": true})),
    );
    register(&agent, None, &sh_job("plain", "t", script, Value::Null));
    let a = alloc_of(&agent, None, "envy");
    let p = alloc_of(&agent, None, "plain");
    let local = task_dir(&agent, &a, "t").join("local");
    wait_until(Duration::from_secs(10), "the task to write its env", || {
        local.join("tok").exists() && local.join("addr").exists()
    });
    let sock = task_dir(&agent, &a, "t").join("secrets/api.sock");
    let addr = std::fs::read_to_string(local.join("addr")).unwrap();
    assert_eq!(addr.trim(), format!("unix://{}", sock.display()));
    let tok = std::fs::read_to_string(local.join("tok")).unwrap();
    assert!(tok.starts_with("eyJ"));
    assert_eq!(
        unix_request(
            &sock,
            "GET",
            "/v1/client/metadata",
            &[("X-Nomad-Token", &tok)],
            b""
        )
        .status,
        200
    );
    assert!(
        !task_dir(&agent, &a, "t")
            .join("secrets/nomad_token")
            .exists(),
        "no file without file = true"
    );

    // Without an identity block: a socket, but no token anywhere.
    let plocal = task_dir(&agent, &p, "t").join("local");
    wait_until(Duration::from_secs(10), "the plain task to run", || {
        plocal.join("tok").exists()
    });
    assert_eq!(std::fs::read_to_string(plocal.join("tok")).unwrap(), "");
    assert!(task_dir(&agent, &p, "t").join("secrets/api.sock").exists());
}

#[test]
fn a_socket_path_over_sun_path_is_a_task_event_and_the_task_still_runs() {
    let long = temp_dir(&"l".repeat(60));
    let agent = TestAgent::start_in(&long, &[]);
    register(
        &agent,
        None,
        &sh_job("longpath", "t", "echo ran; sleep 600", json!({"Env": true})),
    );
    let a = alloc_of(&agent, None, "longpath");
    wait_until(Duration::from_secs(10), "the task to run", || {
        stdout_of(&agent, &a, "t").contains("ran")
    });
    let st = task_state(&agent, None, &a, "t");
    let events = st["Events"].to_string();
    assert!(events.contains("over the 107-byte limit"), "{events}");
    assert!(!task_dir(&agent, &a, "t").join("secrets/api.sock").exists());
    assert_eq!(st["State"], "running");
}

#[test]
fn socket_of_a_task_with_a_user_is_0600_and_owned_by_it() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let agent = start(&[]);
    let mut job = sh_job("owned", "t", "sleep 600", Value::Null);
    job["TaskGroups"][0]["Tasks"][0]["User"] = json!("nobody");
    register(&agent, None, &job);
    let a = alloc_of(&agent, None, "owned");
    let sock = task_dir(&agent, &a, "t").join("secrets/api.sock");
    wait_socket(&sock);
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!(m.uid(), 65534);
}

fn example_job() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/taskapi-example.json"
    ))
    .unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["Job"].clone()
}

fn run_example(agent: &TestAgent, token: Option<&str>) -> String {
    register(agent, token, &example_job());
    let a = alloc_of(agent, token, "taskapi-example");
    wait_until(
        Duration::from_secs(15),
        "the example task to finish",
        || task_state(agent, token, &a, "taskapi")["State"] == "dead",
    );
    a
}

#[test]
fn seed_example_sets_node_metadata_with_acls_off() {
    let agent = start(&[]);
    let a = run_example(&agent, None);
    wait_until(
        Duration::from_secs(10),
        "the node to show the metadata",
        || node_meta(&agent, None)["example"] == "Hello World!",
    );
    assert_eq!(task_state(&agent, None, &a, "taskapi")["Failed"], false);
}

#[test]
fn seed_example_with_acls_on_needs_a_job_attached_node_write_policy() {
    // Without the policy: 403 for the task, nothing set.
    let agent = start(&["-acl-enabled"]);
    let mgmt = agent.request("POST", "/v1/acl/bootstrap", &[], b"").json()["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let a = run_example(&agent, Some(&mgmt));
    let st = task_state(&agent, Some(&mgmt), &a, "taskapi");
    assert_eq!(st["Failed"], true, "{st}");
    assert!(stdout_of(&agent, &a, "taskapi").contains("Permission denied"));
    assert!(node_meta(&agent, Some(&mgmt)).get("example").is_none());
    drop(agent);

    // With a policy attached to the job: it works.
    let agent = start(&["-acl-enabled"]);
    let mgmt = agent.request("POST", "/v1/acl/bootstrap", &[], b"").json()["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let policy = json!({"Name": "taskapi-node-write", "Rules": "node { policy = \"write\" }",
        "JobACL": {"Namespace": "default", "JobID": "taskapi-example"}});
    let r = agent.request(
        "POST",
        "/v1/acl/policy/taskapi-node-write",
        &auth(Some(&mgmt)),
        policy.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let a = run_example(&agent, Some(&mgmt));
    wait_until(
        Duration::from_secs(10),
        "the node to show the metadata",
        || node_meta(&agent, Some(&mgmt))["example"] == "Hello World!",
    );
    assert_eq!(
        task_state(&agent, Some(&mgmt), &a, "taskapi")["Failed"],
        false
    );
}

#[test]
fn identities_and_sockets_come_back_after_an_agent_restart() {
    let mut agent = start(&[]);
    register(
        &agent,
        None,
        &sh_job("durable", "t", "sleep 600", json!({"File": true})),
    );
    let a = alloc_of(&agent, None, "durable");
    let secrets = task_dir(&agent, &a, "t").join("secrets");
    let sock = secrets.join("api.sock");
    wait_socket(&sock);
    wait_until(Duration::from_secs(10), "the token file", || {
        secrets.join("nomad_token").exists()
    });
    let old = std::fs::read_to_string(secrets.join("nomad_token")).unwrap();
    agent.restart();
    wait_socket(&sock);
    // The signing key survived, and the allocation is still live: the old identity still works.
    wait_until(
        Duration::from_secs(10),
        "the old identity to be accepted again",
        || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
                && unix_request(
                    &sock,
                    "GET",
                    "/v1/client/metadata",
                    &[("X-Nomad-Token", &old)],
                    b"",
                )
                .status
                    == 200
        },
    );
}

/// What `make run` gives a user: `-dev` with no `-data-dir`. Its temporary data dir must be short
/// enough for every task's api.sock, so the seed example works there too.
#[test]
fn seed_example_works_on_a_plain_dev_agent_without_a_data_dir() {
    let port = free_port();
    let mut child = std::process::Command::new(bin())
        .args(["agent", "-dev", "-http-port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let req = |method: &str, path: &str, body: &[u8]| {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        exchange(s, &build_request(method, path, &[], body))
    };
    wait_until(Duration::from_secs(20), "dev agent to listen", || {
        req("GET", "/v1/agent/health", b"").is_ok()
    });
    let job = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/taskapi-example.json"
    ))
    .unwrap();
    let r = req("POST", "/v1/jobs", &job).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let node = req("GET", "/v1/nodes", b"").unwrap().json()[0]["ID"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(
        Duration::from_secs(20),
        "the task to set node metadata",
        || {
            req("GET", &format!("/v1/node/{node}"), b"")
                .map(|r| r.json()["Meta"]["example"] == "Hello World!")
                .unwrap_or(false)
        },
    );
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "dev agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
