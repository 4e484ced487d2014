//! The command log: server-state [`Command`]s appended to a redb database
//! (`<data_dir>/server/state.redb`) by one committer thread, many commands per transaction
//! (group commit: one fsync per batch), applied after they are durable and published as an
//! immutable [`ServerState`] snapshot. Every [`SNAPSHOT_EVERY`] commands the state itself is
//! written and the log entries it covers are deleted; start-up loads that snapshot and
//! replays the log after it.
//!
//! A replicated server (Raft, `src/raft/`) opens the same store with
//! [`CommandLog::open_replicated`]: no committer thread; the consensus driver takes the
//! [`StateMachine`] (the store, the published state, the counter and the event broker),
//! persists its own log in the same redb file, applies committed commands through
//! [`StateMachine::apply`], and answers [`CommandLog::propose`] through the [`Replicator`] it
//! sets.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::command::{apply, Applied, ApplyError, Command, ServerState};
use super::event_broker::EventBroker;
use super::events::{events_of, EventBatch};
use super::reaper::Reaper;
use super::snapshot;
use super::snapshot::stage::{self, Staging, Step};
use super::IndexCounter;

/// The log: index → the command applied at that index (JSON).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// A snapshot is written (and the log it covers deleted) after this many logged commands.
pub const SNAPSHOT_EVERY: u64 = 1024;
/// At most this many commands go into one transaction.
pub const MAX_BATCH: usize = 256;
/// redb's page cache: the state lives in memory anyway, the cache only serves the log.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// The file is considered for compaction after a snapshot once it is this many times the
/// size it had after the last compaction (redb reuses freed pages but never shrinks the file
/// by itself) ...
const COMPACT_GROWTH: u64 = 2;
/// ... and compacted only when at most 1/this of it is allocated. A compaction rewrites the
/// whole file while every writer waits (100–300 ms at 10–20 MB), so it must buy back space
/// that is really free: redb grows a full file by doubling it, so a file whose live data
/// grows is half free right after each growth and gains nothing from a compaction. Judged by
/// size alone, 4 concurrent writers registering jobs got a compaction at every snapshot once
/// the file passed [`COMPACT_MIN_BYTES`].
const COMPACT_FREE_RATIO: u64 = 4;
/// ... and at least this big: below it a compaction is not worth the pause.
const COMPACT_MIN_BYTES: u64 = 8 * 1024 * 1024;
/// How long the committer thread waits for a proposal before it ends (an idle agent runs
/// none); its state stays in [`CommitterSlot`] and the next proposal starts a new thread.
#[cfg(not(test))]
const IDLE_EXIT: Duration = Duration::from_secs(3);
/// Unit tests: short, so proposals can race the thread's end many times.
#[cfg(test)]
const IDLE_EXIT: Duration = Duration::from_millis(20);
/// How long a proposer waits for its answer (the committer answers as soon as the batch's
/// fsync is done; only a hung disk takes this long).
const ANSWER_DEADLINE: Duration = Duration::from_secs(300);

/// The log file under the data dir.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("state.redb")
}

/// Why the store failed: redb's, the file system's or the snapshot codec's own error.
pub type StoreCause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A command that was not made durable, or the state that could not be loaded.
#[derive(Debug)]
pub enum LogError {
    /// The store failed (open, transaction, fsync): nothing of the batch was published.
    /// `source` is shared (not boxed) because one failed batch answers every proposal in it.
    Store {
        op: &'static str,
        source: StoreCause,
    },
    /// The command changes nothing (applied, deterministically, to an error).
    Apply(ApplyError),
    /// The committer is stopped (shutdown) or did not answer in time.
    Closed(&'static str),
    /// A replicated server that is not the leader (or lost leadership before the write
    /// committed: it may still be applied by the next leader).
    NotLeader,
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Store { op, source } => write!(f, "{op}: {source}"),
            LogError::Apply(e) => write!(f, "{e}"),
            LogError::Closed(why) => write!(f, "{why}"),
            LogError::NotLeader => f.write_str("not leader"),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Store { source, .. } => Some(&**source),
            LogError::Apply(_) | LogError::Closed(_) | LogError::NotLeader => None,
        }
    }
}

impl LogError {
    /// The store failed at `op`, for the reason `cause` (kept as the error's source).
    pub fn store(
        op: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> LogError {
        LogError::Store {
            op,
            source: Arc::from(cause.into()),
        }
    }
}

macro_rules! st {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| LogError::store($op, e))
    };
}

/// One command waiting for the committer, and where its answer goes.
struct Proposal {
    cmd: Command,
    reply: Sender<Result<(Applied, u64), LogError>>,
}

enum Msg {
    Propose(Proposal),
    Stop,
}

/// Counters of the committer (tests and the bench read them).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Write transactions committed (each one fsync).
    pub transactions: AtomicU64,
    /// Commands committed.
    pub commands: AtomicU64,
    /// Time spent applying commands and encoding them (nanoseconds, all batches).
    pub apply_nanos: AtomicU64,
    /// Time spent in write transactions: insert, commit, fsync (nanoseconds).
    pub write_nanos: AtomicU64,
    /// Time spent publishing and answering (nanoseconds).
    pub publish_nanos: AtomicU64,
    /// Tests: make every write transaction fail (as on a full disk).
    #[cfg(test)]
    pub fail_writes: std::sync::atomic::AtomicBool,
}

/// The committer: its state while no thread runs it, and the thread while one does. A
/// thread runs only while proposals come ([`IDLE_EXIT`]); `running` and `parked` change only
/// under the lock, and a thread parks its state only when the queue is empty then, so a
/// proposal sent before a proposer takes the lock is either taken by the running thread or
/// finds none running and starts one.
#[derive(Default)]
struct CommitterSlot {
    parked: Option<Committer>,
    handle: Option<JoinHandle<()>>,
    running: bool,
    /// `shutdown` began: no thread starts again; what is queued after the last one gets a
    /// closed channel.
    stopped: bool,
}

impl CommitterSlot {
    /// Drop every queued message: their proposers see "shut down" (no thread runs).
    fn drain(queue: &Receiver<Msg>) {
        while queue.try_recv().is_ok() {}
    }

    /// Start a thread for the parked committer (none runs; called under the lock).
    fn spawn(
        &mut self,
        shared: &Arc<Mutex<CommitterSlot>>,
        queue: &Receiver<Msg>,
    ) -> std::io::Result<()> {
        if let Some(old) = self.handle.take() {
            // It parked its state (under this lock) and holds nothing: joined at once.
            let _ = old.join();
        }
        let (slot, rx) = (shared.clone(), queue.clone());
        let handle = std::thread::Builder::new()
            .name("state-committer".into())
            .spawn(move || {
                let parked = slot.lock().parked.take();
                if let Some(committer) = parked {
                    committer.run(&rx, &slot);
                }
            })?;
        self.handle = Some(handle);
        self.running = true;
        Ok(())
    }
}

