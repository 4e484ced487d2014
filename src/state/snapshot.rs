//! The snapshot of the server state inside the command log's redb file: one table per kind
//! of object, one row per object keyed by its ID (JSON values), plus the snapshot's index.
//! A snapshot writes only the rows that changed since the previous one (found by pointer:
//! tables are persistent maps of `Arc`s, so an untouched object is the same allocation) and
//! deletes the rows of removed objects. An alloc's row leaves its embedded job out: the job
//! is stored once per `(namespace, id, version, job modify index)` in `alloc_jobs`.
//!
//! The format before this one kept the whole state as one JSON value in the `snapshot`
//! table; [`load`] still reads it and [`migrate_old`] rewrites it as tables once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde_json::json;

use super::command::{ServerState, Table};
use super::jobs::alloc::AllocRecord;
use super::jobs::eval::EvalRecord;
use super::jobs::history::{JobVersion, ScalingEvents};
use super::jobs::spec::Job;
use super::node_table::Node;
use crate::acl::AclTables;

pub mod stage;

/// Where a snapshot failed, and why.
#[derive(Debug)]
pub enum SnapshotError {
    /// The store refused (a table, a row, the transaction).
    Store(redb::Error),
    /// A row is not what it should be.
    Decode {
        table: &'static str,
        source: serde_json::Error,
    },
    /// An alloc row names a job that `alloc_jobs` does not hold.
    MissingAllocJob(String),
    /// A staged row change cannot be encoded or read back.
    Stage(postcard::Error),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Store(e) => write!(f, "snapshot store: {e}"),
            SnapshotError::Decode { table, source } => {
                write!(f, "snapshot table {table}: {source}")
            }
            SnapshotError::MissingAllocJob(id) => {
                write!(f, "snapshot: the job of alloc {id} is missing")
            }
            SnapshotError::Stage(e) => write!(f, "snapshot stage: {e}"),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Store(e) => Some(e),
            SnapshotError::Decode { source, .. } => Some(source),
            SnapshotError::MissingAllocJob(_) => None,
            SnapshotError::Stage(e) => Some(e),
        }
    }
}

impl<E: Into<redb::Error>> From<E> for SnapshotError {
    fn from(e: E) -> Self {
        SnapshotError::Store(e.into())
    }
}

/// The snapshot's index (`"index"`): present once a table snapshot was written.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("snapshot_meta");
/// Jobs: `(namespace, id)` → JSON.
const JOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("jobs");
/// Evaluations: ID → JSON.
const EVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("evals");
/// Allocations: ID → JSON, the embedded job reduced to its `Version` and `JobModifyIndex`.
const ALLOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocs");
/// The jobs allocations embed: `(namespace, id, version, job modify index)` → JSON.
const ALLOC_JOBS: TableDefinition<(&str, &str, u64, u64), &[u8]> =
    TableDefinition::new("alloc_jobs");
/// The kept versions of jobs: `(namespace, id, version)` → JSON (the job and its submission).
const JOB_VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("job_versions");
/// The scaling events of jobs: `(namespace, id)` → JSON.
const SCALING_EVENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("scaling_events");
/// Nodes: ID → JSON.
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// The ACL tables (small): one row, `"acl"` → JSON.
const ACL: TableDefinition<&str, &[u8]> = TableDefinition::new("acl");
/// Cluster-wide settings (small): `"autopilot"` → JSON.
const CLUSTER_META: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster_meta");
/// The format before tables: one row, its index → the whole state as JSON.
pub const OLD_SNAPSHOT: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot");

/// The row key of the snapshot's index in [`META`].
const INDEX_KEY: &str = "index";
/// The row key of the state's index offset in [`META`] (absent: 0).
const INDEX_OFFSET_KEY: &str = "index_offset";
/// The row key of autopilot's configuration in [`CLUSTER_META`].
const AUTOPILOT_KEY: &str = "autopilot";

