//! [`Agent`]: every piece of the agent the API serves, shared by every thread through `Arc`.
//! Built and owned by `crate::agent` (load, start, ordered shutdown); defined here so the API
//! sees it without pointing back up at the module that runs it.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::client::link::ServerLink;
use crate::client::node::NodeState;
use crate::client::Client;
use crate::config::Config;
use crate::fs::watch::SharedWatcher;
use crate::http::Server;
use crate::meta_batcher::Batcher;
use crate::server::heartbeat::Heartbeats;
use crate::state::acl::AclState;
use crate::state::jobs::Workloads;
use crate::state::members::Membership;
use crate::state::IndexCounter;

/// Everything the agent knows, shared by every thread through `Arc`.
pub struct Agent {
    pub config: Config,
    pub index: Arc<IndexCounter>,
    pub node: Arc<NodeState>,
    pub membership: Membership,
    pub workloads: Arc<Workloads>,
    /// The client's one way to the server state (in process: `LocalLink`).
    pub link: Arc<dyn ServerLink>,
    pub client: Arc<Client>,
    pub acl: Arc<AclState>,
    pub fs_watch: SharedWatcher,
    pub batcher: Batcher,
    /// The server's heartbeat timers (running on a server with its RPC port open).
    pub heartbeats: Arc<Heartbeats>,
    /// The server's node drainer (its thread runs while a node drains).
    pub drainer: Arc<crate::server::drainer::Drainer>,
    /// The server's periodic dispatcher (a leader duty; its thread runs while a periodic
    /// job is active).
    pub periodic: Arc<crate::server::periodic::PeriodicDispatcher>,
    /// The HTTP server, set once listening (the Task API adds Unix listeners to it).
    pub http: OnceLock<Arc<Server>>,
    /// Server membership (foca gossip on the serf port), set once started; unset when the
    /// agent does not gossip (`Config::gossips`: client-only, or `-dev` without `ports.serf`).
    pub gossip: OnceLock<Arc<crate::gossip::Gossip>>,
    /// TLS certificates and configurations (`tls.http` or `tls.rpc`), reloaded on SIGHUP.
    pub tls: Option<Arc<crate::tls::AgentTls>>,
    pub started_at: SystemTime,
    /// Where requests this agent cannot answer go (tunnels to nodes on a server, the
    /// servers on a client-only agent); set once by the composition root per role. Unset:
    /// every request is answered here.
    pub forwarding: OnceLock<super::forward::Forwarding>,
    /// Who leads the servers, as this server sees it (Raft when it runs; otherwise this
    /// server alone: `SoleServer`). Set once by the composition root on a server; unset on a
    /// client-only agent.
    pub leadership: OnceLock<Arc<dyn crate::state::leader::Leadership>>,
    /// The server's Raft, set once it runs (a server with an RPC port, not `-dev`).
    pub raft: OnceLock<Arc<crate::raft::Raft>>,
}
