//! TLS on the real binary, with certificates made in the test (rcgen): the HTTPS API with the
//! right CA and refused with another, mutual TLS (`verify_https_client`), plain HTTP and silent
//! or stalled handshakes on the HTTPS port closed within the head deadline, a join between
//! two HTTPS agents checking Nomad's `server.<region>.nomad` names, and clients over the
//! connection caps reading Nomad's 429 / the 503 through TLS from one bounded refusal worker.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::pki::Pki;
use nomadlet::tls::client::CliTls;

impl Pki {
    /// An agent config with `tls.http` and this server certificate, plus `extra` lines.
    fn agent_config(&self, name: &str, extra: &str) -> PathBuf {
        let (cert, key) = self.issue(name, &["server.global.nomad", "localhost", "127.0.0.1"]);
        let path = self.dir.join(format!("{name}.hcl"));
        let text = format!(
            "tls {{\n  http = true\n  ca_file = {:?}\n  cert_file = {:?}\n  key_file = {:?}\n{extra}}}\n",
            self.ca_file().display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        );
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_tls_agent(config: &Path, extra: &[&str]) -> TestAgent {
    let mut args = vec!["-config", config.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    // A short head deadline, so the tests of silent clients run in seconds.
    TestAgent::start_with(
        &temp_dir("tls-agent"),
        &args,
        &[("NOMADLET_HTTP_HEAD_TIMEOUT_MS", "1000")],
        None,
    )
}

/// One HTTPS request through the library's CLI connector.
fn https(tls: &CliTls, port: u16, method: &str, path: &str) -> Result<Response, String> {
    let stream = tls
        .connect(
            "127.0.0.1",
            port,
            Duration::from_secs(10),
            Some(Duration::from_secs(30)),
        )
        .map_err(|e| e.to_string())?;
    exchange(stream, &build_request(method, path, &[], b"")).map_err(|e| e.to_string())
}

fn cli(pki: &Pki) -> CliTls {
    CliTls {
        ca_cert: Some(pki.ca_file()),
        ..CliTls::default()
    }
}

/// Read until the server closes; the bytes it sent and how long it took.
fn read_to_close(mut s: TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close within {limit:?} ({e}); got {out:?}"),
        }
    }
    (out, start.elapsed())
}

#[test]
fn https_api_answers_with_the_ca_and_refuses_another_and_plain_http_is_closed() {
    let pki = Pki::new("api");
    let agent = start_tls_agent(&pki.agent_config("server", ""), &[]);

    let r = https(&cli(&pki), agent.port, "GET", "/v1/agent/self").expect("https");
    assert_eq!(r.status, 200, "{}", r.text());
    let me = r.json();
    assert_eq!(me["member"]["Tags"]["region"], "global");
    assert_eq!(me["config"]["TLSConfig"]["EnableHTTP"], true, "{me}");
    assert_eq!(me["config"]["TLSConfig"]["VerifyHTTPSClient"], false);
    // The node record tells Nomad's tools to dial this node's API over HTTPS.
    let node_id = me["stats"]["client"]["node_id"].as_str().expect("node id");
    let node = https(
        &cli(&pki),
        agent.port,
        "GET",
        &format!("/v1/node/{node_id}"),
    )
    .expect("node")
    .json();
    assert_eq!(node["TLSEnabled"], true, "{node}");
    // The names Nomad's certificates carry verify too.
    let by_name = CliTls {
        server_name: Some("server.global.nomad".into()),
        ..cli(&pki)
    };
    let r = https(&by_name, agent.port, "GET", "/v1/agent/health").expect("by name");
    assert_eq!(r.status, 200, "{}", r.text());
    // An independent client (curl on OpenSSL) with the CA.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.ca_file())
        .arg(format!("https://localhost:{}/v1/agent/health", agent.port))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\":true"));

    // Another CA: the agent's certificate is not trusted.
    let other = Pki::new("other");
    let err = https(&cli(&other), agent.port, "GET", "/v1/agent/self").unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(other.ca_file())
        .arg(format!("https://localhost:{}/v1/agent/health", agent.port))
        .output()
        .expect("run curl");
    assert!(!out.status.success(), "curl trusted a foreign CA");

    // Plain HTTP to the HTTPS port: Go's answer, then a close, at once.
    let mut s = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect");
    s.write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (got, took) = read_to_close(s, Duration::from_secs(5));
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.0 400 Bad Request"), "{got:?}");
    assert!(got.contains("Client sent an HTTP request to an HTTPS server."));
    assert!(!got.contains("member"), "{got:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A client that connects and sends nothing, and one that stalls mid-handshake, are cut
    // at the head deadline (1 s here), not held.
    let silent = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect");
    let mut stalled = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect");
    // A TLS record header announcing a 512-byte ClientHello, then only part of it.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .expect("write");
    for s in [silent, stalled] {
        let (_, took) = read_to_close(s, Duration::from_secs(5));
        assert!(took < Duration::from_secs(3), "held for {took:?}");
    }
    // Garbage in place of a handshake: an alert or a close, never a hang, and the agent lives.
    let mut s = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef])
        .expect("write");
    let (_, took) = read_to_close(s, Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "{took:?}");
    let r = https(&cli(&pki), agent.port, "GET", "/v1/agent/health").expect("still serving");
    assert_eq!(r.status, 200);
}

