//! Jobs, evaluations and allocations as the server side keeps them: the published state of
//! the command log (`state::command_log`), changed only through `state::command::apply`, and
//! nomadlet's synchronous scheduler (one node: `Count` allocations per group, replaced when
//! the job spec changes).

pub mod alloc;
pub mod cron;
pub mod diff;
pub mod error;
pub mod eval;
pub mod history;
pub mod launch;
pub mod network;
pub mod spec;
pub mod timefmt;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::alloc::{AllocRecord, TaskState};
use self::eval::EvalRecord;
use self::spec::Job;
use super::command::{Applied, Command, ServerState};
use super::command_log::{self as cmdlog, CommandLog, LogError};
use super::node_table::Node;
use super::status::{AllocClientStatus, JobStatus};
use super::store::{self, StoreError};
use super::IndexCounter;

/// A plan submitted to the log ([`Workloads::submit_plan`]): its answer, to come.
#[derive(Debug)]
pub struct PlanTicket {
    ticket: cmdlog::Ticket,
    path: PathBuf,
}

impl PlanTicket {
    /// What applying the plan did (`None`: its eval was not pending any more), once it came.
    pub fn try_take(&self) -> Option<Result<Option<super::plan::PlanResult>, StoreError>> {
        self.ticket.try_take().map(|r| self.result(r))
    }

    /// The same, waiting at most `timeout` for it.
    pub fn wait_for(
        &self,
        timeout: std::time::Duration,
    ) -> Option<Result<Option<super::plan::PlanResult>, StoreError>> {
        self.ticket.wait_for(timeout).map(|r| self.result(r))
    }

    fn result(
        &self,
        r: Result<(Applied, u64), LogError>,
    ) -> Result<Option<super::plan::PlanResult>, StoreError> {
        match r {
            Ok((Applied::Plan(p), _)) => Ok(Some(p)),
            Ok(_) | Err(LogError::Apply(_)) => Ok(None),
            Err(e) => Err(StoreError::other(&self.path, "write", e)),
        }
    }
}

/// The server-side job, evaluation and allocation tables: the published [`ServerState`] of
/// the command log. Every write is a [`Command`] proposed to the log's committer and
/// answered once it is durable, applied and published; reads see an immutable snapshot.
pub struct Workloads {
    path: PathBuf,
    log: Arc<CommandLog>,
    max_index: u64,
    /// When and what the leader's periodic garbage collection reaps (`server.*_gc_*`).
    gc_policy: super::gc::GcPolicy,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("path", &self.path)
            .finish()
    }
}

/// Where the allocs of a write are placed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    /// Set when this node cannot run the job's tasks (the raw_exec driver is disabled): the
    /// register places nothing and records why (Nomad's failed placement and blocked eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaceable: Option<Box<Unplaceable>>,
}

/// Why a node cannot take a job's placements, as the proposer saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unplaceable {
    /// The missing driver (`raw_exec`).
    pub driver: String,
    /// The operator's advice: which config key enables it, in the config's own format.
    pub reason: String,
    pub datacenter: String,
}

/// The answer to a register or deregister.
#[derive(Clone, Debug)]
pub struct WriteResult {
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub index: u64,
}

/// What the ACL layer needs to know of an allocation a workload identity names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocFacts {
    pub job_id: String,
    pub namespace: String,
    /// Stopped or finished: a workload identity of it is no longer valid.
    pub terminal: bool,
}

/// The answer to an alloc stop.
#[derive(Clone, Debug)]
pub struct AllocStopResult {
    /// The evaluation the stop made.
    pub eval_id: String,
    /// The index the stop was written at.
    pub index: u64,
}

/// The old file store's directories under `<data_dir>/server` (imported once).
const OLD_DIRS: [&str; 3] = ["jobs", "evals", "allocs"];

fn load_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for path in json_files(dir)? {
        match store::read_json::<T>(&path) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(e) => log::warn!("skipping unreadable state file: {e}"),
        }
    }
    Ok(out)
}

