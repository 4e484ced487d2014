//! The client's end of tunnels: [`TUNNEL_IDLE`] connections kept open to a server's RPC port
//! and upgraded (`GET /v1/rpc/tunnel`, `Upgrade: nomadlet-tunnel/1`, the node secret), so the
//! server can send requests to this node over connections the node opened (NAT-friendly: the
//! server never dials a client). Each is served by its own `tunnel-<n>` thread with the same
//! `http/` connection code and the agent's API handler as the HTTP port, plus one tunnel-only
//! path: the server's "your allocs changed" push. The server uses a connection once; the
//! thread then dials a new one at once (with backoff while no server answers).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::link::{
    NODE_SECRET_HEADER, TUNNEL_HOP_HEADER, TUNNEL_PATH, TUNNEL_PROTOCOL, TUNNEL_PUSH_PATH,
};
use crate::http::{
    outbound, Handler, Limits, Method, Origin, RawStream, Reply, Request, RequestHead, Status,
};
use crate::sys::poll::PollSet;

/// Idle tunnels each client keeps open to its server.
pub const TUNNEL_IDLE: usize = 2;

/// Longest a TCP connect to a server may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the upgrade exchange (request written, 101 read) may take.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(5);

/// First wait before redialling after a failure; doubled per failure up to [`REDIAL_MAX`].
pub const REDIAL_MIN: Duration = Duration::from_millis(100);

/// Longest wait between redials while no server answers.
pub const REDIAL_MAX: Duration = Duration::from_secs(5);

/// A tunnel the server closed sooner than this without using it counts as a failure (so a
/// server refusing tunnels is not redialled in a tight loop).
pub const MIN_TUNNEL_LIFE: Duration = Duration::from_secs(1);

/// Longest one wait on an idle tunnel lasts before it is renewed (the wait also ends at once
/// on a request, a close or shutdown).
pub const IDLE_WAIT: Duration = Duration::from_secs(60);

/// Where and as whom to dial.
pub struct TunnelSettings {
    /// The servers' RPC addresses (`host:port`) as known now; asked again before each dial.
    pub servers: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    pub node_id: String,
    pub node_secret: String,
    /// The limits requests on a tunnel are served under.
    pub limits: Limits,
    /// How a server's RPC port is dialled (mutual TLS with `tls.rpc`, else plain TCP).
    pub connect: outbound::Connector,
}

/// What the client does when the server pushes "your allocs changed (as of index N)".
pub type OnAllocsChanged = Arc<dyn Fn(u64) + Send + Sync>;

/// Most tunnel threads at once: the idle ones plus those serving a request (a follow stream
/// holds its tunnel for as long as it runs). Over it, a used tunnel is replaced only when a
/// request ends.
pub const MAX_TUNNEL_THREADS: usize = 32;

/// What every tunnel thread shares.
struct Shared {
    settings: TunnelSettings,
    handler: TunnelHandler,
    stopping: AtomicBool,
    /// Readable (closed) once shutdown starts: every idle wait polls it.
    stop_rx: UnixStream,
    /// Its other end, dropped by shutdown.
    stop_tx: parking_lot::Mutex<Option<UnixStream>>,
    /// Idle tunnels to keep (`TUNNEL_IDLE` in the agent).
    target: usize,
    /// Threads dialling or holding an idle tunnel.
    idle: AtomicUsize,
    /// Threads alive (idle or serving).
    threads: AtomicUsize,
    joins: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
}

/// The running tunnel threads: `count` ([`TUNNEL_IDLE`]) idle at all times (a thread whose tunnel the
/// server takes starts a replacement before it serves), up to [`MAX_TUNNEL_THREADS`].
pub struct Tunnels {
    shared: Arc<Shared>,
}

