//! The `raft-members` thread: what gossip says about servers, turned into Raft membership.
//! Every [`ROUND`] it refreshes the peer book (Raft ID → RPC address), bootstraps when
//! `bootstrap_expect` servers are alive and none is part of a cluster yet (ref §6.1), and on
//! the leader adds alive servers missing from the configuration as non-voters, promotes a
//! non-voter to voter once autopilot found it healthy for `ServerStabilizationTime`, and
//! (when the replicated autopilot config says `CleanupDeadServers`) removes servers gossip
//! marks failed (after [`DEAD_AFTER`]) or left — a dead non-voter at any time, a voter while
//! a majority of the configuration stays alive and at least `MinQuorum` voters remain
//! (autopilot's dead-server cleanup).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use raft::eraftpb::{ConfChange, ConfChangeType};

use super::{
    raft_id, ChangeError, Dial, Input, Peer, PeerBook, Settings, Shared, PROPOSE_DEADLINE,
};
use crate::gossip::{Gossip, MemberStatus};
use crate::http::client::{exchange, Outgoing};

/// Why a server was not asked for its Raft peers (it is then not taken into the cluster).
#[derive(Debug)]
enum AskError {
    Dial(std::io::Error),
    Exchange(crate::http::client::ClientError),
    Read(std::io::Error),
    Status(u16),
    Decode(serde_json::Error),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::Dial(e) => write!(f, "dial: {e}"),
            AskError::Exchange(e) => write!(f, "{e}"),
            AskError::Read(e) => write!(f, "read: {e}"),
            AskError::Status(s) => write!(f, "status {s}"),
            AskError::Decode(e) => write!(f, "bad peers reply: {e}"),
        }
    }
}

/// How often gossip is looked at.
pub const ROUND: Duration = Duration::from_millis(500);
/// A server gossip marks failed this long is removed from the configuration (autopilot).
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// Asking a server for its Raft peers gives up after this long.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// The same server is asked again (to be added) at most this often.
const ASK_AGAIN: Duration = Duration::from_secs(2);
/// Largest peers answer read.
const MAX_PEERS_REPLY: usize = 64 * 1024;

/// A server as gossip shows it.
pub struct GossipServer {
    pub id: u64,
    pub peer: Peer,
    pub status: MemberStatus,
    pub expect: Option<u32>,
    /// Its `build` tag.
    pub version: String,
}

type Server = GossipServer;

/// The Nomad servers of `region` in gossip's member table.
pub fn gossip_servers(g: &Gossip, region: &str) -> Vec<GossipServer> {
    g.members()
        .into_iter()
        .filter_map(|m| {
            let t = &m.tags;
            if t.get("role").map(String::as_str) != Some("nomad")
                || t.get("region").map(String::as_str) != Some(region)
            {
                return None;
            }
            let uuid = t.get("id")?.clone();
            let id = raft_id(&uuid)?;
            let ip = t.get("rpc_addr")?.parse().ok()?;
            let port: u16 = t.get("port")?.parse().ok()?;
            Some(GossipServer {
                id,
                peer: Peer {
                    uuid,
                    name: m.name.clone(),
                    rpc_addr: SocketAddr::new(ip, port),
                },
                status: m.status,
                expect: t.get("expect").and_then(|e| e.parse().ok()),
                version: t.get("build").cloned().unwrap_or_default(),
            })
        })
        .collect()
}

pub(crate) struct Members {
    id: u64,
    region: String,
    expect: u32,
    autopilot: super::AutopilotSource,
    tracker: Arc<super::autopilot::Tracker>,
    dial: Dial,
    gossip: Option<Arc<Gossip>>,
    peers: PeerBook,
    shared: Arc<Shared>,
    input: Sender<Input>,
    stop: Arc<AtomicBool>,
    bootstrap_done: bool,
    warned: bool,
    failed_since: HashMap<u64, Instant>,
    asked: HashMap<u64, Instant>,
}