#[test]
fn verify_https_client_refuses_a_client_without_a_certificate_and_accepts_one_with() {
    let pki = Pki::new("mtls");
    let agent = start_tls_agent(
        &pki.agent_config("server", "  verify_https_client = true\n"),
        &[],
    );
    // Without a certificate: the handshake (or the first read after it) fails.
    match https(&cli(&pki), agent.port, "GET", "/v1/agent/self") {
        Err(e) => assert!(
            e.contains("CertificateRequired")
                || e.contains("alert")
                || e.contains("HandshakeFailure"),
            "{e}"
        ),
        Ok(r) => panic!(
            "served without a client certificate: {} {}",
            r.status,
            r.text()
        ),
    }
    // A certificate from another CA is refused too.
    let other = Pki::new("mtls-other");
    let (c, k) = other.issue("intruder", &["client.global.nomad"]);
    let intruder = CliTls {
        client_cert: Some(c),
        client_key: Some(k),
        ..cli(&pki)
    };
    assert!(https(&intruder, agent.port, "GET", "/v1/agent/self").is_err());
    // One signed by the agent's CA is served.
    let (c, k) = pki.issue("cli", &["cli.global.nomad"]);
    let with = CliTls {
        client_cert: Some(c.clone()),
        client_key: Some(k.clone()),
        ..cli(&pki)
    };
    let r = https(&with, agent.port, "GET", "/v1/agent/self").expect("mtls");
    assert_eq!(r.status, 200, "{}", r.text());
    // curl agrees on both counts.
    let url = format!("https://127.0.0.1:{}/v1/agent/health", agent.port);
    let bare = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.ca_file())
        .arg(&url)
        .output()
        .expect("curl");
    assert!(
        !bare.status.success() || bare.stdout.is_empty(),
        "curl served without a cert"
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.ca_file())
        .arg("--cert")
        .arg(&c)
        .arg("--key")
        .arg(&k)
        .arg(&url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\":true"));
}

