//! The allocation filesystem read endpoints against real raw_exec allocations: the success
//! shapes of ls/stat/cat/readat, a table of hostile paths run on every endpoint, and the
//! bad-input matrix of ref §3.10b.

mod common;
mod fs_util;

use common::*;
use fs_util::*;
use std::time::Duration;

/// Markers that must never appear in any response to a hostile path.
const FORBIDDEN: &[&str] = &[
    "root:x:0:0",
    "OTHER-ALLOC-SECRET",
    "TOPSECRET-TOKEN",
    "PRIVATE-DATA",
];

/// Start an agent with two allocations: a victim whose files must stay out of reach, and one
/// whose task plants files and hostile symlinks. Returns (agent, alloc, other alloc).
fn setup() -> (TestAgent, String, String) {
    let agent = TestAgent::start(&[]);
    let victim = run_job(
        &agent,
        "victim",
        "service",
        "cd \"${NOMAD_TASK_DIR:-$PWD/local}\" && echo OTHER-ALLOC-SECRET > ../secrets/token && echo OTHER-ALLOC-SECRET > other-secret.txt && sleep 600",
        default_logs(),
    );
    let other = wait_alloc(&agent, &victim);
    wait_file(&agent, &other, "t/local/other-secret.txt");
    let other_dir = alloc_dir(&agent, &other);
    let script = format!(
        r#"cd "${{NOMAD_TASK_DIR:-$PWD/local}}/.." || exit 1
mkdir -p local/sub secrets private
echo hello > local/hello.txt
printf '<html><script>alert(1)</script></html>' > local/x.html
printf '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>' > local/x.svg
echo '{{"a":1}}' > local/data.json
head -c 3000000 /dev/urandom > local/big.bin
echo TOPSECRET-TOKEN > secrets/mysecret
echo PRIVATE-DATA > private/p
ln -s /etc/passwd local/passwd
ln -s /etc local/etc
ln -s / local/root
ln -s ../secrets local/sec
ln -s ../secrets/mysecret local/tok
ln -s ../private/p local/priv
ln secrets/mysecret local/hard
ln secrets/mysecret ../alloc/logs/t.stdout.7
ln -s ../../t/secrets/mysecret ../alloc/logs/t.stdout.8
ln -s {other} local/other
ln {other}/t/secrets/token local/hard_other
ln /etc/passwd local/hard_passwd || ln {data}/client/node.json local/hard_passwd
ln {data}/client/node.json local/hard_agent
ln -s ../../../{other_id} local/other_rel
ln -s loop local/loop
ln -s c2 local/c1
ln -s /etc/passwd local/c2
ln -s ../../.. local/up3
ln -s ../local/../../../ local/dotdot
ln -s hello.txt local/rel_ok
touch local/ready
sleep 600"#,
        other = other_dir.display(),
        other_id = other,
        data = agent.data_dir.display()
    );
    let job = run_job(&agent, "planter", "service", &script, default_logs());
    let alloc = wait_alloc(&agent, &job);
    wait_file(&agent, &alloc, "t/local/ready");
    (agent, alloc, other)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Escape,
    NotFound,
    Secret,
    SecretDir,
    HardLink,
    Error,
}

fn hostile_paths() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    vec![
        ("..", Escape),
        ("../", Escape),
        ("/../..", Escape),
        ("../../../../etc/passwd", Escape),
        ("t/../../..", Escape),
        ("%2e%2e/%2e%2e/etc/passwd", Escape),
        ("t//..//..//etc/passwd", Escape),
        ("alloc/logs/../../../", Escape),
        ("t/local/hello.txt/../../../../etc/passwd", Escape),
        ("t/local/passwd", Escape),
        ("t/local/etc/passwd", Escape),
        ("t/local/etc", Escape),
        ("t/local/root/etc/passwd", Escape),
        ("t/local/other/t/local/other-secret.txt", Escape),
        ("t/local/other_rel/t/local/other-secret.txt", Escape),
        ("t/local/c1", Escape),
        ("t/local/up3", Escape),
        ("t/local/dotdot", Escape),
        ("t/local/loop", Error),
        ("/etc/passwd", NotFound),
        ("t/local/tok", Secret),
        ("t/local/sec/mysecret", Secret),
        ("t/secrets/mysecret", Secret),
        ("t/local/priv", Secret),
        ("t/private/p", Secret),
        ("t/local/sec", SecretDir),
        ("t/local/hard", HardLink),
        ("t/local/hard_other", HardLink),
        ("t/local/hard_passwd", HardLink),
        ("t/local/hard_agent", HardLink),
    ]
}