impl Members {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        s: &Settings,
        tracker: Arc<super::autopilot::Tracker>,
        peers: PeerBook,
        shared: Arc<Shared>,
        input: Sender<Input>,
        stop: Arc<AtomicBool>,
    ) -> Members {
        Members {
            id,
            region: s.region.clone(),
            expect: s.bootstrap_expect,
            autopilot: s.autopilot.clone(),
            tracker,
            dial: s.dial.clone(),
            gossip: s.gossip.clone(),
            peers,
            shared,
            input,
            stop,
            // 1 bootstraps alone at start; 0 never bootstraps (a leader adds this server).
            bootstrap_done: s.bootstrap_expect <= 1,
            warned: false,
            failed_since: HashMap::new(),
            asked: HashMap::new(),
        }
    }

    pub(crate) fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            self.round();
            std::thread::park_timeout(ROUND);
        }
    }

    fn servers(&self) -> Vec<Server> {
        match self.gossip.as_ref() {
            Some(g) => gossip_servers(g, &self.region),
            None => Vec::new(),
        }
    }

    fn round(&mut self) {
        let servers = self.servers();
        {
            let mut book = self.peers.write();
            for s in &servers {
                if s.id != self.id {
                    book.insert(s.id, s.peer.clone());
                }
            }
        }
        let status = self.shared.status();
        if status.stopped {
            return;
        }
        if !status.initialized && !self.bootstrap_done {
            self.try_bootstrap(&servers);
        }
        if status.leader_ready {
            let config = (self.autopilot)();
            let peers = self.peers.read().clone();
            let health = self.tracker.health(&status, &peers, &servers, &config);
            self.reconcile(&servers, &status.voters, &status.learners, &config);
            if let Some(id) = health
                .as_ref()
                .and_then(|h| super::autopilot::promotable(h, &config))
                .filter(|id| status.learners.contains(id))
            {
                log::info!("raft: promoting server {id:x} to voter (autopilot: stable)");
                if let Err(e) = self.change(ConfChangeType::AddNode, id) {
                    log::warn!("raft: cannot promote {id:x}: {e}");
                }
            }
        } else {
            // Forget health transitions: a new term starts them afresh.
            let _ = self
                .tracker
                .health(&status, &BTreeMap::new(), &[], &Default::default());
        }
    }

    /// Ref §6.1: once `expect` servers of this region are alive with the same `expect`, and
    /// none of them is part of a cluster, bootstrap all of them as voters.
    fn try_bootstrap(&mut self, servers: &[Server]) {
        let alive: Vec<&Server> = servers
            .iter()
            .filter(|s| s.status == MemberStatus::Alive)
            .collect();
        // A peer without an expect value (0: never bootstraps) counts but does not conflict.
        if let Some(other) = alive
            .iter()
            .find(|s| s.expect.is_some_and(|e| e != self.expect))
        {
            if !self.warned {
                log::warn!(
                    "raft: not bootstrapping: peer {} has a conflicting expect value",
                    other.peer.name
                );
                self.warned = true;
            }
            return;
        }
        if alive.len() < self.expect as usize {
            return;
        }
        for s in alive.iter().filter(|s| s.id != self.id) {
            match self.ask_peers(s.peer.rpc_addr) {
                Ok(peers) if !peers.is_empty() => {
                    log::info!(
                        "raft: not bootstrapping: {} is already part of a cluster (its leader adds this server)",
                        s.peer.name
                    );
                    self.bootstrap_done = true;
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    log::debug!("raft: cannot ask {} for its peers yet: {e}", s.peer.name);
                    return;
                }
            }
        }
        let mut ids: Vec<u64> = alive.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        log::info!("raft: {} servers found, bootstrapping", ids.len());
        if self
            .input
            .send_timeout(Input::Bootstrap(ids), ROUND)
            .is_ok()
        {
            self.bootstrap_done = true;
        }
    }

    /// The leader: alive servers not in the configuration are added as voters (when they
    /// are in no other cluster); dead ones are removed while a majority stays alive.
    fn reconcile(
        &mut self,
        servers: &[Server],
        voters: &[u64],
        learners: &[u64],
        config: &crate::state::autopilot::AutopilotConfig,
    ) {
        let in_config: BTreeSet<u64> = voters.iter().chain(learners).copied().collect();
        let now = Instant::now();
        let config_addrs: BTreeSet<String> = {
            let book = self.peers.read();
            in_config
                .iter()
                .filter_map(|id| book.get(id).map(|p| p.rpc_addr.to_string()))
                .collect()
        };
        for s in servers {
            if s.status != MemberStatus::Alive || in_config.contains(&s.id) || s.id == self.id {
                continue;
            }
            if self
                .asked
                .get(&s.id)
                .is_some_and(|t| now.duration_since(*t) < ASK_AGAIN)
            {
                continue;
            }
            self.asked.insert(s.id, now);
            // A server of another cluster is never taken; one of ours (removed while it was
            // away) or a new one is.
            let ours = match self.ask_peers(s.peer.rpc_addr) {
                Ok(peers) => peers.is_empty() || peers.iter().any(|p| config_addrs.contains(p)),
                Err(_) => false,
            };
            if !ours {
                continue;
            }
            log::info!(
                "raft: adding server {} ({:x}) as a non-voter",
                s.peer.name,
                s.id
            );
            if let Err(e) = self.change(ConfChangeType::AddLearnerNode, s.id) {
                log::warn!("raft: cannot add {}: {e}", s.peer.name);
            }
            // One change at a time.
            return;
        }
        let by_id: HashMap<u64, &Server> = servers.iter().map(|s| (s.id, s)).collect();
        self.failed_since.retain(|id, _| {
            by_id
                .get(id)
                .is_some_and(|s| s.status != MemberStatus::Alive)
        });
        if !config.cleanup_dead_servers {
            return;
        }
        let alive_voters = voters
            .iter()
            .filter(|v| {
                **v == self.id
                    || by_id
                        .get(v)
                        .is_some_and(|s| s.status == MemberStatus::Alive)
            })
            .count();
        let mut dead_for_long = |id: u64, s: &Server| match s.status {
            MemberStatus::Left => true,
            MemberStatus::Failed => {
                let since = *self.failed_since.entry(id).or_insert(now);
                now.duration_since(since) >= DEAD_AFTER
            }
            MemberStatus::Alive | MemberStatus::Leaving => false,
        };
        let dead: BTreeSet<u64> = learners
            .iter()
            .chain(voters)
            .filter(|id| **id != self.id)
            .filter(|id| by_id.get(id).is_some_and(|s| dead_for_long(**id, s)))
            .copied()
            .collect();
        // A dead non-voter first: it counts for no quorum, so it goes whatever remains. A
        // dead voter only while the configuration after its removal keeps a majority alive
        // and at least `MinQuorum` voters.
        let remaining = voters.len().saturating_sub(1);
        let voter_may_go = alive_voters > remaining / 2 && (remaining as u64) >= config.min_quorum;
        let target = match learners.iter().find(|l| dead.contains(l)) {
            Some(l) => Some((*l, "non-voter")),
            None => voters
                .iter()
                .find(|v| voter_may_go && dead.contains(v))
                .map(|v| (*v, "server")),
        };
        let Some((id, what)) = target else {
            return;
        };
        let Some(s) = by_id.get(&id) else {
            return;
        };
        log::info!(
            "raft: removing {what} {} ({id:x}): gossip says {}",
            s.peer.name,
            s.status.as_str()
        );
        if let Err(e) = self.change(ConfChangeType::RemoveNode, id) {
            log::warn!("raft: cannot remove {}: {e}", s.peer.name);
        }
    }

    fn change(&self, kind: ConfChangeType, id: u64) -> Result<(), ChangeError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.input
            .send_timeout(Input::ConfChange(cc, reply), ROUND)
            .map_err(|_| ChangeError::NotRunning)?;
        answer
            .recv_timeout(PROPOSE_DEADLINE)
            .unwrap_or(Err(ChangeError::NoAnswer))
    }

    /// A server's Raft peers (`GET /v1/status/peers?stale` on its RPC port).
    fn ask_peers(&self, addr: SocketAddr) -> Result<Vec<String>, AskError> {
        let deadline = Instant::now() + ASK_TIMEOUT;
        let (stream, tcp) = (self.dial)(&addr, deadline).map_err(AskError::Dial)?;
        let _ = tcp.set_read_timeout(Some(ASK_TIMEOUT));
        let _ = tcp.set_write_timeout(Some(ASK_TIMEOUT));
        let host = addr.to_string();
        let out = Outgoing {
            method: "GET",
            host: &host,
            path: "/v1/status/peers?stale=true",
            user_agent: "nomadlet-raft",
            headers: &[],
            body: &[],
        };
        let resp = exchange(stream, &out).map_err(AskError::Exchange)?;
        let status = resp.status;
        let body = resp
            .bytes_limited(MAX_PEERS_REPLY)
            .map_err(AskError::Read)?;
        if status != 200 {
            return Err(AskError::Status(status));
        }
        serde_json::from_slice(&body).map_err(AskError::Decode)
    }
}
