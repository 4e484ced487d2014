//! Accept loops (one blocking acceptor thread per listener) and the connection registry.
//!
//! Each listener owns a registry of its live connections (socket, state, thread). The
//! acceptor admits a connection under the per-listener and total caps, spawns its named
//! thread, and joins finished threads on each accept or every [`ACCEPT_TICK`]. Stopping
//! wakes the blocking `accept` with `shutdown(2)` on the listening socket, closes idle
//! connections by shutting their read side, lets busy ones finish within
//! [`SHUTDOWN_GRACE`], then cuts what is left.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::conn::{self, ConnCtx, STATE_IDLE, STATE_STREAM};
use super::limits::{
    ACCEPT_BACKOFF, ACCEPT_TICK, LISTEN_BACKLOG, REJECT_WRITE_TIMEOUT, SHUTDOWN_GRACE,
};
use super::respond::{error_reply, write_reply, Plan};
use super::wire::Sock;
use super::{Handler, Limits, Origin};

/// The connection thread has finished serving (its socket is released).
const STATE_DONE: u8 = 3;
/// After the grace period and a forced shutdown of their sockets, threads get this long.
const FORCE_WAIT: Duration = Duration::from_secs(2);
/// Poll interval while waiting for connection threads to end.
const STOP_POLL: Duration = Duration::from_millis(20);

/// A running HTTP server: a handler, its limits and every listener started on it.
pub struct Server {
    shared: Arc<ServerShared>,
}

struct ServerShared {
    handler: Arc<dyn Handler>,
    limits: Limits,
    /// Open connections across every listener.
    total: AtomicUsize,
    /// Request body bytes held in memory across every connection.
    body_pool: AtomicUsize,
    stopping: AtomicBool,
    listeners: Mutex<Vec<Arc<ListenerShared>>>,
}

enum ListenSock {
    Tcp(TcpListener),
    Unix(UnixListener, Arc<str>),
}

