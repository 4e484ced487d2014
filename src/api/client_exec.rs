//! `GET /v1/client/allocation/:alloc_id/exec`: Nomad's `alloc exec` over a websocket. The
//! request is checked (alloc, ACL, task, command, websocket handshake) and the command started
//! before the 101; then the connection thread runs the session: client frames
//! (`{"stdin":{"data":…}}`, `{"stdin":{"close":true}}`, `{"tty_size":{…}}`) to the process,
//! its output as `{"stdout":{"data":…}}` / `{"stderr":{"data":…}}` frames, and at the end
//! `{"exited":true,"result":{"exit_code":N}}` and a close 1000. The process group is killed
//! when the client goes away, a frame is refused, or the server stops.

use std::io;
use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding};
use serde::Deserialize;
use serde_json::json;
use sha1::{Digest, Sha1};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::client::exec::{self, ExecError, ExecIo, ExecProcess};
use crate::client::raw_exec;
use crate::http::{Method, Reply, Upgrade, Upgraded};
use crate::sys::poll::PollSet;
use crate::sys::pty;

use super::{ApiError, ApiReply, ApiResult, Ctx};

/// Largest websocket message (and frame) a client may send; larger ones end the session.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest `command` query value (the JSON array of strings).
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Most output bytes carried by one stdout/stderr frame.
pub const OUTPUT_CHUNK: usize = 8 * 1024;
/// Most stdin bytes held for a process that does not read them; past it, client frames wait.
pub const MAX_STDIN_PENDING: usize = 256 * 1024;
/// How long the session waits for anything before it checks the process and the server.
pub const TICK: Duration = Duration::from_millis(100);
/// The wait between tries to hand pending stdin to a process that is not reading it.
pub const PENDING_TICK: Duration = Duration::from_millis(20);
/// How long one socket read may block once `poll` said it is readable.
pub const READ_SLICE: Duration = Duration::from_millis(10);
/// How long one write to the client may stall before the session ends.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// After the command exits, how long output still held open by its children is read.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// How long the session waits for the client's answer to its close frame.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The websocket accept key's fixed suffix (RFC 6455, 1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Route `client/allocation/:id/exec` (the path after `/v1/`).
pub fn route(ctx: &Ctx, rest: &str) -> ApiResult {
    let Some(id) = rest
        .strip_prefix("client/allocation/")
        .and_then(|r| r.strip_suffix("/exec"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
    else {
        return Err(ApiError::not_found("resource not found"));
    };
    ctx.require_method(&[Method::Get])?;
    let alloc = super::forward::local_alloc(ctx.agent, id)
        .ok_or_else(|| ApiError::not_found(format!("Unknown allocation {id:?}")))?;
    // raw_exec has no filesystem isolation: Nomad wants alloc-node-exec on top of alloc-exec.
    ctx.identity
        .allow_namespace(&alloc.namespace, "alloc-exec")?;
    ctx.identity
        .allow_namespace(&alloc.namespace, "alloc-node-exec")?;
    let task = ctx.req.query("task").unwrap_or("");
    if task.is_empty() {
        return Err(ApiError::bad_request("missing task name"));
    }
    let command = parse_command(ctx.req.query("command").unwrap_or(""))?;
    let tty = match ctx.req.query("tty").unwrap_or("false") {
        "" | "false" => false,
        "true" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "tty: invalid boolean value {other:?}"
            )))
        }
    };
    let accept = websocket_accept(ctx)?;
    let target = ctx.agent.client.exec_target(id, task).map_err(exec_error)?;
    let proc = exec::spawn(&target, &command, tty).map_err(exec_error)?;
    log::info!("alloc {id} task {task}: exec started (pid {})", proc.pid);
    let session = Session { proc, tty };
    Ok(ApiReply::Http(Reply::upgrade(
        vec![
            ("Upgrade".into(), "websocket".into()),
            ("Sec-WebSocket-Accept".into(), accept),
        ],
        Box::new(session),
    )))
}

fn exec_error(e: ExecError) -> ApiError {
    match e {
        ExecError::UnknownTask(_) => ApiError::bad_request(e.to_string()),
        ExecError::NotRunning(_) | ExecError::Start(_) | ExecError::Command(_) => {
            ApiError::internal(e.to_string())
        }
    }
}

/// The `command` query value: a JSON array of at least one string.
fn parse_command(text: &str) -> Result<Vec<String>, ApiError> {
    if text.is_empty() {
        return Err(ApiError::bad_request("command is not present"));
    }
    if text.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::bad_request("command is too long"));
    }
    let cmd: Vec<String> = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("failed to parse command: {e}")))?;
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(ApiError::bad_request("command is not present"));
    }
    Ok(cmd)
}