fn enc(p: &str) -> String {
    // Keep the test's own %-escapes; escape what HTTP would not carry raw.
    p.replace(' ', "%20")
}

#[test]
fn hostile_paths_never_leave_the_alloc_dir() {
    let (agent, alloc, _) = setup();
    let paths = hostile_paths();
    assert!(paths.len() >= 20);
    for (path, expect) in paths {
        for op in ["ls", "stat", "cat", "readat", "stream"] {
            let extra = match op {
                "readat" => "&offset=0",
                "stream" => "&follow=false",
                _ => "",
            };
            let url = format!("/v1/client/fs/{op}/{alloc}?path={}{extra}", enc(path));
            let r = agent.get(&url);
            let text = r.text();
            for f in FORBIDDEN {
                assert!(!text.contains(f), "{op} {path}: leaked {f}: {text}");
            }
            let content_op = matches!(op, "cat" | "readat" | "stream");
            match expect {
                Expect::Escape => {
                    let want = if content_op { 400 } else { 500 };
                    assert_eq!(
                        (r.status, text.as_str()),
                        (want, "Path escapes the alloc directory"),
                        "{op} {path}"
                    );
                }
                Expect::NotFound => {
                    let want = if content_op { 400 } else { 404 };
                    assert_eq!(r.status, want, "{op} {path}: {text}");
                    assert!(
                        text.ends_with("no such file or directory"),
                        "{op} {path}: {text}"
                    );
                }
                Expect::Error => assert!(r.status >= 400, "{op} {path}: {} {text}", r.status),
                Expect::Secret | Expect::SecretDir if content_op => {
                    assert_eq!(r.status, 500, "{op} {path}: {text}");
                    assert!(
                        text.starts_with("Reading secret file prohibited: ")
                            || text.starts_with("Reading private file prohibited: "),
                        "{op} {path}: {text}"
                    );
                }
                // ls and stat may look at secrets/ (as Nomad does), never at content.
                Expect::Secret => {
                    if op == "ls" {
                        assert_eq!(r.status, 500, "{op} {path}: {text}");
                    } else {
                        assert_eq!(r.status, 200, "{op} {path}: {text}");
                        // stat does not even sniff a secret's content.
                        assert_eq!(
                            r.json()["ContentType"],
                            "application/octet-stream",
                            "{path}"
                        );
                    }
                }
                Expect::SecretDir => assert_eq!(r.status, 200, "{op} {path}: {text}"),
                Expect::HardLink if content_op => {
                    assert_eq!(r.status, 403, "{op} {path}: {text}");
                    assert_eq!(text, format!("Reading hard-linked file prohibited: {path}"));
                }
                Expect::HardLink => {
                    let want = if op == "ls" { 500 } else { 200 };
                    assert_eq!(r.status, want, "{op} {path}: {text}");
                }
            }
        }
    }
    // Log "files" a task planted (a hard link and a symlink to its secret) are never served.
    for q in ["", "&origin=end", "&origin=end&offset=5", "&offset=100000"] {
        for plain in ["true", "false"] {
            let r = agent.get(&format!(
                "/v1/client/fs/logs/{alloc}?task=t&type=stdout&plain={plain}{q}"
            ));
            assert_eq!(r.status, 200, "{q}: {}", r.text());
            assert!(
                !r.text().contains("TOPSECRET") && !r.text().contains("VE9QU0VDUkVU"),
                "{q}"
            );
        }
    }
    // Hostile task names on the logs endpoint.
    for task in ["../../etc", "t/../../x", "..", "t/secrets"] {
        let r = agent.get(&format!(
            "/v1/client/fs/logs/{alloc}?task={task}&type=stdout"
        ));
        assert_eq!(r.status, 400, "{task}: {}", r.text());
        assert_eq!(r.text(), format!("unknown task name {task:?}"));
    }
}

