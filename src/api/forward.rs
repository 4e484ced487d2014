//! Any agent answers any `/v1` request (ref §5.6): what this agent cannot answer itself goes
//! where it can be answered. On a server, `/v1/client/*` for an alloc or node that is not
//! this agent's goes down that node's tunnel (a connection the node opened; the server never
//! dials a client). On a client-only agent, everything but its own agent and client endpoints
//! goes to one of its servers' RPC ports (which hand non-RPC paths to their API router),
//! failing over on connect. On a server that is not the leader (`agent.leadership`), writes
//! and consistent reads go to the leader's RPC port (ref §5.5–5.6), and the leader answers a
//! consistent read only after its read barrier (a quorum confirmed it still leads: no stale
//! reads from a leader cut off from its majority); `?stale` reads, the
//! agent's own endpoints and client endpoints are answered here. A request passed to the
//! leader carries [`LEADER_HOP_HEADER`]: a server that gets one and is not the leader answers
//! `No cluster leader` instead of passing it on again (no loops while leadership moves). Requests go as they came (method, path, query, end-to-end headers
//! with the ACL token, body): a server accepts the token before it forwards to a node, which
//! checks the capabilities; a client-only agent leaves the token to its server. Replies come back as they are:
//! small bodies whole, everything else (logs, follow streams) piped as it arrives. An `alloc
//! exec` websocket upgrade takes the same routes and is spliced once answered (`forward_exec`).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::link::TUNNEL_HOP_HEADER;
use crate::http::outbound::{self, Incoming};
use crate::http::{Method, RawStream, Reply, Request};
use crate::server::tunnel::{TunnelError, TunnelPool};
use crate::state::jobs::alloc::AllocRecord;
use crate::state::leader::{
    route, BarrierError, LeaderView, Leadership, Route, LEADER_HOP_HEADER, NO_LEADER,
};

use super::{Agent, ApiError};

/// A reply body of known length up to this size is read whole before it is passed on; a
/// larger one (or one of unknown length: streams) is piped through in bounded pieces.
pub const MAX_INLINE_REPLY: usize = 4 * 1024 * 1024;

