//! Agent config as Nomad operators write it: HCL and JSON files, a config directory merged in
//! lexical order, both JSON forms of blocks, unknown keys refused with file, line and key, and
//! keys nomadlet does not act on accepted with a warning.

mod common;
use common::*;

use std::path::Path;

/// Run `nomadlet agent` with `args` expecting it to refuse to start: (exit code, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin())
        .arg("agent")
        .args(args)
        .output()
        .expect("run nomadlet");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn node(agent: &TestAgent) -> serde_json::Value {
    let id = agent.get_json("/v1/nodes")[0]["ID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    agent.get_json(&format!("/v1/node/{id}"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p.display().to_string()
}

#[test]
fn an_hcl_config_file_sets_nomad_keys() {
    let dir = temp_dir("cfg-hcl");
    let cfg = write(
        &dir,
        "agent.hcl",
        r#"
# A client config as in /etc/nomad.d
name       = "edge-hcl"
datacenter = "dc-hcl"
region     = "r-hcl"
client {
  meta {
    tier = "gold"
  }
  servers = ["127.0.0.7:4647"]
}
plugin "raw_exec" {
  config {
    enabled = true
  }
}
"#,
    );
    let agent = TestAgent::start(&["-config", &cfg]);
    let n = node(&agent);
    assert_eq!(n["Name"], "edge-hcl");
    assert_eq!(n["Datacenter"], "dc-hcl");
    assert_eq!(n["Meta"]["tier"], "gold");
    assert_eq!(n["Attributes"]["driver.raw_exec"], "1", "{n}");
    assert_eq!(
        agent.get_json("/v1/agent/self")["config"]["Region"],
        "r-hcl"
    );
    assert_eq!(
        agent.get_json("/v1/agent/servers"),
        serde_json::json!(["127.0.0.7:4647"])
    );
}

#[test]
fn a_config_dir_merges_hcl_and_list_form_json_in_lexical_order() {
    let dir = temp_dir("cfg-dir");
    let conf = dir.join("nomad.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    write(
        &conf,
        "10-base.hcl",
        "name = \"base\"\nclient {\n  meta { a = \"1\" }\n}\n",
    );
    // Nomad's list form of blocks, as `nomad` writes JSON configs.
    write(
        &conf,
        "20-override.json",
        r#"{"name": "override", "client": [{"meta": [{"b": "2"}]}],
            "plugin": [{"raw_exec": [{"config": [{"enabled": true}]}]}]}"#,
    );
    write(&conf, "README.txt", "not a config file: skipped");
    let agent = TestAgent::start(&["-config", conf.to_str().unwrap_or_default()]);
    let n = node(&agent);
    assert_eq!(n["Name"], "override");
    assert_eq!(n["Meta"]["a"], "1", "{n}");
    assert_eq!(n["Meta"]["b"], "2", "{n}");
    assert_eq!(n["Attributes"]["driver.raw_exec"], "1", "{n}");
}

#[test]
fn unknown_keys_are_errors_naming_file_line_and_key() {
    let dir = temp_dir("cfg-typo");
    let hcl = write(&dir, "typo.hcl", "name = \"x\"\nports {\n  htp = 4646\n}\n");
    let (code, err) = refused(&["-config", &hcl]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{hcl}:3:")) && err.contains("\"ports.htp\""),
        "{err}"
    );
    let json = write(
        &dir,
        "typo.json",
        "{\n  \"name\": \"x\",\n  \"log_levle\": \"INFO\"\n}\n",
    );
    let (code, err) = refused(&["-config", &json]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{json}:3:")) && err.contains("\"log_levle\""),
        "{err}"
    );
    let bad = write(&dir, "bad.hcl", "name = \n}\n");
    let (code, err) = refused(&["-config", &bad]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{bad}:")) && err.contains("invalid HCL"),
        "{err}"
    );
    let wrong_type = write(&dir, "type.hcl", "ports {\n  http = \"x\"\n}\n");
    let (code, err) = refused(&["-config", &wrong_type]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ports.http"), "{err}");
}

#[test]
fn keys_nomadlet_does_not_act_on_are_accepted_with_a_warning() {
    let dir = temp_dir("cfg-ignored");
    let cfg = write(
        &dir,
        "agent.hcl",
        "consul {\n  address = \"127.0.0.1:8500\"\n}\nplugin \"docker\" {\n  config {}\n}\nname = \"ign\"\n",
    );
    let agent = TestAgent::start(&["-config", &cfg]);
    assert_eq!(node(&agent)["Name"], "ign");
    let log = agent.log();
    assert!(log.contains("\"consul\" is not supported"), "{log}");
    assert!(log.contains("\"plugin.docker\" is not supported"), "{log}");
}
