//! The server state replicated with Raft (raft-rs, driven by our own threads; no async
//! runtime). The command log's [`StateMachine`] applies what Raft commits, in order, at the
//! Raft index (the Nomad index); the Raft log, hard state and configuration live in the same
//! redb file as the state tables (`storage`). Threads: `raft` (the driver: ticks, steps
//! messages, persists each `Ready` in one transaction, applies, answers proposals),
//! `raft-send-<id>` (one per peer: a bounded queue, batches POSTed to the peer's
//! `/v1/rpc/raft` over a kept-alive connection), `raft-members` (bootstrap through gossip,
//! the leader's membership reconciliation, autopilot's dead-server cleanup).

pub mod autopilot;
mod driver;
mod logger;
pub mod members;
pub mod recovery;
mod storage;
mod transport;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::state::command::{Applied, Command};
use crate::state::command_log::{LogError, Replicator, StateMachine, Ticket};
use crate::state::leader::{BarrierError, LeaderView, Leadership};

#[cfg(test)]
use transport::encode_batch;
pub use transport::{decode_batch, WireError, RAFT_BODY_LIMIT};

/// One Raft tick (ref §6.2: heartbeat every tick, election after 10..20).
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks between leader heartbeats: 100 ms, as hashicorp/raft's (a tenth of its 1 s
/// heartbeat timeout), so a live follower is always within autopilot's default 200 ms
/// `LastContactThreshold`.
pub const HEARTBEAT_TICKS: usize = 1;
/// Ticks before a follower that heard nothing campaigns (raft-rs randomizes up to twice).
pub const ELECTION_TICKS: usize = 10;
/// How long a proposer waits for its command to commit and apply.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(30);

/// How a server dials another's RPC port (plain TCP, or TLS with `tls.rpc`): the stream and
/// its TCP socket (for timeouts and shutdown).
pub type Dial = Arc<
    dyn Fn(&SocketAddr, Instant) -> io::Result<(Box<dyn crate::http::client::Stream>, TcpStream)>
        + Send
        + Sync,
>;

/// Where a server of the cluster is, as gossip told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The server's UUID (gossip `id` tag): the ID the API shows.
    pub uuid: String,
    /// Its Serf member name (`<node>.<region>`).
    pub name: String,
    pub rpc_addr: SocketAddr,
}

/// Raft IDs → where those servers are (filled from gossip; this server's own entry first).
pub type PeerBook = Arc<RwLock<BTreeMap<u64, Peer>>>;

/// The Raft ID of a server: the first 64 bits of its UUID (0 is raft-rs's "none": never).
pub fn raft_id(uuid: &str) -> Option<u64> {
    let hex: String = uuid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(16)
        .collect();
    if hex.len() < 16 {
        return None;
    }
    u64::from_str_radix(&hex, 16).ok().filter(|id| *id != 0)
}

/// Reads the replicated autopilot configuration (the defaults while none is stored).
pub type AutopilotSource = Arc<dyn Fn() -> crate::state::autopilot::AutopilotConfig + Send + Sync>;

/// How long a leadership transfer waits for the target to take over (raft-rs hands over
/// within an election timeout once the target caught up).
pub const TRANSFER_DEADLINE: Duration = Duration::from_secs(10);

/// What the agent tells Raft at start.
pub struct Settings {
    /// This server's UUID (its Raft ID is [`raft_id`] of it).
    pub uuid: String,
    /// `<node>.<region>`, as gossip names it.
    pub name: String,
    pub region: String,
    /// The address other servers reach this one's RPC port at.
    pub rpc_addr: SocketAddr,
    /// `bootstrap_expect`: 1 bootstraps alone at once; more waits for that many servers in
    /// gossip; 0 never bootstraps (ref §6.1: the server waits for a leader to add it).
    pub bootstrap_expect: u32,
    /// Autopilot's configuration as replicated now (dead-server cleanup, promotion, health).
    pub autopilot: AutopilotSource,
    pub dial: Dial,
    /// The gossip member table (servers find each other there).
    pub gossip: Option<Arc<crate::gossip::Gossip>>,
    /// `<data_dir>/server/raft`: where an operator puts `peers.json` to recover.
    pub raft_dir: Option<std::path::PathBuf>,
}

