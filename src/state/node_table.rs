//! The server's node table: what a client registered (identity, attributes, resources,
//! drivers), and what the server keeps of it (status, eligibility, metadata, events, indexes).
//! Changed only by the node commands of `state::command::apply`; the client's own files (its
//! ID, its dynamic metadata) stay in `state::node`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::shared::Shared;
use crate::state::status::{DrainStatus, NodeEligibility, NodeStatus};

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
    /// Shared with the allocs placed on it (one copy of the name for all).
    pub name: crate::state::shared_str::SharedStr,
    pub datacenter: String,
    pub http_addr: String,
    /// The node's HTTP API speaks TLS.
    #[serde(default)]
    pub tls_enabled: bool,
    pub node_pool: String,
    pub node_class: String,
    pub version: String,
    /// The bulky parts below are [`Shared`]: a new version of the node (a status change, a
    /// heartbeat's bring-up) shares them with the old one instead of copying.
    pub attributes: Shared<BTreeMap<String, String>>,
    /// Static and dynamic metadata merged (what the node's `Meta` shows).
    pub meta: Shared<BTreeMap<String, String>>,
    /// `NodeResources` as the client fingerprinted them.
    pub resources: Shared<Value>,
    /// `Drivers` as the client fingerprinted them.
    pub drivers: Shared<Value>,
    /// `initializing`, `ready`, `down` or `disconnected` (serde: Nomad's word).
    pub status: NodeStatus,
    pub status_description: String,
    /// Unix seconds of the last status change.
    pub status_updated_at: i64,
    /// `eligible` or `ineligible` (serde: Nomad's word).
    pub scheduling_eligibility: NodeEligibility,
    pub drain: bool,
    /// The drain in progress (`DrainStrategy`); `None` when the node is not draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_strategy: Option<DrainStrategy>,
    /// The last drain started on this node (`LastDrain`), kept after it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drain: Option<LastDrain>,
    pub events: Vec<NodeEvent>,
    pub create_index: u64,
    pub modify_index: u64,
    /// The node's secret, set by its first registration: every later call from the node
    /// must carry it. Never in API JSON, never logged (old logs and snapshots: empty).
    #[serde(default)]
    pub secret_id: String,
}

/// A drain in progress (`structs.DrainStrategy`): chosen by the API's proposer (times from the
/// server's clock), stored by `NodeUpdateDrain`, cleared when the drain completes or is
/// disabled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainStrategy {
    /// As asked, in nanoseconds: `> 0` a deadline, `0` none, `< 0` force (migrate at once).
    pub deadline_ns: i64,
    /// Unix nanoseconds after which every remaining alloc is migrated at once (`0`: none).
    pub force_deadline: i64,
    pub ignore_system_jobs: bool,
    /// Unix nanoseconds of the first drain (kept when the drain is updated).
    pub started_at: i64,
}

impl DrainStrategy {
    /// Unix nanoseconds at which the drain is forced: `Some(0)` for a forced drain
    /// (`deadline < 0`: now), `None` without a deadline.
    pub fn deadline_at(&self) -> Option<i64> {
        if self.deadline_ns < 0 {
            Some(0)
        } else if self.force_deadline > 0 {
            Some(self.force_deadline)
        } else {
            None
        }
    }
}

/// What is kept of the last drain (`structs.DrainMetadata`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastDrain {
    /// Unix nanoseconds.
    pub started_at: i64,
    /// Unix nanoseconds.
    pub updated_at: i64,
    pub status: DrainStatus,
    /// Who asked: `token:<accessor>` (or empty with ACLs disabled).
    pub accessor_id: String,
    pub meta: BTreeMap<String, String>,
}
