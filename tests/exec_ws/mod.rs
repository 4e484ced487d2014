//! A websocket client for `alloc exec` (Nomad's JSON frames over RFC 6455), shared by the
//! exec tests: open the upgrade (or get the refusal), send stdin frames, collect output.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64ct::{Base64, Encoding};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use crate::common::TestAgent;

/// RFC 6455's sample key and the accept value it must get.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub type Ws = WebSocket<TcpStream>;

pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Open an exec websocket; a refusal comes back as `(status, body)`.
pub fn open_exec(
    agent: &TestAgent,
    alloc: &str,
    query: &str,
    token: Option<&str>,
) -> Result<Ws, (u16, String)> {
    let mut s = TcpStream::connect(agent.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut head = format!(
        "GET /v1/client/allocation/{alloc}/exec?{query} HTTP/1.1\r\nHost: x\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {KEY}\r\n"
    );
    if let Some(t) = token {
        head.push_str(&format!("X-Nomad-Token: {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    // The head byte by byte, so no websocket byte is read ahead.
    let mut raw = Vec::new();
    let mut b = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read head"), 1, "eof in head");
        raw.push(b[0]);
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text[9..12].parse().expect("status");
    if status != 101 {
        let len: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("body");
        return Err((status, String::from_utf8_lossy(&body).to_string()));
    }
    assert!(
        text.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}")),
        "{text}"
    );
    Ok(WebSocket::from_raw_socket(s, Role::Client, None))
}

pub fn query(task: &str, cmd: &[&str], tty: bool) -> String {
    format!(
        "task={task}&tty={tty}&command={}",
        pct(&serde_json::to_string(cmd).unwrap())
    )
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub closed: Vec<String>,
    pub exit_code: Option<i64>,
    pub close: Option<(CloseCode, String)>,
}

/// Read frames until the close; `until` may stop early (returns with what was seen).
pub fn collect(ws: &mut Ws, mut until: impl FnMut(&Outcome) -> bool) -> Outcome {
    let mut o = Outcome::default();
    loop {
        if until(&o) {
            return o;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("server frame is JSON");
                for (name, buf) in [("stdout", &mut o.stdout), ("stderr", &mut o.stderr)] {
                    if let Some(d) = v[name]["data"].as_str() {
                        buf.push_str(&String::from_utf8_lossy(&Base64::decode_vec(d).unwrap()));
                    }
                    if v[name]["close"] == true {
                        o.closed.push(name.to_string());
                    }
                }
                if v["exited"] == true {
                    o.exit_code = v["result"]["exit_code"].as_i64();
                }
            }
            Ok(Message::Close(f)) => {
                o.close = f.map(|f| (f.code, f.reason.to_string()));
                return o;
            }
            Ok(_) => {}
            Err(e) => panic!("websocket read failed before the close: {e} ({o:?})"),
        }
    }
}

pub fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

pub fn stdin_frame(data: &[u8]) -> Value {
    json!({"stdin": {"data": Base64::encode_string(data)}})
}