impl ListenSock {
    fn fd(&self) -> RawFd {
        match self {
            ListenSock::Tcp(l) => l.as_raw_fd(),
            ListenSock::Unix(l, _) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<(Sock, Origin)> {
        match self {
            ListenSock::Tcp(l) => l
                .accept()
                .map(|(s, peer)| (Sock::Tcp(s), Origin::Tcp { peer: Some(peer) })),
            ListenSock::Unix(l, tag) => l
                .accept()
                .map(|(s, _)| (Sock::Unix(s), Origin::Unix { tag: tag.clone() })),
        }
    }
}

struct ListenerShared {
    sock: ListenSock,
    /// For thread names and log lines: the address or the socket's tag.
    name: String,
    cap: usize,
    stopping: AtomicBool,
    conns: AtomicUsize,
    next_id: AtomicU64,
    registry: Mutex<HashMap<u64, ConnEntry>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

struct ConnEntry {
    /// Kept so shutdown can reach the socket; taken by the thread before it closes it.
    sock: Option<Arc<Sock>>,
    state: Arc<AtomicU8>,
    handle: Option<JoinHandle<()>>,
}

/// One listener's acceptor; `stop` closes it and every connection it accepted.
pub struct ListenerHandle {
    listener: Arc<ListenerShared>,
    server: Weak<ServerShared>,
}

impl Server {
    pub fn new(handler: Arc<dyn Handler>, limits: Limits) -> Server {
        Server {
            shared: Arc::new(ServerShared {
                handler,
                limits,
                total: AtomicUsize::new(0),
                body_pool: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
                listeners: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Serve a bound TCP listener on a new acceptor thread.
    pub fn serve_tcp(&self, listener: TcpListener) -> io::Result<ListenerHandle> {
        let name = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "tcp".to_string());
        let cap = self.shared.limits.max_conns_per_listener;
        self.serve(ListenSock::Tcp(listener), name, cap)
    }

    /// Serve a bound Unix listener; requests carry `Origin::Unix { tag }`.
    pub fn serve_unix(&self, listener: UnixListener, tag: Arc<str>) -> io::Result<ListenerHandle> {
        let cap = self.shared.limits.max_conns_per_listener;
        self.serve_unix_with_cap(listener, tag, cap)
    }

    /// Like [`Server::serve_unix`] with its own cap on open connections (e.g. per task).
    pub fn serve_unix_with_cap(
        &self,
        listener: UnixListener,
        tag: Arc<str>,
        cap: usize,
    ) -> io::Result<ListenerHandle> {
        let name = tag.to_string();
        self.serve(ListenSock::Unix(listener, tag), name, cap)
    }

    fn serve(&self, sock: ListenSock, name: String, cap: usize) -> io::Result<ListenerHandle> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(io::Error::other("the HTTP server is shutting down"));
        }
        set_accept_tick(sock.fd())?;
        // Calling listen(2) again on a listening socket resizes its queue (Linux).
        // SAFETY: listen on a valid listening fd owned by `sock`.
        unsafe {
            libc::listen(sock.fd(), LISTEN_BACKLOG);
        }
        let listener = Arc::new(ListenerShared {
            sock,
            name,
            cap,
            stopping: AtomicBool::new(false),
            conns: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            registry: Mutex::new(HashMap::new()),
            acceptor: Mutex::new(None),
        });
        let (server, l) = (self.shared.clone(), listener.clone());
        let handle = std::thread::Builder::new()
            .name(thread_name("http-accept", &listener.name))
            .spawn(move || accept_loop(&server, &l))?;
        *listener.acceptor.lock() = Some(handle);
        self.shared.listeners.lock().push(listener.clone());
        if self.shared.stopping.load(Ordering::SeqCst) {
            // Raced with shutdown, which may not have seen this listener.
            stop_all(&self.shared, &[listener]);
            return Err(io::Error::other("the HTTP server is shutting down"));
        }
        Ok(ListenerHandle {
            listener,
            server: Arc::downgrade(&self.shared),
        })
    }

    /// Stop every listener, let in-flight requests finish, end streams, join every thread.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let listeners = std::mem::take(&mut *self.shared.listeners.lock());
        stop_all(&self.shared, &listeners);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Bounded: idle connections close at once, busy ones get SHUTDOWN_GRACE.
        self.shutdown();
    }
}

impl ListenerHandle {
    /// Stop accepting, close this listener's connections and join its threads. A Unix
    /// socket's file is left in place: removing it is the caller's business.
    pub fn stop(self) {
        let Some(server) = self.server.upgrade() else {
            return;
        };
        server
            .listeners
            .lock()
            .retain(|l| !Arc::ptr_eq(l, &self.listener));
        stop_all(&server, &[self.listener]);
    }
}

/// Thread names are limited to 15 bytes by Linux; keep the informative tail.
fn thread_name(prefix: &str, what: &str) -> String {
    let tail: String = what
        .chars()
        .rev()
        .take(24)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{prefix}-{tail}")
}

/// SO_RCVTIMEO on a listening socket bounds each blocking `accept`, so a quiet acceptor
/// still wakes to join finished connection threads.
fn set_accept_tick(fd: RawFd) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: ACCEPT_TICK.as_secs() as libc::time_t,
        tv_usec: ACCEPT_TICK.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a valid fd and a pointer to a timeval of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Rate-limits one kind of warning to one line per second.
struct Throttle(Option<Instant>);

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        match self.0 {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => false,
            _ => {
                self.0 = Some(now);
                true
            }
        }
    }
}

/// One spare file descriptor per acceptor. When `accept` fails for want of descriptors
/// (EMFILE/ENFILE), it is given up for a moment to accept one pending connection and refuse
/// it with 503, so clients are told rather than left waiting in the backlog.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn open() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    fn shed_one(&mut self, l: &ListenerShared) {
        if self.0.take().is_none() {
            *self = Reserve::open();
            return;
        }
        if let Ok((sock, _)) = l.sock.accept() {
            reject(&sock);
        }
        *self = Reserve::open();
    }
}

fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

fn accept_loop(server: &Arc<ServerShared>, l: &Arc<ListenerShared>) {
    let mut accept_warn = Throttle(None);
    let mut cap_warn = Throttle(None);
    let mut reserve = Reserve::open();
    while !l.stopping.load(Ordering::SeqCst) {
        let accepted = l.sock.accept();
        if l.stopping.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok((sock, origin)) => {
                reap(l);
                admit(server, l, sock, origin, &mut cap_warn);
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => reap(l),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => {
                    if accept_warn.ready() {
                        log::warn!("http: accept on {} failed: {e}; retrying", l.name);
                    }
                    reap(l);
                    if out_of_fds(&e) {
                        reserve.shed_one(l);
                    }
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            },
        }
    }
    log::debug!("http: listener {} stopped accepting", l.name);
}

/// Admit an accepted socket under the caps and start its thread, or refuse it with 503.
fn admit(
    server: &Arc<ServerShared>,
    l: &Arc<ListenerShared>,
    sock: Sock,
    origin: Origin,
    cap_warn: &mut Throttle,
) {
    let accepted = Instant::now();
    let n = l.conns.fetch_add(1, Ordering::SeqCst) + 1;
    let t = server.total.fetch_add(1, Ordering::SeqCst) + 1;
    if n > l.cap || t > server.limits.max_conns_total {
        release_counts(server, l);
        if cap_warn.ready() {
            log::warn!(
                "http: connection cap reached on {} ({n}/{} here, {t}/{} total); refusing",
                l.name,
                l.cap,
                server.limits.max_conns_total
            );
        }
        reject(&sock);
        return;
    }
    if let Err(e) = sock.set_write_timeout(server.limits.write_timeout) {
        log::debug!("http: cannot set the write deadline on a connection: {e}");
        release_counts(server, l);
        return;
    }
    if let Sock::Tcp(s) = &sock {
        let _ = s.set_nodelay(true);
    }
    let sock = Arc::new(sock);
    let state = Arc::new(AtomicU8::new(STATE_IDLE));
    let id = l.next_id.fetch_add(1, Ordering::SeqCst);
    l.registry.lock().insert(
        id,
        ConnEntry {
            sock: Some(sock.clone()),
            state: state.clone(),
            handle: None,
        },
    );
    let guard = ConnGuard {
        server: server.clone(),
        listener: l.clone(),
        id,
        sock: Some(sock.clone()),
        state,
    };
    let spawned = std::thread::Builder::new()
        .name(thread_name("http-conn", &id.to_string()))
        .spawn(move || run_conn(guard, origin, accepted));
    match spawned {
        Ok(h) => {
            if let Some(entry) = l.registry.lock().get_mut(&id) {
                entry.handle = Some(h);
            }
        }
        Err(e) => {
            // The closure (and its guard) was dropped: counts and registry are released.
            if cap_warn.ready() {
                log::warn!(
                    "http: cannot start a connection thread on {}: {e}; refusing",
                    l.name
                );
            }
            l.registry.lock().remove(&id);
            reject(&sock);
        }
    }
}

fn run_conn(guard: ConnGuard, origin: Origin, accepted: Instant) {
    if let Some(sock) = guard.sock.as_deref() {
        let ctx = ConnCtx {
            handler: &*guard.server.handler,
            limits: &guard.server.limits,
            stopping: &guard.listener.stopping,
            body_pool: &guard.server.body_pool,
            state: &guard.state,
            origin,
            accepted,
        };
        conn::serve(sock, &ctx);
    }
}

/// Releases a connection's place when its thread ends (normally or by panic): the registry
/// lets go of the socket first, so dropping the thread's copy closes the fd at once.
struct ConnGuard {
    server: Arc<ServerShared>,
    listener: Arc<ListenerShared>,
    id: u64,
    sock: Option<Arc<Sock>>,
    state: Arc<AtomicU8>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let registered = self
            .listener
            .registry
            .lock()
            .get_mut(&self.id)
            .and_then(|e| e.sock.take());
        drop(registered);
        self.state.store(STATE_DONE, Ordering::SeqCst);
        self.sock = None;
        release_counts(&self.server, &self.listener);
    }
}

