//! [`RemoteLink`]: the client's [`ServerLink`] to servers elsewhere, over their RPC port — one
//! short HTTP/1.1 request per call, JSON bodies, the node's secret in `X-Nomad-Node-Secret`
//! (the wire format is written down in `server::rpc`). Calls go to the server that answered
//! last; a server that cannot be reached (or answers 5xx) is left for the next in the list, so
//! a call fails over across every known server before it fails. Each client starts at a
//! random server of the list and moves to another random one after [`REBALANCE_AFTER`] plus
//! up to half that again (Nomad's client-side rebalancing), so clients spread over the
//! servers instead of all asking the first one listed. Register and heartbeat
//! replies list the live servers: the list is replaced with them (ref §5.2) through the
//! owner's [`ServerUpdates`] hook. Each call has a deadline;
//! closing the link (agent shutdown) ends the blocking pulls in flight at once (other calls,
//! such as the last alloc updates, still go through).

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::link::{
    AllocUpdates, Heartbeat, HeartbeatReply, LinkError, MetaReply, NodeMeta, NodeRegistration,
    PublicKeys, PublicKeysRequest, PullAllocs, PulledAllocs, ResolveAcl, ResolvedAcl, ServerLink,
    SignIdentities, SignedIdentities, UpdatedAllocs, MAX_PULL_WAIT, NODE_SECRET_HEADER,
};
use crate::http::client::{self, Outgoing, Stream};

/// Longest a call (other than a pull's wait) may take, connect included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest resolving a caller may wait on the servers: an API request is waiting on it.
pub const AUTHZ_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a connect to one server may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a client keeps to the server that answers before it picks another at random
/// (plus a random part of up to half as long, so clients do not move together): Nomad's
/// `clientRPCMinReuseDuration`.
pub const REBALANCE_AFTER: Duration = Duration::from_secs(5 * 60);

/// Largest reply body read (a pull of many changed allocs is the big one).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Where the servers are now (`ip:port` of their RPC ports): read at every call, so a change
/// of the list (`PUT /v1/agent/servers`) takes effect at the next call.
pub type ServerList = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Told the servers a register/heartbeat reply listed (never empty), to replace the list.
pub type ServerUpdates = Arc<dyn Fn(&[String]) + Send + Sync>;

/// Connects to a server before the deadline: the stream to speak on (plain TCP, or TLS when
/// `tls.rpc` is on) and the TCP socket under it (for deadlines and shutdown).
pub type Dialer =
    Arc<dyn Fn(&SocketAddr, Instant) -> io::Result<(Box<dyn Stream>, TcpStream)> + Send + Sync>;

/// Plain TCP.
pub fn plain_dialer() -> Dialer {
    Arc::new(|addr: &SocketAddr, deadline: Instant| {
        let wait = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connect deadline passed"))?;
        let tcp = TcpStream::connect_timeout(addr, wait.min(CONNECT_TIMEOUT))?;
        let _ = tcp.set_nodelay(true);
        let clone = tcp.try_clone()?;
        Ok((Box::new(tcp) as Box<dyn Stream>, clone))
    })
}

/// The client's link to remote servers.
pub struct RemoteLink {
    servers: ServerList,
    secret: String,
    dialer: Dialer,
    /// The server that answered last (calls start there), and until when.
    preferred: Mutex<Option<(String, Instant)>>,
    /// How long a server is kept once it answered (`REBALANCE_AFTER` and jitter).
    keep_for: Duration,
    closed: AtomicBool,
    /// The sockets of pulls in flight, shut down by `close`.
    in_flight: Mutex<HashMap<u64, TcpStream>>,
    next_call: AtomicU64,
    /// Where the server lists of replies go.
    on_servers: Option<ServerUpdates>,
}

/// How one attempt at one server went.
enum Attempt<T> {
    Done(Result<T, LinkError>),
    /// Try the next server (this one is unreachable or failing): why.
    Next(String),
}

impl RemoteLink {
    pub fn new(servers: ServerList, secret: String, dialer: Dialer) -> RemoteLink {
        RemoteLink {
            servers,
            secret,
            dialer,
            preferred: Mutex::new(None),
            keep_for: REBALANCE_AFTER + crate::time::jitter(REBALANCE_AFTER / 2),
            closed: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(0),
            on_servers: None,
        }
    }

    /// Hand the server list of every register/heartbeat reply to `f`.
    pub fn with_server_updates(mut self, f: ServerUpdates) -> RemoteLink {
        self.on_servers = Some(f);
        self
    }

    /// A register/heartbeat reply: its server list goes to the owner.
    fn learned(
        &self,
        reply: Result<HeartbeatReply, LinkError>,
    ) -> Result<HeartbeatReply, LinkError> {
        if let (Ok(r), Some(f)) = (&reply, &self.on_servers) {
            if !r.servers.is_empty() {
                f(&r.servers);
            }
        }
        reply
    }

