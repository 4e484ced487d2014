//! Ports as a resource, end to end on the real binary: a group `network` block's dynamic and
//! static ports reach the task's environment (`NOMAD_PORT_<label>` & co.) and the task binds
//! them; two allocs on one node never share a port; a static port taken by one job blocks
//! another job's placement with Nomad's metric until the first stops; the alloc's and node's
//! JSON; the legacy task `resources.network`; a bridge network is refused.

mod common;
mod workloads_helpers;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use workloads_helpers::*;

/// A task that prints its `NOMAD_*` port variables, then serves one line (`hello <alloc>`)
/// on `NOMAD_PORT_<label>` of 127.0.0.1 to every connection.
fn serve_script(label: &str) -> String {
    format!(
        "env | grep -E '^(NOMAD_(ADDR|HOST_ADDR|IP|IPv4|HOST_IP|PORT|HOST_PORT|ALLOC_PORT)_|MY_)' | sort; \
         exec /usr/bin/perl -MIO::Socket::INET -e '$|=1; \
         my $s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1\", LocalPort => $ENV{{NOMAD_PORT_{label}}}, \
           Listen => 8, ReuseAddr => 1) or die \"bind: $!\"; \
         print \"listening\\n\"; \
         while (my $c = $s->accept) {{ print $c \"hello $ENV{{NOMAD_ALLOC_ID}}\\n\"; close $c }}'"
    )
}

fn port_job(id: &str, count: i64, network: Value, script: &str) -> Value {
    let mut job = sh_job(id, "service", script);
    job["Job"]["TaskGroups"][0]["Count"] = json!(count);
    job["Job"]["TaskGroups"][0]["Networks"] = json!([network]);
    job
}

/// Connect to `addr` and read the line the task serves (polls until it listens).
fn greeting(addr: &str) -> String {
    let mut line = String::new();
    wait_until(WAIT, &format!("a task serving on {addr}"), || {
        let Ok(s) = TcpStream::connect(addr) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        line.clear();
        BufReader::new(s).read_line(&mut line).is_ok() && !line.is_empty()
    });
    line.trim_end().to_string()
}

