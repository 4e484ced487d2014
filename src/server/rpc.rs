//! The RPC port: the client ↔ server calls of a cluster, over nomadlet's own HTTP/1.1 layer,
//! as JSON of the serde structs in `client::link`. [`RpcRouter`] serves `/v1/rpc/...` itself
//! and hands every other path to the API router, so the RPC port also answers the whole HTTP
//! API (a client-only agent forwards API requests to it).
//!
//! # Wire format (version 1)
//!
//! Every call is `POST` with a JSON body (`Content-Type: application/json`, at most
//! [`RPC_BODY_LIMIT`] bytes, nested at most `parse_bounds::JSON_MAX_DEPTH` levels) and answers
//! `200` with a JSON body, or an error status with a `text/plain` body (the reason):
//!
//! | Path | Body | Reply |
//! | --- | --- | --- |
//! | `/v1/rpc/node/register` | `NodeRegistration` (carries `secret_id`) | `HeartbeatReply` |
//! | `/v1/rpc/node/heartbeat` | `Heartbeat` | `HeartbeatReply` |
//! | `/v1/rpc/node/allocs` | `PullAllocs` (`min_index`, `wait_ms`; a blocking pull) | `PulledAllocs` |
//! | `/v1/rpc/alloc/updates` | `AllocUpdates` | `UpdatedAllocs` |
//! | `/v1/rpc/node/meta` | `NodeMeta` | `MetaReply` |
//! | `/v1/rpc/identity/sign` | `SignIdentities` (the alloc must be on the node, not terminal) | `SignedIdentities` |
//! | `/v1/rpc/acl/resolve` | `ResolveAcl` (a token's secret, anonymous, or a workload) | `ResolvedAcl` |
//! | `/v1/rpc/acl/keys` | `PublicKeysRequest` | `PublicKeys` |
//!
//! Between servers, `POST /v1/rpc/raft` carries a batch of Raft messages (protobuf, each
//! preceded by its length as 4 big-endian bytes; see `raft::transport`), answered `200` with
//! an empty body, `400` for a batch that does not decode. It needs no node secret.
//!
//! `identity/sign` answers 403 `Permission denied` for an alloc that is unknown or on another
//! node, and 400 for a terminal alloc or a task not in its group; the claims come from the
//! server's alloc record (`server::authz`).
//!
//! Every call but register carries the node's secret in the header `X-Nomad-Node-Secret` (a
//! call with a body and no secret is refused before the body is read); the node named in the
//! body must exist and hold that secret. A register for a known node must
//! carry the secret the node first registered with.
//!
//! `HeartbeatReply.ttl_ms` is the TTL the server chose (ref §2.3): the client heartbeats again
//! within it; the server marks the node down (or disconnected) after TTL + `heartbeat_grace`.
//! A pull answers at once when an alloc of the node changed after `min_index`, else when one
//! changes, else after `min(wait_ms, MAX_PULL_WAIT)` with nothing changed.
//!
//! On a server that is not the leader, the calls that change state (`node/register`,
//! `node/heartbeat`, `alloc/updates`, `node/meta`, `identity/sign`) and `acl/keys` (the
//! leader's signing keys) are passed as they came to the leader's RPC port (marked with
//! `state::leader::LEADER_HOP_HEADER`; one hop at most), and its reply comes back as it is;
//! `node/allocs` is answered from this server's own state (every server applies every entry)
//! unless the node is not known here yet, and `acl/resolve` always. No leader known within
//! `LEADER_WAIT` (5 s): 500 `No cluster leader`, which the client takes as "try the next
//! server".
//!
//! `HeartbeatReply.servers` lists the RPC addresses of the region's live servers (from
//! gossip; a server without gossip lists itself): the client replaces its server list with it
//! (ref §5.2).
//!
//! | Status | Body | Meaning (the client's `LinkError`) |
//! | --- | --- | --- |
//! | 400 | why | malformed body or missing field (`BadRequest`) |
//! | 403 | `Permission denied` (or `node secret ID does not match. Not registering node.`) | wrong or missing secret (`PermissionDenied`) |
//! | 404 | `node not found` | unknown node: register first (`UnknownNode`) |
//! | 404 | `Invalid RPC` | a path under `/v1/rpc/` that names no call |
//! | 405 | `Invalid method` | not `POST` |
//! | 500 | why | the change could not be made durable; nothing of it is visible (`Persist`) |
//! | 500 | `No cluster leader` | no leader to pass a write to (the client tries the next server) |
//! | 503 | `server is shutting down` | (`Closed`) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::link::{
    AllocUpdates, Heartbeat, HeartbeatReply, LinkError, MetaReply, NodeMeta, NodeRegistration,
    PullAllocs, PulledAllocs, UpdatedAllocs, MAX_PULL_WAIT,
};
use crate::http::{Handler, Method, Reply, Request, RequestHead, Status};
use crate::server::heartbeat::Heartbeats;
use crate::state::command::Command;
use crate::state::jobs::Workloads;
use crate::state::leader::{Leadership, Route, LEADER_HOP_HEADER, NO_LEADER};
use crate::state::node_table::{Node, NodeEvent};
use crate::state::status::NodeStatus;
use crate::state::IndexCounter;

