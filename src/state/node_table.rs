//! The server's node table: what a client registered (identity, attributes, resources,
//! drivers), and what the server keeps of it (status, eligibility, metadata, events, indexes).
//! Changed only by the node commands of `state::command::apply`; the client's own files (its
//! ID, its dynamic metadata) stay in `state::node`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::status::{NodeEligibility, NodeStatus};

/// Nomad keeps this many events per node (`MaxRetainedNodeEvents`).
pub const MAX_NODE_EVENTS: usize = 10;

/// One node event (`structs.NodeEvent`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub message: String,
    pub subsystem: String,
    #[serde(default)]
    pub details: Option<BTreeMap<String, String>>,
    /// Unix nanoseconds, chosen by the proposer.
    pub timestamp: i64,
    #[serde(default)]
    pub create_index: u64,
}

/// A node as the server keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub http_addr: String,
    /// The node's HTTP API speaks TLS.
    #[serde(default)]
    pub tls_enabled: bool,
    pub node_pool: String,
    pub node_class: String,
    pub version: String,
    pub attributes: BTreeMap<String, String>,
    /// Static and dynamic metadata merged (what the node's `Meta` shows).
    pub meta: BTreeMap<String, String>,
    /// `NodeResources` as the client fingerprinted them.
    pub resources: Value,
    /// `Drivers` as the client fingerprinted them.
    pub drivers: Value,
    /// `initializing`, `ready`, `down` or `disconnected` (serde: Nomad's word).
    pub status: NodeStatus,
    pub status_description: String,
    /// Unix seconds of the last status change.
    pub status_updated_at: i64,
    /// `eligible` or `ineligible` (serde: Nomad's word).
    pub scheduling_eligibility: NodeEligibility,
    pub drain: bool,
    pub events: Vec<NodeEvent>,
    pub create_index: u64,
    pub modify_index: u64,
    /// The node's secret, set by its first registration: every later call from the node
    /// must carry it. Never in API JSON, never logged (old logs and snapshots: empty).
    #[serde(default)]
    pub secret_id: String,
}