#[test]
fn ls_stat_cat_readat_success_shapes() {
    let (agent, alloc, _) = setup();
    let dir = alloc_dir(&agent, &alloc);

    let root = agent.get_json(&format!("/v1/client/fs/ls/{alloc}"));
    let names: Vec<&str> = root
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"alloc") && names.contains(&"t"),
        "{names:?}"
    );
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for e in root.as_array().unwrap() {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["Name", "IsDir", "Size", "FileMode", "ModTime"]);
        assert!(e["FileMode"].as_str().unwrap().starts_with('d'));
        let t = e["ModTime"].as_str().unwrap();
        assert!(t.len() >= 20 && &t[4..5] == "-" && &t[10..11] == "T", "{t}");
        assert!(
            t.ends_with('Z') || t[t.len() - 6..].starts_with(['+', '-']),
            "{t}"
        );
    }
    let local = agent.get_json(&format!("/v1/client/fs/ls/{alloc}?path=/t/local"));
    let passwd = local
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == "passwd")
        .unwrap();
    assert_eq!(passwd["FileMode"], "Lrwxrwxrwx");
    assert_eq!(passwd["IsDir"], false);
    let hello = local
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == "hello.txt")
        .unwrap();
    assert_eq!(hello["Size"], 6);
    assert_eq!(hello["FileMode"], "-rw-r--r--");

    let st = agent.get_json(&format!(
        "/v1/client/fs/stat/{alloc}?path=t/local/hello.txt"
    ));
    assert_eq!(st["Name"], "hello.txt");
    assert_eq!(st["ContentType"], "text/plain; charset=utf-8");
    assert_eq!(st["Size"], 6);
    let st = agent.get_json(&format!("/v1/client/fs/stat/{alloc}?path=/"));
    assert_eq!(st["Name"], alloc.as_str());
    assert_eq!(st["IsDir"], true);
    assert_eq!(st["ContentType"], "application/octet-stream");
    let st = agent.get_json(&format!(
        "/v1/client/fs/stat/{alloc}?path=t/local/data.json"
    ));
    assert_eq!(st["ContentType"], "application/json");
    let st = agent.get_json(&format!("/v1/client/fs/stat/{alloc}?path=t/local/x.html"));
    assert_eq!(st["ContentType"], "text/html; charset=utf-8");
    let st = agent.get_json(&format!("/v1/client/fs/stat/{alloc}?path=t/local/rel_ok"));
    assert_eq!(
        (st["Name"].as_str(), st["Size"].as_u64()),
        (Some("rel_ok"), Some(6))
    );

    let r = agent.get(&format!("/v1/client/fs/cat/{alloc}?path=t/local/hello.txt"));
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        r.header("Content-Security-Policy"),
        Some("default-src 'none'; style-src 'unsafe-inline'; sandbox")
    );
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(r.header("X-XSS-Protection"), Some("1; mode=block"));
    for f in ["x.html", "x.svg"] {
        let r = agent.get(&format!("/v1/client/fs/cat/{alloc}?path=t/local/{f}"));
        assert_eq!(r.status, 200);
        let ct = r.header("Content-Type").unwrap();
        assert!(
            !ct.contains("html") && !ct.contains("xml") && !ct.contains("svg"),
            "{f}: {ct}"
        );
    }
    let big = std::fs::read(dir.join("t/local/big.bin")).unwrap();
    let r = agent.get(&format!("/v1/client/fs/cat/{alloc}?path=t/local/big.bin"));
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert!(r.body == big, "big file served intact");

    let r = agent.get(&format!(
        "/v1/client/fs/readat/{alloc}?path=t/local/hello.txt&offset=1&limit=3"
    ));
    assert_eq!((r.status, r.text().as_str()), (200, "ell"));
    let r = agent.get(&format!(
        "/v1/client/fs/readat/{alloc}?path=t/local/hello.txt&offset=2"
    ));
    assert_eq!(r.text(), "llo\n");
    let r = agent.get(&format!(
        "/v1/client/fs/readat/{alloc}?path=t/local/hello.txt&offset=100&limit=5"
    ));
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = agent.get(&format!(
        "/v1/client/fs/readat/{alloc}?path=t/local/big.bin&offset=1000000&limit=70000"
    ));
    assert!(r.body == big[1_000_000..1_070_000]);
}

