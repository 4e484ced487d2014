//! nomad-tools (`nomadtools watch run|start|stop|purge`, 0.5.8 from PyPI) against the real
//! agent, with and without `--polling`: the event stream, blocking queries on the job, job
//! versions and alloc logs as a real tool reads them. nomad-tools shells out to `nomad job run`
//! for registration; nomadlet's own CLI stands in as `nomad` on its PATH.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The nomad-tools release that is run.
const NOMAD_TOOLS: &str = "nomad-tools==0.5.8";

/// Longest one `nomadtools watch` may take (its jobs finish in a few seconds).
const WATCH_TIMEOUT: &str = "120";

/// nomadtools, from a venv made once in cargo's target tmp dir.
fn nomadtools() -> PathBuf {
    python_venv("nomad-tools", &[&[NOMAD_TOOLS]]).join("nomadtools")
}

/// A dir holding `nomad` → this build's nomadlet, for nomad-tools' `nomad job run`.
fn nomad_on_path(dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("bin dir");
    let link = dir.join("nomad");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nomadlet"), &link).expect("symlink nomad");
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

struct Watch {
    code: Option<i32>,
    out: String,
}

fn watch(tool: &Path, agent: &TestAgent, path: &str, args: &[&str], cwd: &Path) -> Watch {
    let out = Command::new("timeout")
        .arg(WATCH_TIMEOUT)
        .arg(tool)
        .arg("watch")
        // Every log line as it comes, from the start. With the default tail (-n 30)
        // nomad-tools 0.5.8 drops all lines when none predate the job's ModifyIndex at
        // start (its MyloggerDelayer returns on an empty old-line cache): its quirk, whatever
        // the server.
        .args(["-n", "-1"])
        .args(args)
        .current_dir(cwd)
        .env("PATH", path)
        .env("NOMAD_ADDR", format!("http://127.0.0.1:{}", agent.port))
        // It leaves with os._exit: a buffered stdout would be lost into the pipe.
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("NOMAD_TOKEN")
        .env_remove("NOMAD_NAMESPACE")
        .output()
        .expect("run nomadtools");
    Watch {
        code: out.status.code(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn nomadtools_watch_runs_starts_stops_and_purges_jobs_with_and_without_polling() {
    let tool = nomadtools();
    let agent = TestAgent::start(&[]);
    let dir = temp_dir("nomadtools");
    std::fs::create_dir_all(&dir).expect("work dir");
    let path = nomad_on_path(&dir.join("bin"));
    let batch = |id: &str| {
        format!(
            r#"{{"Job":{{"ID":"{id}","Type":"batch","TaskGroups":[{{"Name":"g","Count":1,"Tasks":[{{"Name":"t","Driver":"raw_exec","Config":{{"command":"/bin/sh","args":["-c","echo hello from {id}; sleep 1"]}}}}]}}]}}}}"#
        )
    };
    std::fs::write(dir.join("events.json"), batch("events")).unwrap();
    std::fs::write(dir.join("polled.json"), batch("polled")).unwrap();
    std::fs::write(
        dir.join("svc.json"),
        r#"{"Job":{"ID":"svc","Type":"service","TaskGroups":[{"Name":"g","Count":1,"Tasks":[{"Name":"t","Driver":"raw_exec","Config":{"command":"/bin/sh","args":["-c","echo svc up; exec sleep 600"]}}]}]}}"#,
    )
    .unwrap();

    // `watch run`: registers, follows to the end, prints the task's output, exits with its
    // exit code — through the event stream, then by polling.
    for (args, id) in [
        (vec!["run", "events.json"], "events"),
        (vec!["--polling", "run", "polled.json"], "polled"),
    ] {
        let w = watch(&tool, &agent, &path, &args, &dir);
        assert_eq!(w.code, Some(0), "{args:?}:\n{}", w.out);
        assert!(
            w.out.contains(&format!("hello from {id}")),
            "{}\nagent log:\n{}",
            w.out,
            agent.log()
        );
        assert!(w.out.contains("exited with 0 exit status"), "{}", w.out);
        assert_eq!(agent.get_json(&format!("/v1/job/{id}"))["Status"], "dead");
    }

    // `watch start`: returns once the service runs, and leaves it running.
    let w = watch(&tool, &agent, &path, &["start", "svc.json"], &dir);
    assert_eq!(w.code, Some(0), "{}", w.out);
    assert!(w.out.contains("until it is started"), "{}", w.out);
    assert_eq!(agent.get_json("/v1/job/svc")["Status"], "running");

    // `watch stop`: stops it and exits with the task's exit code (SIGINT, Nomad's default
    // kill signal: 130), having told a stop from a purge.
    let w = watch(&tool, &agent, &path, &["stop", "svc"], &dir);
    assert_eq!(w.code, Some(130), "{}", w.out);
    assert!(w.out.contains("Stopping job svc"), "{}", w.out);
    assert!(!w.out.contains("purged"), "{}", w.out);
    assert_eq!(agent.get_json("/v1/job/svc")["Status"], "dead");

    // Polling: start again, then purge; the job is gone.
    let w = watch(
        &tool,
        &agent,
        &path,
        &["--polling", "start", "svc.json"],
        &dir,
    );
    assert_eq!(w.code, Some(0), "{}", w.out);
    let w = watch(&tool, &agent, &path, &["--polling", "purge", "svc"], &dir);
    assert_eq!(w.code, Some(130), "{}", w.out);
    assert!(w.out.contains("purged"), "{}", w.out);
    wait_until(Duration::from_secs(5), "the purged job to be gone", || {
        agent.request("GET", "/v1/job/svc", &[], b"").status == 404
    });
    let _ = std::fs::remove_dir_all(&dir);
}
