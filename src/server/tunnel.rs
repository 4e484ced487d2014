//! The server's end of client-opened tunnels: idle connections parked per node with no thread
//! reading them, taken one at a time to push "your allocs changed" or to forward a request
//! to the node (the server is the HTTP client on them); never returned, the client redials.
//!
//! A client upgrades `GET /v1/rpc/tunnel` (`Upgrade: nomadlet-tunnel/1`, its node secret
//! checked by the RPC router) and the 101's connection thread detaches the socket into the
//! [`TunnelPool`] and ends. ONE `tunnel-watch` thread polls every parked socket (plus a wake
//! socket) only to notice a peer that closed or spoke out of turn, and drops it; it also
//! holds pushed connections until their (ignored) reply or close, so pushes never block on a
//! node. ONE `tunnel-push` thread watches the state index and pushes to each node whose
//! allocs changed. An idle node costs the server its parked sockets, no thread.
//!
//! With `tls.rpc` a parked tunnel is a detached TLS session (the RPC port is mutual TLS):
//! the watcher still polls only its socket — a node sends nothing on an idle tunnel, so any
//! TLS record (data, an alert, close_notify) or a close makes it go — and what rustls had
//! already read when the session was detached is checked at park time.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::client::link::{TUNNEL_PROTOCOL, TUNNEL_PUSH_PATH};
use crate::http::outbound::{self, Incoming};
use crate::http::{RawStream, Reply, Upgrade, Upgraded};
use crate::state::IndexCounter;

/// Most idle tunnels parked per node; a newer one pushes out the oldest (newest wins: the
/// node reconnected, its older sockets may be dead).
pub const MAX_PARKED_PER_NODE: usize = 4;

/// Most idle tunnels parked across every node (two per node for 8 192 nodes), and at most a
/// [`PARKED_FD_SHARE`] of the open-files limit; over it a new tunnel is refused (closed at
/// once) until one is used or closes.
pub const MAX_PARKED_TOTAL: usize = 16 * 1024;

/// Parked tunnels may hold at most 1/this of the process's open-files limit (the rest is for
/// connections, files and tasks).
pub const PARKED_FD_SHARE: u64 = 2;

/// Most pushed connections held until their reply; over it a push is not sent (the node's
/// periodic pull still finds its allocs).
pub const MAX_DRAINING: usize = 1024;

/// How long a pushed connection is held for its reply before it is closed anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A forward to a node with no idle tunnel waits this long for one, if the node parked or
/// used one within [`RECENT`] (it replaces a taken tunnel at once; the new one may be on its
/// way). A node not seen that recently gets "No path to node" at once.
pub const TAKE_WAIT: Duration = Duration::from_secs(2);

/// How long a node counts as connected after it last parked a tunnel or had one taken.
pub const RECENT: Duration = Duration::from_secs(60);

/// Longest `tunnel-watch` sleeps in `poll` without a wake-up or a socket event.
pub const WATCH_TICK: Duration = Duration::from_secs(30);

/// Longest writing a push may take (a few hundred bytes into an idle socket's empty buffer).
pub const PUSH_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest `tunnel-push` waits for a state change before it looks again.
pub const PUSH_TICK: Duration = Duration::from_secs(5);

/// A push that found no idle tunnel (both in use, the node redialling) is tried again this
/// often...
pub const PUSH_RETRY: Duration = Duration::from_millis(100);

/// ...for this long; after that the node's safety pull finds its allocs.
pub const PUSH_RETRY_FOR: Duration = Duration::from_secs(5);

/// Most nodes waiting for a push retry at once.
pub const MAX_PUSH_RETRIES: usize = 4096;

/// One parked (or draining) socket.
struct Parked {
    id: u64,
    stream: RawStream,
    /// When a draining connection is closed regardless.
    until: Option<Instant>,
}