/// The durable command log and the published state.
pub struct CommandLog {
    published: Arc<RwLock<Arc<ServerState>>>,
    proposals: Sender<Msg>,
    /// The committer's end of `proposals` (each thread gets a clone).
    queue: Receiver<Msg>,
    committer: Arc<Mutex<CommitterSlot>>,
    pub stats: Arc<LogStats>,
    /// The events of applied commands (`/v1/event/stream`).
    events: Arc<EventBroker>,
    /// Replicated: the consensus driver that answers proposals (set once it runs).
    replicator: OnceLock<Arc<dyn Replicator>>,
    /// Replicated: the state machine, until the consensus driver takes it.
    machine: Mutex<Option<StateMachine>>,
    replicated: bool,
}

/// What answers proposals of a replicated log (the Raft driver): a command is answered once
/// it is committed and applied here, or refused (`NotLeader`).
pub trait Replicator: Send + Sync {
    /// Propose `cmd` and wait for its answer (as [`CommandLog::propose`]).
    fn propose(&self, cmd: Command) -> Result<(Applied, u64), LogError>;
    /// Stop replicating and join the driver (closes the store).
    fn shutdown(&self);
}

impl fmt::Debug for CommandLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandLog").finish_non_exhaustive()
    }
}

/// What [`CommandLog::open`] found.
pub struct Opened {
    pub log: CommandLog,
    /// The store was new and `import` filled it (durably).
    pub imported: bool,
}

fn open_db(path: &Path) -> Result<Database, LogError> {
    st!(
        "open",
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
    )
}

/// What start-up read: the state of the snapshot, the state after the log replay, and
/// whether the snapshot was in the format before tables (to be rewritten once).
struct Loaded {
    snapshot: ServerState,
    state: ServerState,
    old_format: bool,
}

/// Load the snapshot (tables, or the whole-state value of earlier versions) and replay the
/// log after it.
fn load_state(db: &Database) -> Result<Loaded, LogError> {
    let txn = st!("read", db.begin_read())?;
    let (snapshot, old_format) = match st!("read snapshot", snapshot::load(&txn))? {
        Some(s) => (s, false),
        None => match st!("read old snapshot", snapshot::load_old(&txn))? {
            Some(s) => (s, true),
            None => (ServerState::default(), false),
        },
    };
    let read = std::time::Instant::now();
    let mut state = snapshot.clone();
    let log = st!("read", txn.open_table(LOG))?;
    for row in st!("read", log.range(state.index + 1..))? {
        let (k, v) = st!("read", row)?;
        let cmd: Command = st!("decode log entry", serde_json::from_slice(v.value()))?;
        // A command that failed when it was first applied fails the same way again.
        let _ = apply(&mut state, &cmd, k.value());
    }
    log::debug!(
        "log replay: {} commands in {} ms",
        state.index.saturating_sub(snapshot.index),
        read.elapsed().as_millis()
    );
    Ok(Loaded {
        snapshot,
        state,
        old_format,
    })
}

/// Write `state` as the snapshot (only what differs from `prev`, the state of the previous
/// snapshot; `None`: all of it) and delete the log it covers, in one transaction. `old`:
/// the whole-state snapshot of earlier versions goes too.
fn write_snapshot(
    db: &Database,
    prev: Option<&ServerState>,
    state: &ServerState,
    old: bool,
) -> Result<(), LogError> {
    let txn = st!("begin", db.begin_write())?;
    st!("snapshot", snapshot::write(&txn, prev, state))?;
    if old {
        st!("snapshot", snapshot::drop_old(&txn))?;
    }
    {
        let mut log = st!("snapshot", txn.open_table(LOG))?;
        st!("snapshot", log.retain_in(..=state.index, |_, _| false))?;
    }
    st!("commit", txn.commit())
}

/// Give the space freed by snapshots back to the file system when the file grew past
/// [`COMPACT_GROWTH`] times its size after the last compaction and most of it is free
/// ([`COMPACT_FREE_RATIO`]). Returns the size to compare with next time: after a compaction,
/// or now when the file was found mostly in use (checked again once it doubles from here).
fn compact_if_grown(db: &mut Database, path: &Path, after_last: u64) -> u64 {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size < COMPACT_MIN_BYTES || size < after_last.saturating_mul(COMPACT_GROWTH) {
        return after_last;
    }
    // Counting the allocated pages walks every tree: once per doubling of the file, not at
    // every snapshot after the first doubling (that walk held every writer at each one).
    match allocated_bytes(db) {
        Some(used) if used.saturating_mul(COMPACT_FREE_RATIO) > size => return size,
        Some(_) => {}
        None => return size,
    }
    match db.compact() {
        Ok(_) => {
            let now = std::fs::metadata(path).map(|m| m.len()).unwrap_or(size);
            log::debug!("state store compacted: {size} → {now} bytes");
            now
        }
        Err(e) => {
            log::warn!("cannot compact the state store: {e}");
            size
        }
    }
}

/// The bytes of the pages the store's tables use now (`None`: the store cannot say).
fn allocated_bytes(db: &Database) -> Option<u64> {
    let txn = db.begin_write().ok()?;
    let stats = txn.stats().ok();
    if let Err(e) = txn.abort() {
        log::debug!("state store stats: {e}");
    }
    let stats = stats?;
    Some(
        stats
            .allocated_pages()
            .saturating_mul(stats.page_size() as u64),
    )
}

/// What [`load_store`] found: the open store, the loaded state, whether it was imported.
struct LoadedStore {
    db: Database,
    loaded: Loaded,
    imported: bool,
    compacted_size: u64,
}

/// Open (or create) the store at `path` and load the state (a new store is filled by
/// `import` first, durably; a store of the earlier format is rewritten once).
fn load_store(
    path: &Path,
    import: impl FnOnce() -> Result<ServerState, LogError>,
) -> Result<LoadedStore, LogError> {
    if let Some(dir) = path.parent() {
        st!("create dir", std::fs::create_dir_all(dir))?;
    }
    let mut db = open_db(path)?;
    {
        // The log table exists from the start (reads of a new store find it empty), and
        // a snapshot left half-way by a stop is settled: finished if it flipped, else
        // forgotten (the log still holds what it would have covered).
        let txn = st!("begin", db.begin_write())?;
        st!("open", txn.open_table(LOG))?;
        st!("settle snapshot", snapshot::stage::settle(&txn))?;
        st!("commit", txn.commit())?;
    }
    let started = std::time::Instant::now();
    let mut loaded = load_state(&db)?;
    let fresh = {
        let txn = st!("read", db.begin_read())?;
        let log = st!("read", txn.open_table(LOG))?;
        let no_snapshot = st!("read", snapshot::load(&txn))?.is_none() && !loaded.old_format;
        no_snapshot && st!("read", log.is_empty())?
    };
    let mut imported = false;
    if fresh {
        let state = import()?;
        write_snapshot(&db, None, &state, false)?;
        if state.index > 0 {
            st!("compact", db.compact())?;
        }
        imported = state.index > 0 || !state.jobs.is_empty() || !state.acl.tokens.is_empty();
        loaded = load_state(&db)?;
    } else if loaded.old_format {
        // Earlier versions kept one JSON value: rewrite it as tables, once.
        write_snapshot(&db, None, &loaded.state, true)?;
        st!("compact", db.compact())?;
        log::info!("server state snapshot rewritten as tables");
        loaded.snapshot = loaded.state.clone();
    }
    let compacted_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    log::info!(
        "server state loaded at index {}: {} jobs, {} evals, {} allocs, {} nodes in {} ms ({} bytes on disk)",
        loaded.state.index,
        loaded.state.jobs.len(),
        loaded.state.evals.len(),
        loaded.state.allocs.len(),
        loaded.state.nodes.len(),
        started.elapsed().as_millis(),
        compacted_size
    );
    Ok(LoadedStore {
        db,
        loaded,
        imported,
        compacted_size,
    })
}

