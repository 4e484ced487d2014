//! Forwarding in a cluster, multi-process on loopback: a server-only agent reaches allocs and
//! nodes on client agents over tunnels the CLIENTS opened (the server never dials a client),
//! a client-only agent answers server requests by forwarding them, tunnels are redialled, and
//! idle nodes cost the server sockets, not threads.

mod common;
mod fs_util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{free_port, wait_until, TestAgent};
use fs_util::{alloc_dir, frame_data, frames, run_job, thread_count, wait_alloc, Stream};

/// The client's node record advertises an HTTP address nothing listens on: whatever reaches
/// the client through the server came down a tunnel.
fn unreachable_http() -> (String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    (format!("advertise {{\n  http = \"{addr}\"\n}}\n"), addr)
}

fn wait_ready(server: &TestAgent, id: &str) {
    wait_until(Duration::from_secs(15), &format!("node {id} ready"), || {
        let r = server.get(&format!("/v1/node/{id}"));
        r.status == 200 && r.json()["Status"] == "ready"
    });
}

/// Poll `path` on `agent` until it answers 200 (a tunnel may be being redialled).
fn get_ok(agent: &TestAgent, path: &str) -> common::Response {
    let mut last = None;
    wait_until(Duration::from_secs(10), &format!("200 from {path}"), || {
        let r = agent.get(path);
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    last.expect("a response")
}

/// The script of the forwarded-stream test: steps driven by files the test creates in the
/// task's `local/` dir, a USR1 trap, then idling.
const STEPS: &str = "trap 'echo got-usr1' USR1; echo before; \
    while [ ! -e \"$NOMAD_TASK_DIR/go1\" ]; do sleep 0.05; done; echo after-one; \
    while [ ! -e \"$NOMAD_TASK_DIR/go2\" ]; do sleep 0.05; done; echo after-two; \
    while true; do sleep 0.05; done";

#[test]
fn client_endpoints_reach_an_alloc_on_its_node_through_the_server() {
    let server = TestAgent::server("", &[]);
    let (advertise, dead_addr) = unreachable_http();
    let client = TestAgent::client(&[&server.rpc_addr()], &advertise, &[]);
    let node = client.node_id();
    wait_ready(&server, &node);
    let rec = server.get_json(&format!("/v1/node/{node}"));
    assert_eq!(rec["HTTPAddr"], dead_addr.as_str(), "nothing listens there");

    let job = run_job(&server, "fwd", "service", STEPS, fs_util::default_logs());
    let alloc = wait_alloc(&server, &job);
    let stdout = alloc_dir(&client, &alloc).join("alloc/logs/t.stdout.0");
    wait_until(Duration::from_secs(10), "the task's first line", || {
        std::fs::read_to_string(&stdout).is_ok_and(|t| t.contains("before"))
    });

    // fs ls and cat through the server's HTTP port.
    let ls = get_ok(
        &server,
        &format!("/v1/client/fs/ls/{alloc}?path=alloc/logs"),
    );
    assert!(ls.text().contains("t.stdout.0"), "{}", ls.text());
    let cat = get_ok(
        &server,
        &format!("/v1/client/fs/cat/{alloc}?path=alloc/logs/t.stdout.0"),
    );
    assert!(cat.text().contains("before"), "{}", cat.text());
    // Plain logs, not following.
    let logs = get_ok(
        &server,
        &format!("/v1/client/fs/logs/{alloc}?task=t&type=stdout&plain=true"),
    );
    assert!(logs.text().starts_with("before"), "{}", logs.text());

    // A plain follow stream: output written after the request arrived comes through.
    let task_local = alloc_dir(&client, &alloc).join("t/local");
    let mut plain = Stream::open(
        &server,
        &format!("/v1/client/fs/logs/{alloc}?task=t&type=stdout&plain=true&follow=true"),
    );
    assert_eq!(plain.status, 200, "{}", plain.head);
    assert!(
        plain.read_until(Duration::from_secs(10), |b| {
            String::from_utf8_lossy(b).contains("before")
        }),
        "the follow stream starts with what is there"
    );
    std::fs::write(task_local.join("go1"), b"").expect("step 1");
    assert!(
        plain.read_until(Duration::from_secs(10), |b| {
            String::from_utf8_lossy(b).contains("after-one")
        }),
        "a line written after the request came through: {:?}",
        String::from_utf8_lossy(&plain.body)
    );

    // A framed follow stream, the same: once it has shown what is there (so it runs on the
    // client), the task writes more.
    let mut framed = Stream::open(
        &server,
        &format!("/v1/client/fs/logs/{alloc}?task=t&type=stdout&follow=true"),
    );
    assert_eq!(framed.status, 200, "{}", framed.head);
    assert!(
        framed.read_until(Duration::from_secs(10), |b| {
            String::from_utf8_lossy(&frame_data(&frames(b))).contains("after-one")
        }),
        "the framed stream starts with what is there: {:?}",
        String::from_utf8_lossy(&framed.body)
    );
    std::fs::write(task_local.join("go2"), b"").expect("step 2");
    assert!(
        framed.read_until(Duration::from_secs(10), |b| {
            String::from_utf8_lossy(&frame_data(&frames(b))).contains("after-two")
        }),
        "a framed line written after the request came through: {:?}",
        String::from_utf8_lossy(&framed.body)
    );
    drop(plain);
    drop(framed);

    // Alloc stats and a signal.
    let stats = get_ok(&server, &format!("/v1/client/allocation/{alloc}/stats"));
    assert!(
        stats.json()["ResourceUsage"].is_object(),
        "{}",
        stats.text()
    );
    let sig = server.request(
        "POST",
        &format!("/v1/client/allocation/{alloc}/signal"),
        &[],
        br#"{"Signal":"SIGUSR1","Task":"t"}"#,
    );
    assert_eq!(sig.status, 200, "{}", sig.text());
    wait_until(Duration::from_secs(10), "the trap to run", || {
        std::fs::read_to_string(&stdout).is_ok_and(|t| t.contains("got-usr1"))
    });

    // Node-scoped endpoints with node_id.
    let host = get_ok(&server, &format!("/v1/client/stats?node_id={node}"));
    assert!(
        host.json()["Memory"]["Total"].as_u64().unwrap_or(0) > 0,
        "{}",
        host.text()
    );
    let meta = get_ok(&server, &format!("/v1/client/metadata?node_id={node}"));
    assert!(meta.json()["Meta"].is_object(), "{}", meta.text());

    // Two hops: a second client-only agent asks its server, which asks the alloc's node.
    let other = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let via = get_ok(&other, &format!("/v1/client/allocation/{alloc}/stats"));
    assert!(via.json()["ResourceUsage"].is_object(), "{}", via.text());
    let via = get_ok(
        &other,
        &format!("/v1/client/fs/cat/{alloc}?path=alloc/logs/t.stdout.0"),
    );
    assert!(via.text().contains("after-two"), "{}", via.text());
    // The push path is served on tunnels only, never on a client's own HTTP port.
    let r = other.request("POST", "/v1/tunnel/allocs?index=1", &[], b"");
    assert_eq!(r.status, 404);

    // Errors as Nomad's (ref §5.7).
    let unknown = "00000000-0000-0000-0000-000000000000";
    let r = server.get(&format!("/v1/client/stats?node_id={unknown}"));
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), format!("Unknown node {unknown:?}"));
    let r = server.get("/v1/client/stats");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "No local Node and node_id not provided")
    );
    let r = server.get(&format!("/v1/client/fs/ls/{unknown}?path=/"));
    assert_eq!(r.status, 404);
    assert!(r.text().starts_with("Unknown allocation"), "{}", r.text());

    // The client goes away: its tunnels close with it, and the server says so.
    let mut client = client;
    client.kill9();
    wait_until(Duration::from_secs(10), "No path to node", || {
        let r = server.get(&format!("/v1/client/stats?node_id={node}"));
        r.status == 404 && r.text() == "No path to node"
    });
    let r = server.get(&format!("/v1/client/allocation/{alloc}/stats"));
    assert_eq!((r.status, r.text().as_str()), (404, "No path to node"));
}