pub use crate::client::link::NODE_SECRET_HEADER;

/// The prefix of the RPC paths; everything else on the RPC port is the HTTP API.
pub const RPC_PREFIX: &str = "/v1/rpc/";

/// Largest body of an RPC call (a registration's attributes, a batch of alloc updates with
/// their task states and events).
pub const RPC_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The path of the Raft transport between servers.
pub const RAFT_CALL: &str = "/v1/rpc/raft";

/// Why a Raft batch was refused (its Display is the 400's text).
pub type InboxError = Box<dyn std::error::Error + Send + Sync>;

/// Where `POST /v1/rpc/raft` batches go (the Raft driver of this server).
pub trait RaftInbox: Send + Sync {
    /// Decode (bounded) and queue one batch; `Err`: why it does not decode.
    fn deliver(&self, body: &[u8]) -> Result<(), InboxError>;
    /// Largest batch accepted.
    fn body_limit(&self) -> usize;
}

/// How often a parked pull looks whether its client went away.
const PULL_PEER_CHECK: Duration = Duration::from_millis(500);

/// Longest a call waits for a leader to be known before `No cluster leader` (Nomad's
/// `RPCHoldTimeout`).
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Longest a connect to the leader may take.
pub const LEADER_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a call passed to the leader waits for its reply (a pull adds its wait).
pub const LEADER_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A reply the leader sends back is relayed whole up to this size (a pull of many allocs is
/// the large one), else piped.
const LEADER_REPLY_INLINE: usize = 4 * 1024 * 1024;

/// The RPC addresses of the servers a client should know (set by the composition root).
pub type ServerAddrs = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// What an RPC call can fail with, as the wire carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcError {
    BadRequest(String),
    PermissionDenied(&'static str),
    UnknownNode,
    Persist(String),
    Closed,
    /// A path under `/v1/rpc/` that names no call.
    NoSuchCall,
    /// A call only the leader answers, with no leader to pass it to (or none answering):
    /// `No cluster leader` or the hop's error. 500: the client tries the next server.
    NoLeader(String),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::BadRequest(why) | RpcError::Persist(why) | RpcError::NoLeader(why) => {
                f.write_str(why)
            }
            RpcError::PermissionDenied(why) => f.write_str(why),
            RpcError::UnknownNode => f.write_str("node not found"),
            RpcError::Closed => f.write_str("server is shutting down"),
            RpcError::NoSuchCall => f.write_str("Invalid RPC"),
        }
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    fn reply(&self) -> Reply {
        let (status, text) = match self {
            RpcError::BadRequest(why) => (Status::BAD_REQUEST, why.clone()),
            RpcError::PermissionDenied(why) => (Status::FORBIDDEN, (*why).to_string()),
            RpcError::UnknownNode => (Status::NOT_FOUND, "node not found".to_string()),
            RpcError::NoSuchCall => (Status::NOT_FOUND, "Invalid RPC".to_string()),
            RpcError::Persist(why) | RpcError::NoLeader(why) => {
                (Status::INTERNAL_SERVER_ERROR, why.clone())
            }
            RpcError::Closed => (
                Status::SERVICE_UNAVAILABLE,
                "server is shutting down".to_string(),
            ),
        };
        Reply::bytes(status, "text/plain; charset=utf-8", text.into_bytes())
    }
}