#[test]
fn bad_input_matrix() {
    let (agent, alloc, _) = setup();
    let dir = alloc_dir(&agent, &alloc);
    let unknown = "8a2b6f37-0000-4000-8000-000000000000";
    let check = |url: String, status: u16, body: &str| {
        let r = agent.get(&url);
        assert_eq!((r.status, r.text().as_str()), (status, body), "{url}");
    };
    for op in ["ls", "stat", "cat", "readat", "stream", "logs"] {
        check(
            format!("/v1/client/fs/{op}/"),
            400,
            "must provide a valid alloc id",
        );
        let q = if op == "logs" {
            "?task=t&type=stdout"
        } else {
            "?path=/&offset=0"
        };
        check(
            format!("/v1/client/fs/{op}/abc{q}"),
            500,
            "alloc lookup failed: index error: UUID must be 36 characters",
        );
        check(
            format!("/v1/client/fs/{op}/{unknown}{q}"),
            404,
            &format!("Unknown allocation \"{unknown}\""),
        );
    }
    check(
        format!("/v1/client/fs/bogus/{alloc}"),
        404,
        "Invalid method",
    );
    for op in ["stat", "cat", "readat", "stream"] {
        check(
            format!("/v1/client/fs/{op}/{alloc}"),
            400,
            "must provide a file name",
        );
    }
    let p = "path=t/local/hello.txt";
    check(
        format!("/v1/client/fs/readat/{alloc}?{p}"),
        500,
        "error parsing offset: strconv.ParseInt: parsing \"\": invalid syntax",
    );
    check(
        format!("/v1/client/fs/readat/{alloc}?{p}&offset=x"),
        500,
        "error parsing offset: strconv.ParseInt: parsing \"x\": invalid syntax",
    );
    check(
        format!("/v1/client/fs/readat/{alloc}?{p}&offset=0&limit=z"),
        500,
        "error parsing limit: strconv.ParseInt: parsing \"z\": invalid syntax",
    );
    check(
        format!("/v1/client/fs/stream/{alloc}?{p}&origin=middle"),
        400,
        "origin must be start or end",
    );
    check(
        format!("/v1/client/fs/stream/{alloc}?{p}&follow=maybe"),
        500,
        "failed to parse follow field to boolean: strconv.ParseBool: parsing \"maybe\": invalid syntax",
    );
    check(
        format!("/v1/client/fs/stream/{alloc}?{p}&offset=1.5"),
        500,
        "error parsing offset: strconv.ParseInt: parsing \"1.5\": invalid syntax",
    );
    let l = "task=t&type=stdout";
    check(
        format!("/v1/client/fs/logs/{alloc}?type=stdout"),
        400,
        "must provide task name",
    );
    check(
        format!("/v1/client/fs/logs/{alloc}?task=t"),
        400,
        "must provide log type (stdout/stderr)",
    );
    check(
        format!("/v1/client/fs/logs/{alloc}?task=t&type=stdin"),
        400,
        "must provide log type (stdout/stderr)",
    );
    check(
        format!("/v1/client/fs/logs/{alloc}?{l}&follow=yes"),
        400,
        "failed to parse follow field to boolean: strconv.ParseBool: parsing \"yes\": invalid syntax",
    );
    check(
        format!("/v1/client/fs/logs/{alloc}?{l}&plain=no"),
        400,
        "failed to parse plain field to boolean: strconv.ParseBool: parsing \"no\": invalid syntax",
    );
    check(
        format!("/v1/client/fs/logs/{alloc}?{l}&offset=abc"),
        400,
        "error parsing offset: strconv.ParseInt: parsing \"abc\": invalid syntax",
    );
    check(
        format!("/v1/client/fs/logs/{alloc}?{l}&origin=top"),
        400,
        "origin must be start or end",
    );
    check(
        format!("/v1/client/fs/logs/{alloc}?task=web&type=stdout"),
        400,
        "unknown task name \"web\"",
    );

    let missing = dir.join("t/nope");
    check(
        format!("/v1/client/fs/ls/{alloc}?path=t/nope"),
        404,
        &format!("open {}: no such file or directory", missing.display()),
    );
    check(
        format!("/v1/client/fs/stat/{alloc}?path=t/nope"),
        404,
        &format!("stat {}: no such file or directory", missing.display()),
    );
    for op in ["cat", "readat", "stream"] {
        check(
            format!("/v1/client/fs/{op}/{alloc}?path=t/nope&offset=0&follow=false"),
            400,
            &format!("stat {}: no such file or directory", missing.display()),
        );
        check(
            format!("/v1/client/fs/{op}/{alloc}?path=t/local&offset=0&follow=false"),
            400,
            "file \"t/local\" is a directory",
        );
    }
    let r = agent.get(&format!("/v1/client/fs/ls/{alloc}?path=t/local/hello.txt"));
    assert_eq!(r.status, 500, "{}", r.text());

    // Offsets past the end: no data, not an error.
    let r = agent.get(&format!(
        "/v1/client/fs/stream/{alloc}?{p}&offset=1000&follow=false"
    ));
    assert_eq!(r.status, 200);
    assert!(frame_data(&frames(&r.body)).is_empty());

    // No log files of a type at all.
    wait_until(Duration::from_secs(10), "stderr log file", || {
        std::fs::read_dir(dir.join("alloc/logs"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("t.stderr."))
            })
            .unwrap_or(false)
    });
    for e in std::fs::read_dir(dir.join("alloc/logs")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("t.stderr.") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    check(
        format!("/v1/client/fs/logs/{alloc}?task=t&type=stderr"),
        404,
        "log entry for task \"t\" and log type \"stderr\" not found",
    );
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn cat_of_a_large_file_keeps_memory_bounded() {
    let agent = TestAgent::start(&[]);
    let job = run_job(
        &agent,
        "big",
        "service",
        "touch local/ready; sleep 600",
        default_logs(),
    );
    let alloc = wait_alloc(&agent, &job);
    wait_file(&agent, &alloc, "t/local/ready");
    let size: u64 = 100 * 1024 * 1024;
    let f = std::fs::File::create(alloc_dir(&agent, &alloc).join("t/local/sparse.bin")).unwrap();
    f.set_len(size).unwrap();
    let before = vm_hwm_kib(agent.pid());
    let mut s = Stream::open(
        &agent,
        &format!("/v1/client/fs/cat/{alloc}?path=t/local/sparse.bin"),
    );
    assert_eq!(s.status, 200);
    let mut total = s.body.len() as u64;
    s.body.clear();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    while std::time::Instant::now() < deadline {
        match s.sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => {}
        }
    }
    assert_eq!(total, size);
    let grew = vm_hwm_kib(agent.pid()).saturating_sub(before);
    assert!(
        grew < 20 * 1024,
        "peak RSS grew by {grew} KiB serving a 100 MiB file"
    );
}

