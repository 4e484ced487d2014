//! Parameterized jobs through the real binary: the parent is never scheduled (no eval,
//! `running`), `POST /v1/job/:id/dispatch` checks payload and meta with Nomad's errors, makes
//! `<id>/dispatch-<unix>-<8 hex>` children that a real task runs with the payload in
//! `local/<file>` and the meta in its environment; idempotency tokens; stopped parents.

mod common;
mod workloads_helpers;

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

fn param_job(id: &str, payload: &str) -> Value {
    json!({"Job": {"ID": id, "Type": "batch",
        "ParameterizedJob": {"Payload": payload, "MetaRequired": ["who"], "MetaOptional": ["mood"]},
        "TaskGroups": [{"Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "DispatchPayload": {"File": "in/input.txt"},
                "Config": {"command": "/bin/sh", "args": ["-c",
                    "printf '%s|%s|%s|' \"$(cat local/in/input.txt)\" \"$NOMAD_META_who\" \"$NOMAD_JOB_PARENT_ID\"; pwd"]}}]}]}})
}

fn dispatch(agent: &TestAgent, id: &str, body: &Value) -> common::Response {
    agent.request(
        "POST",
        &format!("/v1/job/{id}/dispatch"),
        &[],
        body.to_string().as_bytes(),
    )
}