/// Check the websocket handshake headers and compute `Sec-WebSocket-Accept`.
fn websocket_accept(ctx: &Ctx) -> Result<String, ApiError> {
    let has_token = |name: &str, token: &str| {
        ctx.req
            .header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Connection", "upgrade") || !has_token("Upgrade", "websocket") {
        return Err(ApiError::bad_request(
            "websocket: the client is not using the websocket protocol",
        ));
    }
    if ctx.req.header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(ApiError::bad_request(
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
        ));
    }
    let key = ctx
        .req
        .header("Sec-WebSocket-Key")
        .map(str::trim)
        .filter(|k| Base64::decode_vec(k).is_ok_and(|b| b.len() == 16))
        .ok_or_else(|| {
            ApiError::bad_request("websocket: not a websocket handshake: 'Sec-WebSocket-Key' header must be Base64 encoded value of 16-byte length")
        })?;
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    Ok(Base64::encode_string(&h.finalize()))
}

/// One client frame, as Nomad's `ExecStreamingInput`.
#[derive(Deserialize)]
struct Input {
    stdin: Option<StdinOp>,
    tty_size: Option<TtySize>,
}

#[derive(Deserialize)]
struct StdinOp {
    data: Option<String>,
    #[serde(default)]
    close: bool,
}

#[derive(Deserialize)]
struct TtySize {
    height: u16,
    width: u16,
}

/// A running exec and the connection it answers on.
struct Session {
    proc: ExecProcess,
    tty: bool,
}

/// Why a session ends early.
enum End {
    /// The client closed or the connection failed: nothing more can be sent.
    Gone,
    /// A frame was refused: tell the client why in a close frame.
    Refused(CloseCode, String),
}

type Ws<'a> = WebSocket<Upgraded<'a>>;

impl Upgrade for Session {
    fn run(mut self: Box<Self>, conn: Upgraded<'_>) {
        let _ = conn.set_read_timeout(READ_SLICE);
        let _ = conn.set_write_timeout(WRITE_STALL);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let mut ws = WebSocket::from_raw_socket(conn, Role::Server, Some(config));
        let pid = self.proc.pid;
        match self.serve(&mut ws) {
            Ok(code) => {
                let frame = json!({"exited": true, "result": {"exit_code": code}});
                if send_json(&mut ws, &frame).is_ok() {
                    close(&mut ws, CloseCode::Normal, "");
                }
            }
            Err(End::Gone) => {}
            Err(End::Refused(code, reason)) => close(&mut ws, code, &reason),
        }
        // Whatever is left of the exec's process group goes with the session.
        self.proc.kill();
        log::info!("exec (pid {pid}) ended");
    }
}

/// Send a close frame, flush, and wait briefly for the client's close.
fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let mut reason = reason.to_string();
    // A close frame's reason fits in 123 bytes.
    while reason.len() > 123 {
        reason.pop();
    }
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let deadline = Instant::now() + CLOSE_WAIT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if would_block(&e) => {
                let _ = ws.flush();
            }
            Err(_) => return,
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn send_json(ws: &mut Ws, value: &serde_json::Value) -> Result<(), End> {
    ws.send(Message::text(value.to_string()))
        .map_err(|_| End::Gone)
}

/// Read what an fd has now: `Some(0)` at its end (a pty master's EIO too), `None` if nothing
/// is there yet.
fn read_some(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    use std::io::Read;
    let mut f = std::fs::File::from(fd.try_clone()?);
    loop {
        return match f.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(Some(0)),
            Err(e) => Err(e),
        };
    }
}

