//! A snapshot written in pieces, so no single transaction of the command log carries a
//! whole snapshot (a snapshot's rows held every writer behind one 20-40 ms transaction:
//! the register p99). Three phases, each a few bounded steps inside the committer's own
//! transactions:
//!
//! 1. **Stage**: the snapshot's row changes ([`Op`]s) are appended to the `snapshot_stage`
//!    table, a chunk per transaction. Until the flip, start-up ignores (and clears) them:
//!    the tables still hold the previous snapshot and the log still holds every command
//!    after it.
//! 2. **Flip**: one small transaction records the staged snapshot's index in
//!    `snapshot_meta` (`staged`). From here the snapshot is the tables with the stage laid
//!    over them, and the log up to that index is no longer needed (it is deleted a chunk
//!    at a time afterwards; start-up replays only what follows the snapshot).
//! 3. **Merge**: staged ops move into the tables a chunk per transaction, each removed
//!    from the stage in the transaction that applies it (the union of tables and stage
//!    never changes). The last chunk sets the tables' index and drops `staged`.
//!
//! Start-up finishes a flipped stage in one transaction ([`settle`]) before the tables are
//! read, so the loader and the replicated path only ever see plain tables.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    AllocJobRows, Rows, SnapshotError, TableRows, ACL, ALLOCS, ALLOC_JOBS, AUTOPILOT_KEY,
    CLUSTER_META, EVALS, INDEX_KEY, INDEX_OFFSET_KEY, JOBS, JOB_VERSIONS, META, NODES,
    SCALING_EVENTS,
};

/// The staged ops of a snapshot, in order: sequence number → one [`Op`] (postcard).
const STAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot_stage");
/// The row key in [`META`] of a flipped stage's index (present from the flip until the
/// merge is done).
const STAGED_KEY: &str = "staged";
/// The row key in [`META`] of a flipped stage's index offset.
const STAGED_OFFSET_KEY: &str = "staged_offset";

/// The most row bytes one transaction stages (appended in order: few pages).
pub const STAGE_CHUNK_BYTES: usize = 128 * 1024;
/// The most ops one transaction stages.
pub const STAGE_CHUNK_OPS: usize = 64;
/// The most row bytes one transaction merges into the tables.
pub const MERGE_CHUNK_BYTES: usize = 32 * 1024;
/// The most ops one transaction merges: each may rewrite a leaf page of its own and the
/// pages above it (48 cost a batch 5-10 ms; 16 keep it near one fsync).
pub const MERGE_CHUNK_OPS: usize = 16;
/// The most log entries one transaction deletes once a snapshot covers them.
pub const LOG_TRIM_CHUNK: usize = 512;

/// Which row of which table an op writes or removes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Key {
    Job(String, String),
    JobVersion(String, String, u64),
    Scaling(String, String),
    Eval(String),
    Node(String),
    Alloc(String),
    AllocJob(String, String, u64, u64),
    Acl,
    Autopilot,
}

/// One row change of a snapshot: the row's new bytes, or `None` to remove it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Op {
    key: Key,
    row: Option<Vec<u8>>,
}

impl Op {
    fn bytes(&self) -> usize {
        self.row.as_ref().map_or(0, Vec::len) + 64
    }
}

/// A snapshot on its way through the three phases (owned by the committer).
pub struct Staging {
    ops: Vec<Op>,
    /// How many of `ops` are durable in the stage.
    staged: usize,
    index: u64,
    index_offset: u64,
    /// The stage may hold ops of an earlier attempt that never flipped: cleared with the
    /// first chunk.
    clear_first: bool,
}

/// What one step did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Step {
    /// More chunks to stage.
    Staging,
    /// This step's transaction flips the stage: once it commits the snapshot is durable.
    Flipped,
}

fn push_rows<K>(ops: &mut Vec<Op>, rows: TableRows<K>, key: impl Fn(K) -> Key) {
    let TableRows { upserts, removed } = rows;
    for (k, v) in upserts {
        ops.push(Op {
            key: key(k),
            row: Some(v),
        });
    }
    for k in removed {
        ops.push(Op {
            key: key(k),
            row: None,
        });
    }
}

