//! Forwarding and tunnels with `tls.rpc` on, multi-process on loopback, with certificates made
//! in the test (rcgen): a follower passes a write (and a node call made at its RPC port) to the
//! leader over mutual TLS, a client-only agent forwards to its servers and opens its tunnels
//! over TLS, the servers push and forward down them (an alloc's files and a follow stream read
//! through either server, the node's own HTTP address dead), and a peer without a client
//! certificate signed by the cluster's CA gets no tunnel and no forwarded request.

mod common;
mod fs_util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::pki::Pki;
use common::*;
use nomadlet::tls::client::{CliTls, ReadWrite};

impl Pki {
    /// `tls { rpc = true ... }`: `ca` to trust, this certificate, Nomad's name checks on.
    fn rpc_config(&self, ca: &Pki, name: &str, san: &str) -> String {
        let (cert, key) = self.issue(name, &[san, "localhost", "127.0.0.1"]);
        format!(
            "tls {{\n  rpc = true\n  ca_file = {:?}\n  cert_file = {:?}\n  key_file = {:?}\n  verify_server_hostname = true\n}}\n",
            ca.ca_file().display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_ready(server: &TestAgent, id: &str) {
    wait_until(Duration::from_secs(20), &format!("node {id} ready"), || {
        let r = server.get(&format!("/v1/node/{id}"));
        r.status == 200 && r.json()["Status"] == "ready"
    });
}

/// Poll `path` on `agent` until it answers 200 (a tunnel may be being redialled).
fn get_ok(agent: &TestAgent, path: &str) -> Response {
    let mut last = None;
    wait_until(Duration::from_secs(10), &format!("200 from {path}"), || {
        let r = agent.get(path);
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    last.expect("a response")
}

#[test]
fn forwarding_and_tunnels_work_over_mutual_tls() {
    let pki = Pki::new("fwd");
    let servers = cluster_with(
        2,
        &pki.rpc_config(&pki, "server", "server.global.nomad"),
        "",
    );
    // The client's own HTTP address is advertised where nothing listens: whatever reaches
    // it through a server came down a tunnel it opened.
    let dead = format!("127.0.0.1:{}", free_port());
    let client = TestAgent::client(
        &[&servers[0].rpc_addr(), &servers[1].rpc_addr()],
        &format!(
            "advertise {{\n  http = \"{dead}\"\n}}\n{}",
            pki.rpc_config(&pki, "client", "client.global.nomad")
        ),
        &[],
    );
    let leader = wait_leader(&servers, &[0, 1], Duration::from_secs(20));
    let follower = &servers[1 - leader];

    // (a) A write through the follower's HTTP port goes to the leader over TLS.
    assert!(register_job(follower, "via-follower"));
    let r = servers[leader].get("/v1/job/via-follower?stale");
    assert_eq!(r.status, 200, "the leader has the job: {}", r.text());
    // A consistent read through the follower is the leader's answer.
    let r = follower.get("/v1/job/via-follower");
    assert_eq!(r.status, 200, "{}", r.text());

    // A node call made at the follower's RPC port is passed to the leader's over TLS.
    let (c, k) = pki.issue("fake-node", &["client.global.nomad"]);
    let node_tls = CliTls {
        ca_cert: Some(pki.ca_file()),
        client_cert: Some(c),
        client_key: Some(k),
        ..CliTls::default()
    };
    let (fake, _) = register_fake_node(&node_tls, follower.rpc_port);
    let r = servers[leader].get(&format!("/v1/node/{fake}?stale"));
    assert_eq!(r.status, 200, "the leader has the node: {}", r.text());

    // The client registers (the link is TLS already) and forwards what it cannot answer.
    let node = client.node_id();
    wait_ready(follower, &node);
    let jobs = client.get_json("/v1/jobs");
    assert!(
        jobs.as_array()
            .is_some_and(|a| a.iter().any(|j| j["ID"] == "via-follower")),
        "a read through the client-only agent is a server's: {jobs}"
    );

    // (b) An alloc placed by the servers runs on the client (told by a push down a tunnel,
    // or its pull) and its files are read through each server: down the node's TLS tunnel,
    // or through the server that holds one.
    let job = fs_util::run_job(
        follower,
        "tls-fwd",
        "service",
        "echo hello-over-tls; while [ ! -e \"$NOMAD_TASK_DIR/go\" ]; do sleep 0.05; done; \
         echo after-go; while true; do sleep 0.1; done",
        fs_util::default_logs(),
    );
    let alloc = fs_util::wait_alloc(follower, &job);
    for server in &servers {
        // The task may not have written its line yet when it counts as started.
        let path = format!("/v1/client/fs/cat/{alloc}?path=alloc/logs/t.stdout.0");
        let mut last = String::new();
        wait_until(
            Duration::from_secs(10),
            "the task's line through a server",
            || {
                let r = server.get(&path);
                last = format!("{} {}", r.status, r.text());
                r.status == 200 && r.text().contains("hello-over-tls")
            },
        );
        assert!(last.starts_with("200 hello-over-tls"), "{last}");
        let logs = get_ok(
            server,
            &format!("/v1/client/fs/logs/{alloc}?task=t&type=stdout&plain=true"),
        );
        assert!(logs.text().starts_with("hello-over-tls"), "{}", logs.text());
    }
    // A follow stream through the leader: a line the task writes after the request came
    // arrives through the TLS tunnel (and, if the node's tunnels are on the other server,
    // through that server's TLS RPC port too).
    let mut follow = fs_util::Stream::open(
        &servers[leader],
        &format!("/v1/client/fs/logs/{alloc}?task=t&type=stdout&plain=true&follow=true"),
    );
    assert_eq!(follow.status, 200, "{}", follow.head);
    assert!(
        follow.read_until(Duration::from_secs(10), |b| {
            String::from_utf8_lossy(b).contains("hello-over-tls")
        }),
        "the follow stream starts with what is there"
    );
    let local = fs_util::alloc_dir(&client, &alloc).join("t/local");
    std::fs::write(local.join("go"), b"").expect("step");
    assert!(
        follow.read_until(Duration::from_secs(10), |b| {
            String::from_utf8_lossy(b).contains("after-go")
        }),
        "a line written after the request came through: {:?}",
        String::from_utf8_lossy(&follow.body)
    );
    drop(follow);
    // Many forwarded requests in a row: each uses up a tunnel, each is replaced over TLS.
    for _ in 0..10 {
        get_ok(
            &servers[leader],
            &format!("/v1/client/metadata?node_id={node}"),
        );
    }
    // The client-only agent reaches the alloc through its server too (it is its own alloc).
    let r = client.get(&format!("/v1/allocation/{alloc}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let log = client.log();
    assert!(!log.contains("tls.rpc is on"), "{log}");
}

/// A node registered over the RPC port with `tls` (its own ID and secret).
fn register_fake_node(tls: &CliTls, port: u16) -> (String, String) {
    let id = "00000042-0000-4000-8000-00000000fa4e".to_string();
    let secret = "00000042-5ec2-4000-8000-000000000000".to_string();
    let reg = serde_json::json!({
        "node_id": id, "name": "fake-tls", "datacenter": "dc1",
        "http_addr": "127.0.0.1:1", "tls_enabled": false, "node_pool": "default",
        "node_class": "", "version": "1.9.0", "attributes": {}, "meta": {},
        "resources": {}, "drivers": {}, "status": "ready", "secret_id": secret,
    });
    let s = tls_connect(tls, port).expect("tls connect");
    let r = exchange(
        s,
        &build_request(
            "POST",
            "/v1/rpc/node/register",
            &[],
            reg.to_string().as_bytes(),
        ),
    )
    .expect("register over TLS");
    assert_eq!(r.status, 200, "register fake node: {}", r.text());
    (id, secret)
}

fn tls_connect(tls: &CliTls, port: u16) -> Result<Box<dyn ReadWrite>, String> {
    tls.connect(
        "127.0.0.1",
        port,
        Duration::from_secs(10),
        Some(Duration::from_secs(10)),
    )
    .map_err(|e| e.to_string())
}

/// Ask for a tunnel on `s`; the reply head, or why there was none.
fn ask_tunnel(mut s: impl Read + Write, id: &str, secret: &str) -> Result<String, String> {
    write!(
        s,
        "GET /v1/rpc/tunnel?node_id={id} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
         Upgrade: nomadlet-tunnel/1\r\nX-Nomad-Node-Secret: {secret}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => return Err(format!("closed after {head:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn no_tunnel_and_no_forwarding_without_a_client_certificate_of_the_cluster() {
    let pki = Pki::new("cert");
    let foreign = Pki::new("foreign");
    let server = TestAgent::server(&pki.rpc_config(&pki, "server", "server.global.nomad"), &[]);
    let (c, k) = pki.issue("node", &["client.global.nomad"]);
    let good = CliTls {
        ca_cert: Some(pki.ca_file()),
        client_cert: Some(c),
        client_key: Some(k),
        ..CliTls::default()
    };
    let (id, secret) = register_fake_node(&good, server.rpc_port);

    // With a certificate of the cluster's CA, the node gets its tunnel...
    let s = tls_connect(&good, server.rpc_port).expect("connect");
    let head = ask_tunnel(s, &id, &secret).expect("a reply");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // ...without one, or with one another CA signed, or in plain TCP, it does not, even with
    // the node's own secret.
    let none = CliTls {
        ca_cert: Some(pki.ca_file()),
        ..CliTls::default()
    };
    let (fc, fk) = foreign.issue("intruder", &["client.global.nomad"]);
    let forged = CliTls {
        ca_cert: Some(pki.ca_file()),
        client_cert: Some(fc),
        client_key: Some(fk),
        ..CliTls::default()
    };
    for (what, tls) in [("no certificate", &none), ("a foreign CA's", &forged)] {
        if let Ok(s) = tls_connect(tls, server.rpc_port) {
            if let Ok(head) = ask_tunnel(s, &id, &secret) {
                panic!("a tunnel with {what}: {head}");
            }
        }
        // Nor is a write passed on to the RPC port.
        if let Ok(s) = tls_connect(tls, server.rpc_port) {
            let body = true_job("intruder");
            if let Ok(r) = exchange(s, &build_request("PUT", "/v1/jobs", &[], &body)) {
                panic!("a write with {what} answered {}: {}", r.status, r.text());
            }
        }
    }
    let plain = TcpStream::connect(("127.0.0.1", server.rpc_port)).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).ok();
    if let Ok(head) = ask_tunnel(plain, &id, &secret) {
        assert!(!head.starts_with("HTTP/1.1 101"), "a plain tunnel: {head}");
    }
    assert_eq!(server.get("/v1/job/intruder").status, 404);

    // A client-only agent whose certificate another CA signed reaches no server: its
    // forwarded reads fail, its node never registers.
    let intruder = TestAgent::client(
        &[&server.rpc_addr()],
        &foreign.rpc_config(&pki, "agent", "client.global.nomad"),
        &[],
    );
    let r = intruder.get("/v1/jobs");
    assert_eq!(r.status, 500, "{}", r.text());
    let nodes = server.get_json("/v1/nodes");
    assert_eq!(
        nodes.as_array().map(Vec::len),
        Some(1),
        "only the fake node registered: {nodes}"
    );
}
