//! Autopilot's configuration as the servers replicate it (Nomad's `autopilot-config` table):
//! set through `Command::AutopilotSetConfig` (`PUT /v1/operator/autopilot/configuration`),
//! read by the leader's autopilot (dead-server cleanup, promotion of non-voters, health).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Nomad's `last_contact_threshold` default.
pub const DEFAULT_LAST_CONTACT_THRESHOLD: Duration = Duration::from_millis(200);
/// Nomad's `max_trailing_logs` default.
pub const DEFAULT_MAX_TRAILING_LOGS: u64 = 250;
/// Nomad's `server_stabilization_time` default.
pub const DEFAULT_SERVER_STABILIZATION_TIME: Duration = Duration::from_secs(10);

/// The autopilot configuration (durations in nanoseconds, as Go keeps them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutopilotConfig {
    /// Remove servers gossip marks failed or left from the Raft configuration.
    pub cleanup_dead_servers: bool,
    /// A server not heard from by the leader for longer is unhealthy.
    pub last_contact_threshold_ns: u64,
    /// A server more entries behind the leader's log is unhealthy.
    pub max_trailing_logs: u64,
    /// Dead-server cleanup never leaves fewer voters than this.
    pub min_quorum: u64,
    /// How long a new server must be healthy before it is promoted to voter.
    pub server_stabilization_time_ns: u64,
    /// Enterprise features: stored and shown, not acted on.
    pub enable_redundancy_zones: bool,
    pub disable_upgrade_migration: bool,
    pub enable_custom_upgrades: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            cleanup_dead_servers: true,
            last_contact_threshold_ns: DEFAULT_LAST_CONTACT_THRESHOLD.as_nanos() as u64,
            max_trailing_logs: DEFAULT_MAX_TRAILING_LOGS,
            min_quorum: 0,
            server_stabilization_time_ns: DEFAULT_SERVER_STABILIZATION_TIME.as_nanos() as u64,
            enable_redundancy_zones: false,
            disable_upgrade_migration: false,
            enable_custom_upgrades: false,
            create_index: 0,
            modify_index: 0,
        }
    }
}

impl AutopilotConfig {
    pub fn last_contact_threshold(&self) -> Duration {
        Duration::from_nanos(self.last_contact_threshold_ns)
    }

    pub fn server_stabilization_time(&self) -> Duration {
        Duration::from_nanos(self.server_stabilization_time_ns)
    }
}

/// Apply a set: with `cas`, only when the stored config's modify index is `cas` (none stored:
/// refused, as Nomad's `AutopilotCASConfig`). Whether it was written.
pub fn set(
    current: &mut Option<std::sync::Arc<AutopilotConfig>>,
    config: &AutopilotConfig,
    cas: Option<u64>,
    index: u64,
) -> bool {
    if let Some(want) = cas {
        match current {
            Some(c) if c.modify_index == want => {}
            _ => return false,
        }
    }
    let mut next = config.clone();
    next.create_index = current.as_ref().map_or(index, |c| c.create_index);
    next.modify_index = index;
    *current = Some(std::sync::Arc::new(next));
    true
}
