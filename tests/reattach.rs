//! Tasks outlive the agent: after SIGTERM or `kill -9` the task keeps its pid and the next
//! agent re-attaches (state, stats, signal, restart, stop, logs with every line exactly once,
//! a follow stream resumed from its offset); a pending restart delay survives; `-dev`'s
//! temporary data dir and `drain_on_shutdown` stop tasks instead; the agent log says what
//! happened to each task.

mod common;
mod fs_util;
mod workloads_helpers;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fs_util::Stream;
use serde_json::{json, Value};
use workloads_helpers::*;

/// A counter line every ~50 ms.
const COUNTER: &str = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done";

fn started_pid(a: &Value) -> i32 {
    events_of(a, "t", "Started")
        .last()
        .and_then(|e| e["Details"]["pid"].as_str())
        .and_then(|p| p.parse().ok())
        .expect("Started event with a pid")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The counter's lines, checked to be 0, 1, 2, … with no gap and no duplicate; returns how
/// many there are.
fn check_counter(text: &str) -> usize {
    let complete = &text[..text.rfind('\n').map(|i| i + 1).unwrap_or(0)];
    for (i, line) in complete.lines().enumerate() {
        assert_eq!(
            line,
            i.to_string(),
            "line {i} of the counter's log is {line:?} (a gap or a duplicate)"
        );
    }
    complete.lines().count()
}

fn line_count(agent: &TestAgent, id: &str) -> usize {
    check_counter(&read_log(agent, id, "t", "stdout"))
}

/// Lines the counter wrote while no agent ran: read the file directly.
fn file_lines(data_dir: &Path, id: &str) -> usize {
    let p = data_dir.join(format!("alloc/{id}/alloc/logs/t.stdout.0"));
    check_counter(&std::fs::read_to_string(p).unwrap_or_default())
}

fn kill_9(agent: &mut TestAgent) {
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Everything survives SIGTERM (or `kill -9` when `crash`): same pid, logs complete, the
/// follow stream resumes, and the new agent can signal, restart and stop the task.
fn survives(crash: bool) {
    let mut agent = TestAgent::start(&[]);
    let job = if crash { "counter-crash" } else { "counter" };
    register(&agent, &sh_job(job, "service", COUNTER));
    let id = first_alloc(&agent, job);
    let before = wait_task_running(&agent, &id, "t");
    let pid = started_pid(&before);
    let types = event_types(&before, "t");
    let url = format!("/v1/client/fs/logs/{id}?task=t&type=stdout&follow=true&plain=true");
    wait_until(WAIT, "first lines", || line_count(&agent, &id) >= 5);
    let mut follow = Stream::open(&agent, &url);
    assert_eq!(follow.status, 200);
    assert!(follow.read_until(WAIT, |b| b.len() >= 10));

    if crash {
        kill_9(&mut agent);
    } else {
        assert!(agent.stop().success());
    }
    // The stream ends with the agent; what it got is a clean prefix of the counter.
    follow.read_until_eof(WAIT);
    let got = follow.body.clone();
    let n_got = check_counter(&String::from_utf8_lossy(&got));
    // The task keeps running and its shim keeps writing while no agent runs.
    assert!(alive(pid), "the task outlived the agent");
    assert_eq!(live_shims(&agent.data_dir).len(), 1);
    let n_down = file_lines(&agent.data_dir, &id);
    wait_until(WAIT, "lines written with no agent", || {
        file_lines(&agent.data_dir, &id) >= n_down + 5
    });

    agent.restart_after_stop();
    let after = wait_task_running(&agent, &id, "t");
    assert_eq!(started_pid(&after), pid, "re-attached, not restarted");
    assert_eq!(event_types(&after, "t"), types, "no event for a re-attach");
    // The task's state was already `running` before the restart, so the wait above can end
    // before the runner re-attached and logged it: poll for the line.
    wait_until(WAIT, "the re-attach logged", || {
        agent.log().contains("re-attached to pid")
    });
    // The follow stream resumes from the byte it had: the rest, exactly once.
    let mut resumed = Stream::open(&agent, &format!("{url}&origin=start&offset={}", got.len()));
    assert_eq!(resumed.status, 200);
    assert!(resumed.read_until(WAIT, |b| b.len() >= 20));
    let mut joined = got.clone();
    joined.extend_from_slice(&resumed.body);
    assert!(check_counter(&String::from_utf8_lossy(&joined)) > n_got);
    // Stats come from the re-attached task.
    wait_until(WAIT, "stats of the re-attached task", || {
        let s = agent.get_json(&format!("/v1/client/allocation/{id}/stats"));
        s["Tasks"]["t"]["ResourceUsage"]["MemoryStats"]["RSS"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    // Signal reaches it (SIGSTOP/SIGCONT: observable in /proc, harmless).
    let signal = |sig: &str| {
        let r = agent.request(
            "POST",
            &format!("/v1/client/allocation/{id}/signal"),
            &[],
            format!(r#"{{"Signal":"{sig}","Task":"t"}}"#).as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    signal("SIGSTOP");
    wait_until(WAIT, "the task stopped by SIGSTOP", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") T "))
    });
    signal("SIGCONT");
    wait_until(WAIT, "the task running again", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") T "))
    });
    // Every line exactly once across the restart.
    let n = line_count(&agent, &id);
    assert!(n > n_down, "{n} lines");
    // Restart: a new process, the log goes on.
    let r = agent.request(
        "POST",
        &format!("/v1/client/allocation/{id}/restart"),
        &[],
        br#"{"TaskName":"t"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "restarted", || {
        let a = alloc(&agent, &id);
        a["TaskStates"]["t"]["Restarts"] == 1 && a["TaskStates"]["t"]["State"] == "running"
    });
    let a = alloc(&agent, &id);
    let new_pid = started_pid(&a);
    assert_ne!(new_pid, pid);
    wait_until(WAIT, "the old process gone", || !alive(pid));
    // Stop: dead, no process and no shim left.
    assert_eq!(
        agent
            .request("DELETE", &format!("/v1/job/{job}"), &[], b"")
            .status,
        200
    );
    wait_until(WAIT, "task dead", || {
        alloc(&agent, &id)["TaskStates"]["t"]["State"] == "dead"
    });
    assert!(!alive(new_pid));
    wait_until(WAIT, "no shim left", || {
        live_shims(&agent.data_dir).is_empty()
    });
}

#[test]
fn after_sigterm_the_task_keeps_running_and_the_next_agent_reattaches() {
    survives(false);
}

#[test]
fn after_kill_9_the_task_keeps_running_and_the_next_agent_reattaches() {
    survives(true);
}

#[test]
fn a_restart_delay_survives_an_agent_restart_and_restarts_once() {
    let mut agent = TestAgent::start(&[]);
    let mut job = sh_job(
        "delayed",
        "service",
        "if [ -f \"$NOMAD_TASK_DIR/ran\" ]; then echo second; exec sleep 60; fi; touch \"$NOMAD_TASK_DIR/ran\"; echo first; exit 1",
    );
    job["Job"]["TaskGroups"][0]["RestartPolicy"] = json!({"Attempts": 3, "Interval": 3_600_000_000_000u64, "Delay": 3_000_000_000u64, "Mode": "fail"});
    register(&agent, &job);
    let id = first_alloc(&agent, "delayed");
    wait_until(WAIT, "the restart delay", || {
        event_types(&alloc(&agent, &id), "t")
            .last()
            .map(String::as_str)
            == Some("Restarting")
    });
    let a = alloc(&agent, &id);
    let restarting_at = events_of(&a, "t", "Restarting")[0]["Time"]
        .as_i64()
        .unwrap();
    assert!(agent.stop().success());
    agent.restart_after_stop();
    let a = wait_task_running(&agent, &id, "t");
    let started = events_of(&a, "t", "Started");
    assert_eq!(started.len(), 2, "{:?}", event_types(&a, "t"));
    let second_at = started[1]["Time"].as_i64().unwrap();
    assert!(
        second_at >= restarting_at + 2_900_000_000,
        "started {} ms after the delay began",
        (second_at - restarting_at) / 1_000_000
    );
    assert_eq!(a["TaskStates"]["t"]["Restarts"], 1);
    assert_eq!(events_of(&a, "t", "Restarting").len(), 1);
    let pid = started_pid(&a);
    // Not twice: a moment later it still is the one process.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = alloc(&agent, &id);
    assert_eq!(started_pid(&a), pid);
    assert_eq!(events_of(&a, "t", "Started").len(), 2);
    assert_eq!(read_log(&agent, &id, "t", "stdout"), "first\nsecond\n");
}

#[test]
fn the_agent_log_says_what_happened_to_each_task() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("flaky", "service", "exit 3");
    job["Job"]["TaskGroups"][0]["RestartPolicy"] =
        json!({"Attempts": 1, "Interval": 3_600_000_000_000u64, "Delay": 0, "Mode": "fail"});
    register(&agent, &job);
    let id = first_alloc(&agent, "flaky");
    wait_status(&agent, &id, "failed");
    register(&agent, &sh_job("calm", "service", "exec sleep 60"));
    let calm = first_alloc(&agent, "calm");
    wait_task_running(&agent, &calm, "t");
    assert_eq!(
        agent.request("DELETE", "/v1/job/calm", &[], b"").status,
        200
    );
    wait_until(WAIT, "calm dead", || {
        alloc(&agent, &calm)["TaskStates"]["t"]["State"] == "dead"
    });
    let log = agent.log();
    let has = |alloc: &str, what: &str| {
        log.lines()
            .any(|l| l.contains("INFO") && l.contains(&format!("alloc {alloc} task t: {what}")))
    };
    for what in [
        "Received: Task received by client",
        "Started: Task started by client",
        "exited: code 3, signal 0",
        "restarting in 0s (Restart within policy)",
        "not restarting: Exceeded allowed attempts 1",
    ] {
        assert!(has(&id, what), "no {what:?} line in:\n{log}");
    }
    for what in [
        "Killing:",
        "exited: code 130, signal 2",
        "Killed: Task successfully killed",
    ] {
        assert!(has(&calm, what), "no {what:?} line in:\n{log}");
    }
}

