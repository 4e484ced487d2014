//! Running under systemd: the notify protocol on a NOTIFY_SOCKET the test listens on (READY,
//! watchdog pings, RELOADING/READY around a SIGHUP, STOPPING), SIGHUP reloading the config
//! files (log level, client meta) and surviving a broken one, `-dev` removing its temp data
//! dir, and `dist/nomadlet.service` passing `systemd-analyze verify`.

mod common;
mod workloads_helpers;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use workloads_helpers::{first_alloc, read_log, register, sh_job};

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// The next datagram on `rx` that is not a watchdog ping (those are counted in `pings`).
fn next_state(rx: &UnixDatagram, pings: &mut usize, deadline: Instant) -> String {
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notify message before the deadline");
        rx.set_read_timeout(Some(left)).unwrap();
        let n = rx
            .recv(&mut buf)
            .expect("a notify message before the deadline");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg == "WATCHDOG=1" {
            *pings += 1;
        } else {
            return msg;
        }
    }
}

#[test]
fn notify_protocol_ready_watchdog_reload_stopping() {
    let dir = short_dir();
    let sock = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    let data = dir.join("data");
    // A 400 ms watchdog: a ping every 200 ms.
    let mut agent = TestAgent::start_with(
        &data,
        &[],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
        None,
    );
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    assert_eq!(next_state(&rx, &mut pings, deadline), "READY=1");
    // READY=1 means the API answers.
    assert!(TcpStream::connect(agent.addr()).is_ok());
    assert_eq!(agent.get("/v1/agent/health").status, 200);

    // Watchdog pings keep coming, about every 200 ms.
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let mut seen = 0;
    while seen < 4 {
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = rx.recv(&mut buf).expect("watchdog pings");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        seen += 1;
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "4 pings took {:?}",
        t0.elapsed()
    );

    // SIGHUP: RELOADING=1 with a monotonic timestamp, then READY=1; the agent stays up.
    signal(agent.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reloading = next_state(&rx, &mut pings, deadline);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {reloading:?}"));
    assert!(usec > 0);
    assert_eq!(next_state(&rx, &mut pings, deadline), "READY=1");
    assert_eq!(agent.get("/v1/agent/health").status, 200);
    assert!(agent.log().contains("reloading the agent configuration"));

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = agent.pid();
    signal(pid, "TERM");
    assert_eq!(next_state(&rx, &mut pings, deadline), "STOPPING=1");
    let mut child = agent.child.take().expect("agent running");
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "exit status {st}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tasks_do_not_inherit_the_notify_socket_or_the_watchdog() {
    let dir = short_dir();
    let sock = dir.join("notify.sock");
    let _rx = UnixDatagram::bind(&sock).unwrap();
    let agent = TestAgent::start_with(
        &dir.join("data"),
        &[],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "30000000"),
            ("NOMADLET_TEST_MARK", "inherited"),
        ],
        None,
    );
    register(&agent, &sh_job("env", "batch", "env; echo done"));
    let id = first_alloc(&agent, "env");
    let mut out = String::new();
    wait_until(Duration::from_secs(20), "the task's env output", || {
        out = read_log(&agent, &id, "t", "stdout");
        out.contains("done")
    });
    // The host environment does reach tasks; the agent's own systemd variables do not.
    assert!(out.contains("NOMADLET_TEST_MARK=inherited"), "{out}");
    assert!(!out.contains("NOTIFY_SOCKET"), "{out}");
    assert!(!out.contains("WATCHDOG_USEC"), "{out}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_is_another_process() {
    let dir = short_dir();
    let sock = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    let agent = TestAgent::start_with(
        &dir.join("data"),
        &[],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
        None,
    );
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    assert_eq!(next_state(&rx, &mut pings, deadline), "READY=1");
    // Pings would come every 100 ms: over 600 ms none may arrive.
    rx.set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(rx.recv(&mut buf).is_err(), "unexpected message");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn static_meta(agent: &TestAgent, key: &str) -> Option<String> {
    agent.get_json("/v1/client/metadata")["Static"][key]
        .as_str()
        .map(str::to_string)
}

#[test]
fn sighup_reloads_log_level_and_client_meta_and_keeps_them_on_a_broken_config() {
    let dir = temp_dir("reload");
    let conf = dir.join("agent.hcl");
    write(
        &conf,
        "log_level = \"INFO\"\nclient {\n  meta { rack = \"r1\" }\n}\n",
    );
    let data = dir.join("data");
    let mut agent = TestAgent::start_in(&data, &["-config", conf.to_str().unwrap()]);
    assert_eq!(static_meta(&agent, "rack").as_deref(), Some("r1"));
    assert!(!agent.log().contains("DEBUG"));

    write(
        &conf,
        "log_level = \"DEBUG\"\nclient {\n  meta {\n    rack = \"r2\"\n    zone = \"z\"\n  }\n}\n",
    );
    signal(agent.pid(), "HUP");
    wait_until(Duration::from_secs(10), "the reloaded meta", || {
        static_meta(&agent, "rack").as_deref() == Some("r2")
    });
    assert_eq!(static_meta(&agent, "zone").as_deref(), Some("z"));
    wait_until(Duration::from_secs(10), "the reload log lines", || {
        let log = agent.log();
        log.contains("reload: log level: INFO -> DEBUG") && log.contains("reload: client meta")
    });
    // The node record follows within the (dev) batch window.
    let id = agent.get_json("/v1/agent/self")["stats"]["client"]["node_id"]
        .as_str()
        .map(str::to_string)
        .expect("node_id");
    wait_until(Duration::from_secs(10), "node meta published", || {
        agent.get_json(&format!("/v1/node/{id}"))["Meta"]["rack"] == "r2"
    });
    // Now at DEBUG: debug lines reach the log.
    wait_until(Duration::from_secs(10), "a DEBUG line", || {
        let _ = agent.get("/v1/agent/health");
        agent.log().contains(" DEBUG ")
    });

    // A config that does not parse: logged, the running one kept, the agent still serves.
    write(&conf, "client {\n  meta { rack = \n");
    signal(agent.pid(), "HUP");
    wait_until(Duration::from_secs(10), "the failed reload logged", || {
        agent.log().contains("the configuration does not load")
    });
    assert_eq!(agent.get("/v1/agent/health").status, 200);
    assert_eq!(static_meta(&agent, "rack").as_deref(), Some("r2"));
    let st = agent.stop();
    assert!(st.success(), "exit status {st}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_agent_removes_its_temp_data_dir_on_exit() {
    let tmp = temp_dir("devtmp");
    let port = free_port();
    let log = tmp.with_extension("log");
    let mut child = Command::new(bin())
        .args(["agent", "-dev", "-http-port", &port.to_string()])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Its temp dir made and its port listening (the port alone could be another test's
    // agent that took the same free port meanwhile).
    let mut made: Vec<PathBuf> = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the dev agent up in its temp dir",
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "the dev agent exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            made = std::fs::read_dir(&tmp)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            !made.is_empty() && TcpStream::connect(("127.0.0.1", port)).is_ok()
        },
    );
    assert_eq!(made.len(), 1, "one temp data dir: {made:?}");
    // A SIGHUP does not kill it (it used to exit 129 and leave the dir behind).
    signal(child.id(), "HUP");
    signal(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "dev agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "exit status {st}");
    assert!(!made[0].exists(), "{} left behind", made[0].display());
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed (make deps installs systemd)");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("dist/nomadlet.service")).unwrap();
    for want in [
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "Restart=on-failure",
        "TasksMax=infinity",
        "LimitNOFILE=",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(want), "the unit lacks {want}");
    }
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let dir = temp_dir("unit");
    let tested = unit.replace("/usr/local/bin/nomadlet", bin());
    assert_ne!(tested, unit, "ExecStart names /usr/local/bin/nomadlet");
    let path = dir.join("nomadlet.service");
    write(&path, &tested);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only what concerns our unit counts (the host's own units may have warnings).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("nomadlet.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    // A broken unit fails the same check (the check can fail).
    let broken = tested.replace("Type=notify", "Type=notifyy");
    write(&path, &broken);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nomadlet.service"),
        "a bad Type= went unnoticed: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