/// Why a membership change was not made.
#[derive(Debug)]
pub enum ChangeError {
    /// The Raft driver is not running (shut down).
    NotRunning,
    /// No answer in time (the change may still apply).
    NoAnswer,
    /// This server does not lead.
    NotLeader,
    /// Leadership moved before the change applied.
    LeadershipLost,
    /// raft-rs refused the proposal, or the change when it applied.
    Refused(raft::Error),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::NotRunning => f.write_str("raft is not running"),
            ChangeError::NoAnswer => f.write_str("no answer from raft in time"),
            ChangeError::NotLeader => f.write_str("not leader"),
            ChangeError::LeadershipLost => f.write_str("leadership lost"),
            ChangeError::Refused(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ChangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChangeError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

/// Why Raft could not start.
#[derive(Debug)]
pub enum RaftError {
    /// The server's ID is not a UUID.
    BadId(String),
    /// The store could not be read or written.
    Store(LogError),
    /// raft-rs refused its configuration or storage.
    Raft(raft::Error),
    /// A thread could not be started.
    Spawn(io::Error),
    /// `peers.json` is there but unusable.
    Recovery(recovery::RecoveryError),
}

impl fmt::Display for RaftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftError::BadId(id) => write!(f, "server ID {id:?} is not a UUID"),
            RaftError::Store(e) => write!(f, "raft storage: {e}"),
            RaftError::Raft(e) => write!(f, "raft: {e}"),
            RaftError::Spawn(e) => write!(f, "cannot start a raft thread: {e}"),
            RaftError::Recovery(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RaftError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RaftError::Store(e) => Some(e),
            RaftError::Raft(e) => Some(e),
            RaftError::Spawn(e) => Some(e),
            RaftError::Recovery(e) => Some(e),
            RaftError::BadId(_) => None,
        }
    }
}

/// This server's Raft role, as the driver last published it.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub id: u64,
    pub is_leader: bool,
    /// Leader, and an entry of its own term is applied (its reads are consistent).
    pub leader_ready: bool,
    pub term: u64,
    /// 0: no leader known.
    pub leader_id: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub applied: u64,
    pub commit: u64,
    pub last_index: u64,
    /// When a message of the leader last arrived (followers).
    pub last_contact: Option<Instant>,
    /// The term of the last entry of this server's log.
    pub last_term: u64,
    /// The leader's view of every server's replication (empty on followers).
    pub progress: BTreeMap<u64, PeerProgress>,
    /// Part of a configuration (bootstrapped, or added by a leader).
    pub initialized: bool,
    /// The driver stopped (shutdown, or a store failure).
    pub stopped: bool,
}

/// How far the leader knows a server's log matches its own, and when it last answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerProgress {
    /// The highest index known to match the leader's log.
    pub matched: u64,
    /// The term of the entry at `matched`.
    pub last_term: u64,
    /// When the server last answered an append or heartbeat (`None`: never).
    pub last_contact: Option<Instant>,
}

/// Why a leadership transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// This server does not lead.
    NotLeader,
    /// The target is not a voter of the configuration.
    NotVoter,
    /// No voter but this one to transfer to.
    NoTarget,
    /// The target did not take over in time.
    Timeout,
    /// Raft is not running.
    Stopped,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransferError::NotLeader => "not leader",
            TransferError::NotVoter => "cannot find peer",
            TransferError::NoTarget => "cannot find peer",
            TransferError::Timeout => "leadership transfer timeout",
            TransferError::Stopped => "raft is not running",
        })
    }
}

impl std::error::Error for TransferError {}

/// The driver's status and a condvar that is notified whenever it changes.
#[derive(Default)]
pub struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock();
        f(&mut s);
        drop(s);
        self.changed.notify_all();
    }
}

/// What the driver thread takes as input.
pub(crate) enum Input {
    /// Messages from other servers.
    Messages(Vec<raft::eraftpb::Message>),
    /// A command, encoded by its proposer (off the driver thread, which every write waits
    /// on), the command itself (the leader applies it without decoding its own entry), and
    /// where its answer goes.
    Propose(
        Vec<u8>,
        Box<Command>,
        Sender<Result<(Applied, u64), LogError>>,
    ),
    /// A membership change (leader only).
    ConfChange(raft::eraftpb::ConfChange, Sender<Result<(), ChangeError>>),
    /// Bootstrap this configuration (an empty, unconfigured log only).
    Bootstrap(Vec<u64>),
    /// A read barrier: the driver answers the commit index a quorum confirmed this leader
    /// at (raft-rs ReadIndex, `ReadOnlyOption::Safe`), or why not.
    ReadIndex(Sender<Result<u64, BarrierError>>),
    /// Hand leadership to this voter (leader only): the term it was asked in, or why not.
    TransferLeader(u64, Sender<Result<u64, TransferError>>),
    /// A peer could not be reached.
    Unreachable(u64),
    /// A snapshot to a peer was sent (true) or failed (false).
    SnapshotSent(u64, bool),
    Stop,
}

