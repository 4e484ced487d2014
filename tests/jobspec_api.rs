//! `POST /v1/jobs/parse` and `PUT /v1/validate/job` on the real binary: every example HCL
//! parses to the same job as its JSON twin (both registered and read back), variables reach
//! the job, bad and hostile jobspecs get a clear 400, validation answers Nomad's shape.

mod common;

use common::*;
use serde_json::{json, Value};

fn examples() -> Vec<(String, String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".nomad.hcl") {
            let hcl = std::fs::read_to_string(&p).unwrap();
            let json_text = std::fs::read_to_string(dir.join(format!("{stem}.json")))
                .unwrap_or_else(|e| panic!("{stem}.json beside {name}: {e}"));
            out.push((name, hcl, serde_json::from_str(&json_text).unwrap()));
        }
    }
    assert!(out.len() >= 2, "examples: {out:?}");
    out
}

fn parse(agent: &TestAgent, body: &Value) -> Response {
    agent.request("POST", "/v1/jobs/parse", &[], body.to_string().as_bytes())
}

/// The job as the agent keeps it, without what the server sets at registration.
fn registered(agent: &TestAgent, job: &Value) -> Value {
    let r = agent.request(
        "PUT",
        "/v1/jobs",
        &[],
        json!({"Job": job}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "register: {}", r.text());
    let id = job["ID"].as_str().unwrap();
    let mut v = agent.get_json(&format!("/v1/job/{id}"));
    let obj = v.as_object_mut().unwrap();
    for k in [
        "Status",
        "StatusDescription",
        "Stable",
        "Version",
        "SubmitTime",
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
    ] {
        obj.remove(k);
    }
    v
}

#[test]
fn every_example_parses_over_http_to_the_job_its_json_twin_registers() {
    let agent = TestAgent::start(&[]);
    for (name, hcl, want) in examples() {
        let r = parse(&agent, &json!({"JobHCL": hcl}));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let parsed = r.json();
        assert_eq!(parsed["ID"], want["Job"]["ID"], "{name}");
        // Canonicalize fills Nomad's defaults the way registration does.
        let canon = parse(&agent, &json!({"JobHCL": hcl, "Canonicalize": true})).json();
        assert_eq!(canon["Priority"], 50, "{name}: {canon}");
        assert_eq!(canon["Namespace"], "default", "{name}");
        let from_hcl = registered(&agent, &parsed);
        let from_json = registered(&agent, &want["Job"]);
        assert_eq!(from_hcl, from_json, "{name}: HCL and JSON twins differ");
        let del = agent.request(
            "DELETE",
            &format!("/v1/job/{}?purge=true", parsed["ID"].as_str().unwrap()),
            &[],
            b"",
        );
        assert_eq!(del.status, 200);
    }
}

#[test]
fn variables_input_reaches_the_job_and_runtime_interpolations_stay() {
    let agent = TestAgent::start(&[]);
    let hcl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/hello.nomad.hcl"
    ))
    .unwrap();
    let r = parse(
        &agent,
        &json!({"JobHCL": hcl, "Variables": "greeting = \"hi\"\ninterval = 2\n"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let job = r.json();
    let task = &job["TaskGroups"][0]["Tasks"][0];
    let script = task["Config"]["args"][1].as_str().unwrap();
    assert!(script.contains("HI from ${NOMAD_ALLOC_ID}"), "{script}");
    assert!(script.contains("sleep 2;"), "{script}");
    assert_eq!(task["Env"]["GREETING"], "hi");
    assert_eq!(task["KillTimeout"], 2_000_000_000i64);
}

#[test]
fn bad_jobspecs_get_a_clear_400() {
    let agent = TestAgent::start(&[]);
    let cases: &[(Value, &str)] = &[
        (json!({"JobHCL": ""}), "Job spec is empty"),
        (json!({}), "Job spec is empty"),
        (
            json!({"JobHCL": "job \"x\" {\n  type = = 1\n}\n"}),
            "input.hcl:2,",
        ),
        (
            json!({"JobHCL": "job \"x\" {\n  colour = \"red\"\n}\n"}),
            "input.hcl:2,3: Unsupported argument; An argument named \"colour\" is not expected here.",
        ),
        (
            json!({"JobHCL": "variable \"v\" {}\njob \"x\" {}\n"}),
            "Unset variable \"v\"",
        ),
        (
            json!({"JobHCL": "job \"x\" {}\n", "Variables": "nope = 1\n"}),
            "Undefined variable",
        ),
        (
            json!({"JobHCL": format!("job \"x\" {{\n meta = {{ a = {}1{} }}\n}}\n", "[".repeat(5000), "]".repeat(5000))}),
            "deeper than",
        ),
        (
            json!({"JobHCL": format!("job \"x\" {{\n meta {{ a = \"{}\" }}\n}}\n", "y".repeat(600 * 1024))}),
            "larger than",
        ),
        (
            json!({"JobHCL": "job \"x\" {\n  meta {\n    a = [<<EOF\nhi\nEOF\n    ]\n  }\n}\n"}),
            "heredoc",
        ),
    ];
    for (body, want) in cases {
        let r = parse(&agent, body);
        assert_eq!(r.status, 400, "{body:.80}: {}", r.text());
        assert!(r
            .header("Content-Type")
            .unwrap_or("")
            .starts_with("text/plain"));
        assert!(r.text().contains(want), "{want:?} not in {:?}", r.text());
    }
    let r = agent.request("POST", "/v1/jobs/parse", &[], b"{not json");
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("Failed to decode body"),
        "{}",
        r.text()
    );
    // A body over the request limit is refused before it is parsed.
    let huge = json!({"JobHCL": "#".repeat(2 * 1024 * 1024)}).to_string();
    let r = agent.request("POST", "/v1/jobs/parse", &[], huge.as_bytes());
    assert_eq!(
        (r.status, r.text().as_str()),
        (413, "request body too large")
    );
    let r = agent.get("/v1/jobs/parse");
    assert_eq!(r.status, 405);
    // The agent is still there and well.
    assert_eq!(agent.get("/v1/agent/health").status, 200);
}

#[test]
fn validate_answers_nomads_shape() {
    let agent = TestAgent::start(&[]);
    let good = json!({"Job": {"ID": "v", "TaskGroups": [{"Name": "g", "Tasks": [
        {"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}});
    let r = agent.request("PUT", "/v1/validate/job", &[], good.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"DriverConfigValidated": true, "ValidationErrors": null, "Error": "", "Warnings": ""})
    );
    let bad = json!({"Job": {"ID": "v", "Priority": 500, "TaskGroups": []}});
    let r = agent.request("PUT", "/v1/validate/job", &[], bad.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["DriverConfigValidated"], false);
    let errs: Vec<&str> = v["ValidationErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errs.contains(&"Job priority must be between [1, 100]"),
        "{errs:?}"
    );
    assert!(errs.contains(&"Missing job task groups"), "{errs:?}");
    assert!(
        v["Error"].as_str().unwrap().contains("errors occurred"),
        "{v}"
    );
    // Nothing was registered.
    assert_eq!(agent.get("/v1/job/v").status, 404);
    let r = agent.request("PUT", "/v1/validate/job", &[], b"{}");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Job must be specified")
    );
}

#[test]
fn parse_needs_parse_job_when_acls_are_on() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let body = json!({"JobHCL": "job \"a\" {}\n"}).to_string();
    let r = agent.request("POST", "/v1/jobs/parse", &[], body.as_bytes());
    assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    let boot = agent.request("POST", "/v1/acl/bootstrap", &[], b"").json();
    let secret = boot["SecretID"].as_str().unwrap();
    let r = agent.request(
        "POST",
        "/v1/jobs/parse",
        &[("X-Nomad-Token", secret)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ID": "a", "Name": "a"}));
}
