//! `alloc exec` over a websocket against the real binary: output and exit frames, the task's
//! env and dir, stdin, a tty with its size, the process killed when the client leaves,
//! hostile frames, Nomad's errors before the upgrade, ACLs, and `nomadlet alloc exec`.

mod common;
mod exec_ws;
mod workloads_helpers;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use exec_ws::*;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use workloads_helpers::*;

/// An agent with one running `sleep` task "t"; returns the alloc ID.
fn running(agent: &TestAgent, id: &str, token: Option<&str>) -> String {
    let job = sh_job(id, "service", "sleep 1000");
    let hdrs: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    let r = agent.request("PUT", "/v1/jobs", &hdrs, job.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let mut alloc = String::new();
    wait_until(WAIT, "a running task", || {
        let r = agent.request("GET", &format!("/v1/job/{id}/allocations"), &hdrs, b"");
        let list = r.json();
        if let Some(a) = list.as_array().and_then(|l| l.first()) {
            alloc = a["ID"].as_str().unwrap_or("").to_string();
            a["TaskStates"]["t"]["State"] == "running"
        } else {
            false
        }
    });
    alloc
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // State is the field after the parenthesised name; a zombie is as good as gone.
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        })
        .unwrap_or(false)
}

/// The agent's connection threads (`http-conn-*`).
fn conn_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("http-conn"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn exec_streams_output_in_the_task_env_and_dir_and_reports_the_exit_code() {
    let agent = TestAgent::start(&[]);
    let alloc = running(&agent, "exec-basic", None);
    let script = "echo out; echo err >&2; echo \"id=$NOMAD_ALLOC_ID\"; echo \"pwd=$(pwd)\"; exit 3";
    let mut ws = open_exec(
        &agent,
        &alloc,
        &query("t", &["/bin/sh", "-c", script], false),
        None,
    )
    .expect("upgrade");
    let o = collect(&mut ws, |_| false);
    assert!(o.stdout.starts_with("out\n"), "{o:?}");
    assert!(o.stdout.contains(&format!("id={alloc}\n")), "{o:?}");
    assert!(o.stdout.contains(&format!("/{alloc}/t\n")), "{o:?}");
    assert_eq!(o.stderr, "err\n");
    assert!(o.closed.contains(&"stdout".to_string()), "{o:?}");
    assert_eq!(o.exit_code, Some(3));
    assert_eq!(o.close.map(|c| c.0), Some(CloseCode::Normal));

    // stdin reaches the command; closing it ends `cat`.
    let mut ws = open_exec(&agent, &alloc, &query("t", &["cat"], false), None).expect("upgrade");
    send(&mut ws, stdin_frame(b"hello "));
    send(&mut ws, stdin_frame(b"world\n"));
    send(&mut ws, json!({"stdin": {"close": true}}));
    let o = collect(&mut ws, |_| false);
    assert_eq!((o.stdout.as_str(), o.exit_code), ("hello world\n", Some(0)));
}

#[test]
fn a_tty_exec_has_a_terminal_of_the_size_asked_for() {
    let agent = TestAgent::start(&[]);
    let alloc = running(&agent, "exec-tty", None);
    let mut ws = open_exec(
        &agent,
        &alloc,
        &query("t", &["/bin/sh", "-c", "read x; tty; stty size"], true),
        None,
    )
    .expect("upgrade");
    send(&mut ws, json!({"tty_size": {"height": 33, "width": 101}}));
    send(&mut ws, stdin_frame(b"go\n"));
    let o = collect(&mut ws, |_| false);
    assert!(o.stdout.contains("/dev/pts/"), "{o:?}");
    assert!(o.stdout.contains("33 101"), "{o:?}");
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    assert!(o.stderr.is_empty(), "a tty has one output stream: {o:?}");
}

#[test]
fn the_exec_dies_when_the_client_goes_and_hostile_frames_end_it() {
    let agent = TestAgent::start(&[]);
    let alloc = running(&agent, "exec-gone", None);
    let start = |ws: &mut Ws| -> i32 {
        let o = collect(ws, |o| o.stdout.ends_with('\n'));
        o.stdout.trim().parse().expect("pid")
    };
    let cmd = ["/bin/sh", "-c", "echo $$; exec sleep 1000"];
    wait_until(Duration::from_secs(10), "no connection threads", || {
        conn_threads(agent.pid()) == 0
    });
    // The client simply goes away: the shell and the child it left in the background die,
    // and the connection's thread ends.
    let mut ws = open_exec(
        &agent,
        &alloc,
        &query(
            "t",
            &["/bin/sh", "-c", "sleep 1000 & echo $$ $!; wait"],
            false,
        ),
        None,
    )
    .expect("upgrade");
    let o = collect(&mut ws, |o| o.stdout.ends_with('\n'));
    let pids: Vec<i32> = o
        .stdout
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{o:?}");
    assert!(pids.iter().all(|&p| alive(p)));
    assert_eq!(conn_threads(agent.pid()), 1);
    drop(ws);
    wait_until(Duration::from_secs(10), "the exec's group killed", || {
        pids.iter().all(|&p| !alive(p))
    });
    wait_until(
        Duration::from_secs(10),
        "the connection thread gone",
        || conn_threads(agent.pid()) == 0,
    );

    // Bad JSON, a binary frame, bad base64 and an oversized message: a close with a reason.
    let bad: Vec<(Message, CloseCode)> = vec![
        (Message::text("{not json"), CloseCode::Policy),
        (Message::text("[1,2,3]"), CloseCode::Policy),
        (Message::binary(vec![1u8, 2, 3]), CloseCode::Unsupported),
        (
            Message::text(json!({"stdin": {"data": "!!!"}}).to_string()),
            CloseCode::Policy,
        ),
        (
            Message::text(format!(
                "{{\"stdin\":{{\"data\":\"{}\"}}}}",
                "A".repeat(100_000)
            )),
            CloseCode::Size,
        ),
    ];
    for (msg, code) in bad {
        let mut ws = open_exec(&agent, &alloc, &query("t", &cmd, false), None).expect("upgrade");
        let pid = start(&mut ws);
        ws.send(msg).expect("send");
        let o = collect(&mut ws, |_| false);
        let (got, reason) = o.close.clone().expect("a close frame");
        assert_eq!(got, code, "{o:?}");
        assert!(!reason.is_empty());
        assert_eq!(o.exit_code, None);
        wait_until(Duration::from_secs(10), "the exec killed", || !alive(pid));
    }
    // A process that never reads its stdin: frames wait past the bound (the socket is not
    // read meanwhile), and a client that then leaves still ends the session.
    let mut ws = open_exec(&agent, &alloc, &query("t", &cmd, false), None).expect("upgrade");
    let pid = start(&mut ws);
    for _ in 0..10 {
        send(&mut ws, stdin_frame(&[b'x'; 40 * 1024]));
    }
    drop(ws);
    wait_until(Duration::from_secs(10), "the stuck exec killed", || {
        !alive(pid)
    });

    // The agent still serves.
    assert_eq!(agent.get("/v1/agent/health").status, 200);

    // An agent that stops ends its exec sessions (close 1001) and their processes.
    let mut ws = open_exec(&agent, &alloc, &query("t", &cmd, false), None).expect("upgrade");
    let pid = start(&mut ws);
    let mut agent = agent;
    let stopped = std::time::Instant::now();
    assert!(agent.stop().success());
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
    let o = collect(&mut ws, |_| false);
    assert_eq!(
        o.close.as_ref().map(|c| c.0),
        Some(CloseCode::Away),
        "{o:?}"
    );
    wait_until(Duration::from_secs(10), "the exec killed", || !alive(pid));
    kill_leftover_tasks(&agent.data_dir);
}

#[test]
fn errors_before_the_upgrade_are_nomads() {
    let agent = TestAgent::start(&[]);
    let alloc = running(&agent, "exec-errors", None);
    let unknown = "8d2b6f43-0000-4000-8000-000000000000";
    let (st, body) = open_exec(&agent, unknown, &query("t", &["true"], false), None)
        .err()
        .unwrap();
    assert_eq!((st, body), (404, format!("Unknown allocation {unknown:?}")));
    let (st, body) = open_exec(&agent, &alloc, "task=t", None).err().unwrap();
    assert_eq!((st, body.as_str()), (400, "command is not present"));
    let (st, _) = open_exec(&agent, &alloc, "task=t&command=%5B1%5D", None)
        .err()
        .unwrap();
    assert_eq!(st, 400);
    let (st, body) = open_exec(&agent, &alloc, &query("nope", &["true"], false), None)
        .err()
        .unwrap();
    assert_eq!((st, body.as_str()), (400, "unknown task name \"nope\""));
    // Not a websocket handshake.
    let r = agent.get(&format!(
        "/v1/client/allocation/{alloc}/exec?{}",
        query("t", &["true"], false)
    ));
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn exec_needs_alloc_exec_and_alloc_node_exec_for_raw_exec() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    let mgmt = r.json()["SecretID"].as_str().unwrap().to_string();
    let alloc = running(&agent, "exec-acl", Some(&mgmt));
    let token = |name: &str, caps: &str| -> String {
        let rules = format!("namespace \"default\" {{ capabilities = [{caps}] }}");
        let body = json!({"Name": name, "Rules": rules}).to_string();
        let hdr = [("X-Nomad-Token", mgmt.as_str())];
        let r = agent.request(
            "POST",
            &format!("/v1/acl/policy/{name}"),
            &hdr,
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body = json!({"Name": name, "Type": "client", "Policies": [name]}).to_string();
        let r = agent.request("POST", "/v1/acl/token", &hdr, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["SecretID"].as_str().unwrap().to_string()
    };
    let q = query("t", &["echo", "ok"], false);
    let reader = token("reader", "\"read-job\"");
    let (st, _) = open_exec(&agent, &alloc, &q, Some(&reader)).err().unwrap();
    assert_eq!(st, 403);
    let half = token("half", "\"alloc-exec\"");
    let (st, _) = open_exec(&agent, &alloc, &q, Some(&half)).err().unwrap();
    assert_eq!(st, 403, "raw_exec also needs alloc-node-exec");
    let full = token("full", "\"alloc-exec\", \"alloc-node-exec\"");
    let mut ws = open_exec(&agent, &alloc, &q, Some(&full)).expect("upgrade");
    let o = collect(&mut ws, |_| false);
    assert_eq!((o.stdout.as_str(), o.exit_code), ("ok\n", Some(0)));
}

#[test]
fn the_cli_execs_and_exits_with_the_remote_code() {
    let agent = TestAgent::start(&[]);
    let alloc = running(&agent, "exec-cli", None);
    let run = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(bin())
            .args(args)
            .env("NOMAD_ADDR", format!("http://{}", agent.addr()))
            .env_remove("NOMAD_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cli");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().expect("cli output")
    };
    let out = run(&["alloc", "exec", &alloc, "echo", "hi"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{out:?}");
    assert_eq!(out.status.code(), Some(0));
    let out = run(
        &[
            "alloc",
            "exec",
            "-task",
            "t",
            &alloc[..8],
            "sh",
            "-c",
            "echo e >&2; exit 7",
        ],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "e\n", "{out:?}");
    assert_eq!(out.status.code(), Some(7));
    let out = run(&["alloc", "exec", "-i", &alloc, "cat"], b"piped\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n", "{out:?}");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_task_reattached_after_an_agent_restart_can_be_execed() {
    let mut agent = TestAgent::start(&[]);
    let alloc = running(&agent, "exec-reattach", None);
    assert!(agent.stop().success());
    agent.restart_after_stop();
    wait_until(WAIT, "the task running again", || {
        agent.get_json(&format!("/v1/allocation/{alloc}"))["TaskStates"]["t"]["State"] == "running"
    });
    // The runner publishes the exec target right after re-attaching; poll for it.
    let mut out = None;
    wait_until(WAIT, "an exec in the re-attached task", || match open_exec(
        &agent,
        &alloc,
        &query(
            "t",
            &["/bin/sh", "-c", "echo \"id=$NOMAD_ALLOC_ID pwd=$(pwd)\""],
            false,
        ),
        None,
    ) {
        Ok(mut ws) => {
            out = Some(collect(&mut ws, |_| false));
            true
        }
        Err((500, _)) => false,
        Err(e) => panic!("exec refused: {e:?}"),
    });
    let o = out.unwrap();
    assert!(o.stdout.contains(&format!("id={alloc} ")), "{o:?}");
    assert!(o.stdout.contains(&format!("/{alloc}/t\n")), "{o:?}");
    assert_eq!(o.exit_code, Some(0));
}