/// The running Raft of this server: the handle the agent, the API and the RPC port hold.
pub struct Raft {
    id: u64,
    input: Sender<Input>,
    shared: Arc<Shared>,
    peers: PeerBook,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    members_stop: Arc<std::sync::atomic::AtomicBool>,
    transport: Arc<transport::Transport>,
    gossip: Option<Arc<crate::gossip::Gossip>>,
    region: String,
    autopilot: AutopilotSource,
    tracker: Arc<autopilot::Tracker>,
}

impl fmt::Debug for Raft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Raft").field("id", &self.id).finish()
    }
}

/// Inputs waiting for the driver at most (messages beyond are dropped: Raft retries).
const INPUT_QUEUE: usize = 8192;

impl Raft {
    /// Start Raft on `machine` (the replicated command log's store and state).
    pub fn start(settings: Settings, machine: StateMachine) -> Result<Arc<Raft>, RaftError> {
        let id = raft_id(&settings.uuid).ok_or_else(|| RaftError::BadId(settings.uuid.clone()))?;
        let peers: PeerBook = Arc::new(RwLock::new(BTreeMap::new()));
        peers.write().insert(
            id,
            Peer {
                uuid: settings.uuid.clone(),
                name: settings.name.clone(),
                rpc_addr: settings.rpc_addr,
            },
        );
        let (tx, rx) = crossbeam_channel::bounded(INPUT_QUEUE);
        let shared = Arc::new(Shared::default());
        let transport = Arc::new(transport::Transport::new(
            id,
            peers.clone(),
            settings.dial.clone(),
            tx.clone(),
        ));
        let alone = settings.bootstrap_expect == 1;
        let recovery = match &settings.raft_dir {
            Some(dir) => recovery::read(dir).map_err(RaftError::Recovery)?,
            None => None,
        };
        if let Some(r) = &recovery {
            let mut book = peers.write();
            for (pid, p) in &r.peers {
                if *pid != id {
                    book.insert(*pid, p.clone());
                }
            }
        }
        let driver = driver::Driver::open(
            id,
            machine,
            rx,
            shared.clone(),
            transport.clone(),
            alone,
            recovery.as_ref().map(|r| r.conf.clone()),
        )?;
        if let Some(r) = &recovery {
            r.done();
        }
        let mut threads = vec![std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || driver.run())
            .map_err(RaftError::Spawn)?];
        let members_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tracker = Arc::new(autopilot::Tracker::default());
        if settings.gossip.is_some() {
            let m = members::Members::new(
                id,
                &settings,
                tracker.clone(),
                peers.clone(),
                shared.clone(),
                tx.clone(),
                members_stop.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("raft-members".into())
                    .spawn(move || m.run())
                    .map_err(RaftError::Spawn)?,
            );
        }
        Ok(Arc::new(Raft {
            id,
            input: tx,
            shared,
            peers,
            threads: Mutex::new(threads),
            members_stop,
            transport,
            gossip: settings.gossip.clone(),
            region: settings.region.clone(),
            autopilot: settings.autopilot.clone(),
            tracker,
        }))
    }

    /// Autopilot's configuration as replicated now.
    pub fn autopilot_config(&self) -> crate::state::autopilot::AutopilotConfig {
        (self.autopilot)()
    }

    /// The cluster's health as this server (the leader) sees it; `None` when it does not
    /// lead.
    pub fn health(&self) -> Option<autopilot::Health> {
        let status = self.status();
        let gossip = self
            .gossip
            .as_ref()
            .map(|g| members::gossip_servers(g, &self.region))
            .unwrap_or_default();
        let peers = self.peers();
        self.tracker
            .health(&status, &peers, &gossip, &self.autopilot_config())
    }

    /// Hand leadership to the voter `to` (`None`: the voter whose log is most up to date)
    /// and wait until another server leads; the new leader's ID.
    pub fn transfer_leadership(&self, to: Option<u64>) -> Result<u64, TransferError> {
        let s = self.status();
        if !s.is_leader {
            return Err(TransferError::NotLeader);
        }
        let target = match to {
            Some(id) => id,
            None => s
                .voters
                .iter()
                .filter(|v| **v != self.id)
                .max_by_key(|v| s.progress.get(v).map_or(0, |p| p.matched))
                .copied()
                .ok_or(TransferError::NoTarget)?,
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.input
            .send_timeout(Input::TransferLeader(target, reply), Duration::from_secs(1))
            .map_err(|_| TransferError::Stopped)?;
        answer
            .recv_timeout(TRANSFER_DEADLINE)
            .map_err(|_| TransferError::Stopped)??;
        let deadline = Instant::now() + TRANSFER_DEADLINE;
        let mut st = self.shared.status.lock();
        loop {
            if st.stopped {
                return Err(TransferError::Stopped);
            }
            if !st.is_leader && st.leader_id != 0 && st.leader_id != self.id {
                return Ok(st.leader_id);
            }
            if self
                .shared
                .changed
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                return Err(TransferError::Timeout);
            }
        }
    }

    /// This server's Raft ID.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The driver's status now.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Where the servers of the cluster are (as gossip told).
    pub fn peers(&self) -> BTreeMap<u64, Peer> {
        self.peers.read().clone()
    }

    /// Messages another server POSTed to `/v1/rpc/raft` (the body): decoded (bounded) and
    /// handed to the driver; a full queue drops them (Raft sends again).
    pub fn deliver(&self, body: &[u8]) -> Result<(), WireError> {
        let msgs = decode_batch(body)?;
        let msgs: Vec<_> = msgs.into_iter().filter(|m| m.to == self.id).collect();
        if !msgs.is_empty() {
            let _ = self.input.try_send(Input::Messages(msgs));
        }
        Ok(())
    }

    /// Propose a membership change and wait for it to apply (leader only).
    pub fn change_membership(&self, cc: raft::eraftpb::ConfChange) -> Result<(), ChangeError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.input
            .send_timeout(Input::ConfChange(cc, reply), Duration::from_secs(1))
            .map_err(|_| ChangeError::NotRunning)?;
        answer
            .recv_timeout(PROPOSE_DEADLINE)
            .unwrap_or(Err(ChangeError::NoAnswer))
    }

    /// Remove the server `id` from the configuration (leader only).
    pub fn remove_server(&self, id: u64) -> Result<(), ChangeError> {
        let mut cc = raft::eraftpb::ConfChange::default();
        cc.set_change_type(raft::eraftpb::ConfChangeType::RemoveNode);
        cc.node_id = id;
        self.change_membership(cc)
    }

    /// Leaving the cluster for good: the leader of several servers removes itself from the
    /// configuration (bounded by [`PROPOSE_DEADLINE`]).
    pub fn leave(&self) {
        let s = self.status();
        if s.is_leader && s.voters.len() > 1 {
            match self.remove_server(self.id) {
                Ok(()) => log::info!("raft: this server left the configuration"),
                Err(e) => log::warn!("raft: cannot leave the configuration: {e}"),
            }
        }
    }

    /// Stop every Raft thread and join them (the store closes with the driver).
    pub fn stop(&self) {
        self.members_stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.input.send_timeout(Input::Stop, Duration::from_secs(5));
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for h in &threads {
            // The members thread waits in `park_timeout`.
            h.thread().unpark();
        }
        for h in threads {
            let _ = h.join();
        }
        self.transport.shutdown();
    }

    /// Wait until whether this server leads (and has applied an entry of its term) differs
    /// from `was`, the driver stops, or `deadline` passes; whether it leads then.
    pub fn wait_leadership(&self, was: bool, deadline: Instant) -> bool {
        let mut s = self.shared.status.lock();
        loop {
            let now = s.is_leader && s.leader_ready && !s.stopped;
            if now != was || s.stopped {
                return now;
            }
            if self.shared.changed.wait_until(&mut s, deadline).timed_out() {
                return s.is_leader && s.leader_ready && !s.stopped;
            }
        }
    }

    fn rpc_addr_of(&self, id: u64) -> Option<SocketAddr> {
        self.peers.read().get(&id).map(|p| p.rpc_addr)
    }

    fn view_of(&self, s: &Status) -> LeaderView {
        let leader = (s.leader_id != 0).then_some(s.leader_id);
        LeaderView {
            is_leader: s.is_leader && s.leader_ready,
            leader_rpc_addr: leader.and_then(|id| self.rpc_addr_of(id)),
            leader_id: leader,
            last_contact: if s.is_leader {
                Some(Duration::ZERO)
            } else {
                s.last_contact.map(|t| t.elapsed())
            },
            term: s.term,
        }
    }
}

