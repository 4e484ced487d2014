//! jupyterhub-nomad-spawner's own job factory and Nomad client (0.1.0 from PyPI, without
//! JupyterHub itself) spawn a notebook on the real agent: its HCL template parsed and
//! registered, its wait for `running`, the notebook's address read from the allocation and
//! dialled, then its delete (tests/python/jupyterhub_flow.py).

mod common;
use common::*;

use std::process::Command;

/// The spawner release, installed without its JupyterHub and notebook dependencies (only its
/// job factory and Nomad client are used), beside the versions of theirs it pins.
const SPAWNER: &[&str] = &[
    "jupyterhub-nomad-spawner==0.1.0",
    "Jinja2>=3.1.2,<4",
    "attrs>=21.4.0,<22",
    "httpx>=0.23.0,<0.24",
    "pydantic>=1.9.0,<2",
    "tenacity>=8.0.1,<9",
];

fn python() -> std::path::PathBuf {
    // The spawner without its JupyterHub and notebook dependencies, then the versions of
    // theirs it pins (httpx's, pydantic's) with dependency resolution.
    let mut no_deps = vec!["--no-deps"];
    no_deps.extend_from_slice(SPAWNER);
    python_venv("jupyterhub-spawner", &[&no_deps, &SPAWNER[1..]]).join("python")
}

#[test]
fn jupyterhubs_nomad_spawner_parses_registers_and_reaches_its_notebook() {
    let python = python();
    let agent = TestAgent::start(&[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/jupyterhub_flow.py"
    );
    // Its own loops have deadlines; `timeout` bounds the whole, whatever hangs.
    let out = Command::new("timeout")
        .arg("300")
        .arg(&python)
        .arg(script)
        .arg(agent.port.to_string())
        .env_remove("NOMAD_ADDR")
        .env_remove("NOMAD_TOKEN")
        .output()
        .expect("run the spawner flow");
    assert!(
        out.status.success(),
        "spawner flow failed:\n{}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reached the notebook"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