#[test]
fn a_client_only_agent_forwards_what_it_cannot_answer_to_its_server() {
    let server = TestAgent::server("", &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let node = client.node_id();
    wait_ready(&server, &node);

    // A job registered through the client lands on the server.
    let body = serde_json::json!({"Job": {"ID": "via-client", "Type": "batch",
        "Datacenters": ["dc1"], "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t",
        "Driver": "raw_exec", "Config": {"command": "/bin/sh", "args": ["-c", "echo hi"]}}]}]}});
    let r = client.request("POST", "/v1/jobs", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["EvalID"].is_string(), "{}", r.text());
    let job = server.get("/v1/job/via-client");
    assert_eq!(job.status, 200, "the server has the job: {}", job.text());

    // Reads through the client are the server's.
    let jobs = client.get_json("/v1/jobs");
    assert!(
        jobs.as_array()
            .is_some_and(|a| a.iter().any(|j| j["ID"] == "via-client")),
        "{jobs}"
    );
    let nodes = client.get_json("/v1/nodes");
    assert!(
        nodes
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["ID"] == node.as_str())),
        "{nodes}"
    );
    // Its own agent endpoints stay its own.
    let me = client.get_json("/v1/agent/self");
    assert_eq!(me["stats"]["client"]["node_id"], node.as_str());

    // A blocking query through the client waits on the server and wakes on a change there.
    // Once the batch job is done nothing changes the jobs' index: a query blocks its wait.
    // The client learns of its alloc by the server's push down a tunnel: without one it would
    // pull again only at its safety pull (30 s).
    wait_until(Duration::from_secs(8), "the batch job to finish", || {
        server.get_json("/v1/job/via-client")["Status"] == "dead"
    });
    let mut index = 0;
    let mut blocked = Duration::ZERO;
    // Under load the client's last alloc updates may still trickle in: try a few times.
    for _ in 0..10 {
        index = client
            .get("/v1/jobs")
            .header("X-Nomad-Index")
            .and_then(|v| v.parse().ok())
            .expect("an index");
        let t0 = Instant::now();
        let r = client.get(&format!("/v1/jobs?index={index}&wait=1s"));
        assert_eq!(r.status, 200, "{}", r.text());
        blocked = t0.elapsed();
        if blocked >= Duration::from_millis(900) {
            break;
        }
    }
    assert!(
        blocked >= Duration::from_millis(900),
        "a blocking query through the client waits: {blocked:?}"
    );
    // ...and answers a change at once.
    let addr = client.addr();
    let waiter = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        write!(
            s,
            "GET /v1/jobs?index={index}&wait=20s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (t0.elapsed(), out)
    });
    let body = serde_json::json!({"Job": {"ID": "wakes", "Type": "batch",
        "Datacenters": ["dc1"], "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t",
        "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}});
    let r = server.request("POST", "/v1/jobs", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let (took, out) = waiter.join().expect("waiter");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("wakes"), "{out}");
    assert!(
        took < Duration::from_secs(10),
        "woken by the change, not the wait: {took:?}"
    );

    // The server gone: Nomad's error.
    let mut server = server;
    server.kill9();
    let r = client.get("/v1/jobs");
    assert_eq!((r.status, r.text().as_str()), (500, "no servers"));
}

#[test]
fn tunnels_are_redialled_when_the_server_comes_back() {
    let mut server = TestAgent::server("", &[]);
    let client = TestAgent::client(&[&server.rpc_addr()], "", &[]);
    let node = client.node_id();
    wait_ready(&server, &node);
    get_ok(&server, &format!("/v1/client/stats?node_id={node}"));
    // Every tunnel dies with the server; the client redials the new one.
    server.kill9();
    server.restart_after_stop();
    wait_ready(&server, &node);
    let r = get_ok(&server, &format!("/v1/client/stats?node_id={node}"));
    assert!(r.json()["Memory"].is_object());
    // Many forwarded requests in a row: each uses up a tunnel, each is replaced.
    for _ in 0..20 {
        get_ok(&server, &format!("/v1/client/metadata?node_id={node}"));
    }
}

/// A fake node: registered over RPC, holding `TUNNEL_IDLE` upgraded tunnels.
fn fake_node(server: &TestAgent, n: usize) -> Vec<TcpStream> {
    let id = format!("{n:08x}-0000-4000-8000-00000000fa4e");
    let secret = format!("{n:08x}-5ec2-4000-8000-000000000000");
    let reg = serde_json::json!({
        "node_id": id, "name": format!("fake-{n}"), "datacenter": "dc1",
        "http_addr": "127.0.0.1:1", "tls_enabled": false, "node_pool": "default",
        "node_class": "", "version": "1.9.0", "attributes": {}, "meta": {},
        "resources": {}, "drivers": {}, "status": "ready", "secret_id": secret,
    });
    let r = server.rpc_request(
        "POST",
        "/v1/rpc/node/register",
        &[],
        reg.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "register fake node: {}", r.text());
    (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.rpc_addr()).expect("connect rpc");
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            write!(
                s,
                "GET /v1/rpc/tunnel?node_id={id} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                 Upgrade: nomadlet-tunnel/1\r\nX-Nomad-Node-Secret: {secret}\r\n\r\n"
            )
            .expect("write");
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(s.read(&mut b).expect("read 101"), 1);
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            s
        })
        .collect()
}