fn write_some(fd: &std::os::fd::OwnedFd, data: &[u8]) -> io::Result<usize> {
    use std::io::Write;
    let mut f = std::fs::File::from(fd.try_clone()?);
    match f.write(data) {
        Ok(n) => Ok(n),
        Err(e) if would_block(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

impl Session {
    /// Pump until the command exits and its output is drained: `Ok(exit_code)`.
    fn serve(&mut self, ws: &mut Ws) -> Result<i64, End> {
        let mut poll = PollSet::new();
        let mut buf = vec![0u8; OUTPUT_CHUNK];
        let mut stdin_pending: Vec<u8> = Vec::new();
        let mut stdin_close = false;
        let mut out_open = true;
        let mut err_open = !self.tty;
        let mut exited: Option<(i64, Instant)> = None;
        // Bytes the client sent with its upgrade request do not make the socket readable.
        let mut sock_ready = ws.get_ref().has_buffered();
        loop {
            if ws.get_ref().stopping() {
                return Err(End::Refused(CloseCode::Away, "agent shutting down".into()));
            }
            // Client frames, unless the process is not taking its stdin: then they wait (and
            // the socket is not polled), but a client that left still ends the session.
            let want_client = stdin_pending.len() < MAX_STDIN_PENDING;
            if want_client && sock_ready {
                self.read_client(ws, &mut stdin_pending, &mut stdin_close)?;
            } else if !want_client && ws.get_ref().peer_gone() {
                return Err(End::Gone);
            }
            self.feed_stdin(&mut stdin_pending, &mut stdin_close);
            let want_client = stdin_pending.len() < MAX_STDIN_PENDING;
            // Output.
            let (out_fd, err_fd) = match &self.proc.io {
                ExecIo::Tty { master } => (master, None),
                ExecIo::Pipes { stdout, stderr, .. } => (stdout, Some(stderr)),
            };
            poll.clear();
            let mut next = 0;
            let mut slot = |on: bool| {
                on.then(|| {
                    next += 1;
                    next - 1
                })
            };
            let sock_at = slot(want_client);
            let out_at = slot(out_open);
            let err_at = slot(err_open && err_fd.is_some());
            if sock_at.is_some() {
                poll.push(ws.get_ref().fd());
            }
            if out_at.is_some() {
                poll.push(std::os::fd::AsFd::as_fd(out_fd));
            }
            if let (Some(_), Some(fd)) = (err_at, err_fd) {
                poll.push(std::os::fd::AsFd::as_fd(fd));
            }
            let wait = if stdin_pending.is_empty() {
                TICK
            } else {
                PENDING_TICK
            };
            match poll.wait(wait) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(End::Gone),
            }
            sock_ready = sock_at.is_some_and(|i| poll.ready(i));
            if out_at.is_some_and(|i| poll.ready(i)) {
                out_open = pump(ws, out_fd, &mut buf, "stdout")?;
            }
            if let (Some(i), Some(fd)) = (err_at, err_fd) {
                if poll.ready(i) {
                    err_open = pump(ws, fd, &mut buf, "stderr")?;
                }
            }
            if exited.is_none() {
                if let Ok(Some(st)) = self.proc.child.try_wait() {
                    exited = Some((raw_exec::exit_parts(&st).0, Instant::now()));
                }
            }
            if let Some((code, at)) = exited {
                if (!out_open && !err_open) || at.elapsed() >= DRAIN_AFTER_EXIT {
                    return Ok(code);
                }
            }
        }
    }

    /// Read client frames until none is waiting.
    fn read_client(
        &mut self,
        ws: &mut Ws,
        stdin_pending: &mut Vec<u8>,
        stdin_close: &mut bool,
    ) -> Result<(), End> {
        loop {
            let msg = match ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if would_block(&e) => return Ok(()),
                Err(tungstenite::Error::Capacity(_)) => {
                    return Err(End::Refused(
                        CloseCode::Size,
                        format!("message larger than {MAX_MESSAGE_BYTES} bytes"),
                    ))
                }
                Err(_) => return Err(End::Gone),
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(_) => return Err(End::Gone),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Binary(_) => {
                    return Err(End::Refused(
                        CloseCode::Unsupported,
                        "binary frames are not accepted".into(),
                    ))
                }
            };
            let input: Input = serde_json::from_str(text.as_str())
                .map_err(|e| End::Refused(CloseCode::Policy, format!("invalid exec frame: {e}")))?;
            if let Some(size) = input.tty_size {
                if let ExecIo::Tty { master } = &self.proc.io {
                    let _ = pty::set_size(master, size.height, size.width);
                }
            }
            if let Some(op) = input.stdin {
                if let Some(data) = op.data.filter(|d| !d.is_empty()) {
                    let bytes = Base64::decode_vec(&data).map_err(|_| {
                        End::Refused(
                            CloseCode::Policy,
                            "invalid exec frame: stdin data is not base64".into(),
                        )
                    })?;
                    if !*stdin_close {
                        stdin_pending.extend_from_slice(&bytes);
                    }
                }
                if op.close {
                    *stdin_close = true;
                }
            }
            if stdin_pending.len() >= MAX_STDIN_PENDING {
                return Ok(());
            }
        }
    }

    /// Write what the process will take of its pending stdin; close it once asked and empty.
    fn feed_stdin(&mut self, pending: &mut Vec<u8>, close: &mut bool) {
        let tty = self.tty;
        let fd = match &mut self.proc.io {
            ExecIo::Tty { master } => Some(&*master),
            ExecIo::Pipes { stdin, .. } => stdin.as_ref(),
        };
        let Some(fd) = fd else {
            pending.clear();
            return;
        };
        if !pending.is_empty() {
            match write_some(fd, pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(_) => {
                    pending.clear();
                    *close = true;
                }
            }
        }
        if *close && pending.is_empty() {
            if tty {
                // End of input on a terminal is its EOF character.
                let _ = write_some(fd, &[4]);
            } else if let ExecIo::Pipes { stdin, .. } = &mut self.proc.io {
                *stdin = None;
            }
            *close = false;
        }
    }
}

/// Forward what one output fd has as a frame; false once it is at its end (after sending
/// `{"<name>":{"close":true}}`).
fn pump(ws: &mut Ws, fd: &std::os::fd::OwnedFd, buf: &mut [u8], name: &str) -> Result<bool, End> {
    match read_some(fd, buf) {
        Ok(None) => Ok(true),
        Ok(Some(0)) | Err(_) => {
            send_json(ws, &json!({ name: {"close": true} }))?;
            Ok(false)
        }
        Ok(Some(n)) => {
            send_json(
                ws,
                &json!({ name: {"data": Base64::encode_string(&buf[..n])} }),
            )?;
            Ok(true)
        }
    }
}
