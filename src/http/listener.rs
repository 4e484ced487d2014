//! Accept loops (one blocking acceptor thread per TCP listener, ONE polling acceptor thread
//! for every Unix listener, e.g. each task's `api.sock`) and the connection registry.
//!
//! Each listener owns a registry of its live connections (socket, state, thread). The
//! acceptor admits a connection under the per-client cap (TCP peers by IP address; over it,
//! Nomad's 429), then the per-listener and total caps (the total also bounded by the
//! open-files limit); when a cap is full it sheds the connection idle longest in keep-alive
//! to make room, and only refuses with a quick 503 when there is none (an HTTPS refusal is
//! answered through TLS by one bounded refusal worker, see [`TLS_REFUSALS_HELD`]). It spawns the
//! connection's named thread, and joins finished threads on each accept or every
//! [`ACCEPT_TICK`]. Out of descriptors, it drains the backlog through a spare one, refusing
//! each pending connection at once. Stopping wakes the blocking `accept` with `shutdown(2)`
//! on the listening socket, closes idle connections by shutting their read side, lets busy
//! ones finish within [`SHUTDOWN_GRACE`], then cuts what is left.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::conn::{self, ConnCtx, ConnSlot, STATE_IDLE, STATE_KEEPALIVE, STATE_SHED, STATE_STREAM};
use super::limits::{
    ACCEPT_BACKOFF, ACCEPT_TICK, EMFILE_DRAIN_MAX, LISTEN_BACKLOG, REJECT_WRITE_TIMEOUT,
    SHUTDOWN_GRACE, TOO_MANY_CONNS_REPLY,
};
use super::respond::{error_reply, write_reply, Plan};
use super::tls::{TlsAcceptor, TlsSock};
use super::wire::Sock;
use super::{Handler, Limits, Origin, Status};

/// The connection thread has finished serving (its socket is released).
const STATE_DONE: u8 = 3;
/// After the grace period and a forced shutdown of their sockets, threads get this long.
const FORCE_WAIT: Duration = Duration::from_secs(2);
/// Poll interval while waiting for connection threads to end.
const STOP_POLL: Duration = Duration::from_millis(20);
/// Idle keep-alives tried in turn when shedding one (each may wake up first and be skipped).
const SHED_ATTEMPTS: usize = 4;
/// Connections the shared Unix acceptor takes from one listener per wake-up, so a busy socket
/// cannot keep the others waiting.
const UNIX_ACCEPT_BURST: usize = 16;

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
    /// TCP clients by IP address: their open connections and body bytes. An entry lives
    /// while the client has a connection.
    clients: Mutex<HashMap<IpAddr, Arc<ClientShare>>>,
    /// Ticks once each time a connection becomes an idle keep-alive (see `ConnSlot`).
    idle_clock: AtomicU64,
    stopping: AtomicBool,
    listeners: Mutex<Vec<Arc<ListenerShared>>>,
    /// The one acceptor thread of every Unix listener (started with the first one).
    unix: Mutex<Option<UnixAcceptor>>,
    /// The Unix listeners that acceptor polls.
    unix_listeners: Mutex<Vec<Arc<ListenerShared>>>,
    /// Held by that acceptor while it accepts and admits; taking it once after removing a
    /// listener from `unix_listeners` proves no connection is being admitted on it.
    unix_round: Mutex<()>,
    /// The HTTPS refusal worker (started with the first HTTPS connection refused).
    refuser: Mutex<Option<TlsRefuser>>,
}

/// Refused HTTPS connections the refusal worker holds at once (handshaking, or waiting to be
/// picked up); one refused while this many are held is closed without an answer. Refusals
/// never cost more than one thread and this many sockets, and never block an acceptor.
const TLS_REFUSALS_HELD: usize = 64;
/// How long after accept a refused HTTPS connection may take to complete its handshake and
/// get its 429 or 503; past it, it is closed without one.
const TLS_REFUSAL_DEADLINE: Duration = Duration::from_secs(2);
/// Longest single wait of the refusal worker's `poll` (it re-checks its stop flag).
const TLS_REFUSAL_TICK: Duration = Duration::from_secs(1);