#[test]
fn tunnel_upgrades_are_refused_to_anything_but_a_node_with_its_secret() {
    let server = TestAgent::server("", &[]);
    let _ = fake_node(&server, 7);
    let id = "00000007-0000-4000-8000-00000000fa4e";
    let secret = "00000007-5ec2-4000-8000-000000000000";
    let path = format!("/v1/rpc/tunnel?node_id={id}");
    let up = ("Upgrade", "nomadlet-tunnel/1");
    let conn = ("Connection", "Upgrade");
    let sec = ("X-Nomad-Node-Secret", secret);
    // No upgrade asked for.
    let r = server.rpc_request("GET", &path, &[sec], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    // Another protocol.
    let r = server.rpc_request("GET", &path, &[conn, ("Upgrade", "websocket"), sec], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    // Not a GET.
    let r = server.rpc_request("POST", &path, &[conn, up, sec], b"");
    assert_eq!(r.status, 405, "{}", r.text());
    // An unknown node, no node, no secret.
    let r = server.rpc_request(
        "GET",
        "/v1/rpc/tunnel?node_id=10000007-0000-4000-8000-00000000fa4e",
        &[conn, up, sec],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (404, "node not found"));
    let r = server.rpc_request("GET", "/v1/rpc/tunnel", &[conn, up, sec], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server.rpc_request("GET", &path, &[conn, up], b"");
    assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    // The tunnel path is the RPC port's alone: the HTTP API has no such route.
    let r = server.request("GET", &path, &[conn, up, sec], b"");
    assert_eq!(r.status, 404);
}

#[test]
fn idle_nodes_cost_the_server_sockets_not_threads() {
    let server = TestAgent::server("", &[]);
    let pid = server.pid();
    // A wrong secret gets no tunnel.
    let _ = fake_node(&server, 0);
    let mut s = TcpStream::connect(server.rpc_addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET /v1/rpc/tunnel?node_id=00000000-0000-4000-8000-00000000fa4e HTTP/1.1\r\nHost: x\r\n\
         Connection: Upgrade\r\nUpgrade: nomadlet-tunnel/1\r\nX-Nomad-Node-Secret: wrong\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");

    let before = thread_count(pid);
    let mut held = Vec::new();
    for n in 1..=50 {
        held.extend(fake_node(&server, n));
    }
    // 100 parked tunnels: the connection threads that upgraded them have ended.
    let mut now = 0;
    wait_until(Duration::from_secs(10), "upgrade threads to end", || {
        now = thread_count(pid);
        now <= before + 2
    });
    eprintln!("server threads: {before} before, {now} with 50 idle nodes (100 tunnels)");
    assert!(
        now < 16,
        "server threads must not grow with idle nodes: {before} before, {now} with 50 nodes"
    );
    // The tunnels are live: one carries a forwarded request (answered by the fake node).
    let node = "00000032-0000-4000-8000-00000000fa4e";
    let addr = server.addr();
    let asker = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        write!(
            s,
            "GET /v1/client/stats?node_id={node} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    // Node 50's tunnels are the last two held; the newest is used first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = None;
    for t in held.iter_mut().rev().take(2) {
        t.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut buf = [0u8; 4096];
        let mut req = Vec::new();
        while Instant::now() < deadline && !req.ends_with(b"\r\n\r\n") {
            match t.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => req.extend_from_slice(&buf[..k]),
                Err(_) if req.is_empty() => break,
                Err(_) => {}
            }
        }
        if !req.is_empty() {
            t.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"fake\":true}")
                .expect("answer");
            got = Some(String::from_utf8_lossy(&req).into_owned());
            break;
        }
    }
    let req = got.expect("the forwarded request on one of node 50's tunnels");
    assert!(
        req.starts_with(&format!("GET /v1/client/stats?node_id={node} HTTP/1.1")),
        "{req}"
    );
    let out = asker.join().expect("asker");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("{\"fake\":true}"), "{out}");
}