/// The server side of the calls: the server state, its index counter, the heartbeat timers.
pub struct RpcService {
    workloads: Arc<Workloads>,
    index: Arc<IndexCounter>,
    heartbeats: Arc<Heartbeats>,
    /// The ACL tables and signing keys behind the authentication calls.
    acl: Option<Arc<crate::state::acl::AclState>>,
    /// The live servers' RPC addresses, sent in every register/heartbeat reply.
    servers: Option<ServerAddrs>,
}

impl RpcService {
    /// The authentication calls (`identity/sign`, `acl/*`) answer from `acl`.
    pub fn with_acl(mut self, acl: Arc<crate::state::acl::AclState>) -> RpcService {
        self.acl = Some(acl);
        self
    }

    /// Register and heartbeat replies list `servers()` (ref §5.2).
    pub fn with_servers(mut self, servers: ServerAddrs) -> RpcService {
        self.servers = Some(servers);
        self
    }

    fn acl_state(&self) -> Result<&crate::state::acl::AclState, RpcError> {
        self.acl
            .as_deref()
            .ok_or_else(|| RpcError::BadRequest("this server keeps no ACL state".into()))
    }

    /// Sign a task's identities for the calling node (`server::authz`).
    pub fn sign_identities(
        &self,
        req: &crate::client::link::SignIdentities,
        secret: Option<&str>,
    ) -> Result<crate::client::link::SignedIdentities, RpcError> {
        self.authorize(&req.node_id, secret)?;
        let acl = self.acl_state()?;
        super::authz::sign_identities(&self.workloads, &acl.keys, &req.node_id, req).map_err(|e| {
            match e {
                super::authz::SignError::NotYourAlloc => {
                    RpcError::PermissionDenied("Permission denied")
                }
                super::authz::SignError::Keys(_) => RpcError::Persist(e.to_string()),
                other => RpcError::BadRequest(other.to_string()),
            }
        })
    }

    /// Resolve a caller of the calling (client-only) node.
    pub fn resolve_acl(
        &self,
        req: &crate::client::link::ResolveAcl,
        secret: Option<&str>,
    ) -> Result<crate::client::link::ResolvedAcl, RpcError> {
        self.authorize(&req.node_id, secret)?;
        Ok(super::authz::resolve_acl(self.acl_state()?, req))
    }

    /// The public keys identities are verified with.
    pub fn public_keys(
        &self,
        req: &crate::client::link::PublicKeysRequest,
        secret: Option<&str>,
    ) -> Result<crate::client::link::PublicKeys, RpcError> {
        self.authorize(&req.node_id, secret)?;
        super::authz::public_keys(&self.acl_state()?.keys)
            .map_err(|e| RpcError::Persist(e.to_string()))
    }

    pub fn new(
        workloads: Arc<Workloads>,
        index: Arc<IndexCounter>,
        heartbeats: Arc<Heartbeats>,
    ) -> RpcService {
        RpcService {
            workloads,
            index,
            heartbeats,
            acl: None,
            servers: None,
        }
    }

    /// The node `node_id`, if `secret` is its secret. An unknown node is `UnknownNode` (the
    /// client registers again); a node registered before secrets existed accepts any.
    fn authorize(&self, node_id: &str, secret: Option<&str>) -> Result<Arc<Node>, RpcError> {
        let node = self.workloads.node(node_id).ok_or(RpcError::UnknownNode)?;
        let given = secret.unwrap_or("");
        if node.secret_id.is_empty()
            || (!given.is_empty()
                && crate::encoding::constant_time_eq(node.secret_id.as_bytes(), given.as_bytes()))
        {
            Ok(node)
        } else {
            Err(RpcError::PermissionDenied("Permission denied"))
        }
    }

    fn reply(&self, ttl: Duration) -> HeartbeatReply {
        HeartbeatReply {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            index: self.index.current(),
            servers: self.servers.as_ref().map(|f| f()).unwrap_or_default(),
        }
    }