/// A `-dev` agent without `-data-dir` removes its data dir at exit: nothing could re-attach,
/// so its tasks are stopped.
#[test]
fn a_dev_agent_with_a_temporary_data_dir_stops_its_tasks() {
    let port = free_port();
    let log = temp_dir("devlog").join("agent.log");
    let mut child = std::process::Command::new(bin())
        .args(["agent", "-dev", "-http-port", &port.to_string()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let req = |method: &str, path: &str, body: &[u8]| {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        exchange(s, &build_request(method, path, &[], body))
    };
    wait_until(WAIT, "dev agent to listen", || {
        req("GET", "/v1/agent/health", b"").is_ok()
    });
    let job = sh_job("devtask", "service", "exec sleep 60");
    assert_eq!(
        req("PUT", "/v1/jobs", job.to_string().as_bytes())
            .unwrap()
            .status,
        200
    );
    let mut pid = 0;
    wait_until(WAIT, "the task running", || {
        let Ok(r) = req("GET", "/v1/job/devtask/allocations", b"") else {
            return false;
        };
        let Some(id) = r.json()[0]["ID"].as_str().map(str::to_string) else {
            return false;
        };
        let a = req("GET", &format!("/v1/allocation/{id}"), b"")
            .unwrap()
            .json();
        if a["TaskStates"]["t"]["State"] != "running" {
            return false;
        }
        pid = started_pid(&a);
        true
    });
    assert!(alive(pid));
    // Our own child.
    kill(child.id() as i32, libc::SIGTERM);
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "dev agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "a -dev agent's task outlived it");
    let _ = std::fs::remove_dir_all(log.parent().unwrap());
}

/// `leave_on_terminate` with `client.drain_on_shutdown`: SIGTERM stops the allocations
/// before the agent exits, a task ignoring its KillSignal getting SIGKILL at the drain's
/// deadline rather than after its own 60 s kill_timeout.
#[test]
fn drain_on_shutdown_stops_tasks_when_the_agent_leaves() {
    let cfg = temp_dir("draincfg").join("agent.hcl");
    std::fs::write(
        &cfg,
        "leave_on_terminate = true\nclient {\n  drain_on_shutdown {\n    deadline = \"1s\"\n    ignore_system_jobs = false\n  }\n}\n",
    )
    .unwrap();
    let mut agent = TestAgent::start(&["-config", cfg.to_str().unwrap()]);
    let mut job = sh_job(
        "drained",
        "service",
        "trap '' INT; echo ready; while :; do sleep 0.05; done",
    );
    job["Job"]["TaskGroups"][0]["Tasks"][0]["KillTimeout"] = json!(60_000_000_000u64);
    register(&agent, &job);
    let id = first_alloc(&agent, "drained");
    let pid = started_pid(&wait_task_running(&agent, &id, "t"));
    wait_until(WAIT, "the trap set", || {
        read_log(&agent, &id, "t", "stdout").contains("ready")
    });
    let t0 = Instant::now();
    assert!(agent.stop().success());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the drain took {:?}",
        t0.elapsed()
    );
    assert!(!alive(pid), "a drained task outlived the agent");
    assert!(agent.log().contains("draining"), "{}", agent.log());
    assert!(live_shims(&agent.data_dir).is_empty());
    // Not left running, so the next agent starts it again.
    agent.restart_after_stop();
    let a = wait_task_running(&agent, &id, "t");
    assert_ne!(started_pid(&a), pid);
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}

/// A job stopped while its task ignores KillSignal, then the agent crashes mid-kill: the
/// next agent finds the alloc stopped and the task still running under its shim, and kills
/// it before recording it dead.
#[test]
fn a_task_stopped_while_the_agent_crashed_is_killed_by_the_next_agent() {
    let mut agent = TestAgent::start(&[]);
    let mut job = sh_job(
        "orphan",
        "service",
        "trap '' INT; echo ready; while :; do sleep 0.05; done",
    );
    job["Job"]["TaskGroups"][0]["Tasks"][0]["KillTimeout"] = json!(60_000_000_000u64);
    register(&agent, &job);
    let id = first_alloc(&agent, "orphan");
    let pid = started_pid(&wait_task_running(&agent, &id, "t"));
    wait_until(WAIT, "the trap set", || {
        read_log(&agent, &id, "t", "stdout").contains("ready")
    });
    assert_eq!(
        agent.request("DELETE", "/v1/job/orphan", &[], b"").status,
        200
    );
    wait_until(WAIT, "the Killing event", || {
        !events_of(&alloc(&agent, &id), "t", "Killing").is_empty()
    });
    kill_9(&mut agent);
    assert!(alive(pid), "the task ignores SIGINT and outlives the crash");
    agent.restart_after_stop();
    wait_until(WAIT, "the orphan killed", || !alive(pid));
    wait_until(WAIT, "recorded dead", || {
        alloc(&agent, &id)["TaskStates"]["t"]["State"] == "dead"
    });
    assert!(live_shims(&agent.data_dir).is_empty());
    assert!(agent
        .log()
        .contains("killing the task a previous agent left running"));
}

/// The shim is small: one thread, a few MiB resident; the agent keeps one thread per task.
#[test]
fn a_shim_is_one_small_thread_and_the_agent_keeps_one_thread_per_task() {
    let agent = TestAgent::start(&[]);
    register(&agent, &sh_job("small", "service", "exec sleep 60"));
    let id = first_alloc(&agent, "small");
    wait_task_running(&agent, &id, "t");
    let shims = live_shims(&agent.data_dir);
    assert_eq!(shims.len(), 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", shims[0].1)).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(field("Threads:"), 1, "{status}");
    // What a task costs is the shim's private memory: its code pages are the agent's binary,
    // shared in the page cache (a debug build's RSS grows with the binary, not with the shim).
    let rss_kib = field("VmRSS:");
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", shims[0].1)).unwrap();
    let private_kib: u64 = rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    eprintln!("shim VmRSS {rss_kib} KiB, private {private_kib} KiB");
    assert!(rss_kib > 0, "shim VmRSS {rss_kib} KiB");
    assert!(
        private_kib > 0 && private_kib < 4 * 1024,
        "shim private memory {private_kib} KiB\n{rollup}"
    );
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("task-") || c.starts_with("logs-"))
        })
        .count();
    assert_eq!(tasks, 1, "threads of the agent for one task");
}
