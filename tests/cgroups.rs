//! Tasks in cgroups, through the real binary with real processes: processes that leave the
//! task's process group (setsid, setsid -f, job control + disown) die with the stop, the memory
//! limit OOM-kills with Nomad's event, limits and cpu weight reach the cgroup files, stats come
//! from the cgroup, a crashed agent's leftovers are killed, and the fallback without cgroups.
//!
//! As root (CI and the development machines) cgroups must be in use; a non-root run cannot
//! write cgroups, so the tests that need them say so and return.

mod common;
mod workloads_helpers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

/// The agent's cgroup mode; panics if a root agent uses none (it must on CI's hosts).
fn cgroups_in_use(agent: &TestAgent) -> bool {
    let mode = agent.get_json("/v1/agent/self")["stats"]["client"]["cgroup_mode"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        ["v2", "hybrid", "v1", "none"].contains(&mode.as_str()),
        "{mode:?}"
    );
    let root = rustix::process::geteuid().is_root();
    if root {
        assert_ne!(mode, "none", "a root agent on this host must use cgroups");
    } else if mode == "none" {
        eprintln!("not root and no writable cgroup: skipping");
        return false;
    }
    true
}

/// A marker no other process on the host has in its command line.
fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("1000.{}{:09}", std::process::id(), nanos)
}

/// Live processes whose command line contains `marker` (zombies have none).
fn marked(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// The marked processes that are `sleep` already (not a shell or `setsid` on its way there:
/// a pid's command line changes at exec, so only these are stable to compare).
fn marked_sleeps(marker: &str) -> Vec<i32> {
    marked(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .collect()
}

fn started_pid(a: &Value, task: &str) -> i32 {
    events_of(a, task, "Started")
        .last()
        .and_then(|e| e["Details"]["pid"].as_str())
        .and_then(|p| p.parse().ok())
        .expect("Started event with a pid")
}

/// The dir of `pid`'s cgroup in the hierarchy holding `controller` (`""`: the v2 one).
fn cgroup_dir(pid: i32, controller: &str) -> Option<PathBuf> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _ = parts.next()?;
        let ctrls = parts.next()?;
        let path = parts.next()?;
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let ok = if controller.is_empty() {
            post[0] == "cgroup2"
        } else {
            post[0] == "cgroup" && post.get(2)?.split(',').any(|c| c == controller)
        };
        (ok && pre[3] == "/").then(|| PathBuf::from(pre[4]))
    })?;
    Some(point.join(path.trim_start_matches('/')))
}