#[derive(Default)]
struct Pools {
    /// Idle tunnels by node ID, oldest first.
    by_node: HashMap<String, VecDeque<Parked>>,
    /// Pushed connections waiting for their reply or close.
    draining: Vec<Parked>,
    parked: usize,
    next_id: u64,
    /// When each node last parked or had a tunnel taken (within [`RECENT`]): a forward to
    /// such a node with no idle tunnel waits briefly for the replacement it is dialling.
    recent: HashMap<String, Instant>,
}

struct Inner {
    pools: Mutex<Pools>,
    /// Notified on every park (a forward may be waiting for that node's replacement).
    parked_cv: parking_lot::Condvar,
    /// `MAX_PARKED_TOTAL`, lowered to fit the open-files limit.
    max_parked: usize,
    /// Written to wake `tunnel-watch` (new sockets to watch, or shutdown).
    wake: UnixStream,
    stopping: AtomicBool,
}

/// Why a request could not be sent down a node's tunnel.
#[derive(Debug)]
pub enum TunnelError {
    /// No idle tunnel from that node is parked here.
    NoConnection,
    /// The tunnel failed while sending or reading the reply head.
    Io(io::Error),
}

impl std::fmt::Display for TunnelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelError::NoConnection => f.write_str("no connection to the node"),
            TunnelError::Io(e) => write!(f, "node connection failed: {e}"),
        }
    }
}

impl std::error::Error for TunnelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TunnelError::Io(e) => Some(e),
            TunnelError::NoConnection => None,
        }
    }
}