    /// The servers in the order to try: the last that answered first while it is kept,
    /// else from a random one on.
    fn order(&self) -> Vec<String> {
        let mut list = (self.servers)();
        let kept = {
            let mut p = self.preferred.lock();
            if p.as_ref()
                .is_some_and(|(_, until)| Instant::now() >= *until)
            {
                *p = None;
            }
            p.as_ref().map(|(s, _)| s.clone())
        };
        let start = match kept.and_then(|k| list.iter().position(|s| *s == k)) {
            Some(i) => i,
            None if list.is_empty() => 0,
            None => {
                let r = rand_core::RngCore::next_u64(&mut crate::encoding::OsRng);
                (r % list.len() as u64) as usize
            }
        };
        list.rotate_left(start);
        list
    }

    /// `server` answered: calls keep going there (its time starts on the first answer).
    fn answered(&self, server: &str) {
        let mut p = self.preferred.lock();
        if p.as_ref().is_none_or(|(s, _)| s != server) {
            *p = Some((server.to_string(), Instant::now() + self.keep_for));
        }
    }

    fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        node_id: &str,
        req: &Q,
        timeout: Duration,
        pull: bool,
    ) -> Result<R, LinkError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| LinkError::BadRequest(format!("cannot encode the request: {e}")))?;
        let servers = self.order();
        if servers.is_empty() {
            return Err(LinkError::Unreachable("no servers".into()));
        }
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        for server in &servers {
            if pull && self.closed.load(Ordering::SeqCst) {
                return Err(LinkError::Closed);
            }
            if Instant::now() >= deadline {
                break;
            }
            match self.attempt(server, what, node_id, &body, deadline, pull) {
                Attempt::Done(result) => {
                    if result.is_ok() {
                        self.answered(server);
                    }
                    return result;
                }
                Attempt::Next(why) => {
                    log::debug!("RPC {what} to server {server} failed: {why}");
                    last = format!("{server}: {why}");
                }
            }
        }
        if pull && self.closed.load(Ordering::SeqCst) {
            return Err(LinkError::Closed);
        }
        Err(LinkError::Unreachable(last))
    }

    fn attempt<R: DeserializeOwned>(
        &self,
        server: &str,
        what: &str,
        node_id: &str,
        body: &[u8],
        deadline: Instant,
        pull: bool,
    ) -> Attempt<R> {
        let addr: SocketAddr = match server.parse() {
            Ok(a) => a,
            Err(_) => return Attempt::Next("not an ip:port".into()),
        };
        let (stream, tcp) = match (self.dialer)(&addr, deadline) {
            Ok(s) => s,
            Err(e) => return Attempt::Next(format!("dial: {e}")),
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero()
            || tcp.set_read_timeout(Some(wait)).is_err()
            || tcp.set_write_timeout(Some(wait)).is_err()
        {
            return Attempt::Next("deadline passed".into());
        }
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        if pull {
            if let Ok(clone) = tcp.try_clone() {
                self.in_flight.lock().insert(call_id, clone);
            }
            // Checked after registering: a close from here on shuts this socket down.
            if self.closed.load(Ordering::SeqCst) {
                self.in_flight.lock().remove(&call_id);
                return Attempt::Done(Err(LinkError::Closed));
            }
        }
        let headers = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            (NODE_SECRET_HEADER.to_string(), self.secret.clone()),
        ];
        let path = format!("/v1/rpc/{what}");
        let out = Outgoing {
            method: "POST",
            host: server,
            path: &path,
            user_agent: "nomadlet-client",
            headers: &headers,
            body,
        };
        let result = client::exchange(stream, &out).and_then(|resp| {
            let status = resp.status;
            resp.bytes_limited(MAX_REPLY_BYTES)
                .map(|b| (status, b))
                .map_err(client::ClientError::Io)
        });
        self.in_flight.lock().remove(&call_id);
        let (status, bytes) = match result {
            Ok(r) => r,
            Err(_) if pull && self.closed.load(Ordering::SeqCst) => {
                return Attempt::Done(Err(LinkError::Closed))
            }
            Err(e) => return Attempt::Next(e.to_string()),
        };
        let text = || String::from_utf8_lossy(&bytes).trim().to_string();
        match status {
            200 => Attempt::Done(
                serde_json::from_slice(&bytes)
                    .map_err(|e| LinkError::BadRequest(format!("bad reply from {server}: {e}"))),
            ),
            400 | 403 | 404 | 405 => Attempt::Done(Err(link_error(status, &text(), node_id))),
            _ => Attempt::Next(format!("status {status}: {}", text())),
        }
    }
}

/// The client's error for an error reply (`server::rpc` writes the table).
fn link_error(status: u16, text: &str, node_id: &str) -> LinkError {
    match status {
        403 => LinkError::PermissionDenied,
        404 => LinkError::UnknownNode(node_id.to_string()),
        503 => LinkError::Closed,
        400 | 405 => LinkError::BadRequest(text.to_string()),
        _ => LinkError::Persist(text.to_string()),
    }
}