#[test]
fn a_parameterized_job_dispatches_children_that_run_with_payload_and_meta() {
    let agent = TestAgent::start(&[]);
    let r = register(&agent, &param_job("report", "required"));
    assert_eq!(r["EvalID"], "", "a parameterized parent gets no eval");
    assert_eq!(r["EvalCreateIndex"], 0);
    let parent = agent.get_json("/v1/job/report");
    assert_eq!(parent["Status"], "running");
    assert_eq!(parent["ParameterizedJob"]["Payload"], "required");
    assert!(agent
        .get_json("/v1/job/report/evaluations")
        .as_array()
        .unwrap()
        .is_empty());
    assert!(allocs(&agent, "report").is_empty());

    // Nomad's refusals, before anything is written.
    let cases: &[(Value, u16, &str)] = &[
        (
            json!({"Meta": {"who": "x"}}),
            500,
            "Payload is not provided but required by parameterized job",
        ),
        (
            json!({"Payload": "aGk=", "Meta": {"who": "x", "bad": "1"}}),
            500,
            "Dispatch request included unpermitted metadata keys: [bad]",
        ),
        (
            json!({"Payload": "aGk=", "Meta": {"mood": "ok"}}),
            500,
            "Dispatch did not provide required meta keys: [who]",
        ),
        (
            json!({"Payload": encoding_base64(&vec![b'x'; 16 * 1024 + 1]), "Meta": {"who": "x"}}),
            500,
            "Payload exceeds maximum size; 16385 > 16384",
        ),
        (
            json!({"JobID": "other", "Payload": "aGk="}),
            400,
            "Job ID does not match",
        ),
        (
            json!({"Payload": "not base64!"}),
            400,
            "illegal base64 data in Payload",
        ),
        (json!({"Meta": {"who": 5}}), 400, ""),
    ];
    for (body, status, text) in cases {
        let r = dispatch(&agent, "report", body);
        assert_eq!(r.status, *status, "{body}: {}", r.text());
        assert!(r.text().starts_with(text), "{body}: {}", r.text());
    }
    let r = dispatch(&agent, "nope", &json!({}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "parameterized job not found")
    );
    register(&agent, &sh_job("plain", "batch", "true"));
    let r = dispatch(&agent, "plain", &json!({}));
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        "Specified job \"plain\" is not a parameterized job"
    );
    assert_eq!(
        agent
            .request("GET", "/v1/job/report/dispatch", &[], b"")
            .status,
        405
    );
    let jobs_before = agent.get_json("/v1/jobs").as_array().unwrap().len();
    assert_eq!(jobs_before, 2, "no refused dispatch made a job");

    let r = dispatch(
        &agent,
        "report",
        &json!({"Payload": encoding_base64(b"hello payload"), "Meta": {"who": "ada"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "DispatchedJobID",
            "EvalID",
            "EvalCreateIndex",
            "JobCreateIndex",
            "Index"
        ]
    );
    let child = d["DispatchedJobID"].as_str().unwrap().to_string();
    let suffix = child
        .strip_prefix("report/dispatch-")
        .expect("dispatched ID");
    let (unix, hex) = suffix.split_once('-').unwrap();
    assert!(unix.parse::<u64>().unwrap() > 1_700_000_000);
    assert!(
        hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{hex}"
    );
    assert_eq!(r.header("X-Nomad-Index").unwrap(), d["Index"].to_string());
    assert!(!d["EvalID"].as_str().unwrap().is_empty());

    let job = agent.get_json(&format!("/v1/job/{child}"));
    assert_eq!(job["ParentID"], "report");
    assert_eq!(job["Dispatched"], true);
    assert_eq!(job["Name"], child.as_str());
    assert_eq!(job["Meta"]["who"], "ada");
    assert_eq!(job["Payload"], encoding_base64(b"hello payload"));
    let eval = wait_eval_done(&agent, d["EvalID"].as_str().unwrap());
    assert_eq!(eval["TriggeredBy"], "job-register");
    assert_eq!(eval["JobID"], child.as_str());

    let id = first_alloc(&agent, &child);
    wait_status(&agent, &id, "complete");
    let out = read_log(&agent, &id, "t", "stdout");
    assert!(
        out.starts_with("hello payload|ada|report|"),
        "the task saw its payload, meta and parent: {out:?}"
    );
    let file = alloc_dir(&agent, &id).join("t/local/in/input.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"hello payload");
    // The child ends as any batch job does (it keeps its parent's ParameterizedJob, yet is
    // not a parent); the parent still has no allocations of its own and stays running.
    wait_until(WAIT, "the finished child dead", || {
        agent.get_json(&format!("/v1/job/{child}"))["Status"] == "dead"
    });
    assert!(allocs(&agent, "report").is_empty());
    assert_eq!(agent.get_json("/v1/job/report")["Status"], "running");
    let list = agent.get_json("/v1/jobs?prefix=report");
    let stub = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|j| j["ID"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(stub(&child)["ParentID"], "report");
    assert_eq!(
        stub(&child)["ParameterizedJob"],
        false,
        "a dispatched child is not a parent"
    );
    assert_eq!(stub("report")["ParameterizedJob"], true);
    let children = &stub("report")["JobSummary"]["Children"];
    assert_eq!(children["Dead"], 1, "{children}");
}

#[test]
fn idempotency_tokens_forbidden_payloads_and_stopped_parents() {
    let agent = TestAgent::start(&[]);
    register(&agent, &param_job("p", "forbidden"));
    let r = dispatch(
        &agent,
        "p",
        &json!({"Payload": "aGk=", "Meta": {"who": "x"}}),
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        "Payload provided but forbidden by parameterized job"
    );
    let body = json!({"Meta": {"who": "x"}, "IdempotencyToken": "once"});
    let a = dispatch(&agent, "p", &body).json();
    let b = dispatch(&agent, "p", &body).json();
    assert_eq!(a["DispatchedJobID"], b["DispatchedJobID"], "the same child");
    assert_eq!(b["EvalID"], "");
    let children: Vec<Value> = agent
        .get_json("/v1/jobs?prefix=p/dispatch-")
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(children.len(), 1);
    // A bad dispatch_payload file is refused at registration.
    let mut bad = param_job("q", "optional");
    bad["Job"]["TaskGroups"][0]["Tasks"][0]["DispatchPayload"]["File"] = json!("../../etc/x");
    let r = agent.request("PUT", "/v1/jobs", &[], bad.to_string().as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("has invalid path"), "{}", r.text());
    // A parameterized job must be batch; a plain job cannot become parameterized.
    let mut svc = param_job("svc", "optional");
    svc["Job"]["Type"] = json!("service");
    let r = agent.request("PUT", "/v1/jobs", &[], svc.to_string().as_bytes());
    assert!(
        r.text().contains(
            "Parameterized job can only be used with \"batch\" or \"sysbatch\" scheduler"
        ),
        "{}",
        r.text()
    );
    register(&agent, &sh_job("plain", "batch", "true"));
    let r = agent.request(
        "PUT",
        "/v1/jobs",
        &[],
        param_job("plain", "optional").to_string().as_bytes(),
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        "cannot update non-parameterized job to being parameterized"
    );
    // Stopped: no more children.
    let r = agent.request("DELETE", "/v1/job/p", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["EvalID"], "", "a parent's stop makes no eval");
    assert_eq!(agent.get_json("/v1/job/p")["Status"], "dead");
    let r = dispatch(&agent, "p", &json!({"Meta": {"who": "x"}}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "Specified job \"p\" is stopped")
    );
}

/// Standard base64 (what Go's `[]byte` JSON is).
fn encoding_base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