/// `KEY=value` lines of the task's stdout, once it printed `listening`.
fn task_env(agent: &TestAgent, alloc: &str) -> Vec<(String, String)> {
    let mut out = String::new();
    wait_until(WAIT, "the task's env on stdout", || {
        out = read_log(agent, alloc, "t", "stdout");
        out.contains("listening")
    });
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn env_get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

fn running_allocs(agent: &TestAgent, job: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    wait_until(WAIT, &format!("{n} running allocs of {job}"), || {
        out = allocs(agent, job)
            .into_iter()
            .filter(|a| a["ClientStatus"] == "running")
            .collect();
        out.len() == n
    });
    out.iter()
        .map(|a| alloc(agent, a["ID"].as_str().unwrap()))
        .collect()
}

#[test]
fn a_dynamic_port_reaches_the_task_env_and_the_task_binds_it() {
    let agent = TestAgent::start(&[]);
    let mut job = port_job(
        "web",
        1,
        json!({"DynamicPorts": [{"Label": "http"}, {"Label": "admin", "To": 9000}]}),
        &serve_script("http"),
    );
    // A task env value interpolates the port variables.
    job["Job"]["TaskGroups"][0]["Tasks"][0]["Env"] = json!({"MY_ADDR": "${NOMAD_ADDR_http}"});
    register(&agent, &job);
    let a = running_allocs(&agent, "web", 1).remove(0);
    let id = a["ID"].as_str().unwrap();
    let ports = a["AllocatedResources"]["Shared"]["Ports"]
        .as_array()
        .expect("Shared.Ports")
        .clone();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let http = ports.iter().find(|p| p["Label"] == "http").unwrap();
    let admin = ports.iter().find(|p| p["Label"] == "admin").unwrap();
    let value = http["Value"].as_u64().unwrap();
    assert!((20000..=32000).contains(&value), "{http}");
    // Struct-wide omitempty: no `To` when it is 0.
    assert_eq!(
        http,
        &json!({"Label": "http", "Value": value, "HostIP": "127.0.0.1"})
    );
    assert_eq!(admin["To"], 9000);
    let admin_port = admin["Value"].as_u64().unwrap();
    assert_ne!(admin_port, value);

    let env = task_env(&agent, id);
    let want = [
        ("NOMAD_PORT_http", value.to_string()),
        ("NOMAD_HOST_PORT_http", value.to_string()),
        ("NOMAD_ALLOC_PORT_http", value.to_string()),
        ("NOMAD_IP_http", "127.0.0.1".to_string()),
        ("NOMAD_HOST_IP_http", "127.0.0.1".to_string()),
        ("NOMAD_ADDR_http", format!("127.0.0.1:{value}")),
        ("NOMAD_HOST_ADDR_http", format!("127.0.0.1:{value}")),
        // `to` is the port inside the task's network: NOMAD_PORT_ shows it.
        ("NOMAD_PORT_admin", "9000".to_string()),
        ("NOMAD_ALLOC_PORT_admin", "9000".to_string()),
        ("NOMAD_HOST_PORT_admin", admin_port.to_string()),
        ("NOMAD_ADDR_admin", format!("127.0.0.1:{admin_port}")),
        ("MY_ADDR", format!("127.0.0.1:{value}")),
    ];
    for (k, v) in want {
        assert_eq!(env_get(&env, k), Some(v.as_str()), "{k} in {env:?}");
    }
    // The task really listens there.
    assert_eq!(
        greeting(&format!("127.0.0.1:{value}")),
        format!("hello {id}")
    );

    // The alloc JSON's network shapes (Nomad's, zero fields omitted).
    let shared = &a["AllocatedResources"]["Shared"]["Networks"][0];
    assert_eq!(shared["IP"], "127.0.0.1");
    assert_eq!(
        shared["DynamicPorts"][0],
        json!({"Label": "http", "Value": value, "HostNetwork": "default"})
    );
    // The job's ports are canonicalized as Nomad's server does.
    let job = agent.get_json("/v1/job/web");
    assert_eq!(
        job["TaskGroups"][0]["Networks"][0]["DynamicPorts"][0],
        json!({"Label": "http", "HostNetwork": "default"})
    );
    assert!(shared.get("ReservedPorts").is_none(), "{shared}");
    assert_eq!(
        a["AllocatedResources"]["Tasks"]["t"]["Networks"],
        Value::Null
    );
    assert_eq!(a["Resources"]["Networks"][0]["IP"], "127.0.0.1");
    assert_eq!(a["Resources"]["CPU"], 100);
    assert_eq!(a["SharedResources"]["DiskMB"], 300);
    assert_eq!(a["TaskResources"]["t"]["MemoryMB"], 300);
    // The list with resources=true carries the same.
    let stubs = agent.get_json("/v1/job/web/allocations");
    assert!(stubs[0].get("AllocatedResources").is_none());
    let stubs = agent.get_json("/v1/allocations?resources=true");
    let stub = stubs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["ID"] == id)
        .unwrap();
    assert_eq!(
        stub["AllocatedResources"]["Shared"]["Ports"],
        a["AllocatedResources"]["Shared"]["Ports"]
    );
}

#[test]
fn two_allocs_of_one_group_on_one_node_get_different_ports_and_both_serve() {
    let agent = TestAgent::start(&[]);
    let job = port_job(
        "pair",
        2,
        json!({"DynamicPorts": [{"Label": "http"}]}),
        &serve_script("http"),
    );
    register(&agent, &job);
    let allocs = running_allocs(&agent, "pair", 2);
    let addr = |a: &Value| {
        let p = &a["AllocatedResources"]["Shared"]["Ports"][0];
        format!("{}:{}", p["HostIP"].as_str().unwrap(), p["Value"])
    };
    let (a0, a1) = (addr(&allocs[0]), addr(&allocs[1]));
    assert_ne!(a0, a1, "one port for two allocs");
    for (a, address) in allocs.iter().zip([a0, a1]) {
        let id = a["ID"].as_str().unwrap();
        assert_eq!(greeting(&address), format!("hello {id}"));
    }
}