/// Why a connection is refused: it decides the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Over the per-client cap: Nomad's 429.
    TooMany,
    /// Over a connection cap with nothing to shed: 503.
    Busy,
}

/// An HTTPS refusal the worker holds: the socket, the answer, its deadline.
struct Refused {
    sock: Sock,
    why: Refusal,
    deadline: Instant,
}

/// The one thread that answers refused HTTPS connections (`http-refuse-tls`). A refusal has
/// to complete a TLS handshake before its 429/503 can be read (Nomad writes its 429 through
/// the `tls.Conn`), which the acceptor must not wait for; the worker drives every held
/// handshake at once without blocking (one `poll` over their sockets), so a silent client
/// delays no other. Stopped by `stopping` and a wake-up (what it holds is closed unanswered),
/// joined by [`Server::shutdown`].
struct TlsRefuser {
    /// Handed over by acceptors, taken by the worker at each wake-up.
    inbox: Arc<Mutex<Vec<Refused>>>,
    /// Connections held (inbox and worker), bounded by [`TLS_REFUSALS_HELD`].
    held: Arc<AtomicUsize>,
    wake: UnixStream,
    stopping: Arc<AtomicBool>,
    join: JoinHandle<()>,
}

impl TlsRefuser {
    fn start() -> io::Result<TlsRefuser> {
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let (inbox2, held2, stop2) = (inbox.clone(), held.clone(), stopping.clone());
        let join = std::thread::Builder::new()
            .name("http-refuse-tls".into())
            .spawn(move || refusal_loop(&inbox2, &held2, &wake_rx, &stop2))?;
        Ok(TlsRefuser {
            inbox,
            held,
            wake,
            stopping,
            join,
        })
    }

    /// Hand a refused connection to the worker; gives it back when the worker holds enough.
    fn offer(&self, r: Refused) -> Result<(), Refused> {
        if self.held.fetch_add(1, Ordering::SeqCst) >= TLS_REFUSALS_HELD {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Err(r);
        }
        if let Err(e) = r.sock.set_nonblocking(true) {
            log::debug!("http: refused connection: {e}");
        }
        self.inbox.lock().push(r);
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }
}

