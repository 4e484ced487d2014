//! Durability through the real binary: on a full disk (a small tmpfs as the data dir) every
//! write fails with a 500 and changes nothing visible, and succeeds once space is freed; temp
//! files of interrupted writes are swept at start; `kill -9` amid writes loses no
//! acknowledged write.

mod common;
mod workloads_helpers;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

/// Size of the tmpfs data dir: room for the agent's state and one quiet task.
const TMPFS_SIZE: &str = "size=16m";

/// At most this many small writes use up the free space inside the state store's file.
const MAX_PROBES: usize = 500;

/// A tmpfs mounted at a short dir, and the agent running on it. Drop kills the agent first,
/// then unmounts and removes the mount point.
struct FullDiskRig {
    dir: PathBuf,
    agent: Option<TestAgent>,
}

impl FullDiskRig {
    /// Mount the tmpfs; `None` (with a printed reason) where mounting is not allowed.
    fn mount() -> Option<FullDiskRig> {
        let dir = short_dir();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(FullDiskRig { dir, agent: None }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs ({}); the full-disk test needs root",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                let _ = std::fs::remove_dir(&dir);
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    fn agent(&self) -> &TestAgent {
        self.agent.as_ref().expect("agent started")
    }

    /// Fill the tmpfs to the last byte with a file of our own; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        let small = vec![0x5a_u8; 512];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // The last partial page: small writes until nothing fits.
        loop {
            match f.write(&small) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let probe = std::fs::write(self.dir.join("probe"), b"x");
        assert!(probe.is_err(), "the tmpfs is full");
        path
    }
}

impl Drop for FullDiskRig {
    fn drop(&mut self) {
        drop(self.agent.take());
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn call(agent: &TestAgent, method: &str, path: &str, token: &str, body: &str) -> Response {
    agent.request(method, path, &[("X-Nomad-Token", token)], body.as_bytes())
}

fn get_with(agent: &TestAgent, path: &str, token: &str) -> Response {
    call(agent, "GET", path, token, "")
}

/// What the failed writes must leave as it was.
#[derive(Debug, PartialEq)]
struct Views {
    jobs: Value,
    jobs_index: String,
    job: Value,
    allocs: Value,
    policies: Value,
    metadata: Value,
}

fn views(agent: &TestAgent, token: &str) -> Views {
    let jobs = get_with(agent, "/v1/jobs", token);
    assert_eq!(jobs.status, 200, "{}", jobs.text());
    let ok = |p: &str| {
        let r = get_with(agent, p, token);
        assert_eq!(r.status, 200, "GET {p}: {}", r.text());
        r.json()
    };
    Views {
        jobs_index: jobs.header("X-Nomad-Index").unwrap_or("").to_string(),
        jobs: jobs.json(),
        job: ok("/v1/job/keep"),
        allocs: ok("/v1/job/keep/allocations"),
        policies: ok("/v1/acl/policies"),
        metadata: ok("/v1/client/metadata"),
    }
}

/// Alive and not a zombie.
fn pid_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn assert_5xx(r: &Response, what: &str) {
    assert!(
        (500..600).contains(&r.status),
        "{what} on a full disk: {} {}",
        r.status,
        r.text()
    );
}

#[test]
fn on_a_full_disk_writes_fail_with_500_and_change_nothing_then_succeed_once_space_is_freed() {
    let Some(mut rig) = FullDiskRig::mount() else {
        return;
    };
    rig.agent = Some(TestAgent::start_in(&rig.dir, &["-acl-enabled"]));
    let agent = rig.agent();
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["SecretID"].as_str().unwrap().to_string();
    let token = token.as_str();

    // A quiet task (task logs live on the same disk).
    let keep = sh_job("keep", "service", "exec sleep 300").to_string();
    let r = call(agent, "PUT", "/v1/jobs", token, &keep);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut alloc_id = String::new();
    let mut pid = String::new();
    wait_until(WAIT, "the keep task running", || {
        let r = get_with(agent, "/v1/job/keep/allocations", token);
        let Some(a) = r.json().as_array().and_then(|l| l.first().cloned()) else {
            return false;
        };
        alloc_id = a["ID"].as_str().unwrap_or("").to_string();
        let full = get_with(agent, &format!("/v1/allocation/{alloc_id}"), token).json();
        match events_of(&full, "t", "Started").last() {
            Some(e) if full["TaskStates"]["t"]["State"] == "running" => {
                pid = e["Details"]["pid"].as_str().unwrap_or("").to_string();
                true
            }
            _ => false,
        }
    });
    assert!(pid_alive(&pid));

    let filler = rig.fill();
    let agent = rig.agent();
    // The state store may still have free pages inside its file (freed by earlier
    // transactions): small writes land there, durably, until they are used up. Write small
    // policies until one fails: from then on the disk is full for the store too.
    let probe_failed = (0..MAX_PROBES).any(|i| {
        let body = json!({"Name": format!("probe{i}"), "Rules": "node { policy = \"read\" }"});
        let r = call(
            agent,
            "POST",
            &format!("/v1/acl/policy/probe{i}"),
            token,
            &body.to_string(),
        );
        r.status >= 500
    });
    assert!(
        probe_failed,
        "a write failed within {MAX_PROBES} small writes"
    );
    let before = views(agent, token);

    let new_job = sh_job("fresh", "service", "exec sleep 300").to_string();
    let r = call(agent, "PUT", "/v1/jobs", token, &new_job);
    assert_5xx(&r, "PUT /v1/jobs");
    assert!(
        r.text().contains("failed to persist"),
        "a clear message: {}",
        r.text()
    );
    assert_eq!(get_with(agent, "/v1/job/fresh", token).status, 404);

    let r = call(agent, "DELETE", "/v1/job/keep", token, "");
    assert_5xx(&r, "DELETE /v1/job/keep");
    let r = call(agent, "DELETE", "/v1/job/keep?purge=true", token, "");
    assert_5xx(&r, "DELETE /v1/job/keep?purge=true");
    let r = call(
        agent,
        "POST",
        &format!("/v1/allocation/{alloc_id}/stop"),
        token,
        "",
    );
    assert_5xx(&r, "alloc stop");
    let policy = json!({"Name": "ro", "Description": "d",
        "Rules": "namespace \"default\" { policy = \"read\" }"})
    .to_string();
    let r = call(agent, "POST", "/v1/acl/policy/ro", token, &policy);
    assert_5xx(&r, "ACL policy write");
    let r = call(
        agent,
        "POST",
        "/v1/client/metadata",
        token,
        r#"{"Meta":{"rack":"r1"}}"#,
    );
    assert_5xx(&r, "metadata write");

    // Nothing visible changed, not even the index, and the task was not stopped.
    assert_eq!(views(agent, token), before);
    assert_eq!(before.job["Stop"], false);
    assert_eq!(before.job["Status"], "running");
    assert_eq!(get_with(agent, "/v1/acl/policy/ro", token).status, 404);
    // A stop would have signalled the task at once; watch it for a bounded while.
    let watch = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < watch {
        assert!(
            pid_alive(&pid),
            "the task survived the failed stop and purge"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Space freed: the same requests succeed.
    std::fs::remove_file(&filler).expect("remove filler");
    let r = call(agent, "PUT", "/v1/jobs", token, &new_job);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_with(agent, "/v1/job/fresh", token).status, 200);
    let r = call(agent, "POST", "/v1/acl/policy/ro", token, &policy);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_with(agent, "/v1/acl/policy/ro", token).status, 200);
    let r = call(
        agent,
        "POST",
        "/v1/client/metadata",
        token,
        r#"{"Meta":{"rack":"r1"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get_with(agent, "/v1/client/metadata", token).json()["Dynamic"]["rack"],
        "r1"
    );
    let r = call(agent, "DELETE", "/v1/job/keep", token, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_with(agent, "/v1/job/keep", token).json()["Stop"], true);
    wait_until(WAIT, "the stopped task gone", || !pid_alive(&pid));
    let r = call(agent, "DELETE", "/v1/job/keep?purge=true", token, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_with(agent, "/v1/job/keep", token).status, 404);
}

/// A 32-hex-digit random part as the store makes them.
const HEX32: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn temp_files_of_interrupted_writes_are_removed_at_start_and_nothing_else() {
    let data_dir = temp_dir("sweep");
    let planted: Vec<PathBuf> = vec![
        data_dir.join(format!("server/jobs/.abc.json.nomadlet-tmp-4242-{HEX32}")),
        data_dir.join(format!("server/evals/.e1.json.nomadlet-tmp-7-{HEX32}")),
        data_dir.join(format!("server/allocs/.a1.json.tmp-{HEX32}")),
        data_dir.join(format!("server/.acl.json.nomadlet-tmp-1-{HEX32}")),
        data_dir.join(format!("client/.meta.json.nomadlet-tmp-99-{HEX32}")),
    ];
    let kept: Vec<PathBuf> = vec![
        data_dir.join("server/jobs/notes.txt"),
        data_dir.join("server/.acl.json.tmp-keep"),
        data_dir.join(format!("client/meta.json.nomadlet-tmp-1-{HEX32}")),
        // Alloc dirs belong to tasks: never swept, whatever the name.
        data_dir.join(format!("alloc/x/.out.nomadlet-tmp-1-{HEX32}")),
    ];
    for p in planted.iter().chain(kept.iter()) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"partial {").unwrap();
    }
    let agent = TestAgent::start_in(&data_dir, &[]);
    for p in &planted {
        assert!(!p.exists(), "{} swept", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} kept", p.display());
    }
    assert!(
        agent
            .log()
            .contains("removed 5 temp files left by interrupted state writes"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.get("/v1/jobs").status, 200);
}

/// ACL policies the writer thread wrote and saw acknowledged, until the agent went away.
fn write_policies_until_killed(port: u16, token: &str, tag: &str) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0.. {
        let name = format!("{tag}-{i}");
        let body = json!({"Name": name, "Rules": "node { policy = \"read\" }"}).to_string();
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            break;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let path = format!("/v1/acl/policy/{name}");
        let headers = [("X-Nomad-Token", token)];
        match exchange(s, &build_request("POST", &path, &headers, body.as_bytes())) {
            Ok(r) if r.status == 200 => acked.push(name),
            Ok(r) => panic!("policy {name}: {} {}", r.status, r.text()),
            Err(_) => break,
        }
    }
    acked
}

#[test]
fn kill_9_amid_acl_writes_loses_no_acknowledged_policy_or_token() {
    let mut agent = TestAgent::start(&["-acl-enabled"]);
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["SecretID"].as_str().unwrap().to_string();
    let listed = |agent: &TestAgent| -> Vec<String> {
        let r = agent.request("GET", "/v1/acl/policies", &[("X-Nomad-Token", &token)], b"");
        // The bootstrap token works: the ACL state came back whole after each kill.
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|p| p["Name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for round in 0..2 {
        let port = agent.port;
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (tag, token) = (format!("r{round}w{w}"), token.clone());
                std::thread::spawn(move || write_policies_until_killed(port, &token, &tag))
            })
            .collect();
        wait_until(WAIT, "writes flowing", || {
            listed(&agent).len() >= 5 * (round + 1)
        });
        let mut child = agent.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let acked: Vec<String> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        agent.restart_after_stop();
        let now = listed(&agent);
        for name in &acked {
            assert!(
                now.contains(name),
                "round {round}: acknowledged policy {name} lost after kill -9"
            );
        }
    }
}

/// Jobs the writer thread registered and saw acknowledged, until the agent went away.
fn write_until_killed(port: u16, tag: &str) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0.. {
        let id = format!("{tag}-{i}");
        let mut job = sh_job(&id, "service", "exec sleep 300");
        job["Job"]["TaskGroups"][0]["Count"] = json!(0);
        let body = job.to_string();
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            break;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        match exchange(s, &build_request("PUT", "/v1/jobs", &[], body.as_bytes())) {
            Ok(r) if r.status == 200 => acked.push(id),
            Ok(r) => panic!("register {id}: {} {}", r.status, r.text()),
            Err(_) => break,
        }
    }
    acked
}

