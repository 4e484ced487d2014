//! Task logs through the real binary: Nomad's rotation keeps the exact tail of 50 MB of fast
//! output, and a task that swaps its log files for symlinks or FIFOs (Nomad CVE-2026-6959)
//! never makes the agent write, truncate, unlink or read through them; an idle task costs
//! two threads.

mod common;
mod workloads_helpers;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

fn log_job(id: &str, script: &str, max_files: u64, meta: Value) -> Value {
    json!({"Job": {"ID": id, "Type": "batch", "Meta": meta, "TaskGroups": [{"Name": "g",
        "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "LogConfig": {"MaxFiles": max_files, "MaxFileSizeMB": 1},
            "Config": {"command": "/bin/sh", "args": ["-c", script]}}]}]}})
}

/// `(index, path)` of a stream's retained files, oldest first.
fn retained(logs: &Path, base: &str) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(logs)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().ok()?;
            let idx = name.strip_prefix(base)?.strip_prefix('.')?.parse().ok()?;
            Some((idx, e.path()))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn rotation_keeps_the_exact_tail_of_50_mb_of_fast_output() {
    let agent = TestAgent::start(&[]);
    let script = "head -c 52428800 /dev/urandom | tee \"$NOMAD_TASK_DIR/written.bin\"";
    register(&agent, &log_job("flood", script, 5, json!({})));
    let id = first_alloc(&agent, "flood");
    wait_status(&agent, &id, "complete");
    let dir = alloc_dir(&agent, &id);
    let written = std::fs::read(dir.join("t/local/written.bin")).unwrap();
    assert_eq!(written.len(), 52_428_800);
    let files = retained(&dir.join("alloc/logs"), "t.stdout");
    let indexes: Vec<u64> = files.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indexes,
        [45, 46, 47, 48, 49],
        "50 full 1 MiB files: indexes grow, oldest deleted"
    );
    let mut kept = Vec::new();
    for (_, p) in &files {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        kept.extend(bytes);
    }
    assert!(
        kept == written[written.len() - kept.len()..],
        "retained logs are the byte-exact tail"
    );
}

#[test]
fn disabled_logs_write_no_files() {
    let agent = TestAgent::start(&[]);
    let mut job = log_job("quiet", "echo nothing-to-see", 2, json!({}));
    job["Job"]["TaskGroups"][0]["Tasks"][0]["LogConfig"]["Disabled"] = json!(true);
    register(&agent, &job);
    let id = first_alloc(&agent, "quiet");
    wait_status(&agent, &id, "complete");
    assert!(retained(&alloc_dir(&agent, &id).join("alloc/logs"), "t.stdout").is_empty());
}

fn victim(tag: &str, text: &str) -> PathBuf {
    let p = temp_dir(tag).join("victim.txt");
    std::fs::write(&p, text).unwrap();
    p
}

/// The task swaps its current log file for a symlink, plants symlinks and a FIFO at the next
/// rotation targets (one of them pointing into another alloc's logs), then writes 3 MiB.
#[test]
fn cve_2026_6959_swapped_log_files_are_never_followed() {
    let agent = TestAgent::start(&[]);
    register(&agent, &sh_job("other", "batch", "echo other-alloc-data"));
    let other = first_alloc(&agent, "other");
    wait_status(&agent, &other, "complete");
    let other_log = alloc_dir(&agent, &other).join("alloc/logs/t.stdout.0");
    assert_eq!(
        std::fs::read_to_string(&other_log).unwrap(),
        "other-alloc-data\n"
    );

    let etc_like = victim("etc", "root:x:0:0:precious\n");
    let script = r#"
cd "$NOMAD_ALLOC_DIR/logs"
echo first-line
sleep 0.5
rm -f t.stdout.0 && ln -s "$NOMAD_META_v1" t.stdout.0
ln -s "$NOMAD_META_v1" t.stdout.1
mkfifo t.stdout.2
ln -s "$NOMAD_META_v2" t.stdout.3
head -c 3145728 /dev/zero
echo done-writing
"#;
    let meta = json!({"v1": etc_like.display().to_string(), "v2": other_log.display().to_string()});
    register(&agent, &log_job("attack", script, 3, meta));
    let id = first_alloc(&agent, "attack");
    let a = wait_status(&agent, &id, "complete");
    assert_eq!(events_of(&a, "t", "Terminated")[0]["ExitCode"], 0);

    assert_eq!(
        std::fs::read_to_string(&etc_like).unwrap(),
        "root:x:0:0:precious\n"
    );
    assert_eq!(
        std::fs::read_to_string(&other_log).unwrap(),
        "other-alloc-data\n"
    );
    let logs = alloc_dir(&agent, &id).join("alloc/logs");
    for (_, p) in retained(&logs, "t.stdout") {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.file_type().is_file() {
            assert!(md.len() <= 1 << 20);
        }
    }
    // The output went on in fresh files past the planted names.
    let regular: Vec<(u64, PathBuf)> = retained(&logs, "t.stdout")
        .into_iter()
        .filter(|(_, p)| std::fs::symlink_metadata(p).unwrap().file_type().is_file())
        .collect();
    assert!(regular.iter().all(|(i, _)| *i >= 4), "{regular:?}");
    let last = std::fs::read_to_string(&regular.last().unwrap().1).unwrap();
    assert!(last.ends_with("done-writing\n"));
    // The agent is fine and answers.
    assert_eq!(agent.get("/v1/jobs").status, 200);
}