impl Leadership for Raft {
    fn view(&self) -> LeaderView {
        let s = self.shared.status();
        self.view_of(&s)
    }

    fn wait_for_leader(&self, deadline: Instant) -> LeaderView {
        let mut s = self.shared.status.lock();
        loop {
            let known = s.leader_id != 0 && (!s.is_leader || s.leader_ready);
            if known || s.stopped {
                let snapshot = s.clone();
                drop(s);
                return self.view_of(&snapshot);
            }
            if self.shared.changed.wait_until(&mut s, deadline).timed_out() {
                let snapshot = s.clone();
                drop(s);
                return self.view_of(&snapshot);
            }
        }
    }

    fn read_barrier(&self, deadline: Instant) -> Result<(), BarrierError> {
        let s = self.shared.status();
        if s.stopped {
            return Err(BarrierError::Stopped);
        }
        if !(s.is_leader && s.leader_ready) {
            return Err(BarrierError::NotLeader);
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let wait = deadline.saturating_duration_since(Instant::now());
        self.input
            .send_timeout(Input::ReadIndex(reply), wait)
            .map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => BarrierError::Timeout,
                crossbeam_channel::SendTimeoutError::Disconnected(_) => BarrierError::Stopped,
            })?;
        let index = match answer.recv_deadline(deadline) {
            Ok(r) => r?,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => return Err(BarrierError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(BarrierError::Stopped)
            }
        };
        self.wait_applied(index, deadline)
    }
}