impl ServerLink for RemoteLink {
    fn register_node(&self, req: &NodeRegistration) -> Result<HeartbeatReply, LinkError> {
        let mut req = req.clone();
        req.secret_id = self.secret.clone();
        self.learned(self.call("node/register", &req.node_id, &req, CALL_TIMEOUT, false))
    }

    fn heartbeat(&self, req: &Heartbeat) -> Result<HeartbeatReply, LinkError> {
        self.learned(self.call("node/heartbeat", &req.node_id, req, CALL_TIMEOUT, false))
    }

    fn pull_allocs(&self, req: &PullAllocs) -> Result<PulledAllocs, LinkError> {
        let wait = Duration::from_millis(req.wait_ms).min(MAX_PULL_WAIT);
        self.call("node/allocs", &req.node_id, req, wait + CALL_TIMEOUT, true)
    }

    fn push_alloc_updates(&self, req: &AllocUpdates) -> Result<UpdatedAllocs, LinkError> {
        self.call("alloc/updates", &req.node_id, req, CALL_TIMEOUT, false)
    }

    fn push_meta(&self, req: &NodeMeta) -> Result<MetaReply, LinkError> {
        self.call("node/meta", &req.node_id, req, CALL_TIMEOUT, false)
    }

    fn sign_identities(&self, req: &SignIdentities) -> Result<SignedIdentities, LinkError> {
        self.call("identity/sign", &req.node_id, req, CALL_TIMEOUT, false)
    }

    fn resolve_acl(&self, req: &ResolveAcl) -> Result<ResolvedAcl, LinkError> {
        self.call("acl/resolve", &req.node_id, req, AUTHZ_CALL_TIMEOUT, false)
    }

    fn public_keys(&self, req: &PublicKeysRequest) -> Result<PublicKeys, LinkError> {
        self.call("acl/keys", &req.node_id, req, AUTHZ_CALL_TIMEOUT, false)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for (_, s) in self.in_flight.lock().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_start_at_random_servers_and_move_on_after_their_time() {
        let list = || vec!["a:1".to_string(), "b:1".to_string(), "c:1".to_string()];
        let firsts: std::collections::BTreeSet<String> = (0..100)
            .map(|_| {
                let link = RemoteLink::new(Arc::new(list), "s".into(), plain_dialer());
                link.order()[0].clone()
            })
            .collect();
        assert_eq!(firsts.len(), 3, "100 clients all started at {firsts:?}");
        let mut link = RemoteLink::new(Arc::new(list), "s".into(), plain_dialer());
        assert!(link.keep_for >= REBALANCE_AFTER && link.keep_for <= REBALANCE_AFTER * 3 / 2);
        link.answered("b:1");
        for _ in 0..20 {
            assert_eq!(
                link.order(),
                ["b:1", "c:1", "a:1"],
                "kept while its time runs"
            );
        }
        // Its time over: the next call starts at a random server again.
        link.keep_for = Duration::ZERO;
        link.answered("c:1");
        let after: std::collections::BTreeSet<String> =
            (0..100).map(|_| link.order()[0].clone()).collect();
        assert_eq!(after.len(), 3, "never moved on: {after:?}");
    }

    #[test]
    fn error_statuses_map_to_link_errors() {
        assert_eq!(link_error(403, "x", "n"), LinkError::PermissionDenied);
        assert_eq!(
            link_error(404, "node not found", "n"),
            LinkError::UnknownNode("n".into())
        );
        assert_eq!(link_error(503, "", "n"), LinkError::Closed);
        assert_eq!(
            link_error(400, "bad", "n"),
            LinkError::BadRequest("bad".into())
        );
    }

    #[test]
    fn no_servers_and_unreachable_servers_fail_without_hanging() {
        let none = RemoteLink::new(Arc::new(Vec::new), "s".into(), plain_dialer());
        let hb = Heartbeat {
            node_id: "n".into(),
        };
        assert!(matches!(
            none.heartbeat(&hb),
            Err(LinkError::Unreachable(_))
        ));
        // A port nothing listens on: refused at once, the next server is tried, then failure.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let gone = RemoteLink::new(
            Arc::new(move || vec![format!("127.0.0.1:{port}"), "not-an-addr".into()]),
            "s".into(),
            plain_dialer(),
        );
        let started = Instant::now();
        assert!(matches!(
            gone.heartbeat(&hb),
            Err(LinkError::Unreachable(_))
        ));
        assert!(started.elapsed() < CALL_TIMEOUT);
        gone.close();
        let pull = PullAllocs {
            node_id: "n".into(),
            min_index: 0,
            wait_ms: 10_000,
        };
        assert_eq!(gone.pull_allocs(&pull).unwrap_err(), LinkError::Closed);
    }
}