/// The state files (`*.json`, not hidden) of one old store directory.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, "list", e)),
    };
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let is_json = p.extension().map(|e| e == "json").unwrap_or(false);
            let hidden = p
                .file_name()
                .map(|n| n.to_string_lossy().starts_with('.'))
                .unwrap_or(true);
            is_json && !hidden
        })
        .collect())
}

/// The state of the old file store (one JSON file per object), for the one-time import.
fn load_old_store(server: &Path) -> Result<ServerState, StoreError> {
    let jobs = load_dir::<Job>(&server.join("jobs"))?;
    let evals = load_dir::<EvalRecord>(&server.join("evals"))?;
    let allocs = load_dir::<AllocRecord>(&server.join("allocs"))?;
    let acl = crate::acl::AclTables::read_old_file(server)?;
    let acl_index = acl
        .tokens
        .iter()
        .map(|t| t.modify_index)
        .chain(acl.policies.values().map(|p| p.modify_index))
        .chain(acl.bootstrap_index)
        .max()
        .unwrap_or(0);
    let max_index = jobs
        .iter()
        .map(|j| j.modify_index)
        .chain(evals.iter().map(|e| e.modify_index))
        .chain(allocs.iter().map(|a| a.modify_index))
        .max()
        .unwrap_or(0)
        .max(acl_index);
    let mut state = ServerState::from_parts(max_index, jobs, evals, allocs);
    state.acl = Arc::new(acl);
    Ok(state)
}

/// Once the import is durable: remove the old store's files (and its directories when
/// nothing else is in them).
fn remove_old_store(server: &Path) {
    for sub in OLD_DIRS {
        let dir = server.join(sub);
        // Not synced one by one: files that come back after a crash are never read again
        // (the store is no longer new), so one sync of the directory at the end will do.
        for f in json_files(&dir).unwrap_or_default() {
            if let Err(e) = std::fs::remove_file(&f) {
                log::warn!("cannot remove imported state file {}: {e}", f.display());
            }
        }
        if std::fs::remove_dir(&dir).is_err() {
            let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
        }
    }
    if let Err(e) = store::remove_file(&server.join(crate::acl::STATE_FILE)) {
        log::warn!("cannot remove the imported ACL state file: {e}");
    }
}

impl Workloads {
    /// Open the command log under `<data_dir>/server` (importing the old file store once)
    /// and start its committer, which publishes through `counter`.
    pub fn load(data_dir: &Path, counter: Arc<IndexCounter>) -> Result<Workloads, StoreError> {
        Workloads::load_with(data_dir, counter, false)
    }

    /// [`Workloads::load`]; `replicated`: the log is replicated (Raft), so no committer runs
    /// and the consensus driver takes the state machine (`CommandLog::take_state_machine`).
    pub fn load_with(
        data_dir: &Path,
        counter: Arc<IndexCounter>,
        replicated: bool,
    ) -> Result<Workloads, StoreError> {
        let server = data_dir.join("server");
        let path = cmdlog::log_path(data_dir);
        let to_store = |e: LogError| StoreError::other(&path, "load", e);
        let import = || load_old_store(&server).map_err(|e| LogError::store("import", e));
        let opened = if replicated {
            CommandLog::open_replicated(&path, counter, import)
        } else {
            CommandLog::open(&path, counter, import)
        }
        .map_err(to_store)?;
        if opened.imported {
            log::info!("imported the server state files into {}", path.display());
            remove_old_store(&server);
        }
        let max_index = opened.log.state().index;
        Ok(Workloads {
            path,
            log: Arc::new(opened.log),
            max_index,
            gc_policy: super::gc::GcPolicy::default(),
        })
    }

    /// The same, collecting garbage by `policy` (the agent's `server` config).
    pub fn with_gc_policy(mut self, policy: super::gc::GcPolicy) -> Workloads {
        self.gc_policy = policy;
        self
    }

    /// When and what the periodic garbage collection reaps.
    pub fn gc_policy(&self) -> super::gc::GcPolicy {
        self.gc_policy
    }