    /// Register (or re-register) a node. A new node starts `initializing` (its first
    /// heartbeat makes it `ready`); a known node keeps its status (ref §2.1).
    pub fn register(&self, req: &NodeRegistration) -> Result<HeartbeatReply, RpcError> {
        for (value, what) in [
            (&req.node_id, "node ID"),
            (&req.secret_id, "node secret ID"),
            (&req.datacenter, "datacenter"),
            (&req.name, "node name"),
        ] {
            if value.is_empty() {
                return Err(RpcError::BadRequest(format!(
                    "missing {what} for client registration"
                )));
            }
        }
        if req.node_pool == "all" {
            return Err(RpcError::BadRequest(
                "node is not allowed to register in node pool \"all\"".into(),
            ));
        }
        let old = self.workloads.node(&req.node_id);
        if let Some(old) = &old {
            let same = crate::encoding::constant_time_eq(
                old.secret_id.as_bytes(),
                req.secret_id.as_bytes(),
            );
            if !old.secret_id.is_empty() && !same {
                return Err(RpcError::PermissionDenied(
                    "node secret ID does not match. Not registering node.",
                ));
            }
        }
        let mut node = super::local_link::node_record(req);
        node.status = old.as_ref().map_or(NodeStatus::Initializing, |o| o.status);
        let index = self
            .workloads
            .register_node(node)
            .map_err(|e| RpcError::Persist(e.to_string()))?;
        self.index.notify();
        log::debug!("node {} registered at index {index}", req.node_id);
        let status = old.as_ref().map_or(NodeStatus::Initializing, |o| o.status);
        let ttl = if status == NodeStatus::Down {
            self.heartbeats.ttl()
        } else {
            self.heartbeats.reset(&req.node_id)
        };
        Ok(self.reply(ttl))
    }

    /// A heartbeat: re-arm the node's timer; a node not `ready` becomes `ready` (from
    /// `disconnected`: `initializing` first, ref §2.2).
    pub fn heartbeat(
        &self,
        req: &Heartbeat,
        secret: Option<&str>,
    ) -> Result<HeartbeatReply, RpcError> {
        let node = self.authorize(&req.node_id, secret)?;
        let ttl = self.heartbeats.reset(&req.node_id);
        bring_up(&self.workloads, &self.index, &node)?;
        Ok(self.reply(ttl))
    }

    /// A blocking pull of the node's allocations.
    pub fn pull(
        &self,
        req: &PullAllocs,
        secret: Option<&str>,
        gone: &dyn Fn() -> bool,
    ) -> Result<PulledAllocs, RpcError> {
        self.authorize(&req.node_id, secret)?;
        pull_node_allocs(&self.workloads, &self.index, req, gone).map_err(|e| match e {
            LinkError::Closed => RpcError::Closed,
            other => RpcError::Persist(other.to_string()),
        })
    }

    pub fn alloc_updates(
        &self,
        req: &AllocUpdates,
        secret: Option<&str>,
    ) -> Result<UpdatedAllocs, RpcError> {
        self.authorize(&req.node_id, secret)?;
        let reply = apply_alloc_updates(&self.workloads, req)
            .map_err(|e| RpcError::Persist(e.to_string()))?;
        self.index.notify();
        Ok(reply)
    }

    pub fn meta(&self, req: &NodeMeta, secret: Option<&str>) -> Result<MetaReply, RpcError> {
        self.authorize(&req.node_id, secret)?;
        let index = match self
            .workloads
            .update_node_meta(&req.node_id, req.meta.clone())
        {
            Ok(Some(index)) => index,
            Ok(None) => return Err(RpcError::UnknownNode),
            Err(e) => return Err(RpcError::Persist(e.to_string())),
        };
        self.index.notify();
        Ok(MetaReply { index })
    }
}

/// A heartbeat of `node` arrived: a node not `ready` becomes `ready` (from `disconnected`:
/// `initializing` first; from `down` with the event "Node reregistered by heartbeat").
pub fn bring_up(workloads: &Workloads, index: &IndexCounter, node: &Node) -> Result<(), RpcError> {
    let (next, event) = match node.status {
        NodeStatus::Ready => return Ok(()),
        NodeStatus::Initializing => (NodeStatus::Ready, None),
        NodeStatus::Disconnected => (NodeStatus::Initializing, None),
        NodeStatus::Down => (NodeStatus::Ready, Some("Node reregistered by heartbeat")),
    };
    let now = crate::time::unix_now_nanos();
    let cmd = Command::NodeUpdateStatus {
        node_id: node.id.clone(),
        status: next,
        description: String::new(),
        event: event.map(|message| NodeEvent {
            message: message.into(),
            subsystem: "Cluster".into(),
            details: None,
            timestamp: now,
            create_index: 0,
        }),
        now,
    };
    let changed = workloads
        .propose_node(cmd)
        .map_err(|e| RpcError::Persist(e.to_string()))?;
    if changed.is_none() {
        return Err(RpcError::UnknownNode);
    }
    index.notify();
    log::info!("node {} is {next} (heartbeat)", node.id);
    Ok(())
}

