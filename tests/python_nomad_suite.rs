//! python-nomad's own test suite (2.1.0, from its PyPI sdist) against the real agent, run as its
//! CI runs it against `nomad agent -dev -acl-enabled`: everything except variables and
//! deployments (not built yet) and the few tests that cannot pass against Nomad's raw_exec
//! either, each named below with its reason. The venv and the sdist are fetched once into
//! cargo's target tmp dir.

mod common;
use common::*;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The python-nomad release whose suite is run.
const PYTHON_NOMAD: &str = "2.1.0";

/// The longest the suite may run (seconds, for `timeout`).
const SUITE_TIMEOUT: &str = "600";

/// What python-nomad's requirements-dev.txt pins for its suite.
const SUITE_DEPS: &[&str] = &[
    "pytest==7.2.0",
    "flaky==3.7.0",
    "responses==0.22.0",
    "mock==4.0.3",
    "requests==2.32.2",
    // Its suite reads a job's allocations the moment after registering it, racing the
    // scheduler (as against Nomad, whose scheduler is asynchronous too): on a loaded machine a
    // failed test runs again, at most twice, a second apart. A test that fails for real fails
    // every time.
    "pytest-rerunfailures==11.1.2",
];

/// Test files for what nomadlet does not build yet (a later issue): variables, deployments.
const NOT_BUILT: &[&str] = &[
    "tests/test_variable.py",
    "tests/test_variables.py",
    "tests/test_deployment.py",
    "tests/test_deployments.py",
];

/// Single tests left out, with the reason each cannot pass against Nomad with raw_exec either.
const LEFT_OUT: &[(&str, &str)] = &[
    (
        "tests/test_job.py::test_get_job_deployments",
        "deployments are not built",
    ),
    (
        "tests/test_job.py::test_get_job_deployment",
        "deployments are not built",
    ),
    (
        "tests/test_job.py::test_revert_job",
        "reads the job version from the job's deployment",
    ),
    (
        "tests/test_job.py::test_stable_job",
        "reads the job version from the job's deployment",
    ),
    (
        "tests/test_job.py::test_delete_job_with_invalid_purge_param_raises",
        "expects the client library to raise; python-nomad 2.1.0 sends the request",
    ),
    (
        "tests/test_job.py::test_dispatch_job_idempotency",
        "registers the job under another ID: Nomad answers 400 Job ID does not match name too",
    ),
    (
        "tests/test_client.py::test_signal_allocation_invalid_signal",
        "expects docker's error; Nomad's raw_exec sends SIGINT for an unknown name",
    ),
    (
        "tests/test_base.py::test_base_get_connection_error",
        "connects to an outside address; tests here use loopback only",
    ),
    (
        "tests/test_base.py::test_base_put_connection_error",
        "connects to an outside address; tests here use loopback only",
    ),
    (
        "tests/test_base.py::test_base_delete_connection_error",
        "connects to an outside address; tests here use loopback only",
    ),
];

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv with the suite's pinned dependencies, and the unpacked sdist, made once.
fn suite_dir() -> (PathBuf, PathBuf) {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-nomad-suite");
    let python = python_venv("python-nomad-suite", &[SUITE_DEPS]).join("python");
    let src = base.join(format!("python_nomad-{PYTHON_NOMAD}"));
    if !src.join("tests").exists() {
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                ])
                .arg(&base)
                .arg(format!("python-nomad=={PYTHON_NOMAD}")),
            "pip download of python-nomad's sdist",
        );
        run(
            Command::new("tar")
                .arg("xzf")
                .arg(base.join(format!("python_nomad-{PYTHON_NOMAD}.tar.gz")))
                .arg("-C")
                .arg(&base),
            "unpacking the sdist",
        );
    }
    // The harness files the sdist leaves out, and the example job (raw_exec).
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/pynomad_suite");
    for f in ["conftest.py", "common.py"] {
        std::fs::copy(ours.join(f), src.join("tests").join(f)).expect("copy harness");
    }
    std::fs::write(src.join("tests/__init__.py"), "").expect("tests package");
    for f in ["example.nomad", "example_batch_parameterized.json"] {
        std::fs::copy(ours.join(f), src.join(f)).expect("example job");
    }
    (python, src)
}

#[test]
fn python_nomads_own_suite_passes_but_for_what_is_not_built() {
    let (python, src) = suite_dir();
    // As the suite's CI: `nomad agent -dev -node pynomad1 -acl-enabled`, and example.json
    // made from the example job (here by this agent's own parse endpoint).
    let agent = TestAgent::start(&["-acl-enabled", "-node", "pynomad1"]);
    let parser = TestAgent::start(&[]);
    let hcl = std::fs::read_to_string(src.join("example.nomad")).expect("example");
    let r = parser.request(
        "POST",
        "/v1/jobs/parse",
        &[],
        json!({"JobHCL": hcl, "Canonicalize": true})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let job: Value = serde_json::from_slice(&r.body).expect("parsed job");
    std::fs::write(src.join("example.json"), json!({ "Job": job }).to_string())
        .expect("example.json");
    drop(parser);

    // The whole suite runs in about 5 s; a hung request must not hang `make test`.
    let mut cmd = Command::new("timeout");
    cmd.arg(SUITE_TIMEOUT)
        .arg(&python)
        .current_dir(&src)
        .env("NOMAD_IP", "127.0.0.1")
        .env("NOMAD_PORT", agent.port.to_string())
        .env("NOMAD_VERSION", "1.9.5")
        .env_remove("NOMAD_TOKEN")
        .env_remove("NOMAD_ADDR")
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "--runxfail"])
        .args(["--reruns", "2", "--reruns-delay", "1"]);
    for f in NOT_BUILT {
        cmd.arg(format!("--ignore={f}"));
    }
    for (t, _why) in LEFT_OUT {
        cmd.arg(format!("--deselect={t}"));
    }
    cmd.arg("tests/");
    let out = cmd.output().expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-nomad's suite failed:\n{stdout}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    // Not vacuous: the summary line counts what ran.
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or_default()
        .to_string();
    let passed: u32 = summary
        .split_whitespace()
        .zip(summary.split_whitespace().skip(1))
        .find(|(_, w)| w.starts_with("passed"))
        .and_then(|(n, _)| n.trim_start_matches('=').parse().ok())
        .unwrap_or(0);
    assert!(passed >= 200, "only {passed} passed: {summary}");
    assert!(!summary.contains("failed"), "{summary}");
    eprintln!("python-nomad {PYTHON_NOMAD}: {summary}");
}
