//! Shared integration-test harness: start the real `nomadlet` binary on a free port with its
//! own data dir, speak raw HTTP/1.1 over TCP or a Unix socket, and poll with deadlines.
#![allow(dead_code)]

/// Network partitions: a network of namespaces per test, hosts cut off and healed.
pub mod netns;

/// A test certificate authority and the files it issues.
pub mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nomadlet")
}

/// A fresh, empty temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nomadlet-test-{tag}-{}", uuid_like()));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A data dir short enough for `<dir>/alloc/<uuid>/<task>/secrets/api.sock` to fit in the
/// 108-byte sun_path (the Task API socket of every task).
pub fn short_dir() -> PathBuf {
    let d = PathBuf::from(format!("/tmp/nl-{}", &uuid_like()[..8]));
    std::fs::create_dir_all(&d).expect("create short dir");
    d
}

fn uuid_like() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Where test agents' ports come from: below the kernel's ephemeral range (32768 and up
/// on Linux by default) and below the tasks' dynamic ports (20000 and up). A port picked
/// from the ephemeral range (`bind(0)`) can be taken meanwhile as the local end of any
/// outgoing connection, and the agent then cannot bind it (seen as a refused connect on CI).
pub const TEST_PORTS: std::ops::Range<u16> = 10000..20000;

fn random_test_port() -> u16 {
    let mut b = [0u8; 2];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    let span = TEST_PORTS.end - TEST_PORTS.start;
    TEST_PORTS.start + u16::from_le_bytes(b) % span
}

/// Ports this test process has handed out already: never handed out twice. The bind check
/// below cannot see a port an agent in a network namespace of its own will bind (a partition
/// test's agents), so two of one agent's ports could otherwise coincide (seen on CI).
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A TCP port nothing listens on right now (and free for UDP too), from [`TEST_PORTS`],
/// never the same twice in one test process.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let p = random_test_port();
        let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if taken.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        {
            taken.push(p);
            return p;
        }
    }
    panic!("no free port in {TEST_PORTS:?}");
}

/// How much longer than its nominal timeout a wait may take: a test on a loaded 2-core CI
/// machine runs beside seven others, each with its own agents. A wait returns as soon as its
/// condition holds, so the slack costs a passing test nothing; it only keeps a slow machine
/// from failing a correct agent.
pub const WAIT_SLACK: u32 = 3;

/// Poll `f` every 20 ms until it returns true; panic with `what` after `timeout` (times
/// [`WAIT_SLACK`]).
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let timeout = timeout * WAIT_SLACK;
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

