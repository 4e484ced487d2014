//! `/v1/event/stream` against the real binary: events made by the server state machine for
//! jobs, evaluations, allocations and nodes with Nomad's keys and the GET endpoints' payloads,
//! topic / key / namespace filters, `index` replay, the `{}` heartbeat, ACL checks per topic,
//! subscriptions freed when their client leaves or the agent stops, and hostile parameters.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// One open event stream (HTTP/1.0: the body ends when the server closes it).
struct Stream {
    tcp: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// Every non-heartbeat line, parsed.
    lines: Vec<Value>,
    heartbeats: usize,
    /// A last line that is not JSON (Nomad's error text).
    error: Option<String>,
}

fn open(agent: &TestAgent, query: &str, token: Option<&str>) -> Stream {
    let mut tcp = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    let auth = token
        .map(|t| format!("X-Nomad-Token: {t}\r\n"))
        .unwrap_or_default();
    write!(tcp, "GET /v1/event/stream?{query} HTTP/1.0\r\n{auth}\r\n").unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut s = Stream {
        tcp,
        buf: Vec::new(),
        eof: false,
        lines: Vec::new(),
        heartbeats: 0,
        error: None,
    };
    let deadline = Instant::now() + WAIT;
    while !s.buf.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(Instant::now() < deadline && !s.eof, "no stream head");
        s.read_raw();
    }
    let at = s.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&s.buf[..at]).into_owned();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("application/json"), "{head}");
    s.buf.drain(..at);
    s.read_some();
    s
}

impl Stream {
    /// Read what arrived (waits at most the 100 ms read timeout).
    fn read_raw(&mut self) {
        let mut b = [0u8; 65536];
        match self.tcp.read(&mut b) {
            Ok(0) => self.eof = true,
            Ok(n) => self.buf.extend_from_slice(&b[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => self.eof = true,
        }
    }

    /// Read what arrived and take the complete lines.
    fn read_some(&mut self) {
        self.read_raw();
        while let Some(nl) = self.buf.iter().position(|c| *c == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..nl]).into_owned();
            match serde_json::from_str::<Value>(&text) {
                Ok(v) if v == json!({}) => self.heartbeats += 1,
                Ok(v) => self.lines.push(v),
                Err(_) => self.error = Some(text),
            }
        }
        if self.eof && !self.buf.is_empty() {
            self.error = Some(String::from_utf8_lossy(&self.buf).into_owned());
            self.buf.clear();
        }
    }

    /// Read until `done` holds for what arrived; panics at the deadline.
    fn until(&mut self, what: &str, mut done: impl FnMut(&Stream) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline && !self.eof,
                "stream: no {what} (eof {}, error {:?}); got {:#?}",
                self.eof,
                self.error,
                self.lines
            );
            self.read_some();
        }
    }

    /// Read until the server ends the stream.
    fn until_eof(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !self.eof {
            assert!(Instant::now() < deadline, "the stream did not end");
            self.read_some();
        }
    }

    fn events(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .flat_map(|l| l["Events"].as_array().unwrap().iter())
            .collect()
    }

    fn has(&self, f: impl Fn(&Value) -> bool) -> bool {
        self.events().into_iter().any(f)
    }
}

