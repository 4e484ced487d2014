//! Jobs and allocations through the real binary with real processes: batch completion and its
//! events, restart policy, stop with KillSignal/KillTimeout, task env, alloc dir layout,
//! bad input, driver failures, task.user, lifecycle calls, stats, GC and agent restarts.

mod common;
mod workloads_helpers;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

#[test]
fn batch_job_runs_to_completion_with_nomads_events_and_every_id_leads_somewhere() {
    let agent = TestAgent::start(&[]);
    let r = register(
        &agent,
        &sh_job("hello", "batch", "echo hello; echo oops >&2"),
    );
    assert!(r["JobModifyIndex"].as_u64().unwrap() > 0);
    assert_eq!(r["Warnings"], "");
    // The scheduler runs the eval moments after the register's answer.
    let eval = wait_eval_done(&agent, r["EvalID"].as_str().unwrap());
    assert_eq!(eval["JobID"], "hello");
    assert_eq!(eval["Status"], "complete");
    assert!(agent
        .get_json("/v1/evaluations")
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["ID"] == r["EvalID"]));

    let id = first_alloc(&agent, "hello");
    let a = wait_status(&agent, &id, "complete");
    assert_eq!(
        event_types(&a, "t"),
        ["Received", "Task Setup", "Started", "Terminated"]
    );
    let term = events_of(&a, "t", "Terminated")[0];
    assert_eq!(term["DisplayMessage"], "Exit Code: 0");
    assert_eq!(a["TaskStates"]["t"]["State"], "dead");
    assert_eq!(a["TaskStates"]["t"]["Failed"], false);
    assert!(a["TaskStates"]["t"]["FinishedAt"].is_string());
    // Allocation omits zero fields; the stub keeps them.
    assert!(a.get("DesiredDescription").is_none());
    assert!(a.get("PreviousAllocation").is_none());
    assert_eq!(a["Job"]["ID"], "hello");
    assert_eq!(a["Name"], "hello.g[0]");
    let stub = &allocs(&agent, "hello")[0];
    assert_eq!(stub["DesiredDescription"], "");
    assert_eq!(read_log(&agent, &id, "t", "stdout"), "hello\n");
    assert_eq!(read_log(&agent, &id, "t", "stderr"), "oops\n");

    let job = agent.get_json("/v1/job/hello");
    assert_eq!(job["Status"], "dead");
    assert_eq!(job["Priority"], 50);
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["KillTimeout"],
        5_000_000_000u64
    );
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["LogConfig"]["MaxFiles"],
        10
    );
    let list = agent.get_json("/v1/jobs?prefix=hel");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(agent.get_json("/v1/jobs?prefix=zzz"), json!([]));
    let node_id = agent.get_json("/v1/agent/self")["stats"]["client"]["node_id"]
        .as_str()
        .map(str::to_string);
    if let Some(node) = node_id {
        let on_node = agent.get_json(&format!("/v1/node/{node}/allocations"));
        assert!(on_node
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == id.as_str()));
    }
    assert_eq!(agent.get("/v1/job/nope").status, 404);
    assert_eq!(agent.get("/v1/job/nope").text(), "job not found");
    assert_eq!(agent.get("/v1/allocation/nope").text(), "alloc not found");
}

#[test]
fn unchanged_job_is_a_noop_and_a_changed_one_replaces_its_allocs() {
    let agent = TestAgent::start(&[]);
    let job = sh_job("svc", "service", "sleep 30");
    let r1 = register(&agent, &job);
    let a1 = first_alloc(&agent, "svc");
    wait_task_running(&agent, &a1, "t");
    let r2 = register(&agent, &job);
    assert_eq!(r1["JobModifyIndex"], r2["JobModifyIndex"]);
    assert_eq!(allocs(&agent, "svc").len(), 1);
    let r3 = register(&agent, &sh_job("svc", "service", "sleep 31"));
    assert!(r3["JobModifyIndex"].as_u64() > r1["JobModifyIndex"].as_u64());
    wait_until(WAIT, "old alloc stopped and new one running", || {
        let all = allocs(&agent, "svc");
        all.len() == 2
            && all
                .iter()
                .any(|a| a["ID"] == a1.as_str() && a["ClientStatus"] == "complete")
            && all
                .iter()
                .any(|a| a["ID"] != a1.as_str() && a["ClientStatus"] == "running")
    });
    assert_eq!(agent.get_json("/v1/job/svc")["Version"], 1);
    let d = agent.request("DELETE", "/v1/job/svc", &[], b"");
    assert_eq!(d.status, 200, "{}", d.text());
    assert!(d.json()["EvalID"].is_string());
    wait_until(WAIT, "every alloc stopped", || {
        allocs(&agent, "svc")
            .iter()
            .all(|a| a["ClientStatus"] == "complete")
    });
    assert_eq!(agent.get_json("/v1/job/svc")["Stop"], true);
    let p = agent.request("DELETE", "/v1/job/svc?purge=true", &[], b"");
    assert_eq!(p.status, 200);
    assert_eq!(agent.get("/v1/job/svc").status, 404);
    let bad = agent.request("DELETE", "/v1/job/svc?purge=maybe", &[], b"");
    assert!(
        bad.text()
            .starts_with("Failed to parse value of \"purge\" (maybe) as a bool"),
        "{}",
        bad.text()
    );
}