/// Read one response (Content-Length, chunked, or to EOF) from a buffered stream.
pub fn read_response<R: BufRead>(r: &mut R, head_only: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    if let Some(len) = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if resp
        .header("Transfer-Encoding")
        .map(|v| v.eq_ignore_ascii_case("chunked"))
        .unwrap_or(false)
    {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Send raw bytes and read one response from any stream.
pub fn exchange<S: Read + Write>(stream: S, raw: &[u8]) -> std::io::Result<Response> {
    let mut r = BufReader::new(stream);
    r.get_mut().write_all(raw)?;
    let head_only = raw.starts_with(b"HEAD ");
    read_response(&mut r, head_only)
}

/// Build a request with `Connection: close`.
pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request over a Unix socket.
pub fn unix_request(
    sock: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    exchange(s, &build_request(method, path, headers, body)).expect("unix exchange")
}

/// A running agent started by a test; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct TestAgent {
    pub child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub args: Vec<String>,
    /// Extra environment for the agent process (see `start_with`).
    pub env: Vec<(String, String)>,
    /// If set, the agent runs under `ulimit -n <nofile>` (through `sh -c`; same pid).
    pub nofile: Option<u32>,
    /// The RPC port of a cluster agent (`server()`/`client()`); 0 for `-dev` agents.
    pub rpc_port: u16,
    /// The Serf port of a cluster agent; 0 for `-dev` agents.
    pub serf_port: u16,
    /// The loopback address the agent listens on (`127.0.0.1` unless it lives on a host of a
    /// test's own network, `common/netns.rs`).
    pub host: String,
    /// The network namespace (a path under `/run/netns`) the agent runs in, if not the test's.
    pub netns: Option<String>,
}

impl TestAgent {
    /// `nomadlet agent -dev` with a fresh data dir and free port, plus `extra` flags.
    pub fn start(extra: &[&str]) -> TestAgent {
        TestAgent::start_in(&temp_dir("agent"), extra)
    }

    /// A `-dev` agent with `config` as its config file (`ext`: "hcl" or "json"), written
    /// beside its data dir and removed once the agent has read it.
    pub fn start_with_config(ext: &str, config: &str) -> TestAgent {
        let dir = temp_dir("cfg");
        let file = dir.with_extension(ext);
        std::fs::write(&file, config).expect("write the config file");
        let agent = TestAgent::start_in(&dir, &["-config", file.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&file);
        agent
    }

    /// Start with a given data dir (used to restart on the same state).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> TestAgent {
        TestAgent::start_with(data_dir, extra, &[], None)
    }

    /// Start with extra environment variables and, optionally, a low open-files limit.
    pub fn start_with(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> TestAgent {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "agent".into(),
            "-dev".into(),
            "-data-dir".into(),
            data_dir.display().to_string(),
            "-http-port".into(),
            port.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut agent = TestAgent {
            child: None,
            port,
            data_dir: data_dir.to_path_buf(),
            log_path: data_dir.with_extension(format!("{port}.log")),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            nofile,
            rpc_port: 0,
            serf_port: 0,
            host: "127.0.0.1".into(),
            netns: None,
        };
        agent.spawn();
        agent
    }

    /// A server-only agent (`server { enabled = true }`, no `-dev`): its own free HTTP, RPC and
    /// Serf ports on 127.0.0.1 and its own data dir; `config` is more agent config (HCL, e.g.
    /// `server { heartbeat_grace = "1s" }`), `extra` more flags. It bootstraps alone
    /// (`bootstrap_expect = 1`) unless `config` says otherwise (Nomad's 0 never bootstraps).
    pub fn server(config: &str, extra: &[&str]) -> TestAgent {
        TestAgent::cluster_agent(
            "server",
            &temp_dir("server"),
            "server {\n  enabled = true\n  bootstrap_expect = 1\n}\n",
            config,
            extra,
        )
    }

    /// A client-only agent (`client { enabled = true }`, raw_exec enabled) whose servers are
    /// `servers` (RPC addresses, e.g. `server.rpc_addr()`); its own ports and (short) data dir.
    pub fn client(servers: &[&str], config: &str, extra: &[&str]) -> TestAgent {
        let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        let role = format!(
            "client {{\n  enabled = true\n  servers = [{}]\n}}\nplugin \"raw_exec\" {{\n  config {{ enabled = true }}\n}}\n",
            list.join(", ")
        );
        TestAgent::cluster_agent("client", &short_dir(), &role, config, extra)
    }

    /// An agent of a cluster: `role` config (and `config`) in files in `data_dir`, the node
    /// named `<kind>-<http port>`.
    pub fn cluster_agent(
        kind: &str,
        data_dir: &Path,
        role: &str,
        config: &str,
        extra: &[&str],
    ) -> TestAgent {
        TestAgent::cluster_agent_at("127.0.0.1", None, kind, data_dir, role, config, extra)
    }

    /// [`TestAgent::cluster_agent`] bound to the loopback address `host`, run in the network
    /// namespace `netns` (a path under `/run/netns`) when given.
    pub fn cluster_agent_at(
        host: &str,
        netns: Option<&str>,
        kind: &str,
        data_dir: &Path,
        role: &str,
        config: &str,
        extra: &[&str],
    ) -> TestAgent {
        let (port, rpc_port, serf_port) = (free_port(), free_port(), free_port());
        let base = format!(
            "bind_addr = \"{host}\"\nports {{\n  http = {port}\n  rpc = {rpc_port}\n  serf = {serf_port}\n}}\n{role}"
        );
        // Config files live beside the data dir (the agent tightens the data dir's mode).
        let role_file = data_dir.with_extension(format!("{port}.hcl"));
        std::fs::write(&role_file, base).expect("write agent config");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "-data-dir".into(),
            data_dir.display().to_string(),
            "-config".into(),
            role_file.display().to_string(),
            "-node".into(),
            format!("{kind}-{port}"),
        ];
        if !config.is_empty() {
            let extra_file = data_dir.with_extension(format!("{port}.extra.hcl"));
            std::fs::write(&extra_file, config).expect("write extra agent config");
            args.push("-config".into());
            args.push(extra_file.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut agent = TestAgent {
            child: None,
            port,
            data_dir: data_dir.to_path_buf(),
            log_path: data_dir.with_extension(format!("{port}.log")),
            args,
            env: Vec::new(),
            nofile: None,
            rpc_port,
            serf_port,
            host: host.to_string(),
            netns: netns.map(str::to_string),
        };
        agent.spawn();
        agent
    }

    /// `127.0.0.1:<rpc port>`: what a client's `servers` names.
    pub fn rpc_addr(&self) -> String {
        format!("{}:{}", self.host, self.rpc_port)
    }

    /// One request to the RPC port with `Connection: close`.
    pub fn rpc_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let s = TcpStream::connect((self.host.as_str(), self.rpc_port)).expect("connect rpc");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        exchange(s, &build_request(method, path, headers, body))
            .unwrap_or_else(|e| panic!("{method} {path} (rpc): {e}"))
    }

    /// SIGKILL the agent (no shutdown at all) and reap it; `restart_after_stop` starts it
    /// again on the same data dir and ports.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("agent running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// This agent's node ID (from `/v1/agent/self`).
    pub fn node_id(&self) -> String {
        self.get_json("/v1/agent/self")["stats"]["client"]["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log_path).expect("log file");
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin());
                c
            }
            // Into the agent's own network namespace (nsenter execs: the same pid).
            None => match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("nsenter");
                    c.arg(format!("--net={ns}")).arg("--").arg(bin());
                    c
                }
                None => Command::new(bin()),
            },
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log clone"))
            .stderr(log)
            .spawn()
            .expect("spawn nomadlet");
        self.child = Some(child);
        let port = self.port;
        let log_path = self.log_path.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect((self.host.as_str(), port)).is_ok() {
                break;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "agent exited early ({st}): {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!("agent did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// One request over TCP with `Connection: close`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let s = TcpStream::connect((self.host.as_str(), self.port)).unwrap_or_else(|e| {
            panic!(
                "connect to the agent on {}:{}: {e}; {}; its log:\n{}",
                self.host,
                self.port,
                self.process_state(),
                self.log()
            )
        });
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        exchange(s, &build_request(method, path, headers, body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Send SIGTERM and wait (with a deadline) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        sigterm(&child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop within 30s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop and start again on the same data dir and port.
    pub fn restart(&mut self) {
        let st = self.stop();
        assert!(st.success(), "agent exit status {st}");
        self.spawn();
    }

    /// Start again (same data dir and port) after `stop()`, e.g. once the test edited state.
    pub fn restart_after_stop(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// What the kernel says of the agent process (for a failure message): running, or an
    /// unreaped exit (`Z`) with the signal that ended it, if one did.
    fn process_state(&self) -> String {
        let pid = self.pid();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return format!("agent process {pid}: gone");
        };
        // Fields after the command's closing parenthesis: state is the 1st, exit_code the 50th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first().copied().unwrap_or("?");
        let code: i32 = fields.get(49).and_then(|c| c.parse().ok()).unwrap_or(0);
        match (state, code & 0x7f) {
            ("Z", 0) => format!(
                "agent process {pid}: exited with status {}",
                (code >> 8) & 0xff
            ),
            ("Z", sig) => format!("agent process {pid}: killed by signal {sig}"),
            (st, _) => format!("agent process {pid}: state {st}"),
        }
    }
}

/// SIGTERM to a child of this test process.
fn sigterm(child: &std::process::Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::TERM,
    );
}

/// `kill(pid, sig)` through rustix: a negative `pid` is the process group `-pid`. Errors (the
/// process already gone) are ignored, as the tests' cleanup wants.
pub fn kill(pid: i32, sig: i32) {
    use rustix::process::{Pid, Signal};
    let target = pid.checked_abs().and_then(Pid::from_raw);
    let (Some(p), Some(s)) = (target, Signal::from_named_raw(sig)) else {
        return;
    };
    let _ = if pid < 0 {
        rustix::process::kill_process_group(p, s)
    } else {
        rustix::process::kill_process(p, s)
    };
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(&c);
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
        // Tasks outlive the agent (their shims keep them): nothing a test started may stay.
        kill_leftover_tasks(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(&self.log_path);
        if self.rpc_port != 0 {
            let _ =
                std::fs::remove_file(self.data_dir.with_extension(format!("{}.hcl", self.port)));
            let _ = std::fs::remove_file(
                self.data_dir
                    .with_extension(format!("{}.extra.hcl", self.port)),
            );
        }
    }
}

/// The live task shims an agent left in `data_dir`: `(shim dir, shim pid, task pid)`. A shim
/// is live while its `ctl` FIFO has a reader (opening it for writing does not fail).
pub fn live_shims(data_dir: &Path) -> Vec<(PathBuf, i32, i32)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(data_dir.join("client/shims")) else {
        return out;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let alive = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.join("ctl"))
            .is_ok();
        let pids = std::fs::read_to_string(dir.join("pid")).ok().and_then(|t| {
            let mut it = t.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        });
        if let (true, Some((shim, task))) = (alive, pids) {
            out.push((dir, shim, task));
        }
    }
    out
}

