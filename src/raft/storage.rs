//! Raft's log, hard state and configuration in the server's redb store
//! (`<data_dir>/server/state.redb`, beside the state tables), mirrored in memory for
//! raft-rs's [`Storage`] reads. Only the driver thread writes, always inside the one write
//! transaction of a `Ready`; the memory mirror changes with the staged writes (a failed
//! commit stops the driver, so the two never disagree while it runs).
//!
//! Tables: `raft_log` (index → protobuf `Entry`), `raft_meta` (`hard_state`, `conf_state`,
//! `log_start`: index and term of the last entry the log dropped, `applied`: the index the
//! state tables hold).

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use redb::{Database, ReadableDatabase, TableDefinition, WriteTransaction};

use crate::state::command::ServerState;
use crate::state::command_log::LogError;

/// The Raft log: index → entry (protobuf).
const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft's small records (protobuf, or a u64 as 8 big-endian bytes).
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const LOG_START: &str = "log_start";
const APPLIED: &str = "applied";

macro_rules! st {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| LogError::store($op, e))
    };
}

/// What `snapshot()` serves a follower that is behind the log: the state as applied, at
/// `index` (of `term`), with the configuration then.
#[derive(Clone)]
pub struct SnapSource {
    pub state: Arc<ServerState>,
    pub index: u64,
    pub term: u64,
    pub conf: ConfState,
}

/// The Raft storage: the durable records, mirrored in memory.
pub struct DiskStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry the log no longer holds (0, 0 at the start).
    start: (u64, u64),
    /// The entries after `start`, in order.
    entries: Vec<Entry>,
    /// The index the state tables hold (where applying resumes after a restart).
    applied: u64,
    /// Whether the records exist (false: the first start with Raft on this store).
    exists: bool,
    /// What `snapshot()` serves.
    pub source: Option<SnapSource>,
}

fn u64_bytes(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn bytes_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if b.len() == 8 {
        a.copy_from_slice(b);
    }
    u64::from_be_bytes(a)
}

fn start_bytes(index: u64, term: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..].copy_from_slice(&term.to_be_bytes());
    out
}

fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, LogError> {
    st!("encode raft record", m.write_to_bytes())
}

fn put(txn: &WriteTransaction, key: &str, value: &[u8]) -> Result<(), LogError> {
    let mut t = st!("raft meta", txn.open_table(RAFT_META))?;
    st!("raft meta", t.insert(key, value))?;
    Ok(())
}

impl DiskStorage {
    /// A placeholder with nothing in it (while the node is rebuilt).
    pub fn empty() -> DiskStorage {
        DiskStorage {
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            start: (0, 0),
            entries: Vec::new(),
            applied: 0,
            exists: false,
            source: None,
        }
    }

    /// Read the records from `db` (none yet: an empty, non-existing storage).
    pub fn load(db: &Database) -> Result<DiskStorage, LogError> {
        {
            let txn = st!("begin", db.begin_write())?;
            st!("open", txn.open_table(RAFT_LOG))?;
            st!("open", txn.open_table(RAFT_META))?;
            st!("commit", txn.commit())?;
        }
        let txn = st!("read", db.begin_read())?;
        let meta = st!("read", txn.open_table(RAFT_META))?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, LogError> {
            Ok(st!("read", meta.get(k))?.map(|v| v.value().to_vec()))
        };
        let mut s = DiskStorage::empty();
        if let Some(b) = get(HARD_STATE)? {
            s.hard_state = st!("decode hard state", HardState::parse_from_bytes(&b))?;
            s.exists = true;
        }
        if let Some(b) = get(CONF_STATE)? {
            s.conf_state = st!("decode conf state", ConfState::parse_from_bytes(&b))?;
        }
        if let Some(b) = get(LOG_START)? {
            if b.len() == 16 {
                s.start = (bytes_u64(&b[..8]), bytes_u64(&b[8..]));
            }
        }
        if let Some(b) = get(APPLIED)? {
            s.applied = bytes_u64(&b);
        }
        let log = st!("read", txn.open_table(RAFT_LOG))?;
        for row in st!("read", log.range(s.start.0 + 1..))? {
            let (_, v) = st!("read", row)?;
            let e = st!("decode raft entry", Entry::parse_from_bytes(v.value()))?;
            if e.index != s.start.0 + 1 + s.entries.len() as u64 {
                return Err(LogError::store("read raft log", "the raft log has a gap"));
            }
            s.entries.push(e);
        }
        Ok(s)
    }