/// Wait until an alloc of `req.node_id` changed after `req.min_index` (or the wait passed, or
/// `gone()` says nobody waits for the answer any more), then answer the node's allocs.
pub fn pull_node_allocs(
    workloads: &Workloads,
    index: &IndexCounter,
    req: &PullAllocs,
    gone: &dyn Fn() -> bool,
) -> Result<PulledAllocs, LinkError> {
    let deadline = Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_PULL_WAIT);
    loop {
        // The generation first: a change published after this read wakes the wait below.
        let generation = index.generation();
        let state = workloads.state();
        if !state.nodes.contains_key(&req.node_id) {
            // Unknown, or purged while the client waited: it must register again.
            return Err(LinkError::UnknownNode(req.node_id.clone()));
        }
        let changed = state
            .allocs
            .values()
            .any(|a| a.node_id == req.node_id && a.modify_index > req.min_index);
        let now = Instant::now();
        let answer = now >= deadline || changed || gone();
        if answer {
            let mut reply = PulledAllocs {
                index: state.index,
                alloc_ids: Vec::new(),
                changed: Vec::new(),
            };
            for a in state.allocs.values().filter(|a| a.node_id == req.node_id) {
                reply.alloc_ids.push(a.id.to_string());
                if a.modify_index > req.min_index {
                    reply.changed.push((**a).clone());
                }
            }
            return Ok(reply);
        }
        if index.is_closed() {
            return Err(LinkError::Closed);
        }
        index.wait_for_change(generation, deadline.min(now + PULL_PEER_CHECK));
    }
}

/// Apply a node's alloc updates (allocs of other nodes are left alone) as commands.
pub fn apply_alloc_updates(
    workloads: &Workloads,
    req: &AllocUpdates,
) -> Result<UpdatedAllocs, crate::store::StoreError> {
    let mut allocs = Vec::new();
    for up in &req.updates {
        let updated = workloads.update_alloc(&up.alloc_id, |a| {
            if a.node_id != req.node_id {
                return;
            }
            for (name, ts) in &up.tasks {
                a.task_states.insert(name.clone(), ts.clone());
            }
            if let Some((status, description)) = &up.client_status {
                a.client_status = *status;
                a.client_description = crate::state::shared_str::SharedStr::common(description);
            }
            a.collected |= up.collected;
        })?;
        allocs.extend(updated);
    }
    Ok(UpdatedAllocs { allocs })
}

/// The RPC port's handler: `/v1/rpc/...` here, everything else to `api`.
pub struct RpcRouter {
    service: Arc<RpcService>,
    api: Arc<dyn Handler>,
    /// Where upgraded tunnels are parked (`GET /v1/rpc/tunnel`); none: tunnels are refused.
    tunnels: Option<Arc<crate::server::tunnel::TunnelPool>>,
    /// Who leads, and this server's RPC address: a follower passes write calls to the leader.
    leadership: Option<(Arc<dyn Leadership>, Option<std::net::SocketAddr>)>,
    /// Where Raft batches go; none: `/v1/rpc/raft` is no call here.
    raft: Option<Arc<dyn RaftInbox>>,
    /// How a call passed to the leader reaches its RPC port (mutual TLS with `tls.rpc`).
    connect: crate::http::outbound::Connector,
}

impl RpcRouter {
    pub fn new(service: Arc<RpcService>, api: Arc<dyn Handler>) -> RpcRouter {
        RpcRouter {
            service,
            api,
            tunnels: None,
            leadership: None,
            raft: None,
            connect: Arc::new(crate::http::outbound::connect_plain),
        }
    }

    /// Reach the leader's RPC port through `connect` (the agent's: TLS with `tls.rpc`).
    pub fn with_connector(mut self, connect: crate::http::outbound::Connector) -> RpcRouter {
        self.connect = connect;
        self
    }