/// Kill every task an agent left running in `data_dir` (everything in its cgroup, its
/// process group, its shim) and remove its cgroup, so no test leaves a process behind.
pub fn kill_leftover_tasks(data_dir: &Path) {
    let mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let point = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect();
    for (dir, shim, task) in live_shims(data_dir) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let own = std::fs::read_to_string(format!("/proc/{task}/cgroup")).unwrap_or_default();
        let mut cgroups: Vec<PathBuf> = Vec::new();
        for line in own.lines() {
            let Some(path) = line.splitn(3, ':').nth(2) else {
                continue;
            };
            let last = path.rsplit('/').next().unwrap_or("");
            if name.is_empty() || !last.starts_with(&name) {
                continue;
            }
            for m in &mounts {
                let d = m.join(path.trim_start_matches('/'));
                if d.join("cgroup.procs").exists() && !cgroups.contains(&d) {
                    cgroups.push(d);
                }
            }
        }
        // Processes of a task this test's agent started: only while `task` is still the
        // live shim's child. A task that ended was reaped by its shim, and its PID (and
        // process group ID) may since belong to anything, another test's agent among them
        // (PIDs wrap at 32768 here: seen on CI as an agent SIGKILLed right after it started).
        // Whatever such a task left behind is in its cgroup, killed below.
        if is_shim(shim) && parent_of(task) == Some(shim) {
            kill(-task, 9);
            kill(task, 9);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for cg in &cgroups {
            loop {
                let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
                if pids.is_empty() || Instant::now() > deadline {
                    break;
                }
                for p in pids {
                    // As above; these are in the task's own cgroup.
                    kill(p, 9);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The shim this test's agent started (live: its FIFO has a reader; the PID still a
        // task shim's).
        if is_shim(shim) {
            kill(shim, 9);
        }
        for cg in &cgroups {
            let _ = std::fs::remove_dir(cg);
        }
    }
}

/// The parent PID of `pid` (`None`: no such process).
fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `pid` is a task shim (`nomadlet task-shim ...`) now.
fn is_shim(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).nth(1) == Some(b"task-shim".as_slice()))
        .unwrap_or(false)
}

/// A TCP connection to `127.0.0.1:port` from the loopback address `from` (e.g.
/// `[127, 0, 0, 2]`), so one test can act as several client addresses.
pub fn connect_from(from: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketAddrV4, SocketFlags, SocketType};
    assert_eq!(from[0], 127, "loopback only");
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &SocketAddrV4::new(from.into(), 0))?;
    rustix::net::connect(&fd, &SocketAddrV4::new([127, 0, 0, 1].into(), port))?;
    Ok(TcpStream::from(fd))
}