/// The parked tunnels and the `tunnel-watch` thread that looks after them.
pub struct TunnelPool {
    inner: Arc<Inner>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl TunnelPool {
    /// An empty pool and its `tunnel-watch` thread.
    pub fn start() -> io::Result<Arc<TunnelPool>> {
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let fd_share = crate::sys::open_files_limit().map_or(u64::MAX, |n| n / PARKED_FD_SHARE);
        let inner = Arc::new(Inner {
            pools: Mutex::new(Pools::default()),
            parked_cv: parking_lot::Condvar::new(),
            max_parked: MAX_PARKED_TOTAL.min(usize::try_from(fd_share).unwrap_or(usize::MAX)),
            wake,
            stopping: AtomicBool::new(false),
        });
        let i = inner.clone();
        let join = std::thread::Builder::new()
            .name("tunnel-watch".into())
            .spawn(move || watch_loop(&i, &wake_rx))?;
        Ok(Arc::new(TunnelPool {
            inner,
            watcher: Mutex::new(Some(join)),
        }))
    }

    /// Park an idle tunnel of `node_id`. False (and the stream closed) when the pool is full
    /// or stopping.
    pub fn park(&self, node_id: &str, stream: RawStream) -> bool {
        let mut dropped = None;
        {
            let mut p = self.inner.pools.lock();
            if self.inner.stopping.load(Ordering::SeqCst) || p.parked >= self.inner.max_parked {
                drop(p);
                log::debug!("tunnel: pool full, a node's tunnel is refused");
                return false;
            }
            p.next_id += 1;
            let id = p.next_id;
            if p.recent.len() < self.inner.max_parked || p.recent.contains_key(node_id) {
                p.recent.insert(node_id.to_string(), Instant::now());
            }
            let queue = p.by_node.entry(node_id.to_string()).or_default();
            queue.push_back(Parked {
                id,
                stream,
                until: None,
            });
            if queue.len() > MAX_PARKED_PER_NODE {
                dropped = queue.pop_front();
            } else {
                p.parked += 1;
            }
        }
        self.inner.parked_cv.notify_all();
        // Closed outside the lock.
        drop(dropped);
        self.wake();
        true
    }

    /// [`TunnelPool::take`], waiting up to [`TAKE_WAIT`] (and at most until `deadline`) when
    /// the node has no idle tunnel but was connected within [`RECENT`].
    pub fn take_wait(&self, node_id: &str, deadline: Instant) -> Option<RawStream> {
        let until = deadline.min(Instant::now() + TAKE_WAIT);
        loop {
            if let Some(s) = self.take(node_id) {
                return Some(s);
            }
            let mut p = self.inner.pools.lock();
            let recent = p.recent.get(node_id).is_some_and(|t| t.elapsed() < RECENT);
            if !recent || Instant::now() >= until || self.inner.stopping.load(Ordering::SeqCst) {
                return None;
            }
            if !p.by_node.contains_key(node_id) {
                let _ = self.inner.parked_cv.wait_until(&mut p, until);
            }
        }
    }

    /// Take an idle tunnel of `node_id` (the newest that is still quiet); it is not returned.
    pub fn take(&self, node_id: &str) -> Option<RawStream> {
        loop {
            let parked = {
                let mut p = self.inner.pools.lock();
                let queue = p.by_node.get_mut(node_id)?;
                let parked = queue.pop_back();
                if queue.is_empty() {
                    p.by_node.remove(node_id);
                }
                if parked.is_some() {
                    p.parked -= 1;
                    if let Some(t) = p.recent.get_mut(node_id) {
                        *t = Instant::now();
                    }
                }
                parked
            }?;
            // A peer that closed (or spoke) since the watcher last looked is no tunnel.
            let mut stream = parked.stream;
            if stream.is_quiet() {
                return Some(stream);
            }
        }
    }

    /// Whether an idle tunnel of `node_id` is parked here.
    pub fn has(&self, node_id: &str) -> bool {
        self.inner.pools.lock().by_node.contains_key(node_id)
    }

    /// Idle tunnels parked now, across every node.
    pub fn parked(&self) -> usize {
        self.inner.pools.lock().parked
    }

    /// Idle tunnels of one node.
    pub fn parked_for(&self, node_id: &str) -> usize {
        self.inner
            .pools
            .lock()
            .by_node
            .get(node_id)
            .map_or(0, VecDeque::len)
    }

    /// Close every parked tunnel of `node_id` (its node was removed or went down).
    pub fn forget(&self, node_id: &str) {
        let gone = {
            let mut p = self.inner.pools.lock();
            p.recent.remove(node_id);
            let gone = p.by_node.remove(node_id);
            p.parked -= gone.as_ref().map_or(0, VecDeque::len);
            gone
        };
        drop(gone);
    }

    /// Send one request down a tunnel of `node_id` and read the reply head by `deadline`
    /// (or until `gone()`: nobody waits any more). The caller reads (or pipes) the body; the
    /// tunnel is used up either way.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        node_id: &str,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<Incoming, TunnelError> {
        let mut stream = self
            .take_wait(node_id, deadline)
            .ok_or(TunnelError::NoConnection)?;
        outbound::write_request(&mut stream, method, target, "node", headers, body, deadline)
            .map_err(TunnelError::Io)?;
        outbound::read_reply_while(stream, deadline, method == "HEAD", gone)
            .map_err(TunnelError::Io)
    }

    /// Tell `node_id` its allocs changed (as of `index`) down one of its tunnels, without
    /// waiting for the answer: the connection is handed to `tunnel-watch`, which closes it
    /// when the reply (or a close) arrives. False when the node has no tunnel here or the
    /// push could not be written.
    pub fn push_allocs_changed(&self, node_id: &str, index: u64) -> bool {
        if self.inner.pools.lock().draining.len() >= MAX_DRAINING {
            return false;
        }
        let Some(mut stream) = self.take(node_id) else {
            return false;
        };
        let target = format!("{TUNNEL_PUSH_PATH}?index={index}");
        let deadline = Instant::now() + PUSH_WRITE_TIMEOUT;
        if let Err(e) =
            outbound::write_request(&mut stream, "POST", &target, "node", &[], b"", deadline)
        {
            log::debug!("tunnel: a push to a node failed: {e}");
            return false;
        }
        {
            let mut p = self.inner.pools.lock();
            p.next_id += 1;
            let id = p.next_id;
            p.draining.push(Parked {
                id,
                stream,
                until: Some(Instant::now() + DRAIN_TIMEOUT),
            });
        }
        self.wake();
        true
    }