/// What changed between two versions of a table: the keys written, the keys removed. Equal
/// pointers are the same object (nothing is ever changed in place behind an `Arc`).
fn diff<'a, K: Ord + Clone, V>(
    old: Option<&'a Table<K, V>>,
    new: &'a Table<K, V>,
) -> (Vec<(&'a K, &'a Arc<V>)>, Vec<&'a K>) {
    let Some(old) = old else {
        return (new.iter().collect(), Vec::new());
    };
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                removed.push(*k);
                a.next();
            }
            (None, Some(_)) => changed.extend(b.next()),
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    removed.push(*ka);
                    a.next();
                }
                std::cmp::Ordering::Greater => changed.extend(b.next()),
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) {
                        changed.push((kb, vb));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    (changed, removed)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, SnapshotError> {
    serde_json::to_vec(v).map_err(|source| SnapshotError::Decode {
        table: "encode",
        source,
    })
}

/// An alloc's row: its JSON with the embedded job reduced to the key of its `alloc_jobs` row.
fn alloc_row(a: &AllocRecord) -> Result<Vec<u8>, SnapshotError> {
    let mut v = serde_json::to_value(a).map_err(|source| SnapshotError::Decode {
        table: "allocs",
        source,
    })?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "job".into(),
            json!({"Version": a.job.version, "JobModifyIndex": a.job.job_modify_index}),
        );
    }
    encode(&v)
}

/// The `alloc_jobs` key of an alloc.
fn alloc_job_key(a: &AllocRecord) -> (&str, &str, u64, u64) {
    (
        &a.namespace,
        &a.job_id,
        a.job.version,
        a.job.job_modify_index,
    )
}

/// What one table of a snapshot writes: the rows added or changed (encoded) and the keys
/// removed.
struct TableRows<K> {
    upserts: Vec<(K, Vec<u8>)>,
    removed: Vec<K>,
}

impl<K: Clone> TableRows<K> {
    /// The rows of `new` that differ from `old` (`None`: all of them), each key made by `key`.
    fn of<TK: Ord + Clone, V>(
        old: Option<&Table<TK, V>>,
        new: &Table<TK, V>,
        key: impl Fn(&TK) -> K,
        enc: impl Fn(&V) -> Result<Vec<u8>, SnapshotError>,
    ) -> Result<TableRows<K>, SnapshotError> {
        let (changed, removed) = diff(old, new);
        let mut upserts = Vec::with_capacity(changed.len());
        for (k, v) in changed {
            upserts.push((key(k), enc(v)?));
        }
        Ok(TableRows {
            upserts,
            removed: removed.into_iter().map(key).collect(),
        })
    }
}

/// The key of an `alloc_jobs` row, owned.
type AllocJobKey = (String, String, u64, u64);

/// What a snapshot does to `alloc_jobs`.
enum AllocJobRows {
    /// A full snapshot: the table is made to hold exactly these (rows present are kept,
    /// missing ones encoded and added, the rest removed).
    Exactly(std::collections::BTreeMap<AllocJobKey, Arc<Job>>),
    /// An incremental one: the jobs the allocs embed now and did not before, and those no
    /// alloc embeds any more.
    Changes(TableRows<AllocJobKey>),
}

/// One snapshot, encoded: made by [`prepare`] from two immutable states (on any thread, no
/// store needed), written by [`Rows::write`] inside a write transaction.
pub struct Rows {
    /// A full snapshot (every table replaced), not a difference.
    full: bool,
    jobs: TableRows<(String, String)>,
    job_versions: TableRows<(String, String, u64)>,
    scaling_events: TableRows<(String, String)>,
    evals: TableRows<String>,
    nodes: TableRows<String>,
    allocs: TableRows<String>,
    alloc_jobs: AllocJobRows,
    /// The ACL tables, when they changed.
    acl: Option<Vec<u8>>,
    /// Autopilot's configuration, when it changed (`Some(None)`: removed).
    autopilot: Option<Option<Vec<u8>>>,
    index: u64,
    index_offset: u64,
}

fn owned2(k: &(String, String)) -> (String, String) {
    k.clone()
}

/// The jobs `state`'s allocs embed, by `alloc_jobs` key.
fn alloc_jobs_of(state: &ServerState) -> std::collections::BTreeMap<AllocJobKey, Arc<Job>> {
    let mut out = std::collections::BTreeMap::new();
    for a in state.allocs.values() {
        let (ns, id, ver, jmi) = alloc_job_key(a);
        out.entry((ns.to_string(), id.to_string(), ver, jmi))
            .or_insert_with(|| a.job.clone());
    }
    out
}