impl Staging {
    /// The ops of `rows`; `Err(rows)` when they are a full snapshot (written whole).
    pub fn of(rows: Rows) -> Result<Staging, Box<Rows>> {
        let alloc_jobs = match rows.alloc_jobs {
            AllocJobRows::Changes(c) if !rows.full => c,
            _ => return Err(Box::new(rows)),
        };
        let mut ops = Vec::new();
        push_rows(&mut ops, rows.jobs, |(n, i)| Key::Job(n, i));
        push_rows(&mut ops, rows.job_versions, |(n, i, v)| {
            Key::JobVersion(n, i, v)
        });
        push_rows(&mut ops, rows.scaling_events, |(n, i)| Key::Scaling(n, i));
        push_rows(&mut ops, rows.evals, Key::Eval);
        push_rows(&mut ops, rows.nodes, Key::Node);
        // An alloc's job row is staged before the alloc that needs it (and removed after).
        push_rows(&mut ops, alloc_jobs, |(n, i, v, m)| {
            Key::AllocJob(n, i, v, m)
        });
        push_rows(&mut ops, rows.allocs, Key::Alloc);
        if let Some(acl) = rows.acl {
            ops.push(Op {
                key: Key::Acl,
                row: Some(acl),
            });
        }
        if let Some(autopilot) = rows.autopilot {
            ops.push(Op {
                key: Key::Autopilot,
                row: autopilot,
            });
        }
        Ok(Staging {
            ops,
            staged: 0,
            index: rows.index,
            index_offset: rows.index_offset,
            clear_first: true,
        })
    }