#[test]
fn a_taken_static_port_blocks_another_job_until_the_first_stops() {
    let agent = TestAgent::start(&[]);
    let port = free_port();
    let net = json!({"ReservedPorts": [{"Label": "web", "Value": port}]});
    register(
        &agent,
        &port_job("first", 1, net.clone(), &serve_script("web")),
    );
    let first = running_allocs(&agent, "first", 1).remove(0);
    let id = first["ID"].as_str().unwrap();
    assert_eq!(
        first["AllocatedResources"]["Shared"]["Ports"],
        json!([{"Label": "web", "Value": port, "HostIP": "127.0.0.1"}])
    );
    assert_eq!(
        greeting(&format!("127.0.0.1:{port}")),
        format!("hello {id}")
    );
    // `alloc status` shows Nomad's address table.
    let out = std::process::Command::new(bin())
        .args(["alloc", "status", id])
        .env("NOMAD_ADDR", format!("http://{}", agent.addr()))
        .env_remove("NOMAD_TOKEN")
        .output()
        .expect("run the CLI");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Allocation Addresses:"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("*web"))
        .unwrap_or_else(|| panic!("no *web row: {text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols, ["*web", "no", &format!("127.0.0.1:{port}")]);

    let r = register(&agent, &port_job("second", 1, net, "sleep 30"));
    let eval = wait_eval_done(&agent, r["EvalID"].as_str().unwrap());
    assert_eq!(eval["Status"], "complete", "{eval}");
    let m = &eval["FailedTGAllocs"]["g"];
    let dim = format!("network: reserved port collision web={port}");
    assert_eq!(m["DimensionExhausted"][&dim], 1, "{m}");
    assert_eq!(m["NodesExhausted"], 1);
    let blocked = eval["BlockedEval"].as_str().expect("a blocked eval");
    assert_eq!(
        agent.get_json(&format!("/v1/evaluation/{blocked}"))["Status"],
        "blocked"
    );
    assert!(allocs(&agent, "second").is_empty());

    // The first job stops: its port is free and the blocked eval places the second.
    assert_eq!(
        agent.request("DELETE", "/v1/job/first", &[], b"").status,
        200
    );
    let second = running_allocs(&agent, "second", 1).remove(0);
    assert_eq!(
        second["AllocatedResources"]["Shared"]["Ports"][0]["Value"],
        port
    );
}

#[test]
fn the_node_reports_its_address_and_dynamic_range_and_allocs_stay_inside_it() {
    let agent = TestAgent::start_with_config(
        "hcl",
        "client {\n  min_dynamic_port = 41000\n  max_dynamic_port = 41002\n  host_network \"loop\" {\n    cidr = \"127.0.0.1/32\"\n    reserved_ports = \"41001\"\n  }\n}\n",
    );
    let nodes = agent.get_json("/v1/nodes");
    let node = agent.get_json(&format!("/v1/node/{}", nodes[0]["ID"].as_str().unwrap()));
    let r = &node["NodeResources"];
    assert_eq!(
        (r["MinDynamicPort"].clone(), r["MaxDynamicPort"].clone()),
        (json!(41000), json!(41002))
    );
    let addr = &r["NodeNetworks"][0]["Addresses"][0];
    assert_eq!(addr["Alias"], "default");
    assert_eq!(addr["Address"], "127.0.0.1");
    assert_eq!(r["Networks"][0]["IP"], "127.0.0.1");
    let lo = &r["NodeNetworks"][1]["Addresses"][0];
    assert_eq!(
        (
            lo["Alias"].clone(),
            lo["Address"].clone(),
            lo["ReservedPorts"].clone()
        ),
        (json!("loop"), json!("127.0.0.1"), json!("41001"))
    );

    // An unknown host network has no address: Nomad's text.
    let other = port_job(
        "elsewhere",
        1,
        json!({"DynamicPorts": [{"Label": "p", "HostNetwork": "public"}]}),
        "sleep 30",
    );
    let r = register(&agent, &other);
    let eval = wait_eval_done(&agent, r["EvalID"].as_str().unwrap());
    let dims = &eval["FailedTGAllocs"]["g"]["DimensionExhausted"];
    assert_eq!(
        dims["network: no addresses available for public network"], 1,
        "{eval}"
    );

    // Two ports free in the range (41001 is reserved on 127.0.0.1 by `loop`; ports are
    // per address as in Nomad): one alloc of two ports fits, a second does not.
    let net = json!({"DynamicPorts": [{"Label": "a"}, {"Label": "b", "HostNetwork": "loop"}]});
    let mut job = port_job("tight", 2, net, "sleep 30");
    job["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] = json!({"CPU": 10, "MemoryMB": 10});
    let r = register(&agent, &job);
    let eval = wait_eval_done(&agent, r["EvalID"].as_str().unwrap());
    assert_eq!(
        eval["FailedTGAllocs"]["g"]["DimensionExhausted"]["network: dynamic port selection failed"],
        1,
        "{eval}"
    );
    let placed = running_allocs(&agent, "tight", 1).remove(0);
    let mut got: Vec<u64> = placed["AllocatedResources"]["Shared"]["Ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Value"].as_u64().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, [41000, 41002]);
}

#[test]
fn a_legacy_task_network_gets_its_ports_and_a_bridge_network_is_refused() {
    let agent = TestAgent::start(&[]);
    let mut job = sh_job("legacy", "service", &serve_script("api"));
    job["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] =
        json!({"Networks": [{"DynamicPorts": [{"Label": "api"}]}]});
    register(&agent, &job);
    let a = running_allocs(&agent, "legacy", 1).remove(0);
    let id = a["ID"].as_str().unwrap();
    let net = &a["AllocatedResources"]["Tasks"]["t"]["Networks"][0];
    let port = net["DynamicPorts"][0]["Value"].as_u64().expect("a value");
    assert_eq!(net["IP"], "127.0.0.1");
    assert_eq!(a["TaskResources"]["t"]["Networks"][0], *net);
    assert_eq!(a["AllocatedResources"]["Shared"]["Ports"], Value::Null);
    let env = task_env(&agent, id);
    assert_eq!(
        env_get(&env, "NOMAD_PORT_api"),
        Some(port.to_string().as_str())
    );
    assert_eq!(env_get(&env, "NOMAD_IPv4_api"), Some("127.0.0.1"));
    assert_eq!(
        env_get(&env, "NOMAD_ADDR_api"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        greeting(&format!("127.0.0.1:{port}")),
        format!("hello {id}")
    );

    let mut bridge = sh_job("br", "service", "sleep 30");
    bridge["Job"]["TaskGroups"][0]["Networks"] =
        json!([{"Mode": "bridge", "DynamicPorts": [{"Label": "http", "To": 8080}]}]);
    let r = agent.request("PUT", "/v1/jobs", &[], bridge.to_string().as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .contains("Network mode \"bridge\" is not supported"),
        "{}",
        r.text()
    );
    assert_eq!(agent.request("GET", "/v1/job/br", &[], b"").status, 404);
}

#[test]
fn an_hcl_job_with_a_port_parses_registers_and_shows_its_address() {
    let agent = TestAgent::start(&[]);
    let hcl = r#"
job "nb" {
  group "g" {
    network {
      port "http" {}
      port "fixed" { static = 1 }
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "sleep 30"]
      }
    }
  }
}
"#;
    // The static port 1 is below the dynamic range and free of allocs: it places.
    let body = json!({"JobHCL": hcl, "Canonicalize": true}).to_string();
    let r = agent.request("POST", "/v1/jobs/parse", &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let parsed = r.json();
    let nets = &parsed["TaskGroups"][0]["Networks"][0];
    assert_eq!(nets["DynamicPorts"][0]["Label"], "http");
    assert_eq!(nets["ReservedPorts"][0]["Value"], 1);
    register(&agent, &json!({"Job": parsed}));
    let a = running_allocs(&agent, "nb", 1).remove(0);
    let ports = a["AllocatedResources"]["Shared"]["Ports"]
        .as_array()
        .unwrap()
        .clone();
    let by = |l: &str| ports.iter().find(|p| p["Label"] == l).cloned().unwrap();
    assert_eq!(by("fixed")["Value"], 1);
    assert!((20000..=32000).contains(&by("http")["Value"].as_u64().unwrap()));
    assert_eq!(by("http")["HostIP"], "127.0.0.1");
}

#[test]
fn in_a_cluster_a_static_port_spreads_allocs_one_per_node_and_the_rest_wait() {
    let server = TestAgent::server("", &[]);
    let clients = [
        TestAgent::client(&[&server.rpc_addr()], "", &[]),
        TestAgent::client(&[&server.rpc_addr()], "", &[]),
    ];
    wait_until(WAIT, "two ready nodes", || {
        let nodes = server.get_json("/v1/nodes");
        nodes
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|x| x["Status"] == "ready"))
    });
    let port = free_port();
    // The tasks do not bind: every client of this test shares one host's loopback.
    let net = json!({"ReservedPorts": [{"Label": "web", "Value": port}]});
    let r = register(&server, &port_job("spread", 3, net, "sleep 30"));
    let eval = wait_eval_done(&server, r["EvalID"].as_str().unwrap());
    let m = &eval["FailedTGAllocs"]["g"];
    let dim = format!("network: reserved port collision web={port}");
    assert_eq!(m["DimensionExhausted"][&dim], 2, "{m}");
    assert_eq!(m["NodesExhausted"], 2);
    assert_eq!(eval["QueuedAllocations"]["g"], 1);
    let placed = running_allocs(&server, "spread", 2);
    let nodes: std::collections::BTreeSet<&str> = placed
        .iter()
        .map(|a| a["NodeID"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "one per node: {placed:?}");
    let want: std::collections::BTreeSet<String> = clients.iter().map(|c| c.node_id()).collect();
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );
    for a in &placed {
        assert_eq!(a["AllocatedResources"]["Shared"]["Ports"][0]["Value"], port);
    }

    // A client-only agent gets the ports over the RPC link: its task sees them.
    let script = "echo NOMAD_PORT_http=$NOMAD_PORT_http; echo NOMAD_ADDR_http=$NOMAD_ADDR_http; \
                  echo listening; sleep 30";
    let net = json!({"DynamicPorts": [{"Label": "http"}]});
    register(&server, &port_job("remote", 1, net, script));
    let a = running_allocs(&server, "remote", 1).remove(0);
    let value = a["AllocatedResources"]["Shared"]["Ports"][0]["Value"]
        .as_u64()
        .unwrap();
    let node = a["NodeID"].as_str().unwrap();
    let client = clients.iter().find(|c| c.node_id() == node).unwrap();
    let env = task_env(client, a["ID"].as_str().unwrap());
    assert_eq!(
        env_get(&env, "NOMAD_PORT_http"),
        Some(value.to_string().as_str())
    );
    assert_eq!(
        env_get(&env, "NOMAD_ADDR_http"),
        Some(format!("127.0.0.1:{value}").as_str())
    );
}

#[test]
fn client_reserved_keeps_ports_and_resources_from_the_scheduler() {
    // More memory reserved than any host has: nothing that asks for memory fits.
    let agent = TestAgent::start_with_config(
        "hcl",
        "client {\n  min_dynamic_port = 42000\n  max_dynamic_port = 42002\n  reserved {\n    cpu = 100\n    memory = 100000000\n    disk = 10\n    reserved_ports = \"42001\"\n  }\n}\n",
    );
    let nodes = agent.get_json("/v1/nodes?resources=true");
    let id = nodes[0]["ID"].as_str().unwrap().to_string();
    assert_eq!(
        nodes[0]["ReservedResources"]["Memory"]["MemoryMB"],
        100000000
    );
    let node = agent.get_json(&format!("/v1/node/{id}"));
    let rr = &node["ReservedResources"];
    assert_eq!(
        (
            rr["Cpu"]["CpuShares"].clone(),
            rr["Memory"]["MemoryMB"].clone(),
            rr["Disk"]["DiskMB"].clone(),
            rr["Networks"]["ReservedHostPorts"].clone()
        ),
        (json!(100), json!(100000000), json!(10), json!("42001"))
    );
    assert!(node["NodeResources"].get("Reserved").is_none(), "{node}");

    let job = port_job(
        "big",
        1,
        json!({"DynamicPorts": [{"Label": "p"}]}),
        "sleep 30",
    );
    let r = register(&agent, &job);
    let eval = wait_eval_done(&agent, r["EvalID"].as_str().unwrap());
    assert_eq!(
        eval["FailedTGAllocs"]["g"]["DimensionExhausted"]["memory"], 1,
        "{eval}"
    );
}

#[test]
fn client_reserved_ports_are_never_handed_out() {
    let agent = TestAgent::start_with_config(
        "hcl",
        "client {\n  min_dynamic_port = 42100\n  max_dynamic_port = 42102\n  reserved {\n    reserved_ports = \"42101\"\n  }\n}\n",
    );
    let mut job = port_job(
        "two",
        3,
        json!({"DynamicPorts": [{"Label": "p"}]}),
        "sleep 30",
    );
    job["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] = json!({"CPU": 10, "MemoryMB": 10});
    let r = register(&agent, &job);
    let eval = wait_eval_done(&agent, r["EvalID"].as_str().unwrap());
    // Three ports in the range, one reserved: two allocs placed, the third cannot be.
    assert_eq!(
        eval["FailedTGAllocs"]["g"]["DimensionExhausted"]["network: dynamic port selection failed"],
        1,
        "{eval}"
    );
    let mut got: Vec<u64> = running_allocs(&agent, "two", 2)
        .iter()
        .map(|a| {
            a["AllocatedResources"]["Shared"]["Ports"][0]["Value"]
                .as_u64()
                .unwrap()
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [42100, 42102]);

    // A reserved_ports that is not a port list is refused at start, naming the key.
    let bad = temp_dir("ports-cfg").with_extension("hcl");
    std::fs::write(
        &bad,
        "client {\n  reserved {\n    reserved_ports = \"22,x\"\n  }\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nomadlet"))
        .args(["agent", "-dev", "-config"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("client.reserved.reserved_ports"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
