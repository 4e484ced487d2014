//! `alloc exec` of an alloc on another node, multi-process on loopback: the websocket opened
//! at a server's HTTP port goes down the node's tunnel, and one opened at a client-only agent
//! that does not run the alloc goes through its server; in both the frames pass through
//! unchanged (stdout, stdin, exit code, the CLI's own session), errors before the upgrade are
//! the node's, and under ACLs the node checks the token's capabilities.

mod common;
mod exec_ws;
mod fs_util;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, kill_leftover_tasks, wait_until, TestAgent};
use exec_ws::{collect, open_exec, query, send, stdin_frame};
use serde_json::{json, Value};

const UNKNOWN: &str = "8d2b6f43-0000-4000-8000-000000000000";

/// The client's node record advertises an HTTP address nothing listens on: an exec that
/// reaches the client through the server came down a tunnel.
fn unreachable_http() -> String {
    format!(
        "advertise {{\n  http = \"127.0.0.1:{}\"\n}}\n",
        common::free_port()
    )
}

fn headers(token: Option<&str>) -> Vec<(&str, &str)> {
    token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default()
}

/// Wait until `node` is ready on `server`.
fn wait_ready(server: &TestAgent, node: &str, token: Option<&str>) {
    wait_until(
        Duration::from_secs(15),
        &format!("node {node} ready"),
        || {
            let r = server.request("GET", &format!("/v1/node/{node}"), &headers(token), b"");
            r.status == 200 && r.json()["Status"] == "ready"
        },
    );
}

/// Register a one-task raw_exec service job (`sleep`) and wait until it runs: its alloc ID.
fn running(server: &TestAgent, id: &str, token: Option<&str>) -> String {
    let job = json!({"Job": {"ID": id, "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", "sleep 1000"]}}]}]}});
    let r = server.request(
        "POST",
        "/v1/jobs",
        &headers(token),
        job.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "register {id}: {}", r.text());
    let mut alloc = String::new();
    wait_until(Duration::from_secs(20), "the alloc running", || {
        let r = server.request(
            "GET",
            &format!("/v1/job/{id}/allocations"),
            &headers(token),
            b"",
        );
        let list: Value = if r.status == 200 {
            r.json()
        } else {
            Value::Null
        };
        match list.as_array().and_then(|l| l.first()) {
            Some(a) => {
                alloc = a["ID"].as_str().unwrap_or_default().to_string();
                a["TaskStates"]["t"]["State"] == "running"
            }
            None => false,
        }
    });
    alloc
}

/// Exec `echo hi; cat; exit 7` with stdin "abc\n" then its close, at `at`: the output and
/// the exit code come back.
fn echo_cat(at: &TestAgent, alloc: &str, token: Option<&str>) {
    let cmd = ["/bin/sh", "-c", "echo hi; cat; exit 7"];
    // The node's tunnels may be in the middle of being replaced: a 500 is tried again.
    let mut ws = None;
    wait_until(
        Duration::from_secs(10),
        "the exec upgraded",
        || match open_exec(at, alloc, &query("t", &cmd, false), token) {
            Ok(w) => {
                ws = Some(w);
                true
            }
            Err((500, _)) => false,
            Err((st, body)) => panic!("exec at {}: {st} {body}", at.addr()),
        },
    );
    let mut ws = ws.expect("an upgraded exec");
    let o = collect(&mut ws, |o| o.stdout.contains("hi\n"));
    assert_eq!(o.stdout, "hi\n", "{o:?}");
    send(&mut ws, stdin_frame(b"abc\n"));
    send(&mut ws, json!({"stdin": {"close": true}}));
    let o = collect(&mut ws, |_| false);
    assert_eq!(o.stdout, "abc\n", "{o:?}");
    assert_eq!(o.exit_code, Some(7), "{o:?}");
    assert!(o.closed.contains(&"stdout".to_string()), "{o:?}");
}

#[test]
fn exec_reaches_an_alloc_on_another_node_through_a_server_and_a_client() {
    let server = TestAgent::server("", &[]);
    let runner = TestAgent::client(&[&server.rpc_addr()], &unreachable_http(), &[]);
    let node = runner.node_id();
    wait_ready(&server, &node, None);
    let alloc = running(&server, "exec-fwd", None);
    // A second client, started after the alloc was placed: it does not run it.
    let other = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    wait_ready(&server, &other.node_id(), None);

    // At the server's HTTP port (down the node's tunnel) and at the other client (through
    // its server, then the tunnel).
    echo_cat(&server, &alloc, None);
    echo_cat(&other, &alloc, None);

    // A session whose requester leaves ends on the node too: the process is killed.
    let cmd = ["/bin/sh", "-c", "echo $$; exec sleep 1000"];
    let mut ws = open_exec(&server, &alloc, &query("t", &cmd, false), None).expect("upgrade");
    let o = collect(&mut ws, |o| o.stdout.ends_with('\n'));
    let pid: i32 = o.stdout.trim().parse().expect("a pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(ws);
    wait_until(Duration::from_secs(10), "the exec's process gone", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        })
    });

    // Errors before the upgrade, as the alloc's node (or the server) gives them.
    for at in [&server, &other] {
        let (st, body) = open_exec(at, UNKNOWN, &query("t", &["true"], false), None)
            .map(|_| ())
            .expect_err("refused");
        assert_eq!((st, body), (404, format!("Unknown allocation {UNKNOWN:?}")));
        let (st, body) = open_exec(at, &alloc, &query("nope", &["true"], false), None)
            .map(|_| ())
            .expect_err("refused");
        assert_eq!((st, body.as_str()), (400, "unknown task name \"nope\""));
        // Not a websocket handshake: forwarded as a plain request and refused by the node.
        let r = at.get(&format!(
            "/v1/client/allocation/{alloc}/exec?{}",
            query("t", &["true"], false)
        ));
        assert_eq!(r.status, 400, "{}", r.text());
    }

    // The CLI's own session (its framing, stdin, exit code) through the server and through
    // the other client.
    for at in [&server, &other] {
        let mut child = Command::new(bin())
            .args([
                "alloc",
                "exec",
                "-i",
                "-task",
                "t",
                &alloc,
                "sh",
                "-c",
                "cat; exit 3",
            ])
            .env("NOMAD_ADDR", format!("http://{}", at.addr()))
            .env_remove("NOMAD_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"piped\n")
            .expect("write stdin");
        let out = child.wait_with_output().expect("cli output");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n", "{out:?}");
        assert_eq!(out.status.code(), Some(3), "{out:?}");
    }
    kill_leftover_tasks(&runner.data_dir);
}

