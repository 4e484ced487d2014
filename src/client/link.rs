//! The one way the client reaches server state: [`ServerLink`]. Register the node, heartbeat,
//! pull the allocations for this node newer than an index (blocking, with a deadline), push
//! alloc updates (many per call) and push the node's metadata. Requests and replies are plain
//! serde structs so a network implementation can carry them as JSON; the in-process one is
//! `server::local_link::LocalLink`. The client never touches server tables and the server
//! never calls into the client: runners start and stop because the client pulled a change.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::jobs::alloc::{AllocRecord, TaskState};
use crate::state::status::{AllocClientStatus, NodeStatus};

/// The header every call but register carries the node's secret in (over the RPC port).
pub const NODE_SECRET_HEADER: &str = "X-Nomad-Node-Secret";

/// Longest a single pull waits for a change before it answers with nothing new.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(10);

/// How often the client heartbeats when the server does not say otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// The RPC path a client upgrades into a tunnel (server → client requests on a
/// client-opened connection).
pub const TUNNEL_PATH: &str = "/v1/rpc/tunnel";

/// The `Upgrade:` protocol token of a tunnel.
pub const TUNNEL_PROTOCOL: &str = "nomadlet-tunnel/1";

/// Set by the client's tunnel handler on every request that came down a tunnel: such a
/// request is answered where it arrived and never forwarded again (no forwarding loops between
/// a client and its server when the two disagree about where an alloc is).
pub const TUNNEL_HOP_HEADER: &str = "X-Nomadlet-Via-Tunnel";

/// The tunnel-only path on which the server says "your allocs changed" (`?index=N`); served
/// on tunnels alone, never on the client's own HTTP port.
pub const TUNNEL_PUSH_PATH: &str = "/v1/tunnel/allocs";

/// `register_node`: who this node is and what it fingerprinted — everything of the server's
/// node record the client knows (the server keeps its own indexes, events, eligibility and
/// drain).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node_id: String,
    pub name: String,
    pub datacenter: String,
    /// `host:port` of the node's HTTP API.
    pub http_addr: String,
    /// The node's HTTP API speaks TLS.
    pub tls_enabled: bool,
    pub node_pool: String,
    pub node_class: String,
    /// The agent's version.
    pub version: String,
    /// Fingerprinted attributes (`kernel.name`, `os.name`, `cpu.numcores`, ...).
    pub attributes: BTreeMap<String, String>,
    /// The node's metadata (static merged with dynamic) at registration.
    pub meta: BTreeMap<String, String>,
    /// `NodeResources` as fingerprinted (an opaque document the server stores as it is).
    pub resources: serde_json::Value,
    /// `Drivers` as fingerprinted (opaque to the link, like `resources`).
    pub drivers: serde_json::Value,
    /// The status the node registers with (`ready` once fingerprinted).
    pub status: NodeStatus,
    /// The node's secret, kept by the server on first registration; a later registration
    /// with another secret is refused. Never logged.
    #[serde(default)]
    pub secret_id: String,
}

/// The answer to a registration or a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Heartbeat again within this many milliseconds.
    pub ttl_ms: u64,
    /// The server's index when it answered.
    pub index: u64,
    /// The RPC addresses (`ip:port`) of the region's live servers: the client replaces its
    /// server list with them (ref §5.2). Empty from an in-process server or an older one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

/// `heartbeat`: this node is alive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
}

/// `pull_allocs`: the allocations of `node_id` changed after `min_index`, waiting up to
/// `wait_ms` (at most [`MAX_PULL_WAIT`]) for one to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullAllocs {
    pub node_id: String,
    pub min_index: u64,
    pub wait_ms: u64,
}

/// The answer to a pull.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PulledAllocs {
    /// Pull again with this as `min_index`.
    pub index: u64,
    /// Every allocation the server places on this node now (one that is gone was removed).
    pub alloc_ids: Vec<String>,
    /// The full records of those changed after `min_index`.
    pub changed: Vec<AllocRecord>,
}

/// What the client changed of one allocation: task states (whole, per task), its client
/// status, and whether its alloc dir was collected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocUpdate {
    pub alloc_id: String,
    pub tasks: BTreeMap<String, TaskState>,
    /// `(ClientStatus, ClientDescription)` when the client sets them itself.
    pub client_status: Option<(AllocClientStatus, String)>,
    pub collected: bool,
}

/// `push_alloc_updates`: one or more updates, made durable together before the answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocUpdates {
    pub node_id: String,
    pub updates: Vec<AllocUpdate>,
}

/// The allocations as the server keeps them after the updates (unknown ones are left out).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdatedAllocs {
    pub allocs: Vec<AllocRecord>,
}

/// `push_meta`: the node's metadata (static merged with dynamic) for its node record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub node_id: String,
    pub meta: BTreeMap<String, String>,
}

/// The answer to a metadata push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaReply {
    /// The node record's new modify index.
    pub index: u64,
}

/// One workload identity a task asks for (today only Nomad's `default` identity).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentityRequest {
    /// The identity's name (`default`).
    pub name: String,
    /// Its audience (`nomadproject.io` for the default identity).
    pub audience: String,
}

/// `sign_identities`: the identities task `task` of allocation `alloc_id` (on `node_id`)
/// needs. The server builds every claim from its own alloc record, never from the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignIdentities {
    pub node_id: String,
    pub alloc_id: String,
    pub task: String,
    pub identities: Vec<IdentityRequest>,
}

/// One signed identity: its name and the compact JWT. Debug never shows the JWT.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedIdentity {
    pub name: String,
    pub jwt: String,
}