fn release_counts(server: &ServerShared, l: &ListenerShared) {
    l.conns.fetch_sub(1, Ordering::SeqCst);
    server.total.fetch_sub(1, Ordering::SeqCst);
}

/// The quick refusal for a connection over a cap: a 503 with a short write deadline.
fn reject(sock: &Sock) {
    let _ = sock.set_write_timeout(REJECT_WRITE_TIMEOUT);
    let plan = Plan {
        http11: true,
        head_only: false,
        keep_alive: false,
    };
    let never = AtomicBool::new(false);
    let _ = write_reply(
        sock,
        error_reply(503, "too many connections"),
        &plan,
        &never,
    );
    sock.shutdown(Shutdown::Write);
    // Discard what the request already put in the receive buffer, without waiting: closing
    // with unread bytes would send a reset that can destroy the 503 before it is read.
    if sock.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match (&*sock).read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// Join the threads of connections that have finished.
fn reap(l: &ListenerShared) {
    let finished: Vec<JoinHandle<()>> = {
        let mut reg = l.registry.lock();
        let done: Vec<u64> = reg
            .iter()
            .filter(|(_, e)| {
                e.state.load(Ordering::SeqCst) == STATE_DONE
                    && e.handle.as_ref().is_some_and(|h| h.is_finished())
            })
            .map(|(id, _)| *id)
            .collect();
        done.into_iter()
            .filter_map(|id| reg.remove(&id).and_then(|e| e.handle))
            .collect()
    };
    for h in finished {
        let _ = h.join();
    }
}

/// The sockets of registered connections whose state passes `pick`.
fn sockets(l: &ListenerShared, pick: impl Fn(u8) -> bool) -> Vec<Arc<Sock>> {
    l.registry
        .lock()
        .values()
        .filter(|e| pick(e.state.load(Ordering::SeqCst)))
        .filter_map(|e| e.sock.clone())
        .collect()
}

/// Wait until every listener's registry is empty (all threads joined) or `deadline`.
fn wait_empty(listeners: &[Arc<ListenerShared>], deadline: Instant) -> bool {
    loop {
        let mut empty = true;
        for l in listeners {
            reap(l);
            // A handler that stops its own listener does not wait for itself.
            let me = std::thread::current().id();
            empty &= l
                .registry
                .lock()
                .values()
                .all(|e| e.handle.as_ref().is_some_and(|h| h.thread().id() == me));
        }
        if empty {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(STOP_POLL);
    }
}

/// Stop listeners together: no more accepts, idle connections and streams closed at once,
/// busy requests given [`SHUTDOWN_GRACE`], then every socket cut and every thread joined
/// (a thread still stuck after that is left detached, with a warning).
fn stop_all(_server: &ServerShared, listeners: &[Arc<ListenerShared>]) {
    for l in listeners {
        l.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on the listening fd, which `l` keeps open; wakes `accept`.
        unsafe {
            libc::shutdown(l.sock.fd(), libc::SHUT_RDWR);
        }
    }
    for l in listeners {
        let acceptor = l.acceptor.lock().take();
        if let Some(h) = acceptor {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
    for l in listeners {
        for s in sockets(l, |st| st == STATE_IDLE || st == STATE_STREAM) {
            s.shutdown(Shutdown::Read);
        }
    }
    if wait_empty(listeners, Instant::now() + SHUTDOWN_GRACE) {
        return;
    }
    for l in listeners {
        for s in sockets(l, |_| true) {
            s.shutdown(Shutdown::Both);
        }
    }
    if !wait_empty(listeners, Instant::now() + FORCE_WAIT) {
        for l in listeners {
            let left = l.registry.lock().len();
            log::warn!(
                "http: {left} connection thread(s) on {} did not end; leaving them",
                l.name
            );
        }
    }
}
