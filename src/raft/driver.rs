//! The `raft` thread: owns the raft-rs `RawNode` and the state machine. It ticks every
//! [`TICK`](super::TICK), steps messages from peers, batches proposals, and handles each
//! `Ready` in order: snapshot, new entries and hard state in ONE redb transaction (one fsync),
//! then messages out, then the committed entries applied (published, events, notify) and
//! their proposers answered. Read barriers registered during one loop round share one
//! raft-rs `read_index` (a heartbeat round a quorum must answer); the read state that comes
//! back in a later `Ready` answers them all with the commit index they wait to apply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};

use super::storage::{DiskStorage, SnapSource};
use super::transport::Transport;
use super::{
    Input, PeerProgress, RaftError, Shared, TransferError, ELECTION_TICKS, HEARTBEAT_TICKS, TICK,
};
use crate::state::command::{Applied, Command, ServerState};
use crate::state::command_log::{LogError, StateMachine, SNAPSHOT_EVERY};
use crate::state::leader::BarrierError;
use crate::state::snapshot::stage::{self, Staging, Step};

/// Inputs taken per round at most (proposals beyond wait for the next `Ready`).
const MAX_INPUTS: usize = 1024;
/// Entries kept in the log behind a state snapshot (a follower that far behind catches up
/// from the log, not a snapshot).
const TRAILING_ENTRIES: u64 = 256;
/// Largest batch of entries in one append message.
const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// Append messages in flight per follower.
const MAX_INFLIGHT: usize = 256;

/// An apply round that takes longer than this is logged (debug): on a loaded machine its
/// time is mostly a wait for a CPU, and the next plan and every write wait behind it.
const SLOW_APPLY: Duration = Duration::from_millis(50);

/// A read barrier not confirmed this long after its `read_index` is failed (its caller has
/// given up by then; raft-rs drops a request it cannot serve without a word).
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Sender<Result<(Applied, u64), LogError>>;
type ReadReply = Sender<Result<u64, BarrierError>>;

/// Read barriers that share one `read_index` request.
struct ReadBatch {
    asked: Instant,
    waiters: Vec<ReadReply>,
}

/// A proposal waiting for its entry to apply.
struct Pending {
    term: u64,
    reply: Reply,
    /// The command as proposed: applied as it is when the entry at this index still has
    /// this term (then it is this command's entry), instead of decoding the entry.
    cmd: Option<Box<Command>>,
}

pub(crate) struct Driver {
    id: u64,
    node: RawNode<DiskStorage>,
    sm: StateMachine,
    rx: Receiver<Input>,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    logger: slog::Logger,
    /// Proposals by the index of their entry.
    pending: BTreeMap<u64, Pending>,
    /// Membership changes by the index of their entry.
    pending_conf: BTreeMap<u64, Sender<Result<(), super::ChangeError>>>,
    applied: u64,
    applied_term: u64,
    /// Applied index of the last state snapshot.
    snapshot_at: u64,
    /// A state snapshot being encoded off this thread, and the applied index it is of.
    encoding: Option<(u64, crate::state::command_log::Encoding)>,
    /// An encoded snapshot being staged a chunk per round (`snapshot::stage`): its applied
    /// index and state.
    staging: Option<(u64, Arc<ServerState>, Staging)>,
    /// A flipped snapshot is being merged into the tables, a chunk per round.
    merging: bool,
    /// When the leader was last heard from.
    last_contact: Option<Instant>,
    /// Leader, with an entry of its own term applied.
    leader_ready: bool,
    /// Read barriers registered in this loop round (one `read_index` serves them all).
    reads_new: Vec<ReadReply>,
    /// Read barriers asked of raft-rs, by the request context (a counter) they went with.
    reads: BTreeMap<u64, ReadBatch>,
    /// The context of the next `read_index` request.
    next_read: u64,
    /// When each peer last answered this server (as leader: appends and heartbeats), for
    /// autopilot's `LastContact`.
    peer_contact: BTreeMap<u64, Instant>,
    broken: bool,
}

fn config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_inflight_msgs: MAX_INFLIGHT,
        pre_vote: true,
        check_quorum: true,
        // Read barriers: a heartbeat round a quorum answers, never a clock lease.
        read_only_option: raft::ReadOnlyOption::Safe,
        ..Default::default()
    }
}