#[test]
fn under_acls_the_node_checks_the_token_of_a_forwarded_exec() {
    let acl = "acl {\n  enabled = true\n}\n";
    let server = TestAgent::server(acl, &[]);
    let r = server.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "bootstrap: {}", r.text());
    let mgmt = r.json()["SecretID"].as_str().expect("secret").to_string();
    let runner = TestAgent::client(&[&server.rpc_addr()], acl, &[]);
    let mut node = String::new();
    wait_until(Duration::from_secs(15), "the client's node ID", || {
        let r = runner.request("GET", "/v1/agent/self", &headers(Some(&mgmt)), b"");
        node = if r.status == 200 {
            r.json()["stats"]["client"]["node_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        };
        !node.is_empty()
    });
    wait_ready(&server, &node, Some(&mgmt));
    let alloc = running(&server, "exec-acl-fwd", Some(&mgmt));
    let q = query("t", &["echo", "ok"], false);

    // No token: anonymous, refused by the node.
    let (st, body) = open_exec(&server, &alloc, &q, None)
        .map(|_| ())
        .expect_err("refused");
    assert_eq!((st, body.as_str()), (403, "Permission denied"));
    // A token the server does not know goes no further.
    let bogus = "00000000-0000-4000-8000-000000000001";
    let (st, body) = open_exec(&server, &alloc, &q, Some(bogus))
        .map(|_| ())
        .expect_err("refused");
    assert_eq!((st, body.as_str()), (403, "ACL token not found"));
    // alloc-exec alone is not enough for raw_exec (alloc-node-exec too), as locally.
    let hdr = [("X-Nomad-Token", mgmt.as_str())];
    let rules = "namespace \"default\" { capabilities = [\"alloc-exec\"] }";
    let body = json!({"Name": "half", "Rules": rules}).to_string();
    let r = server.request("POST", "/v1/acl/policy/half", &hdr, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let body = json!({"Name": "half", "Type": "client", "Policies": ["half"]}).to_string();
    let r = server.request("POST", "/v1/acl/token", &hdr, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let half = r.json()["SecretID"].as_str().expect("secret").to_string();
    let (st, _) = open_exec(&server, &alloc, &q, Some(&half))
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(st, 403, "raw_exec also needs alloc-node-exec");
    // The management token execs.
    let mut ws = open_exec(&server, &alloc, &q, Some(&mgmt)).expect("upgrade");
    let o = collect(&mut ws, |_| false);
    assert_eq!((o.stdout.as_str(), o.exit_code), ("ok\n", Some(0)), "{o:?}");
    kill_leftover_tasks(&runner.data_dir);
}

#[test]
fn a_server_without_the_nodes_tunnels_reaches_the_exec_through_one_that_has_them() {
    let servers = common::cluster(2);
    let leader = common::wait_leader(&servers, &[0, 1], Duration::from_secs(30));
    let rpc: Vec<String> = servers.iter().map(TestAgent::rpc_addr).collect();
    let list: Vec<&str> = rpc.iter().map(String::as_str).collect();
    let runner = TestAgent::client(&list, &unreachable_http(), &[]);
    let node = runner.node_id();
    wait_ready(&servers[leader], &node, None);
    let alloc = running(&servers[leader], "exec-peers", None);
    // A third server joins now: the node's idle tunnels are parked on the first two, and
    // none is used (so none is redialled) until the exec below.
    let serf = servers[0].get_json("/v1/agent/self")["config"]["Ports"]["Serf"]
        .as_u64()
        .expect("serf port");
    let late = TestAgent::server(
        &format!(
            "server {{\n  bootstrap_expect = 0\n  server_join {{\n    retry_join = [\"127.0.0.1:{serf}\"]\n    retry_interval = \"1s\"\n  }}\n}}\n"
        ),
        &[],
    );
    wait_until(
        Duration::from_secs(30),
        "the late server to know the alloc",
        || late.get(&format!("/v1/allocation/{alloc}?stale")).status == 200,
    );
    // It holds no tunnel of the node: it asks the servers that do.
    echo_cat(&late, &alloc, None);
    for server in &servers {
        echo_cat(server, &alloc, None);
    }
    kill_leftover_tasks(&runner.data_dir);
}