impl CommandLog {
    /// Open (or create) the log at `path`, load the state and start the committer. A new
    /// store is filled by `import` first (the state of an older data dir), durably.
    pub fn open(
        path: &Path,
        counter: Arc<IndexCounter>,
        import: impl FnOnce() -> Result<ServerState, LogError>,
    ) -> Result<Opened, LogError> {
        let LoadedStore {
            db,
            loaded,
            imported,
            compacted_size,
        } = load_store(path, import)?;
        let state = Arc::new(loaded.state);
        counter.observe(state.index);
        let published = Arc::new(RwLock::new(state.clone()));
        let stats = Arc::new(LogStats::default());
        let (tx, rx) = unbounded();
        let events = Arc::new(EventBroker::new());
        let committer = Committer {
            path: path.to_path_buf(),
            db: Some(db),
            current: state,
            snapshotted: Arc::new(loaded.snapshot),
            compacted_size,
            since_snapshot: 0,
            encoding: None,
            staging: None,
            merging: false,
            trim_to: 0,
            published: published.clone(),
            counter,
            stats: stats.clone(),
            events: events.clone(),
            reaper: Reaper::default(),
            compact_due: false,
        };
        // No thread yet: the first proposal starts one.
        let slot = CommitterSlot {
            parked: Some(committer),
            ..CommitterSlot::default()
        };
        Ok(Opened {
            log: CommandLog {
                published,
                proposals: tx,
                queue: rx,
                committer: Arc::new(Mutex::new(slot)),
                stats,
                events,
                replicator: OnceLock::new(),
                machine: Mutex::new(None),
                replicated: false,
            },
            imported,
        })
    }

    /// Open the store for a replicated server: the state is loaded as [`CommandLog::open`]
    /// does, but no committer runs; [`CommandLog::take_state_machine`] hands the store to the
    /// consensus driver, which sets the [`Replicator`] that answers proposals.
    pub fn open_replicated(
        path: &Path,
        counter: Arc<IndexCounter>,
        import: impl FnOnce() -> Result<ServerState, LogError>,
    ) -> Result<Opened, LogError> {
        let LoadedStore {
            db,
            loaded,
            imported,
            compacted_size,
        } = load_store(path, import)?;
        let state = Arc::new(loaded.state);
        counter.observe(state.index);
        let published = Arc::new(RwLock::new(state.clone()));
        let stats = Arc::new(LogStats::default());
        let events = Arc::new(EventBroker::new());
        let machine = StateMachine {
            path: path.to_path_buf(),
            db,
            current: state,
            snapshotted: Arc::new(loaded.snapshot),
            plain_log_left: true,
            compacted_size,
            published: published.clone(),
            counter,
            stats: stats.clone(),
            events: events.clone(),
            reaper: Reaper::default(),
        };
        // Nothing reads this channel: proposals go to the replicator.
        let (tx, rx) = unbounded();
        Ok(Opened {
            log: CommandLog {
                published,
                proposals: tx,
                queue: rx,
                committer: Arc::new(Mutex::new(CommitterSlot::default())),
                stats,
                events,
                replicator: OnceLock::new(),
                machine: Mutex::new(Some(machine)),
                replicated: true,
            },
            imported,
        })
    }

    /// Whether this log is replicated (opened with [`CommandLog::open_replicated`]).
    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    /// The state machine of a replicated log, once (the consensus driver takes it).
    pub fn take_state_machine(&self) -> Option<StateMachine> {
        self.machine.lock().take()
    }

    /// Set what answers proposals of a replicated log (once).
    pub fn set_replicator(&self, r: Arc<dyn Replicator>) {
        let _ = self.replicator.set(r);
    }

    /// The published state: an immutable snapshot (no lock is held once it is returned).
    pub fn state(&self) -> Arc<ServerState> {
        self.published.read().clone()
    }

    /// The event broker the committer publishes to.
    pub fn events(&self) -> Arc<EventBroker> {
        self.events.clone()
    }

