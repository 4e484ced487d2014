//! Installing: `make install` puts each file where it belongs under DESTDIR/PREFIX (the unit's
//! ExecStart following PREFIX, existing configs kept), the example configs in
//! `dist/nomadlet.d` are accepted by the agent as they are, and `make deb` builds a package
//! with those files, conffiles and maintainer scripts that enable and start the service
//! (checked by lintian when it is installed: `make deps-deb`).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `make -s <args>` in the source tree with the binary under test (no cargo build).
fn make(args: &[&str]) -> std::process::Output {
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(root())
        .args(args)
        .arg("BUILD=")
        .arg(format!("BIN={}", bin()))
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn make_install_puts_every_file_under_destdir_and_prefix() {
    let dest = temp_dir("install");
    let d = dest.display().to_string();
    make(&["install", &format!("DESTDIR={d}")]);
    let bin_path = dest.join("usr/local/bin/nomadlet");
    assert_eq!(mode(&bin_path), 0o755);
    assert_eq!(
        std::fs::metadata(&bin_path).unwrap().len(),
        std::fs::metadata(bin()).unwrap().len()
    );
    for man in std::fs::read_dir(root().join("man")).unwrap() {
        let name = man.unwrap().file_name();
        assert_eq!(
            mode(&dest.join("usr/local/share/man/man1").join(&name)),
            0o644
        );
    }
    let unit = dest.join("usr/local/lib/systemd/system/nomadlet.service");
    assert_eq!(mode(&unit), 0o644);
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("ExecStart=/usr/local/bin/nomadlet agent -config /etc/nomadlet.d"),
        "{text}"
    );
    for conf in ["client.hcl", "server.hcl"] {
        let p = dest.join("etc/nomadlet.d").join(conf);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(root().join("dist/nomadlet.d").join(conf)).unwrap()
        );
    }

    // Again with another PREFIX: ExecStart follows it; an edited config is kept.
    let client = dest.join("etc/nomadlet.d/client.hcl");
    std::fs::write(&client, "# mine\n").unwrap();
    let out = make(&["install", &format!("DESTDIR={d}"), "PREFIX=/opt/nl"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
    assert_eq!(std::fs::read_to_string(&client).unwrap(), "# mine\n");
    let text =
        std::fs::read_to_string(dest.join("opt/nl/lib/systemd/system/nomadlet.service")).unwrap();
    assert!(
        text.contains("ExecStart=/opt/nl/bin/nomadlet agent"),
        "{text}"
    );
    assert!(dest.join("opt/nl/bin/nomadlet").exists());
    let _ = std::fs::remove_dir_all(&dest);
}

#[test]
fn the_example_configs_start_an_agent_as_they_are() {
    let dir = short_dir();
    let port = free_port();
    let log = dir.join("agent.log");
    // Only the data dir and the port are overridden (flags win over files, as in Nomad).
    let mut child = Command::new(bin())
        .args(["agent", "-config"])
        .arg(root().join("dist/nomadlet.d"))
        .arg("-data-dir")
        .arg(dir.join("data"))
        .args(["-http-port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "agent exited ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = TestAgent {
        child: Some(child),
        port,
        data_dir: dir.clone(),
        log_path: log.clone(),
        args: vec![],
        env: vec![],
        nofile: None,
        rpc_port: 0,
        serf_port: 0,
        host: "127.0.0.1".into(),
        netns: None,
    };
    let node_id = agent.get_json("/v1/agent/self")["stats"]["client"]["node_id"]
        .as_str()
        .expect("node_id")
        .to_string();
    let node = agent.get_json(&format!("/v1/node/{node_id}"));
    assert_eq!(node["Meta"]["site"], "edge", "{node}");
    assert_eq!(node["Datacenter"], "dc1");
    assert_eq!(
        node["Drivers"]["raw_exec"]["Detected"], true,
        "raw_exec enabled by client.hcl: {node}"
    );
    // Not -dev, and no config key was refused or ignored.
    let text = agent.log();
    assert!(!text.contains("WARN"), "{text}");
    drop(agent);
}

#[test]
fn make_deb_builds_a_package_with_the_files_conffiles_and_scripts() {
    let out_dir = temp_dir("deb");
    let o = out_dir.display().to_string();
    make(&["deb", &format!("DEB_OUT={o}"), "DEB_COMPRESS=gzip"]);
    let deb = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "./usr/bin/nomadlet",
        "./lib/systemd/system/nomadlet.service",
        "./etc/nomadlet.d/client.hcl",
        "./etc/nomadlet.d/server.hcl",
        "./usr/share/man/man1/nomadlet.1.gz",
        "./usr/share/doc/nomadlet/copyright",
        "./usr/share/doc/nomadlet/changelog.Debian.gz",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(want)),
            "{want} not in:\n{list}"
        );
    }
    let field = |f: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg(f)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "nomadlet");
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    let ctrl = out_dir.join("ctrl");
    let st = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&ctrl)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read_to_string(ctrl.join("conffiles")).unwrap(),
        "/etc/nomadlet.d/client.hcl\n/etc/nomadlet.d/server.hcl\n"
    );
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-helper enable 'nomadlet.service'"));
    assert!(postinst.contains("deb-systemd-invoke $_action 'nomadlet.service'"));
    for s in ["postinst", "prerm", "postrm"] {
        assert_eq!(mode(&ctrl.join(s)), 0o755, "{s}");
        let st = Command::new("sh")
            .arg("-n")
            .arg(ctrl.join(s))
            .status()
            .unwrap();
        assert!(st.success(), "{s} is not valid sh");
    }
    // Run the scripts with stub helpers that log their calls: a first install enables the
    // unit; removal masks it; purge forgets it.
    let stubs = out_dir.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let calls = out_dir.join("calls");
    for tool in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
        let p = stubs.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{tool} $*\" >> {}\n", calls.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run_script = |script: &str, arg: &str| {
        let st = Command::new("sh")
            .arg(ctrl.join(script))
            .arg(arg)
            .env(
                "PATH",
                format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap()),
            )
            .status()
            .unwrap();
        assert!(st.success(), "{script} {arg}");
    };
    run_script("postinst", "configure");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(
        log.contains("deb-systemd-helper enable nomadlet.service"),
        "{log}"
    );
    // Started only where systemd runs (this test host may not be booted with it).
    if Path::new("/run/systemd/system").is_dir() {
        assert!(
            log.contains("deb-systemd-invoke start nomadlet.service"),
            "{log}"
        );
    }
    run_script("postrm", "remove");
    run_script("postrm", "purge");
    let log = std::fs::read_to_string(&calls).unwrap();
    // postrm calls the helper only while /usr/bin/deb-systemd-helper exists (dh's convention).
    let helper = Path::new("/usr/bin/deb-systemd-helper").exists();
    for want in [
        "deb-systemd-helper mask nomadlet.service",
        "deb-systemd-helper purge nomadlet.service",
    ] {
        assert_eq!(log.contains(want), helper, "{want}: {log}");
    }

    // The packaged unit starts the packaged binary.
    let unit =
        std::fs::read_to_string(out_dir.join("root/lib/systemd/system/nomadlet.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/nomadlet agent -config /etc/nomadlet.d"));

    if Command::new("lintian").arg("--version").output().is_ok() {
        let out = Command::new("lintian")
            .args(["--tag-display-limit", "0"])
            .arg(&deb)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
        assert!(errors.is_empty(), "lintian errors:\n{text}");
        eprintln!("lintian (warnings allowed):\n{text}");
    } else {
        eprintln!(
            "SKIPPED lintian: not installed (make deps-deb installs it; make deb-lint runs it)"
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}
