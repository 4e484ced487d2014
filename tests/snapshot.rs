//! `/v1/operator/snapshot`, multi-process on loopback: a snapshot of a server with jobs, allocs
//! and a client-only agent's node restores into a fresh server with the same jobs, allocs and
//! nodes (and stays there across a restart: the restore is a logged command); archives that
//! are corrupt, truncated, lie about sizes or their digest are refused with 400 and change
//! nothing; a good restore puts a deleted job back at a higher index; under ACLs only a
//! management token saves or restores.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sha2::Digest;

const WAIT: Duration = Duration::from_secs(30);

fn register(agent: &TestAgent, token: Option<&str>, body: &Value) {
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    let r = agent.request("POST", "/v1/jobs", &headers, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "register: {}", r.text());
}

/// A batch job of one short raw_exec task.
fn batch_job(id: &str) -> Value {
    json!({"Job": {"ID": id, "Type": "batch", "Datacenters": ["dc1"],
        "Meta": {"owner": "snapshot-test"},
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", "exit 0"]}}]}]}})
}

/// A service job nothing can place (its constraint matches no node): a blocked eval.
fn blocked_job(id: &str) -> Value {
    json!({"Job": {"ID": id, "Type": "service", "Datacenters": ["dc1"],
        "Constraints": [{"LTarget": "${attr.kernel.name}", "RTarget": "plan9", "Operand": "="}],
        "TaskGroups": [{"Name": "g", "Count": 2, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sleep", "args": ["60"]}}]}]}})
}

fn save(agent: &TestAgent, token: Option<&str>) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    let r = agent.request("GET", "/v1/operator/snapshot", &headers, b"");
    assert_eq!(r.status, 200, "save: {}", r.text());
    let digest = r.header("Digest").expect("Digest header").to_string();
    let want = format!(
        "sha-256={}",
        <base64ct::Base64 as base64ct::Encoding>::encode_string(&sha2::Sha256::digest(&r.body))
    );
    assert_eq!(digest, want, "the Digest header is the archive's SHA-256");
    r.body
}

/// Run the CLI against `agent` with `token` (none when empty), `stdin` piped in.
fn cli(agent: &TestAgent, token: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("NOMAD_ADDR", format!("http://{}", agent.addr()))
        .env_remove("NOMAD_TOKEN")
        .env_remove("NOMAD_REGION")
        .env_remove("NOMAD_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !token.is_empty() {
        cmd.env("NOMAD_TOKEN", token);
    }
    let mut child = cmd.spawn().expect("spawn cli");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    // The CLI's own deadlines bound this.
    child.wait_with_output().expect("cli output")
}

fn restore(agent: &TestAgent, token: Option<&str>, archive: &[u8]) -> Response {
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    agent.request("PUT", "/v1/operator/snapshot", &headers, archive)
}

/// The archive's files, in order: (name, bytes).
fn files_of(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut out = Vec::new();
    for e in tar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read entry");
        out.push((name, data));
    }
    out
}

/// A gzip tar of these files.
fn archive_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, name, data.as_slice())
            .expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// What the restore must reproduce, read from `agent`.
fn listing(agent: &TestAgent, token: Option<&str>) -> (Value, Value, Value) {
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    let get = |p: &str| {
        let r = agent.request("GET", p, &headers, b"");
        assert_eq!(r.status, 200, "GET {p}: {}", r.text());
        r.json()
    };
    (get("/v1/jobs"), get("/v1/nodes"), get("/v1/allocations"))
}

fn index_of(agent: &TestAgent, path: &str) -> u64 {
    agent
        .get(path)
        .header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("X-Nomad-Index")
}

#[test]
fn a_snapshot_of_a_server_with_jobs_and_a_node_restores_into_a_fresh_server() {
    let source = TestAgent::server("", &[]);
    let client = TestAgent::client(&[&source.rpc_addr()], "", &[]);
    let node = client.node_id();
    wait_until(WAIT, "the client's node ready", || {
        source.get_json("/v1/nodes").as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["ID"] == node.as_str() && n["Status"] == "ready")
        })
    });
    register(&source, None, &batch_job("placed"));
    register(&source, None, &blocked_job("blocked"));
    // Quiet before the snapshot: the batch alloc finished, the other job's eval is blocked.
    wait_until(
        WAIT,
        "the batch alloc complete and the eval blocked",
        || {
            let allocs = source.get_json("/v1/job/placed/allocations");
            let evals = source.get_json("/v1/job/blocked/evaluations");
            allocs
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["ClientStatus"] == "complete")
                && evals
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["Status"] == "blocked"))
        },
    );
    let archive = save(&source, None);
    let want = listing(&source, None);
    assert_eq!(want.0.as_array().map(Vec::len), Some(2), "{}", want.0);
    assert_eq!(want.1.as_array().map(Vec::len), Some(1), "{}", want.1);

    let files = files_of(&archive);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["meta.json", "state.bin", "SHA256SUMS"]);
    let meta: Value = serde_json::from_slice(&files[0].1).expect("meta.json");
    assert_eq!(meta["Version"], 1);
    assert!(
        meta["Term"].as_u64().is_some_and(|t| t >= 1),
        "a server runs Raft: the leader's term: {meta}"
    );
    assert!(meta["Index"].as_u64().unwrap() > 0, "{meta}");
    assert!(meta["Timestamp"].as_str().is_some_and(|t| t.contains('T')));

    // A fresh server takes it whole: the same jobs, node and allocs.
    let mut target = TestAgent::server(
        "server {\n  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"1s\"\n}\n",
        &[],
    );
    assert_eq!(target.get_json("/v1/jobs"), json!([]));
    let before = index_of(&target, "/v1/jobs");
    let r = restore(&target, None, &archive);
    assert_eq!(r.status, 200, "restore: {}", r.text());
    assert_eq!(r.text(), "", "Nomad answers a restore with an empty body");
    let got = listing(&target, None);
    assert_eq!(got.0, want.0, "jobs");
    assert_eq!(got.1, want.1, "nodes");
    assert_eq!(got.2, want.2, "allocations");
    let after = index_of(&target, "/v1/jobs");
    assert!(after > before, "the index grows: {before} → {after}");
    assert!(
        after > meta["Index"].as_u64().unwrap(),
        "above every restored object's index"
    );
    let job = target.get_json("/v1/job/placed");
    assert_eq!(job["Meta"]["owner"], "snapshot-test");

    // The restored node's heartbeat timer was armed by the restore: its client talks to the
    // source, so on the target it misses its heartbeats and goes down (TTL 1-2 s + 1 s grace).
    wait_until(
        Duration::from_secs(15),
        "the restored node down on the target",
        || target.get_json("/v1/nodes")[0]["Status"] == "down",
    );
    // The restore is durable: after a crash the log replays to the same state.
    target.kill9();
    target.restart_after_stop();
    let again = listing(&target, None);
    assert_eq!(again.0, want.0, "jobs after a restart");
    assert_eq!(again.2, want.2, "allocations after a restart");
    assert_eq!(
        again.1.as_array().map(|n| n[0]["ID"].clone()),
        Some(json!(node))
    );
}