    /// Take Raft batches (`POST /v1/rpc/raft`) into `inbox`.
    pub fn with_raft(mut self, inbox: Arc<dyn RaftInbox>) -> RpcRouter {
        self.raft = Some(inbox);
        self
    }

    /// `POST /v1/rpc/raft`: a batch of Raft messages for this server's driver.
    fn raft(&self, req: &Request) -> Reply {
        let text = |status, why: String| {
            Reply::bytes(status, "text/plain; charset=utf-8", why.into_bytes())
        };
        let Some(inbox) = self.raft.as_ref() else {
            return RpcError::NoSuchCall.reply();
        };
        if req.method != Method::Post {
            return text(Status::METHOD_NOT_ALLOWED, "Invalid method".into());
        }
        match inbox.deliver(&req.body) {
            Ok(()) => text(Status::OK, String::new()),
            Err(why) => text(Status::BAD_REQUEST, why.to_string()),
        }
    }

    /// Pass write calls to the leader while this server (at RPC address `own`) is not it.
    pub fn with_leadership(
        mut self,
        leadership: Arc<dyn Leadership>,
        own: Option<std::net::SocketAddr>,
    ) -> RpcRouter {
        self.leadership = Some((leadership, own));
        self
    }

    /// Whether the call `what` is answered by the leader only.
    fn leader_only(&self, what: &str, req: &Request) -> bool {
        match what {
            "node/register" | "node/heartbeat" | "alloc/updates" | "node/meta"
            | "identity/sign" | "acl/keys" => true,
            // Served from this server's state, unless the node is not known here yet (its
            // registration may still be on its way from the leader).
            "node/allocs" => decode::<PullAllocs>(req)
                .is_ok_and(|p| self.service.workloads.node(&p.node_id).is_none()),
            _ => false,
        }
    }

    /// On a server that does not lead, a leader-only call goes to the leader: its reply, or
    /// `No cluster leader`. `None`: answer here.
    fn pass_to_leader(&self, req: &Request) -> Option<Reply> {
        let (leadership, own) = self.leadership.as_ref()?;
        if leadership.view().is_leader {
            return None;
        }
        let what = &req.path[RPC_PREFIX.len()..];
        if !self.leader_only(what, req) {
            return None;
        }
        let passed_on = req.header(LEADER_HOP_HEADER).is_some();
        let deadline = Instant::now() + LEADER_WAIT;
        let stop = || self.service.index.is_closed() || req.peer_gone();
        let route =
            crate::state::leader::route(leadership.as_ref(), *own, passed_on, deadline, &stop);
        let addr = match route {
            Route::Here => return None,
            Route::Leader(addr) => addr,
            Route::NoLeader | Route::NotReady => {
                return Some(RpcError::NoLeader(NO_LEADER.into()).reply())
            }
        };
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(LEADER_HOP_HEADER))
            .cloned()
            .collect();
        let me = own.map_or_else(|| "?".to_string(), |a| a.to_string());
        headers.push((LEADER_HOP_HEADER.to_string(), me));
        let mut wait = LEADER_CALL_TIMEOUT;
        if what == "node/allocs" {
            wait += MAX_PULL_WAIT;
        }
        let sent = crate::http::outbound::pass_on(
            &addr,
            &*self.connect,
            req,
            &headers,
            LEADER_DIAL_TIMEOUT,
            Instant::now() + wait,
            LEADER_REPLY_INLINE,
        );
        Some(match sent {
            Ok(reply) => reply,
            Err(e) => {
                log::warn!("RPC {what}: the leader at {addr} did not answer: {e}");
                let text = match e {
                    crate::http::outbound::PassError::Connect(_) => NO_LEADER.to_string(),
                    other => format!("rpc error: {other}"),
                };
                RpcError::NoLeader(text).reply()
            }
        })
    }

    /// Accept tunnels from nodes into `pool`.
    pub fn with_tunnels(mut self, pool: Arc<crate::server::tunnel::TunnelPool>) -> RpcRouter {
        self.tunnels = Some(pool);
        self
    }

    /// `GET /v1/rpc/tunnel?node_id=` with `Upgrade: nomadlet-tunnel/1` and the node's
    /// secret: the 101, after which the connection waits in the tunnel pool.
    fn tunnel(&self, req: &Request) -> Result<Reply, RpcError> {
        use crate::server::tunnel;
        let Some(pool) = self.tunnels.as_ref() else {
            return Err(RpcError::BadRequest("tunnels are not served here".into()));
        };
        if req.method != Method::Get {
            return Err(RpcError::BadRequest("Invalid method".into()));
        }
        if !tunnel::wants_tunnel(req.header("Upgrade")) {
            return Err(RpcError::BadRequest(format!(
                "a tunnel needs Upgrade: {}",
                crate::client::link::TUNNEL_PROTOCOL
            )));
        }
        let node_id = req.query("node_id").unwrap_or("");
        let node = self
            .service
            .authorize(node_id, req.header(NODE_SECRET_HEADER))?;
        Ok(tunnel::upgrade_reply(pool, node.id.clone()))
    }

    fn call(&self, req: &Request) -> Result<Vec<u8>, RpcError> {
        if req.method != Method::Post && req.method != Method::Put {
            return Err(RpcError::BadRequest("Invalid method".into()));
        }
        let secret = req.header(NODE_SECRET_HEADER);
        let what = &req.path[RPC_PREFIX.len()..];
        match what {
            "node/register" => encode(&self.service.register(&decode(req)?)?),
            "node/heartbeat" => encode(&self.service.heartbeat(&decode(req)?, secret)?),
            "node/allocs" => {
                let gone = || req.peer_gone();
                encode(&self.service.pull(&decode(req)?, secret, &gone)?)
            }
            "alloc/updates" => encode(&self.service.alloc_updates(&decode(req)?, secret)?),
            "node/meta" => encode(&self.service.meta(&decode(req)?, secret)?),
            "identity/sign" => encode(&self.service.sign_identities(&decode(req)?, secret)?),
            "acl/resolve" => encode(&self.service.resolve_acl(&decode(req)?, secret)?),
            "acl/keys" => encode(&self.service.public_keys(&decode(req)?, secret)?),
            _ => Err(RpcError::NoSuchCall),
        }
    }
}