/// Longest a forwarded request waits for the head of its reply (a blocking query waits its
/// `wait` on top: see [`reply_deadline`]).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a TCP connect to one server may take before the next is tried.
pub const SERVER_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a request waits for a leader to be known (Nomad's `RPCHoldTimeout`, ref §5.7)
/// before it is answered `No cluster leader`.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Nomad's text when this server leads but is not ready for consistent reads in time, 500.
pub const NOT_READY: &str = "Not ready to serve consistent reads";

/// Read barriers a consistent read tries on this server (each failure because leadership
/// moved routes it again) before it is answered `No cluster leader`.
pub const BARRIER_TRIES: usize = 3;

/// The servers' RPC addresses (`host:port`) as known now.
pub type ServerList = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Where this agent sends what it cannot answer (set by the composition root per role).
#[derive(Default, Clone)]
pub struct Forwarding {
    /// Server role: the tunnels clients opened, by node.
    pub tunnels: Option<Arc<TunnelPool>>,
    /// Client-only role: the servers to forward everything else to.
    pub servers: Option<ServerList>,
    /// Server role: every live server's RPC address (this one's among them), asked in turn
    /// for a node whose tunnels are parked on another server.
    pub peers: Option<ServerList>,
    /// Client-only role: the server that answered last (tried first, so a dead server in the
    /// list costs one failed connect, not one per request).
    pub last_server: Arc<parking_lot::Mutex<Option<String>>>,
}

/// Where one request is answered.
enum Target {
    Local,
    Node(String),
    Servers(ServerList),
    /// The leader's RPC port (this server is a follower).
    Leader(SocketAddr),
}

/// If this agent does not answer `req` itself: the reply from where it is answered.
pub fn maybe_forward(agent: &Arc<Agent>, req: &Request) -> Option<Reply> {
    match target(agent, req) {
        Ok(Target::Local) => None,
        Ok(Target::Node(node)) => {
            // The server holds the ACL state: a token it does not accept goes no further (ref
            // §5.6: the final server resolves it); the node checks the capabilities.
            if let Err(e) = super::auth::authenticate(agent, req) {
                return Some(super::router::error_reply(&e));
            }
            if super::forward_exec::is_exec_upgrade(req) {
                return Some(super::forward_exec::to_node(agent, &node, req));
            }
            Some(to_node(agent, &node, req))
        }
        Ok(Target::Servers(servers)) if super::forward_exec::is_exec_upgrade(req) => {
            Some(super::forward_exec::to_servers(agent, &servers, req))
        }
        Ok(Target::Servers(servers)) => Some(to_servers(agent, &servers, req)),
        Ok(Target::Leader(addr)) => Some(to_leader(agent, addr, req)),
        Err(e) => Some(super::router::error_reply(&e)),
    }
}

/// Whether `req` goes to a server or the leader (so this agent does not judge its token
/// before the body: the one that answers does). Never waits for a leader.
pub fn will_forward(agent: &Arc<Agent>, req: &Request) -> bool {
    if req.header(TUNNEL_HOP_HEADER).is_some() || req.path.starts_with("/v1/client/") {
        return matches!(target(agent, req), Ok(Target::Servers(_)));
    }
    if let Some(fwd) = agent.forwarding.get() {
        if fwd.servers.is_some() {
            return !is_agent_local(&req.path);
        }
    }
    leader_bound(agent, req).is_some_and(|l| !l.view().is_leader)
}

/// This agent's view of an allocation for a client endpoint: the local client's own copy
/// first (a client-only agent keeps no server state), else the server state's.
pub fn local_alloc(agent: &Agent, id: &str) -> Option<AllocRecord> {
    agent.client.alloc(id).or_else(|| agent.workloads.alloc(id))
}

fn target(agent: &Arc<Agent>, req: &Request) -> Result<Target, ApiError> {
    let Some(fwd) = agent.forwarding.get() else {
        return Ok(Target::Local);
    };
    if req.header(TUNNEL_HOP_HEADER).is_some() {
        // It came down a tunnel: answered here, whatever this agent thinks.
        return Ok(Target::Local);
    }
    let path = req.path.as_str();
    if let Some(rest) = path.strip_prefix("/v1/client/") {
        if fwd.tunnels.is_none() && fwd.servers.is_none() {
            return Ok(Target::Local);
        }
        return client_target(agent, req, rest);
    }
    if let Some(servers) = fwd.servers.clone() {
        // A client-only agent answers for itself only what is its own.
        // (`/v1/agent/members` asks a server through the agent's own handler.)
        return Ok(if is_agent_local(path) {
            Target::Local
        } else {
            Target::Servers(servers)
        });
    }
    match leader_bound(agent, req) {
        Some(leadership) => leader_target(agent, leadership.as_ref(), req),
        None => Ok(Target::Local),
    }
}

/// What every agent answers for itself, leader or not (ref §5.6): its own agent endpoints
/// (self, health, members, join, servers, ...) and metrics. (Client endpoints are routed by
/// `client_target`.)
fn is_agent_local(path: &str) -> bool {
    path.starts_with("/v1/agent/") || path == "/v1/metrics"
}

/// Paths a server answers itself without touching replicated state: parsing and validating a
/// job, the region list, and the event stream (fed by this server's own applies).
fn is_server_local(path: &str) -> bool {
    matches!(path, "/v1/jobs/parse" | "/v1/validate/job" | "/v1/regions")
        || path.starts_with("/v1/event/")
}

/// `?stale` on a read: any server answers from its own state (ref §5.5). A value that does
/// not parse is left to the handler's 400.
fn is_stale_read(req: &Request) -> bool {
    matches!(req.method, Method::Get | Method::Head)
        && req
            .query("stale")
            .is_some_and(|v| v.is_empty() || super::params::parse_go_bool(v) == Some(true))
}

/// The leadership to consult when `req` is one the leader answers on a server: a write or a
/// consistent read of replicated state.
fn leader_bound(agent: &Agent, req: &Request) -> Option<Arc<dyn Leadership>> {
    let leadership = agent.leadership.get()?;
    let path = req.path.as_str();
    let local = path.starts_with("/v1/client/")
        || is_agent_local(path)
        || is_server_local(path)
        || is_stale_read(req);
    (!local).then(|| leadership.clone())
}

/// Where a leader-bound request is answered: here when this server is the ready leader,
/// else at the leader's RPC port (`state::leader::route`, waiting up to [`LEADER_WAIT`]). A
/// request another server already passed on is answered here or refused, never passed on
/// again.
fn leader_target(
    agent: &Agent,
    leadership: &dyn Leadership,
    req: &Request,
) -> Result<Target, ApiError> {
    let passed_on = req.header(LEADER_HOP_HEADER).is_some();
    let own: Option<SocketAddr> = agent.config.rpc_addr().parse().ok();
    let deadline = Instant::now() + LEADER_WAIT;
    let stop = || agent.index.is_closed() || req.peer_gone();
    let read = matches!(req.method, Method::Get | Method::Head);
    let mut routed = route(leadership, own, passed_on, deadline, &stop);
    let mut tries = 0;
    while routed == Route::Here && read {
        // A leader cut off from its majority may not know yet that it was replaced: a
        // consistent read waits for a quorum to confirm it still leads (once, before a
        // blocking query starts waiting). Lost meanwhile: route again (the new leader).
        let Err(e) = leadership.read_barrier(deadline) else {
            break;
        };
        log::debug!("read barrier for {}: {e}", req.path);
        tries += 1;
        let moved = matches!(e, BarrierError::NotLeader | BarrierError::LostLeadership);
        if !moved || passed_on || tries >= BARRIER_TRIES || Instant::now() >= deadline {
            routed = Route::NoLeader;
            break;
        }
        routed = route(leadership, own, passed_on, deadline, &stop);
    }
    match routed {
        Route::Here => Ok(Target::Local),
        Route::Leader(addr) => Ok(Target::Leader(addr)),
        Route::NotReady if req.method == Method::Get => Err(ApiError::internal(NOT_READY)),
        Route::NoLeader | Route::NotReady => {
            if passed_on {
                log::debug!(
                    "a request for {} passed on by {} reached a server that does not lead",
                    req.path,
                    req.header(LEADER_HOP_HEADER).unwrap_or("?")
                );
            }
            Err(ApiError::internal(NO_LEADER))
        }
    }
}

/// The `X-Nomad-KnownLeader` and `X-Nomad-LastContact` (ms) of a read answered by this
/// agent, from its view of leadership (ref §5.5): `true`/`0` on the leader (and on an agent
/// that is not a server, which answers no state reads itself).
pub fn query_meta(agent: &Agent) -> (bool, u64) {
    let Some(leadership) = agent.leadership.get() else {
        return (true, 0);
    };
    meta_of(&leadership.view())
}

/// Time since an unknown last contact, as Nomad shows it (Go's `time.Since` of a zero time
/// saturates at the largest duration).
const NEVER_CONTACTED_MS: u64 = (i64::MAX as u64) / 1_000_000;

fn meta_of(view: &LeaderView) -> (bool, u64) {
    if view.is_leader {
        return (true, 0);
    }
    let last = view.last_contact.map_or(NEVER_CONTACTED_MS, |d| {
        u64::try_from(d.as_millis()).unwrap_or(NEVER_CONTACTED_MS)
    });
    (view.leader_rpc_addr.is_some(), last)
}

/// The alloc a client endpoint path names (`fs/<op>/<id>`, `allocation/<id>/<op>`).
fn path_alloc(rest: &str) -> Option<&str> {
    if let Some(r) = rest.strip_prefix("fs/") {
        return r.split('/').nth(1).filter(|s| !s.is_empty());
    }
    if let Some(r) = rest.strip_prefix("allocation/") {
        return r.split('/').next().filter(|s| !s.is_empty());
    }
    None
}

fn client_target(agent: &Arc<Agent>, req: &Request, rest: &str) -> Result<Target, ApiError> {
    let Some(fwd) = agent.forwarding.get() else {
        return Ok(Target::Local);
    };
    let local_node = agent.node.id();
    // (An exec websocket of an alloc elsewhere goes there too: `forward_exec`.)
    if let Some(alloc_id) = path_alloc(rest) {
        if agent.client.alloc(alloc_id).is_some() {
            return Ok(Target::Local);
        }
        if fwd.tunnels.is_some() {
            return Ok(match agent.workloads.alloc(alloc_id) {
                Some(a) if a.node_id != local_node => Target::Node(a.node_id.to_string()),
                // Unknown here, or this node's: the local endpoint gives the answer.
                _ => Target::Local,
            });
        }
        return Ok(fwd.servers.clone().map_or(Target::Local, Target::Servers));
    }
    if matches!(rest, "stats" | "metadata" | "gc") {
        let node = req.query("node_id").unwrap_or("");
        if !agent.config.client_enabled && node.is_empty() {
            return Err(ApiError::bad_request(
                "No local Node and node_id not provided",
            ));
        }
        if agent.config.client_enabled && (node.is_empty() || node == local_node) {
            return Ok(Target::Local);
        }
        if fwd.tunnels.is_some() {
            if agent.workloads.state().nodes.get(node).is_none() {
                return Err(ApiError::not_found(format!("Unknown node {node:?}")));
            }
            return Ok(Target::Node(node.to_string()));
        }
        return Ok(fwd.servers.clone().map_or(Target::Local, Target::Servers));
    }
    Ok(Target::Local)
}

/// How long to wait for a reply head: a blocking query's `wait` on top of the usual.
fn reply_deadline(req: &Request) -> Instant {
    let mut d = FORWARD_TIMEOUT;
    if req.method == Method::Get && req.has_query("index") {
        d += super::router::MAX_BLOCKING_WAIT + super::router::MAX_BLOCKING_WAIT / 16;
    }
    Instant::now() + d
}

/// The request's end-to-end headers (the ACL token among them).
pub(super) fn pass_headers(req: &Request) -> Vec<(String, String)> {
    req.headers
        .iter()
        .filter(|(k, _)| {
            !outbound::is_hop_by_hop(k)
                && !k.eq_ignore_ascii_case(TUNNEL_HOP_HEADER)
                && !k.eq_ignore_ascii_case(LEADER_HOP_HEADER)
        })
        .cloned()
        .collect()
}

fn relay(incoming: Result<Incoming, String>, deadline: Instant) -> Result<Reply, String> {
    incoming?
        .into_reply(MAX_INLINE_REPLY, deadline)
        .map_err(|e| e.to_string())
}

fn to_node(agent: &Arc<Agent>, node: &str, req: &Request) -> Reply {
    let Some(pool) = agent.forwarding.get().and_then(|f| f.tunnels.as_ref()) else {
        return super::router::error_reply(&ApiError::not_found(NO_PATH));
    };
    let deadline = reply_deadline(req);
    let target = outbound::encode_target(&req.path, &req.query);
    let sent = pool.forward(
        node,
        req.method.as_str(),
        &target,
        &pass_headers(req),
        &req.body,
        deadline,
        &|| req.peer_gone(),
    );
    let sent = match sent {
        Err(TunnelError::NoConnection) => return via_peer_servers(agent, node, req),
        other => other.map_err(|e| e.to_string()),
    };
    match relay(sent, deadline) {
        Ok(reply) => reply,
        Err(e) => {
            log::warn!("forward: a request to node {node} failed: {e}");
            super::router::error_reply(&ApiError::internal(format!(
                "rpc error: node connection failed: {e}"
            )))
        }
    }
}

/// Nomad's answer when no server holds a connection of the node (ref §5.7).
pub(super) const NO_PATH: &str = "No path to node";

/// No tunnel of `node` is parked here: ask the other servers in turn (the node may hold its
/// tunnels to one of them, ref §5.6), each marked as passed on so it answers from its own
/// tunnels only. The first answer other than `No path to node` is the reply.
fn via_peer_servers(agent: &Agent, node: &str, req: &Request) -> Reply {
    let no_path = || super::router::error_reply(&ApiError::not_found(NO_PATH));
    if req.header(LEADER_HOP_HEADER).is_some() {
        return no_path();
    }
    let Some(peers) = agent.forwarding.get().and_then(|f| f.peers.clone()) else {
        return no_path();
    };
    let own = agent.config.rpc_addr();
    let mut headers = pass_headers(req);
    headers.push((LEADER_HOP_HEADER.to_string(), own.clone()));
    let deadline = reply_deadline(req);
    for peer in peers().into_iter().filter(|p| *p != own) {
        let Ok(addr) = peer.parse::<SocketAddr>() else {
            continue;
        };
        match outbound::pass_on(
            &addr,
            &|a, t| rpc_connect(agent, a, t),
            req,
            &headers,
            SERVER_DIAL_TIMEOUT,
            deadline,
            MAX_INLINE_REPLY,
        ) {
            Ok(reply) if is_no_path(&reply) => {}
            Ok(reply) => return reply,
            Err(e) => log::debug!("forward: server {peer} not asked about node {node}: {e}"),
        }
    }
    no_path()
}

pub(super) fn is_no_path(reply: &Reply) -> bool {
    reply.status == crate::http::Status::NOT_FOUND
        && matches!(&reply.body, crate::http::Body::Bytes(b) if b.as_slice() == NO_PATH.as_bytes())
}

/// The servers to try, the one that answered last first, and where to record the one that
/// answers now.
pub(super) fn servers_last_first(
    agent: &Agent,
    servers: &ServerList,
) -> (Vec<String>, Arc<parking_lot::Mutex<Option<String>>>) {
    let mut list = servers();
    let last_server = agent
        .forwarding
        .get()
        .map(|f| f.last_server.clone())
        .unwrap_or_default();
    if let Some(last) = last_server.lock().clone() {
        if let Some(i) = list.iter().position(|s| *s == last) {
            list.rotate_left(i);
        }
    }
    (list, last_server)
}

fn to_servers(agent: &Agent, servers: &ServerList, req: &Request) -> Reply {
    let (list, last_server) = servers_last_first(agent, servers);
    if list.is_empty() {
        return super::router::error_reply(&ApiError::internal("no servers"));
    }
    let deadline = reply_deadline(req);
    let target = outbound::encode_target(&req.path, &req.query);
    let headers = pass_headers(req);
    let mut last = String::new();
    for addr in &list {
        // Fail over only while nothing was sent: a write is never sent twice.
        let Some(mut stream) = dial(agent, addr, &mut last) else {
            continue;
        };
        *last_server.lock() = Some(addr.clone());
        let sent = outbound::write_request(
            &mut stream,
            req.method.as_str(),
            &target,
            addr,
            &headers,
            &req.body,
            deadline,
        )
        .and_then(|()| {
            outbound::read_reply_while(stream, deadline, req.method == Method::Head, &|| {
                req.peer_gone()
            })
        })
        .map_err(|e| e.to_string());
        return match relay(sent, deadline) {
            Ok(reply) => rpc_error_hop(reply),
            Err(e) => {
                log::warn!("forward: a request to server {addr} failed: {e}");
                super::router::error_reply(&ApiError::internal(format!("rpc error: {e}")))
            }
        };
    }
    log::warn!("forward: no server answered: {last}");
    super::router::error_reply(&ApiError::internal("no servers"))
}

/// Pass `req` to the leader's RPC port (marked as passed on). A leader that cannot be
/// reached got nothing: `No cluster leader`, which callers retry.
fn to_leader(agent: &Agent, addr: SocketAddr, req: &Request) -> Reply {
    let deadline = reply_deadline(req);
    let mut headers = pass_headers(req);
    headers.push((LEADER_HOP_HEADER.to_string(), agent.config.rpc_addr()));
    match outbound::pass_on(
        &addr,
        &|a, t| rpc_connect(agent, a, t),
        req,
        &headers,
        SERVER_DIAL_TIMEOUT,
        deadline,
        MAX_INLINE_REPLY,
    ) {
        Ok(reply) => rpc_error_hop(reply),
        Err(outbound::PassError::Connect(e)) => {
            log::warn!("forward: cannot reach the leader at {addr}: {e}");
            super::router::error_reply(&ApiError::internal(NO_LEADER))
        }
        Err(e) => {
            log::warn!("forward: a request to the leader at {addr} failed: {e}");
            super::router::error_reply(&ApiError::internal(format!("rpc error: {e}")))
        }
    }
}

/// Nomad's connection pool prefixes every error an RPC hop brings back with `rpc error: `
/// (ref §5.6; coded errors excepted): a relayed error of the RPC itself — a 500, or a 403 the
/// answering server's ACL check gave — reads `rpc error: node not found` through one hop,
/// `rpc error: rpc error: …` through two. Errors Nomad's HTTP layer gives before any RPC (a
/// 400 on bad input, a 404 for a missing object, a 405) and coded ones pass unchanged.
pub fn rpc_error_hop(mut reply: Reply) -> Reply {
    use crate::http::{Body, Status};
    if reply.status != Status::INTERNAL_SERVER_ERROR && reply.status != Status::FORBIDDEN {
        return reply;
    }
    let plain = reply.headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("content-type") && v.to_ascii_lowercase().starts_with("text/plain")
    });
    if let (true, Body::Bytes(b)) = (plain, &mut reply.body) {
        let mut with = b"rpc error: ".to_vec();
        with.append(b);
        *b = with;
    }
    reply
}