/// The dir holding a v1 `controller`, or the v2 one when the controller is there.
fn controller_dir(pid: i32, controller: &str, v2_file: &str) -> PathBuf {
    if let Some(d) = cgroup_dir(pid, controller) {
        return d;
    }
    let d = cgroup_dir(pid, "").expect("a v2 cgroup");
    assert!(d.join(v2_file).exists(), "{} lacks {v2_file}", d.display());
    d
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn processes_that_leave_the_process_group_die_with_the_stop() {
    let agent = TestAgent::start(&[]);
    if !cgroups_in_use(&agent) {
        return;
    }
    let m = marker();
    let script = format!(
        "setsid sleep {m} & setsid -f sleep {m}; set -m; sleep {m} & disown; echo up; sleep {m}"
    );
    let job = json!({"Job": {"ID": "escape", "Type": "service", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "KillTimeout": 1_000_000_000u64,
            "Config": {"command": "/bin/bash", "args": ["-c", script]}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "escape");
    let a = wait_task_running(&agent, &id, "t");
    wait_until(WAIT, "four sleeps", || marked_sleeps(&m).len() == 4);
    let main = started_pid(&a, "t");
    let pids = marked_sleeps(&m);
    // Three of them left the task's process group; all are in its cgroup.
    let own_cg = read_trim(Path::new(&format!("/proc/{main}/cgroup")));
    assert!(own_cg.contains(&format!("{id}.t")), "{own_cg}");
    for p in &pids {
        assert_eq!(
            read_trim(Path::new(&format!("/proc/{p}/cgroup"))),
            own_cg,
            "pid {p}"
        );
    }
    let dir = cgroup_dir(main, "")
        .or_else(|| cgroup_dir(main, "memory"))
        .unwrap();
    assert!(dir.is_dir());

    let started = Instant::now();
    let r = agent.request("POST", &format!("/v1/allocation/{id}/stop"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let a = wait_status(&agent, &id, "complete");
    // Dead means no process of the task is left, at the moment it is reported. (The service
    // job's replacement allocation runs the same command: its processes are not these.)
    let left: Vec<i32> = marked(&m)
        .into_iter()
        .filter(|p| {
            pids.contains(p)
                || std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                    .is_ok_and(|c| c.contains(&id))
        })
        .collect();
    assert_eq!(left, Vec::<i32>::new(), "left after the stop");
    assert!(started.elapsed() < Duration::from_secs(1 + 5));
    assert_eq!(a["TaskStates"]["t"]["State"], "dead");
    assert!(!dir.exists(), "{} removed", dir.display());

    // The same for a job deregistration.
    let m2 = marker();
    let job = json!({"Job": {"ID": "escape2", "Type": "service", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", format!("setsid -f sleep {m2}; exec sleep {m2}")]}}]}]}});
    register(&agent, &job);
    let id2 = first_alloc(&agent, "escape2");
    wait_task_running(&agent, &id2, "t");
    wait_until(WAIT, "two sleeps", || marked(&m2).len() == 2);
    assert_eq!(
        agent.request("DELETE", "/v1/job/escape2", &[], b"").status,
        200
    );
    wait_status(&agent, &id2, "complete");
    assert_eq!(marked(&m2), Vec::<i32>::new(), "left after deregister");
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn a_task_over_its_memory_limit_is_oom_killed_with_nomads_event_and_restarted_per_policy() {
    let agent = TestAgent::start(&[]);
    if !cgroups_in_use(&agent) {
        return;
    }
    let job = json!({"Job": {"ID": "hog", "Type": "service", "TaskGroups": [{"Name": "g",
        "RestartPolicy": {"Attempts": 1, "Interval": 3_600_000_000_000u64, "Delay": 100_000_000u64, "Mode": "fail"},
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Resources": {"CPU": 100, "MemoryMB": 32},
            "Config": {"command": "/bin/sh", "args": ["-c",
                format!("echo start; exec {} -c \"import time; x = b'x' * (200 << 20); print('survived', flush=True); time.sleep(60)\"", python())]}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "hog");
    let a = wait_status(&agent, &id, "failed");
    let ts = &a["TaskStates"]["t"];
    assert_eq!(ts["Restarts"], 1, "{:?}", event_types(&a, "t"));
    let terms = events_of(&a, "t", "Terminated");
    assert_eq!(terms.len(), 2, "{:?}", event_types(&a, "t"));
    for t in terms {
        assert_eq!(t["ExitCode"], 137, "{t}");
        assert_eq!(t["Signal"], 9, "{t}");
        assert_eq!(t["Details"]["oom_killed"], "true", "{t}");
        assert_eq!(t["Details"]["exit_message"], "OOM Killed", "{t}");
        assert_eq!(t["Message"], "OOM Killed", "{t}");
        assert_eq!(
            t["DisplayMessage"],
            "Exit Code: 137, Signal: 9, Exit Message: \"OOM Killed\""
        );
    }
    let last = ts["Events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["Type"], "Not Restarting");
    let out = read_log(&agent, &id, "t", "stdout");
    assert_eq!(out, "start\nstart\n");
    assert!(agent.log().contains("OOM killed"));

    // An ordinary exit is marked not OOM killed, as Nomad marks it.
    register(&agent, &sh_job("fine", "batch", "exit 0"));
    let fine = first_alloc(&agent, "fine");
    let a = wait_status(&agent, &fine, "complete");
    let t = events_of(&a, "t", "Terminated")[0];
    assert_eq!(t["Details"]["oom_killed"], "false");
    assert_eq!(t["DisplayMessage"], "Exit Code: 0");
}

#[test]
fn resources_reach_the_task_cgroup_as_memory_limits_and_cpu_weight() {
    let agent = TestAgent::start(&[]);
    if !cgroups_in_use(&agent) {
        return;
    }
    let job = json!({"Job": {"ID": "lim", "Type": "service", "TaskGroups": [{"Name": "g",
    "Tasks": [
        {"Name": "soft", "Driver": "raw_exec",
         "Resources": {"CPU": 250, "MemoryMB": 64, "MemoryMaxMB": 128},
         "Config": {"command": "/bin/sleep", "args": ["60"]}},
        {"Name": "plain", "Driver": "raw_exec",
         "Config": {"command": "/bin/sleep", "args": ["60"]}}
    ]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "lim");
    wait_task_running(&agent, &id, "soft");
    let a = wait_task_running(&agent, &id, "plain");
    let check = |task: &str, cpu: i64, hard_mb: u64, soft_mb: u64| {
        let pid = started_pid(&a, task);
        let cpu_dir = controller_dir(pid, "cpu", "cpu.weight");
        if cpu_dir.join("cpu.shares").exists() {
            assert_eq!(read_trim(&cpu_dir.join("cpu.shares")), cpu.to_string());
        } else {
            let weight = 1 + ((cpu - 2) * 9999) / 262_142;
            assert_eq!(read_trim(&cpu_dir.join("cpu.weight")), weight.to_string());
        }
        let mem = controller_dir(pid, "memory", "memory.max");
        if mem.join("memory.limit_in_bytes").exists() {
            assert_eq!(
                read_trim(&mem.join("memory.limit_in_bytes")),
                (hard_mb << 20).to_string()
            );
            if soft_mb > 0 {
                assert_eq!(
                    read_trim(&mem.join("memory.soft_limit_in_bytes")),
                    (soft_mb << 20).to_string()
                );
            }
        } else {
            assert_eq!(
                read_trim(&mem.join("memory.max")),
                (hard_mb << 20).to_string()
            );
            if soft_mb > 0 {
                assert_eq!(
                    read_trim(&mem.join("memory.low")),
                    (soft_mb << 20).to_string()
                );
            }
        }
        assert!(
            mem.display().to_string().contains(&format!("{id}.{task}")),
            "{}",
            mem.display()
        );
    };
    check("soft", 250, 128, 64);
    // Nomad's defaults: CPU 100, MemoryMB 300.
    check("plain", 100, 300, 0);
}

#[test]
fn stats_are_read_from_the_task_cgroup() {
    let agent = TestAgent::start(&[]);
    if !cgroups_in_use(&agent) {
        return;
    }
    let job = json!({"Job": {"ID": "mem", "Type": "service", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/sh",
            "args": ["-c", format!("setsid -f {} -c \"import time; x = b'x' * (100 << 20); print('held', flush=True); time.sleep(60)\"; exec sleep 60", python())]}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "mem");
    wait_until(WAIT, "memory held", || {
        read_log(&agent, &id, "t", "stdout").contains("held")
    });
    let mut last = Value::Null;
    // The holder left the task's session: only the cgroup sees its memory.
    wait_until(WAIT, "cgroup stats to show 100 MB", || {
        last = agent.get_json(&format!("/v1/client/allocation/{id}/stats"));
        last["Tasks"]["t"]["ResourceUsage"]["MemoryStats"]["RSS"]
            .as_u64()
            .unwrap_or(0)
            >= 100 << 20
    });
    let m = &last["Tasks"]["t"]["ResourceUsage"]["MemoryStats"];
    let measured: Vec<&str> = m["Measured"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        measured.contains(&"Cache") && measured.contains(&"Usage"),
        "{m}"
    );
    assert!(m["Usage"].as_u64().unwrap() >= 100 << 20, "{m}");
    assert!(m["RSS"].as_u64().unwrap() < 400 << 20, "{m}");
    let c = &last["Tasks"]["t"]["ResourceUsage"]["CpuStats"];
    assert!(c["Measured"]
        .as_array()
        .unwrap()
        .contains(&json!("Throttled Periods")));
    assert!(
        last["ResourceUsage"]["MemoryStats"]["RSS"]
            .as_u64()
            .unwrap()
            >= 100 << 20
    );
}

#[test]
fn without_cgroups_tasks_run_in_their_process_group_and_the_agent_says_so_once() {
    let dir = temp_dir("nocg");
    let agent = TestAgent::start_with(&dir, &[], &[("NOMADLET_NO_CGROUPS", "1")], None);
    assert_eq!(
        agent.get_json("/v1/agent/self")["stats"]["client"]["cgroup_mode"],
        "none"
    );
    register(
        &agent,
        &sh_job("plain", "batch", "cat /proc/self/cgroup; echo done"),
    );
    let id = first_alloc(&agent, "plain");
    let a = wait_status(&agent, &id, "complete");
    let out = read_log(&agent, &id, "t", "stdout");
    assert!(out.ends_with("done\n"), "{out}");
    assert!(!out.contains("nomadlet"), "{out}");
    assert_eq!(
        events_of(&a, "t", "Terminated")[0]["Details"]["oom_killed"],
        "false"
    );
    let log = agent.log();
    assert_eq!(log.matches("cgroups: not used").count(), 1, "{log}");
    assert!(log.contains("NOMADLET_NO_CGROUPS"), "{log}");

    // With cgroups, the same task is in its own.
    let agent = TestAgent::start(&[]);
    if !cgroups_in_use(&agent) {
        return;
    }
    register(
        &agent,
        &sh_job("incg", "batch", "cat /proc/self/cgroup; echo done"),
    );
    let id = first_alloc(&agent, "incg");
    wait_status(&agent, &id, "complete");
    let out = read_log(&agent, &id, "t", "stdout");
    assert!(out.contains(&format!("nomadlet/{id}.t")), "{out}");
    assert!(!agent.log().contains("cgroups: not used"));
}

#[test]
fn after_an_agent_and_shim_crash_every_process_left_in_the_task_cgroup_is_killed() {
    let mut agent = TestAgent::start(&[]);
    if !cgroups_in_use(&agent) {
        return;
    }
    let m = marker();
    let job = json!({"Job": {"ID": "crash", "Type": "service", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", format!("setsid -f sleep {m}; exec sleep {m}")]}}]}]}});
    register(&agent, &job);
    let id = first_alloc(&agent, "crash");
    wait_task_running(&agent, &id, "t");
    wait_until(WAIT, "two sleeps", || marked_sleeps(&m).len() == 2);
    let old = marked_sleeps(&m);
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(marked_sleeps(&m), old, "tasks outlive a crashed agent");
    // The shim goes too: nothing can re-attach, and everything left is killed.
    for (_, shim, _) in live_shims(&agent.data_dir) {
        // The shim this test's agent started.
        kill(shim, 9);
    }
    let data_dir = agent.data_dir.clone();
    let agent2 = TestAgent::start_in(&data_dir, &[]);
    wait_until(WAIT, "the old processes killed", || {
        let now = marked(&m);
        old.iter().all(|p| !now.contains(p))
    });
    // Restarted as before: running again, two new sleeps, both in the new cgroup.
    wait_until(WAIT, "the task started again", || {
        let a = alloc(&agent2, &id);
        a["TaskStates"]["t"]["State"] == "running" && marked_sleeps(&m).len() == 2
    });
    let a = alloc(&agent2, &id);
    let types = event_types(&a, "t");
    assert!(
        types.ends_with(&["Restarting".to_string(), "Started".to_string()]),
        "{types:?}"
    );
    assert!(agent2
        .log()
        .contains("killing the processes left in its cgroup"));
    drop(agent2);
    wait_until(WAIT, "all gone with the agent's stop", || {
        marked(&m).is_empty()
    });
    // Only the second agent owned the data dir.
    agent.data_dir = temp_dir("unused");
}
