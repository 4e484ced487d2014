//! Scheduling across a cluster, multi-process on loopback: one server-only agent and three
//! (then four) client-only agents, each its own ports and data dir. A count-4 service job is
//! spread over the clients; a system job gets one alloc per node and one more when a client
//! joins; constraints and resource asks fail with Nomad's metrics; a client killed with
//! SIGKILL goes down and its allocs are replaced on the others.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Short heartbeats so a dead client is noticed in seconds.
const FAST_HEARTBEATS: &str =
    "server {\n  enabled = true\n  bootstrap_expect = 1\n  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"1s\"\n}\n";
const WAIT: Duration = Duration::from_secs(30);

/// One agent of the cluster (its own ports, config file and data dir).
struct Member {
    child: Option<Child>,
    http: u16,
    rpc: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl Member {
    fn start(kind: &str, role: &str) -> Member {
        let (http, rpc, serf) = (free_port(), free_port(), free_port());
        let data_dir = short_dir();
        let config = data_dir.with_extension(format!("{http}.hcl"));
        std::fs::write(
            &config,
            format!(
                "bind_addr = \"127.0.0.1\"\nports {{\n  http = {http}\n  rpc = {rpc}\n  serf = {serf}\n}}\n{role}"
            ),
        )
        .expect("config");
        let log_path = data_dir.with_extension(format!("{http}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(bin())
            .args(["agent", "-data-dir"])
            .arg(&data_dir)
            .arg("-config")
            .arg(&config)
            .args(["-node", &format!("{kind}-{http}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nomadlet");
        let m = Member {
            child: Some(child),
            http,
            rpc,
            data_dir,
            log_path,
        };
        wait_until(WAIT, &format!("{kind} listening"), || {
            TcpStream::connect(("127.0.0.1", http)).is_ok()
        });
        m
    }

    fn server() -> Member {
        Member::start("server", FAST_HEARTBEATS)
    }

    fn client(server: &Member) -> Member {
        Member::start(
            "client",
            &format!(
                "client {{\n  enabled = true\n  servers = [\"127.0.0.1:{}\"]\n}}\nplugin \"raw_exec\" {{\n  config {{ enabled = true }}\n}}\n",
                server.rpc
            ),
        )
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let s = TcpStream::connect(("127.0.0.1", self.http)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        exchange(s, &build_request(method, path, &[], body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get_json(&self, path: &str) -> Value {
        let r = self.request("GET", path, b"");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    fn node_id(&self) -> String {
        self.get_json("/v1/agent/self")["stats"]["client"]["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: no shutdown at all (its tasks keep running under their shims).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(c.id() as i32, 15);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_leftover_tasks(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(self.data_dir.with_extension(format!("{}.hcl", self.http)));
        let _ = std::fs::remove_file(&self.log_path);
    }
}

fn ready_nodes(server: &Member) -> BTreeSet<String> {
    server
        .get_json("/v1/nodes")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|n| n["Status"] == "ready")
        .map(|n| n["ID"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn job(id: &str, ty: &str, count: i64) -> Value {
    json!({"Job": {"ID": id, "Type": ty, "TaskGroups": [{"Name": "g", "Count": count,
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", "sleep 120"]},
            "Resources": {"CPU": 20, "MemoryMB": 16}}]}]}})
}

fn register(server: &Member, body: &Value) -> String {
    let r = server.request("POST", "/v1/jobs", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["EvalID"].as_str().unwrap().to_string()
}

fn eval_done(server: &Member, id: &str) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT, &format!("eval {id} evaluated"), || {
        last = server.get_json(&format!("/v1/evaluation/{id}"));
        last["Status"] != "pending"
    });
    last
}

/// The job's allocs that should run: node → how many running there.
fn running_by_node(server: &Member, job: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in server
        .get_json(&format!("/v1/job/{job}/allocations"))
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if a["DesiredStatus"] == "run" && a["ClientStatus"] == "running" {
            *out.entry(a["NodeID"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    out
}

fn wait_running(server: &Member, job: &str, total: usize) -> BTreeMap<String, usize> {
    let mut last = BTreeMap::new();
    wait_until(WAIT, &format!("{total} allocs of {job} running"), || {
        last = running_by_node(server, job);
        last.values().sum::<usize>() == total
    });
    last
}

#[test]
fn a_server_spreads_jobs_over_its_clients_and_replaces_a_dead_clients_allocs() {
    let server = Member::server();
    let mut clients: Vec<Member> = (0..3).map(|_| Member::client(&server)).collect();
    wait_until(WAIT, "three ready nodes", || {
        ready_nodes(&server).len() == 3
    });

    // A count-4 service job: spread over all three clients (job anti-affinity).
    let e = register(&server, &job("web", "service", 4));
    assert_eq!(eval_done(&server, &e)["Status"], "complete");
    let spread = wait_running(&server, "web", 4);
    assert_eq!(spread.len(), 3, "placed across every client: {spread:?}");

    // A system job: one alloc per node, and one more when a fourth client joins.
    register(&server, &job("sys", "system", 1));
    let per_node = wait_running(&server, "sys", 3);
    assert!(per_node.values().all(|n| *n == 1), "{per_node:?}");
    clients.push(Member::client(&server));
    wait_until(WAIT, "four ready nodes", || ready_nodes(&server).len() == 4);
    let per_node = wait_running(&server, "sys", 4);
    assert_eq!(per_node.len(), 4, "{per_node:?}");
    let newest = clients[3].node_id();
    assert_eq!(per_node.get(&newest), Some(&1));

    // A constraint no node meets, and an ask no node has: Nomad's metrics over four nodes.
    let mut win = job("win", "service", 2);
    win["Job"]["Constraints"] =
        json!([{"LTarget": "${attr.kernel.name}", "RTarget": "windows", "Operand": "="}]);
    let eval = eval_done(&server, &register(&server, &win));
    let m = &eval["FailedTGAllocs"]["g"];
    assert_eq!(m["NodesEvaluated"], 4, "{eval}");
    assert_eq!(m["NodesFiltered"], 4);
    assert_eq!(m["ConstraintFiltered"]["${attr.kernel.name} = windows"], 4);
    assert_eq!(m["CoalescedFailures"], 1);
    assert_eq!(eval["QueuedAllocations"]["g"], 2);
    assert!(!eval["BlockedEval"].as_str().unwrap_or("").is_empty());
    let mut huge = job("huge", "batch", 1);
    huge["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] = json!(1_000_000_000i64);
    let eval = eval_done(&server, &register(&server, &huge));
    let m = &eval["FailedTGAllocs"]["g"];
    assert_eq!(m["NodesExhausted"], 4, "{eval}");
    assert_eq!(m["DimensionExhausted"]["memory"], 4);

    // SIGKILL a client running web allocs: it goes down, its allocs are lost and replaced.
    let by_node = running_by_node(&server, "web");
    let victim = clients
        .iter()
        .position(|c| by_node.contains_key(&c.node_id()))
        .expect("a client runs web");
    let victim_id = clients[victim].node_id();
    clients[victim].kill9();
    wait_until(WAIT, "the killed client down", || {
        server.get_json(&format!("/v1/node/{victim_id}"))["Status"] == "down"
    });
    let after = wait_running(&server, "web", 4);
    assert!(!after.contains_key(&victim_id), "{after:?}");
    let lost = server
        .get_json("/v1/job/web/allocations")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["NodeID"] == victim_id.as_str())
        .collect::<Vec<_>>();
    assert!(!lost.is_empty());
    assert!(
        lost.iter()
            .all(|a| a["ClientStatus"] == "lost" && a["DesiredStatus"] == "stop"),
        "{lost:?}"
    );
    let summary = server.get_json("/v1/job/web/summary");
    assert_eq!(summary["Summary"]["g"]["Running"], 4, "{summary}");
    assert_eq!(summary["Summary"]["g"]["Lost"], lost.len(), "{summary}");
    assert!(server.log().contains("placement failed"));
}
