//! One connection: read heads under deadlines and limits, admit a body, read it into the body
//! budgets as it arrives, keep-alive (and yield to the acceptor when shed), write replies.

use std::io;
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::budget::{BodyBudget, Pool};
use super::chunked::{read_chunked, read_length};
use super::head::{parse_head, Framing, Head};
use super::limits::{Limits, LINGER_BYTES, LINGER_TIME, READ_CHUNK};
use super::reply::{Body, Reply};
use super::respond::{error_reply, write_reply, Plan};
use super::wire::{ConnError, Phase, Sock, Wire};
use super::{Handler, Method, Origin, Peer, Request, RequestHead, Status};

/// Waiting for (or reading) a request head: shutdown may close it at once.
pub(crate) const STATE_IDLE: u8 = 0;
/// Reading a body, running the handler or writing a reply: shutdown lets it finish.
pub(crate) const STATE_BUSY: u8 = 1;
/// Driving a stream body: shutdown ends it through `should_stop`.
pub(crate) const STATE_STREAM: u8 = 2;
/// A kept-alive connection waiting for the first byte of its next request: shutdown closes
/// it at once, and the acceptor may shed it (the one idle longest first) to admit another.
pub(crate) const STATE_KEEPALIVE: u8 = 4;
/// Shed by the acceptor, which has already given back its places under the caps: the thread
/// ends without serving anything more.
pub(crate) const STATE_SHED: u8 = 5;

/// What the acceptor and a connection thread share about one connection.
pub(crate) struct ConnSlot {
    /// One of the `STATE_*` values, read by shutdown and by shedding.
    pub state: AtomicU8,
    /// When it last became an idle keep-alive, on the server's idle clock (the smallest is
    /// the one idle longest).
    pub idle_since: AtomicU64,
}

impl ConnSlot {
    pub(crate) fn new() -> ConnSlot {
        ConnSlot {
            state: AtomicU8::new(STATE_IDLE),
            idle_since: AtomicU64::new(0),
        }
    }
}

/// What a connection thread needs besides its socket.
pub(crate) struct ConnCtx<'a> {
    pub handler: &'a dyn Handler,
    pub limits: &'a Limits,
    /// Set when the listener or the server stops.
    pub stopping: &'a AtomicBool,
    /// Body bytes held in memory across the server (see `Limits::max_body_bytes_in_flight`).
    pub body_pool: &'a AtomicUsize,
    /// Body bytes held by this connection's client (see `Limits::max_body_bytes_per_client`).
    pub client_body: &'a AtomicUsize,
    pub slot: &'a ConnSlot,
    /// The server's idle clock: ticks once each time a connection becomes an idle keep-alive.
    pub idle_clock: &'a AtomicU64,
    pub origin: Origin,
    pub accepted: Instant,
}

