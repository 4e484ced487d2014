//! Task cgroups inside a delegated cgroup v2, as systemd's `Delegate=yes` gives one, through the
//! real binary: the test makes its own cgroup v2 dir, marks it delegated (`trusted.delegate`, as
//! systemd does), starts the agent at its top; the agent moves itself into `<dir>/agent` and its
//! task runs in `<dir>/<alloc>.<task>.scope`. A restarted agent (started in `<dir>/agent`, as
//! `DelegateSubgroup=agent` places it) re-attaches to the same task and finds its cgroup again;
//! stats, the OOM kill and stop still work; everything the test made is removed at the end.
//!
//! As in tests/cgroups.rs: as root (CI and the development machines) cgroup v2 must be mounted
//! and writable; a non-root run cannot write cgroups, says so and returns.

mod common;
mod workloads_helpers;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

/// The cgroup v2 mount point (pure v2 or the unified tree of a hybrid host).
fn v2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let point = pre.split(' ').nth(4)?;
        (post.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Whether v1 hierarchies hold the memory controller (a hybrid host): then the v2 tree has no
/// controllers to enable, and the agent may move itself at its first start.
fn v1_memory() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split_once(" - ").is_some_and(|(_, post)| {
                let f: Vec<&str> = post.split(' ').collect();
                f[0] == "cgroup"
                    && f.get(2)
                        .is_some_and(|o| o.split(',').any(|c| c == "memory"))
            })
        })
}

/// `pid`'s cgroup v2 path (the `0::` line of /proc/<pid>/cgroup).
fn v2_path(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap_or_else(|| panic!("pid {pid} has no v2 cgroup"))
}