/// Connect to another agent's RPC port within `timeout`: mutual TLS with the agent's
/// certificate when `tls.rpc` is on (as Raft and the client link dial), plain TCP otherwise.
/// Every request this agent passes on to a server goes over a stream from here.
pub fn rpc_connect(agent: &Agent, addr: &SocketAddr, timeout: Duration) -> io::Result<RawStream> {
    match agent.tls.as_ref().filter(|_| agent.config.tls.rpc) {
        Some(tls) => tls.dial_rpc(addr, timeout),
        None => outbound::connect_plain(addr, timeout),
    }
}

pub(super) fn dial(agent: &Agent, addr: &str, last: &mut String) -> Option<RawStream> {
    let sock = match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            *last = format!("{addr}: resolves to nothing");
            return None;
        }
        Err(e) => {
            *last = format!("{addr}: {e}");
            return None;
        }
    };
    match rpc_connect(agent, &sock, SERVER_DIAL_TIMEOUT) {
        Ok(s) => Some(s),
        Err(e) => {
            *last = format!("{addr}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_ids_are_found_in_client_paths() {
        assert_eq!(path_alloc("fs/cat/abc"), Some("abc"));
        assert_eq!(path_alloc("fs/logs/abc"), Some("abc"));
        assert_eq!(path_alloc("fs/ls/"), None);
        assert_eq!(path_alloc("allocation/abc/stats"), Some("abc"));
        assert_eq!(path_alloc("allocation//stats"), None);
        assert_eq!(path_alloc("stats"), None);
    }

    #[test]
    fn query_meta_follows_the_leader_view() {
        let mut view = LeaderView {
            is_leader: true,
            leader_rpc_addr: None,
            leader_id: None,
            last_contact: Some(Duration::ZERO),
            term: 3,
        };
        assert_eq!(meta_of(&view), (true, 0));
        view.is_leader = false;
        view.leader_rpc_addr = "127.0.0.1:4647".parse().ok();
        view.last_contact = Some(Duration::from_millis(1234));
        assert_eq!(meta_of(&view), (true, 1234));
        view.leader_rpc_addr = None;
        view.last_contact = None;
        assert_eq!(meta_of(&view), (false, NEVER_CONTACTED_MS));
        assert_eq!(NEVER_CONTACTED_MS, 9_223_372_036_854);
    }

    #[test]
    fn agent_and_server_local_paths_are_never_sent_to_the_leader() {
        for p in [
            "/v1/agent/self",
            "/v1/agent/health",
            "/v1/agent/members",
            "/v1/metrics",
        ] {
            assert!(is_agent_local(p), "{p}");
        }
        for p in ["/v1/jobs/parse", "/v1/regions", "/v1/event/stream"] {
            assert!(is_server_local(p), "{p}");
        }
        for p in [
            "/v1/jobs",
            "/v1/status/leader",
            "/v1/acl/tokens",
            "/v1/node/x",
        ] {
            assert!(!is_agent_local(p) && !is_server_local(p), "{p}");
        }
    }
}