#[test]
fn tls_config_errors_stop_the_agent_at_start_with_the_file_named() {
    let pki = Pki::new("bad");
    let cfg = pki.dir.join("bad.hcl");
    let missing = pki.dir.join("missing.pem");
    std::fs::write(
        &cfg,
        format!(
            "tls {{\n  http = true\n  cert_file = {:?}\n  key_file = {:?}\n}}\n",
            missing.display().to_string(),
            missing.display().to_string()
        ),
    )
    .expect("write");
    let data = temp_dir("tls-bad");
    let out = Command::new(bin())
        .args(["agent", "-dev", "-data-dir"])
        .arg(&data)
        .args(["-http-port", &free_port().to_string(), "-config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&data);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cert_file") && err.contains("missing.pem"),
        "{err}"
    );
    // And a block without a key is refused before anything is read.
    std::fs::write(&cfg, "tls {\n  http = true\n}\n").expect("write");
    let out = Command::new(bin())
        .args(["agent", "-dev", "-config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cert_file and key_file are required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn https_keeps_connections_alive_and_serves_bodies_and_blocking_queries() {
    let pki = Pki::new("keepalive");
    let agent = start_tls_agent(&pki.agent_config("server", ""), &[]);
    let mut s = cli(&pki)
        .connect(
            "127.0.0.1",
            agent.port,
            Duration::from_secs(10),
            Some(Duration::from_secs(30)),
        )
        .expect("connect");
    // Two requests on one connection, the first kept alive.
    let first = b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(first).expect("write");
    let mut r = std::io::BufReader::new(s);
    let one = read_response(&mut r, false).expect("first");
    assert_eq!(one.status, 200);
    assert_ne!(one.header("Connection"), Some("close"));
    // A request with a 200 KiB body (many TLS records) is read whole: here, metadata.
    let value = "v".repeat(200 * 1024);
    let body = format!("{{\"Meta\": {{\"big\": \"{value}\"}}}}");
    let req = build_request("POST", "/v1/client/metadata", &[], body.as_bytes());
    r.get_mut().write_all(&req).expect("write body");
    let two = read_response(&mut r, false).expect("second");
    assert_eq!(two.status, 200, "{}", two.text());
    assert_eq!(
        two.json()["Meta"]["big"].as_str().map(str::len),
        Some(value.len())
    );
    // A blocking query waits its time over TLS and answers (the peer is not taken for gone).
    // (Dialed with a connect deadline shorter than the wait: it must not outlive the dial.)
    let s = cli(&pki)
        .connect("127.0.0.1", agent.port, Duration::from_millis(500), None)
        .expect("connect");
    let start = Instant::now();
    let query = build_request("GET", "/v1/jobs?index=1000000&wait=1s", &[], b"");
    let r = exchange(s, &query).expect("blocking query");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_cli_speaks_https_with_nomads_environment() {
    let pki = Pki::new("cli");
    let agent = start_tls_agent(&pki.agent_config("server", ""), &[]);
    let run = |env: &[(&str, String)]| {
        let mut cmd = Command::new(bin());
        cmd.args(["operator", "api", "/v1/agent/health"])
            .env_remove("NOMAD_CACERT")
            .env_remove("NOMAD_SKIP_VERIFY")
            .env_remove("NOMAD_TLS_SERVER_NAME")
            .env("NOMAD_ADDR", format!("https://localhost:{}", agent.port));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run the CLI")
    };
    let ca = pki.ca_file().display().to_string();
    let out = run(&[("NOMAD_CACERT", ca.clone())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\":true"));
    // The name to verify can be Nomad's own.
    let out = run(&[
        ("NOMAD_CACERT", ca),
        ("NOMAD_TLS_SERVER_NAME", "server.global.nomad".into()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another CA: refused, saying why.
    let other = Pki::new("cli-other");
    let out = run(&[("NOMAD_CACERT", other.ca_file().display().to_string())]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UnknownIssuer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // NOMAD_SKIP_VERIFY trusts whatever answers.
    let out = run(&[("NOMAD_SKIP_VERIFY", "1".into())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sighup(agent: &TestAgent) {
    common::kill(agent.pid() as i32, 1);
}

/// SIGHUP runs `reload::RELOAD_STEPS`, whose `tls certificates` step reads the files again.
#[test]
fn sighup_rotates_the_certificates_for_new_connections() {
    let old_ca = Pki::new("rotate-old");
    let new_ca = Pki::new("rotate-new");
    let config = old_ca.agent_config("server", "");
    let agent = start_tls_agent(&config, &[]);
    let old_trust = CliTls {
        ca_cert: Some(old_ca.dir.join("old-ca-copy.pem")),
        ..CliTls::default()
    };
    std::fs::copy(old_ca.ca_file(), old_ca.dir.join("old-ca-copy.pem")).expect("copy");
    let r = https(&old_trust, agent.port, "GET", "/v1/agent/health").expect("old CA");
    assert_eq!(r.status, 200);
    assert!(https(&cli(&new_ca), agent.port, "GET", "/v1/agent/health").is_err());
    // A connection opened before the rotation keeps working after it.
    let mut before = old_trust
        .connect(
            "127.0.0.1",
            agent.port,
            Duration::from_secs(10),
            Some(Duration::from_secs(30)),
        )
        .expect("connect");

    // Rotate: the same file names now hold a certificate and CA of another authority.
    let (cert, key) = new_ca.issue("server", &["server.global.nomad", "localhost", "127.0.0.1"]);
    std::fs::copy(&cert, old_ca.dir.join("server.pem")).expect("copy cert");
    std::fs::copy(&key, old_ca.dir.join("server-key.pem")).expect("copy key");
    std::fs::copy(new_ca.ca_file(), old_ca.ca_file()).expect("copy ca");
    sighup(&agent);
    wait_until(
        Duration::from_secs(10),
        "the new certificate in use",
        || {
            https(&cli(&new_ca), agent.port, "GET", "/v1/agent/health")
                .is_ok_and(|r| r.status == 200)
        },
    );
    let err = https(&old_trust, agent.port, "GET", "/v1/agent/health").unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    before
        .write_all(&build_request("GET", "/v1/agent/health", &[], b""))
        .expect("write on the old connection");
    let r = read_response(&mut std::io::BufReader::new(before), false).expect("old connection");
    assert_eq!(r.status, 200);

    // A broken key on the next SIGHUP changes nothing: the rotated certificate stays.
    std::fs::write(old_ca.dir.join("server-key.pem"), "not a key").expect("break key");
    sighup(&agent);
    wait_until(
        Duration::from_secs(10),
        "the reload error in the log",
        || agent.log().contains("key_file"),
    );
    let r = https(&cli(&new_ca), agent.port, "GET", "/v1/agent/health").expect("still new");
    assert_eq!(r.status, 200);
}

/// `tls { rpc = true ... }` for a cluster agent: its own certificate, the test CA.
fn rpc_tls_config(pki: &Pki, name: &str, san: &str) -> String {
    let (cert, key) = pki.issue(name, &[san, "localhost", "127.0.0.1"]);
    format!(
        "tls {{\n  rpc = true\n  ca_file = {:?}\n  cert_file = {:?}\n  key_file = {:?}\n  verify_server_hostname = true\n}}\n",
        pki.ca_file().display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    )
}

#[test]
fn a_client_reaches_its_server_over_mutual_tls_on_the_rpc_port() {
    let pki = Pki::new("rpc");
    let server = TestAgent::server(&rpc_tls_config(&pki, "server", "server.global.nomad"), &[]);
    let client = TestAgent::client(
        &[&server.rpc_addr()],
        &rpc_tls_config(&pki, "client", "client.global.nomad"),
        &[],
    );
    let id = client.node_id();
    wait_until(Duration::from_secs(15), "the client ready over TLS", || {
        server.get(&format!("/v1/node/{id}")).json()["Status"] == "ready"
    });
    // Plain HTTP to the RPC port is not served.
    let plain = TcpStream::connect(("127.0.0.1", server.rpc_port)).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(15))).ok();
    if let Ok(r) = exchange(plain, &build_request("GET", "/v1/nodes", &[], b"")) {
        assert_ne!(r.status, 200, "plain HTTP served on the TLS RPC port");
    }
    // TLS without a client certificate is refused: RPC is always mutual.
    if let Ok(r) = https(&cli(&pki), server.rpc_port, "GET", "/v1/nodes") {
        panic!("RPC port served without a client certificate: {}", r.status);
    }
    // With one signed by the CA it answers (the API beside the RPC calls).
    let (c, k) = pki.issue("op", &["cli.global.nomad"]);
    let with = CliTls {
        client_cert: Some(c),
        client_key: Some(k),
        ..cli(&pki)
    };
    let r = https(&with, server.rpc_port, "GET", "/v1/nodes").expect("mtls rpc");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Hold a connection busy: an HTTPS blocking query the agent keeps waiting (not an idle
/// keep-alive, so nothing can be shed to make room).
fn busy(tls: &CliTls, port: u16) -> Box<dyn nomadlet::tls::client::ReadWrite> {
    let mut s = tls
        .connect(
            "127.0.0.1",
            port,
            Duration::from_secs(10),
            Some(Duration::from_secs(30)),
        )
        .expect("connect");
    s.write_all(&build_request(
        "GET",
        "/v1/jobs?index=100000&wait=60s",
        &[],
        b"",
    ))
    .expect("write");
    s.flush().expect("flush");
    s
}

/// The agent's threads whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with(prefix))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `http-conn-*` threads: one per admitted connection.
fn wait_conn_threads(agent: &TestAgent, n: usize) {
    // At least `n`: the agent's own connections (a server's tunnels from its client half)
    // may hold a place too; the caps are what the test checks next.
    let mut seen = 0;
    wait_until(Duration::from_secs(5), "connection threads", || {
        seen = threads_named(agent.pid(), "http-conn");
        seen >= n
    });
    eprintln!("{seen} connection threads serve (wanted {n})");
}

#[test]
fn an_https_client_over_its_connection_cap_reads_nomads_429_through_tls() {
    const CAP: usize = 2;
    let pki = Pki::new("cap");
    pki.agent_config("server", "");
    std::fs::write(
        pki.dir.join("limits.hcl"),
        format!("limits {{\n  http_max_conns_per_client = {CAP}\n}}\n"),
    )
    .expect("write limits");
    let agent = start_tls_agent(&pki.dir, &[]);
    let tls = cli(&pki);
    let held: Vec<_> = (0..CAP).map(|_| busy(&tls, agent.port)).collect();
    wait_conn_threads(&agent, CAP);
    let started = Instant::now();
    let r = https(&tls, agent.port, "GET", "/v1/agent/health").expect("an answer through TLS");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.text(),
        "Your IP is issuing too many concurrent connections, please rate limit your calls\n"
    );
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Refusals are bounded: silent clients over the cap (no handshake) cost one refusal
    // thread, never one each, and never hold up the acceptor: each is answered or closed
    // within the refusal deadline, while a well-behaved client is refused at once.
    let silent: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", agent.port)).expect("connect"))
        .collect();
    let r = https(&tls, agent.port, "GET", "/v1/agent/health").expect("refused at once");
    assert_eq!(r.status, 429);
    assert_eq!(threads_named(agent.pid(), "http-refuse-tls"), 1);
    assert_eq!(threads_named(agent.pid(), "http-conn"), CAP);
    for s in silent {
        let (got, took) = read_to_close(s, Duration::from_secs(10));
        assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
        assert!(took < Duration::from_secs(5), "held for {took:?}");
    }
    // Beyond the 64 refusals the worker holds at once, a refused connection is closed at
    // once, unanswered.
    let flood: Vec<TcpStream> = (0..70)
        .map(|_| TcpStream::connect(("127.0.0.1", agent.port)).expect("connect"))
        .collect();
    let closed = |s: &TcpStream| {
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 16];
        let gone = match (&*s).read(&mut buf) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        s.set_nonblocking(false).expect("blocking");
        gone
    };
    let mut open_then = 0;
    wait_until(
        Duration::from_secs(5),
        "the refusals over the bound",
        || {
            let gone = flood.iter().filter(|s| closed(s)).count();
            open_then = flood.len() - gone;
            gone >= 6
        },
    );
    // Those held wait for a handshake until their deadline (2 s after accept).
    let which: Vec<usize> = (0..flood.len()).filter(|i| closed(&flood[*i])).collect();
    assert!(
        open_then >= 50,
        "only {open_then} held; closed: {which:?}\n{}",
        agent.log()
    );
    assert_eq!(threads_named(agent.pid(), "http-refuse-tls"), 1);
    for s in flood {
        let (_, took) = read_to_close(s, Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "held for {took:?}");
    }
    // A place given back is a place to use again.
    drop(held);
    wait_until(Duration::from_secs(5), "admitted again", || {
        https(&tls, agent.port, "GET", "/v1/agent/health").is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn an_https_client_over_the_total_cap_reads_the_503_through_tls() {
    const TOTAL: usize = 2;
    let pki = Pki::new("total");
    let config = pki.agent_config("server", "");
    let agent = TestAgent::start_with(
        &temp_dir("tls-agent"),
        &["-config", config.to_str().expect("utf-8 path")],
        &[("NOMADLET_HTTP_MAX_CONNS_TOTAL", "2")],
        None,
    );
    let tls = cli(&pki);
    let held: Vec<_> = (0..TOTAL).map(|_| busy(&tls, agent.port)).collect();
    wait_conn_threads(&agent, TOTAL);
    let r = https(&tls, agent.port, "GET", "/v1/agent/health").expect("an answer through TLS");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("too many connections"), "{}", r.text());
    drop(held);
    wait_until(Duration::from_secs(5), "admitted again", || {
        https(&tls, agent.port, "GET", "/v1/agent/health").is_ok_and(|r| r.status == 200)
    });
}
