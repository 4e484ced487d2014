//! The operator tools endpoints against the real binary: prefix and fuzzy search, metrics
//! (JSON and Prometheus) with real figures, agent host data with secrets redacted, the agent
//! log monitor, one-time ACL tokens, namespaces and node pools, system GC, alloc checks, and
//! the job endpoint fixes (deregister of an unknown job, unknown job sub-paths).

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn req(agent: &TestAgent, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let hdrs: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    agent.request(method, path, &hdrs, body.as_bytes())
}

fn register(agent: &TestAgent, token: Option<&str>, job: Value) -> Response {
    req(
        agent,
        "PUT",
        "/v1/jobs",
        token,
        &json!({ "Job": job }).to_string(),
    )
}

fn batch_job(id: &str) -> Value {
    json!({"ID": id, "Type": "batch", "Datacenters": ["dc1"], "TaskGroups": [
        {"Name": "grp", "Count": 1, "Tasks": [{"Name": "worker", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]})
}

/// Register a batch job and wait for its alloc to complete; its alloc ID.
fn run_batch(agent: &TestAgent, token: Option<&str>, id: &str) -> String {
    let r = register(agent, token, batch_job(id));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut alloc = String::new();
    wait_until(WAIT, "alloc complete", || {
        let r = req(
            agent,
            "GET",
            &format!("/v1/job/{id}/allocations"),
            token,
            "",
        );
        let list = r.json();
        match list.as_array().and_then(|l| l.first()) {
            Some(a) if a["ClientStatus"] == "complete" => {
                alloc = a["ID"].as_str().unwrap_or_default().to_string();
                true
            }
            _ => false,
        }
    });
    alloc
}

fn bootstrap(agent: &TestAgent) -> String {
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["SecretID"].as_str().unwrap().to_string()
}

fn client_token(agent: &TestAgent, mgmt: &str, rules: &str) -> Value {
    let name = format!("p{}", rules.len());
    let body = json!({"Name": name, "Description": "", "Rules": rules}).to_string();
    let r = req(
        agent,
        "POST",
        &format!("/v1/acl/policy/{name}"),
        Some(mgmt),
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = json!({"Name": "c", "Type": "client", "Policies": [name]}).to_string();
    let r = req(agent, "POST", "/v1/acl/token", Some(mgmt), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn node_id(agent: &TestAgent) -> String {
    agent.get_json("/v1/nodes")[0]["ID"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn prefix_and_fuzzy_search_find_real_objects_in_nomads_shape() {
    let agent = TestAgent::start(&[]);
    let alloc = run_batch(&agent, None, "web-search");
    let node = node_id(&agent);
    let search = |prefix: &str, context: &str| {
        let r = req(
            &agent,
            "POST",
            "/v1/search",
            None,
            &json!({"Prefix": prefix, "Context": context}).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("X-Nomad-Index").is_some());
        r.json()
    };
    let r = search("web-", "jobs");
    assert_eq!(r["Matches"], json!({"jobs": ["web-search"]}));
    assert_eq!(r["Truncations"], json!({"jobs": false}));
    assert_eq!(search("nope", "jobs")["Matches"]["jobs"], json!([]));
    // An odd-length UUID prefix is rounded down, as Nomad does.
    assert_eq!(
        search(&alloc[..7], "allocs")["Matches"]["allocs"],
        json!([alloc])
    );
    assert_eq!(
        search(&node[..8], "nodes")["Matches"]["nodes"],
        json!([node])
    );
    let evals = agent.get_json("/v1/evaluations");
    let eval = evals[0]["ID"].as_str().unwrap();
    assert_eq!(
        search(&eval[..8], "evals")["Matches"]["evals"],
        json!([eval])
    );
    assert_eq!(
        search("def", "namespaces")["Matches"]["namespaces"],
        json!(["default"])
    );
    assert_eq!(
        search("", "node_pools")["Matches"]["node_pools"],
        json!(["all", "default"])
    );
    let all = search("web", "all");
    assert_eq!(all["Matches"]["jobs"], json!(["web-search"]));
    for c in [
        "allocs",
        "evals",
        "nodes",
        "deployment",
        "plugins",
        "volumes",
    ] {
        assert_eq!(all["Matches"][c], json!([]), "{c}");
        assert_eq!(all["Truncations"][c], json!(false), "{c}");
    }

    // Fuzzy: substrings of names, with their scope.
    let fuzzy = |text: &str, context: &str| {
        req(
            &agent,
            "POST",
            "/v1/search/fuzzy",
            None,
            &json!({"Text": text, "Context": context}).to_string(),
        )
    };
    let r = fuzzy("SEARCH", "jobs");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["Matches"]["jobs"],
        json!([{"ID": "web-search", "Scope": ["default", "web-search"]}])
    );
    let r = fuzzy("ork", "all").json();
    assert_eq!(
        r["Matches"]["tasks"],
        json!([{"ID": "worker", "Scope": ["default", "web-search", "grp"]}])
    );
    let r = fuzzy("grp", "all").json();
    assert_eq!(
        r["Matches"]["groups"],
        json!([{"ID": "grp", "Scope": ["default", "web-search"]}])
    );
    assert_eq!(
        r["Matches"]["allocs"],
        json!([{"ID": "web-search.grp[0]", "Scope": ["default", alloc]}])
    );
    let r = fuzzy("defa", "namespaces").json();
    assert_eq!(r["Matches"]["namespaces"], json!([{"ID": "default"}]));
    let r = fuzzy("x", "jobs");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("at least 2 characters"), "{}", r.text());

    // Errors: method, context, body.
    assert_eq!(req(&agent, "GET", "/v1/search", None, "").status, 405);
    let r = req(
        &agent,
        "POST",
        "/v1/search",
        None,
        r#"{"Prefix":"a","Context":"bogus"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("got \"bogus\""), "{}", r.text());
    assert_eq!(req(&agent, "POST", "/v1/search", None, "").status, 400);
    assert_eq!(req(&agent, "POST", "/v1/search", None, "[1]").status, 400);
    assert_eq!(
        req(&agent, "POST", "/v1/search/other", None, "{}").status,
        404
    );
}

#[test]
fn search_truncates_at_twenty_matches() {
    let agent = TestAgent::start(&[]);
    for i in 0..21 {
        let mut job = batch_job(&format!("many-{i:02}"));
        job["TaskGroups"][0]["Count"] = json!(0);
        let r = register(&agent, None, job);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = req(
        &agent,
        "POST",
        "/v1/search",
        None,
        r#"{"Prefix":"many-","Context":"jobs"}"#,
    );
    let v = r.json();
    assert_eq!(v["Matches"]["jobs"].as_array().unwrap().len(), 20);
    assert_eq!(v["Matches"]["jobs"][0], "many-00");
    assert_eq!(v["Truncations"]["jobs"], true);
}

#[test]
fn search_shows_only_the_contexts_a_token_may_read() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    run_batch(&agent, Some(&mgmt), "secret-job");
    let nodes_only = client_token(&agent, &mgmt, r#"node { policy = "read" }"#);
    let t = nodes_only["SecretID"].as_str().unwrap();
    let body = r#"{"Prefix":"","Context":"all"}"#;
    let r = req(&agent, "POST", "/v1/search", Some(t), body);
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json()["Matches"].clone();
    assert!(m.get("jobs").is_none(), "{m}");
    assert_eq!(m["nodes"].as_array().unwrap().len(), 1);
    let r = req(
        &agent,
        "POST",
        "/v1/search",
        Some(t),
        r#"{"Prefix":"","Context":"jobs"}"#,
    );
    assert_eq!((r.status, r.text()), (403, "Permission denied".to_string()));
    let r = req(&agent, "POST", "/v1/search", None, body);
    assert_eq!(r.status, 403);
    let r = req(&agent, "POST", "/v1/search", Some(&mgmt), body);
    assert_eq!(r.json()["Matches"]["jobs"], json!(["secret-job"]));
}

fn counter(metrics: &Value, name: &str, labels: Value) -> Option<u64> {
    metrics["Counters"]
        .as_array()?
        .iter()
        .find(|c| c["Name"] == name && c["Labels"] == labels)
        .and_then(|c| c["Count"].as_u64())
}

fn gauge(metrics: &Value, name: &str) -> Option<f64> {
    metrics["Gauges"]
        .as_array()?
        .iter()
        .find(|g| g["Name"] == name)
        .and_then(|g| g["Value"].as_f64())
}

#[test]
fn metrics_report_real_http_state_and_process_figures() {
    let agent = TestAgent::start(&[]);
    run_batch(&agent, None, "counted");
    for _ in 0..3 {
        agent.get_json("/v1/jobs");
    }
    assert_eq!(agent.get("/v1/no-such-thing").status, 404);
    let m = agent.get_json("/v1/metrics");
    for key in ["Timestamp", "Gauges", "Points", "Counters", "Samples"] {
        assert!(m.get(key).is_some(), "{key} in {m}");
    }
    assert!(m["Timestamp"].as_str().unwrap().ends_with(" +0000 UTC"));
    let jobs_ok = json!({"method": "GET", "route": "/v1/jobs", "status": "200"});
    assert!(counter(&m, "nomad.http.requests", jobs_ok.clone()).unwrap() >= 3);
    let unknown = json!({"method": "GET", "route": "/v1/:id", "status": "404"});
    assert_eq!(counter(&m, "nomad.http.requests", unknown), Some(1));
    assert_eq!(gauge(&m, "nomad.nomad.job_status.dead"), Some(1.0));
    assert_eq!(gauge(&m, "nomad.client.allocations.terminal"), Some(1.0));
    assert_eq!(gauge(&m, "nomad.client.tasks.dead"), Some(1.0));
    assert!(gauge(&m, "nomad.runtime.num_threads").unwrap() > 1.0);
    assert!(gauge(&m, "nomad.runtime.rss_bytes").unwrap() > 1e6);
    assert!(gauge(&m, "nomad.http.connections_open").unwrap() >= 1.0);
    let sample = m["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["Name"] == "nomad.http.request_duration_ms" && s["Labels"]["route"] == "/v1/jobs"
        })
        .expect("a timing sample of /v1/jobs");
    assert!(sample["Count"].as_u64().unwrap() >= 3);
    assert!(sample["Max"].as_f64().unwrap() >= sample["Min"].as_f64().unwrap());

    // A blocking query waiting is seen while it waits.
    let port = agent.port;
    let waiter = std::thread::spawn(move || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).ok();
        exchange(
            s,
            &build_request("GET", "/v1/jobs?index=1000000&wait=3s", &[], b""),
        )
        .map(|r| r.status)
    });
    wait_until(WAIT, "a blocking query counted", || {
        gauge(
            &agent.get_json("/v1/metrics"),
            "nomad.http.blocking_queries_waiting",
        ) == Some(1.0)
    });
    assert_eq!(waiter.join().unwrap().unwrap(), 200);
    wait_until(WAIT, "the blocking query gone", || {
        gauge(
            &agent.get_json("/v1/metrics"),
            "nomad.http.blocking_queries_waiting",
        ) == Some(0.0)
    });

    // Prometheus text with nomad_ names.
    let r = agent.get("/v1/metrics?format=prometheus");
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    let text = r.text();
    assert!(
        text.contains("# TYPE nomad_http_requests counter"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .starts_with("nomad_http_requests{method=\"GET\",route=\"/v1/jobs\",status=\"200\"} ")),
        "{text}"
    );
    assert!(text.contains("nomad_nomad_job_status_dead 1\n"), "{text}");
    assert!(
        text.contains("nomad_http_request_duration_ms_count{"),
        "{text}"
    );

    // Like Nomad, any other format is the JSON summary.
    assert!(agent.get_json("/v1/metrics?format=xml")["Gauges"].is_array());
    assert_eq!(agent.request("PUT", "/v1/metrics", &[], b"").status, 405);
    assert_eq!(agent.get("/v1/metrics/x").status, 404);
}

#[test]
fn agent_host_reports_the_host_and_never_a_secret() {
    let dir = temp_dir("host");
    let agent = TestAgent::start_with(
        &dir,
        &[],
        &[
            ("NOMADLET_TEST_TOKEN", "tok-supersecret"),
            ("MY_DB_PASSWORD", "hunter2-secret"),
            ("NOMADLET_PLAIN", "visible-value"),
        ],
        None,
    );
    let r = agent.get("/v1/agent/host");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(!text.contains("tok-supersecret") && !text.contains("hunter2-secret"));
    let v = r.json();
    assert_eq!(v["AgentID"], node_id(&agent));
    let h = &v["HostData"];
    assert!(h["OS"].as_str().unwrap().contains("Linux"), "{}", h["OS"]);
    assert_eq!(h["Environment"]["NOMADLET_PLAIN"], "visible-value");
    assert_eq!(h["Environment"]["NOMADLET_TEST_TOKEN"], "<redacted>");
    assert_eq!(h["Environment"]["MY_DB_PASSWORD"], "<redacted>");
    assert!(h["Disk"]
        .as_object()
        .unwrap()
        .values()
        .any(|d| d["DiskMB"].as_u64().unwrap() > 0));
    assert!(
        h["Network"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["address"] == "127.0.0.1"),
        "{}",
        h["Network"]
    );
    assert!(h["Hosts"].is_string() && h["ResolvConf"].is_string());
    let r = agent.get("/v1/agent/host?server_id=a&node_id=b");
    assert_eq!(
        (r.status, r.text()),
        (
            400,
            "Can only forward to either client node or server".to_string()
        )
    );
    assert_eq!(agent.request("PUT", "/v1/agent/host", &[], b"").status, 405);
}

#[test]
fn agent_host_needs_agent_read() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    assert_eq!(agent.get("/v1/agent/host").status, 403);
    let nodes = client_token(&agent, &mgmt, r#"node { policy = "read" }"#);
    let r = req(
        &agent,
        "GET",
        "/v1/agent/host",
        nodes["SecretID"].as_str(),
        "",
    );
    assert_eq!(r.status, 403);
    let reader = client_token(&agent, &mgmt, r#"agent { policy = "read" }"#);
    let r = req(
        &agent,
        "GET",
        "/v1/agent/host",
        reader["SecretID"].as_str(),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A monitor stream over HTTP/1.0 (close-delimited body), its head already read.
struct Monitor {
    stream: TcpStream,
    seen: Vec<u8>,
}

fn open_monitor(agent: &TestAgent, query: &str, token: &str) -> Monitor {
    let mut s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    write!(
        s,
        "GET /v1/agent/monitor?{query} HTTP/1.0\r\nX-Nomad-Token: {token}\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut m = Monitor {
        stream: s,
        seen: Vec::new(),
    };
    let deadline = Instant::now() + WAIT;
    while !m.seen.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no monitor head");
        m.pump();
    }
    let head = String::from_utf8_lossy(&m.seen).into_owned();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let at = m.seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    m.seen.drain(..at);
    m
}

impl Monitor {
    /// Read what arrived (waits at most the 200 ms read timeout).
    fn pump(&mut self) {
        let mut buf = [0u8; 8192];
        match self.stream.read(&mut buf) {
            Ok(n) => self.seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("monitor read: {e}"),
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            n |= (val(*c) as u32) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The log text carried by the `Data` of every frame in a framed monitor body.
fn frames_text(body: &str) -> String {
    let mut out = String::new();
    for v in serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .flatten()
    {
        if let Some(d) = v["Data"].as_str() {
            assert_eq!(v["FileEvent"], "log", "{v}");
            out.push_str(&String::from_utf8_lossy(&b64_decode(d)));
        }
    }
    out
}

#[test]
fn monitor_streams_log_lines_at_the_level_asked_until_the_client_leaves() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    let mut plain_info = open_monitor(&agent, "log_level=info&plain=true", &mgmt);
    let mut framed = open_monitor(&agent, "log_level=INFO", &mgmt);
    let mut errors_only = open_monitor(&agent, "log_level=error&plain=true", &mgmt);
    wait_until(WAIT, "three monitors subscribed", || {
        gauge(
            &req(&agent, "GET", "/v1/metrics", None, "").json(),
            "nomad.agent.monitor.subscribers",
        ) == Some(3.0)
    });
    // Making a one-time token logs an INFO line naming the token's accessor.
    let r = req(&agent, "PUT", "/v1/acl/token/onetime", Some(&mgmt), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let accessor = r.json()["OneTimeToken"]["AccessorID"]
        .as_str()
        .unwrap()
        .to_string();
    let line = format!("one-time token made for ACL token {accessor}");
    let deadline = Instant::now() + WAIT;
    while !plain_info.text().contains(&line) {
        assert!(
            Instant::now() < deadline,
            "plain monitor got: {}",
            plain_info.text()
        );
        plain_info.pump();
    }
    assert!(
        plain_info.text().contains("[INFO]"),
        "{}",
        plain_info.text()
    );
    while !frames_text(&framed.text()).contains(&line) {
        assert!(
            Instant::now() < deadline,
            "framed monitor got: {}",
            framed.text()
        );
        framed.pump();
    }
    // An idle framed stream sends heartbeats.
    let before = framed.seen.len();
    while !framed.text()[before..].contains("{}") {
        assert!(Instant::now() < deadline, "no heartbeat: {}", framed.text());
        framed.pump();
    }
    // The error-level stream was subscribed before the INFO line and got nothing.
    errors_only.pump();
    assert_eq!(
        errors_only.text(),
        "",
        "an INFO line reached an ERROR monitor"
    );
    assert!(
        !plain_info.text().contains(&mgmt),
        "a secret reached the log"
    );

    // Leaving ends the stream: the subscribers go away.
    drop(plain_info);
    drop(framed);
    drop(errors_only);
    wait_until(WAIT, "monitors gone", || {
        gauge(
            &req(&agent, "GET", "/v1/metrics", None, "").json(),
            "nomad.agent.monitor.subscribers",
        ) == Some(0.0)
    });

    // Errors and ACL.
    let r = req(
        &agent,
        "GET",
        "/v1/agent/monitor?log_level=LOUD",
        Some(&mgmt),
        "",
    );
    assert_eq!(
        (r.status, r.text()),
        (400, "Unknown log level: LOUD".to_string())
    );
    let r = req(
        &agent,
        "GET",
        "/v1/agent/monitor?plain=maybe",
        Some(&mgmt),
        "",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("Unknown option for plain"),
        "{}",
        r.text()
    );
    let r = req(
        &agent,
        "GET",
        "/v1/agent/monitor?node_id=a&server_id=b",
        Some(&mgmt),
        "",
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        req(&agent, "GET", "/v1/agent/monitor", None, "").status,
        403
    );
}

#[test]
fn one_time_tokens_are_exchanged_once_and_survive_a_restart() {
    let dir = temp_dir("ott");
    let mut agent = TestAgent::start_in(&dir, &["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    let client = client_token(&agent, &mgmt, r#"namespace "default" { policy = "read" }"#);
    let secret = client["SecretID"].as_str().unwrap();
    let r = req(&agent, "PUT", "/v1/acl/token/onetime", Some(secret), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("X-Nomad-Index").is_some());
    let ott = r.json()["OneTimeToken"].clone();
    assert_eq!(ott["AccessorID"], client["AccessorID"]);
    for key in ["OneTimeSecretID", "ExpiresAt", "CreateIndex", "ModifyIndex"] {
        assert!(!ott[key].is_null(), "{key} in {ott}");
    }
    let one_time = ott["OneTimeSecretID"].as_str().unwrap().to_string();
    let exchange = |agent: &TestAgent, s: &str| {
        req(
            agent,
            "PUT",
            "/v1/acl/token/onetime/exchange",
            None,
            &json!({ "OneTimeSecretID": s }).to_string(),
        )
    };
    // Durable: it survives a restart.
    agent.restart();
    let r = exchange(&agent, &one_time);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Token"]["SecretID"], secret);
    assert_eq!(r.json()["Token"]["AccessorID"], client["AccessorID"]);
    // Once only.
    let r = exchange(&agent, &one_time);
    assert_eq!((r.status, r.text()), (403, "Permission denied".to_string()));
    let r = exchange(&agent, "2b778dd9-f5f1-6f29-b4b4-9a5fa948757a");
    assert_eq!(r.status, 403);
    let r = exchange(&agent, "not-a-uuid");
    assert_eq!(r.status, 403);
    let r = req(&agent, "PUT", "/v1/acl/token/onetime/exchange", None, "");
    assert_eq!(r.status, 400);
    // Only a caller with an ACL token may make one.
    assert_eq!(
        req(&agent, "PUT", "/v1/acl/token/onetime", None, "").status,
        403
    );
    assert_eq!(
        req(&agent, "GET", "/v1/acl/token/onetime", Some(&mgmt), "").status,
        405
    );
    assert!(
        !agent.log().contains(&one_time),
        "a one-time secret reached the log"
    );
}

#[test]
fn one_time_tokens_need_acls() {
    let agent = TestAgent::start(&[]);
    let r = agent.request("PUT", "/v1/acl/token/onetime", &[], b"");
    assert_eq!(
        (r.status, r.text()),
        (400, "ACL support disabled".to_string())
    );
    let r = agent.request("PUT", "/v1/acl/token/onetime/exchange", &[], b"{}");
    assert_eq!(r.status, 400);
}

#[test]
fn namespaces_and_node_pools_are_the_built_in_ones() {
    let agent = TestAgent::start(&[]);
    let list = agent.get_json("/v1/namespaces");
    assert_eq!(list.as_array().unwrap().len(), 1);
    let ns = &list[0];
    assert_eq!(ns["Name"], "default");
    assert_eq!(ns["Description"], "Default shared namespace");
    for key in [
        "Quota",
        "Capabilities",
        "Meta",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(ns.get(key).is_some(), "{key}");
    }
    assert_eq!(agent.get_json("/v1/namespace/default"), *ns);
    assert_eq!(agent.get_json("/v1/namespaces?prefix=x"), json!([]));
    let r = agent.get("/v1/namespace/prod");
    assert_eq!(
        (r.status, r.text()),
        (404, "Namespace not found".to_string())
    );
    let r = agent.request("PUT", "/v1/namespace/prod", &[], b"{}");
    assert_eq!((r.status, r.text()), (404, String::new()));

    // A job in a namespace that does not exist is refused, by body or by query.
    let mut job = batch_job("elsewhere");
    job["Namespace"] = json!("prod");
    let r = register(&agent, None, job);
    assert_eq!(
        (r.status, r.text()),
        (400, "namespace \"prod\" does not exist".to_string())
    );
    let r = agent.request(
        "PUT",
        "/v1/jobs?namespace=prod",
        &[],
        json!({"Job": batch_job("elsewhere")})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(agent.get("/v1/job/elsewhere?namespace=prod").status, 404);

    let pools = agent.get_json("/v1/node/pools");
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["all", "default"]);
    assert_eq!(pools[1]["Description"], "Default node pool.");
    assert_eq!(agent.get_json("/v1/node/pool/all")["Name"], "all");
    assert_eq!(agent.get("/v1/node/pool/gpu").status, 404);
    assert_eq!(
        agent.request("PUT", "/v1/node/pools", &[], b"{}").status,
        404
    );
}

#[test]
fn namespaces_and_node_pools_follow_the_callers_rights() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    assert_eq!(agent.get_json("/v1/namespaces"), json!([]));
    assert_eq!(agent.get_json("/v1/node/pools"), json!([]));
    assert_eq!(agent.get("/v1/namespace/default").status, 403);
    assert_eq!(agent.get("/v1/node/pool/default").status, 403);
    let reader = client_token(&agent, &mgmt, r#"namespace "default" { policy = "read" }"#);
    let t = reader["SecretID"].as_str();
    let r = req(&agent, "GET", "/v1/namespaces", t, "");
    assert_eq!(r.json()[0]["Name"], "default");
    let r = req(&agent, "GET", "/v1/node/pools", Some(&mgmt), "");
    assert_eq!(r.json().as_array().unwrap().len(), 2);
}

#[test]
fn system_gc_collects_terminal_allocations_and_needs_management() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    let alloc = run_batch(&agent, Some(&mgmt), "collect-me");
    let ls = format!("/v1/client/fs/ls/{alloc}?path=/");
    assert_eq!(req(&agent, "GET", &ls, Some(&mgmt), "").status, 200);
    let writer = client_token(&agent, &mgmt, r#"namespace "default" { policy = "write" }"#);
    let r = req(
        &agent,
        "PUT",
        "/v1/system/gc",
        writer["SecretID"].as_str(),
        "",
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        req(&agent, "GET", &ls, Some(&mgmt), "").status,
        200,
        "a refused GC collected"
    );
    assert_eq!(
        req(&agent, "GET", "/v1/system/gc", Some(&mgmt), "").status,
        405
    );
    let r = req(&agent, "PUT", "/v1/system/gc", Some(&mgmt), "");
    assert_eq!((r.status, r.text()), (200, String::new()));
    let r = req(&agent, "GET", &ls, Some(&mgmt), "");
    assert_ne!(r.status, 200, "the alloc dir is gone: {}", r.text());
    assert!(!agent.data_dir.join("alloc").join(&alloc).exists());
    // The servers forgot the finished batch job's alloc too (Nomad's forced core GC).
    let r = req(
        &agent,
        "GET",
        &format!("/v1/allocation/{alloc}"),
        Some(&mgmt),
        "",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        req(&agent, "PUT", "/v1/system/other", Some(&mgmt), "").status,
        404
    );
}

#[test]
fn alloc_checks_are_empty_for_a_known_alloc() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    let alloc = run_batch(&agent, Some(&mgmt), "checked");
    let path = format!("/v1/client/allocation/{alloc}/checks");
    let r = req(&agent, "GET", &path, Some(&mgmt), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
    assert_eq!(req(&agent, "GET", &path, None, "").status, 403);
    let unknown = "2b778dd9-f5f1-6f29-b4b4-9a5fa948757a";
    let r = req(
        &agent,
        "GET",
        &format!("/v1/client/allocation/{unknown}/checks"),
        Some(&mgmt),
        "",
    );
    assert_eq!(
        (r.status, r.text()),
        (404, format!("Unknown allocation \"{unknown}\""))
    );
    assert_eq!(req(&agent, "PUT", &path, Some(&mgmt), "").status, 405);
}

#[test]
fn deregistering_an_unknown_or_purged_job_succeeds_and_unknown_job_paths_are_404() {
    let agent = TestAgent::start(&[]);
    let r = agent.request("DELETE", "/v1/job/never-was", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["EvalID"], "");
    let mut job = batch_job("short-lived");
    job["TaskGroups"][0]["Count"] = json!(0);
    assert_eq!(register(&agent, None, job).status, 200);
    let r = agent.request("DELETE", "/v1/job/short-lived?purge=true", &[], b"");
    assert_eq!(r.status, 200);
    assert_ne!(r.json()["EvalID"], "");
    let r = agent.request("DELETE", "/v1/job/short-lived?purge=true", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["EvalID"], "");

    // Sub-paths nomadlet does not serve are unknown routes, not job IDs (`/plan`,
    // `/dispatch`, `/versions`, `/scale` are served: tests/job_plan.rs, job_dispatch.rs,
    // job_lifecycle.rs).
    let body = json!({"Job": batch_job("x")}).to_string();
    for (m, p) in [("GET", "/v1/job/x/nosuch"), ("PUT", "/v1/job/x/not/served")] {
        let r = agent.request(m, p, &[], body.as_bytes());
        assert_eq!((r.status, r.text()), (404, String::new()), "{m} {p}");
        assert!(r.header("Content-Type").is_none(), "{m} {p}");
    }
    // Served sub-paths answer as Nomad does for an unknown job or a wrong method.
    let r = agent.get("/v1/job/x/versions");
    assert_eq!((r.status, r.text()), (404, "job versions not found".into()));
    let r = agent.request("DELETE", "/v1/job/x/scale", &[], b"");
    assert_eq!((r.status, r.text()), (405, "Invalid method".into()));
}

#[test]
fn a_debug_monitor_sees_debug_lines_the_agents_info_log_does_not_write() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let mgmt = bootstrap(&agent);
    let mut debug = open_monitor(&agent, "log_level=debug&plain=true", &mgmt);
    // A request with an unknown token is refused with a DEBUG line saying why.
    let unknown = "2b778dd9-f5f1-6f29-b4b4-9a5fa948757a";
    assert_eq!(
        req(&agent, "GET", "/v1/jobs", Some(unknown), "").status,
        403
    );
    let deadline = Instant::now() + WAIT;
    while !debug.text().contains("request refused: unknown ACL token") {
        assert!(
            Instant::now() < deadline,
            "debug monitor got: {}",
            debug.text()
        );
        debug.pump();
    }
    assert!(debug.text().contains("[DEBUG]"), "{}", debug.text());
    assert!(!debug.text().contains(unknown), "a token reached the log");
    assert!(
        !agent.log().contains("request refused"),
        "the agent's INFO log wrote a DEBUG line"
    );
}
