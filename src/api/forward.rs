//! Any agent answers any `/v1` request (ref §5.6): what this agent cannot answer itself goes
//! where it can be answered. On a server, `/v1/client/*` for an alloc or node that is not
//! this agent's goes down that node's tunnel (a connection the node opened; the server never
//! dials a client). On a client-only agent, everything but its own agent and client endpoints
//! goes to one of its servers' RPC ports (which hand non-RPC paths to their API router),
//! failing over on connect. Requests go as they came (method, path, query, end-to-end headers
//! with the ACL token, body): a server accepts the token before it forwards to a node, which
//! checks the capabilities; a client-only agent leaves the token to its server. Replies come back as they are:
//! small bodies whole, everything else (logs, follow streams) piped as it arrives.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::link::TUNNEL_HOP_HEADER;
use crate::http::outbound::{self, Incoming};
use crate::http::{Method, RawStream, Reply, Request};
use crate::server::tunnel::{TunnelError, TunnelPool};
use crate::state::jobs::alloc::AllocRecord;

use super::{Agent, ApiError};

/// A reply body of known length up to this size is read whole before it is passed on; a
/// larger one (or one of unknown length: streams) is piped through in bounded pieces.
pub const MAX_INLINE_REPLY: usize = 4 * 1024 * 1024;

/// Longest a forwarded request waits for the head of its reply (a blocking query waits its
/// `wait` on top: see [`reply_deadline`]).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a TCP connect to one server may take before the next is tried.
pub const SERVER_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The servers' RPC addresses (`host:port`) as known now.
pub type ServerList = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Where this agent sends what it cannot answer (set by the composition root per role).
#[derive(Default, Clone)]
pub struct Forwarding {
    /// Server role: the tunnels clients opened, by node.
    pub tunnels: Option<Arc<TunnelPool>>,
    /// Client-only role: the servers to forward everything else to.
    pub servers: Option<ServerList>,
}

/// Where one request is answered.
enum Target {
    Local,
    Node(String),
    Servers(ServerList),
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
            Some(to_node(agent, &node, req))
        }
        Ok(Target::Servers(servers)) => Some(to_servers(&servers, req)),
        Err(e) => Some(super::router::error_reply(&e)),
    }
}

/// Whether `req` goes to a server (so this client-only agent does not judge its token before
/// the body: the server does).
pub fn will_forward(agent: &Arc<Agent>, req: &Request) -> bool {
    matches!(target(agent, req), Ok(Target::Servers(_)))
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
    if fwd.tunnels.is_none() && fwd.servers.is_none() {
        return Ok(Target::Local);
    }
    let path = req.path.as_str();
    if let Some(rest) = path.strip_prefix("/v1/client/") {
        return client_target(agent, req, rest);
    }
    let Some(servers) = fwd.servers.clone() else {
        // A server answers everything else itself.
        return Ok(Target::Local);
    };
    // A client-only agent answers for itself only what is its own.
    // (`/v1/agent/members` asks a server through the agent's own handler.)
    let own = path.starts_with("/v1/agent/") || path == "/v1/metrics";
    Ok(if own {
        Target::Local
    } else {
        Target::Servers(servers)
    })
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
    if rest.starts_with("allocation/") && rest.ends_with("/exec") {
        // A websocket session: served where it arrives.
        return Ok(Target::Local);
    }
    if let Some(alloc_id) = path_alloc(rest) {
        if agent.client.alloc(alloc_id).is_some() {
            return Ok(Target::Local);
        }
        if fwd.tunnels.is_some() {
            return Ok(match agent.workloads.alloc(alloc_id) {
                Some(a) if a.node_id != local_node => Target::Node(a.node_id),
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
fn pass_headers(req: &Request) -> Vec<(String, String)> {
    req.headers
        .iter()
        .filter(|(k, _)| !outbound::is_hop_by_hop(k) && !k.eq_ignore_ascii_case(TUNNEL_HOP_HEADER))
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
        return super::router::error_reply(&ApiError::not_found("No path to node"));
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
        Err(TunnelError::NoConnection) => {
            return super::router::error_reply(&ApiError::not_found("No path to node"))
        }
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

fn to_servers(servers: &ServerList, req: &Request) -> Reply {
    let list = servers();
    if list.is_empty() {
        return super::router::error_reply(&ApiError::internal("no servers"));
    }
    let deadline = reply_deadline(req);
    let target = outbound::encode_target(&req.path, &req.query);
    let headers = pass_headers(req);
    let mut last = String::new();
    for addr in &list {
        // Fail over only while nothing was sent: a write is never sent twice.
        let Some(mut stream) = dial(addr, &mut last) else {
            continue;
        };
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
            Ok(reply) => reply,
            Err(e) => {
                log::warn!("forward: a request to server {addr} failed: {e}");
                super::router::error_reply(&ApiError::internal(format!("rpc error: {e}")))
            }
        };
    }
    log::warn!("forward: no server answered: {last}");
    super::router::error_reply(&ApiError::internal("no servers"))
}

fn dial(addr: &str, last: &mut String) -> Option<RawStream> {
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
    match TcpStream::connect_timeout(&sock, SERVER_DIAL_TIMEOUT) {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Some(RawStream::from(s))
        }
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
}
