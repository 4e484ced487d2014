//! Helpers shared by the filesystem API tests: register raw_exec jobs, wait for their
//! allocations, read streams (close-delimited HTTP/1.0) and decode concatenated JSON frames.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;

/// Register a raw_exec job with one task `t` running `/bin/sh -c script`; returns the job ID.
pub fn run_job(
    agent: &TestAgent,
    id: &str,
    job_type: &str,
    script: &str,
    log_config: serde_json::Value,
) -> String {
    let body = serde_json::json!({
        "Job": {
            "ID": id, "Type": job_type, "Datacenters": ["dc1"],
            "TaskGroups": [{
                "Name": "g", "Count": 1,
                "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
                "Tasks": [{
                    "Name": "t", "Driver": "raw_exec",
                    "Config": {"command": "/bin/sh", "args": ["-c", script]},
                    "LogConfig": log_config
                }]
            }]
        }
    });
    let r = agent.request("POST", "/v1/jobs", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "register {id}: {}", r.text());
    id.to_string()
}

/// The default LogConfig.
pub fn default_logs() -> serde_json::Value {
    serde_json::json!({"MaxFiles": 10, "MaxFileSizeMB": 10})
}

/// Wait for the job's allocation to exist with task `t` started; returns the alloc ID.
pub fn wait_alloc(agent: &TestAgent, job: &str) -> String {
    let mut id = String::new();
    wait_until(
        Duration::from_secs(20),
        &format!("alloc of {job} started"),
        || {
            let r = agent.get(&format!("/v1/job/{job}/allocations"));
            if r.status != 200 {
                return false;
            }
            let v = r.json();
            let Some(a) = v.as_array().and_then(|a| a.first()) else {
                return false;
            };
            let started = a["TaskStates"]["t"]["StartedAt"].is_string()
                || matches!(
                    a["TaskStates"]["t"]["State"].as_str(),
                    Some("running") | Some("dead")
                );
            if started {
                id = a["ID"].as_str().unwrap_or_default().to_string();
            }
            started && !id.is_empty()
        },
    );
    id
}

/// Wait until a file exists in the alloc (through the API).
pub fn wait_file(agent: &TestAgent, alloc: &str, path: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("{path} in {alloc}"),
        || {
            agent
                .get(&format!("/v1/client/fs/stat/{alloc}?path={path}"))
                .status
                == 200
        },
    );
}

/// The host directory of an allocation.
pub fn alloc_dir(agent: &TestAgent, alloc: &str) -> PathBuf {
    agent.data_dir.join("alloc").join(alloc)
}

/// An open streaming response read close-delimited (HTTP/1.0).
pub struct Stream {
    pub sock: TcpStream,
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Stream {
    pub fn open(agent: &TestAgent, path: &str) -> Stream {
        let mut sock = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
        sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut s = Stream {
            sock,
            status: 0,
            head: String::new(),
            body: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut raw = Vec::new();
        while Instant::now() < deadline {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                s.head = String::from_utf8_lossy(&raw[..p]).into_owned();
                s.body = raw[p + 4..].to_vec();
                s.status = s
                    .head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                return s;
            }
            if s.read_some(&mut raw) == Some(0) && raw.windows(4).all(|w| w != b"\r\n\r\n") {
                break;
            }
        }
        panic!(
            "no response head for {path}: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }

    /// Read what is available (up to the read timeout); `Some(0)` at EOF.
    fn read_some(&mut self, into: &mut Vec<u8>) -> Option<usize> {
        let mut buf = [0u8; 65536];
        match self.sock.read(&mut buf) {
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                Some(n)
            }
            Err(_) => None,
        }
    }

    /// Read until EOF or `timeout`; true when the server closed the stream.
    pub fn read_until_eof(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut b = std::mem::take(&mut self.body);
            let r = self.read_some(&mut b);
            self.body = b;
            if r == Some(0) {
                return true;
            }
        }
        false
    }

    /// Read until `f(body)` holds or `timeout`.
    pub fn read_until(&mut self, timeout: Duration, mut f: impl FnMut(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(&self.body) {
                return true;
            }
            let mut b = std::mem::take(&mut self.body);
            let r = self.read_some(&mut b);
            self.body = b;
            if r == Some(0) {
                return f(&self.body);
            }
        }
        f(&self.body)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Decode concatenated JSON frames (a trailing partial frame is ignored).
pub fn frames(body: &[u8]) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .collect()
}

/// Standard padded base64 decoding for test assertions.
pub fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk.iter().fold(0u32, |n, c| n << 6 | val(*c));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

/// All data bytes carried by frames.
pub fn frame_data(frames: &[serde_json::Value]) -> Vec<u8> {
    frames
        .iter()
        .filter_map(|f| f["Data"].as_str())
        .flat_map(b64)
        .collect()
}

/// Threads of a process.
pub fn thread_count(pid: u32) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Open fds of a process, and how many of them are inotify instances.
pub fn fd_counts(pid: u32) -> (usize, usize) {
    let mut total = 0;
    let mut inotify = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            total += 1;
            if let Ok(t) = std::fs::read_link(e.path()) {
                if t.to_string_lossy().contains("inotify") {
                    inotify += 1;
                }
            }
        }
    }
    (total, inotify)
}