    /// Forget the jobs, evals and allocs finished longer ago than `thresholds` (Nomad's core
    /// GC; `GcThresholds::FORCE` for `PUT /v1/system/gc`): chosen on the published state,
    /// removed by one durable command. Returns what was removed.
    pub fn collect_garbage(
        &self,
        thresholds: &super::gc::GcThresholds,
    ) -> Result<super::gc::Reaped, StoreError> {
        let now = crate::time::unix_now_nanos();
        let reap = super::gc::candidates(&self.state(), now, thresholds);
        if reap.is_empty() {
            return Ok(super::gc::Reaped::default());
        }
        Ok(match self.propose(Command::GcReap { reap })? {
            Some((Applied::Gc(r), _)) => r,
            _ => super::gc::Reaped::default(),
        })
    }

    /// Stop the committer (after the writes already proposed) and close the store.
    pub fn shutdown(&self) {
        self.log.shutdown();
    }

    /// The command log, for the other parts of the server state (ACL).
    pub fn command_log(&self) -> Arc<CommandLog> {
        self.log.clone()
    }

    /// The broker of the events the committer makes from applied commands.
    pub fn events(&self) -> Arc<super::event_broker::EventBroker> {
        self.log.events()
    }

    /// The published state: an immutable snapshot.
    pub fn state(&self) -> Arc<ServerState> {
        self.log.state()
    }

    /// The largest index found on disk at load (the agent raises its counter to it).
    pub fn max_index(&self) -> u64 {
        self.max_index
    }

    /// Allocations on this node, for the agent's stats.
    pub fn alloc_count(&self) -> usize {
        self.state().allocs.len()
    }

    /// Facts about an allocation that the ACL layer needs.
    pub fn alloc_status(&self, alloc_id: &str) -> Option<AllocFacts> {
        let s = self.state();
        let a = s.allocs.get(alloc_id)?;
        Some(AllocFacts {
            job_id: a.job_id.to_string(),
            namespace: a.namespace.to_string(),
            terminal: !a.is_live(),
        })
    }

    fn store_err(&self, e: LogError) -> StoreError {
        StoreError::other(&self.path, "write", e)
    }