    /// The index of the snapshot being staged.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Stage the next chunk in `txn` (everything left when `all`), and flip once every op
    /// is staged. Call [`Staging::committed`] with the answer once `txn` committed.
    pub fn step(&self, txn: &WriteTransaction, all: bool) -> Result<(Step, usize), SnapshotError> {
        let mut t = txn.open_table(STAGE)?;
        if self.clear_first {
            t.retain(|_, _| false)?;
        }
        let (mut n, mut bytes) = (0, 0);
        for (seq, op) in self.ops.iter().enumerate().skip(self.staged) {
            if !all && n > 0 && (n >= STAGE_CHUNK_OPS || bytes >= STAGE_CHUNK_BYTES) {
                break;
            }
            let enc = postcard::to_allocvec(op).map_err(SnapshotError::Stage)?;
            t.insert(seq as u64, enc.as_slice())?;
            n += 1;
            bytes += op.bytes();
        }
        if self.staged + n < self.ops.len() {
            return Ok((Step::Staging, n));
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(STAGED_KEY, self.index)?;
        meta.insert(STAGED_OFFSET_KEY, self.index_offset)?;
        Ok((Step::Flipped, n))
    }

    /// The transaction of a [`Staging::step`] that staged `n` ops committed.
    pub fn committed(&mut self, n: usize) {
        self.staged += n;
        self.clear_first = false;
    }
}

/// Whether a flipped stage still waits to be merged.
fn merging(txn: &WriteTransaction) -> Result<bool, SnapshotError> {
    let meta = txn.open_table(META)?;
    let staged = meta.get(STAGED_KEY)?.is_some();
    Ok(staged)
}

/// Merge the next chunk of a flipped stage into the tables (all of it when `all`).
/// `Ok(true)`: the merge is done (or there was none) once `txn` commits.
pub fn merge(txn: &WriteTransaction, all: bool) -> Result<bool, SnapshotError> {
    let (index, offset) = {
        let meta = txn.open_table(META)?;
        let Some(index) = meta.get(STAGED_KEY)?.map(|v| v.value()) else {
            return Ok(true);
        };
        let offset = meta.get(STAGED_OFFSET_KEY)?.map_or(0, |v| v.value());
        (index, offset)
    };
    let mut stage = txn.open_table(STAGE)?;
    let (mut n, mut bytes) = (0, 0);
    let mut done_up_to = None;
    {
        let mut tables = Tables::open(txn)?;
        for row in stage.iter()? {
            if !all && n > 0 && (n >= MERGE_CHUNK_OPS || bytes >= MERGE_CHUNK_BYTES) {
                break;
            }
            let (seq, v) = row?;
            let op: Op = postcard::from_bytes(v.value()).map_err(SnapshotError::Stage)?;
            tables.apply(&op)?;
            done_up_to = Some(seq.value());
            n += 1;
            bytes += op.bytes();
        }
    }
    if let Some(last) = done_up_to {
        stage.retain_in(..=last, |_, _| false)?;
    }
    if !stage.is_empty()? {
        return Ok(false);
    }
    let mut meta = txn.open_table(META)?;
    meta.insert(INDEX_KEY, index)?;
    meta.insert(INDEX_OFFSET_KEY, offset)?;
    meta.remove(STAGED_KEY)?;
    meta.remove(STAGED_OFFSET_KEY)?;
    Ok(true)
}

/// Start-up: merge a flipped stage whole, or clear a stage that never flipped. The tables
/// hold exactly one snapshot afterwards.
pub fn settle(txn: &WriteTransaction) -> Result<(), SnapshotError> {
    if merging(txn)? {
        merge(txn, true)?;
    } else {
        let mut t = txn.open_table(STAGE)?;
        t.retain(|_, _| false)?;
    }
    Ok(())
}

/// The snapshot tables, open in one transaction, to apply ops to.
struct Tables<'txn> {
    jobs: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
    job_versions: redb::Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    scaling: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
    evals: redb::Table<'txn, &'static str, &'static [u8]>,
    nodes: redb::Table<'txn, &'static str, &'static [u8]>,
    allocs: redb::Table<'txn, &'static str, &'static [u8]>,
    alloc_jobs: redb::Table<'txn, (&'static str, &'static str, u64, u64), &'static [u8]>,
    acl: redb::Table<'txn, &'static str, &'static [u8]>,
    cluster: redb::Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, SnapshotError> {
        Ok(Tables {
            jobs: txn.open_table(JOBS)?,
            job_versions: txn.open_table(JOB_VERSIONS)?,
            scaling: txn.open_table(SCALING_EVENTS)?,
            evals: txn.open_table(EVALS)?,
            nodes: txn.open_table(NODES)?,
            allocs: txn.open_table(ALLOCS)?,
            alloc_jobs: txn.open_table(ALLOC_JOBS)?,
            acl: txn.open_table(ACL)?,
            cluster: txn.open_table(CLUSTER_META)?,
        })
    }

    fn apply(&mut self, op: &Op) -> Result<(), SnapshotError> {
        let row = op.row.as_deref();
        match &op.key {
            Key::Job(n, i) => put(&mut self.jobs, (n.as_str(), i.as_str()), row),
            Key::JobVersion(n, i, v) => {
                put(&mut self.job_versions, (n.as_str(), i.as_str(), *v), row)
            }
            Key::Scaling(n, i) => put(&mut self.scaling, (n.as_str(), i.as_str()), row),
            Key::Eval(id) => put(&mut self.evals, id.as_str(), row),
            Key::Node(id) => put(&mut self.nodes, id.as_str(), row),
            Key::Alloc(id) => put(&mut self.allocs, id.as_str(), row),
            Key::AllocJob(n, i, v, m) => {
                put(&mut self.alloc_jobs, (n.as_str(), i.as_str(), *v, *m), row)
            }
            Key::Acl => put(&mut self.acl, "acl", row),
            Key::Autopilot => put(&mut self.cluster, AUTOPILOT_KEY, row),
        }
    }
}

/// Write `row` at `key`, or remove the key when `row` is `None`.
fn put<'k, K: redb::Key + 'static>(
    t: &mut redb::Table<'_, K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
    row: Option<&[u8]>,
) -> Result<(), SnapshotError> {
    match row {
        Some(v) => {
            t.insert(key, v)?;
        }
        None => {
            t.remove(key)?;
        }
    }
    Ok(())
}