fn decode<T: DeserializeOwned>(req: &Request) -> Result<T, RpcError> {
    crate::parse_bounds::check_json_depth(&req.body, crate::parse_bounds::JSON_MAX_DEPTH)
        .map_err(|e| RpcError::BadRequest(format!("invalid body: {e}")))?;
    serde_json::from_slice(&req.body)
        .map_err(|e| RpcError::BadRequest(format!("invalid body: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(v).map_err(|e| RpcError::Persist(format!("cannot encode the reply: {e}")))
}

fn is_rpc(path: &str) -> bool {
    path.starts_with(RPC_PREFIX)
}

impl Handler for RpcRouter {
    fn body_limit(&self, head: &RequestHead) -> usize {
        if head.path == RAFT_CALL {
            if let Some(inbox) = &self.raft {
                return inbox.body_limit();
            }
        }
        if is_rpc(&head.path) {
            RPC_BODY_LIMIT
        } else {
            self.api.body_limit(head)
        }
    }

    /// A call other than register without a node secret is refused before its body is read.
    fn admit(&self, req: &Request) -> Option<Reply> {
        if !is_rpc(&req.path) {
            return self.api.admit(req);
        }
        let register = req.path == format!("{RPC_PREFIX}node/register") || req.path == RAFT_CALL;
        let secret = req
            .header(NODE_SECRET_HEADER)
            .is_some_and(|s| !s.is_empty());
        (!register && !secret).then(|| RpcError::PermissionDenied("Permission denied").reply())
    }

    fn handle(&self, req: Request) -> Reply {
        if !is_rpc(&req.path) {
            return self.api.handle(req);
        }
        if req.path == RAFT_CALL {
            return self.raft(&req);
        }
        let result = if req.path == crate::client::link::TUNNEL_PATH {
            self.tunnel(&req)
        } else if let Some(reply) = self.pass_to_leader(&req) {
            return reply;
        } else {
            self.call(&req)
                .map(|body| Reply::bytes(Status::OK, "application/json", body))
        };
        match result {
            Ok(reply) => reply,
            Err(RpcError::BadRequest(why)) if why == "Invalid method" => Reply::bytes(
                Status::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                why.into_bytes(),
            ),
            Err(e) => e.reply(),
        }
    }
}