#[test]
fn service_task_is_restarted_per_its_restart_policy_then_fails() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("flaky", "service", "echo run; exit 3");
    job["Job"]["TaskGroups"][0]["RestartPolicy"] = json!({"Attempts": 2, "Interval": 3_600_000_000_000u64, "Delay": 100_000_000u64, "Mode": "fail"});
    register(&agent, &job);
    let id = first_alloc(&agent, "flaky");
    let a = wait_status(&agent, &id, "failed");
    let ts = &a["TaskStates"]["t"];
    assert_eq!(ts["Restarts"], 2);
    assert_eq!(ts["Failed"], true);
    assert!(ts["LastRestart"].is_string());
    let types = event_types(&a, "t");
    assert_eq!(
        types.iter().filter(|t| *t == "Restarting").count(),
        2,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "Started").count(),
        3,
        "{types:?}"
    );
    assert!(types.len() <= 10);
    let restarting = events_of(&a, "t", "Restarting")[0];
    assert_eq!(restarting["DisplayMessage"], "Task restarting in 100ms");
    assert_eq!(restarting["StartDelay"], 100_000_000);
    assert_eq!(
        events_of(&a, "t", "Terminated")[0]["DisplayMessage"],
        "Exit Code: 3"
    );
    let last = ts["Events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["Type"], "Not Restarting");
    assert_eq!(
        last["DisplayMessage"],
        "Exceeded allowed attempts 2 in interval 1h0m0s and mode is \"fail\""
    );
    assert_eq!(read_log(&agent, &id, "t", "stdout"), "run\nrun\nrun\n");
}