/// Raise this test process's soft open-files limit to `want` (capped at the hard limit).
pub fn raise_open_files_limit(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let r = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    if r.current.is_some_and(|cur| cur < want) {
        let current = Some(r.maximum.map_or(want, |max| want.min(max)));
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current,
                maximum: r.maximum,
            },
        );
    }
}

// ---- Raft clusters: several server processes on loopback (tests/raft*.rs & co) ----

/// A free UDP port on loopback (a server's serf port).
pub fn free_udp_port() -> u16 {
    free_port()
}

/// `n` servers with `bootstrap_expect = n`, each joining the others through `retry_join`.
pub fn cluster(n: usize) -> Vec<TestAgent> {
    cluster_with(n, "", "")
}

/// [`cluster`] with `top` added to each agent's config and `server_keys` to its `server`
/// block.
pub fn cluster_with(n: usize, top: &str, server_keys: &str) -> Vec<TestAgent> {
    let serfs: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    (0..n)
        .map(|i| {
            let others: Vec<String> = serfs
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i)
                .map(|(_, p)| format!("\"127.0.0.1:{p}\""))
                .collect();
            TestAgent::server(
                &format!(
                    "{top}\nports {{\n  serf = {}\n}}\nserver {{\n  bootstrap_expect = {n}\n{server_keys}\n  server_join {{\n    retry_join = [{}]\n    retry_interval = \"1s\"\n  }}\n}}\n",
                    serfs[i],
                    others.join(", ")
                ),
                &[],
            )
        })
        .collect()
}