    /// Propose a command and wait until it is durable and applied (then it is published and
    /// the index notified). Returns what apply did and the command's index.
    pub fn propose(&self, cmd: Command) -> Result<(Applied, u64), LogError> {
        if self.replicated {
            return match self.replicator.get() {
                Some(r) => r.propose(cmd),
                None => Err(LogError::Closed("server state replication is not running")),
            };
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.proposals
            .send(Msg::Propose(Proposal { cmd, reply }))
            .map_err(|_| LogError::Closed("server state is shut down"))?;
        {
            let mut slot = self.committer.lock();
            if !slot.running {
                if slot.stopped {
                    CommitterSlot::drain(&self.queue);
                } else if let Err(e) = slot.spawn(&self.committer, &self.queue) {
                    // Nothing queued is applied: every proposer gets its answer now.
                    log::error!("cannot start the state committer: {e}");
                    CommitterSlot::drain(&self.queue);
                }
            }
        }
        match answer.recv_timeout(ANSWER_DEADLINE) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(LogError::Closed(
                "no answer from the state committer in time (the write may still be applied)",
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err(LogError::Closed("server state is shut down"))
            }
        }
    }

    /// Stop the committer after the proposals already sent, and join it (closes the store).
    pub fn shutdown(&self) {
        if self.replicated {
            if let Some(r) = self.replicator.get() {
                r.shutdown();
            }
            // A state machine nobody took closes its store here.
            drop(self.machine.lock().take());
            self.events.close();
            return;
        }
        let (running, parked) = {
            let mut slot = self.committer.lock();
            if slot.stopped {
                return;
            }
            slot.stopped = true;
            (slot.running, slot.parked.take())
        };
        if running {
            // After the proposals already sent; it closes the store.
            let _ = self.proposals.send(Msg::Stop);
        } else if let Some(c) = parked {
            c.close();
        }
        let handle = self.committer.lock().handle.take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.events.close();
        let s = &self.stats;
        let txns = s.transactions.load(Ordering::SeqCst).max(1);
        let us = |a: &AtomicU64| a.load(Ordering::SeqCst) / txns / 1000;
        log::debug!(
            "state committer stopped: {} commands in {} transactions; per transaction: \
             apply {} µs, write and fsync {} µs, publish and answer {} µs",
            s.commands.load(Ordering::SeqCst),
            s.transactions.load(Ordering::SeqCst),
            us(&s.apply_nanos),
            us(&s.write_nanos),
            us(&s.publish_nanos),
        );
    }
}

impl Drop for CommandLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The state side of a replicated log: the store (shared with the consensus driver's own
/// tables), the state as last applied, and where it is published. Owned by the driver
/// thread: it applies committed commands in order and writes snapshots inside the
/// driver's transactions (so the state tables and the consensus log never disagree on
/// disk).
pub struct StateMachine {
    path: PathBuf,
    db: Database,
    current: Arc<ServerState>,
    /// The state the tables on disk hold (the last snapshot written).
    snapshotted: Arc<ServerState>,
    /// The plain log may still hold entries (a store of a server before replication): the
    /// first snapshot empties it.
    plain_log_left: bool,
    compacted_size: u64,
    published: Arc<RwLock<Arc<ServerState>>>,
    counter: Arc<IndexCounter>,
    stats: Arc<LogStats>,
    events: Arc<EventBroker>,
    /// Frees the state a snapshot replaced, off the Raft thread.
    reaper: Reaper,
}

impl StateMachine {
    /// The store (the driver keeps its own tables in it).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The state as last applied (and published).
    pub fn state(&self) -> Arc<ServerState> {
        self.current.clone()
    }

    /// Whether the plain log of a server before replication still holds entries (then the
    /// state is newer than its tables and a snapshot must be written before replicating).
    pub fn plain_log_pending(&self) -> Result<bool, LogError> {
        let txn = st!("read", self.db.begin_read())?;
        let log = st!("read", txn.open_table(LOG))?;
        Ok(!st!("read", log.is_empty())?)
    }

    /// Apply committed commands, in order, each at its own index (already durable in the
    /// replicated log); then publish the state once, the events, and notify. Each command's
    /// answer, in order.
    pub fn apply(&mut self, cmds: &[(u64, Command)]) -> Vec<Result<(Applied, u64), LogError>> {
        let started = std::time::Instant::now();
        let mut next = (*self.current).clone();
        let mut results = Vec::with_capacity(cmds.len());
        let mut events: Vec<EventBatch> = Vec::new();
        let mut last = 0;
        for (raft_index, cmd) in cmds {
            let before = next.clone();
            // The Nomad index: the Raft index moved up past a restored snapshot's.
            let index = raft_index.saturating_add(next.index_offset);
            match apply(&mut next, cmd, index) {
                Ok(applied) => {
                    // A restore may have moved the index further up.
                    let index = next.index.max(index);
                    last = index;
                    events.push(EventBatch {
                        index,
                        events: events_of(cmd, &before, &next, index),
                    });
                    results.push(Ok((applied, index)));
                }
                Err(e) => {
                    last = last.max(index);
                    results.push(Err(LogError::Apply(e)));
                }
            }
        }
        if cmds.is_empty() {
            return results;
        }
        self.current = Arc::new(next);
        *self.published.write() = self.current.clone();
        self.counter.observe(last);
        for b in events {
            self.events.publish(b);
        }
        self.counter.notify();
        let s = &self.stats;
        s.commands.fetch_add(cmds.len() as u64, Ordering::Relaxed);
        s.apply_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        results
    }

    /// Write the current state as the snapshot (the rows that changed since the last one)
    /// inside `txn`, and empty the plain log. Returns the state written: pass it to
    /// [`StateMachine::snapshot_written`] once `txn` committed.
    pub fn write_snapshot(&self, txn: &WriteTransaction) -> Result<Arc<ServerState>, LogError> {
        let state = self.current.clone();
        st!(
            "snapshot",
            snapshot::write(txn, Some(&self.snapshotted), &state)
        )?;
        self.empty_plain_log(txn, "snapshot")?;
        Ok(state)
    }

    /// Start encoding a snapshot of the current state on a thread of its own (the Raft
    /// thread goes on replicating and applying meanwhile); write it with
    /// [`StateMachine::write_encoded`] once [`Encoding::is_done`].
    pub fn start_encoding(&self) -> std::io::Result<Encoding> {
        Encoding::start(self.snapshotted.clone(), self.current.clone())
    }

    /// A store of a server before replication still has its plain log: the first snapshot
    /// empties it (inside `txn`).
    pub fn empty_plain_log(
        &self,
        txn: &WriteTransaction,
        op: &'static str,
    ) -> Result<(), LogError> {
        if self.plain_log_left {
            let mut log = st!(op, txn.open_table(LOG))?;
            st!(op, log.retain(|_, _| false))?;
        }
        Ok(())
    }

    /// The snapshot `state` is durable.
    pub fn snapshot_written(&mut self, state: Arc<ServerState>) {
        let old = std::mem::replace(&mut self.snapshotted, state);
        self.reaper.drop_later(old);
        self.plain_log_left = false;
    }

    /// Replace the whole state with `state` (a snapshot from the leader): its tables are
    /// written in `txn`; publish it with [`StateMachine::installed`] once `txn` committed.
    pub fn write_install(
        &self,
        txn: &WriteTransaction,
        state: ServerState,
    ) -> Result<Arc<ServerState>, LogError> {
        let state = Arc::new(state);
        // A snapshot of this server's own still staged is forgotten, or merged if flipped:
        // the install's rows are the difference from the tables with it.
        st!("install snapshot", stage::settle(txn))?;
        st!(
            "install snapshot",
            snapshot::write(txn, Some(&self.snapshotted), &state)
        )?;
        self.empty_plain_log(txn, "install snapshot")?;
        Ok(state)
    }

    /// The installed `state` is durable: publish it.
    pub fn installed(&mut self, state: Arc<ServerState>) {
        let old_snapshot = std::mem::replace(&mut self.snapshotted, state.clone());
        self.plain_log_left = false;
        let old = std::mem::replace(&mut self.current, state);
        *self.published.write() = self.current.clone();
        self.counter.observe(self.current.index);
        self.counter.notify();
        // Both old states are freed off this thread.
        self.reaper.drop_later(Arc::new((old_snapshot, old)));
    }

    /// Give space back to the file system when the file grew (after snapshots).
    pub fn compact_if_grown(&mut self) {
        let (path, after) = (self.path.clone(), self.compacted_size);
        self.compacted_size = compact_if_grown(&mut self.db, &path, after);
    }

    /// Count one write transaction of the driver and its time (for the bench and tests).
    pub fn count_transaction(&self, took: Duration) {
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .write_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// A snapshot of `state` being encoded on a thread of its own (the diff from the last
/// snapshot and the JSON of every changed row: the slow part of a snapshot, ~90 % of it).
pub struct Encoding {
    state: Arc<ServerState>,
    encoder: JoinHandle<Result<snapshot::Rows, snapshot::SnapshotError>>,
}

impl Encoding {
    /// Start encoding the snapshot of `state` as the difference from `prev` (the state the
    /// tables on disk hold).
    fn start(prev: Arc<ServerState>, state: Arc<ServerState>) -> std::io::Result<Encoding> {
        let for_encoder = state.clone();
        let encoder = std::thread::Builder::new()
            .name("state-snapshot".into())
            .spawn(move || {
                // Background work: request threads come first on a small machine (the
                // encoder held a core for 100-400 ms every 1024 commands: the p99).
                crate::sys::process::background_thread();
                snapshot::prepare(Some(&prev), &for_encoder)
            })?;
        Ok(Encoding { state, encoder })
    }

    /// The encoder finished (joining it will not wait).
    pub fn is_done(&self) -> bool {
        self.encoder.is_finished()
    }

    /// Join the encoder and drop what it made (the tables it was to update were replaced,
    /// or the owner stops).
    pub fn join_discard(self) {
        let _ = self.encoder.join();
    }

    /// Join the encoder: the state and its rows, or `None` (logged) when it failed — the log
    /// still holds everything.
    pub fn finish(self) -> Option<(Arc<ServerState>, snapshot::Rows)> {
        match self.encoder.join() {
            Ok(Ok(rows)) => Some((self.state, rows)),
            Ok(Err(e)) => {
                log::warn!("cannot encode a state snapshot: {e}");
                None
            }
            Err(_) => {
                log::error!("the snapshot encoder panicked");
                None
            }
        }
    }
}

/// The committer thread's own state.
struct Committer {
    path: PathBuf,
    /// `None` after a failed transaction until the store is opened again.
    db: Option<Database>,
    /// The state as last published.
    current: Arc<ServerState>,
    /// The state the tables on disk hold (the last snapshot): the next one writes the rows
    /// that differ from it.
    snapshotted: Arc<ServerState>,
    /// The file's size after the last compaction (or at open).
    compacted_size: u64,
    since_snapshot: u64,
    /// The snapshot being encoded off the commit path, if any: once encoded it is staged
    /// (see [`Committer::start_encoding`]).
    encoding: Option<Encoding>,
    /// The encoded snapshot being staged a chunk per transaction (`snapshot::stage`), and
    /// the state it is the snapshot of.
    staging: Option<(Arc<ServerState>, Staging)>,
    /// A flipped stage is being merged into the tables, a chunk per transaction.
    merging: bool,
    /// Log entries up to this index are covered by a snapshot and deleted a chunk per
    /// transaction (0: none left to delete).
    trim_to: u64,
    published: Arc<RwLock<Arc<ServerState>>>,
    counter: Arc<IndexCounter>,
    stats: Arc<LogStats>,
    events: Arc<EventBroker>,
    /// Frees the state a snapshot replaced, off this thread.
    reaper: Reaper,
    /// A snapshot settled: the file may be compacted when the committer is next idle.
    compact_due: bool,
}

impl Committer {
    /// The thread: commit batches until a `Stop`, or until [`IDLE_EXIT`] passes with no
    /// proposal (then the state is parked in `slot` for the next thread).
    fn run(mut self, rx: &Receiver<Msg>, slot: &Mutex<CommitterSlot>) {
        loop {
            let first = match rx.recv_timeout(IDLE_EXIT) {
                Ok(Msg::Propose(p)) => p,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: what is left of a snapshot is written on its own, then the
                    // file compacted if that is due.
                    self.write_encoded(false);
                    self.compact_now();
                    // The thread ends once nothing is queued and no snapshot is on its way
                    // (its rows are written by this thread).
                    let mut s = slot.lock();
                    if rx.is_empty() && !s.stopped && self.snapshot_settled() {
                        s.running = false;
                        s.parked = Some(self);
                        return;
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            let mut stop = false;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Propose(p)) => batch.push(p),
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
            if stop {
                break;
            }
        }
        self.close();
        // Proposals that raced the stop get a closed channel (their senders see "shut down").
        let mut s = slot.lock();
        s.running = false;
        CommitterSlot::drain(rx);
    }

    /// Close the store (shutdown), after writing a snapshot still encoding.
    fn close(mut self) {
        self.write_encoded(true);
        self.compact_now();
        if let Some(db) = self.db.take() {
            if let Err(e) = db.close() {
                log::warn!("closing the state store: {e}");
            }
        }
    }

    /// The store, opened again after a failure (a failed transaction leaves redb unusable).
    fn db(&mut self) -> Result<&Database, LogError> {
        if self.db.is_none() {
            self.db = Some(open_db(&self.path)?);
        }
        self.db
            .as_ref()
            .ok_or(LogError::Closed("server state store is not open"))
    }

    /// Apply the batch to a copy, write its commands in one transaction, then publish.
    fn commit(&mut self, batch: Vec<Proposal>) {
        let started = std::time::Instant::now();
        let mut next = (*self.current).clone();
        let mut results = Vec::with_capacity(batch.len());
        let mut entries: Vec<(u64, Vec<u8>)> = Vec::with_capacity(batch.len());
        // Each command's events, from the state before and after it (a copy is O(1)); they
        // are published only once the batch is durable.
        let mut events: Vec<EventBatch> = Vec::new();
        for p in &batch {
            let index = self.counter.next();
            let before = next.clone();
            match apply(&mut next, &p.cmd, index) {
                Ok(applied) => match serde_json::to_vec(&p.cmd) {
                    Ok(bytes) => {
                        events.push(EventBatch {
                            index,
                            events: events_of(&p.cmd, &before, &next, index),
                        });
                        entries.push((index, bytes));
                        results.push(Ok((applied, index)));
                    }
                    // Cannot happen for our types; refuse rather than apply unlogged.
                    Err(e) => return answer_all(batch, LogError::store("encode", e)),
                },
                Err(e) => results.push(Err(LogError::Apply(e))),
            }
        }
        let applied = std::time::Instant::now();
        let mut written = applied;
        if !entries.is_empty() {
            // A chunk of a snapshot on its way rides along: one transaction, one fsync.
            let res = self.write(&entries, false);
            written = std::time::Instant::now();
            if let Err(e) = res {
                log::error!("cannot persist server state: {e}");
                return answer_all(batch, e);
            }
            self.stats.transactions.fetch_add(1, Ordering::SeqCst);
            self.stats
                .commands
                .fetch_add(entries.len() as u64, Ordering::SeqCst);
            self.current = Arc::new(next);
            *self.published.write() = self.current.clone();
            for b in events {
                self.events.publish(b);
            }
            self.counter.notify();
        }
        for (p, r) in batch.into_iter().zip(results) {
            let _ = p.reply.send(r);
        }
        let nanos = |d: Duration| d.as_nanos() as u64;
        let s = &self.stats;
        s.apply_nanos
            .fetch_add(nanos(applied - started), Ordering::Relaxed);
        s.write_nanos
            .fetch_add(nanos(written - applied), Ordering::Relaxed);
        s.publish_nanos
            .fetch_add(nanos(written.elapsed()), Ordering::Relaxed);
        self.since_snapshot += entries.len() as u64;
        if self.since_snapshot >= SNAPSHOT_EVERY && self.snapshot_settled() {
            self.start_encoding();
        }
    }

    /// No snapshot is encoding, staging or merging, and the log holds nothing a snapshot
    /// covers.
    fn snapshot_settled(&self) -> bool {
        self.encoding.is_none() && self.staging.is_none() && !self.merging && self.trim_to == 0
    }

    /// Append `entries` and take the next step of a snapshot on its way, in one
    /// transaction: stage a chunk of its rows, or flip it, or merge a chunk of it into the
    /// tables, and delete a chunk of the log a snapshot covers (`all`: every step left, as
    /// when idle or at shutdown). A failed transaction leaves the store to be opened again
    /// and the snapshot to be encoded again; nothing it wrote is visible.
    fn write(&mut self, entries: &[(u64, Vec<u8>)], all: bool) -> Result<(), LogError> {
        let res = self.write_txn(entries, all);
        if res.is_err() {
            // redb is not usable after a failed write: reopen it on the next batch.
            self.db = None;
            // A snapshot being staged is dropped (the next stage clears what it staged)
            // and encoded again; a flipped one goes on merging from what is on disk.
            self.staging = None;
            self.since_snapshot = SNAPSHOT_EVERY;
        }
        res
    }

    fn write_txn(&mut self, entries: &[(u64, Vec<u8>)], all: bool) -> Result<(), LogError> {
        #[cfg(test)]
        if self.stats.fail_writes.load(Ordering::SeqCst) {
            return Err(LogError::store("commit", "injected failure"));
        }
        if self.staging.is_none() && !self.merging {
            if let Some((state, rows)) = self.take_encoded(all) {
                match Staging::of(rows) {
                    Ok(staging) => self.staging = Some((state, staging)),
                    // A whole snapshot (not made on this path) is written at once.
                    Err(rows) => return self.write_whole(entries, state, *rows),
                }
            }
        }
        let trim_to = self.trim_to;
        let mut trim_left = false;
        let db = self.db()?;
        let txn = st!("begin", db.begin_write())?;
        {
            let mut log = st!("open log", txn.open_table(LOG))?;
            for (index, bytes) in entries {
                st!("append", log.insert(*index, bytes.as_slice()))?;
            }
            if trim_to > 0 {
                trim_left = trim_log(&mut log, trim_to, all)?;
            }
        }
        let mut staged = None;
        let mut merged = false;
        if let Some((_, staging)) = &self.staging {
            let (step, n) = st!("snapshot", staging.step(&txn, all))?;
            staged = Some((step, n));
            if step == Step::Flipped && all {
                merged = st!("snapshot", stage::merge(&txn, true))?;
            }
        } else if self.merging {
            merged = st!("snapshot", stage::merge(&txn, all))?;
        }
        st!("commit", txn.commit())?;
        if !trim_left {
            self.trim_to = 0;
        }
        if let Some((step, n)) = staged {
            if let Some((_, staging)) = self.staging.as_mut() {
                staging.committed(n);
            }
            if step == Step::Flipped {
                if let Some((state, staging)) = self.staging.take() {
                    // Durable now: the log it covers goes a chunk at a time.
                    self.trim_to = staging.index();
                    self.snapshot_durable(state);
                    self.merging = !merged;
                    if merged {
                        self.compact();
                    }
                    log::debug!("snapshot at index {} flipped", self.trim_to);
                }
            }
        } else if self.merging && merged {
            self.merging = false;
            self.compact();
        }
        Ok(())
    }

    /// Append `entries` and write a whole snapshot of `state` (its `rows`), deleting the log
    /// it covers, in one transaction.
    fn write_whole(
        &mut self,
        entries: &[(u64, Vec<u8>)],
        state: Arc<ServerState>,
        rows: snapshot::Rows,
    ) -> Result<(), LogError> {
        let covered = rows.index();
        let db = self.db()?;
        let txn = st!("begin", db.begin_write())?;
        {
            let mut log = st!("open log", txn.open_table(LOG))?;
            for (index, bytes) in entries {
                st!("append", log.insert(*index, bytes.as_slice()))?;
            }
        }
        st!("snapshot", rows.write(&txn))?;
        {
            let mut log = st!("snapshot", txn.open_table(LOG))?;
            st!("snapshot", log.retain_in(..=covered, |_, _| false))?;
        }
        st!("commit", txn.commit())?;
        self.snapshot_durable(state);
        self.compact();
        Ok(())
    }

    /// Encode a snapshot of the current state on a thread of its own, so the batches
    /// committed meanwhile do not wait for it (a snapshot written inside the commit path
    /// held every writer for its whole length: the p99 of registers). Without a thread, the
    /// snapshot is written here.
    fn start_encoding(&mut self) {
        match Encoding::start(self.snapshotted.clone(), self.current.clone()) {
            Ok(encoding) => {
                self.since_snapshot = 0;
                self.encoding = Some(encoding);
            }
            Err(e) => {
                log::warn!("cannot start the snapshot encoder ({e}): writing it here");
                self.snapshot();
            }
        }
    }

    /// The snapshot encoded by [`Committer::start_encoding`], once done (`wait`: wait for
    /// it). An encoder that failed is logged; the log still holds everything.
    fn take_encoded(&mut self, wait: bool) -> Option<(Arc<ServerState>, snapshot::Rows)> {
        let done = self.encoding.as_ref().is_some_and(|e| wait || e.is_done());
        if !done {
            return None;
        }
        self.encoding.take()?.finish()
    }

    /// Write what is left of a snapshot on its way in a transaction of its own (idle, or
    /// at shutdown: `wait` for the encoder too).
    fn write_encoded(&mut self, wait: bool) {
        // Staging with its flip and merge takes one transaction, the log it covers a
        // second.
        for _ in 0..2 {
            let encoded = self.encoding.as_ref().is_some_and(|e| wait || e.is_done());
            let pending = encoded || self.staging.is_some() || self.merging || self.trim_to > 0;
            if !pending {
                return;
            }
            if let Err(e) = self.write(&[], true) {
                // The log still holds everything: the next threshold encodes another.
                log::warn!("cannot write a state snapshot: {e}");
                return;
            }
        }
    }

    /// `state` is the snapshot the tables hold now: the one it replaces is freed off this
    /// thread (see [`Reaper`]).
    fn snapshot_durable(&mut self, state: Arc<ServerState>) {
        let old = std::mem::replace(&mut self.snapshotted, state);
        self.reaper.drop_later(old);
    }

    /// A snapshot settled: the file may be compacted, once the committer is idle (a
    /// compaction, or counting the pages it would free, walks the whole file while every
    /// writer waits).
    fn compact(&mut self) {
        self.compact_due = true;
    }

    /// Give space back to the file system when the file grew (after a snapshot settled).
    fn compact_now(&mut self) {
        if !std::mem::take(&mut self.compact_due) {
            return;
        }
        let (path, after) = (self.path.clone(), self.compacted_size);
        if let Some(db) = self.db.as_mut() {
            self.compacted_size = compact_if_grown(db, &path, after);
        }
    }

    fn snapshot(&mut self) {
        let state = self.current.clone();
        let prev = self.snapshotted.clone();
        let res = self
            .db()
            .and_then(|db| write_snapshot(db, Some(&prev), &state, false));
        drop(prev);
        match res {
            Ok(()) => {
                self.since_snapshot = 0;
                self.snapshot_durable(state);
                self.compact();
            }
            Err(e) => {
                // The log still holds everything: retried after the next batch.
                log::warn!("cannot write a state snapshot: {e}");
                self.db = None;
            }
        }
    }
}

/// Delete the oldest log entries up to `covered` (a snapshot holds them): at most
/// [`stage::LOG_TRIM_CHUNK`] of them, or all when `all`. Whether some may be left.
fn trim_log(
    log: &mut redb::Table<'_, u64, &'static [u8]>,
    covered: u64,
    all: bool,
) -> Result<bool, LogError> {
    let Some(first) = st!("read log", log.first())?.map(|(k, _)| k.value()) else {
        return Ok(false);
    };
    if first > covered {
        return Ok(false);
    }
    let end = if all {
        covered
    } else {
        covered.min(first.saturating_add(stage::LOG_TRIM_CHUNK as u64 - 1))
    };
    st!("trim log", log.retain_in(first..=end, |_, _| false))?;
    Ok(end < covered)
}

fn answer_all(batch: Vec<Proposal>, e: LogError) {
    let (op, source): (_, StoreCause) = match e {
        LogError::Store { op, source } => (op, source),
        other => ("write", Arc::new(other)),
    };
    for p in batch {
        let _ = p.reply.send(Err(LogError::Store {
            op,
            source: source.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::jobs::spec::Job;
    use crate::state::jobs::NodeInfo;

    fn job(id: &str, count: i64) -> Job {
        let mut j = Job::from_json(serde_json::json!({"ID": id, "TaskGroups": [{"Name": "g",
            "Count": count, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        j.canonicalize("global");
        j
    }

    fn register(id: &str, count: usize, n: u64) -> Command {
        Command::JobRegister {
            job: Box::new(job(id, count as i64)),
            node: NodeInfo {
                id: "n1".into(),
                name: "node".into(),
                unplaceable: None,
            },
            eval_id: format!("e{n}"),
            blocked_eval_id: String::new(),
            alloc_ids: (0..count).map(|i| format!("{id}-a{n}-{i}")).collect(),
            now: n as i64,
        }
    }

    fn temp_db() -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("nomadlet-log-{}", uuid::Uuid::new_v4()));
        let path = log_path(&dir);
        (dir, path)
    }

    fn open(path: &Path) -> CommandLog {
        let counter = Arc::new(IndexCounter::default());
        CommandLog::open(path, counter, || Ok(ServerState::default()))
            .unwrap()
            .log
    }

    /// The committer thread ends when idle and the next proposal starts a new one: proposals
    /// sent right around the moment it ends (swept across its idle period) are all
    /// answered and applied, none lost, and shutdown joins whatever runs.
    #[test]
    fn proposals_racing_the_idle_committers_end_are_all_committed() {
        let (dir, path) = temp_db();
        let log = Arc::new(open(&path));
        let running = |log: &CommandLog| log.committer.lock().running;
        let mut ended = 0;
        for n in 0..120u64 {
            // Offsets from 0 to 2× the idle period around the previous proposal's answer.
            let pause = IDLE_EXIT * (n % 41) as u32 / 20;
            let until = std::time::Instant::now() + pause;
            while std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            if !running(&log) {
                ended += 1;
            }
            let (tx, rx) = crossbeam_channel::bounded(1);
            let l = log.clone();
            let t = std::thread::spawn(move || {
                let _ = tx.send(l.propose(register(&format!("j{n}"), 1, n + 1)));
            });
            let answer = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("proposal {n} not answered (lost at the thread's end)"));
            assert!(answer.is_ok(), "proposal {n}: {answer:?}");
            t.join().unwrap();
        }
        assert!(ended > 10, "the committer ended only {ended} times");
        assert_eq!(log.state().jobs.len(), 120);
        // Idle: the thread ends by itself (polled with a deadline).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running(&log) {
            assert!(
                std::time::Instant::now() < deadline,
                "the committer never ends"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        log.shutdown();
        assert!(matches!(
            log.propose(register("late", 1, 999)),
            Err(LogError::Closed(_))
        ));
        drop(log);
        let back = open(&path);
        assert_eq!(
            back.state().jobs.len(),
            120,
            "every answered proposal is durable"
        );
        back.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A compaction walks the whole file while every writer waits, so it runs only once the
    /// committer is idle: a store whose jobs were all purged shrinks then, and keeps them.
    #[test]
    fn a_grown_store_is_compacted_once_the_committer_is_idle() {
        let (dir, path) = temp_db();
        let log = open(&path);
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let pad = "x".repeat(48 * 1024);
        let big = |id: &str, n: u64| {
            let mut j = Job::from_json(serde_json::json!({"ID": id, "Meta": {"pad": pad},
                "TaskGroups": [{"Name": "g", "Count": 0, "Tasks": [{"Name": "t",
                "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}))
            .unwrap();
            j.canonicalize("global");
            let mut c = register(id, 0, n);
            if let Command::JobRegister { job, .. } = &mut c {
                **job = j;
            }
            c
        };
        let mut n = 0;
        for i in 0..300 {
            n += 1;
            log.propose(big(&format!("j{i}"), n)).unwrap();
        }
        for i in 0..300 {
            n += 1;
            let purge = Command::JobDeregister {
                namespace: "default".into(),
                job_id: format!("j{i}"),
                purge: true,
                eval_id: format!("e{n}"),
                now: n as i64,
            };
            log.propose(purge).unwrap();
        }
        // Enough commands after the purges for a snapshot that drops the big rows.
        for i in 0..(SNAPSHOT_EVERY + 10) {
            n += 1;
            log.propose(register(&format!("k{i}"), 0, n)).unwrap();
        }
        let grown = size();
        assert!(
            grown >= COMPACT_MIN_BYTES,
            "the file grew to {grown} bytes only"
        );
        // Idle: the committer writes what is left of the snapshot, compacts, and ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while size() * 2 > grown {
            assert!(
                std::time::Instant::now() < deadline,
                "{} bytes an idle period after {grown}: never compacted",
                size()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let jobs = log.state().jobs.len();
        assert_eq!(jobs, SNAPSHOT_EVERY as usize + 10);
        log.shutdown();
        drop(log);
        assert_eq!(
            open(&path).state().jobs.len(),
            jobs,
            "compaction lost nothing"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store as the version before tables wrote it: the whole state as one JSON value in
    /// the `snapshot` table, and log entries after it.
    #[test]
    fn a_store_with_the_whole_state_snapshot_of_earlier_versions_loads_and_is_rewritten_once() {
        const OLD: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot");
        let (dir, path) = temp_db();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut state = ServerState::default();
        apply(&mut state, &register("a", 3, 1), 1).unwrap();
        apply(&mut state, &register("b", 2, 2), 2).unwrap();
        let later = register("c", 1, 3);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut snaps = txn.open_table(OLD).unwrap();
                snaps
                    .insert(state.index, state.to_bytes().unwrap().as_slice())
                    .unwrap();
                let mut log = txn.open_table(LOG).unwrap();
                log.insert(3, serde_json::to_vec(&later).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        apply(&mut state, &later, 3).unwrap();
        let want = state.to_bytes().unwrap();
        let log = open(&path);
        assert_eq!(log.state().to_bytes().unwrap(), want, "old format loads");
        assert_eq!(log.state().allocs.len(), 6);
        drop(log);
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            assert!(
                matches!(
                    txn.open_table(OLD),
                    Err(redb::TableError::TableDoesNotExist(_))
                ),
                "the old snapshot is gone once tables hold the state"
            );
            let tables = snapshot::load(&txn).unwrap().expect("a table snapshot");
            assert_eq!(tables.to_bytes().unwrap(), want);
        }
        let log = open(&path);
        assert_eq!(log.state().to_bytes().unwrap(), want, "tables load");
        drop(log);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A snapshot is staged, flipped and merged over many transactions: a stop at any
    /// point of that (a stage that never flipped; a flipped stage half merged, with the log
    /// it covers already deleted) loads the same state as the log alone.
    #[test]
    fn a_snapshot_stopped_half_way_through_its_stage_or_merge_loads_the_same_state() {
        for flipped in [false, true] {
            let (dir, path) = temp_db();
            let log = open(&path);
            let mut n = 0;
            // Fewer than a threshold: no snapshot of its own; jobs, evals and allocs.
            for i in 0..300 {
                n += 1;
                log.propose(register(&format!("j{}", i % 40), (i % 3) as usize, n))
                    .unwrap();
            }
            let live = log.state().to_bytes().unwrap();
            drop(log);
            {
                let db = open_db(&path).unwrap();
                let loaded = load_state(&db).unwrap();
                let rows = snapshot::prepare(Some(&loaded.snapshot), &loaded.state).unwrap();
                let Ok(mut staging) = Staging::of(rows) else {
                    panic!("an incremental snapshot is staged")
                };
                // Two chunks staged, each in a transaction of its own.
                for _ in 0..2 {
                    let txn = db.begin_write().unwrap();
                    let (step, k) = staging.step(&txn, false).unwrap();
                    assert_eq!(step, Step::Staging, "more than two chunks");
                    txn.commit().unwrap();
                    staging.committed(k);
                }
                if flipped {
                    let txn = db.begin_write().unwrap();
                    let (step, _) = staging.step(&txn, true).unwrap();
                    assert_eq!(step, Step::Flipped);
                    {
                        let mut log = txn.open_table(LOG).unwrap();
                        trim_log(&mut log, staging.index(), true).unwrap();
                    }
                    txn.commit().unwrap();
                    let txn = db.begin_write().unwrap();
                    assert!(
                        !stage::merge(&txn, false).unwrap(),
                        "one chunk merged of many"
                    );
                    txn.commit().unwrap();
                }
            }
            let back = open(&path);
            assert_eq!(back.state().to_bytes().unwrap(), live, "flipped: {flipped}");
            drop(back);
            {
                // Start-up settled the stage: the tables hold one snapshot.
                let db = Database::open(&path).unwrap();
                let txn = db.begin_read().unwrap();
                let tables = snapshot::load(&txn).unwrap().expect("a table snapshot");
                // Flipped: the staged snapshot (its jobs); else the first one (empty).
                assert_eq!(!tables.jobs.is_empty(), flipped);
                assert_eq!(tables.index > 0, flipped);
            }
            let again = open(&path);
            assert_eq!(again.state().to_bytes().unwrap(), live);
            drop(again);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn incremental_snapshots_write_changes_and_removals_and_reload_to_the_same_state() {
        let (dir, path) = temp_db();
        let log = open(&path);
        let mut n = 0;
        for i in 0..SNAPSHOT_EVERY {
            n += 1;
            log.propose(register(&format!("j{}", i % 50), (i % 3) as usize, n))
                .unwrap();
        }
        // A purge removes a job (its allocs stay, stopped); the next snapshot deletes its row.
        for i in 0..SNAPSHOT_EVERY + 5 {
            n += 1;
            let cmd = if i < 10 {
                Command::JobDeregister {
                    namespace: "default".into(),
                    job_id: format!("j{i}"),
                    purge: true,
                    eval_id: format!("e{n}"),
                    now: n as i64,
                }
            } else {
                register(&format!("k{}", i % 7), 1, n)
            };
            let _ = log.propose(cmd);
        }
        assert!(log.stats.commands.load(Ordering::SeqCst) > 2 * SNAPSHOT_EVERY);
        let live = log.state().to_bytes().unwrap();
        assert!(!log
            .state()
            .jobs
            .contains_key(&("default".into(), "j3".into())));
        drop(log);
        {
            // Snapshots were written (encoded off the commit path, their rows riding along
            // with later batches or written at shutdown) and the log holds only what
            // follows the last one.
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            let tables = snapshot::load(&txn).unwrap().expect("a table snapshot");
            assert!(
                tables.index >= SNAPSHOT_EVERY,
                "snapshot at {}",
                tables.index
            );
            let log = txn.open_table(LOG).unwrap();
            let first = redb::ReadableTable::first(&log)
                .unwrap()
                .map(|(k, _)| k.value());
            assert!(
                first.is_none_or(|k| k > tables.index),
                "the log keeps {first:?} though the snapshot is at {}",
                tables.index
            );
        }
        let back = open(&path);
        assert_eq!(back.state().to_bytes().unwrap(), live);
        drop(back);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
