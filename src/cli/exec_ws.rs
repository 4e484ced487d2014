//! The websocket side of `nomadlet alloc exec`: handshake over a plain TCP or Unix stream,
//! then stdin to `stdin` frames, `stdout`/`stderr` frames to ours, the remote exit code back.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use base64ct::{Base64, Encoding};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::http::{CONNECT_TIMEOUT, IO_TIMEOUT};
use super::{CliError, Ctx};

/// Longest 101 (or refusal) head read from the agent.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest refusal body read.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest websocket message accepted from the agent.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// How long one websocket read waits before pending stdin is sent.
pub const TICK: Duration = Duration::from_millis(50);
/// Bytes of our stdin per `stdin` frame.
pub const STDIN_CHUNK: usize = 8 * 1024;
/// Stdin chunks queued for the socket before the reader waits.
pub const STDIN_QUEUE: usize = 16;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(d)),
            Conn::Unix(s) => s.set_read_timeout(Some(d)),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn connect(ctx: &Ctx) -> Result<Conn, CliError> {
    let ep = &ctx.client.endpoint;
    let fail = |e: io::Error| CliError::Other(format!("Error connecting to {}: {e}", ep.url()));
    let conn = match ep.scheme.as_str() {
        "unix" => Conn::Unix(UnixStream::connect(&ep.host).map_err(fail)?),
        "http" => {
            let mut last = None;
            let mut found = None;
            for addr in (ep.host.as_str(), ep.port)
                .to_socket_addrs()
                .map_err(fail)?
            {
                match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            Conn::Tcp(
                found
                    .ok_or_else(|| fail(last.unwrap_or_else(|| io::Error::other("no address"))))?,
            )
        }
        other => {
            return Err(CliError::Other(format!(
                "alloc exec cannot speak {other}:// yet (plain http:// or unix:// only)"
            )))
        }
    };
    let _ = conn.set_read_timeout(IO_TIMEOUT);
    Ok(conn)
}

/// Run the exec at `path` (with its query); returns the remote exit code.
pub fn run(ctx: &Ctx, path: &str, interactive: bool) -> Result<i32, CliError> {
    let mut conn = connect(ctx)?;
    let key = Base64::encode_string(uuid::Uuid::new_v4().as_bytes());
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: nomadlet-cli\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n",
        ctx.client.endpoint.host_header()
    );
    if let Some(t) = ctx.client.token.as_deref().filter(|t| !t.is_empty()) {
        if t.contains(['\r', '\n']) {
            return Err(CliError::Other("the token contains a line break".into()));
        }
        head.push_str(&format!("X-Nomad-Token: {t}\r\n"));
    }
    head.push_str("\r\n");
    let io_err = |e: io::Error| CliError::Other(format!("failed to exec into task: {e}"));
    conn.write_all(head.as_bytes()).map_err(io_err)?;
    // The head byte by byte: nothing of the websocket is read ahead.
    let mut raw = Vec::new();
    let mut b = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if raw.len() >= MAX_HEAD_BYTES || conn.read(&mut b).map_err(io_err)? == 0 {
            return Err(CliError::Other(
                "failed to exec into task: the agent closed the connection".into(),
            ));
        }
        raw.push(b[0]);
    }
    let mut hbuf = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hbuf);
    if !matches!(resp.parse(&raw), Ok(httparse::Status::Complete(_))) {
        return Err(CliError::Other(
            "failed to exec into task: malformed HTTP response".into(),
        ));
    }
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if status != 101 {
        let len: usize = header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .min(MAX_ERROR_BODY);
        let mut body = vec![0u8; len];
        let _ = conn.read_exact(&mut body);
        return Err(CliError::Other(format!(
            "failed to exec into task: Unexpected response code: {status} ({})",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    if header("Sec-WebSocket-Accept") != Some(Base64::encode_string(&h.finalize())) {
        return Err(CliError::Other(
            "failed to exec into task: bad websocket handshake".into(),
        ));
    }
    let _ = conn.set_read_timeout(TICK);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let mut ws = WebSocket::from_raw_socket(conn, Role::Client, Some(config));
    session(&mut ws, interactive)
}

fn send(ws: &mut WebSocket<Conn>, v: Value) -> Result<(), CliError> {
    ws.send(Message::text(v.to_string()))
        .map_err(|e| CliError::Other(format!("failed to exec into task: {e}")))
}

fn session(ws: &mut WebSocket<Conn>, interactive: bool) -> Result<i32, CliError> {
    let stdin = if interactive {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(STDIN_QUEUE);
        // Blocked in read(2) on our stdin, this thread cannot be told to stop; it ends with
        // the process (or at EOF, sending an empty chunk).
        let _ = std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let mut input = io::stdin().lock();
                let mut buf = vec![0u8; STDIN_CHUNK];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = tx.send(Vec::new());
                            return;
                        }
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        Some(rx)
    } else {
        send(ws, json!({"stdin": {"close": true}}))?;
        None
    };
    let mut stdin = stdin;
    let mut code: Option<i64> = None;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                for (name, out) in [
                    ("stdout", &mut io::stdout() as &mut dyn Write),
                    ("stderr", &mut io::stderr()),
                ] {
                    if let Some(d) = v[name]["data"].as_str() {
                        if let Ok(bytes) = Base64::decode_vec(d) {
                            let _ = out.write_all(&bytes).and_then(|_| out.flush());
                        }
                    }
                }
                if v["exited"] == true {
                    code = Some(v["result"]["exit_code"].as_i64().unwrap_or(0));
                }
            }
            Ok(Message::Close(frame)) => {
                let _ = ws.flush();
                return match code {
                    Some(c) => Ok(c.clamp(0, 255) as i32),
                    None => Err(CliError::Other(format!(
                        "failed to exec into task: {}",
                        frame
                            .map(|f| f.reason.to_string())
                            .filter(|r| !r.is_empty())
                            .unwrap_or_else(|| "the session ended without an exit code".into())
                    ))),
                };
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(rx) = &stdin {
                    let mut eof = false;
                    while let Ok(chunk) = rx.try_recv() {
                        if chunk.is_empty() {
                            eof = true;
                            break;
                        }
                        send(
                            ws,
                            json!({"stdin": {"data": Base64::encode_string(&chunk)}}),
                        )?;
                    }
                    if eof {
                        send(ws, json!({"stdin": {"close": true}}))?;
                        stdin = None;
                    }
                }
            }
            Err(e) => {
                return match code {
                    Some(c) => Ok(c.clamp(0, 255) as i32),
                    None => Err(CliError::Other(format!("failed to exec into task: {e}"))),
                }
            }
        }
    }
}