    fn wake(&self) {
        // A full wake socket already has a wake-up pending.
        let _ = (&self.inner.wake).write_all_nonblocking();
    }

    /// Stop `tunnel-watch`, join it and close every parked socket.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(join) = self.watcher.lock().take() {
            let _ = join.join();
        }
        let all = std::mem::take(&mut *self.inner.pools.lock());
        drop(all);
    }
}

impl Drop for TunnelPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One wake-up byte, never blocking.
trait WakeByte {
    fn write_all_nonblocking(self) -> io::Result<()>;
}

impl WakeByte for &UnixStream {
    fn write_all_nonblocking(mut self) -> io::Result<()> {
        io::Write::write(&mut self, &[1]).map(|_| ())
    }
}

/// `tunnel-watch`: poll the wake socket and every parked or draining socket; drop each one
/// whose peer closed or spoke (a parked tunnel must stay silent; a draining one is done once
/// its reply arrives), and draining ones past their deadline.
fn watch_loop(inner: &Inner, wake_rx: &UnixStream) {
    let mut set = crate::sys::poll::PollSet::new();
    let mut ids: Vec<u64> = Vec::new();
    loop {
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        set.clear();
        ids.clear();
        set.push(wake_rx.as_fd());
        let mut next_deadline = Instant::now() + WATCH_TICK;
        {
            let p = inner.pools.lock();
            for parked in p.by_node.values().flatten().chain(p.draining.iter()) {
                set.push_raw(parked.stream.as_fd().as_raw_fd());
                ids.push(parked.id);
                if let Some(until) = parked.until {
                    next_deadline = next_deadline.min(until);
                }
            }
        }
        let timeout = next_deadline.saturating_duration_since(Instant::now());
        match set.wait(timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("tunnel-watch: poll failed: {e}");
                return;
            }
        }
        if set.ready(0) {
            let mut sink = [0u8; 64];
            while matches!((&*wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        }
        let ready: Vec<u64> = (0..ids.len())
            .filter(|i| set.ready(i + 1))
            .map(|i| ids[i])
            .collect();
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut p = inner.pools.lock();
            let mut gone = 0;
            for queue in p.by_node.values_mut() {
                queue.retain_mut(|c| {
                    let keep = !ready.contains(&c.id);
                    if !keep {
                        gone += 1;
                    }
                    keep
                });
            }
            p.by_node.retain(|_, q| !q.is_empty());
            p.parked -= gone;
            p.recent.retain(|_, t| t.elapsed() < RECENT);
            let draining = std::mem::take(&mut p.draining);
            for c in draining {
                if ready.contains(&c.id) || c.until.is_some_and(|u| u <= now) {
                    closed.push(c);
                } else {
                    p.draining.push(c);
                }
            }
            if gone > 0 {
                log::debug!("tunnel-watch: {gone} parked tunnel(s) closed by their node");
            }
        }
        // Sockets close outside the lock; what a pushed node answered is read first (without
        // waiting) so the close is a clean one rather than a reset.
        for mut c in closed {
            let mut sink = [0u8; 1024];
            if c.stream.set_nonblocking(true).is_ok() {
                let _ = c.stream.read(&mut sink);
            }
        }
    }
}

/// The 101 for a tunnel request whose node secret the caller checked: once switched, the
/// connection leaves its thread and waits in `pool` under `node_id`.
pub fn upgrade_reply(pool: &Arc<TunnelPool>, node_id: String) -> Reply {
    Reply::upgrade(
        vec![("Upgrade".to_string(), TUNNEL_PROTOCOL.to_string())],
        Box::new(Parker {
            pool: pool.clone(),
            node_id,
        }),
    )
}