    /// Whether Raft ran on this store before.
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// Whether this server is part of a configuration (bootstrapped, or added by a leader).
    pub fn initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn first(&self) -> u64 {
        self.start.0 + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.start.0, |e| e.index)
    }

    /// The term of `index` if the log knows it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.start.0 {
            return Some(self.start.1);
        }
        if index < self.first() || index > self.last() {
            return None;
        }
        self.entries
            .get((index - self.first()) as usize)
            .map(|e| e.term)
    }

    /// The first start with Raft: the state tables (written by the caller in `txn`) are at
    /// `base`, where the log starts.
    pub fn init(&mut self, txn: &WriteTransaction, base: u64) -> Result<(), LogError> {
        self.start = (base, if base > 0 { 1 } else { 0 });
        self.applied = base;
        self.hard_state = HardState::default();
        self.hard_state.commit = base;
        self.hard_state.term = self.start.1;
        self.exists = true;
        self.write_all_meta(txn)
    }

    /// Bootstrap the configuration `voters` on an empty log: the log starts at index
    /// `max(base, 1)`, term 1, on every server of the bootstrap alike (a server added later
    /// gets a snapshot, never these entries). `false`: not empty any more (nothing done).
    pub fn bootstrap(&mut self, txn: &WriteTransaction, voters: &[u64]) -> Result<bool, LogError> {
        if self.initialized() || !self.entries.is_empty() || self.applied != self.start.0 {
            return Ok(false);
        }
        let index = self.start.0.max(1);
        self.start = (index, 1);
        self.applied = index;
        self.hard_state.term = self.hard_state.term.max(1);
        self.hard_state.commit = index;
        self.conf_state = ConfState::default();
        self.conf_state.voters = voters.to_vec();
        self.write_all_meta(txn)?;
        Ok(true)
    }

    fn write_all_meta(&self, txn: &WriteTransaction) -> Result<(), LogError> {
        put(txn, HARD_STATE, &encode(&self.hard_state)?)?;
        put(txn, CONF_STATE, &encode(&self.conf_state)?)?;
        put(txn, LOG_START, &start_bytes(self.start.0, self.start.1))?;
        put(txn, APPLIED, &u64_bytes(self.applied))
    }

    /// Append `ents` (replacing whatever the log held from their first index on).
    pub fn append(&mut self, txn: &WriteTransaction, ents: &[Entry]) -> Result<(), LogError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index < self.first() || first.index > self.last() + 1 {
            return Err(LogError::store(
                "append raft log",
                format!(
                    "entries from {} do not follow the log ({}..={})",
                    first.index,
                    self.first(),
                    self.last()
                ),
            ));
        }
        let mut log = st!("append", txn.open_table(RAFT_LOG))?;
        if first.index <= self.last() {
            st!("append", log.retain_in(first.index.., |_, _| false))?;
            self.entries.truncate((first.index - self.first()) as usize);
        }
        for e in ents {
            st!("append", log.insert(e.index, encode(e)?.as_slice()))?;
        }
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    pub fn set_hard_state(
        &mut self,
        txn: &WriteTransaction,
        hs: HardState,
    ) -> Result<(), LogError> {
        self.hard_state = hs;
        put(txn, HARD_STATE, &encode(&self.hard_state)?)
    }

    /// Only the commit index moved (persisted with the next write that happens anyway).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn set_conf_state(
        &mut self,
        txn: &WriteTransaction,
        cs: ConfState,
    ) -> Result<(), LogError> {
        self.conf_state = cs;
        put(txn, CONF_STATE, &encode(&self.conf_state)?)
    }

    /// A snapshot from the leader: the log restarts after it (the caller writes its state).
    pub fn install(&mut self, txn: &WriteTransaction, snap: &Snapshot) -> Result<(), LogError> {
        let meta = snap.get_metadata();
        self.start = (meta.index, meta.term);
        self.entries.clear();
        self.applied = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        let mut log = st!("install", txn.open_table(RAFT_LOG))?;
        st!("install", log.retain(|_, _| false))?;
        drop(log);
        self.write_all_meta(txn)
    }

    /// The state tables now hold everything up to `applied` (a snapshot was written in
    /// `txn`); the log before `compact_to` (≤ `applied`) is dropped.
    pub fn snapshotted(
        &mut self,
        txn: &WriteTransaction,
        applied: u64,
        compact_to: u64,
    ) -> Result<(), LogError> {
        self.applied = applied;
        put(txn, APPLIED, &u64_bytes(applied))?;
        put(txn, CONF_STATE, &encode(&self.conf_state)?)?;
        let compact_to = compact_to.min(applied).min(self.last());
        if compact_to > self.start.0 {
            if let Some(term) = self.term_of(compact_to) {
                let mut log = st!("compact", txn.open_table(RAFT_LOG))?;
                st!("compact", log.retain_in(..=compact_to, |_, _| false))?;
                let n = (compact_to - self.start.0) as usize;
                self.entries.drain(..n.min(self.entries.len()));
                self.start = (compact_to, term);
                put(txn, LOG_START, &start_bytes(compact_to, term))?;
            }
        }
        Ok(())
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || high < low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let a = (low - self.first()) as usize;
        let b = (high - self.first()) as usize;
        let mut out = self.entries[a..b].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.start.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // An index of 0 is raft-rs's "no snapshot"; a configuration without voters is not
        // one a follower can restore.
        let usable =
            |s: &&SnapSource| s.index >= request_index && s.index > 0 && !s.conf.voters.is_empty();
        let Some(src) = self.source.as_ref().filter(usable) else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let data = src
            .state
            .to_bytes()
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = src.index;
        meta.term = src.term;
        meta.set_conf_state(src.conf.clone());
        Ok(snap)
    }
}