/// The oldest file, due for deletion, is swapped for a symlink to a file the task wants gone:
/// the agent removes the link, never the target.
#[test]
fn cve_2026_6959_purging_a_swapped_oldest_file_never_unlinks_the_target() {
    let agent = TestAgent::start(&[]);
    let target = victim("purge", "keep me\n");
    let script = r#"
cd "$NOMAD_ALLOC_DIR/logs"
echo x
sleep 0.5
rm -f t.stdout.0 && ln -s "$NOMAD_META_v1" t.stdout.0
head -c 2097152 /dev/zero
"#;
    register(
        &agent,
        &log_job(
            "purge",
            script,
            2,
            json!({"v1": target.display().to_string()}),
        ),
    );
    let id = first_alloc(&agent, "purge");
    wait_status(&agent, &id, "complete");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    let logs = alloc_dir(&agent, &id).join("alloc/logs");
    assert!(
        std::fs::symlink_metadata(logs.join("t.stdout.0")).is_err(),
        "the link itself was purged"
    );
    assert_eq!(retained(&logs, "t.stdout").len(), 2);
}

/// A FIFO that the task itself reads from, planted as the next rotation target: the agent's
/// open succeeds but fstat refuses it, so the task's reader gets nothing.
#[test]
fn cve_2026_6959_a_fifo_with_a_reader_is_refused_by_fstat() {
    let agent = TestAgent::start(&[]);
    let script = r#"
cd "$NOMAD_ALLOC_DIR/logs"
mkfifo t.stdout.1
(timeout 5 cat t.stdout.1 > "$NOMAD_TASK_DIR/stolen.bin") &
sleep 0.3
head -c 1572864 /dev/zero
sleep 0.5
kill %1 2>/dev/null
wait
"#;
    register(&agent, &log_job("fifo", script, 3, json!({})));
    let id = first_alloc(&agent, "fifo");
    wait_status(&agent, &id, "complete");
    let stolen = alloc_dir(&agent, &id).join("t/local/stolen.bin");
    let len = std::fs::metadata(&stolen).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 0, "nothing was written into the FIFO");
    let logs = alloc_dir(&agent, &id).join("alloc/logs");
    let files: Vec<(u64, u64)> = retained(&logs, "t.stdout")
        .iter()
        .map(|(i, p)| (*i, std::fs::symlink_metadata(p).unwrap().len()))
        .collect();
    assert_eq!(
        files,
        [(0, 1 << 20), (1, 0), (2, 524_288)],
        "{}",
        agent.log()
    );
}

/// Threads of the agent process, from `/proc/<pid>/status`.
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_idle_task_costs_at_most_two_threads() {
    // Its runner and ONE log pump for stdout and stderr; every task's api.sock is polled by
    // one shared acceptor (a pump per stream and an acceptor per socket made it four).
    const TASKS: usize = 4;
    const PER_TASK: usize = 2;
    let agent = TestAgent::start(&[]);
    let pid = agent.pid();
    let mut base = 0;
    wait_until(WAIT, "a stable idle thread count", || {
        let a = threads(pid);
        std::thread::sleep(std::time::Duration::from_millis(300));
        base = threads(pid);
        a == base
    });
    let job = json!({"Job": {"ID": "idle", "Type": "service", "TaskGroups": [{"Name": "g",
        "Count": TASKS, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sleep", "args": ["600"]}}]}]}});
    register(&agent, &job);
    wait_until(WAIT, "every task running", || {
        let a = allocs(&agent, "idle");
        a.len() == TASKS && a.iter().all(|x| x["TaskStates"]["t"]["State"] == "running")
    });
    let mut now = 0;
    wait_until(WAIT, "a stable thread count with the tasks", || {
        let a = threads(pid);
        std::thread::sleep(std::time::Duration::from_millis(300));
        now = threads(pid);
        a == now && now >= base + TASKS
    });
    // `+ 1`: the shared acceptor of the task sockets, started with the first one.
    assert!(
        now - base <= TASKS * PER_TASK + 1,
        "{TASKS} idle tasks added {} threads (base {base})",
        now - base
    );
}