/// Whether a request asks to become a tunnel (`Upgrade: nomadlet-tunnel/1`).
pub fn wants_tunnel(upgrade_header: Option<&str>) -> bool {
    upgrade_header.is_some_and(|v| v.trim().eq_ignore_ascii_case(TUNNEL_PROTOCOL))
}

struct Parker {
    pool: Arc<TunnelPool>,
    node_id: String,
}

impl Upgrade for Parker {
    fn run(self: Box<Self>, conn: Upgraded<'_>) {
        if conn.has_buffered() {
            // A tunnel's client says nothing until the server speaks.
            log::debug!("tunnel: a node sent bytes after its upgrade; closing");
            return;
        }
        match conn.detach() {
            Ok((mut stream, _)) => {
                // TLS: what rustls read past the upgrade request is the node speaking out
                // of turn too (the watcher polls the socket only, it would never see it).
                if stream.has_buffered() {
                    log::debug!("tunnel: a node sent bytes after its upgrade; closing");
                    return;
                }
                self.pool.park(&self.node_id, stream);
            }
            Err(e) => log::debug!("tunnel: cannot park a node's connection: {e}"),
        }
    }
}

/// `tunnel-push`: after each state change, ask `changed` which nodes' allocs changed since
/// the index last looked at, and push to each.
pub struct Pusher {
    stop: Arc<AtomicBool>,
    index: Arc<IndexCounter>,
    join: Option<JoinHandle<()>>,
}

/// Which nodes' allocs changed after an index: `(the index now, node IDs)`.
pub type ChangedNodes = Box<dyn Fn(u64) -> (u64, Vec<String>) + Send>;