fn state_files(data_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in [
        "server",
        "server/jobs",
        "server/evals",
        "server/allocs",
        "client",
    ] {
        if let Ok(rd) = std::fs::read_dir(data_dir.join(sub)) {
            out.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    out
}

#[test]
fn kill_9_amid_writes_loses_no_acknowledged_write() {
    let mut agent = TestAgent::start(&[]);
    for round in 0..3 {
        let port = agent.port;
        // Four writers, as the register benchmark: batches of several commands per fsync.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let tag = format!("r{round}w{w}");
                std::thread::spawn(move || write_until_killed(port, &tag))
            })
            .collect();
        // Kill once writes are flowing: a few jobs are listed.
        wait_until(WAIT, "writes flowing", || {
            agent
                .get_json("/v1/jobs")
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
                >= 5 * (round + 1)
        });
        let mut child = agent.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let acked: Vec<String> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        agent.restart_after_stop();
        let listed: Vec<Value> = agent.get_json("/v1/jobs").as_array().cloned().unwrap();
        for id in &acked {
            assert!(
                listed.iter().any(|j| j["ID"] == id.as_str()),
                "round {round}: acknowledged job {id} lost after kill -9"
            );
        }
        let leftovers: Vec<String> = state_files(&agent.data_dir)
            .into_iter()
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temp files after restart: {leftovers:?}"
        );
    }
}

