//! The CLI (`nomadlet job|alloc|node|server|operator …`) run as a real process against a real
//! agent: job run/status/stop with Nomad's layout and exit codes, alloc status and logs
//! (also followed), prefixes, tokens, operator api, bad files; a scripted agent for the
//! placement-failure exit code; every flag documented in the group's man page.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

fn cli_at(addr: &str, token: Option<&str>, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(root())
        .env("NOMAD_ADDR", addr)
        .env_remove("NOMAD_TOKEN")
        .env_remove("NOMAD_REGION")
        .env_remove("NOMAD_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("NOMAD_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("spawn cli");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    // The CLI's own deadlines bound this; a hang fails the test run's timeout.
    child.wait_with_output().unwrap()
}

fn cli(agent: &TestAgent, args: &[&str]) -> Output {
    cli_at(&format!("http://{}", agent.addr()), None, args, b"")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        out(o),
        err(o)
    );
    out(o)
}

/// The first allocation of a job, full ID.
fn alloc_of(agent: &TestAgent, job: &str) -> String {
    let mut id = String::new();
    wait_until(Duration::from_secs(10), "an allocation", || {
        let v = agent.get_json(&format!("/v1/job/{job}/allocations"));
        if let Some(a) = v.as_array().and_then(|a| a.first()) {
            id = a["ID"].as_str().unwrap().to_string();
            true
        } else {
            false
        }
    });
    id
}