impl fmt::Debug for SignedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The answer to `sign_identities`, in the order asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedIdentities {
    pub identities: Vec<SignedIdentity>,
}

/// Whose rights a client-only agent asks the server for.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum AclSubject {
    /// An ACL token, by its secret.
    Token { secret_id: String },
    /// A request without a token: the `anonymous` policy.
    Anonymous,
    /// A workload identity (verified by the client): the policies attached to its job,
    /// group or task.
    Workload {
        namespace: String,
        job_id: String,
        group: Option<String>,
        task: String,
    },
}

// A token's secret never reaches a log line.
impl fmt::Debug for AclSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclSubject::Token { .. } => f.write_str("Token { .. }"),
            AclSubject::Anonymous => f.write_str("Anonymous"),
            AclSubject::Workload {
                namespace,
                job_id,
                group,
                task,
            } => write!(f, "Workload({namespace}/{job_id}/{group:?}/{task})"),
        }
    }
}

/// `resolve_acl`: the rights of `subject`, for a client-only agent's callers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolveAcl {
    pub node_id: String,
    pub subject: AclSubject,
}

/// One policy as the server keeps it: its name and rules text (the client parses it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRules {
    pub name: String,
    pub rules: String,
}

/// The answer to `resolve_acl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolvedAcl {
    /// The token (`Token` subjects), `None` when the server knows no token with that secret.
    pub token: Option<crate::acl::tokens::AclToken>,
    /// The policies that apply: the token's (none for a management token), the anonymous
    /// policy, or those attached to the workload. Names the server does not know are left out.
    pub policies: Vec<PolicyRules>,
}

/// `public_keys`: the keys workload identities are signed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicKeysRequest {
    pub node_id: String,
}

/// The public part of a signing key, as a JWK names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub kid: String,
    /// The RSA modulus, base64url without padding.
    pub n: String,
    /// The RSA public exponent, base64url without padding.
    pub e: String,
}

/// The answer to `public_keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicKeys {
    pub keys: Vec<PublicKey>,
}

/// Why a call over the link failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkError {
    /// The server does not know this node (register first).
    UnknownNode(String),
    /// The server could not make the change durable; nothing of it is visible.
    Persist(String),
    /// The server is shutting down (or this link was closed by its agent).
    Closed,
    /// The server refused the node's secret ("Permission denied").
    PermissionDenied,
    /// The server refused the request as malformed (its text).
    BadRequest(String),
    /// No server could be reached or answered in time (the last failure's text).
    Unreachable(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::UnknownNode(id) => write!(f, "unknown node {id}"),
            LinkError::Persist(e) => write!(f, "server could not persist the change: {e}"),
            LinkError::Closed => f.write_str("server is shutting down"),
            LinkError::PermissionDenied => f.write_str("Permission denied"),
            LinkError::BadRequest(why) => write!(f, "server refused the request: {why}"),
            LinkError::Unreachable(why) => write!(f, "no server reachable: {why}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// The client's whole view of the server.
pub trait ServerLink: Send + Sync {
    fn register_node(&self, req: &NodeRegistration) -> Result<HeartbeatReply, LinkError>;
    fn heartbeat(&self, req: &Heartbeat) -> Result<HeartbeatReply, LinkError>;
    /// Blocks until an allocation of the node changed after `min_index`, the wait passed, or
    /// the server shuts down (then `Err(Closed)`). It may answer early with nothing changed.
    fn pull_allocs(&self, req: &PullAllocs) -> Result<PulledAllocs, LinkError>;
    fn push_alloc_updates(&self, req: &AllocUpdates) -> Result<UpdatedAllocs, LinkError>;
    fn push_meta(&self, req: &NodeMeta) -> Result<MetaReply, LinkError>;
    /// Sign a task's workload identities with the server's key: the alloc must be on the
    /// calling node and not terminal. The client holds no signing key.
    fn sign_identities(&self, _req: &SignIdentities) -> Result<SignedIdentities, LinkError> {
        Err(LinkError::BadRequest(
            "identity signing is not supported by this link".into(),
        ))
    }
    /// The token and policies behind a caller of a client-only agent (which keeps no ACL
    /// state; `client::authz` caches the answers).
    fn resolve_acl(&self, _req: &ResolveAcl) -> Result<ResolvedAcl, LinkError> {
        Err(LinkError::BadRequest(
            "ACL resolution is not supported by this link".into(),
        ))
    }
    /// The public keys workload identities are verified with.
    fn public_keys(&self, _req: &PublicKeysRequest) -> Result<PublicKeys, LinkError> {
        Err(LinkError::BadRequest(
            "public keys are not supported by this link".into(),
        ))
    }
    /// The agent is stopping: blocking pulls in flight end (`Err(Closed)`) and later pulls
    /// fail at once; other calls (the client's last updates) still go through. The
    /// in-process link's pulls end with the index counter, so it needs nothing here.
    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_json() {
        let mut tasks = BTreeMap::new();
        tasks.insert("t".to_string(), TaskState::pending());
        let up = AllocUpdates {
            node_id: "n".into(),
            updates: vec![AllocUpdate {
                alloc_id: "a".into(),
                tasks,
                client_status: Some((AllocClientStatus::Complete, String::new())),
                collected: true,
            }],
        };
        let text = serde_json::to_string(&up).unwrap();
        assert_eq!(serde_json::from_str::<AllocUpdates>(&text).unwrap(), up);
        let e = LinkError::UnknownNode("x".into());
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<LinkError>(&text).unwrap(), e);
    }
}