#[test]
fn symlink_swap_race_never_leads_outside() {
    let agent = TestAgent::start(&[]);
    let script = r#"cd "${NOMAD_TASK_DIR:-$PWD/local}" || exit 1
mkdir -p d; echo safe > d/passwd; ln -s /etc l; touch ready
for i in $(seq 1 4000); do
  mv -T d swap; mv -T swap d
  mv -T l swap; mv -T swap l
done
sleep 600"#;
    let job = run_job(&agent, "swapper", "service", script, default_logs());
    let alloc = wait_alloc(&agent, &job);
    wait_file(&agent, &alloc, "t/local/ready");
    let mut served_safe = 0;
    for i in 0..300 {
        let op = ["cat", "readat", "stream", "ls", "stat"][i % 5];
        let path = if op == "ls" {
            "t/local/swap"
        } else {
            "t/local/swap/passwd"
        };
        let r = agent.get(&format!(
            "/v1/client/fs/{op}/{alloc}?path={path}&offset=0&follow=false"
        ));
        let text = r.text();
        assert!(!text.contains("root:"), "{op}: leaked /etc: {text}");
        if op == "ls" && r.status == 200 {
            let names: Vec<String> = r
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["Name"].to_string())
                .collect();
            assert_eq!(names, ["\"passwd\""], "ls saw outside entries");
        }
        if r.status == 200 && op == "cat" {
            assert_eq!(text, "safe\n");
            served_safe += 1;
        }
    }
    eprintln!("served the in-alloc file {served_safe} times");
}