    /// Propose and wait: `Ok(None)` when the command applied to "unknown" (changed nothing).
    fn propose(&self, cmd: Command) -> Result<Option<(Applied, u64)>, StoreError> {
        match self.log.propose(cmd) {
            Ok(r) => Ok(Some(r)),
            Err(LogError::Apply(_)) => Ok(None),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// Register a canonicalized, validated job. A changed spec makes a new version; an
    /// unchanged one stays as it is. Either way a `pending` eval is queued for the scheduler,
    /// which places (or replaces) the allocations moments later. Persisted, then published;
    /// on error nothing visible changed.
    pub fn register(&self, job: Job) -> Result<WriteResult, StoreError> {
        self.register_with_source(job, None)
    }

    /// [`Workloads::register`] with the source the job was written in (kept with the version
    /// it makes, for `/v1/job/:id/submission`).
    pub fn register_with_source(
        &self,
        job: Job,
        submission: Option<history::JobSubmission>,
    ) -> Result<WriteResult, StoreError> {
        // A periodic or parameterized parent is never scheduled: no eval (Nomad's empty EvalID).
        let eval_id = if launch::is_parent(&job) {
            String::new()
        } else {
            new_id()
        };
        let cmd = Command::JobSubmit {
            job: Box::new(job),
            eval_id,
            now: crate::time::unix_now_nanos(),
            submission: submission.map(Box::new),
        };
        self.job_write(cmd)
    }

    /// Propose a job write (submit, scale, evaluate, stable) and answer what it did; the
    /// apply error when it changed nothing (the job or its version is gone, or moved on).
    pub fn propose_job(
        &self,
        cmd: Command,
    ) -> Result<Result<WriteResult, super::command::ApplyError>, StoreError> {
        match self.log.propose(cmd) {
            Ok((Applied::Job(w), index)) => Ok(Ok(WriteResult {
                eval_id: w.eval_id,
                eval_create_index: w.eval_create_index,
                job_modify_index: w.job_modify_index,
                index,
            })),
            Ok(_) => Err(self.store_err(LogError::Closed("job write applied to nothing"))),
            Err(LogError::Apply(e)) => Ok(Err(e)),
            Err(e) => Err(self.store_err(e)),
        }
    }

    fn job_write(&self, cmd: Command) -> Result<WriteResult, StoreError> {
        match self.propose(cmd)? {
            Some((Applied::Job(w), index)) => Ok(WriteResult {
                eval_id: w.eval_id,
                eval_create_index: w.eval_create_index,
                job_modify_index: w.job_modify_index,
                index,
            }),
            _ => Err(self.store_err(LogError::Closed("register applied to nothing"))),
        }
    }

    /// Stop a job (or purge it): its allocs are told to stop at once and an eval is queued.
    /// `None` when the job is unknown. Persisted, then published: on error the job is still
    /// listed as it was and its allocs still want to run.
    pub fn deregister(
        &self,
        namespace: &str,
        job_id: &str,
        purge: bool,
    ) -> Result<Option<WriteResult>, StoreError> {
        let key = (namespace.to_string(), job_id.to_string());
        let Some(job) = self.state().jobs.get(&key).cloned() else {
            return Ok(None);
        };
        let cmd = Command::JobStop {
            namespace: key.0,
            job_id: key.1,
            purge,
            // A periodic or parameterized parent gets no eval (Nomad's empty EvalID).
            eval_id: if launch::is_parent(&job) {
                String::new()
            } else {
                new_id()
            },
            now: crate::time::unix_now_nanos(),
        };
        Ok(match self.propose(cmd)? {
            Some((Applied::Job(w), index)) => Some(WriteResult {
                eval_id: w.eval_id,
                eval_create_index: w.eval_create_index,
                job_modify_index: w.job_modify_index,
                index,
            }),
            _ => None,
        })
    }

    /// Stop one allocation; the scheduler places a replacement when its job still wants it.
    /// `None` when the alloc is unknown.
    pub fn stop_alloc(&self, alloc_id: &str) -> Result<Option<AllocStopResult>, StoreError> {
        if !self.state().allocs.contains_key(alloc_id) {
            return Ok(None);
        }
        let cmd = Command::AllocStopQueued {
            alloc_id: alloc_id.to_string(),
            eval_id: new_id(),
            now: crate::time::unix_now_nanos(),
        };
        Ok(match self.propose(cmd)? {
            Some((Applied::AllocStopped { eval_id }, index)) => {
                Some(AllocStopResult { eval_id, index })
            }
            _ => None,
        })
    }

    /// Apply a scheduler plan (`state::plan`): durable, checked and published before it
    /// returns what was placed and refused; `None` when its eval is no longer pending.
    pub fn apply_plan(
        &self,
        plan: crate::state::plan::Plan,
    ) -> Result<Option<crate::state::plan::PlanResult>, StoreError> {
        Ok(
            match self.propose(Command::PlanApply {
                plan: Box::new(plan),
            })? {
                Some((Applied::Plan(r), _)) => Some(r),
                _ => None,
            },
        )
    }

    /// Propose a plan without waiting for it to apply (the scheduler's pipeline): the
    /// ticket answers what [`Workloads::apply_plan`] would have.
    pub fn submit_plan(&self, plan: crate::state::plan::Plan) -> Result<PlanTicket, StoreError> {
        let cmd = Command::PlanApply {
            plan: Box::new(plan),
        };
        match self.log.submit(cmd) {
            Ok(t) => Ok(PlanTicket {
                ticket: t,
                path: self.path.clone(),
            }),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// Change an allocation's client side (task states, status, collection) and save it:
    /// written before it is visible, so nobody reads a task state that a crash or a full
    /// disk could lose. `None` when the alloc is unknown. `f` runs on the published alloc;
    /// what it changed (task states, client status, `collected`) becomes the command.
    pub fn update_alloc(
        &self,
        alloc_id: &str,
        f: impl FnOnce(&mut AllocRecord),
    ) -> Result<Option<AllocRecord>, StoreError> {
        let Some(old) = self.state().allocs.get(alloc_id).cloned() else {
            return Ok(None);
        };
        let mut a = (*old).clone();
        f(&mut a);
        let tasks: BTreeMap<String, TaskState> = a
            .task_states
            .into_iter()
            .filter(|(name, ts)| old.task_states.get(name) != Some(ts))
            .collect();
        let status_changed =
            a.client_status != old.client_status || a.client_description != old.client_description;
        let cmd = Command::AllocClientUpdate {
            alloc_id: alloc_id.to_string(),
            tasks,
            client_status: status_changed.then_some(alloc::ClientStatusUpdate {
                status: a.client_status,
                description: a.client_description.to_string(),
            }),
            collected: a.collected && !old.collected,
            now: crate::time::unix_now_nanos(),
        };
        Ok(match self.propose(cmd)? {
            Some((Applied::Alloc(a), _)) => Some(*a),
            _ => None,
        })
    }

    /// Change one task's state of an allocation and save it (tests only: the client changes
    /// task states through its own view and `ServerLink::push_alloc_updates`).
    #[cfg(test)]
    pub fn update_task(
        &self,
        alloc_id: &str,
        task: &str,
        f: impl FnOnce(&mut TaskState),
    ) -> Result<Option<AllocRecord>, StoreError> {
        self.update_alloc(alloc_id, |a| {
            let ts = a
                .task_states
                .entry(task.to_string())
                .or_insert_with(TaskState::pending);
            f(ts);
        })
    }

    /// Register a node (again): what the client fingerprinted; the server keeps its indexes,
    /// events, eligibility and drain. Returns the node's modify index.
    pub fn register_node(&self, node: Node) -> Result<u64, StoreError> {
        self.propose_node(Command::NodeRegister {
            node: Box::new(node),
            now: crate::time::unix_now_nanos(),
        })
        .map(|i| i.unwrap_or(0))
    }

    /// Set a node's metadata (the batcher's node update). `None`: the node is unknown.
    pub fn update_node_meta(
        &self,
        node_id: &str,
        meta: BTreeMap<String, String>,
    ) -> Result<Option<u64>, StoreError> {
        self.propose_node(Command::NodeUpdateMeta {
            node_id: node_id.to_string(),
            meta,
        })
    }

    /// Propose a node command (register, status, eligibility, metadata, events): durable,
    /// applied and published before it returns the node's new modify index; `None` when it
    /// names an unknown node.
    pub fn propose_node(&self, cmd: Command) -> Result<Option<u64>, StoreError> {
        Ok(match self.propose(cmd)? {
            Some((Applied::Node(i), _)) => Some(i),
            _ => None,
        })
    }

    /// Propose a node operation (drain, eligibility, evaluate, purge, migrate): durable,
    /// applied and published before it returns what it changed and the index it was written
    /// at; `Ok(Err(_))` when apply refused it (unknown node, draining node), changing nothing.
    pub fn propose_node_op(
        &self,
        cmd: Command,
    ) -> Result<Result<(super::node_ops::NodeWrite, u64), super::command::ApplyError>, StoreError>
    {
        match self.log.propose(cmd) {
            Ok((Applied::NodeOp(w), index)) => Ok(Ok((w, index))),
            Ok(_) => Err(self.store_err(LogError::Closed("node operation applied to nothing"))),
            Err(LogError::Apply(e)) => Ok(Err(e)),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// One node of the server's node table.
    pub fn node(&self, id: &str) -> Option<Arc<Node>> {
        self.state().nodes.get(id).cloned()
    }

    /// Every node, by ID.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.state().nodes.values().cloned().collect()
    }

    pub fn job(&self, namespace: &str, id: &str) -> Option<Job> {
        self.state()
            .jobs
            .get(&(namespace.to_string(), id.to_string()))
            .map(|j| (**j).clone())
    }

    pub fn jobs(&self) -> Vec<Job> {
        self.state().jobs.values().map(|j| (**j).clone()).collect()
    }

    pub fn alloc(&self, id: &str) -> Option<AllocRecord> {
        self.state().allocs.get(id).map(|a| (**a).clone())
    }

    /// Every allocation, oldest first (shared: nothing is copied).
    pub fn allocs(&self) -> Vec<Arc<AllocRecord>> {
        let mut v: Vec<Arc<AllocRecord>> = self.state().allocs.values().cloned().collect();
        v.sort_by_key(|a| (a.create_index, a.create_time));
        v
    }

    /// A job's allocations, oldest first: those of the job registered now under this ID
    /// (its `CreateIndex`), or with `all` (or once the job is purged) every one.
    pub fn allocs_of_job(&self, namespace: &str, job_id: &str, all: bool) -> Vec<AllocRecord> {
        let key = (namespace.to_string(), job_id.to_string());
        let state = self.state();
        let current = state.jobs.get(&key).filter(|_| !all).cloned();
        let mut v: Vec<AllocRecord> = state
            .allocs_of(&key)
            .filter(|a| {
                current
                    .as_ref()
                    .is_none_or(|j| history::of_incarnation(j, a))
            })
            .map(|a| (**a).clone())
            .collect();
        v.sort_by_key(|a| (a.create_index, a.create_time));
        v
    }

    pub fn eval(&self, id: &str) -> Option<EvalRecord> {
        self.state().evals.get(id).map(|e| (**e).clone())
    }

    pub fn evals(&self) -> Vec<EvalRecord> {
        let mut v: Vec<EvalRecord> = self.state().evals.values().map(|e| (**e).clone()).collect();
        v.sort_by_key(|e| e.create_index);
        v
    }

    /// A job's `Status`: as apply keeps it on the job (see [`job_status_in`]); computed for
    /// a job stored before statuses were kept.
    pub fn job_status(&self, job: &Job) -> JobStatus {
        JobStatus::parse(&job.status).unwrap_or_else(|| job_status_in(&self.state(), job))
    }
}

/// A job's status in `state`, the rule apply keeps on the job after every command that
/// touches it: system, periodic and parameterized jobs are `running` until stopped; others
/// go by [`job_status_of`] their allocs, except that a job with no live alloc is `pending`
/// while an eval for it waits (pending or blocked), as Nomad says.
pub fn job_status_in(state: &ServerState, job: &Job) -> JobStatus {
    use super::status::{EvalStatus, JobType};
    // Nomad: system jobs and periodic and parameterized parents run until they are stopped
    // (a dispatched child keeps its parent's ParameterizedJob, yet ends as any batch job).
    if job.job_type() == JobType::System || launch::is_parent(job) {
        return if job.stop {
            JobStatus::Dead
        } else {
            JobStatus::Running
        };
    }
    let key = (job.namespace.clone(), job.id.clone());
    let status = job_status_of(job, state.allocs_of(&key).map(|a| &**a));
    // A stopped job too is `pending` until its deregister eval is done (Nomad's
    // `getJobStatus` has no case for `Stop`): tools such as nomad-tools tell a stop from a
    // purge by the job turning `dead` at the index where that eval completes.
    if status != JobStatus::Dead {
        return status;
    }
    let waiting = state
        .evals_of(&key)
        .any(|e| matches!(e.status, EvalStatus::Pending | EvalStatus::Blocked));
    if waiting {
        JobStatus::Pending
    } else {
        status
    }
}

/// A job's status from its allocs (Nomad's `running`, `pending`, `dead`): the one rule for
/// the job JSON and the job events.
pub fn job_status_of<'a>(job: &Job, allocs: impl Iterator<Item = &'a AllocRecord>) -> JobStatus {
    // Periodic and parameterized parents run until stopped (Nomad's `getJobStatus`).
    if launch::is_parent(job) {
        return if job.stop {
            JobStatus::Dead
        } else {
            JobStatus::Running
        };
    }
    let (mut any, mut live, mut running) = (false, false, false);
    for a in allocs.filter(|a| history::of_incarnation(job, a)) {
        any = true;
        if a.is_live() {
            live = true;
            if a.client_status == AllocClientStatus::Running {
                // Nothing later changes the answer.
                running = true;
                break;
            }
        }
    }
    if running {
        JobStatus::Running
    } else if live {
        JobStatus::Pending
    } else if job.stop || job.is_batch() || any {
        JobStatus::Dead
    } else {
        JobStatus::Pending
    }
}

/// A fresh object ID (chosen by the proposer: apply makes none).
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::scheduler::{run_pending, test_node};
    use crate::state::status::{AllocDesiredStatus, TaskStatus};
    use std::sync::atomic::Ordering;

    /// A store with one big node registered.
    fn with_node(w: &Workloads) {
        w.register_node(test_node("n1")).unwrap();
    }

    /// Register and let the scheduler place it.
    fn place(w: &Workloads, j: Job) -> WriteResult {
        let r = w.register(j).unwrap();
        run_pending(w);
        r
    }

    fn job(count: i64, cmd: &str) -> Job {
        job_named("web", count, cmd)
    }

    fn job_named(id: &str, count: i64, cmd: &str) -> Job {
        let mut j = Job::from_json(
            serde_json::json!({"ID": id, "TaskGroups": [{"Name": "g", "Count": count,
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": cmd}}]}]}),
        )
        .unwrap();
        j.canonicalize("global");
        j
    }

    fn node() -> NodeInfo {
        NodeInfo {
            id: "n1".into(),
            name: "node".into(),
            unplaceable: None,
        }
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("nomadlet-wl-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn register_places_count_allocs_and_unchanged_is_a_noop_and_state_survives_reload() {
        let dir = temp_dir();
        let counter = Arc::new(IndexCounter::default());
        let w = Workloads::load(&dir, counter.clone()).unwrap();
        with_node(&w);
        let r1 = place(&w, job(2, "/bin/true"));
        assert_eq!(w.allocs().len(), 2);
        assert!(w.eval(&r1.eval_id).is_some());
        let r2 = place(&w, job(2, "/bin/true"));
        assert_eq!(r2.job_modify_index, r1.job_modify_index);
        assert_eq!(w.allocs().len(), 2);
        place(&w, job(1, "/bin/false"));
        let allocs = w.allocs();
        assert_eq!(allocs.len(), 3);
        assert_eq!(
            allocs
                .iter()
                .filter(|a| a.desired_status == AllocDesiredStatus::Run)
                .count(),
            1
        );
        assert_eq!(w.job("default", "web").unwrap().version, 1);
        let live = w.state().to_bytes().unwrap();
        drop(w);
        let back = Workloads::load(&dir, Arc::new(IndexCounter::default())).unwrap();
        assert_eq!(back.allocs().len(), 3);
        assert_eq!(back.job("default", "web").unwrap().version, 1);
        assert!(back.max_index() >= r1.index);
        assert_eq!(back.state().to_bytes().unwrap(), live, "replay equals live");
        drop(back);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_transaction_publishes_nothing_and_the_next_one_works() {
        let dir = temp_dir();
        let counter = Arc::new(IndexCounter::default());
        let w = Workloads::load(&dir, counter.clone()).unwrap();
        with_node(&w);
        place(&w, job(2, "/bin/true"));
        let published = counter.current();
        let before = w.state().to_bytes().unwrap();
        w.log.stats.fail_writes.store(true, Ordering::SeqCst);
        assert!(w.register(job(1, "/bin/false")).is_err());
        assert!(w.deregister("default", "web", false).is_err());
        assert!(w.deregister("default", "web", true).is_err());
        let a = w.allocs()[0].id.clone();
        assert!(w.stop_alloc(&a).is_err());
        assert!(w
            .update_task(&a, "t", |ts| ts.state = TaskStatus::Running)
            .is_err());
        assert_eq!(counter.current(), published, "no index published");
        assert_eq!(
            w.state().to_bytes().unwrap(),
            before,
            "nothing visible changed"
        );
        w.log.stats.fail_writes.store(false, Ordering::SeqCst);
        w.deregister("default", "web", false).unwrap();
        assert!(w.job("default", "web").unwrap().stop);
        drop(w);
        let back = Workloads::load(&dir, Arc::new(IndexCounter::default())).unwrap();
        assert!(back.job("default", "web").unwrap().stop);
        assert_eq!(back.evals().len(), 2, "the failed writes left no eval");
        drop(back);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_proposals_share_transactions() {
        let dir = temp_dir();
        let counter = Arc::new(IndexCounter::default());
        let w = Arc::new(Workloads::load(&dir, counter.clone()).unwrap());
        const WRITERS: usize = 8;
        const EACH: usize = 25;
        let threads: Vec<_> = (0..WRITERS)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let j = job_named(&format!("j{t}-{i}"), 0, "/bin/true");
                        w.register(j).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let tx = w.log.stats.transactions.load(Ordering::SeqCst);
        let cmds = w.log.stats.commands.load(Ordering::SeqCst);
        assert_eq!(cmds, (WRITERS * EACH) as u64);
        assert!(
            tx < cmds,
            "group commit: {tx} transactions for {cmds} commands"
        );
        assert_eq!(w.jobs().len(), WRITERS * EACH);
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ten_thousand_allocs_in_the_log_restart_to_the_same_state() {
        let dir = temp_dir();
        let counter = Arc::new(IndexCounter::default());
        let w = Workloads::load(&dir, counter.clone()).unwrap();
        with_node(&w);
        // 100 jobs of 100 allocs: all in the log (fewer commands than a snapshot interval).
        for i in 0..100 {
            let j = job_named(&format!("big{i}"), 100, "/bin/true");
            place(&w, j);
        }
        assert_eq!(w.allocs().len(), 10_000);
        let live = w.state().to_bytes().unwrap();
        drop(w);
        let w = Workloads::load(&dir, Arc::new(IndexCounter::default())).unwrap();
        assert_eq!(
            w.state().to_bytes().unwrap(),
            live,
            "log replay equals live"
        );
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn past_a_snapshot_interval_snapshot_plus_log_restart_to_the_same_state() {
        let dir = temp_dir();
        let counter = Arc::new(IndexCounter::default());
        let w = Arc::new(Workloads::load(&dir, counter.clone()).unwrap());
        const WRITERS: u64 = 8;
        with_node(&w);
        place(&w, job(WRITERS as i64, "/bin/true"));
        let ids: Vec<String> = w.allocs().into_iter().map(|a| a.id.to_string()).collect();
        let each = crate::state::command_log::SNAPSHOT_EVERY / WRITERS + 10;
        let threads: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..each {
                        w.update_task(&id, "t", |ts| ts.restarts = i).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let live = w.state().to_bytes().unwrap();
        drop(w);
        let back = Workloads::load(&dir, Arc::new(IndexCounter::default())).unwrap();
        assert_eq!(
            back.state().to_bytes().unwrap(),
            live,
            "snapshot + log equals live"
        );
        drop(back);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_old_file_store_is_imported_once_and_its_files_removed() {
        let dir = temp_dir();
        let server = dir.join("server");
        let mut j = job(1, "/bin/true");
        j.modify_index = 41;
        let at = alloc::AllocStamp {
            index: 41,
            id: "a1",
            now: 7,
        };
        let a = AllocRecord::new_at(&Arc::new(j.clone()), "g", 0, "e1", &node(), at);
        let e = EvalRecord::new_at(&j, "job-register", 41, "e1", 7);
        store::write_json(&server.join("jobs/x.json"), &j).unwrap();
        store::write_json(&server.join("allocs/a1.json"), &a).unwrap();
        store::write_json(&server.join("evals/e1.json"), &e).unwrap();
        std::fs::write(server.join("jobs/notes.txt"), b"mine").unwrap();
        let w = Workloads::load(&dir, Arc::new(IndexCounter::default())).unwrap();
        assert_eq!(w.max_index(), 41);
        assert!(w.job("default", "web").is_some());
        assert!(w.alloc("a1").is_some() && w.eval("e1").is_some());
        assert!(
            !server.join("allocs/a1.json").exists(),
            "imported files removed"
        );
        assert!(server.join("jobs/notes.txt").exists(), "other files kept");
        drop(w);
        let back = Workloads::load(&dir, Arc::new(IndexCounter::default())).unwrap();
        assert!(back.alloc("a1").is_some(), "kept in the store");
        drop(back);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