impl Pusher {
    /// Start `tunnel-push` from the state index as it is now.
    pub fn start(
        pool: Arc<TunnelPool>,
        index: Arc<IndexCounter>,
        changed: ChangedNodes,
    ) -> io::Result<Pusher> {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ix) = (stop.clone(), index.clone());
        let join = std::thread::Builder::new()
            .name("tunnel-push".into())
            .spawn(move || {
                let (mut seen, _) = changed(u64::MAX);
                // Nodes whose push found no tunnel: (index to push, retry until).
                let mut retry: HashMap<String, (u64, Instant)> = HashMap::new();
                while !s.load(Ordering::SeqCst) && !ix.is_closed() {
                    let generation = ix.generation();
                    let (now, nodes) = changed(seen);
                    seen = now;
                    let t = Instant::now();
                    for node in nodes {
                        if retry.len() < MAX_PUSH_RETRIES || retry.contains_key(&node) {
                            retry.insert(node, (now, t + PUSH_RETRY_FOR));
                        } else {
                            pool.push_allocs_changed(&node, now);
                        }
                    }
                    retry.retain(|node, (index, until)| {
                        !pool.push_allocs_changed(node, *index) && *until > t
                    });
                    let wait = if retry.is_empty() {
                        PUSH_TICK
                    } else {
                        PUSH_RETRY
                    };
                    ix.wait_for_change(generation, Instant::now() + wait);
                }
            })?;
        Ok(Pusher {
            stop,
            index,
            join: Some(join),
        })
    }

    /// Stop and join `tunnel-push`.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the wait: a notify without a change only bumps the generation.
        self.index.notify();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn parked_tunnels_are_taken_newest_first_and_closed_ones_dropped() {
        let pool = TunnelPool::start().unwrap();
        let (a, a_peer) = UnixStream::pair().unwrap();
        let (b, b_peer) = UnixStream::pair().unwrap();
        assert!(pool.park("n1", a.into()));
        assert!(pool.park("n1", b.into()));
        assert_eq!(pool.parked(), 2);
        // The node closes its newest: the watcher drops it without anyone reading.
        drop(b_peer);
        wait_until("the closed tunnel to go", || pool.parked() == 1);
        // A node that speaks out of turn loses that tunnel too.
        (&a_peer).write_all(b"x").unwrap();
        wait_until("the chatty tunnel to go", || pool.parked() == 0);
        assert!(!pool.has("n1"));
        assert!(pool.take("n1").is_none());
        pool.shutdown();
    }

    #[test]
    fn per_node_and_total_bounds_hold() {
        let pool = TunnelPool::start().unwrap();
        let mut peers = Vec::new();
        for _ in 0..MAX_PARKED_PER_NODE + 2 {
            let (a, b) = UnixStream::pair().unwrap();
            assert!(pool.park("n1", a.into()));
            peers.push(b);
        }
        assert_eq!(pool.parked_for("n1"), MAX_PARKED_PER_NODE);
        assert_eq!(pool.parked(), MAX_PARKED_PER_NODE);
        // The oldest were closed: their peers read EOF.
        let mut buf = [0u8; 1];
        assert_eq!((&peers[0]).read(&mut buf).unwrap(), 0);
        pool.forget("n1");
        assert_eq!(pool.parked(), 0);
        pool.shutdown();
    }

    #[test]
    fn forward_sends_a_request_and_reads_the_reply() {
        let pool = TunnelPool::start().unwrap();
        let (a, peer) = UnixStream::pair().unwrap();
        pool.park("n1", a.into());
        let node = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = (&peer).read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            (&peer)
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let headers = vec![("X-Nomad-Token".to_string(), "tok".to_string())];
        let r = pool
            .forward(
                "n1",
                "GET",
                "/v1/client/stats",
                &headers,
                b"",
                deadline,
                &|| false,
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.read_body(10, deadline).unwrap(), b"ok");
        let sent = node.join().unwrap();
        assert!(
            sent.starts_with("GET /v1/client/stats HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(sent.contains("X-Nomad-Token: tok\r\n"));
        assert_eq!(pool.parked(), 0, "a used tunnel is not returned");
        assert!(matches!(
            pool.forward("n1", "GET", "/", &[], b"", deadline, &|| false),
            Err(TunnelError::NoConnection)
        ));
        pool.shutdown();
    }

    #[test]
    fn a_forward_waits_briefly_for_a_recently_seen_nodes_replacement_only() {
        let pool = TunnelPool::start().unwrap();
        let soon = Instant::now() + Duration::from_secs(5);
        // Never seen: no wait at all.
        let t0 = Instant::now();
        assert!(pool.take_wait("stranger", soon).is_none());
        assert!(t0.elapsed() < Duration::from_millis(500));
        // Seen, its only tunnel taken: the replacement parked meanwhile is handed over.
        let (a, _a_peer) = UnixStream::pair().unwrap();
        pool.park("n1", a.into());
        assert!(pool.take("n1").is_some());
        let (b, _b_peer) = UnixStream::pair().unwrap();
        let p = pool.clone();
        let parker = std::thread::spawn(move || {
            // The node's redial, after the forward started waiting (it waits up to 2 s).
            std::thread::sleep(Duration::from_millis(100));
            p.park("n1", b.into());
        });
        assert!(pool.take_wait("n1", soon).is_some());
        parker.join().unwrap();
        pool.shutdown();
    }

    #[test]
    fn a_push_is_written_and_its_connection_closed_after_the_reply() {
        let pool = TunnelPool::start().unwrap();
        let (a, peer) = UnixStream::pair().unwrap();
        pool.park("n1", a.into());
        assert!(pool.push_allocs_changed("n1", 42));
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\n") {
            let n = (&peer).read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        assert!(
            text.starts_with(&format!("POST {TUNNEL_PUSH_PATH}?index=42 HTTP/1.1")),
            "{text}"
        );
        (&peer)
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        // The watcher closes the server's end once the reply is there.
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!((&peer).read(&mut buf).unwrap(), 0);
        assert!(!pool.push_allocs_changed("n1", 43), "no tunnel left");
        pool.shutdown();
    }
}