impl ConnCtx<'_> {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn set_state(&self, state: u8) {
        self.slot.state.store(state, Ordering::SeqCst);
    }

    /// Become an idle keep-alive, which the acceptor may shed.
    fn enter_keepalive(&self) {
        let now = self.idle_clock.fetch_add(1, Ordering::SeqCst);
        self.slot.idle_since.store(now, Ordering::SeqCst);
        self.set_state(STATE_KEEPALIVE);
    }

    /// Stop being an idle keep-alive; false if the acceptor shed this connection first.
    fn leave_keepalive(&self) -> bool {
        self.slot
            .state
            .compare_exchange(
                STATE_KEEPALIVE,
                STATE_IDLE,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

/// Serve requests on `sock` until the peer closes, a deadline or limit ends it, a reply
/// must close it, the acceptor sheds it while idle, or the server stops.
pub(crate) fn serve(sock: &Arc<Sock>, ctx: &ConnCtx) {
    serve_from(sock, ctx, Vec::new());
}

/// [`serve`] with bytes already read from the socket (`ahead`) parsed first.
fn serve_from(sock: &Arc<Sock>, ctx: &ConnCtx, ahead: Vec<u8>) {
    // HTTPS: the handshake shares the first request's head deadline, counted from accept.
    if let Err(e) = sock.handshake(ctx.accepted + ctx.limits.head_timeout) {
        return finish(sock, ctx, e, false);
    }
    let mut wire = Wire::new(sock);
    wire.buf.extend_from_slice(&ahead);
    let mut first = true;
    loop {
        ctx.set_state(STATE_IDLE);
        if ctx.stopping() {
            return;
        }
        let head = match read_head(&mut wire, ctx, first) {
            Ok(h) => h,
            Err(e) => return finish(sock, ctx, e, false),
        };
        first = false;
        ctx.set_state(STATE_BUSY);
        let head_only = head.method == Method::Head;
        match serve_one(&mut wire, sock, ctx, head) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return finish(sock, ctx, e, head_only),
        }
    }
}

/// Read one request head: the first on a connection must be complete within the head
/// deadline from accept; later ones may idle first, then have the head deadline from their
/// first byte. The buffer never grows past `max_head_bytes` plus one read.
fn read_head(wire: &mut Wire, ctx: &ConnCtx, first: bool) -> Result<Head, ConnError> {
    let limits = ctx.limits;
    let mut started = first || !wire.buf.is_empty();
    let mut deadline = if first {
        ctx.accepted + limits.head_timeout
    } else if started {
        Instant::now() + limits.head_timeout
    } else {
        Instant::now() + limits.idle_timeout
    };
    // A head can only complete at a newline: skip parsing reads that bring none.
    let mut parse = !wire.buf.is_empty();
    if !started {
        ctx.enter_keepalive();
    }
    loop {
        if parse {
            if let Some((head, n)) =
                parse_head(&wire.buf, limits.max_head_bytes, limits.max_headers)?
            {
                wire.consume(n);
                return Ok(head);
            }
        } else if wire.buf.len() >= limits.max_head_bytes {
            return Err(ConnError::refuse(
                Status::HEADER_FIELDS_TOO_LARGE,
                "request header fields too large",
            ));
        }
        let phase = if started { Phase::Head } else { Phase::Idle };
        let before = wire.buf.len();
        let filled = wire.fill(deadline, phase);
        if !started && !ctx.leave_keepalive() {
            // The acceptor shed this idle connection (and took its place) to admit another.
            return Err(ConnError::Closed { partial: false });
        }
        match filled {
            Ok(0) => {
                return Err(ConnError::Closed {
                    partial: !wire.buf.is_empty(),
                })
            }
            Ok(_) => {
                if !started {
                    started = true;
                    deadline = Instant::now() + limits.head_timeout;
                }
                parse = wire.buf[before..].contains(&b'\n');
            }
            Err(ConnError::Timeout { phase, .. }) => {
                return Err(ConnError::Timeout {
                    phase,
                    partial: !wire.buf.is_empty(),
                })
            }
            Err(e) => return Err(e),
        }
    }
}

const INTERNAL: &str = "internal server error";

/// Admit the body, read it, run the handler, write the reply. `Ok(true)`: the connection
/// stays open.
fn serve_one(
    wire: &mut Wire,
    sock: &Arc<Sock>,
    ctx: &ConnCtx,
    head: Head,
) -> Result<bool, ConnError> {
    let http11 = head.minor >= 1;
    let head_only = head.method == Method::Head;
    let (framing, expect_continue, keep_alive) =
        (head.framing, head.expect_continue, head.keep_alive);
    let request_head = RequestHead {
        method: head.method.clone(),
        path: head.path.clone(),
    };
    let limit =
        catch_unwind(AssertUnwindSafe(|| ctx.handler.body_limit(&request_head))).map_err(|_| {
            log::error!(
                "http: body_limit panicked on {} {}",
                request_head.method,
                request_head.path
            );
            ConnError::refuse(Status::INTERNAL_SERVER_ERROR, INTERNAL)
        })?;
    let mut req = Request {
        method: head.method,
        path: head.path,
        query: head.query,
        headers: head.headers,
        body: Vec::new(),
        origin: ctx.origin.clone(),
        peer: Peer::new(sock.clone()),
    };
    if framing != Framing::None {
        let refusal = catch_unwind(AssertUnwindSafe(|| ctx.handler.admit(&req))).map_err(|_| {
            log::error!(
                "http: admit panicked on {} {}",
                request_head.method,
                request_head.path
            );
            ConnError::refuse(Status::INTERNAL_SERVER_ERROR, INTERNAL)
        })?;
        if let Some(reply) = refusal {
            refuse_body(sock, ctx, reply, http11, head_only);
            return Ok(false);
        }
    }
    let deadline = Instant::now() + ctx.limits.body_timeout;
    let mut budget = BodyBudget::new(
        Pool {
            held: ctx.body_pool,
            max: ctx.limits.max_body_bytes_in_flight,
        },
        Pool {
            held: ctx.client_body,
            max: ctx.limits.max_body_bytes_per_client,
        },
    );
    req.body = match framing {
        Framing::None => Vec::new(),
        Framing::Length(n) => {
            if n > limit as u64 {
                return Err(ConnError::refuse(
                    Status::CONTENT_TOO_LARGE,
                    "request body too large",
                ));
            }
            if expect_continue {
                send_continue(wire.sock)?;
            }
            read_length(wire, n, &mut budget, deadline)?
        }
        Framing::Chunked => {
            if expect_continue {
                send_continue(wire.sock)?;
            }
            read_chunked(
                wire,
                limit,
                &mut budget,
                ctx.limits.max_head_bytes,
                deadline,
            )?
        }
    };
    let reply = catch_unwind(AssertUnwindSafe(|| ctx.handler.handle(req))).map_err(|_| {
        log::error!(
            "http: handler panicked on {} {}",
            request_head.method,
            request_head.path
        );
        ConnError::refuse(Status::INTERNAL_SERVER_ERROR, INTERNAL)
    })?;
    // The handler has consumed the request and its body.
    drop(budget);
    if matches!(reply.body, Body::Upgrade(_)) {
        // The handler owns the connection from the 101 on; it is the connection's last use.
        ctx.set_state(STATE_STREAM);
        let ahead = std::mem::take(&mut wire.buf);
        super::upgrade::switch(wire.sock, reply, ahead, ctx.stopping).map_err(ConnError::Io)?;
        return Ok(false);
    }
    if matches!(reply.body, Body::Stream(_)) {
        ctx.set_state(STATE_STREAM);
        // A stream is the connection's last reply: its read buffer can go while it runs (a
        // follower may run for hours, and there may be hundreds of them).
        wire.buf = Vec::new();
    }
    let plan = Plan {
        http11,
        head_only,
        keep_alive: keep_alive && !ctx.stopping(),
    };
    let keep = write_reply(wire.sock, reply, &plan, ctx.stopping).map_err(ConnError::Io)?;
    Ok(keep && !ctx.stopping())
}

/// Answer a request the handler would not admit before its body, then close: the body is
/// never read into memory, only drained briefly so the peer sees the reply.
fn refuse_body(sock: &Sock, ctx: &ConnCtx, reply: Reply, http11: bool, head_only: bool) {
    log::debug!(
        "http: a request from {:?} was refused before its body: {}",
        ctx.origin,
        reply.status
    );
    let plan = Plan {
        http11,
        head_only,
        keep_alive: false,
    };
    if write_reply(sock, reply, &plan, ctx.stopping).is_ok() {
        linger(sock);
    }
}

fn send_continue(sock: &Sock) -> Result<(), ConnError> {
    use std::io::Write;
    (&*sock)
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .map_err(ConnError::Io)
}

/// End a connection after `err`: log it (phase-named for deadlines), answer what deserves
/// an answer, and linger briefly so a refused peer sees its reply rather than a reset.
fn finish(sock: &Sock, ctx: &ConnCtx, err: ConnError, head_only: bool) {
    let plan = Plan {
        http11: true,
        head_only,
        keep_alive: false,
    };
    match err {
        ConnError::Closed { partial } => {
            if partial {
                log::debug!("http: {:?} closed mid-request", ctx.origin);
            }
        }
        ConnError::Timeout { phase, partial } => {
            log::debug!("http: {phase} timeout on {:?}, closing", ctx.origin);
            if phase == Phase::Head && partial {
                let _ = write_reply(
                    sock,
                    error_reply(Status::REQUEST_TIMEOUT, "request timeout"),
                    &plan,
                    ctx.stopping,
                );
            }
        }
        ConnError::Refuse { status, reason } => {
            log::debug!(
                "http: refusing a request from {:?}: {status} {reason}",
                ctx.origin
            );
            if write_reply(sock, error_reply(status, reason), &plan, ctx.stopping).is_ok() {
                linger(sock);
            }
        }
        ConnError::Io(e) => match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                log::debug!(
                    "http: {} timeout on {:?}, closing",
                    Phase::Write,
                    ctx.origin
                )
            }
            _ => log::debug!("http: connection {:?} failed: {e}", ctx.origin),
        },
    }
}