macro_rules! st {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| LogError::store($op, e))
    };
}

impl Driver {
    /// Open the Raft storage in the state machine's store (the first start with Raft writes
    /// the state as it stands as the log's base), replace the configuration with `recover`
    /// (peers.json), bootstrap alone when `alone` and the configuration is empty, and build
    /// the node.
    pub(crate) fn open(
        id: u64,
        mut sm: StateMachine,
        rx: Receiver<Input>,
        shared: Arc<Shared>,
        transport: Arc<Transport>,
        alone: bool,
        recover: Option<raft::eraftpb::ConfState>,
    ) -> Result<Driver, RaftError> {
        let mut storage = DiskStorage::load(sm.db()).map_err(RaftError::Store)?;
        if !storage.exists() || sm.plain_log_pending().map_err(RaftError::Store)? {
            // The state of a server before replication (or a new one) is the log's base.
            let txn = st!("begin", sm.db().begin_write()).map_err(RaftError::Store)?;
            let written = sm.write_snapshot(&txn).map_err(RaftError::Store)?;
            if !storage.exists() {
                storage
                    .init(&txn, written.index)
                    .map_err(RaftError::Store)?;
            } else {
                let applied = storage.applied().max(written.index);
                storage
                    .snapshotted(&txn, applied, 0)
                    .map_err(RaftError::Store)?;
            }
            st!("commit", txn.commit()).map_err(RaftError::Store)?;
            sm.snapshot_written(written);
            if sm.state().index > 0 {
                log::info!(
                    "raft: the server state at index {} is the base of the raft log",
                    sm.state().index
                );
            }
        }
        if let Some(cs) = recover {
            // peers.json: the operator's configuration replaces the stored one, once.
            let txn = st!("begin", sm.db().begin_write()).map_err(RaftError::Store)?;
            log::warn!(
                "raft: recovering from peers.json: voters {:x?}, non-voters {:x?}",
                cs.voters,
                cs.learners
            );
            storage.set_conf_state(&txn, cs).map_err(RaftError::Store)?;
            st!("commit", txn.commit()).map_err(RaftError::Store)?;
        }
        if alone && !storage.initialized() {
            let txn = st!("begin", sm.db().begin_write()).map_err(RaftError::Store)?;
            let done = storage.bootstrap(&txn, &[id]).map_err(RaftError::Store)?;
            st!("commit", txn.commit()).map_err(RaftError::Store)?;
            if done {
                log::info!("raft: bootstrapped a configuration of this server alone");
            }
        }
        let applied = storage.applied();
        if storage.hard_state().commit < applied {
            // Everything applied was committed (a store written before the commit index
            // went with each snapshot).
            storage.set_commit(applied);
        }
        let applied_term = storage.term_of(applied).unwrap_or(0);
        let logger = super::logger::logger();
        storage.source = Some(SnapSource {
            state: sm.state(),
            index: applied,
            term: applied_term,
            conf: storage.conf_state().clone(),
        });
        let node = RawNode::new(&config(id, applied), storage, &logger).map_err(RaftError::Raft)?;
        let mut d = Driver {
            id,
            node,
            sm,
            rx,
            shared,
            transport,
            logger,
            pending: BTreeMap::new(),
            pending_conf: BTreeMap::new(),
            applied,
            applied_term,
            snapshot_at: applied,
            encoding: None,
            staging: None,
            merging: false,
            last_contact: None,
            leader_ready: false,
            reads_new: Vec::new(),
            reads: BTreeMap::new(),
            next_read: 1,
            peer_contact: BTreeMap::new(),
            broken: false,
        };
        d.campaign_if_alone();
        d.publish_status();
        Ok(d)
    }

    /// A lone voter elects itself at once (no election timeout to wait out).
    fn campaign_if_alone(&mut self) {
        let cs = self.node.store().conf_state();
        if cs.voters == [self.id] && cs.voters_outgoing.is_empty() {
            if let Err(e) = self.node.campaign() {
                log::warn!("raft: cannot campaign: {e}");
            }
        }
    }

