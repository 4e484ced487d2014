//! python-nomad (installed by `make test`) drives the real agent as a Nomad user's script would.

mod common;
use common::*;

fn run_compat(agent: &TestAgent, sections: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/nomad_compat.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(agent.port.to_string())
        .args(sections)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python-nomad checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_nomad_agent_nodes_and_status_calls_work() {
    let agent = TestAgent::start(&[]);
    run_compat(&agent, &["agent"]);
}

#[test]
fn python_nomad_jobs_allocations_filesystem_and_gc_calls_work() {
    let agent = TestAgent::start(&[]);
    run_compat(&agent, &["workloads"]);
}

#[test]
fn python_nomad_acl_calls_work_against_an_acl_enabled_agent() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    run_compat(&agent, &["acl"]);
}

#[test]
fn python_nomad_search_metrics_namespaces_and_system_gc_calls_work() {
    let agent = TestAgent::start(&[]);
    run_compat(&agent, &["tools"]);
}

#[test]
fn python_nomad_event_stream_calls_work() {
    let agent = TestAgent::start(&[]);
    run_compat(&agent, &["events"]);
}