#[test]
fn stop_sends_kill_signal_to_the_group_then_sigkill_after_kill_timeout() {
    let agent = TestAgent::start(&[]);
    let job = json!({"Job": {"ID": "stopme", "Type": "service", "TaskGroups": [{"Name": "g",
    "Tasks": [
        {"Name": "polite", "Driver": "raw_exec", "KillSignal": "SIGUSR1",
         "Config": {"command": "/bin/sh", "args": ["-c", "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.05; done"]}},
        {"Name": "stubborn", "Driver": "raw_exec", "KillTimeout": 1_000_000_000u64,
         "Config": {"command": "/bin/sh", "args": ["-c", "trap '' INT; echo ready; while true; do sleep 0.05; done"]}}
    ]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "stopme");
    wait_task_running(&agent, &id, "polite");
    wait_task_running(&agent, &id, "stubborn");
    wait_until(WAIT, "both tasks ready", || {
        read_log(&agent, &id, "polite", "stdout").contains("ready")
            && read_log(&agent, &id, "stubborn", "stdout").contains("ready")
    });
    let started = Instant::now();
    let r = agent.request("POST", &format!("/v1/allocation/{id}/stop"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["EvalID"].is_string());
    let a = wait_status(&agent, &id, "complete");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "KillTimeout honoured"
    );
    assert_eq!(a["DesiredStatus"], "stop");
    assert!(read_log(&agent, &id, "polite", "stdout").contains("got-usr1"));
    let polite = event_types(&a, "polite");
    assert_eq!(
        &polite[polite.len() - 3..],
        ["Killing", "Terminated", "Killed"]
    );
    assert_eq!(events_of(&a, "polite", "Terminated")[0]["ExitCode"], 0);
    let killing = events_of(&a, "stubborn", "Killing")[0];
    assert_eq!(killing["KillTimeout"], 1_000_000_000u64);
    assert_eq!(
        killing["DisplayMessage"],
        "Sent interrupt. Waiting 1s before force killing"
    );
    let term = events_of(&a, "stubborn", "Terminated")[0];
    assert_eq!(term["Signal"], 9);
    assert_eq!(term["DisplayMessage"], "Exit Code: 137, Signal: 9");
    // The stopped alloc of a service job is replaced.
    assert_eq!(a["NextAllocation"].as_str().map(|s| s.len()), Some(36));
    let d = agent.request("DELETE", "/v1/job/stopme", &[], b"");
    assert_eq!(d.status, 200);
}

#[test]
fn task_env_has_nomad_vars_meta_and_host_env_minus_the_deny_list() {
    std::env::set_var("VAULT_TOKEN", "must-not-leak");
    std::env::set_var("NOMADLET_TEST_HOST_VAR", "from-host");
    let agent = TestAgent::start(&[]);
    let job = json!({"Job": {"ID": "envjob", "Type": "batch", "Meta": {"Owner": "ops", "shared": "job"},
        "TaskGroups": [{"Name": "web", "Meta": {"shared": "group"},
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Meta": {"dotted.key": "x"},
            "Env": {"GREETING": "hi-${NOMAD_JOB_ID}", "NOMADLET_TEST_HOST_VAR": "task-wins"},
            "Config": {"command": "/usr/bin/env", "args": []}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "envjob");
    wait_status(&agent, &id, "complete");
    let out = read_log(&agent, &id, "t", "stdout");
    let env: std::collections::HashMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('=')).collect();
    let dir = alloc_dir(&agent, &id);
    assert_eq!(env["NOMAD_ALLOC_ID"], id);
    assert_eq!(env["NOMAD_SHORT_ALLOC_ID"], &id[..8]);
    assert_eq!(env["NOMAD_ALLOC_NAME"], "envjob.web[0]");
    assert_eq!(env["NOMAD_ALLOC_INDEX"], "0");
    assert_eq!(
        env["NOMAD_ALLOC_DIR"],
        dir.join("alloc").display().to_string()
    );
    assert_eq!(
        env["NOMAD_TASK_DIR"],
        dir.join("t/local").display().to_string()
    );
    assert_eq!(
        env["NOMAD_SECRETS_DIR"],
        dir.join("t/secrets").display().to_string()
    );
    assert_eq!(env["NOMAD_GROUP_NAME"], "web");
    assert_eq!(env["NOMAD_TASK_NAME"], "t");
    assert_eq!(env["NOMAD_JOB_ID"], "envjob");
    assert_eq!(env["NOMAD_JOB_NAME"], "envjob");
    assert_eq!(env["NOMAD_NAMESPACE"], "default");
    assert_eq!(env["NOMAD_REGION"], "global");
    assert_eq!(env["NOMAD_DC"], "dc1");
    assert_eq!(env["NOMAD_CPU_LIMIT"], "100");
    assert_eq!(env["NOMAD_MEMORY_LIMIT"], "300");
    assert_eq!(env["NOMAD_META_OWNER"], "ops");
    assert_eq!(env["NOMAD_META_Owner"], "ops");
    assert_eq!(env["NOMAD_META_shared"], "group");
    assert_eq!(env["NOMAD_META_DOTTED_KEY"], "x");
    assert_eq!(env["GREETING"], "hi-envjob");
    assert_eq!(env["NOMADLET_TEST_HOST_VAR"], "task-wins");
    assert!(env.contains_key("PATH"));
    assert!(!env.contains_key("VAULT_TOKEN"));
    assert!(!env.contains_key("NOMAD_ADDR"));
}

#[test]
fn alloc_dir_has_nomads_layout_and_permissions() {
    let agent = TestAgent::start(&[]);
    register(
        &agent,
        &sh_job("layout", "batch", "pwd; touch local/made-by-task"),
    );
    let id = first_alloc(&agent, "layout");
    wait_status(&agent, &id, "complete");
    let dir = alloc_dir(&agent, &id);
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(""), 0o755);
    assert_eq!(mode("alloc"), 0o755);
    for d in [
        "alloc/data",
        "alloc/logs",
        "alloc/tmp",
        "t/local",
        "t/secrets",
    ] {
        assert_eq!(mode(d), 0o777, "{d}");
    }
    assert_eq!(mode("t/tmp"), 0o1777);
    assert!(dir.join("t/private").is_dir());
    assert!(std::fs::read_to_string(dir.join("t/executor.out"))
        .unwrap()
        .contains("started pid"));
    assert!(dir.join("t/local/made-by-task").exists());
    assert_eq!(
        read_log(&agent, &id, "t", "stdout").trim(),
        dir.join("t").display().to_string()
    );
    assert_eq!(
        std::fs::metadata(dir.join("alloc/logs/t.stdout.0"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

fn register_err(agent: &TestAgent, body: &Value) -> (u16, String) {
    let r = agent.request("PUT", "/v1/jobs", &[], body.to_string().as_bytes());
    (r.status, r.text())
}

#[test]
fn bad_jobs_are_refused_with_nomads_messages() {
    let agent = TestAgent::start(&[]);
    let (s, t) = (
        agent.request("PUT", "/v1/jobs", &[], b"").status,
        agent.request("PUT", "/v1/jobs", &[], b"").text(),
    );
    assert_eq!((s, t.as_str()), (400, "Request body is empty"));
    assert_eq!(
        register_err(&agent, &json!({})),
        (400, "Job must be specified".to_string())
    );
    assert_eq!(
        register_err(&agent, &json!({"Job": {"Name": "x"}})),
        (400, "Job ID hasn't been provided".to_string())
    );
    let r = agent.request(
        "PUT",
        "/v1/job/other",
        &[],
        sh_job("x", "batch", "true").to_string().as_bytes(),
    );
    assert_eq!(
        (r.status, r.text()),
        (400, "Job ID does not match name".to_string())
    );

    let (s, t) = register_err(
        &agent,
        &json!({"Job": {"ID": "x", "TaskGroups": [{"Name": "g", "Tasks": []}]}}),
    );
    assert_eq!(s, 400);
    assert!(
        t.starts_with("1 error occurred:\n\t* Task group g validation failed: "),
        "{t}"
    );
    assert!(t.contains("Missing tasks for task group"), "{t}");

    // A driver no node has is the scheduler's business, as in Nomad: accepted, then its
    // placement fails with "missing drivers" and the eval is blocked.
    let (s, t) = register_err(
        &agent,
        &json!({"Job": {"ID": "dock", "TaskGroups": [{"Name": "g", "Tasks": [
        {"Name": "t", "Driver": "docker", "Config": {"image": "redis"}}]}]}}),
    );
    assert_eq!(s, 200, "{t}");
    let eval_id = serde_json::from_str::<Value>(&t).unwrap()["EvalID"]
        .as_str()
        .unwrap()
        .to_string();
    let mut eval = Value::Null;
    wait_until(Duration::from_secs(10), "the docker job's eval", || {
        eval = agent.get_json(&format!("/v1/evaluation/{eval_id}"));
        eval["Status"] == "complete"
    });
    assert_eq!(
        eval["FailedTGAllocs"]["g"]["ConstraintFiltered"]["missing drivers"], 1,
        "{eval}"
    );
    assert!(agent
        .get_json("/v1/job/dock/allocations")
        .as_array()
        .unwrap()
        .is_empty());

    let (s, t) = register_err(
        &agent,
        &json!({"Job": {"ID": "x", "TaskGroups": [{"Name": "g", "Tasks": [
        {"Name": "t", "Driver": "raw_exec", "Config": {"args": ["x"]}}]}]}}),
    );
    assert_eq!(s, 400);
    assert!(t.contains("The argument \"command\" is required"), "{t}");

    let (s, t) = register_err(
        &agent,
        &json!({"Job": {"ID": "x", "TaskGroups": [{"Name": "g", "Tasks": [
        {"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true", "work_dir": "relative/dir"}}]}]}}),
    );
    assert_eq!(s, 400);
    assert!(t.contains("work_dir must be an absolute path"), "{t}");

    let mut neg = sh_job("x", "batch", "true");
    neg["Job"]["TaskGroups"][0]["Count"] = json!(-1);
    let (s, t) = register_err(&agent, &neg);
    assert_eq!(s, 400);
    assert!(t.contains("Task group count can't be negative"), "{t}");

    let (s, t) = register_err(
        &agent,
        &json!({"Job": {"ID": "x", "Type": "weird", "TaskGroups": []}}),
    );
    assert_eq!(s, 400);
    assert!(
        t.contains("Invalid job type: \"weird\"") && t.contains("Missing job task groups"),
        "{t}"
    );
    assert!(t.starts_with("2 errors occurred:\n\t* "), "{t}");
    // Nothing refused was kept; only the docker job (accepted, unplaced) is there.
    let ids: Vec<Value> = agent
        .get_json("/v1/jobs")
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["ID"].clone())
        .collect();
    assert_eq!(ids, vec![json!("dock")]);
}

#[test]
fn a_command_that_does_not_exist_is_a_driver_failure() {
    let agent = TestAgent::start(&[]);
    let job = json!({"Job": {"ID": "nocmd", "Type": "batch", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/no/such/binary"}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "nocmd");
    let a = wait_status(&agent, &id, "failed");
    let failure = events_of(&a, "t", "Driver Failure");
    assert_eq!(failure.len(), 1, "{:?}", event_types(&a, "t"));
    let msg = failure[0]["DriverError"].as_str().unwrap();
    assert!(
        msg.contains("/no/such/binary") && msg.contains("no such file or directory"),
        "{msg}"
    );
    assert_eq!(failure[0]["DisplayMessage"], msg);
    assert_eq!(a["TaskStates"]["t"]["Failed"], true);
}

/// Register `job` on an agent whose raw_exec is off; the placement must fail: no alloc, the
/// eval `complete` with `FailedTGAllocs` ("missing drivers") and a `blocked` eval, and the
/// advice naming the config key in `want` (the operator's config format). Returns the eval.
fn placement_fails(agent: &TestAgent, job: &str, want: &str) -> Value {
    let r = register(agent, &sh_job(job, "service", "sleep 30"));
    let eval = wait_eval_done(agent, r["EvalID"].as_str().unwrap());
    assert_eq!(eval["Status"], "complete", "{eval}");
    let failed = &eval["FailedTGAllocs"]["g"];
    assert_eq!(failed["ConstraintFiltered"]["missing drivers"], 1, "{eval}");
    assert_eq!(failed["NodesEvaluated"], 1);
    assert_eq!(eval["QueuedAllocations"]["g"], 1);
    let desc = eval["StatusDescription"].as_str().unwrap_or_default();
    assert!(
        desc.contains("\"raw_exec\"") && desc.contains(want),
        "{desc}"
    );
    let blocked = agent.get_json(&format!(
        "/v1/evaluation/{}",
        eval["BlockedEval"].as_str().expect("BlockedEval")
    ));
    assert_eq!(blocked["Status"], "blocked", "{blocked}");
    assert_eq!(blocked["PreviousEval"], eval["ID"]);
    assert!(allocs(agent, job).is_empty(), "nothing placed");
    wait_until(WAIT, "the failure logged", || {
        agent.log().contains("placement failed")
    });
    eval
}

#[test]
fn raw_exec_disabled_fails_the_placement_naming_the_key_in_the_config_format() {
    let dir = temp_dir("cfg");
    let json_cfg = dir.join("agent.json");
    std::fs::write(
        &json_cfg,
        r#"{"plugin": {"raw_exec": {"config": {"enabled": false}}}}"#,
    )
    .unwrap();
    let agent = TestAgent::start(&["-config", json_cfg.to_str().unwrap()]);
    placement_fails(
        &agent,
        "off",
        r#"{"plugin": {"raw_exec": {"config": {"enabled": true}}}}"#,
    );
    drop(agent);

    let hcl_cfg = dir.join("agent.hcl");
    std::fs::write(
        &hcl_cfg,
        "plugin \"raw_exec\" {\n  config { enabled = false }\n}\n",
    )
    .unwrap();
    let data = temp_dir("off-data");
    let mut agent = TestAgent::start_in(&data, &["-config", hcl_cfg.to_str().unwrap()]);
    let first = placement_fails(
        &agent,
        "off",
        r#"plugin "raw_exec" { config { enabled = true } }"#,
    );
    // Registering it again blocks again; the older blocked eval is cancelled.
    let again = register(&agent, &sh_job("off", "service", "sleep 30"));
    assert_ne!(again["EvalID"], first["ID"]);
    wait_eval_done(&agent, again["EvalID"].as_str().unwrap());
    let old = agent.get_json(&format!(
        "/v1/evaluation/{}",
        first["BlockedEval"].as_str().unwrap()
    ));
    assert_eq!(old["Status"], "canceled", "{old}"); // Nomad's EvalStatusCancelled
    assert!(allocs(&agent, "off").is_empty());

    // raw_exec enabled and the agent restarted: the blocked placement is made.
    agent.stop();
    std::fs::write(
        &hcl_cfg,
        "plugin \"raw_exec\" {\n  config { enabled = true }\n}\n",
    )
    .unwrap();
    agent.restart_after_stop();
    let id = first_alloc(&agent, "off");
    wait_task_running(&agent, &id, "t");
    let blocked: Vec<Value> = agent
        .get_json("/v1/evaluations")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Status"] == "blocked")
        .cloned()
        .collect();
    assert!(blocked.is_empty(), "{blocked:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn job_run_with_raw_exec_disabled_prints_the_failed_placement_and_the_hcl_key() {
    let dir = temp_dir("cli-off");
    let cfg = dir.join("agent.hcl");
    std::fs::write(
        &cfg,
        "plugin \"raw_exec\" {\n  config { enabled = false }\n}\n",
    )
    .unwrap();
    let agent = TestAgent::start(&["-config", cfg.to_str().unwrap()]);
    let job = dir.join("hello.nomad.hcl");
    std::fs::write(
        &job,
        "job \"hello\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      config {\n        command = \"/bin/true\"\n      }\n    }\n  }\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["job", "run"])
        .arg(&job)
        .env("NOMAD_ADDR", format!("http://{}", agent.addr()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("failed to place all allocations")
            && stdout.contains("Constraint \"missing drivers\": 1 nodes excluded by filter")
            && stdout.contains(r#"plugin "raw_exec" { config { enabled = true } }"#),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn task_user_is_switched_when_the_agent_is_root() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("asuser", "batch", "id -u");
    job["Job"]["TaskGroups"][0]["Tasks"][0]["User"] = json!("nobody");
    register(&agent, &job);
    let id = first_alloc(&agent, "asuser");
    let root = rustix::process::geteuid().is_root();
    if root {
        wait_status(&agent, &id, "complete");
        assert_eq!(read_log(&agent, &id, "t", "stdout").trim(), "65534");
    } else {
        let a = wait_status(&agent, &id, "failed");
        let f = events_of(&a, "t", "Driver Failure");
        assert!(f[0]["DriverError"]
            .as_str()
            .unwrap()
            .contains("cannot switch users"));
    }
    let mut bad = sh_job("nouser", "batch", "true");
    bad["Job"]["TaskGroups"][0]["Tasks"][0]["User"] = json!("no-such-user-xyz");
    register(&agent, &bad);
    let id = first_alloc(&agent, "nouser");
    let a = wait_status(&agent, &id, "failed");
    let f = events_of(&a, "t", "Driver Failure");
    assert!(f[0]["DriverError"]
        .as_str()
        .unwrap()
        .contains("unknown user no-such-user-xyz"));
}

#[test]
fn restart_and_signal_reach_the_running_task() {
    let agent = TestAgent::start(&[]);
    register(
        &agent,
        &sh_job(
            "life",
            "service",
            "trap 'echo got-hup' HUP; trap 'echo got-int' INT; echo up; while true; do sleep 0.05; done",
        ),
    );
    let id = first_alloc(&agent, "life");
    wait_task_running(&agent, &id, "t");
    wait_until(WAIT, "task up", || {
        read_log(&agent, &id, "t", "stdout").contains("up")
    });
    let r = agent.request(
        "POST",
        &format!("/v1/client/allocation/{id}/signal"),
        &[],
        br#"{"Signal":"SIGHUP","Task":"t"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "HUP handled", || {
        read_log(&agent, &id, "t", "stdout").contains("got-hup")
    });
    // A name raw_exec does not know sends SIGINT, as Nomad's raw_exec driver does.
    let r = agent.request(
        "POST",
        &format!("/v1/client/allocation/{id}/signal"),
        &[],
        br#"{"Signal":"INVALID-SIGNAL","Task":"t"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "INT handled", || {
        read_log(&agent, &id, "t", "stdout").contains("got-int")
    });
    let r = agent.request(
        "POST",
        &format!("/v1/client/allocation/{id}/signal"),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, r.text()),
        (
            400,
            "Failed to decode body: Request body is empty".to_string()
        )
    );
    let r = agent.request(
        "POST",
        &format!("/v1/client/allocation/{id}/restart"),
        &[],
        br#"{"TaskName":"t"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "task restarted", || {
        let a = alloc(&agent, &id);
        a["TaskStates"]["t"]["Restarts"] == 1 && a["TaskStates"]["t"]["State"] == "running"
    });
    let a = alloc(&agent, &id);
    assert_eq!(events_of(&a, "t", "Restart Signaled").len(), 1);
    assert_eq!(events_of(&a, "t", "Signaling").len(), 2);
    assert_eq!(a["ClientStatus"], "running");
}

#[test]
fn stats_show_a_task_holding_100_mb_and_host_stats_are_real() {
    let agent = TestAgent::start(&[]);
    let job = json!({"Job": {"ID": "mem", "Type": "service", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/sh",
            "args": ["-c", "python3 -c \"import time; x = b'x' * (100 << 20); print('held', flush=True); time.sleep(60)\""]}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "mem");
    wait_until(WAIT, "memory held", || {
        read_log(&agent, &id, "t", "stdout").contains("held")
    });
    let mut rss = 0;
    wait_until(WAIT, "stats to show 100 MB", || {
        let s = agent.get_json(&format!("/v1/client/allocation/{id}/stats"));
        rss = s["Tasks"]["t"]["ResourceUsage"]["MemoryStats"]["RSS"]
            .as_u64()
            .unwrap_or(0);
        rss >= 100 << 20
    });
    assert!(rss < 400 << 20, "rss {rss}");
    let s = agent.get_json(&format!("/v1/client/allocation/{id}/stats"));
    assert!(s["ResourceUsage"]["MemoryStats"]["RSS"].as_u64().unwrap() >= 100 << 20);
    assert!(s["Timestamp"].as_i64().unwrap() > 0);
    assert!(s["Tasks"]["t"]["ResourceUsage"]["CpuStats"]["Percent"].is_number());
    let h = agent.get_json("/v1/client/stats");
    assert!(h["Memory"]["Total"].as_u64().unwrap() > 0);
    assert!(!h["CPU"].as_array().unwrap().is_empty());
    assert!(h["Uptime"].as_u64().unwrap() > 0);
    assert!(h["AllocDirStats"]["Size"].as_u64().unwrap() > 0);
    assert_eq!(agent.get("/v1/client/allocation/nope/stats").status, 404);
}

#[test]
fn gc_refuses_a_running_alloc_and_removes_a_terminal_ones_dir() {
    let agent = TestAgent::start(&[]);
    register(&agent, &sh_job("runs", "service", "sleep 60"));
    let running = first_alloc(&agent, "runs");
    wait_task_running(&agent, &running, "t");
    let r = agent.get(&format!("/v1/client/allocation/{running}/gc"));
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        "No such allocation on client, or allocation not eligible for GC"
    );
    assert_eq!(alloc(&agent, &running)["ClientStatus"], "running");
    assert!(alloc_dir(&agent, &running).exists());

    register(&agent, &sh_job("done", "batch", "echo bye"));
    let done = first_alloc(&agent, "done");
    wait_status(&agent, &done, "complete");
    assert!(alloc_dir(&agent, &done).exists());
    let r = agent.get(&format!("/v1/client/allocation/{done}/gc"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    assert!(!alloc_dir(&agent, &done).exists());
    assert_eq!(alloc(&agent, &done)["ClientStatus"], "complete");
    assert_eq!(agent.get("/v1/client/allocation/nope/gc").status, 404);
    assert_eq!(agent.get("/v1/client/gc").status, 200);
    assert_eq!(alloc(&agent, &running)["ClientStatus"], "running");
}

#[test]
fn terminal_allocs_beyond_gc_max_allocs_are_collected() {
    let cfg = temp_dir("cfg").join("agent.json");
    std::fs::write(&cfg, r#"{"client": {"gc_max_allocs": 1}}"#).unwrap();
    let agent = TestAgent::start(&["-config", cfg.to_str().unwrap()]);
    let mut job = sh_job("many", "batch", "true");
    job["Job"]["TaskGroups"][0]["Count"] = json!(3);
    register(&agent, &job);
    wait_until(WAIT, "all complete", || {
        let a = allocs(&agent, "many");
        a.len() == 3 && a.iter().all(|x| x["ClientStatus"] == "complete")
    });
    wait_until(WAIT, "two of three collected", || {
        allocs(&agent, "many")
            .iter()
            .filter(|a| alloc_dir(&agent, a["ID"].as_str().unwrap()).exists())
            .count()
            == 1
    });
}

#[test]
fn agent_restart_keeps_jobs_and_allocs_and_leaves_running_tasks_running() {
    let mut agent = TestAgent::start(&[]);
    register(&agent, &sh_job("keep", "service", "echo started; sleep 60"));
    register(&agent, &sh_job("finished", "batch", "echo once"));
    let svc = first_alloc(&agent, "keep");
    let batch = first_alloc(&agent, "finished");
    wait_task_running(&agent, &svc, "t");
    wait_status(&agent, &batch, "complete");
    let before = alloc(&agent, &svc);
    let pid_of = |a: &Value| {
        events_of(a, "t", "Started")
            .last()
            .and_then(|e| e["Details"]["pid"].as_str().map(str::to_string))
    };
    let pid_before = pid_of(&before).unwrap();
    let types_before = event_types(&before, "t");
    agent.restart();
    let after = wait_task_running(&agent, &svc, "t");
    // Re-attached, not restarted: the same process, no new event.
    assert_eq!(pid_of(&after).unwrap(), pid_before);
    assert_eq!(event_types(&after, "t"), types_before);
    assert!(std::path::Path::new(&format!("/proc/{pid_before}")).exists());
    // The task state was running before the restart: the runner thread logs its re-attach a
    // moment after the agent answers.
    wait_until(WAIT, "the re-attach logged", || {
        agent.log().contains("re-attached to pid")
    });
    assert_eq!(agent.get_json("/v1/job/keep")["ID"], "keep");
    assert_eq!(alloc(&agent, &batch)["ClientStatus"], "complete");
    assert_eq!(read_log(&agent, &batch, "t", "stdout"), "once\n");
    assert_eq!(read_log(&agent, &svc, "t", "stdout"), "started\n");
    assert_eq!(allocs(&agent, "keep").len(), 1);
    let r = register(&agent, &sh_job("after", "batch", "true"));
    let idx_before = before["ModifyIndex"].as_u64().unwrap();
    assert!(r["Index"].as_u64().unwrap() > idx_before);
}

#[test]
fn misbehaving_tasks_never_hang_or_crash_the_agent() {
    let agent = TestAgent::start(&[]);
    // Leaves children holding its pipes (one in its group, one escaped with setsid).
    register(
        &agent,
        &sh_job(
            "forker",
            "batch",
            "(sleep 30 &); setsid sleep 5 & echo bye; exit 0",
        ),
    );
    // Closes its pipes, then keeps running a little.
    register(
        &agent,
        &sh_job("closer", "batch", "exec >&- 2>&-; sleep 0.2; exit 0"),
    );
    // Exits at once with an error, over and over.
    let mut quick = sh_job("quick", "service", "exit 1");
    quick["Job"]["TaskGroups"][0]["RestartPolicy"] =
        json!({"Attempts": 5, "Interval": 3_600_000_000_000u64, "Delay": 0, "Mode": "fail"});
    register(&agent, &quick);
    // Floods its output.
    register(
        &agent,
        &sh_job("flooder", "batch", "head -c 20000000 /dev/zero; exit 0"),
    );
    for job in ["forker", "closer", "flooder"] {
        let id = first_alloc(&agent, job);
        wait_status(&agent, &id, "complete");
    }
    let forker = first_alloc(&agent, "forker");
    assert_eq!(read_log(&agent, &forker, "t", "stdout"), "bye\n");
    let quick = first_alloc(&agent, "quick");
    let a = wait_status(&agent, &quick, "failed");
    assert_eq!(a["TaskStates"]["t"]["Restarts"], 5);
    assert_eq!(a["TaskStates"]["t"]["Events"].as_array().unwrap().len(), 10);
    assert_eq!(agent.get("/v1/jobs").status, 200);
}

#[test]
fn after_an_agent_and_shim_crash_the_leftover_task_process_is_killed_before_the_restart() {
    let mut agent = TestAgent::start(&[]);
    register(&agent, &sh_job("crash", "service", "sleep 60"));
    let id = first_alloc(&agent, "crash");
    let a = wait_task_running(&agent, &id, "t");
    let pid = events_of(&a, "t", "Started")[0]["Details"]["pid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "task outlives a crashed agent"
    );
    // The shim goes too: nothing can re-attach, and the leftover is killed.
    for (_, shim, _) in live_shims(&agent.data_dir) {
        // The shim this test's agent started.
        kill(shim, 9);
    }
    let data_dir = agent.data_dir.clone();
    let agent2 = TestAgent::start_in(&data_dir, &[]);
    wait_until(WAIT, "leftover killed", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    wait_until(WAIT, "the task started again", || {
        let a = alloc(&agent2, &id);
        let last = events_of(&a, "t", "Started")
            .last()
            .map(|e| e["Details"]["pid"].clone());
        a["TaskStates"]["t"]["State"] == "running" && last.is_some() && last != Some(json!(pid))
    });
    // Only the second agent owns the data dir now.
    agent.data_dir = temp_dir("unused");
}

#[test]
fn args_and_work_dir_are_interpolated() {
    let agent = TestAgent::start(&[]);
    let job = json!({"Job": {"ID": "interp", "Type": "batch", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Env": {"WHERE": "/tmp"},
            "Config": {"command": "/bin/sh", "work_dir": "${env.WHERE}",
                "args": ["-c", "echo \"$0 $1 $(pwd)\"", "${NOMAD_JOB_ID}", "${node.datacenter}"]}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "interp");
    wait_status(&agent, &id, "complete");
    assert_eq!(read_log(&agent, &id, "t", "stdout"), "interp dc1 /tmp\n");
}

#[test]
fn a_failed_task_stops_its_siblings_and_fails_the_alloc() {
    let agent = TestAgent::start(&[]);
    let job = json!({"Job": {"ID": "sib", "Type": "service", "TaskGroups": [{"Name": "g",
    "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
    "Tasks": [
        {"Name": "long", "Driver": "raw_exec", "Config": {"command": "/bin/sleep", "args": ["60"]}},
        {"Name": "bad", "Driver": "raw_exec", "Config": {"command": "/bin/sh", "args": ["-c", "sleep 0.3; exit 2"]}}
    ]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "sib");
    wait_task_running(&agent, &id, "long");
    let started = std::time::Instant::now();
    let a = wait_status(&agent, &id, "failed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "default SIGINT stopped the sibling, no SIGKILL wait"
    );
    assert_eq!(a["TaskStates"]["bad"]["Failed"], true);
    assert_eq!(a["TaskStates"]["long"]["State"], "dead");
    let ev = events_of(&a, "long", "Sibling Task Failed");
    assert_eq!(ev.len(), 1, "{:?}", event_types(&a, "long"));
    assert_eq!(ev[0]["FailedSibling"], "bad");
}