#[test]
fn a_bad_archive_is_refused_with_400_and_changes_nothing_and_a_good_one_brings_a_job_back() {
    let agent = TestAgent::start(&[]);
    register(&agent, None, &blocked_job("keep"));
    register(&agent, None, &blocked_job("other"));
    wait_until(WAIT, "both evals blocked (the scheduler is done)", || {
        ["keep", "other"].iter().all(|j| {
            agent
                .get_json(&format!("/v1/job/{j}/evaluations"))
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["Status"] == "blocked"))
        })
    });
    let archive = save(&agent, None);
    let files = files_of(&archive);

    let mut bad_sum = files.clone();
    let last = bad_sum[1].1.len() - 2;
    bad_sum[1].1[last] ^= 0x01; // state.bin changed, SHA256SUMS not
    let mut truncated = archive.clone();
    truncated.truncate(archive.len() * 2 / 3);
    let mut bad_crc = archive.clone();
    let n = bad_crc.len();
    bad_crc[n - 7] ^= 0xff;
    // A header declaring 1 TiB of state.bin and no data behind it.
    let huge = {
        let mut h = tar::Header::new_ustar();
        h.set_path("state.bin").unwrap();
        h.set_size(1 << 40);
        h.set_mode(0o600);
        h.set_cksum();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(h.as_bytes()).unwrap();
        gz.finish().unwrap()
    };
    let mut extra = files.clone();
    extra.push((
        "../../etc/cron.d/x".into(),
        b"* * * * * root true\n".to_vec(),
    ));
    let extra = {
        // tar refuses `..` when building; write the name into the header by hand.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in &extra {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append(&h, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad checksum",
            archive_of(&bad_sum),
            "sha256 hash mismatch for snapshot file \"state.bin\"",
        ),
        (
            "truncated gzip",
            truncated,
            "snapshot is not a valid gzip tar archive",
        ),
        (
            "bad gzip crc",
            bad_crc,
            "snapshot is not a valid gzip tar archive",
        ),
        ("huge declared size", huge, "larger than the limit"),
        ("unexpected file", extra, "unexpected file"),
        (
            "not an archive",
            b"{\"Job\": {}}".to_vec(),
            "snapshot is not a valid gzip tar archive",
        ),
    ];
    let jobs_before = agent.get_json("/v1/jobs");
    let index_before = index_of(&agent, "/v1/jobs");
    for (what, body, text) in &cases {
        let r = restore(&agent, None, body);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.text().contains(text), "{what}: {:?}", r.text());
        assert_eq!(
            r.header("Content-Type"),
            Some("text/plain; charset=utf-8"),
            "{what}"
        );
        assert_eq!(
            agent.get_json("/v1/jobs"),
            jobs_before,
            "{what}: state unchanged"
        );
        assert_eq!(
            index_of(&agent, "/v1/jobs"),
            index_before,
            "{what}: no index"
        );
    }
    // An empty body, and a good archive whose Digest header lies.
    let r = restore(&agent, None, b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Request body is empty")
    );
    let r = agent.request(
        "PUT",
        "/v1/operator/snapshot",
        &[(
            "Digest",
            "sha-256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )],
        &archive,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Digest"), "{}", r.text());
    assert_eq!(agent.get_json("/v1/jobs"), jobs_before);
    // A body over the bound is refused before it is held.
    let head = format!(
        "PUT /v1/operator/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        16 * 1024 * 1024 + 1
    );
    let s = std::net::TcpStream::connect(agent.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let r = exchange(s, head.as_bytes()).expect("answer without the body");
    assert_eq!(r.status, 413, "{}", r.text());

    // A good restore after a purge brings the job back; the index keeps growing.
    let r = agent.request("DELETE", "/v1/job/keep?purge=true", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(agent.get("/v1/job/keep").status, 404);
    let purged_at = index_of(&agent, "/v1/jobs");
    let r = restore(&agent, None, &archive);
    assert_eq!(r.status, 200, "{}", r.text());
    let restored_at: u64 = r
        .header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("X-Nomad-Index on the restore");
    assert!(restored_at > purged_at, "{restored_at} > {purged_at}");
    assert_eq!(agent.get("/v1/job/keep").status, 200, "the job is back");
    assert_eq!(agent.get_json("/v1/jobs"), jobs_before);
}

#[test]
fn under_acls_only_a_management_token_saves_or_restores() {
    let server = TestAgent::server("acl {\n  enabled = true\n}\n", &[]);
    let r = server.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "bootstrap: {}", r.text());
    let mgmt = r.json()["SecretID"].as_str().unwrap().to_string();
    register(&server, Some(&mgmt), &blocked_job("secret-job"));

    // A client token with every namespace capability is still not management.
    let policy = json!({"Name": "ops", "Rules":
        "namespace \"*\" { policy = \"write\" }\nnode { policy = \"write\" }\nagent { policy = \"write\" }\noperator { policy = \"write\" }"});
    let r = server.request(
        "POST",
        "/v1/acl/policy/ops",
        &[("X-Nomad-Token", &mgmt)],
        policy.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "policy: {}", r.text());
    let r = server.request(
        "POST",
        "/v1/acl/token",
        &[("X-Nomad-Token", &mgmt)],
        json!({"Name": "ops", "Type": "client", "Policies": ["ops"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "token: {}", r.text());
    let ops = r.json()["SecretID"].as_str().unwrap().to_string();

    for token in [None, Some(ops.as_str())] {
        let r = server.request(
            "GET",
            "/v1/operator/snapshot",
            &token
                .map(|t| vec![("X-Nomad-Token", t)])
                .unwrap_or_default(),
            b"",
        );
        assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    }
    let archive = save(&server, Some(&mgmt));
    for token in [None, Some(ops.as_str())] {
        let r = restore(&server, token, &archive);
        assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    }
    let r = restore(&server, Some(&mgmt), &archive);
    assert_eq!(r.status, 200, "{}", r.text());

    // The CLI: `operator api` saves to stdout and restores from stdin with the token from
    // NOMAD_TOKEN (the archive is binary; it passes through untouched).
    let saved = cli(
        &server,
        &mgmt,
        &["operator", "api", "/v1/operator/snapshot"],
        b"",
    );
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    assert_eq!(files_of(&saved.stdout).len(), 3);
    let r = cli(
        &server,
        &mgmt,
        &["operator", "api", "-X", "PUT", "/v1/operator/snapshot"],
        &saved.stdout,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = cli(
        &server,
        "",
        &["operator", "api", "-X", "PUT", "/v1/operator/snapshot"],
        &saved.stdout,
    );
    assert_eq!(String::from_utf8_lossy(&r.stdout), "Permission denied");

    // `operator snapshot save|restore FILE`.
    let dir = temp_dir("snap-cli");
    let file = dir.join("backup.snap");
    let f = file.display().to_string();
    let r = cli(&server, &mgmt, &["operator", "snapshot", "save", &f], b"");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        format!("State file written to {f}")
    );
    let saved_file = std::fs::read(&file).expect("snapshot file");
    assert_eq!(files_of(&saved_file).len(), 3);
    let r = cli(
        &server,
        &mgmt,
        &["operator", "snapshot", "restore", &f],
        b"",
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "Snapshot Restored"
    );
    let r = cli(&server, "", &["operator", "snapshot", "save", &f], b"");
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        saved_file,
        "a failed save leaves the file"
    );
    std::fs::write(&file, b"garbage").unwrap();
    let r = cli(
        &server,
        &mgmt,
        &["operator", "snapshot", "restore", &f],
        b"",
    );
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("not a valid gzip tar archive"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The tokens came back with the state: the management token still works.
    let r = server.request(
        "GET",
        "/v1/job/secret-job",
        &[("X-Nomad-Token", &mgmt)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