/// One server of the Raft configuration as an agent shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftServer {
    pub id: String,
    pub address: String,
    pub leader: bool,
    pub voter: bool,
}

/// The Raft configuration as `a` shows it (`?stale`: its own view); `None` when it does not
/// answer.
pub fn raft_configuration(a: &TestAgent) -> Option<Vec<RaftServer>> {
    let r = try_get(a, "/v1/operator/raft/configuration?stale")?;
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    Some(
        v["Servers"]
            .as_array()?
            .iter()
            .map(|s| RaftServer {
                id: s["ID"].as_str().unwrap_or_default().to_string(),
                address: s["Address"].as_str().unwrap_or_default().to_string(),
                leader: s["Leader"] == true,
                voter: s["Voter"] == true,
            })
            .collect(),
    )
}

/// GET with a short deadline; `None` when the agent does not answer (killed, stopped).
pub fn try_get(a: &TestAgent, path: &str) -> Option<Response> {
    try_get_at(&a.host, a.port, path)
}

pub fn try_get_port(port: u16, path: &str) -> Option<Response> {
    try_get_at("127.0.0.1", port, path)
}

/// [`try_get_port`] to the loopback address `host`.
pub fn try_get_at(host: &str, port: u16, path: &str) -> Option<Response> {
    let s = std::net::TcpStream::connect_timeout(
        &format!("{host}:{port}").parse().ok()?,
        Duration::from_millis(500),
    )
    .ok()?;
    // Listing a thousand jobs takes a debug build a while on a loaded machine.
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    exchange(s, &build_request("GET", path, &[], b"")).ok()
}

