//! Autopilot's view of the servers (Nomad's `GetClusterHealth`, ref §6.3): on the leader,
//! each server's health from real Raft progress (what the leader knows each matched, when
//! each last answered) and gossip (its Serf status and build), judged by the replicated
//! [`AutopilotConfig`]; how long each has been healthy (`StableSince`) is tracked across
//! rounds, and the leader promotes a non-voter once it has been healthy that long.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::members::GossipServer;
use super::{Peer, Status};
use crate::gossip::MemberStatus;
use crate::state::autopilot::AutopilotConfig;

/// One server's health, as the leader judges it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerHealth {
    pub id: u64,
    /// The server's UUID (Nomad's `ID`).
    pub uuid: String,
    /// Its Serf name.
    pub name: String,
    /// Its RPC address.
    pub address: String,
    /// Its gossip status (`alive`, `failed`, `left`, `leaving`; `none` when gossip has no
    /// such member).
    pub serf_status: String,
    /// Its build (gossip `build` tag).
    pub version: String,
    pub leader: bool,
    /// Since the leader last heard from it (zero for the leader; `None`: never).
    pub last_contact: Option<Duration>,
    pub last_term: u64,
    pub last_index: u64,
    pub healthy: bool,
    pub voter: bool,
    /// When `healthy` last changed (or the server was first seen).
    pub stable_since: SystemTime,
}

/// The cluster's health (Nomad's `OperatorHealthReply`).
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// Every server healthy.
    pub healthy: bool,
    /// Healthy voters beyond a quorum: how many voters may fail.
    pub failure_tolerance: u64,
    pub servers: Vec<ServerHealth>,
    /// The leader's UUID.
    pub leader: String,
    /// The voters' UUIDs.
    pub voters: Vec<String>,
}

/// Health transitions across rounds (the leader's memory, dropped with leadership).
#[derive(Default)]
pub struct Tracker {
    since: Mutex<HashMap<u64, (bool, SystemTime)>>,
}

impl Tracker {
    /// The health of every server in the configuration, as the leader sees it now; `None`
    /// on a server that does not lead (only the leader knows the others' progress).
    pub fn health(
        &self,
        status: &Status,
        peers: &BTreeMap<u64, Peer>,
        gossip: &[GossipServer],
        config: &AutopilotConfig,
    ) -> Option<Health> {
        if !status.is_leader || status.stopped {
            self.since.lock().clear();
            return None;
        }
        let now = Instant::now();
        let wall = SystemTime::now();
        let by_id: HashMap<u64, &GossipServer> = gossip.iter().map(|g| (g.id, g)).collect();
        let mut since = self.since.lock();
        let mut servers = Vec::new();
        let members = status
            .voters
            .iter()
            .map(|id| (*id, true))
            .chain(status.learners.iter().map(|id| (*id, false)));
        for (id, voter) in members {
            let leader = id == status.id;
            let g = by_id.get(&id);
            let peer = peers.get(&id);
            let (last_contact, last_term, last_index) = if leader {
                (Some(Duration::ZERO), status.last_term, status.last_index)
            } else {
                match status.progress.get(&id) {
                    Some(p) => (
                        p.last_contact.map(|t| now.saturating_duration_since(t)),
                        p.last_term,
                        p.matched,
                    ),
                    None => (None, 0, 0),
                }
            };
            let serf_alive = if leader {
                true
            } else {
                g.is_some_and(|g| g.status == MemberStatus::Alive)
            };
            // raft-autopilot's rule: alive in gossip, heard from within the threshold, on
            // the leader's term, and no more than `max_trailing_logs` behind.
            let healthy = serf_alive
                && last_contact.is_some_and(|c| c <= config.last_contact_threshold())
                && last_term == status.last_term
                && last_index.saturating_add(config.max_trailing_logs) >= status.last_index;
            let entry = since.entry(id).or_insert((healthy, wall));
            if entry.0 != healthy {
                *entry = (healthy, wall);
            }
            servers.push(ServerHealth {
                id,
                uuid: peer.map_or_else(|| format!("{id:016x}"), |p| p.uuid.clone()),
                name: peer.map(|p| p.name.clone()).unwrap_or_default(),
                address: peer.map(|p| p.rpc_addr.to_string()).unwrap_or_default(),
                serf_status: if leader {
                    "alive".to_string()
                } else {
                    g.map_or("none", |g| g.status.as_str()).to_string()
                },
                version: g.map(|g| g.version.clone()).unwrap_or_else(|| {
                    if leader {
                        env!("CARGO_PKG_VERSION").to_string()
                    } else {
                        String::new()
                    }
                }),
                leader,
                last_contact,
                last_term,
                last_index,
                healthy,
                voter,
                stable_since: entry.1,
            });
        }
        since.retain(|id, _| servers.iter().any(|s| s.id == *id));
        let voters = servers.iter().filter(|s| s.voter).count() as u64;
        let healthy_voters = servers.iter().filter(|s| s.voter && s.healthy).count() as u64;
        let quorum = voters / 2 + 1;
        Some(Health {
            healthy: servers.iter().all(|s| s.healthy),
            failure_tolerance: healthy_voters.saturating_sub(quorum),
            leader: servers
                .iter()
                .find(|s| s.leader)
                .map(|s| s.uuid.clone())
                .unwrap_or_default(),
            voters: servers
                .iter()
                .filter(|s| s.voter)
                .map(|s| s.uuid.clone())
                .collect(),
            servers,
        })
    }
}

/// The non-voter to promote now, if any: healthy for at least `server_stabilization_time`.
pub fn promotable(health: &Health, config: &AutopilotConfig) -> Option<u64> {
    let now = SystemTime::now();
    health
        .servers
        .iter()
        .filter(|s| !s.voter && s.healthy)
        .find(|s| {
            now.duration_since(s.stable_since)
                .is_ok_and(|d| d >= config.server_stabilization_time())
        })
        .map(|s| s.id)
}
