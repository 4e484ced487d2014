//! `alloc exec` of an allocation this agent does not run (ref §5.6): the websocket upgrade
//! request goes where the alloc is — on a server, down the node's tunnel (or via the server
//! holding one); on a client-only agent, to one of its servers, which passes it on — and once
//! the far end answered 101, the requester's connection and the far one are spliced
//! (`http::Splice`): the websocket frames pass through unchanged. The node that runs the alloc
//! checks everything exec checks locally (alloc, `alloc-exec` and `alloc-node-exec`, task,
//! command, handshake); a server only accepts the token before it forwards, as for every
//! client request. Anything but a 101 comes back as a forwarded reply does.

use std::time::{Duration, Instant};

use crate::http::{outbound, Method, RawStream, Reply, Request, Splice, Status};
use crate::state::leader::LEADER_HOP_HEADER;

use super::forward::{self, ServerList, MAX_INLINE_REPLY, NO_PATH};
use super::{Agent, ApiError};

/// Longest the far end may take to answer the upgrade (it starts the command first).
pub const EXEC_UPGRADE_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `req` is an exec websocket upgrade (`GET …/allocation/:id/exec` with
/// `Upgrade: websocket`): the one upgrade the API passes on. An exec request without it is
/// forwarded as any request is, and refused where it lands.
pub fn is_exec_upgrade(req: &Request) -> bool {
    req.method == Method::Get
        && req.path.starts_with("/v1/client/allocation/")
        && req.path.ends_with("/exec")
        && req
            .header("Upgrade")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Send the upgrade request on `stream` and read the answer's head by `deadline`: a 101
/// becomes this agent's own 101 that splices the two connections; anything else is relayed.
fn upgrade_on(
    mut stream: RawStream,
    host: &str,
    req: &Request,
    headers: &[(String, String)],
    deadline: Instant,
) -> std::io::Result<Reply> {
    let target = outbound::encode_target(&req.path, &req.query);
    outbound::write_upgrade_request(
        &mut stream,
        req.method.as_str(),
        &target,
        host,
        headers,
        "websocket",
        deadline,
    )?;
    let incoming = outbound::read_reply_while(stream, deadline, false, &|| req.peer_gone())?;
    if incoming.status != 101 {
        return incoming.into_reply(MAX_INLINE_REPLY, deadline);
    }
    let reply_headers: Vec<(String, String)> = incoming
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("connection"))
        .cloned()
        .collect();
    let (stream, ahead) = incoming.into_upgraded();
    Ok(Reply::upgrade(
        reply_headers,
        Box::new(Splice::new(stream, ahead)),
    ))
}

fn error(e: ApiError) -> Reply {
    super::router::error_reply(&e)
}

/// On a server: the exec of an alloc on `node`, down one of its tunnels parked here, else
/// through the server that holds one.
pub fn to_node(agent: &Agent, node: &str, req: &Request) -> Reply {
    let Some(pool) = agent.forwarding.get().and_then(|f| f.tunnels.clone()) else {
        return error(ApiError::not_found(NO_PATH));
    };
    let deadline = Instant::now() + EXEC_UPGRADE_TIMEOUT;
    let Some(stream) = pool.take_wait(node, deadline) else {
        return via_peer_servers(agent, node, req);
    };
    match upgrade_on(stream, "node", req, &forward::pass_headers(req), deadline) {
        Ok(reply) => reply,
        Err(e) => {
            log::warn!("exec: the upgrade to node {node} failed: {e}");
            error(ApiError::internal(format!(
                "rpc error: node connection failed: {e}"
            )))
        }
    }
}

/// No tunnel of `node` is parked here: ask the other servers in turn, marked as passed on
/// (so each answers from its own tunnels only); the first answer other than `No path to
/// node` is the reply.
fn via_peer_servers(agent: &Agent, node: &str, req: &Request) -> Reply {
    let no_path = || error(ApiError::not_found(NO_PATH));
    if req.header(LEADER_HOP_HEADER).is_some() {
        return no_path();
    }
    let Some(peers) = agent.forwarding.get().and_then(|f| f.peers.clone()) else {
        return no_path();
    };
    let own = agent.config.rpc_addr();
    let mut headers = forward::pass_headers(req);
    headers.push((LEADER_HOP_HEADER.to_string(), own.clone()));
    let deadline = Instant::now() + EXEC_UPGRADE_TIMEOUT;
    for peer in peers().into_iter().filter(|p| *p != own) {
        let mut why = String::new();
        let Some(stream) = forward::dial(agent, &peer, &mut why) else {
            log::debug!("exec: server {peer} not asked about node {node}: {why}");
            continue;
        };
        match upgrade_on(stream, &peer, req, &headers, deadline) {
            Ok(reply) if forward::is_no_path(&reply) => {}
            Ok(reply) => return reply,
            Err(e) => log::debug!("exec: server {peer} failed for node {node}: {e}"),
        }
    }
    no_path()
}

/// On a client-only agent: the exec goes to the server that answered last (else the next),
/// which passes it on to the alloc's node. A server is tried only while nothing was sent.
pub fn to_servers(agent: &Agent, servers: &ServerList, req: &Request) -> Reply {
    let (list, last_server) = forward::servers_last_first(agent, servers);
    let deadline = Instant::now() + EXEC_UPGRADE_TIMEOUT;
    let headers = forward::pass_headers(req);
    let mut why = String::new();
    for addr in &list {
        let Some(stream) = forward::dial(agent, addr, &mut why) else {
            continue;
        };
        *last_server.lock() = Some(addr.clone());
        return match upgrade_on(stream, addr, req, &headers, deadline) {
            Ok(reply) if reply.status == Status::SWITCHING_PROTOCOLS => reply,
            Ok(reply) => forward::rpc_error_hop(reply),
            Err(e) => {
                log::warn!("exec: the upgrade through server {addr} failed: {e}");
                error(ApiError::internal(format!("rpc error: {e}")))
            }
        };
    }
    log::warn!("exec: no server answered: {why}");
    error(ApiError::internal("no servers"))
}