/// Half-close, then drain (and drop) what the peer still sends, bounded in time and bytes.
fn linger(sock: &Sock) {
    sock.close_notify();
    sock.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = [0u8; READ_CHUNK];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let now = Instant::now();
        if now >= deadline || sock.set_read_timeout(deadline - now).is_err() {
            return;
        }
        match sock.read_raw(&mut buf) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Serve HTTP requests on a stream some other code connected (the client end of a tunnel: a
/// connection this process dialed, on which the peer is the HTTP client), with the same loop,
/// limits and deadlines as an accepted connection, on the calling thread. The first request
/// head must complete within the head deadline from now: call this once the stream is
/// readable. Body bytes count against pools of this connection alone (its caller bounds how
/// many such connections exist). `ahead`: bytes of the first request already read.
pub fn serve_stream(
    stream: super::RawStream,
    ahead: Vec<u8>,
    handler: &dyn Handler,
    limits: &Limits,
    stopping: &AtomicBool,
    origin: Origin,
) {
    let sock = Arc::new(match stream {
        super::RawStream::Tcp(s) => Sock::Tcp(s),
        super::RawStream::Unix(s) => Sock::Unix(s),
        super::RawStream::Tls(t) => Sock::Tls(Box::new(super::tls::TlsSock::from_stream(*t))),
    });
    let body_pool = AtomicUsize::new(0);
    let client_body = AtomicUsize::new(0);
    let slot = ConnSlot::new();
    let idle_clock = AtomicU64::new(0);
    let ctx = ConnCtx {
        handler,
        limits,
        stopping,
        body_pool: &body_pool,
        client_body: &client_body,
        slot: &slot,
        idle_clock: &idle_clock,
        origin,
        accepted: Instant::now(),
    };
    serve_from(&sock, &ctx, ahead);
}