impl Raft {
    /// Wait until this server applied `index`, the driver stops, or `deadline` passes.
    fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), BarrierError> {
        let mut s = self.shared.status.lock();
        loop {
            if s.applied >= index {
                return Ok(());
            }
            if s.stopped {
                return Err(BarrierError::Stopped);
            }
            if self.shared.changed.wait_until(&mut s, deadline).timed_out() {
                return if s.applied >= index {
                    Ok(())
                } else {
                    Err(BarrierError::Timeout)
                };
            }
        }
    }
}

impl crate::server::rpc::RaftInbox for Raft {
    fn deliver(&self, body: &[u8]) -> Result<(), crate::server::rpc::InboxError> {
        Raft::deliver(self, body).map_err(|e| Box::new(e) as crate::server::rpc::InboxError)
    }

    fn body_limit(&self) -> usize {
        RAFT_BODY_LIMIT
    }
}

/// Proposals go to the driver; followers answer `NotLeader` at once.
pub struct RaftProposer(pub Arc<Raft>);

impl Replicator for RaftProposer {
    fn propose(&self, cmd: Command) -> Result<(Applied, u64), LogError> {
        self.submit(cmd)?.wait(PROPOSE_DEADLINE)
    }

    fn submit(&self, cmd: Command) -> Result<Ticket, LogError> {
        let data = serde_json::to_vec(&cmd).map_err(|e| LogError::store("encode", e))?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.0
            .input
            .send_timeout(Input::Propose(data, Box::new(cmd), reply), PROPOSE_DEADLINE)
            .map_err(|_| LogError::Closed("server state is shut down"))?;
        Ok(Ticket::new(answer))
    }

    fn shutdown(&self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_come_from_the_uuid_and_are_never_zero() {
        assert_eq!(
            raft_id("c13f9998-a0f3-d765-0b52-55a0b3ce5f88"),
            Some(0xc13f9998a0f3d765)
        );
        assert_eq!(raft_id("00000000-0000-0000-1111-111111111111"), None);
        assert_eq!(raft_id("not a uuid"), None);
        assert_eq!(raft_id(""), None);
    }

    #[test]
    fn a_batch_round_trips_and_garbage_is_refused_without_panic() {
        let m = raft::eraftpb::Message {
            to: 7,
            from: 9,
            term: 3,
            ..Default::default()
        };
        let body = encode_batch(&[m.clone(), m.clone()]).unwrap();
        let back = decode_batch(&body).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].to, 7);
        for bad in [
            &b"\x00\x00\x00\x09abc"[..],
            &b"\xff\xff\xff\xff"[..],
            &b"\x00\x00"[..],
            &b"\x00\x00\x00\x03\xff\xff\xff"[..],
        ] {
            assert!(decode_batch(bad).is_err(), "{bad:?}");
        }
        assert!(decode_batch(b"").unwrap().is_empty());
    }
}