fn started_pid(a: &Value, task: &str) -> i32 {
    events_of(a, task, "Started")
        .last()
        .and_then(|e| e["Details"]["pid"].as_str())
        .and_then(|p| p.parse().ok())
        .expect("Started event with a pid")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The test's delegated cgroup: removed (with anything left inside) when dropped, after the
/// agents (declared before them).
struct Delegated {
    dir: PathBuf,
    /// Its path as /proc/<pid>/cgroup shows it.
    rel: String,
}

impl Delegated {
    fn make(mount: &Path) -> Delegated {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("nomadlet-test-delegated-{}-{nanos}", std::process::id());
        let dir = mount.join(&name);
        std::fs::create_dir(&dir).expect("make the test's cgroup");
        rustix::fs::setxattr(
            &dir,
            "trusted.delegate",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("mark it delegated");
        Delegated {
            dir,
            rel: format!("/{name}"),
        }
    }

    /// Remove the test's cgroups (children first); true once nothing is left.
    fn remove(&self) -> bool {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        !self.dir.exists()
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.remove() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Start `nomadlet agent -dev -data-dir <data_dir>` inside the cgroup `cgroup` (it joins it by
/// writing its own pid to `cgroup.procs` before `exec`: same pid).
fn start_in_cgroup(data_dir: &Path, cgroup: &Path, port: u16) -> TestAgent {
    let args: Vec<String> = vec![
        "agent".into(),
        "-dev".into(),
        "-data-dir".into(),
        data_dir.display().to_string(),
        "-http-port".into(),
        port.to_string(),
    ];
    let log_path = data_dir.with_extension(format!("{port}.{}.log", rand_tag()));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$0\" \"$@\"",
            cgroup.display()
        ))
        .arg(bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = TestAgent {
        child: Some(child),
        port,
        data_dir: data_dir.to_path_buf(),
        log_path,
        args,
        env: Vec::new(),
        nofile: None,
        rpc_port: 0,
        serf_port: 0,
        host: "127.0.0.1".into(),
        netns: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30 * 3);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(Ok(Some(st))) = agent.child.as_mut().map(|c| c.try_wait()) {
            panic!("agent exited early ({st}): {}", agent.log());
        }
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The port takes connections before start-up is done; the client (and its cgroups) is.
    wait_until(WAIT, "the agent started", || {
        agent.log().contains("nomadlet agent started")
    });
    agent
}

fn rand_tag() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// The memory fields the stats endpoint says it measured for `task` (cgroup readings add
/// `Cache` and `Usage` to what /proc gives).
fn measured(agent: &TestAgent, id: &str, task: &str) -> Vec<String> {
    let s = agent.get_json(&format!("/v1/client/allocation/{id}/stats"));
    s["Tasks"][task]["ResourceUsage"]["MemoryStats"]["Measured"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn tasks_run_inside_the_delegated_cgroup_and_survive_an_agent_restart_there() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot write cgroups, skipping");
        return;
    }
    let Some(mount) = v2_mount() else {
        eprintln!("no cgroup v2 mounted, skipping");
        return;
    };
    let deleg = Delegated::make(&mount);
    let leaf = deleg.dir.join("agent");
    let data_dir = temp_dir("delegated");
    let port = free_port();
    // A first start at the top of the delegated cgroup moves itself into its `agent` leaf
    // where no controller has to be enabled there (hybrid hosts). Where one has (pure v2), an
    // agent started at the top keeps the root-level layout (a restart could not re-enter the
    // cgroup; unit-tested in sys::cgroup), so there it starts in the leaf, as
    // DelegateSubgroup=agent places it.
    let moves_itself = v1_memory()
        || !std::fs::read_to_string(deleg.dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| ["memory", "cpu", "pids"].contains(&c));
    let first = if moves_itself {
        deleg.dir.clone()
    } else {
        std::fs::create_dir(&leaf).expect("make the agent leaf");
        leaf.clone()
    };
    let mut a1 = start_in_cgroup(&data_dir, &first, port);
    let a1_pid = a1.pid() as i32;
    assert_eq!(
        v2_path(a1_pid),
        format!("{}/agent", deleg.rel),
        "{}",
        a1.log()
    );
    assert!(
        a1.log().contains("is delegated to the agent"),
        "{}",
        a1.log()
    );

    let job = json!({"Job": {"ID": "deleg", "Type": "service", "TaskGroups": [{"Name": "g",
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", "echo up; exec sleep 300"]}}]}]}});
    register(&a1, &job);
    let id = first_alloc(&a1, "deleg");
    let a = wait_task_running(&a1, &id, "t");
    let pid = started_pid(&a, "t");
    let task_cg = v2_path(pid);
    assert_eq!(task_cg, format!("{}/{id}.t.scope", deleg.rel));
    wait_until(WAIT, "stats read from the task's cgroup", || {
        measured(&a1, &id, "t").iter().any(|m| m == "Cache")
    });

    // The agent stops (tasks outlive it) and a new one starts in the `agent` leaf, as systemd
    // places it with DelegateSubgroup=agent: it re-attaches; nothing moved or was killed.
    assert!(a1.stop().success());
    a1.data_dir = temp_dir("unused");
    assert!(alive(pid), "the task outlives the agent");
    let a2 = start_in_cgroup(&data_dir, &leaf, port);
    assert_eq!(v2_path(a2.pid() as i32), format!("{}/agent", deleg.rel));
    assert!(
        a2.log().contains("is delegated to the agent"),
        "{}",
        a2.log()
    );
    wait_until(WAIT, "re-attached", || {
        a2.log().contains(&format!("re-attached to pid {pid}"))
    });
    let a = alloc(&a2, &id);
    assert_eq!(a["TaskStates"]["t"]["State"], "running");
    assert_eq!(started_pid(&a, "t"), pid, "not restarted");
    assert_eq!(v2_path(pid), task_cg, "the task stayed in its cgroup");
    assert!(!a2.log().contains("killing the processes left"));
    // Its cgroup was found again: stats still come from it.
    wait_until(WAIT, "stats after the restart", || {
        measured(&a2, &id, "t").iter().any(|m| m == "Cache")
    });

    // A new task goes inside the delegated cgroup, and its memory limit still OOM-kills.
    let hog = json!({"Job": {"ID": "hog", "Type": "batch", "TaskGroups": [{"Name": "g",
        "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
        "Tasks": [{"Name": "h", "Driver": "raw_exec", "Resources": {"CPU": 100, "MemoryMB": 32},
            "Config": {"command": "/bin/sh", "args": ["-c",
                format!("echo parent=$NOMAD_PARENT_CGROUP; cat /proc/self/cgroup; exec {} -c \"x = b'x' * (200 << 20); print('survived')\"", python())]}}]}]}});
    register(&a2, &hog);
    let hog_id = first_alloc(&a2, "hog");
    let h = wait_status(&a2, &hog_id, "failed");
    let term = events_of(&h, "h", "Terminated");
    assert_eq!(term[0]["Details"]["oom_killed"], "true", "{h}");
    let out = read_log(&a2, &hog_id, "h", "stdout");
    assert!(
        out.contains(&format!("0::{}/{hog_id}.h.scope\n", deleg.rel)),
        "{out}"
    );
    assert!(!out.contains("survived"), "{out}");
    assert!(out.starts_with(&format!("parent={}\n", deleg.rel)), "{out}");

    // Stop kills the task and removes its cgroup, wherever it was made.
    let r = a2.request("POST", &format!("/v1/allocation/{id}/stop"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_status(&a2, &id, "complete");
    wait_until(WAIT, "the task gone", || !alive(pid));
    let cg_dir = mount.join(task_cg.trim_start_matches('/'));
    wait_until(WAIT, "its cgroup removed", || !cg_dir.exists());
    assert!(!deleg.dir.join(format!("{hog_id}.h.scope")).exists());

    // Everything the test made goes: the agent, then the test's cgroups.
    drop(a2);
    wait_until(WAIT, "the test's cgroups removed", || deleg.remove());
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Every cgroup mount point (v1 hierarchies and the v2 one).
fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let point = pre.split(' ').nth(4)?;
            ["cgroup", "cgroup2"]
                .contains(&fstype)
                .then(|| PathBuf::from(point))
        })
        .collect()
}

#[test]
fn client_cgroup_parent_places_task_cgroups_under_it_in_every_hierarchy() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot write cgroups, skipping");
        return;
    }
    let parent = format!("nomadlet-test-parent-{}-{}", std::process::id(), rand_tag());
    let dir = temp_dir("cgparent");
    let config = dir.with_extension("hcl");
    std::fs::write(
        &config,
        format!("client {{\n  cgroup_parent = \"/{parent}\"\n}}\n"),
    )
    .unwrap();
    let agent = TestAgent::start_with(&dir, &["-config", config.to_str().unwrap()], &[], None);
    register(
        &agent,
        &sh_job(
            "under",
            "batch",
            "echo parent=$NOMAD_PARENT_CGROUP; cat /proc/self/cgroup",
        ),
    );
    let id = first_alloc(&agent, "under");
    wait_status(&agent, &id, "complete");
    let out = read_log(&agent, &id, "t", "stdout");
    assert!(out.starts_with(&format!("parent=/{parent}\n")), "{out}");
    // Every hierarchy line (but those nomadlet does not use) names the parent, none the
    // agent's own cgroup.
    let mut lines = 0;
    for l in out.lines().skip(1) {
        let path = l.splitn(3, ':').nth(2).unwrap_or("");
        if path.contains(&id) {
            assert!(path.starts_with(&format!("/{parent}/{id}.t")), "{l}");
            lines += 1;
        }
    }
    assert!(lines >= 1, "{out}");
    drop(agent);
    let _ = std::fs::remove_file(&config);
    // The parent cgroups the agent made go with the test.
    for m in cgroup_mounts() {
        let p = m.join(&parent);
        if p.exists() {
            wait_until(WAIT, "the parent cgroup removed", || {
                std::fs::remove_dir(&p).is_ok() || !p.exists()
            });
        }
    }
}