    pub(crate) fn run(mut self) {
        // However the thread ends (a panic included), the status says it stopped.
        struct Stopped(Arc<Shared>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                self.0.update(|s| {
                    s.stopped = true;
                    s.is_leader = false;
                    s.leader_ready = false;
                });
            }
        }
        let _stopped = Stopped(self.shared.clone());
        let mut next_tick = Instant::now() + TICK;
        let mut stop = false;
        while !stop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut inputs = Vec::new();
            match self.rx.recv_timeout(wait) {
                Ok(i) => inputs.push(i),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while inputs.len() < MAX_INPUTS {
                match self.rx.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
            for i in inputs {
                match i {
                    Input::Stop => stop = true,
                    other => self.take(other),
                }
            }
            self.start_reads();
            let now = Instant::now();
            if now >= next_tick {
                self.expire_reads(now);
                self.node.tick();
                next_tick += TICK;
                if next_tick < now {
                    next_tick = now + TICK;
                }
            }
            if self.broken {
                break;
            }
            if let Err(e) = self.on_ready() {
                log::error!(
                    "raft: cannot persist the raft log, this server stops replicating: {e}"
                );
                self.broken = true;
                break;
            }
        }
        self.fail_pending();
        self.fail_reads(BarrierError::Stopped);
        // The encoder is joined; its rows are dropped (the log still holds everything).
        if let Some((_, e)) = self.encoding.take() {
            e.join_discard();
        }
        // The commit index is written with the next transaction; at a clean stop, now.
        if !self.broken {
            let hs = self.node.store().hard_state().clone();
            if let Ok(txn) = self.sm.db().begin_write() {
                if self.node.mut_store().set_hard_state(&txn, hs).is_ok() {
                    let _ = txn.commit();
                }
            }
        }
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Messages(msgs) => {
                for m in msgs {
                    let from_leader = matches!(
                        m.get_msg_type(),
                        MessageType::MsgAppend
                            | MessageType::MsgHeartbeat
                            | MessageType::MsgSnapshot
                    );
                    if from_leader && m.term >= self.node.raft.term {
                        self.last_contact = Some(Instant::now());
                    }
                    let answer = matches!(
                        m.get_msg_type(),
                        MessageType::MsgAppendResponse
                            | MessageType::MsgHeartbeatResponse
                            | MessageType::MsgSnapStatus
                    );
                    if answer && m.from != 0 {
                        self.peer_contact.insert(m.from, Instant::now());
                    }
                    if let Err(e) = self.node.step(m) {
                        log::trace!("raft: message not taken: {e}");
                    }
                }
            }
            Input::Propose(data, cmd, reply) => self.propose(data, cmd, reply),
            Input::ConfChange(cc, reply) => {
                if self.node.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(super::ChangeError::NotLeader));
                    return;
                }
                match self.node.propose_conf_change(vec![], cc) {
                    Ok(()) => {
                        let index = self.node.raft.raft_log.last_index();
                        self.pending_conf.insert(index, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(super::ChangeError::Refused(e)));
                    }
                }
            }
            Input::ReadIndex(reply) => self.reads_new.push(reply),
            Input::Bootstrap(voters) => self.bootstrap(&voters),
            Input::TransferLeader(to, reply) => {
                let answer = if self.node.raft.state != StateRole::Leader {
                    Err(TransferError::NotLeader)
                } else {
                    let cs = self.node.store().conf_state();
                    if !cs.voters.contains(&to) {
                        Err(TransferError::NotVoter)
                    } else {
                        self.node.transfer_leader(to);
                        Ok(self.node.raft.term)
                    }
                };
                let _ = reply.send(answer);
            }
            Input::Unreachable(id) => self.node.report_unreachable(id),
            Input::SnapshotSent(id, ok) => self.node.report_snapshot(
                id,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
            Input::Stop => {}
        }
    }

    fn propose(&mut self, data: Vec<u8>, cmd: Box<Command>, reply: Reply) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(LogError::NotLeader));
            return;
        }
        match self.node.propose(vec![], data) {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                let term = self.node.raft.term;
                self.pending.insert(
                    index,
                    Pending {
                        term,
                        reply,
                        cmd: Some(cmd),
                    },
                );
            }
            Err(_) => {
                let _ = reply.send(Err(LogError::NotLeader));
            }
        }
    }

    /// Bootstrap `voters` (from gossip) when this server's log is still empty and
    /// unconfigured; the node is rebuilt on the new storage.
    fn bootstrap(&mut self, voters: &[u64]) {
        if self.node.store().initialized() {
            return;
        }
        let res = (|| -> Result<bool, LogError> {
            let txn = st!("begin", self.sm.db().begin_write())?;
            let done = self.node.mut_store().bootstrap(&txn, voters)?;
            st!("commit", txn.commit())?;
            Ok(done)
        })();
        match res {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::error!("raft: cannot bootstrap: {e}");
                self.broken = true;
                return;
            }
        }
        let store = std::mem::replace(self.node.mut_store(), DiskStorage::empty());
        let applied = store.applied();
        match RawNode::new(&config(self.id, applied), store, &self.logger) {
            Ok(n) => {
                self.node = n;
                self.applied = applied;
                self.applied_term = self.node.store().term_of(applied).unwrap_or(0);
                self.snapshot_at = applied;
                let source = SnapSource {
                    state: self.sm.state(),
                    index: applied,
                    term: self.applied_term,
                    conf: self.node.store().conf_state().clone(),
                };
                self.node.mut_store().source = Some(source);
                log::info!(
                    "raft: bootstrapped a configuration of {} servers",
                    voters.len()
                );
                self.campaign_if_alone();
            }
            Err(e) => {
                log::error!("raft: cannot restart after bootstrapping: {e}");
                self.broken = true;
            }
        }
        self.publish_status();
    }

    /// Ask raft-rs for one read index for every barrier registered this round (a leader
    /// that applied an entry of its term only: raft-rs ignores the others' requests).
    fn start_reads(&mut self) {
        if self.reads_new.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.reads_new);
        if self.node.raft.state != StateRole::Leader || !self.leader_ready {
            for w in waiters {
                let _ = w.send(Err(BarrierError::NotLeader));
            }
            return;
        }
        let ctx = self.next_read;
        self.next_read += 1;
        self.reads.insert(
            ctx,
            ReadBatch {
                asked: Instant::now(),
                waiters,
            },
        );
        self.node.read_index(ctx.to_be_bytes().to_vec());
    }

    /// Answer the barriers whose read index a quorum confirmed.
    fn answer_reads(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(batch) = self.reads.remove(&u64::from_be_bytes(ctx)) {
                for w in batch.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
    }

    /// Fail the barriers asked longer than [`READ_INDEX_TIMEOUT`] ago.
    fn expire_reads(&mut self, now: Instant) {
        while let Some(entry) = self.reads.first_entry() {
            if now.duration_since(entry.get().asked) < READ_INDEX_TIMEOUT {
                break;
            }
            for w in entry.remove().waiters {
                let _ = w.send(Err(BarrierError::Timeout));
            }
        }
    }

    fn fail_reads(&mut self, why: BarrierError) {
        let batches = std::mem::take(&mut self.reads);
        let waiters = batches
            .into_values()
            .flat_map(|b| b.waiters)
            .chain(std::mem::take(&mut self.reads_new));
        for w in waiters {
            let _ = w.send(Err(why.clone()));
        }
    }

    fn fail_pending(&mut self) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(LogError::NotLeader));
        }
        for (_, r) in std::mem::take(&mut self.pending_conf) {
            let _ = r.send(Err(super::ChangeError::LeadershipLost));
        }
    }

    fn on_ready(&mut self) -> Result<(), LogError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            if ss.raft_state != StateRole::Leader {
                if self.leader_ready || !self.pending.is_empty() {
                    self.fail_pending();
                }
                // raft-rs forgot their requests when it stepped down.
                self.fail_reads(BarrierError::LostLeadership);
                self.leader_ready = false;
            }
            if ss.leader_id != 0 && ss.leader_id != self.id {
                self.last_contact = Some(Instant::now());
            }
        }
        let states = rd.take_read_states();
        self.answer_reads(states);
        // A leader's appends go out before its own write (raft-rs allows it): the followers'
        // fsyncs overlap the leader's.
        self.transport.send(rd.take_messages());
        let started = Instant::now();
        let has_snapshot = !rd.snapshot().is_empty();
        let mut installed = None;
        // Term and vote must be durable before anything is answered; the commit index need
        // not be (Raft learns it again from a quorum): a Ready that only moves it costs no
        // transaction (and no fsync on the write's path), and an append that moves it writes
        // the entries alone. It is written with a vote, a state snapshot, or at a clean stop.
        let vote_moved = rd.hs().is_some_and(|hs| {
            let now = self.node.store().hard_state();
            hs.term != now.term || hs.vote != now.vote
        });
        let hard_state = vote_moved || has_snapshot;
        if !hard_state {
            if let Some(hs) = rd.hs() {
                let commit = hs.commit;
                self.node.mut_store().set_commit(commit);
            }
        }
        if hard_state || !rd.entries().is_empty() {
            let txn = st!("begin", self.sm.db().begin_write())?;
            if has_snapshot {
                let snap = rd.snapshot().clone();
                let state = st!("decode snapshot", ServerState::from_bytes(&snap.data))?;
                let written = self.sm.write_install(&txn, state)?;
                self.node.mut_store().install(&txn, &snap)?;
                installed = Some((written, snap.get_metadata().index, snap.get_metadata().term));
            }
            self.node.mut_store().append(&txn, rd.entries())?;
            if hard_state {
                let hs = match rd.hs() {
                    Some(hs) => hs.clone(),
                    None => self.node.store().hard_state().clone(),
                };
                self.node.mut_store().set_hard_state(&txn, hs)?;
            }
            st!("commit", txn.commit())?;
            self.sm.count_transaction(started.elapsed());
        }
        if let Some((state, index, term)) = installed {
            // A snapshot being encoded or staged is a difference from tables the install
            // replaced (the install settled the stage first).
            if let Some((_, stale)) = self.encoding.take() {
                stale.join_discard();
            }
            self.staging = None;
            self.merging = false;
            self.sm.installed(state);
            self.applied = index;
            self.applied_term = term;
            self.snapshot_at = index;
            log::info!("raft: installed a snapshot of the leader at index {index}");
        }
        // A follower's acknowledgements of the entries just persisted go out before it
        // applies what is committed: the leader's commit (every write's latency) does not
        // wait for a follower's apply of earlier entries (a large plan: milliseconds).
        self.transport.send(rd.take_persisted_messages());
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        self.transport.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.node.advance_apply();
        self.maybe_snapshot()?;
        self.publish_status();
        Ok(())
    }

    /// Apply committed entries in order: commands through the state machine (batched),
    /// membership changes through raft-rs; answer the proposers.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut cmds: Vec<(u64, Command)> = Vec::new();
        let mut terms: Vec<u64> = Vec::new();
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    // This leader's own proposal (same index, same term: the same entry).
                    let proposed = self
                        .pending
                        .get_mut(&e.index)
                        .filter(|p| p.term == e.term)
                        .and_then(|p| p.cmd.take());
                    if let Some(c) = proposed {
                        cmds.push((e.index, *c));
                        terms.push(e.term);
                    } else if !e.data.is_empty() {
                        match serde_json::from_slice::<Command>(&e.data) {
                            Ok(c) => {
                                cmds.push((e.index, c));
                                terms.push(e.term);
                            }
                            // Every server fails the same way: the entry changes nothing.
                            Err(err) => log::error!(
                                "raft: entry {} is not a command ({err}); skipped",
                                e.index
                            ),
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.flush(&mut cmds, &mut terms);
                    self.apply_conf_change(&e)?;
                }
            }
            self.applied = e.index;
            self.applied_term = e.term;
            if self.node.raft.state == StateRole::Leader && e.term == self.node.raft.term {
                self.leader_ready = true;
            }
        }
        self.flush(&mut cmds, &mut terms);
        // What a follower that is behind the log gets.
        let source = SnapSource {
            state: self.sm.state(),
            index: self.applied,
            term: self.applied_term,
            conf: self.node.store().conf_state().clone(),
        };
        self.node.mut_store().source = Some(source);
        Ok(())
    }

    /// Apply the commands collected so far and answer their proposers.
    fn flush(&mut self, cmds: &mut Vec<(u64, Command)>, terms: &mut Vec<u64>) {
        if cmds.is_empty() {
            return;
        }
        let started = Instant::now();
        let results = self.sm.apply(cmds);
        let took = started.elapsed();
        if took > SLOW_APPLY {
            log::debug!(
                "raft: applying {} entries (up to {}) took {took:?}",
                cmds.len(),
                cmds.last().map_or(0, |(i, _)| *i)
            );
        }
        for (((index, _), term), result) in cmds.iter().zip(terms.iter()).zip(results) {
            // Proposals at lower indexes were overwritten by another leader's entries.
            while let Some((&i, _)) = self.pending.first_key_value() {
                if i >= *index {
                    break;
                }
                if let Some(p) = self.pending.remove(&i) {
                    let _ = p.reply.send(Err(LogError::NotLeader));
                }
            }
            if let Some(p) = self.pending.remove(index) {
                let answer = if p.term == *term {
                    result
                } else {
                    Err(LogError::NotLeader)
                };
                let _ = p.reply.send(answer);
            }
        }
        cmds.clear();
        terms.clear();
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), LogError> {
        let cs = if e.get_entry_type() == EntryType::EntryConfChange {
            let cc = st!("decode conf change", ConfChange::parse_from_bytes(&e.data))?;
            let what = match cc.get_change_type() {
                ConfChangeType::AddNode => "added",
                ConfChangeType::RemoveNode => "removed",
                ConfChangeType::AddLearnerNode => "added as a non-voter",
            };
            log::info!("raft: server {:x} {what} at index {}", cc.node_id, e.index);
            self.node.apply_conf_change(&cc)
        } else {
            let cc = st!(
                "decode conf change",
                ConfChangeV2::parse_from_bytes(&e.data)
            )?;
            self.node.apply_conf_change(&cc)
        };
        let answer = match cs {
            Ok(cs) => {
                let txn = st!("begin", self.sm.db().begin_write())?;
                self.node.mut_store().set_conf_state(&txn, cs)?;
                st!("commit", txn.commit())?;
                Ok(())
            }
            Err(err) => {
                log::warn!("raft: membership change at {} refused: {err}", e.index);
                Err(super::ChangeError::Refused(err))
            }
        };
        if let Some(r) = self.pending_conf.remove(&e.index) {
            let _ = r.send(answer);
        }
        Ok(())
    }

    /// Every [`SNAPSHOT_EVERY`] applied entries: the state tables are written (the rows that
    /// changed) and the log before them, but for [`TRAILING_ENTRIES`], dropped.
    fn maybe_snapshot(&mut self) -> Result<(), LogError> {
        if self.merging || self.staging.is_some() {
            return self.snapshot_step();
        }
        if self.encoding.as_ref().is_some_and(|(_, e)| e.is_done()) {
            if let Some((applied, encoding)) = self.encoding.take() {
                let Some((state, rows)) = encoding.finish() else {
                    // The encoder failed (logged): the next round starts another.
                    return Ok(());
                };
                return match Staging::of(rows) {
                    // Staged, flipped and merged a chunk per round (no round holds the
                    // whole snapshot's write).
                    Ok(staging) => {
                        self.staging = Some((applied, state, staging));
                        Ok(())
                    }
                    Err(rows) => self.write_rows_at(applied, state, *rows),
                };
            }
        }
        if self.encoding.is_some() || self.applied < self.snapshot_at + SNAPSHOT_EVERY {
            return Ok(());
        }
        // Encoded off this thread (hundreds of ms with many objects, which held replication
        // and apply): written by a later round once done.
        match self.sm.start_encoding() {
            Ok(e) => {
                self.encoding = Some((self.applied, e));
                Ok(())
            }
            Err(e) => {
                log::warn!("raft: cannot start the snapshot encoder ({e}): encoding here");
                self.write_snapshot_now()
            }
        }
    }

    /// One step of a snapshot on its way, in a transaction of its own: merge a chunk of a
    /// flipped one, or stage a chunk (the last one flips it: the raft log is compacted to
    /// it in the same transaction).
    fn snapshot_step(&mut self) -> Result<(), LogError> {
        let started = Instant::now();
        let txn = self.step_transaction()?;
        if self.merging {
            let done = st!("snapshot", stage::merge(&txn, false))?;
            st!("commit", txn.commit())?;
            self.sm.count_transaction(started.elapsed());
            if done {
                self.merging = false;
                self.sm.compact_if_grown();
            }
            return Ok(());
        }
        let Some((applied, _, staging)) = self.staging.as_mut() else {
            return Ok(());
        };
        let applied = *applied;
        let (step, n) = st!("snapshot", staging.step(&txn, false))?;
        if step == Step::Staging {
            st!("commit", txn.commit())?;
            staging.committed(n);
            self.sm.count_transaction(started.elapsed());
            return Ok(());
        }
        self.sm.empty_plain_log(&txn, "snapshot")?;
        if let Some((_, state, _)) = self.staging.take() {
            self.finish_snapshot(txn, state, applied)?;
            self.merging = true;
        }
        Ok(())
    }

    /// A transaction for one snapshot step, not made durable by its own commit: the next
    /// durable commit (the next round's append, a vote, a membership change, the store's
    /// close) writes it with its own fsync. A step's fsync of its own was one more on the
    /// path of every write: a snapshot of ~1 000 changed rows is ~90 steps, one per round,
    /// and every server took them at the same rounds (the register p99 on 3 servers). A
    /// crash before that commit leaves the store at an earlier commit, which is whole: a
    /// stage not flipped is cleared at start-up, a flip lost leaves the log it would have
    /// compacted, a merge lost is finished by start-up's settle.
    fn step_transaction(&self) -> Result<redb::WriteTransaction, LogError> {
        let mut txn = st!("begin", self.sm.db().begin_write())?;
        st!("durability", txn.set_durability(redb::Durability::None))?;
        Ok(txn)
    }

    /// Write a whole encoded snapshot (its `rows`) of applied index `applied`.
    fn write_rows_at(
        &mut self,
        applied: u64,
        state: Arc<crate::state::command::ServerState>,
        rows: crate::state::snapshot::Rows,
    ) -> Result<(), LogError> {
        let txn = st!("begin", self.sm.db().begin_write())?;
        st!("snapshot", rows.write(&txn))?;
        self.sm.empty_plain_log(&txn, "snapshot")?;
        self.finish_snapshot(txn, state, applied)
    }

    /// Encode and write the snapshot of the current state on this thread.
    fn write_snapshot_now(&mut self) -> Result<(), LogError> {
        let txn = st!("begin", self.sm.db().begin_write())?;
        let written = self.sm.write_snapshot(&txn)?;
        let applied = self.applied;
        self.finish_snapshot(txn, written, applied)
    }

    /// The rows of the snapshot of applied index `applied` are in `txn`: mark the raft log
    /// compacted to it, keep the commit index, commit, publish.
    fn finish_snapshot(
        &mut self,
        txn: redb::WriteTransaction,
        written: Arc<crate::state::command::ServerState>,
        applied: u64,
    ) -> Result<(), LogError> {
        self.node.mut_store().snapshotted(
            &txn,
            applied,
            applied.saturating_sub(TRAILING_ENTRIES),
        )?;
        // The commit index (only in memory since the last write) goes with it: never an
        // applied index above the durable commit.
        let hs = self.node.store().hard_state().clone();
        self.node.mut_store().set_hard_state(&txn, hs)?;
        st!("commit", txn.commit())?;
        self.sm.snapshot_written(written);
        self.snapshot_at = applied;
        self.sm.compact_if_grown();
        Ok(())
    }

    fn publish_status(&mut self) {
        let r = &self.node.raft;
        let cs = self.node.store().conf_state();
        let (voters, learners) = (cs.voters.clone(), cs.learners.clone());
        let initialized = self.node.store().initialized();
        let is_leader = r.state == StateRole::Leader;
        let (term, leader_id, commit, last_index) = (
            r.term,
            r.leader_id,
            r.raft_log.committed,
            r.raft_log.last_index(),
        );
        let (applied, leader_ready, last_contact) =
            (self.applied, self.leader_ready, self.last_contact);
        let last_term = r.raft_log.last_term();
        let progress: BTreeMap<u64, PeerProgress> = if is_leader {
            r.prs()
                .iter()
                .map(|(id, pr)| {
                    (
                        *id,
                        PeerProgress {
                            matched: pr.matched,
                            last_term: r.raft_log.term(pr.matched).unwrap_or(0),
                            last_contact: self.peer_contact.get(id).copied(),
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        self.shared.update(|s| {
            s.id = self.id;
            s.is_leader = is_leader;
            s.leader_ready = is_leader && leader_ready;
            s.term = term;
            s.leader_id = leader_id;
            s.voters = voters;
            s.learners = learners;
            s.applied = applied;
            s.commit = commit;
            s.last_index = last_index;
            s.last_term = last_term;
            s.progress = progress;
            s.last_contact = last_contact;
            s.initialized = initialized;
        });
    }
}