/// The refusal worker: take new refusals, wait for input on every held socket (up to the
/// nearest deadline), step each ready handshake; answer and close the finished ones, close the
/// failed and expired ones.
fn refusal_loop(
    inbox: &Mutex<Vec<Refused>>,
    held: &AtomicUsize,
    wake: &UnixStream,
    stopping: &AtomicBool,
) {
    let mut pending: Vec<Refused> = Vec::new();
    let mut set = crate::sys::poll::PollSet::new();
    loop {
        let mut buf = [0u8; 64];
        while matches!((&*wake).read(&mut buf), Ok(n) if n > 0) {}
        pending.append(&mut inbox.lock());
        let stop = stopping.load(Ordering::SeqCst);
        let now = Instant::now();
        // Each place is given back before its connection is closed, so a client that saw the
        // close finds the place free.
        pending.retain(|r| {
            let keep = !stop && now < r.deadline;
            if !keep {
                held.fetch_sub(1, Ordering::SeqCst);
                close_quietly(&r.sock);
            }
            keep
        });
        if stop {
            return;
        }
        set.clear();
        set.push(wake.as_fd());
        for r in &pending {
            set.push(r.sock.as_fd());
        }
        let wait = pending
            .iter()
            .map(|r| r.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(TLS_REFUSAL_TICK)
            .min(TLS_REFUSAL_TICK);
        if set.wait(wait).is_err() {
            continue;
        }
        let ready: Vec<bool> = (0..pending.len()).map(|i| set.ready(i + 1)).collect();
        let mut i = 0;
        pending.retain(|r| {
            let was_ready = ready[i];
            i += 1;
            if !was_ready {
                return true;
            }
            match r.sock.handshake_step() {
                Ok(false) => true,
                Ok(true) => {
                    held.fetch_sub(1, Ordering::SeqCst);
                    refuse_now(&r.sock, r.why);
                    r.sock.close_notify();
                    close_quietly(&r.sock);
                    false
                }
                Err(_) => {
                    held.fetch_sub(1, Ordering::SeqCst);
                    close_quietly(&r.sock);
                    false
                }
            }
        });
    }
}

/// Refuse an accepted connection without waiting on it: a plain one is answered at once (short
/// write deadline); an HTTPS one goes to the refusal worker, or is closed when the worker holds
/// enough, cannot start, or the server stops.
fn refuse(server: &ServerShared, sock: Sock, why: Refusal, accepted: Instant) {
    if !matches!(sock, Sock::Tls(_)) {
        refuse_now(&sock, why);
        close_quietly(&sock);
        return;
    }
    let r = Refused {
        sock,
        why,
        deadline: accepted + TLS_REFUSAL_DEADLINE,
    };
    let mut refuser = server.refuser.lock();
    if refuser.is_none() && !server.stopping.load(Ordering::SeqCst) {
        match TlsRefuser::start() {
            Ok(t) => *refuser = Some(t),
            Err(e) => log::debug!("http: cannot start the HTTPS refusal worker: {e}"),
        }
    }
    let given = match refuser.as_ref() {
        Some(t) => t.offer(r),
        None => Err(r),
    };
    drop(refuser);
    if let Err(r) = given {
        close_quietly(&r.sock);
    }
}

/// Stop the HTTPS refusal worker: what it holds is closed unanswered; joined.
fn stop_refuser(server: &ServerShared) {
    let refuser = server.refuser.lock().take();
    if let Some(r) = refuser {
        r.stopping.store(true, Ordering::SeqCst);
        let _ = (&r.wake).write(&[1]);
        if r.join.thread().id() != std::thread::current().id() {
            let _ = r.join.join();
        }
    }
}

/// The shared Unix acceptor: its thread and the socket that wakes its `poll`. The thread
/// runs only while there are Unix listeners: it ends when the last one is gone, saying so
/// (`running`) under the `unix` lock, under which `add_unix` adds one and starts a new thread.
struct UnixAcceptor {
    wake: UnixStream,
    join: JoinHandle<()>,
    running: bool,
}

/// What one client holds: open connections (counted for TCP clients, under the `clients`
/// lock) and request body bytes in memory.
#[derive(Default)]
struct ClientShare {
    conns: AtomicUsize,
    body: AtomicUsize,
}

/// A connection's client: a TCP peer address with its entry in `clients`, or the listener
/// as a whole (a Unix socket's peers, whose connections the listener cap already bounds).
#[derive(Clone)]
struct ClientRef {
    ip: Option<IpAddr>,
    share: Arc<ClientShare>,
}

enum ListenSock {
    /// A TCP listener; with an acceptor, every connection speaks HTTPS.
    Tcp(TcpListener, Option<Arc<dyn TlsAcceptor>>),
    Unix(UnixListener, Arc<str>),
}

impl ListenSock {
    fn fd(&self) -> RawFd {
        match self {
            ListenSock::Tcp(l, _) => l.as_raw_fd(),
            ListenSock::Unix(l, _) => l.as_raw_fd(),
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ListenSock::Tcp(l, _) => l.as_fd(),
            ListenSock::Unix(l, _) => l.as_fd(),
        }
    }

    fn accept(&self) -> io::Result<(Sock, Origin)> {
        match self {
            ListenSock::Tcp(l, tls) => {
                let (s, peer) = l.accept()?;
                let sock = match tls {
                    None => Sock::Tcp(s),
                    Some(a) => Sock::Tls(Box::new(TlsSock::new(s, a.server_config())?)),
                };
                Ok((sock, Origin::Tcp { peer: Some(peer) }))
            }
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
    /// The client every connection without a peer address counts as (Unix listeners).
    whole: Arc<ClientShare>,
    next_id: AtomicU64,
    registry: Mutex<HashMap<u64, ConnEntry>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

struct ConnEntry {
    /// Kept so shutdown can reach the socket; taken by the thread before it closes it.
    sock: Option<Arc<Sock>>,
    slot: Arc<ConnSlot>,
    client: ClientRef,
    handle: Option<JoinHandle<()>>,
}

/// One listener's acceptor; `stop` closes it and every connection it accepted.
pub struct ListenerHandle {
    listener: Arc<ListenerShared>,
    server: Weak<ServerShared>,
}

impl Server {
    /// A server with these limits; its total connection cap is lowered to what the
    /// process's open-files limit can carry (see [`Limits::fit_to_open_files`]).
    pub fn new(handler: Arc<dyn Handler>, limits: Limits) -> Server {
        let wanted = limits.max_conns_total;
        let limits = limits.fit_to_open_files(crate::sys::open_files_limit());
        if limits.max_conns_total < wanted {
            log::info!(
                "http: the open-files limit allows {} connections at once (of {wanted})",
                limits.max_conns_total
            );
        }
        Server {
            shared: Arc::new(ServerShared {
                handler,
                limits,
                total: AtomicUsize::new(0),
                body_pool: AtomicUsize::new(0),
                clients: Mutex::new(HashMap::new()),
                idle_clock: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
                listeners: Mutex::new(Vec::new()),
                unix: Mutex::new(None),
                unix_listeners: Mutex::new(Vec::new()),
                unix_round: Mutex::new(()),
                refuser: Mutex::new(None),
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
        self.serve(ListenSock::Tcp(listener, None), name, cap)
    }

    /// Serve a bound TCP listener with HTTPS only: each connection handshakes with the
    /// configuration `tls` gives at accept (so a swapped one applies to new connections).
    pub fn serve_tcp_tls(
        &self,
        listener: TcpListener,
        tls: Arc<dyn TlsAcceptor>,
    ) -> io::Result<ListenerHandle> {
        let name = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "tcp".to_string());
        let cap = self.shared.limits.max_conns_per_listener;
        self.serve(ListenSock::Tcp(listener, Some(tls)), name, cap)
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
        let unix = matches!(sock, ListenSock::Unix(..));
        if unix {
            // Polled by the shared acceptor, which must never block in `accept`.
            if let ListenSock::Unix(l, _) = &sock {
                l.set_nonblocking(true)?;
            }
        } else {
            set_accept_tick(sock.fd())?;
        }
        // Calling listen(2) again on a listening socket resizes its queue (Linux).
        let _ = crate::sys::socket::listen(sock.fd(), LISTEN_BACKLOG);
        let listener = Arc::new(ListenerShared {
            sock,
            name,
            cap,
            stopping: AtomicBool::new(false),
            conns: AtomicUsize::new(0),
            whole: Arc::new(ClientShare::default()),
            next_id: AtomicU64::new(1),
            registry: Mutex::new(HashMap::new()),
            acceptor: Mutex::new(None),
        });
        if unix {
            self.add_unix(&listener)?;
        } else {
            let (server, l) = (self.shared.clone(), listener.clone());
            let handle = std::thread::Builder::new()
                .name(thread_name("http-accept", &listener.name))
                .spawn(move || accept_loop(&server, &l))?;
            *listener.acceptor.lock() = Some(handle);
        }
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

    /// Hand a Unix listener to the shared acceptor, starting it on first use.
    fn add_unix(&self, listener: &Arc<ListenerShared>) -> io::Result<()> {
        let mut acceptor = self.shared.unix.lock();
        if acceptor.as_ref().is_none_or(|a| !a.running) {
            if let Some(ended) = acceptor.take() {
                // It ended (said so under this lock) and holds nothing: joined at once.
                let _ = ended.join.join();
            }
            let (wake, wake_rx) = UnixStream::pair()?;
            wake.set_nonblocking(true)?;
            wake_rx.set_nonblocking(true)?;
            let server = self.shared.clone();
            let join = std::thread::Builder::new()
                .name("http-accept-ux".into())
                .spawn(move || unix_accept_loop(&server, &wake_rx))?;
            *acceptor = Some(UnixAcceptor {
                wake,
                join,
                running: true,
            });
        }
        self.shared.unix_listeners.lock().push(listener.clone());
        if let Some(a) = acceptor.as_ref() {
            wake_unix_acceptor(a);
        }
        Ok(())
    }

    /// Stop every listener, let in-flight requests finish, end streams, join every thread.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let listeners = std::mem::take(&mut *self.shared.listeners.lock());
        stop_all(&self.shared, &listeners);
        let acceptor = self.shared.unix.lock().take();
        if let Some(a) = acceptor {
            wake_unix_acceptor(&a);
            if a.join.thread().id() != std::thread::current().id() {
                let _ = a.join.join();
            }
        }
        stop_refuser(&self.shared);
    }
}

#[cfg(test)]
impl Server {
    /// Connections idle in keep-alive now (tests wait on it to order their connections).
    pub(crate) fn idle_keepalives(&self) -> usize {
        self.shared
            .listeners
            .lock()
            .iter()
            .map(|l| {
                l.registry
                    .lock()
                    .values()
                    .filter(|e| e.slot.state.load(Ordering::SeqCst) == STATE_KEEPALIVE)
                    .count()
            })
            .sum()
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
    crate::sys::socket::set_recv_timeout(fd, ACCEPT_TICK)
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
/// (EMFILE/ENFILE), it is given up for a moment to drain the backlog: each pending
/// connection is accepted into the freed descriptor and refused with 503 (which closes it,
/// freeing the descriptor for the next), so clients are told rather than left waiting.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn open() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    /// Refuse what is pending on `l`, up to [`EMFILE_DRAIN_MAX`]; the number refused.
    fn drain_backlog(&mut self, l: &ListenerShared) -> usize {
        if self.0.take().is_none() {
            *self = Reserve::open();
            return 0;
        }
        let mut refused = 0;
        while refused < EMFILE_DRAIN_MAX && crate::sys::readable_now(l.sock.fd()) {
            match l.sock.accept() {
                Ok((sock, _)) => {
                    reject(&sock);
                    refused += 1;
                }
                Err(_) => break,
            }
        }
        *self = Reserve::open();
        refused
    }
}

fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

fn accept_loop(server: &Arc<ServerShared>, l: &Arc<ListenerShared>) {
    let mut accept_warn = Throttle(None);
    let mut warns = CapWarnings {
        cap: Throttle(None),
        client: Throttle(None),
    };
    let mut reserve = Reserve::open();
    while !l.stopping.load(Ordering::SeqCst) {
        let accepted = l.sock.accept();
        if l.stopping.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok((sock, origin)) => {
                reap(l);
                admit(server, l, sock, origin, &mut warns);
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => reap(l),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => {
                    if accept_warn.ready() {
                        log::warn!("http: accept on {} failed: {e}; retrying", l.name);
                    }
                    reap(l);
                    let drained = if out_of_fds(&e) {
                        reserve.drain_backlog(l)
                    } else {
                        0
                    };
                    if drained == 0 {
                        std::thread::sleep(ACCEPT_BACKOFF);
                    }
                }
            },
        }
    }
    log::debug!("http: listener {} stopped accepting", l.name);
}

/// Make the shared Unix acceptor look at its listeners again (a full socket buffer already
/// holds a wake-up).
fn wake_unix_acceptor(a: &UnixAcceptor) {
    let _ = (&a.wake).write(&[1]);
}

/// The shared acceptor of every Unix listener: poll them all (and the wake socket) for up to
/// [`ACCEPT_TICK`], accept what is pending on each ready one without blocking, join finished
/// connection threads. Ends once the server stops.
fn unix_accept_loop(server: &Arc<ServerShared>, wake: &UnixStream) {
    let mut accept_warn = Throttle(None);
    let mut warns = CapWarnings {
        cap: Throttle(None),
        client: Throttle(None),
    };
    let mut reserve = Reserve::open();
    let mut set = crate::sys::poll::PollSet::new();
    while !server.stopping.load(Ordering::SeqCst) {
        let members = server.unix_listeners.lock().clone();
        if members.is_empty() {
            // The last task socket is gone: end unless one was added meanwhile.
            let mut acceptor = server.unix.lock();
            if server.unix_listeners.lock().is_empty() {
                if let Some(a) = acceptor.as_mut() {
                    a.running = false;
                }
                log::debug!("http: no Unix listener left, their acceptor ends");
                return;
            }
            continue;
        }
        set.clear();
        set.push(wake.as_fd());
        for l in &members {
            set.push(l.sock.as_fd());
        }
        match set.wait(ACCEPT_TICK) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if accept_warn.ready() {
                    log::warn!("http: poll of the Unix listeners failed: {e}; retrying");
                }
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        }
        if set.ready(0) {
            let mut buf = [0u8; 64];
            while matches!((&*wake).read(&mut buf), Ok(n) if n > 0) {}
        }
        let _round = server.unix_round.lock();
        for (i, l) in members.iter().enumerate() {
            if !l.stopping.load(Ordering::SeqCst) && set.ready(i + 1) {
                accept_burst(server, l, &mut warns, &mut accept_warn, &mut reserve);
            }
            reap(l);
        }
    }
    log::debug!("http: the Unix listeners' acceptor stopped");
}

/// Accept up to [`UNIX_ACCEPT_BURST`] pending connections of a non-blocking listener.
fn accept_burst(
    server: &Arc<ServerShared>,
    l: &Arc<ListenerShared>,
    warns: &mut CapWarnings,
    accept_warn: &mut Throttle,
    reserve: &mut Reserve,
) {
    for _ in 0..UNIX_ACCEPT_BURST {
        match l.sock.accept() {
            Ok((sock, origin)) => admit(server, l, sock, origin, warns),
            Err(e) => {
                match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::ConnectionAborted => {}
                    _ => {
                        if accept_warn.ready() {
                            log::warn!("http: accept on {} failed: {e}; retrying", l.name);
                        }
                        if out_of_fds(&e) {
                            reserve.drain_backlog(l);
                        }
                    }
                }
                return;
            }
        }
    }
}

/// The acceptor's rate-limited warnings about refusals.
struct CapWarnings {
    cap: Throttle,
    client: Throttle,
}

/// Count a new connection against its client: `Err(ip)` if a TCP client is at the
/// per-client cap. Connections without a peer address count as the listener's one client.
fn claim_client(
    server: &ServerShared,
    l: &ListenerShared,
    origin: &Origin,
) -> Result<ClientRef, IpAddr> {
    let Origin::Tcp { peer: Some(peer) } = origin else {
        return Ok(ClientRef {
            ip: None,
            share: l.whole.clone(),
        });
    };
    let ip = peer.ip().to_canonical();
    let cap = server.limits.max_conns_per_client;
    let mut clients = server.clients.lock();
    let share = clients.entry(ip).or_default().clone();
    // Counted under the `clients` lock, so the check and the count are one step.
    let open = share.conns.load(Ordering::SeqCst);
    if cap > 0 && open >= cap {
        return Err(ip);
    }
    share.conns.store(open + 1, Ordering::SeqCst);
    Ok(ClientRef {
        ip: Some(ip),
        share,
    })
}

/// Give back a connection's place under its client's cap.
fn release_client(server: &ServerShared, client: &ClientRef) {
    let Some(ip) = client.ip else {
        return;
    };
    let mut clients = server.clients.lock();
    let open = client.share.conns.load(Ordering::SeqCst).saturating_sub(1);
    client.share.conns.store(open, Ordering::SeqCst);
    if open == 0 {
        clients.remove(&ip);
    }
}

/// Admit an accepted socket under the caps and start its thread; over the per-client cap it
/// gets Nomad's 429; over a connection cap, an idle keep-alive is shed to make room, or it
/// gets a quick 503.
fn admit(
    server: &Arc<ServerShared>,
    l: &Arc<ListenerShared>,
    sock: Sock,
    origin: Origin,
    warns: &mut CapWarnings,
) {
    let accepted = Instant::now();
    let client = match claim_client(server, l, &origin) {
        Ok(c) => c,
        Err(ip) => {
            if warns.client.ready() {
                log::warn!(
                    "http: too many concurrent connections from {ip} (limit {}); refusing with 429",
                    server.limits.max_conns_per_client
                );
            }
            refuse(server, sock, Refusal::TooMany, accepted);
            return;
        }
    };
    let n = l.conns.fetch_add(1, Ordering::SeqCst) + 1;
    let t = server.total.fetch_add(1, Ordering::SeqCst) + 1;
    if n > l.cap || t > server.limits.max_conns_total {
        // Room on a full listener can only come from that listener; total room from any.
        let scope = if n > l.cap {
            vec![l.clone()]
        } else {
            server.listeners.lock().clone()
        };
        if !shed_idle(server, &scope) {
            release_counts(server, l);
            release_client(server, &client);
            if warns.cap.ready() {
                log::warn!(
                    "http: connection cap reached on {} ({n}/{} here, {t}/{} total); refusing",
                    l.name,
                    l.cap,
                    server.limits.max_conns_total
                );
            }
            refuse(server, sock, Refusal::Busy, accepted);
            return;
        }
    }
    if let Err(e) = sock.set_write_timeout(server.limits.write_timeout) {
        log::debug!("http: cannot set the write deadline on a connection: {e}");
        release_counts(server, l);
        release_client(server, &client);
        return;
    }
    match &sock {
        Sock::Tcp(s) => {
            let _ = s.set_nodelay(true);
        }
        Sock::Tls(t) => {
            let _ = t.tcp.set_nodelay(true);
        }
        Sock::Unix(_) => {}
    }
    let sock = Arc::new(sock);
    let slot = Arc::new(ConnSlot::new());
    let id = l.next_id.fetch_add(1, Ordering::SeqCst);
    l.registry.lock().insert(
        id,
        ConnEntry {
            sock: Some(sock.clone()),
            slot: slot.clone(),
            client: client.clone(),
            handle: None,
        },
    );
    let guard = ConnGuard {
        server: server.clone(),
        listener: l.clone(),
        id,
        sock: Some(sock.clone()),
        slot,
        client,
    };
    let spawned = std::thread::Builder::new()
        .name(thread_name("http-conn", &id.to_string()))
        .stack_size(server.limits.conn_stack)
        .spawn(move || run_conn(guard, origin, accepted));
    match spawned {
        Ok(h) => {
            if let Some(entry) = l.registry.lock().get_mut(&id) {
                entry.handle = Some(h);
            }
        }
        Err(e) => {
            // The closure (and its guard) was dropped: counts and registry are released.
            if warns.cap.ready() {
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
    if let Some(sock) = guard.sock.as_ref() {
        let ctx = ConnCtx {
            handler: &*guard.server.handler,
            limits: &guard.server.limits,
            stopping: &guard.listener.stopping,
            body_pool: &guard.server.body_pool,
            client_body: &guard.client.share.body,
            slot: &guard.slot,
            idle_clock: &guard.server.idle_clock,
            origin,
            accepted,
        };
        conn::serve(sock, &ctx);
        sock.close_notify();
    }
}

/// Shed the connection idle longest in keep-alive among `listeners` to make room for a new
/// one: its places under the caps are given back here and now, its socket is shut so its
/// thread ends. False if there is no idle keep-alive to shed.
fn shed_idle(server: &ServerShared, listeners: &[Arc<ListenerShared>]) -> bool {
    for _ in 0..SHED_ATTEMPTS {
        let mut oldest: Option<(u64, &Arc<ListenerShared>, Arc<ConnSlot>)> = None;
        let mut victim: Option<(Option<Arc<Sock>>, ClientRef)> = None;
        for l in listeners {
            for e in l.registry.lock().values() {
                if e.slot.state.load(Ordering::SeqCst) != STATE_KEEPALIVE {
                    continue;
                }
                let since = e.slot.idle_since.load(Ordering::SeqCst);
                if oldest.as_ref().is_none_or(|(s, _, _)| since < *s) {
                    oldest = Some((since, l, e.slot.clone()));
                    victim = Some((e.sock.clone(), e.client.clone()));
                }
            }
        }
        let (Some((_, l, slot)), Some((sock, client))) = (oldest, victim) else {
            return false;
        };
        let shed = slot
            .state
            .compare_exchange(
                STATE_KEEPALIVE,
                STATE_SHED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok();
        if shed {
            release_counts(server, l);
            release_client(server, &client);
            if let Some(s) = sock {
                s.shutdown(Shutdown::Both);
            }
            log::debug!(
                "http: shed an idle keep-alive connection on {} to admit another",
                l.name
            );
            return true;
        }
    }
    false
}

/// Releases a connection's place when its thread ends (normally or by panic): the registry
/// lets go of the socket first, so dropping the thread's copy closes the fd at once.
struct ConnGuard {
    server: Arc<ServerShared>,
    listener: Arc<ListenerShared>,
    id: u64,
    sock: Option<Arc<Sock>>,
    slot: Arc<ConnSlot>,
    client: ClientRef,
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
        let was = self.slot.state.swap(STATE_DONE, Ordering::SeqCst);
        self.sock = None;
        // A shed connection's places were given back by the acceptor that shed it.
        if was != STATE_SHED {
            release_counts(&self.server, &self.listener);
            release_client(&self.server, &self.client);
        }
    }
}

fn release_counts(server: &ServerShared, l: &ListenerShared) {
    l.conns.fetch_sub(1, Ordering::SeqCst);
    server.total.fetch_sub(1, Ordering::SeqCst);
}

/// The quick refusal for a connection over a cap: a 503 with a short write deadline.
fn reject(sock: &Sock) {
    refuse_now(sock, Refusal::Busy);
    close_quietly(sock);
}

/// Write the refusal's answer (429 or 503) under a short write deadline; the caller closes.
fn refuse_now(sock: &Sock, why: Refusal) {
    let _ = sock.set_write_timeout(REJECT_WRITE_TIMEOUT);
    if why == Refusal::TooMany {
        let _ = (&*sock).write_all(TOO_MANY_CONNS_REPLY);
        return;
    }
    let plan = Plan {
        http11: true,
        head_only: false,
        keep_alive: false,
    };
    let never = AtomicBool::new(false);
    let _ = write_reply(
        sock,
        error_reply(Status::SERVICE_UNAVAILABLE, "too many connections"),
        &plan,
        &never,
    );
}

/// Half-close after a refusal, then drop what the request already sent, without waiting.
fn close_quietly(sock: &Sock) {
    sock.shutdown(Shutdown::Write);
    // Discard what the request already put in the receive buffer, without waiting: closing
    // with unread bytes would send a reset that can destroy the 503 before it is read.
    if sock.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match sock.read_raw(&mut buf) {
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
                e.slot.state.load(Ordering::SeqCst) == STATE_DONE
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
        .filter(|e| pick(e.slot.state.load(Ordering::SeqCst)))
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
fn stop_all(server: &ServerShared, listeners: &[Arc<ListenerShared>]) {
    for l in listeners {
        l.stopping.store(true, Ordering::SeqCst);
        // Wakes `accept`; the fd stays open (`l` keeps it).
        let _ = crate::sys::socket::shutdown(l.sock.fd());
    }
    for l in listeners {
        let acceptor = l.acceptor.lock().take();
        if let Some(h) = acceptor {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
    // Unix listeners: out of the shared acceptor's set, then wait out a round in progress,
    // which may still be admitting a connection on one of them.
    server
        .unix_listeners
        .lock()
        .retain(|u| !listeners.iter().any(|l| Arc::ptr_eq(u, l)));
    drop(server.unix_round.lock());
    for l in listeners {
        for s in sockets(l, |st| {
            matches!(st, STATE_IDLE | STATE_KEEPALIVE | STATE_SHED | STATE_STREAM)
        }) {
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

impl Server {
    /// Connections open now across every listener (for the agent's metrics).
    pub fn open_connections(&self) -> usize {
        self.shared.total.load(Ordering::Relaxed)
    }
}