/// Encode the snapshot of `state`: only what differs from `prev` (the state of the previous
/// snapshot, `None`: everything). Pure: it reads the two states only, so it can run off the
/// commit path while commands go on being logged.
pub fn prepare(prev: Option<&ServerState>, state: &ServerState) -> Result<Rows, SnapshotError> {
    let jobs = TableRows::of(prev.map(|p| &p.jobs), &state.jobs, owned2, encode)?;
    let job_versions = TableRows::of(
        prev.map(|p| &p.job_versions),
        &state.job_versions,
        |k| (k.0.clone(), k.1.clone(), k.2),
        encode,
    )?;
    let scaling_events = TableRows::of(
        prev.map(|p| &p.scaling_events),
        &state.scaling_events,
        owned2,
        encode,
    )?;
    let evals = TableRows::of(prev.map(|p| &p.evals), &state.evals, String::clone, |v| {
        encode(v)
    })?;
    let nodes = TableRows::of(prev.map(|p| &p.nodes), &state.nodes, String::clone, |v| {
        encode(v)
    })?;
    let allocs = TableRows::of(
        prev.map(|p| &p.allocs),
        &state.allocs,
        |k: &super::alloc_index::AllocId| k.to_string(),
        alloc_row,
    )?;
    let wanted = alloc_jobs_of(state);
    let alloc_jobs = match prev {
        None => AllocJobRows::Exactly(wanted),
        Some(p) => {
            let had = alloc_jobs_of(p);
            let mut upserts = Vec::new();
            for (k, job) in &wanted {
                if !had.contains_key(k) {
                    upserts.push((k.clone(), encode(&**job)?));
                }
            }
            let removed = had
                .into_keys()
                .filter(|k| !wanted.contains_key(k))
                .collect();
            AllocJobRows::Changes(TableRows { upserts, removed })
        }
    };
    let acl_changed = prev
        .map(|p| !Arc::ptr_eq(&p.acl, &state.acl))
        .unwrap_or(true);
    let acl = if acl_changed {
        Some(encode(&*state.acl)?)
    } else {
        None
    };
    let autopilot_changed = match (prev.and_then(|p| p.autopilot.as_ref()), &state.autopilot) {
        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
        (None, None) => prev.is_none(),
        _ => true,
    };
    let autopilot = if autopilot_changed {
        Some(match &state.autopilot {
            Some(c) => Some(encode(&**c)?),
            None => None,
        })
    } else {
        None
    };
    Ok(Rows {
        full: prev.is_none(),
        jobs,
        job_versions,
        scaling_events,
        evals,
        nodes,
        allocs,
        alloc_jobs,
        acl,
        autopilot,
        index: state.index,
        index_offset: state.index_offset,
    })
}

/// Write `state` as the snapshot in `txn`: only what differs from `prev` (the state of the
/// previous snapshot, `None`: everything), then its index. The caller deletes the log it
/// covers and commits.
pub fn write(
    txn: &WriteTransaction,
    prev: Option<&ServerState>,
    state: &ServerState,
) -> Result<(), SnapshotError> {
    prepare(prev, state)?.write(txn)
}