#[test]
fn job_run_status_alloc_status_logs_and_stop_purge() {
    let agent = TestAgent::start(&[]);
    let o = cli(
        &agent,
        &[
            "job",
            "run",
            "-var",
            "interval=1",
            "examples/hello.nomad.hcl",
        ],
    );
    let text = ok(&o);
    assert!(text.contains(": Monitoring evaluation \""), "{text}");
    assert!(
        text.contains("Evaluation triggered by job \"hello\""),
        "{text}"
    );
    assert!(text.contains("Allocation \""), "{text}");
    assert!(text.contains("created: node \""), "{text}");
    assert!(
        text.contains("Evaluation status changed: \"pending\" -> \"complete\""),
        "{text}"
    );
    assert!(text.contains("finished with status \"complete\""), "{text}");

    let alloc = alloc_of(&agent, "hello");
    // The source went along as Nomad's CLI sends it; -output prints the job and submits nothing.
    let o = ok(&cli(
        &agent,
        &[
            "job",
            "run",
            "-output",
            "-var",
            "greeting=yo",
            "examples/hello.nomad.hcl",
        ],
    ));
    let printed: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(
        printed["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["GREETING"],
        "yo"
    );
    assert_eq!(
        agent.get_json("/v1/job/hello")["Version"],
        0,
        "-output registered something"
    );
    let short = &alloc[..8];
    // job status: list, then detail with Summary and Allocations tables.
    let list = ok(&cli(&agent, &["job", "status"]));
    assert!(
        list.starts_with("ID     Type     Priority  Status"),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.starts_with("hello  service  50")),
        "{list}"
    );
    let mut detail = String::new();
    wait_until(
        Duration::from_secs(10),
        "the alloc running in job status",
        || {
            detail = ok(&cli(&agent, &["job", "status", "hello"]));
            // The summary and the alloc table may catch up one poll apart.
            detail.contains(" run      running ")
                && detail.contains(
                    "\nhello       0       0         1        0       0         0     0\n",
                )
        },
    );
    assert!(detail.contains("ID            = hello\n"), "{detail}");
    assert!(detail.contains("\nSummary\nTask Group  Queued  Starting  Running  Failed  Complete  Lost  Unknown\nhello       0       0         1        0       0         0     0\n"), "{detail}");
    assert!(
        detail.contains(
            "\nAllocations\nID        Node ID   Task Group  Version  Desired  Status   Created"
        ),
        "{detail}"
    );
    assert!(detail.contains(&format!("\n{short}  ")), "{detail}");
    // alloc status by a unique prefix.
    let st = ok(&cli(&agent, &["alloc", "status", &alloc[..6]]));
    assert!(
        st.starts_with(&format!("ID                  = {alloc}\n")),
        "{st}"
    );
    assert!(st.contains("Job ID              = hello\n"), "{st}");
    assert!(st.contains("Client Status       = running\n"), "{st}");
    assert!(st.contains("Task \"greeter\" is \"running\""), "{st}");
    assert!(st.contains("\nRecent Events:\nTime"), "{st}");
    assert!(st.contains("  Started     Task started by client"), "{st}");
    // alloc logs: the task's stdout; stderr is empty.
    let want = format!("HELLO from {alloc}");
    wait_until(Duration::from_secs(10), "a log line", || {
        ok(&cli(&agent, &["alloc", "logs", short])).contains(&want)
    });
    assert_eq!(
        ok(&cli(
            &agent,
            &["alloc", "logs", "-stderr", short, "greeter"]
        )),
        ""
    );
    let o = cli(&agent, &["alloc", "logs", short, "nosuchtask"]);
    assert_eq!(o.status.code(), Some(1));
    // -f follows: lines written after the start arrive, until we stop it.
    let mut follower = Command::new(bin())
        .args(["alloc", "logs", "-f", short])
        .env("NOMAD_ADDR", format!("http://{}", agent.addr()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let before = ok(&cli(&agent, &["alloc", "logs", short])).lines().count();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while n <= before + 1 {
        assert!(Instant::now() < deadline, "follow gave only {n} lines");
        let line = lines.next().expect("follow ended early").unwrap();
        assert!(line.contains(&want), "{line}");
        n += 1;
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    // stop -purge: gone afterwards.
    let o = ok(&cli(&agent, &["job", "stop", "-purge", "hello"]));
    assert!(o.contains("finished with status \"complete\""), "{o}");
    assert_eq!(agent.get("/v1/job/hello").status, 404);
    let o = cli(&agent, &["job", "status", "hello"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "No job(s) with prefix or ID \"hello\" found\n");
    assert_eq!(ok(&cli(&agent, &["job", "status"])), "No running jobs\n");
}

#[test]
fn detach_prefixes_nodes_members_and_bad_input() {
    let agent = TestAgent::start(&[]);
    let dir = temp_dir("cli");
    for id in ["web-a", "web-b"] {
        let job = format!(
            "{{\"Job\": {{\"ID\": \"{id}\", \"Type\": \"batch\", \"TaskGroups\": [{{\"Name\": \"g\", \"Tasks\": [{{\"Name\": \"t\", \"Driver\": \"raw_exec\", \"Config\": {{\"command\": \"/bin/true\"}}}}]}}]}}}}"
        );
        let path = dir.join(format!("{id}.json"));
        std::fs::write(&path, job).unwrap();
        let o = ok(&cli(
            &agent,
            &["job", "run", "-detach", path.to_str().unwrap()],
        ));
        let mut lines = o.lines();
        assert_eq!(lines.next(), Some("Job registration successful"), "{o}");
        let eval = lines
            .next()
            .unwrap()
            .strip_prefix("Evaluation ID: ")
            .unwrap();
        assert_eq!(eval.len(), 36, "{o}");
        assert_eq!(agent.get(&format!("/v1/evaluation/{eval}")).status, 200);
    }
    let o = cli(&agent, &["job", "status", "web-"]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.starts_with("Prefix matched multiple jobs\n\nID     Type   Priority  Status"),
        "{e}"
    );
    assert!(
        e.contains("\nweb-a  batch  50") && e.contains("\nweb-b  batch  50"),
        "{e}"
    );
    assert!(ok(&cli(&agent, &["job", "status", "web-b"])).contains("ID            = web-b\n"));
    let o = ok(&cli(&agent, &["job", "stop", "-detach", "web-a"]));
    assert_eq!(o.trim().len(), 36, "{o}");
    let o = cli(&agent, &["alloc", "status", "a"]);
    assert_eq!(err(&o), "Alloc ID must contain at least two characters.\n");
    let o = cli(&agent, &["alloc", "status", "ffffffff"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).starts_with("No allocation(s) with prefix or id \"ffffffff\""),
        "{}",
        err(&o)
    );
    // Nodes and members.
    let nodes = ok(&cli(&agent, &["node", "status"]));
    assert!(
        nodes.starts_with("ID        Node Pool  DC   Name"),
        "{nodes}"
    );
    let node_id = agent.get_json("/v1/nodes")[0]["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let nd = ok(&cli(&agent, &["node", "status", &node_id[..4]]));
    assert!(
        nd.starts_with(&format!("ID            = {node_id}\n")),
        "{nd}"
    );
    assert!(nd.contains("Driver Status = raw_exec"), "{nd}");
    let m = ok(&cli(&agent, &["server", "members"]));
    assert!(m.starts_with("Name"), "{m}");
    assert!(m.lines().nth(1).unwrap().contains("  alive   true "), "{m}");
    // Bad files: missing, not HCL, not a jobspec; a bad address.
    let o = cli(&agent, &["job", "run", "/nonexistent/x.nomad.hcl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).starts_with("Error reading \"/nonexistent/x.nomad.hcl\""),
        "{}",
        err(&o)
    );
    let bad = dir.join("bad.nomad.hcl");
    std::fs::write(
        &bad,
        "job \"x\" {\n  group \"g\" {\n    count = = 2\n  }\n}\n",
    )
    .unwrap();
    let o = cli(&agent, &["job", "run", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains(&format!(
            "Error parsing job file from {}:\n{}:3,",
            bad.display(),
            bad.display()
        )),
        "{}",
        err(&o)
    );
    std::fs::write(&bad, "job \"x\" {\n  grup \"g\" {}\n}\n").unwrap();
    let o = cli(&agent, &["job", "run", bad.to_str().unwrap()]);
    assert!(
        err(&o).contains(&format!(
            "{}:2,3: Unsupported block type; Blocks of type \"grup\" are not expected here.",
            bad.display()
        )),
        "{}",
        err(&o)
    );
    let o = cli(&agent, &["job", "run"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("Usage: nomadlet job run"), "{}", err(&o));
    let o = cli_at("http://127.0.0.1:1", None, &["job", "status"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).starts_with("Error querying jobs: GET \"http://127.0.0.1:1/v1/jobs\": dial:"),
        "{}",
        err(&o)
    );
    assert!(agent.get("/v1/jobs").status == 200);
}

#[test]
fn tokens_and_operator_api() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let addr = format!("http://{}", agent.addr());
    let o = cli_at(&addr, None, &["job", "status"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "Error querying jobs: Unexpected response code: 403 (Permission denied)\n"
    );
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    let secret = r.json()["SecretID"].as_str().unwrap().to_string();
    assert_eq!(
        out(&cli_at(&addr, Some(&secret), &["job", "status"], b"")),
        "No running jobs\n"
    );
    // -token wins over NOMAD_TOKEN.
    let o = cli_at(
        &addr,
        Some("bogus"),
        &["job", "status", "-token", &secret],
        b"",
    );
    assert_eq!(ok(&o), "No running jobs\n");
    // operator api: GET by default, the body from stdin makes it a POST, -X and -H.
    let o = ok(&cli_at(
        &addr,
        Some(&secret),
        &["operator", "api", "/v1/acl/token/self"],
        b"",
    ));
    let v: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["SecretID"], secret.as_str());
    let o = ok(&cli_at(
        &addr,
        Some(&secret),
        &["operator", "api", "/v1/jobs/parse"],
        br#"{"JobHCL": "job \"p\" {\n  type = \"batch\"\n}\n"}"#,
    ));
    assert_eq!(
        serde_json::from_str::<Value>(&o).unwrap(),
        serde_json::json!({"ID": "p", "Name": "p", "Type": "batch"})
    );
    let o = ok(&cli_at(
        &addr,
        Some("bogus"),
        &[
            "operator",
            "api",
            "-H",
            &format!("X-Nomad-Token: {secret}"),
            "/v1/acl/token/self",
        ],
        b"",
    ));
    assert!(o.contains(&secret), "{o}");
    let o = ok(&cli_at(
        &addr,
        Some(&secret),
        &["operator", "api", "-X", "DELETE", "/v1/job/none?purge=true"],
        b"",
    ));
    assert!(o.contains("\"EvalID\":\"\""), "{o}");
    let host = agent.addr();
    let o = ok(&cli_at(
        "http://127.0.0.1:1",
        Some(&secret),
        &["operator", "api", &format!("{host}/v1/status/leader")],
        b"",
    ));
    assert!(o.starts_with('"'), "{o}");
}

/// A scripted agent: answers the registration with an eval that failed to place its group,
/// in a chunked body, so the CLI's placement-failure path and decoding are exercised.
#[test]
fn placement_failure_exits_2_like_nomad() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let eval = r#"{"ID":"11111111-2222-3333-4444-555555555555","JobID":"big","TriggeredBy":"job-register","Status":"complete","BlockedEval":"99999999-2222-3333-4444-555555555555","FailedTGAllocs":{"g":{"NodesEvaluated":1,"NodesExhausted":1,"DimensionExhausted":{"memory":1},"CoalescedFailures":2}}}"#;
        let mut served = 0;
        while served < 4 {
            let (s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let reply = if first.starts_with("PUT /v1/jobs ") {
                r#"{"EvalID":"11111111-2222-3333-4444-555555555555","Warnings":""}"#
            } else if first.contains("/allocations") {
                "[]"
            } else {
                eval
            };
            let (a, b) = reply.split_at(reply.len() / 2);
            let mut w = s;
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Nomad-Index: 7\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
            .unwrap();
            served += 1;
            if first.contains("/allocations") {
                break;
            }
        }
    });
    let o = cli_at(
        &addr,
        None,
        &["job", "run", "examples/hello.nomad.hcl"],
        b"",
    );
    server.join().unwrap();
    let text = out(&o);
    assert_eq!(o.status.code(), Some(2), "{text}{}", err(&o));
    assert!(text.contains("finished with status \"complete\" but failed to place all allocations:\n    Task Group \"g\" (failed to place 3 allocations):\n      * Resources exhausted on 1 nodes\n      * Dimension \"memory\" exhausted on 1 nodes\n"), "{text}");
    assert!(
        text.contains("Evaluation \"99999999\" waiting for additional capacity to place remainder"),
        "{text}"
    );
}

/// Every flag of every CLI command (as its `-h` lists them) is in its group's man page.
#[test]
fn every_cli_flag_is_in_its_man_page() {
    let top = Command::new(bin()).arg("-h").output().unwrap();
    let top = out(&top);
    let mut checked = 0;
    for group in ["job", "alloc", "node", "server", "operator"] {
        assert!(top.contains(&format!("    {group} ")), "-h lacks {group}");
        let man_path = format!("{}/man/nomadlet-{group}.1", root());
        let man = std::fs::read_to_string(&man_path).unwrap_or_else(|e| panic!("{man_path}: {e}"));
        let g = out(&Command::new(bin()).args([group, "-h"]).output().unwrap());
        let subs: Vec<String> = g
            .lines()
            .skip_while(|l| !l.starts_with("Subcommands:"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        assert!(!subs.is_empty(), "{group}: {g}");
        for sub in subs {
            assert!(
                man.contains(&format!("{group} {sub}")),
                "{man_path} lacks {group} {sub}"
            );
            let h = out(&Command::new(bin())
                .args([group, sub.as_str(), "-h"])
                .output()
                .unwrap());
            for line in h.lines().filter(|l| l.starts_with("  -")) {
                let name = line[3..].split_whitespace().next().unwrap();
                assert!(
                    man.contains(&format!("\\-{}", name.replace('-', "\\-"))),
                    "{man_path} lacks -{name} of {group} {sub}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "checked only {checked} flags");
}

/// Inside a task, the CLI reaches the agent over the task's Task API socket
/// (`NOMAD_ADDR=unix://${NOMAD_SECRETS_DIR}/api.sock`) with the task's workload identity as
/// `NOMAD_TOKEN`.
#[test]
fn the_cli_works_inside_a_task_over_the_task_api_socket() {
    // A short data dir: the socket path must fit in sun_path.
    let agent = TestAgent::start_in(&short_dir(), &[]);
    let dir = temp_dir("cli-task");
    let script = format!(
        "NOMAD_ADDR=unix://$NOMAD_SECRETS_DIR/api.sock exec {} operator api /v1/client/metadata",
        bin()
    );
    let job = serde_json::json!({"Job": {"ID": "inside", "Type": "batch", "TaskGroups": [{"Name": "g",
        "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", script]},
            "Identity": {"Env": true}}]}]}});
    let path = dir.join("inside.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let o = ok(&cli(&agent, &["job", "run", path.to_str().unwrap()]));
    assert!(o.contains("finished with status \"complete\""), "{o}");
    let alloc = alloc_of(&agent, "inside");
    let mut logs = String::new();
    wait_until(Duration::from_secs(15), "the task's CLI output", || {
        logs = out(&cli(&agent, &["alloc", "logs", &alloc]));
        serde_json::from_str::<Value>(&logs).is_ok()
    });
    let v: Value = serde_json::from_str(&logs).unwrap_or_else(|e| panic!("{e}: {logs}"));
    assert!(v.get("Meta").is_some() || v.get("Dynamic").is_some(), "{v}");
}