fn batch_job(id: &str) -> Value {
    json!({"Job": {"ID": id, "Type": "batch", "Datacenters": ["dc1"], "TaskGroups": [
        {"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}})
}

fn register(agent: &TestAgent, id: &str, token: Option<&str>) -> Value {
    let hdrs: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Nomad-Token", t)])
        .unwrap_or_default();
    let r = agent.request(
        "PUT",
        "/v1/jobs",
        &hdrs,
        batch_job(id).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn is(e: &Value, topic: &str, key: &str) -> bool {
    e["Topic"] == topic && e["Key"] == key
}

fn job_dead(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| is(e, "Job", id) && e["Payload"]["Job"]["Status"] == "dead"
}

/// The job ran: its alloc's `complete` event, then a `dead` job event at or after it.
fn job_done(s: &Stream, id: &str) -> bool {
    let events = s.events();
    let Some(done) = events.iter().position(|e| {
        e["Topic"] == "Allocation"
            && e["FilterKeys"][0] == id
            && e["Payload"]["Allocation"]["ClientStatus"] == "complete"
    }) else {
        return false;
    };
    events[done..].iter().any(|e| job_dead(id)(e))
}

fn gauge(agent: &TestAgent, name: &str) -> f64 {
    agent.get_json("/v1/metrics")["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == name)
        .and_then(|g| g["Value"].as_f64())
        .unwrap_or_else(|| panic!("no gauge {name}"))
}

#[test]
fn a_job_run_streams_its_job_eval_and_alloc_events_with_the_get_endpoints_json() {
    let agent = TestAgent::start(&[]);
    let mut s = open(&agent, "", None);
    s.until("the connect heartbeat", |s| s.heartbeats >= 1);
    let reg = register(&agent, "ev-web", None);
    let eval_id = reg["EvalID"].as_str().unwrap().to_string();
    s.until("the job's run", |s| job_done(s, "ev-web"));

    // One line per index, every event carrying it.
    for l in &s.lines {
        for e in l["Events"].as_array().unwrap() {
            assert_eq!(e["Index"], l["Index"], "{l}");
        }
    }
    let events = s.events();
    let first_job = events.iter().find(|e| is(e, "Job", "ev-web")).unwrap();
    assert_eq!(first_job["Type"], "JobRegistered");
    assert_eq!(first_job["Namespace"], "default");
    assert_eq!(first_job["FilterKeys"], Value::Null);
    assert_eq!(first_job["Index"], reg["JobModifyIndex"]);

    // The evaluation: keyed by its ID, filterable by its job; its latest event is its GET.
    let get_eval = agent.get_json(&format!("/v1/evaluation/{eval_id}"));
    let at = get_eval["ModifyIndex"].clone();
    s.until("the eval's latest event", |s| {
        s.has(|e| is(e, "Evaluation", &eval_id) && e["Payload"]["Evaluation"]["ModifyIndex"] == at)
    });
    let events = s.events();
    let eval = events
        .iter()
        .rfind(|e| is(e, "Evaluation", &eval_id))
        .unwrap();
    assert_eq!(eval["FilterKeys"][0], "ev-web");
    assert_eq!(eval["Payload"]["Evaluation"], get_eval);

    // Allocations: made with the job, then updated by the client until complete.
    let allocs = agent.get_json("/v1/job/ev-web/allocations");
    let alloc_id = allocs[0]["ID"].as_str().unwrap().to_string();
    let alloc_events: Vec<&&Value> = events
        .iter()
        .filter(|e| is(e, "Allocation", &alloc_id))
        .collect();
    assert!(alloc_events.iter().all(|e| e["FilterKeys"][0] == "ev-web"));
    assert!(alloc_events
        .iter()
        .any(|e| e["Type"] == "AllocationUpdated"));
    // The event of the alloc's latest index is its GET, less the job (Nomad drops it).
    let mut get = agent.get_json(&format!("/v1/allocation/{alloc_id}"));
    get.as_object_mut().unwrap().remove("Job");
    let at = get["ModifyIndex"].clone();
    s.until("the alloc's latest event", |s| {
        s.has(|e| is(e, "Allocation", &alloc_id) && e["Payload"]["Allocation"]["ModifyIndex"] == at)
    });
    let latest = s
        .events()
        .into_iter()
        .rfind(|e| is(e, "Allocation", &alloc_id))
        .unwrap()
        .clone();
    assert_eq!(latest["Payload"]["Allocation"], get);

    // The job's last event is its GET (status included).
    let job = agent.get_json("/v1/job/ev-web");
    let last_job = s
        .events()
        .into_iter()
        .rfind(|e| is(e, "Job", "ev-web"))
        .unwrap()
        .clone();
    assert_eq!(last_job["Payload"]["Job"], job);
    assert_eq!(job["Status"], "dead");
}

#[test]
fn topics_keys_namespaces_and_index_narrow_and_replay_the_stream() {
    let agent = TestAgent::start(&[]);
    let mut only_a = open(&agent, "topic=Job:ev-a", None);
    let mut allocs = open(&agent, "topic=Allocation", None);
    let mut both = open(&agent, "topic=Job:ev-a&topic=Evaluation:ev-b", None);
    register(&agent, "ev-a", None);
    register(&agent, "ev-b", None);
    only_a.until("ev-a dead", |s| s.has(job_dead("ev-a")));
    assert!(only_a.events().iter().all(|e| is(e, "Job", "ev-a")));
    allocs.until("both jobs' allocs", |s| {
        s.has(|e| e["FilterKeys"][0] == "ev-a") && s.has(|e| e["FilterKeys"][0] == "ev-b")
    });
    assert!(allocs.events().iter().all(|e| e["Topic"] == "Allocation"));
    both.until("ev-b's eval", |s| s.has(|e| e["Topic"] == "Evaluation"));
    assert!(both.events().iter().all(
        |e| is(e, "Job", "ev-a") || e["Topic"] == "Evaluation" && e["FilterKeys"][0] == "ev-b"
    ));

    // Replay: index=0 is everything retained, from the node's registration on; index=N
    // starts at N.
    let mut all = open(&agent, "index=0", None);
    all.until("the node's registration", |s| !s.lines.is_empty());
    assert_eq!(all.lines[0]["Events"][0]["Type"], "NodeRegistration");
    all.until("ev-b's run", |s| job_done(s, "ev-b"));
    let mid = all.lines[all.lines.len() / 2]["Index"].as_u64().unwrap();
    let mut from = open(&agent, &format!("index={mid}"), None);
    from.until("the replay", |s| job_done(s, "ev-b"));
    assert_eq!(from.lines[0]["Index"], mid);
    assert!(from
        .lines
        .iter()
        .all(|l| l["Index"].as_u64().unwrap() >= mid));
    let replayed: Vec<&Value> = all
        .lines
        .iter()
        .filter(|l| l["Index"].as_u64().unwrap() >= mid)
        .collect();
    // The same lines as the first reading from `mid` on (as far as both have read).
    let n = replayed.len().min(from.lines.len());
    assert_eq!(from.lines.iter().take(n).collect::<Vec<_>>(), replayed[..n]);

    // Namespaces: jobs of `default` are not in another namespace's stream; node events
    // (without a namespace) are. A metadata change (a node event) marks the end of the replay.
    let mut other = open(&agent, "topic=Job&topic=Node&namespace=other", None);
    let mut star = open(&agent, "topic=Job&namespace=*", None);
    let r = agent.request(
        "POST",
        "/v1/client/metadata",
        &[],
        br#"{"Meta": {"ev-mark": "1"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    other.until("the metadata's node event", |s| {
        s.has(|e| e["Topic"] == "Node" && e["Payload"]["Node"]["Meta"]["ev-mark"] == "1")
    });
    assert!(!other.has(|e| e["Topic"] == "Job"), "{:#?}", other.lines);
    star.until("default's jobs", |s| s.has(job_dead("ev-a")));
}

#[test]
fn an_idle_stream_sends_a_heartbeat_when_connected_and_every_ten_seconds() {
    let agent = TestAgent::start(&[]);
    let mut s = open(&agent, "topic=Job:nothing", None);
    s.until("the connect heartbeat", |s| s.heartbeats == 1);
    let connected = Instant::now();
    let deadline = connected + Duration::from_secs(15);
    while s.heartbeats < 2 {
        assert!(Instant::now() < deadline, "no heartbeat in 15 s");
        s.read_some();
    }
    let waited = connected.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "heartbeat after {waited:?}"
    );
    assert!(s.lines.is_empty() && s.error.is_none());
}

#[test]
fn acls_check_each_topic_and_a_deleted_token_closes_its_stream() {
    let agent = TestAgent::start(&["-acl-enabled"]);
    let r = agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    let mgmt = r.json()["SecretID"].as_str().unwrap().to_string();
    let h = [("X-Nomad-Token", mgmt.as_str())];
    let policy = json!({"Name": "readjob", "Rules":
        "namespace \"default\" { capabilities = [\"read-job\"] }"});
    let r = agent.request(
        "POST",
        "/v1/acl/policy/readjob",
        &h,
        policy.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = json!({"Name": "r", "Type": "client", "Policies": ["readjob"]});
    let r = agent.request("POST", "/v1/acl/token", &h, body.to_string().as_bytes());
    let reader = r.json();
    let secret = reader["SecretID"].as_str().unwrap().to_string();
    let rh = [("X-Nomad-Token", secret.as_str())];

    for (query, hdrs) in [
        ("topic=Node", &rh[..]),
        ("topic=*", &rh[..]),
        ("", &rh[..]),
        ("topic=ACLToken", &rh[..]),
        ("topic=Job&namespace=other", &rh[..]),
        ("topic=Job", &[][..]),
    ] {
        let r = agent.request("GET", &format!("/v1/event/stream?{query}"), hdrs, b"");
        assert_eq!(
            (r.status, r.text()),
            (403, "Permission denied".into()),
            "{query}"
        );
    }

    let mut jobs = open(&agent, "topic=Job", Some(&secret));
    let mut everything = open(&agent, "topic=*", Some(&mgmt));
    register(&agent, "ev-acl", Some(&mgmt));
    jobs.until("the job's events", |s| s.has(job_dead("ev-acl")));
    assert!(jobs
        .events()
        .iter()
        .all(|e| e["Topic"] == "Job" && e["Namespace"] == "default"));
    everything.until("node and alloc events", |s| {
        s.has(|e| e["Topic"] == "Node") && s.has(|e| e["Topic"] == "Allocation")
    });

    // The reader's token is deleted: its stream is closed with Nomad's line; the
    // management stream sees the deletion (no secret in it).
    let accessor = reader["AccessorID"].as_str().unwrap();
    let r = agent.request("DELETE", &format!("/v1/acl/token/{accessor}"), &h, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    jobs.until_eof();
    assert_eq!(
        jobs.error.as_deref(),
        Some("subscription closed by server, client should resubscribe")
    );
    everything.until("the token deletion", |s| {
        s.has(|e| e["Type"] == "ACLTokenDeleted" && e["Key"] == accessor)
    });
    let deleted = everything
        .events()
        .into_iter()
        .find(|e| e["Type"] == "ACLTokenDeleted")
        .unwrap()
        .clone();
    assert_eq!(deleted["Payload"]["ACLToken"]["SecretID"], "");
    assert_eq!(deleted["Payload"]["ACLToken"]["AccessorID"], accessor);
    assert!(!everything
        .lines
        .iter()
        .any(|l| l.to_string().contains(&secret)));
}

#[test]
fn a_client_that_leaves_frees_its_subscription_and_shutdown_ends_the_rest() {
    let mut agent = TestAgent::start(&[]);
    let mut kept = open(&agent, "topic=Node", None);
    let leaving = open(&agent, "topic=Job", None);
    kept.until("the connect heartbeat", |s| s.heartbeats == 1);
    wait_until(WAIT, "two subscribers", || {
        gauge(&agent, "nomad.event_broker.subscribers") == 2.0
    });
    drop(leaving);
    wait_until(WAIT, "the leaver's subscription freed", || {
        gauge(&agent, "nomad.event_broker.subscribers") == 1.0
    });
    assert!(gauge(&agent, "nomad.event_broker.retained_events") >= 1.0);
    agent.stop();
    kept.until_eof();
}

#[test]
fn hostile_parameters_get_nomads_400s() {
    let agent = TestAgent::start(&[]);
    let too_many: Vec<String> = (0..65).map(|i| format!("topic=Job:{i}")).collect();
    for (query, text) in [
        (
            "index=abc".to_string(),
            "Unable to parse index: strconv.Atoi: parsing \"abc\": invalid syntax",
        ),
        (
            "index=99999999999999999999".into(),
            "Unable to parse index: strconv.Atoi: parsing \"99999999999999999999\": value out of range",
        ),
        (
            "topic=Job:a:b".into(),
            "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: Job:a:b",
        ),
        (too_many.join("&"), "Invalid topic query: at most 64 topics"),
    ] {
        let r = agent.get(&format!("/v1/event/stream?{query}"));
        assert_eq!((r.status, r.text().as_str()), (400, text), "{query}");
    }
    // A negative index and odd topic names are taken as Nomad takes them.
    let mut s = open(&agent, "index=-1&topic=Nope&topic=&namespace=%00", None);
    s.until("the connect heartbeat", |s| s.heartbeats == 1);
}

#[test]
fn a_server_streams_the_events_of_a_remote_clients_node_and_allocs() {
    let server = TestAgent::server("", &[]);
    let mut s = open(&server, "", None);
    let _client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    s.until("the remote node ready", |s| {
        s.has(|e| e["Topic"] == "Node" && e["Payload"]["Node"]["Status"] == "ready")
    });
    assert!(s.has(|e| e["Type"] == "NodeRegistration"));
    register(&server, "ev-remote", None);
    s.until("the remote alloc complete and the job dead", |s| {
        s.has(job_dead("ev-remote"))
            && s.has(|e| {
                e["Type"] == "AllocationUpdated"
                    && e["Payload"]["Allocation"]["ClientStatus"] == "complete"
            })
    });
}