impl Rows {
    /// The index of the state these rows are the snapshot of.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Write the rows and the snapshot's index in `txn`. The caller deletes the log they
    /// cover and commits.
    pub fn write(self, txn: &WriteTransaction) -> Result<(), SnapshotError> {
        let full = self.full;
        {
            let mut t = txn.open_table(JOBS)?;
            if full {
                t.retain(|_, _| false)?;
            }
            for (k, v) in &self.jobs.upserts {
                t.insert((k.0.as_str(), k.1.as_str()), v.as_slice())?;
            }
            for k in &self.jobs.removed {
                t.remove((k.0.as_str(), k.1.as_str()))?;
            }
        }
        {
            let mut t = txn.open_table(JOB_VERSIONS)?;
            if full {
                t.retain(|_, _| false)?;
            }
            for (k, v) in &self.job_versions.upserts {
                t.insert((k.0.as_str(), k.1.as_str(), k.2), v.as_slice())?;
            }
            for k in &self.job_versions.removed {
                t.remove((k.0.as_str(), k.1.as_str(), k.2))?;
            }
        }
        {
            let mut t = txn.open_table(SCALING_EVENTS)?;
            if full {
                t.retain(|_, _| false)?;
            }
            for (k, v) in &self.scaling_events.upserts {
                t.insert((k.0.as_str(), k.1.as_str()), v.as_slice())?;
            }
            for k in &self.scaling_events.removed {
                t.remove((k.0.as_str(), k.1.as_str()))?;
            }
        }
        write_simple(txn, EVALS, full, &self.evals)?;
        write_simple(txn, NODES, full, &self.nodes)?;
        write_simple(txn, ALLOCS, full, &self.allocs)?;
        {
            let mut t = txn.open_table(ALLOC_JOBS)?;
            match &self.alloc_jobs {
                AllocJobRows::Exactly(wanted) => {
                    // Rows still referenced are kept, missing ones added, the rest removed
                    // (no job is encoded twice).
                    let mut have = BTreeSet::new();
                    let mut stale = Vec::new();
                    for row in t.iter()? {
                        let (k, _) = row?;
                        let (ns, id, ver, jmi) = k.value();
                        let key = (ns.to_string(), id.to_string(), ver, jmi);
                        if wanted.contains_key(&key) {
                            have.insert(key);
                        } else {
                            stale.push(key);
                        }
                    }
                    for (ns, id, ver, jmi) in &stale {
                        t.remove((ns.as_str(), id.as_str(), *ver, *jmi))?;
                    }
                    for (k, job) in wanted {
                        if !have.contains(k) {
                            t.insert(
                                (k.0.as_str(), k.1.as_str(), k.2, k.3),
                                encode(&**job)?.as_slice(),
                            )?;
                        }
                    }
                }
                AllocJobRows::Changes(rows) => {
                    for (k, v) in &rows.upserts {
                        t.insert((k.0.as_str(), k.1.as_str(), k.2, k.3), v.as_slice())?;
                    }
                    for k in &rows.removed {
                        t.remove((k.0.as_str(), k.1.as_str(), k.2, k.3))?;
                    }
                }
            }
        }
        if let Some(acl) = &self.acl {
            let mut t = txn.open_table(ACL)?;
            t.insert("acl", acl.as_slice())?;
        }
        if let Some(autopilot) = &self.autopilot {
            let mut t = txn.open_table(CLUSTER_META)?;
            match autopilot {
                Some(c) => {
                    t.insert(AUTOPILOT_KEY, c.as_slice())?;
                }
                None => {
                    t.remove(AUTOPILOT_KEY)?;
                }
            }
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(INDEX_KEY, self.index)?;
        meta.insert(INDEX_OFFSET_KEY, self.index_offset)?;
        Ok(())
    }
}

/// Write one table keyed by a string ID.
fn write_simple(
    txn: &WriteTransaction,
    def: TableDefinition<&str, &[u8]>,
    full: bool,
    rows: &TableRows<String>,
) -> Result<(), SnapshotError> {
    let mut t = txn.open_table(def)?;
    if full {
        t.retain(|_, _| false)?;
    }
    for (k, v) in &rows.upserts {
        t.insert(k.as_str(), v.as_slice())?;
    }
    for k in &rows.removed {
        t.remove(k.as_str())?;
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|source| SnapshotError::Decode { table, source })
}

/// Read a table snapshot, if one was written (`None`: none yet, or only the old format).
pub fn load(txn: &ReadTransaction) -> Result<Option<ServerState>, SnapshotError> {
    let Some(meta) = opened(txn.open_table(META))? else {
        return Ok(None);
    };
    let Some(index) = meta.get(INDEX_KEY)?.map(|v| v.value()) else {
        return Ok(None);
    };
    let index_offset = meta.get(INDEX_OFFSET_KEY)?.map_or(0, |v| v.value());
    let mut state = ServerState {
        index,
        index_offset,
        ..ServerState::default()
    };
    if let Some(t) = opened(txn.open_table(CLUSTER_META))? {
        if let Some(v) = t.get(AUTOPILOT_KEY)? {
            state.autopilot = Some(Arc::new(decode("cluster_meta", v.value())?));
        }
    }
    if let Some(t) = opened(txn.open_table(JOBS))? {
        for row in t.iter()? {
            let (k, v) = row?;
            let (ns, id) = k.value();
            let job: Job = decode("jobs", v.value())?;
            state
                .jobs
                .insert((ns.to_string(), id.to_string()), Arc::new(job));
        }
    }
    if let Some(t) = opened(txn.open_table(JOB_VERSIONS))? {
        for row in t.iter()? {
            let (k, v) = row?;
            let (ns, id, version) = k.value();
            let kept: JobVersion = decode("job_versions", v.value())?;
            state
                .job_versions
                .insert((ns.to_string(), id.to_string(), version), Arc::new(kept));
        }
    }
    if let Some(t) = opened(txn.open_table(SCALING_EVENTS))? {
        for row in t.iter()? {
            let (k, v) = row?;
            let (ns, id) = k.value();
            let events: ScalingEvents = decode("scaling_events", v.value())?;
            state
                .scaling_events
                .insert((ns.to_string(), id.to_string()), Arc::new(events));
        }
    }
    for_rows(txn, EVALS, |k, v| {
        let e: EvalRecord = decode("evals", v)?;
        state.evals.insert(k.to_string(), Arc::new(e));
        Ok(())
    })?;
    for_rows(txn, NODES, |k, v| {
        let n: Node = decode("nodes", v)?;
        state.nodes.insert(k.to_string(), Arc::new(n));
        Ok(())
    })?;
    let mut jobs: HashMap<(String, String, u64, u64), Arc<Job>> = HashMap::new();
    if let Some(t) = opened(txn.open_table(ALLOC_JOBS))? {
        for row in t.iter()? {
            let (k, v) = row?;
            let (ns, id, ver, jmi) = k.value();
            let job: Job = decode("alloc_jobs", v.value())?;
            jobs.insert((ns.to_string(), id.to_string(), ver, jmi), Arc::new(job));
        }
    }
    for_rows(txn, ALLOCS, |k, v| {
        let mut a: AllocRecord = decode("allocs", v)?;
        let key = (
            a.namespace.to_string(),
            a.job_id.to_string(),
            a.job.version,
            a.job.job_modify_index,
        );
        a.job = jobs
            .get(&key)
            .cloned()
            .ok_or_else(|| SnapshotError::MissingAllocJob(k.to_string()))?;
        state.allocs.insert(k.into(), Arc::new(a));
        Ok(())
    })?;
    if let Some(t) = opened(txn.open_table(ACL))? {
        if let Some(v) = t.get("acl")? {
            let mut acl: AclTables = decode("acl", v.value())?;
            acl.parse_policies();
            state.acl = Arc::new(acl);
        }
    }
    Ok(Some(state.reindexed()))
}

/// Call `f` on every row of a table keyed by a string ID (none when it was never made).
fn for_rows(
    txn: &ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    mut f: impl FnMut(&str, &[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    if let Some(t) = opened(txn.open_table(def))? {
        for row in t.iter()? {
            let (k, v) = row?;
            f(k.value(), v.value())?;
        }
    }
    Ok(())
}

/// A table that does not exist yet reads as `None` (empty).
fn opened<T>(r: Result<T, redb::TableError>) -> Result<Option<T>, SnapshotError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The whole-state snapshot of the format before tables, if there is one.
pub fn load_old(txn: &ReadTransaction) -> Result<Option<ServerState>, SnapshotError> {
    let Some(t) = opened(txn.open_table(OLD_SNAPSHOT))? else {
        return Ok(None);
    };
    let last = t.last()?;
    let state = match last {
        Some((_, v)) => ServerState::from_bytes(v.value())
            .map(Some)
            .map_err(|source| SnapshotError::Decode {
                table: "snapshot",
                source,
            })?,
        None => None,
    };
    Ok(state)
}

/// Remove the old whole-state snapshot (once tables hold the state).
pub fn drop_old(txn: &WriteTransaction) -> Result<(), SnapshotError> {
    txn.delete_table(OLD_SNAPSHOT)?;
    Ok(())
}