/// A batch job `id` running `/bin/true`: the Raft tests' unit of replicated write.
pub fn true_job(id: &str) -> Vec<u8> {
    serde_json::json!({"Job": {"ID": id, "Name": id, "Type": "batch", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/true"}}]}]}})
    .to_string()
    .into_bytes()
}

/// Register [`true_job`] `id` at `host:port`, connect and reply within `deadline` (a cut-off
/// or stopped server never answers): true when acknowledged with 200.
pub fn register_job_at(host: &str, port: u16, id: &str, deadline: Duration) -> bool {
    let sent = (|| -> Result<Response, String> {
        let addr: std::net::SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let s = TcpStream::connect_timeout(&addr, deadline).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(deadline)).ok();
        s.set_write_timeout(Some(deadline)).ok();
        let req = build_request(
            "PUT",
            "/v1/jobs",
            &[("Content-Type", "application/json")],
            &true_job(id),
        );
        exchange(s, &req).map_err(|e| e.to_string())
    })();
    match sent {
        Ok(r) if r.status == 200 => true,
        Ok(r) => {
            eprintln!("register {id} on {host}:{port}: {} {}", r.status, r.text());
            false
        }
        Err(e) => {
            eprintln!("register {id} on {host}:{port}: {e}");
            false
        }
    }
}

/// [`register_job_at`] on agent `a` with a 5 s deadline.
pub fn register_job(a: &TestAgent, id: &str) -> bool {
    register_job_at(&a.host, a.port, id, Duration::from_secs(5))
}

/// Whether `a` holds every job of `want` (its own state).
pub fn has_jobs(a: &TestAgent, want: &std::collections::BTreeSet<String>) -> bool {
    jobs_on(a).is_some_and(|have| want.is_subset(&have))
}

/// `(state, term)` of a server's Raft (`/v1/agent/self` stats).
pub fn raft_state(a: &TestAgent) -> Option<(String, u64)> {
    raft_state_at(&a.host, a.port)
}

pub fn raft_state_on(port: u16) -> Option<(String, u64)> {
    raft_state_at("127.0.0.1", port)
}

/// [`raft_state_on`] of the server at the loopback address `host`.
pub fn raft_state_at(host: &str, port: u16) -> Option<(String, u64)> {
    let r = try_get_at(host, port, "/v1/agent/self")?;
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    let raft = &v["stats"]["raft"];
    Some((
        raft["state"].as_str()?.to_string(),
        raft["term"].as_str()?.parse().ok()?,
    ))
}

/// The leader's RPC address as `a` sees it (`""` while none is known).
pub fn leader_of(a: &TestAgent) -> Option<String> {
    let r = try_get(a, "/v1/status/leader?stale")?;
    (r.status == 200).then(|| r.json().as_str().unwrap_or_default().to_string())
}

/// The index (into `servers`) of the leader every live server in `live` names.
pub fn agreed_leader(servers: &[TestAgent], live: &[usize]) -> Option<usize> {
    let mut named = std::collections::BTreeSet::new();
    for &i in live {
        named.insert(leader_of(&servers[i])?);
    }
    if named.len() != 1 {
        return None;
    }
    let addr = named.into_iter().next()?;
    let i = live
        .iter()
        .copied()
        .find(|&i| servers[i].rpc_addr() == addr)?;
    (raft_state(&servers[i])?.0 == "Leader").then_some(i)
}

pub fn wait_leader(servers: &[TestAgent], live: &[usize], timeout: Duration) -> usize {
    let mut found = None;
    wait_until(timeout, "one leader named by every live server", || {
        found = agreed_leader(servers, live);
        found.is_some()
    });
    found.expect("leader")
}

/// The job IDs a server holds (its own state: `?stale`); `None` when it does not answer.
pub fn jobs_on(a: &TestAgent) -> Option<std::collections::BTreeSet<String>> {
    let r = try_get(a, "/v1/jobs?stale")?;
    if r.status != 200 {
        return None;
    }
    Some(
        r.json()
            .as_array()?
            .iter()
            .filter_map(|j| j["ID"].as_str().map(String::from))
            .collect(),
    )
}

/// A Python venv under cargo's target tmp dir, made once per `name` with `packages`
/// installed (each list one `pip install`, in order; a list starting with `--no-deps`
/// installs without dependencies); its `bin/` dir.
pub fn python_venv(name: &str, packages: &[&[&str]]) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let venv = base.join("venv");
    let ready = base.join("venv.ready");
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::create_dir_all(&base).expect("venv dir");
        let run = |cmd: &mut Command, what: &str| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
            assert!(
                out.status.success(),
                "{what} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
        for list in packages {
            run(
                Command::new(venv.join("bin/python"))
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                    ])
                    .args(*list),
                &format!("pip install {list:?}"),
            );
        }
        std::fs::write(&ready, "").expect("mark the venv ready");
    }
    venv.join("bin")
}