impl Tunnels {
    /// Start `count` idle tunnel threads serving `api` (and the push path, into `on_push`).
    pub fn start(
        settings: TunnelSettings,
        api: Arc<dyn Handler>,
        on_push: OnAllocsChanged,
        count: usize,
    ) -> io::Result<Tunnels> {
        let (stop_tx, stop_rx) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            settings,
            handler: TunnelHandler { api, on_push },
            stopping: AtomicBool::new(false),
            stop_rx,
            stop_tx: parking_lot::Mutex::new(Some(stop_tx)),
            target: count,
            idle: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
            joins: parking_lot::Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
        });
        let mut tunnels = Tunnels { shared };
        for _ in 0..count {
            if let Err(e) = spawn(&tunnels.shared) {
                tunnels.shutdown();
                return Err(e);
            }
        }
        Ok(tunnels)
    }

    /// Tunnel threads alive now (idle or serving).
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.shared.threads.load(Ordering::SeqCst)
    }

    /// Stop every tunnel thread (a request being served finishes, streams end) and join them.
    pub fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        *self.shared.stop_tx.lock() = None;
        // A thread may start a replacement until it sees `stopping`: join until none is left.
        loop {
            let joins = std::mem::take(&mut *self.shared.joins.lock());
            if joins.is_empty() {
                return;
            }
            for j in joins {
                let _ = j.join();
            }
        }
    }
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start one more idle tunnel thread (finished threads are joined first).
fn spawn(shared: &Arc<Shared>) -> io::Result<()> {
    let mut joins = shared.joins.lock();
    if shared.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *joins)
        .into_iter()
        .partition(|j| j.is_finished());
    *joins = live;
    for j in done {
        let _ = j.join();
    }
    let n = shared.next.fetch_add(1, Ordering::SeqCst);
    shared.idle.fetch_add(1, Ordering::SeqCst);
    shared.threads.fetch_add(1, Ordering::SeqCst);
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("tunnel-{n}"))
        .stack_size(crate::http::limits::CONN_STACK)
        .spawn(move || {
            tunnel_loop(n, &s);
            s.threads.fetch_sub(1, Ordering::SeqCst);
        });
    match spawned {
        Ok(j) => {
            joins.push(j);
            Ok(())
        }
        Err(e) => {
            shared.idle.fetch_sub(1, Ordering::SeqCst);
            shared.threads.fetch_sub(1, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// The handler on a tunnel: the push path here, everything else to the agent's API.
struct TunnelHandler {
    api: Arc<dyn Handler>,
    on_push: OnAllocsChanged,
}

impl Handler for TunnelHandler {
    fn body_limit(&self, head: &RequestHead) -> usize {
        if head.path == TUNNEL_PUSH_PATH {
            0
        } else {
            self.api.body_limit(head)
        }
    }

    fn admit(&self, req: &Request) -> Option<Reply> {
        if req.path == TUNNEL_PUSH_PATH {
            return None;
        }
        self.api.admit(req)
    }

    fn handle(&self, mut req: Request) -> Reply {
        req.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(TUNNEL_HOP_HEADER));
        req.headers
            .push((TUNNEL_HOP_HEADER.to_string(), "1".to_string()));
        if req.path == TUNNEL_PUSH_PATH {
            if req.method != Method::Post {
                return Reply::empty(Status::METHOD_NOT_ALLOWED);
            }
            let index = req
                .query("index")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            (self.on_push)(index);
            return Reply::empty(Status::OK);
        }
        self.api.handle(req)
    }
}

/// Wait up to `d` unless shutdown comes first; true when stopping.
fn pause(stop_rx: &UnixStream, stopping: &AtomicBool, d: Duration) -> bool {
    if stopping.load(Ordering::SeqCst) {
        return true;
    }
    let mut set = PollSet::new();
    set.push(stop_rx.as_fd());
    let _ = set.wait(d);
    stopping.load(Ordering::SeqCst)
}

/// One tunnel thread: dial, upgrade, wait for the server's request; when one comes, start a
/// replacement (so the node keeps its idle tunnels) and serve it; then dial again if idle
/// tunnels are short, else end.
fn tunnel_loop(n: usize, shared: &Arc<Shared>) {
    let settings = &shared.settings;
    let (stopping, stop_rx) = (&shared.stopping, &shared.stop_rx);
    let mut backoff = REDIAL_MIN;
    let mut pick = n;
    let mut logged = false;
    // A server that closed a tunnel or could not be reached may have missed pushes (it
    // restarted, or was away): the next tunnel that connects asks for a pull.
    let mut resync = false;
    while !stopping.load(Ordering::SeqCst) {
        let servers = (settings.servers)();
        let failed = if servers.is_empty() {
            true
        } else {
            let addr = &servers[pick % servers.len()];
            match open(
                addr,
                &*settings.connect,
                &settings.node_id,
                &settings.node_secret,
            ) {
                Ok((stream, ahead, peer)) => {
                    if logged {
                        log::info!("tunnel: connected to server {addr} again");
                        logged = false;
                    }
                    if std::mem::take(&mut resync) {
                        (shared.handler.on_push)(0);
                    }
                    let opened = Instant::now();
                    match idle_then_serve(stream, ahead, peer, shared) {
                        Served::Request => {
                            if shared.idle.load(Ordering::SeqCst) >= shared.target {
                                return;
                            }
                            shared.idle.fetch_add(1, Ordering::SeqCst);
                            false
                        }
                        Served::Closed => {
                            resync = true;
                            opened.elapsed() < MIN_TUNNEL_LIFE
                        }
                        Served::Stopping => return,
                    }
                }
                Err(e) => {
                    if !logged {
                        log::warn!("tunnel: cannot reach server {addr}: {e}");
                        logged = true;
                    }
                    resync = true;
                    pick += 1;
                    true
                }
            }
        };
        if failed {
            if pause(stop_rx, stopping, backoff) {
                return;
            }
            backoff = (backoff * 2).min(REDIAL_MAX);
        } else {
            backoff = REDIAL_MIN;
        }
    }
}

/// How an idle tunnel ended.
enum Served {
    /// The server sent a request and it was served (this thread is no longer counted idle).
    Request,
    /// The server (or the network) closed it unused.
    Closed,
    Stopping,
}

/// Dial `addr` and upgrade to a tunnel: the stream, bytes already past the 101, the peer.
fn open(
    addr: &str,
    connect: outbound::Connect<'_>,
    node_id: &str,
    secret: &str,
) -> io::Result<(RawStream, Vec<u8>, SocketAddr)> {
    let peer = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing"))?;
    let mut stream = connect(&peer, DIAL_TIMEOUT)?;
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    let req = format!(
        "GET {TUNNEL_PATH}{} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: {TUNNEL_PROTOCOL}\r\n{NODE_SECRET_HEADER}: {secret}\r\n\r\n",
        outbound::encode_target("", &[("node_id".to_string(), node_id.to_string())])
    );
    stream.set_write_timeout(Some(UPGRADE_TIMEOUT))?;
    stream.write_all(req.as_bytes())?;
    let reply = outbound::read_reply(stream, deadline, false)?;
    if reply.status != 101 {
        let status = reply.status;
        let body = reply.read_body(1024, deadline).unwrap_or_default();
        return Err(io::Error::other(format!(
            "tunnel refused: {status} {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let (stream, ahead) = reply.into_upgraded();
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok((stream, ahead, peer))
}

/// Read what the server sent on an idle tunnel: a request's first bytes into `ahead`, or its
/// close. A TLS record with no plaintext in it (a session ticket) leaves `ahead` empty: the
/// tunnel stays idle.
fn read_first(stream: &mut RawStream, ahead: &mut Vec<u8>) -> Result<(), Served> {
    let mut first = [0u8; 1024];
    // Readable (or buffered): this read does not wait. The timeout bounds a peer whose TLS
    // record stops midway.
    let _ = stream.set_read_timeout(Some(UPGRADE_TIMEOUT));
    let read = stream.read(&mut first);
    let _ = stream.set_read_timeout(None);
    match read {
        Ok(0) => Err(Served::Closed),
        Ok(k) => {
            ahead.extend_from_slice(&first[..k]);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(_) => Err(Served::Closed),
    }
}

/// Wait (reading nothing) until the server sends a request, closes, or shutdown; serve the
/// request if there is one, after starting a replacement idle tunnel.
fn idle_then_serve(
    mut stream: RawStream,
    mut ahead: Vec<u8>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Served {
    let mut set = PollSet::new();
    while ahead.is_empty() {
        if stream.has_buffered() {
            // TLS: rustls holds what the server sent (plaintext, or its close_notify) — the
            // socket will not become readable for it.
            if let Err(closed) = read_first(&mut stream, &mut ahead) {
                return closed;
            }
            continue;
        }
        set.clear();
        set.push(stream.as_fd());
        set.push(shared.stop_rx.as_fd());
        match set.wait(IDLE_WAIT) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Served::Closed,
        }
        if shared.stopping.load(Ordering::SeqCst) || set.ready(1) {
            return Served::Stopping;
        }
        if set.ready(0) {
            if let Err(closed) = read_first(&mut stream, &mut ahead) {
                return closed;
            }
        }
    }
    // This tunnel is taken: keep the node's idle tunnels (within the thread cap).
    let idle = shared.idle.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
    if idle < shared.target && shared.threads.load(Ordering::SeqCst) < MAX_TUNNEL_THREADS {
        if let Err(e) = spawn(shared) {
            log::warn!("tunnel: cannot start a replacement tunnel: {e}");
        }
    }
    crate::http::conn::serve_stream(
        stream,
        ahead,
        &shared.handler,
        &shared.settings.limits,
        &shared.stopping,
        Origin::Tcp { peer: Some(peer) },
    );
    Served::Request
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicU64;

    /// Answers every request with its path and whether it is marked as come by tunnel;
    /// `/slow` first waits (bounded) until `RELEASE` is set.
    struct Echo;

    static RELEASE: AtomicBool = AtomicBool::new(false);

    impl Handler for Echo {
        fn body_limit(&self, _: &RequestHead) -> usize {
            1024
        }
        fn handle(&self, req: Request) -> Reply {
            if req.path == "/slow" {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !RELEASE.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let hop = req.header(TUNNEL_HOP_HEADER).unwrap_or("-").to_string();
            Reply::bytes(
                Status::OK,
                "text/plain",
                format!("{} {hop}", req.path).into_bytes(),
            )
        }
    }

    /// A fake server: accepts a tunnel, checks the upgrade, answers 101.
    fn accept_tunnel(l: &TcpListener) -> RawStream {
        let (s, _) = l.accept().unwrap();
        upgrade_accepted(s)
    }

    fn upgrade_accepted(s: std::net::TcpStream) -> RawStream {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\n") {
            let n = (&s).read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        assert!(
            text.starts_with("GET /v1/rpc/tunnel?node_id=n1 HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.contains("Upgrade: nomadlet-tunnel/1\r\n"));
        assert!(text.contains("X-Nomad-Node-Secret: s3cret\r\n"));
        (&s).write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: nomadlet-tunnel/1\r\n\r\n",
        )
        .unwrap();
        RawStream::from(s)
    }

    #[test]
    fn a_tunnel_serves_a_request_is_replaced_and_carries_pushes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let pushed = Arc::new(AtomicU64::new(0));
        let p = pushed.clone();
        let settings = TunnelSettings {
            servers: Arc::new(move || vec![addr.clone()]),
            node_id: "n1".into(),
            node_secret: "s3cret".into(),
            limits: Limits::default(),
            connect: Arc::new(outbound::connect_plain),
        };
        let mut tunnels = Tunnels::start(
            settings,
            Arc::new(Echo),
            Arc::new(move |i| p.store(i, Ordering::SeqCst)),
            1,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut t = accept_tunnel(&l);
        // A hop header the server passed on is replaced, never trusted or doubled.
        let spoof = vec![(TUNNEL_HOP_HEADER.to_string(), "0".to_string())];
        outbound::write_request(
            &mut t,
            "GET",
            "/v1/client/stats",
            "n",
            &spoof,
            b"",
            deadline,
        )
        .unwrap();
        let r = outbound::read_reply(t, deadline, false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.read_body(100, deadline).unwrap(), b"/v1/client/stats 1");
        // Used once: the client dials a replacement at once; the push path works on it.
        let mut t = accept_tunnel(&l);
        outbound::write_request(
            &mut t,
            "POST",
            "/v1/tunnel/allocs?index=7",
            "n",
            &[],
            b"",
            deadline,
        )
        .unwrap();
        let r = outbound::read_reply(t, deadline, false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(pushed.load(Ordering::SeqCst), 7);
        // The server drops an idle tunnel: the client redials, and asks for a pull (the
        // server may have restarted and missed pushes): `on_push(0)`.
        let t = accept_tunnel(&l);
        drop(t);
        // Accept every tunnel that comes now: a spare one dialled before the drop may be
        // waiting in the backlog ahead of the redial that asks for the pull.
        l.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while pushed.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < until, "no resync pull asked for");
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    held.push(upgrade_accepted(s));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        tunnels.shutdown();
        drop(held);
    }

    #[test]
    fn a_taken_tunnel_is_replaced_before_its_request_is_answered() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let settings = TunnelSettings {
            servers: Arc::new(move || vec![addr.clone()]),
            node_id: "n1".into(),
            node_secret: "s3cret".into(),
            limits: Limits::default(),
            connect: Arc::new(outbound::connect_plain),
        };
        let mut tunnels = Tunnels::start(settings, Arc::new(Echo), Arc::new(|_| {}), 1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut slow = accept_tunnel(&l);
        outbound::write_request(&mut slow, "GET", "/slow", "n", &[], b"", deadline).unwrap();
        // The replacement arrives while the slow request is still being served...
        let mut quick = accept_tunnel(&l);
        assert_eq!(tunnels.threads(), 2);
        outbound::write_request(&mut quick, "GET", "/quick", "n", &[], b"", deadline).unwrap();
        let r = outbound::read_reply(quick, deadline, false).unwrap();
        assert_eq!(r.read_body(100, deadline).unwrap(), b"/quick 1");
        // ...and so does the next one.
        let spare = accept_tunnel(&l);
        RELEASE.store(true, Ordering::SeqCst);
        let r = outbound::read_reply(slow, deadline, false).unwrap();
        assert_eq!(r.read_body(100, deadline).unwrap(), b"/slow 1");
        // Done serving, the surplus thread ends: one idle tunnel, one thread.
        let until = Instant::now() + Duration::from_secs(5);
        while tunnels.threads() > 1 {
            assert!(Instant::now() < until, "{} threads", tunnels.threads());
            std::thread::sleep(Duration::from_millis(5));
        }
        tunnels.shutdown();
        drop(spare);
    }

    #[test]
    fn a_refused_upgrade_is_retried_with_backoff_and_shutdown_is_prompt() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let settings = TunnelSettings {
            servers: Arc::new(move || vec![addr.clone()]),
            node_id: "n1".into(),
            node_secret: "s3cret".into(),
            limits: Limits::default(),
            connect: Arc::new(outbound::connect_plain),
        };
        let mut tunnels = Tunnels::start(settings, Arc::new(Echo), Arc::new(|_| {}), 1).unwrap();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            let (s, _) = l.accept().unwrap();
            (&s).write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 17\r\n\r\nPermission denied",
            )
            .unwrap();
            accepted.push(Instant::now());
        }
        // Backoff: the gaps grow (100 ms, then 200 ms).
        assert!(accepted[2] - accepted[1] >= Duration::from_millis(150));
        let t0 = Instant::now();
        tunnels.shutdown();
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