#[test]
fn acl_read_fs_and_read_logs_capabilities() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let mgmt = r.json()["SecretID"].as_str().unwrap().to_string();
    let h = |t: &str| vec![("X-Nomad-Token", t.to_string())];
    let call = |method: &str, path: &str, token: &str, body: &[u8]| {
        let hs = h(token);
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        agent.request(method, path, &hs, body)
    };
    let mut tokens = std::collections::HashMap::new();
    for (name, rules) in [
        (
            "logs",
            r#"namespace "default" { capabilities = ["read-logs"] }"#,
        ),
        (
            "fs",
            r#"namespace "default" { capabilities = ["read-fs"] }"#,
        ),
        ("read", r#"namespace "default" { policy = "read" }"#),
    ] {
        let body = serde_json::json!({"Name": name, "Rules": rules}).to_string();
        let r = call(
            "POST",
            &format!("/v1/acl/policy/{name}"),
            &mgmt,
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body =
            serde_json::json!({"Name": name, "Type": "client", "Policies": [name]}).to_string();
        let r = call("POST", "/v1/acl/token", &mgmt, body.as_bytes());
        tokens.insert(name, r.json()["SecretID"].as_str().unwrap().to_string());
    }
    let job = serde_json::json!({"Job": {"ID": "acl", "Type": "service", "Datacenters": ["*"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", "echo hi; echo x > local/f; sleep 600"]}}]}]}});
    let r = call("PUT", "/v1/jobs", &mgmt, job.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let mut alloc = String::new();
    wait_until(Duration::from_secs(20), "the allocation", || {
        let r = call("GET", "/v1/job/acl/allocations", &mgmt, b"");
        let started = r.json()[0]["TaskStates"]["t"]["State"] == "running";
        alloc = r.json()[0]["ID"].as_str().unwrap_or_default().to_string();
        started
            && call(
                "GET",
                &format!("/v1/client/fs/stat/{alloc}?path=t/local/f"),
                &mgmt,
                b"",
            )
            .status
                == 200
    });
    let ls = format!("/v1/client/fs/ls/{alloc}");
    let cat = format!("/v1/client/fs/cat/{alloc}?path=t/local/f");
    let logs = format!("/v1/client/fs/logs/{alloc}?task=t&type=stdout&plain=true");
    let expect = |token: &str, path: &str, ok: bool| {
        let r = call("GET", path, token, b"");
        if ok {
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        } else {
            assert_eq!(
                (r.status, r.text()),
                (403, "Permission denied".to_string()),
                "{path}"
            );
        }
    };
    for (token, ls_ok, cat_ok, logs_ok) in [
        (tokens["logs"].as_str(), false, false, true),
        (tokens["fs"].as_str(), true, true, true),
        (tokens["read"].as_str(), false, false, false),
        (mgmt.as_str(), true, true, true),
    ] {
        expect(token, &ls, ls_ok);
        expect(token, &cat, cat_ok);
        expect(token, &logs, logs_ok);
    }
    let r = agent.get(&ls);
    assert_eq!(r.status, 403, "anonymous: {}", r.text());
}

/// The agent's own secrets are out of a task's reach: the data dir can be passed through but
/// not listed, `server/` and `client/` are the agent's alone, and key files are 0600.
#[test]
fn agent_state_dirs_and_key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let agent = TestAgent::start(&[]);
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&agent.data_dir), 0o711);
    assert_eq!(mode(&agent.data_dir.join("server")), 0o700);
    assert_eq!(mode(&agent.data_dir.join("client")), 0o700);
    let key = agent
        .data_dir
        .join("server")
        .join("workload-identity-key.pem");
    wait_until(
        Duration::from_secs(30),
        "the signing key is written",
        || key.exists(),
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        mode(&agent.data_dir.join("client").join("node.json")),
        0o600
    );
}