/// Across snapshots: the server state writes a snapshot every 1 024 commands, staged,
/// flipped and merged over many of the batches' transactions. kill -9 lands at a different
/// point of that cycle each round (after a different number of registers, each a few
/// commands); every acknowledged register is there after each restart.
#[test]
fn kill_9_amid_writes_across_snapshots_loses_no_acknowledged_write() {
    let mut agent = TestAgent::start(&[]);
    let mut all_acked: Vec<String> = Vec::new();
    for round in 0..4usize {
        let port = agent.port;
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let tag = format!("s{round}w{w}");
                std::thread::spawn(move || write_until_killed(port, &tag))
            })
            .collect();
        // 450-650 registers a round: the kills fall at different points of the cycle.
        let target = all_acked.len() + 450 + round * 67;
        wait_until(Duration::from_secs(120), "registers flowing", || {
            agent
                .get_json("/v1/jobs")
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
                >= target
        });
        let mut child = agent.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        all_acked.extend(writers.into_iter().flat_map(|w| w.join().unwrap()));
        agent.restart_after_stop();
        let listed: Vec<Value> = agent.get_json("/v1/jobs").as_array().cloned().unwrap();
        let ids: std::collections::HashSet<&str> =
            listed.iter().filter_map(|j| j["ID"].as_str()).collect();
        let lost: Vec<&String> = all_acked
            .iter()
            .filter(|id| !ids.contains(id.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged jobs lost after kill -9, e.g. {:?}",
            lost.len(),
            lost.iter().take(5).collect::<Vec<_>>()
        );
    }
}
