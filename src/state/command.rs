//! The server state machine: every change to server state is a [`Command`], applied in one
//! place, [`apply`], deterministically: no clock, no randomness, no I/O. IDs and times are
//! chosen by the proposer before the command is made, so replaying the log rebuilds the same
//! state byte for byte (and a replicated log can carry the same commands unchanged).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jobs::alloc::{AllocRecord, AllocStamp, ClientStatusUpdate, TaskState};
use super::jobs::eval::EvalRecord;
use super::jobs::spec::Job;
use super::jobs::NodeInfo;
use super::node_table::{Node, NodeEvent, MAX_NODE_EVENTS};
use super::shared_str::SharedStr;
use crate::acl::tokens::{AclPolicy, AclToken, OneTimeToken};
use crate::acl::AclTables;
use crate::state::status::{
    AllocDesiredStatus, EvalStatus, JobStatus, NodeEligibility, NodeStatus,
};

/// A job's key: `(namespace, id)`.
pub type JobKey = (String, String);

/// One table of the server state: a persistent ordered map (`imbl`), so the committer's
/// copy per batch and every published snapshot share all entries a batch did not touch (a
/// copy is O(1); a change copies one path of the tree, and the object it replaces).
pub type Table<K, V> = imbl::OrdMap<K, Arc<V>>;

/// One change to server state, with everything chosen that apply must not choose itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Register a canonicalized, validated job. When its spec changed, a new version is made
    /// and its allocs are replaced by new ones named by `alloc_ids` (one per placement, in
    /// group order; there are as many as the job's groups count).
    JobRegister {
        job: Box<Job>,
        node: NodeInfo,
        eval_id: String,
        /// The blocked evaluation made when `node` cannot take the placements.
        #[serde(default)]
        blocked_eval_id: String,
        alloc_ids: Vec<String>,
        now: i64,
    },
    /// Stop a job (`purge`: remove it) and its running allocs.
    JobDeregister {
        namespace: String,
        job_id: String,
        purge: bool,
        eval_id: String,
        now: i64,
    },
    /// Stop one alloc; its replacement (when its job still wants it) is `replacement_id`.
    AllocStop {
        alloc_id: String,
        node: NodeInfo,
        eval_id: String,
        replacement_id: String,
        now: i64,
    },
    /// What the client reports of an alloc: the task states that changed, its status when
    /// it set one, whether its dir was collected.
    AllocClientUpdate {
        alloc_id: String,
        tasks: BTreeMap<String, TaskState>,
        client_status: Option<ClientStatusUpdate>,
        collected: bool,
        now: i64,
    },
    /// Create the initial management token (made, with its secret, by the proposer), once.
    AclBootstrap {
        token: Box<AclToken>,
        index: u64,
    },
    /// Insert or replace a token (`must_exist`: only replace, an update).
    AclTokenUpsert {
        token: Box<AclToken>,
        must_exist: bool,
    },
    AclTokenDelete {
        accessor: String,
    },
    /// Insert or replace a policy (its `CreateIndex` is kept when it existed).
    AclPolicyUpsert {
        policy: Box<AclPolicy>,
    },
    AclPolicyDelete {
        name: String,
    },
    /// Add a one-time token (made, with its secret and expiry, by the proposer), after
    /// dropping those expired at `now`; refused past `max` outstanding.
    AclOneTimeTokenCreate {
        token: Box<OneTimeToken>,
        now: i64,
        max: usize,
    },
    /// Use a one-time token once: it is removed and its live ACL token is the answer.
    AclOneTimeTokenExchange {
        secret: String,
        now: i64,
    },
    /// A client registers its node (again, after a restart): what it fingerprinted. A new
    /// node gets its create index and a "Node registered" event at `now`; a known one keeps
    /// them, its events, eligibility and drain.
    NodeRegister {
        node: Box<Node>,
        now: i64,
    },
    /// A node's metadata (static and dynamic merged) as the client now has it.
    NodeUpdateMeta {
        node_id: String,
        meta: BTreeMap<String, String>,
    },
    /// A node's status (`ready`, `down`, ...) and, when it changed, an event about it.
    NodeUpdateStatus {
        node_id: String,
        status: NodeStatus,
        description: String,
        event: Option<NodeEvent>,
        now: i64,
    },
    /// A node's scheduling eligibility (`eligible` or `ineligible`).
    NodeUpdateEligibility {
        node_id: String,
        eligibility: NodeEligibility,
        event: Option<NodeEvent>,
    },
    /// Events about nodes (the last [`MAX_NODE_EVENTS`] are kept per node).
    NodeEvents {
        events: Vec<(String, NodeEvent)>,
    },
    /// Register a canonicalized, validated job (a new version when its spec changed) and
    /// queue a `pending` eval for the scheduler; nothing is placed here.
    JobSubmit {
        job: Box<Job>,
        eval_id: String,
        now: i64,
        /// The source the job was written in, kept with the version it makes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        submission: Option<Box<super::jobs::history::JobSubmission>>,
    },
    /// Stop a job (`purge`: remove it): its allocs stop now; a `pending` eval is queued.
    JobStop {
        namespace: String,
        job_id: String,
        purge: bool,
        eval_id: String,
        now: i64,
    },
    /// The user stops one alloc; a `pending` eval lets the scheduler replace it.
    AllocStopQueued {
        alloc_id: String,
        eval_id: String,
        now: i64,
    },
    /// What the scheduler decided for one eval (`state::plan`), re-checked node by node.
    PlanApply {
        plan: Box<super::plan::Plan>,
    },
    /// Set, update or disable a node's drain (`PUT /v1/node/:id/drain`): the strategy and
    /// `LastDrain` with the times chosen by the proposer; `evals` when a disabled drain makes
    /// the node eligible again.
    NodeUpdateDrain {
        node_id: String,
        update: Box<super::node_ops::DrainUpdate>,
        event: Option<NodeEvent>,
        #[serde(default)]
        evals: Vec<super::node_ops::JobEval>,
        now: i64,
    },
    /// The drainer found a node drained (or its deadline passed): its strategy is cleared,
    /// `LastDrain` complete; it stays ineligible.
    NodeDrainComplete {
        node_id: String,
        event: NodeEvent,
        now: i64,
    },
    /// A node's eligibility with the node-update evals it makes (refused: `eligible` while
    /// the node drains).
    NodeSetEligibility {
        node_id: String,
        eligibility: NodeEligibility,
        event: Option<NodeEvent>,
        #[serde(default)]
        evals: Vec<super::node_ops::JobEval>,
        now: i64,
    },
    /// `POST /v1/node/:id/evaluate`: node-update evals for these jobs.
    NodeEvaluate {
        node_id: String,
        evals: Vec<super::node_ops::JobEval>,
        now: i64,
    },
    /// `POST /v1/node/:id/purge`: the node is removed, its live allocs lost, evals made.
    NodeDeregister {
        node_id: String,
        evals: Vec<super::node_ops::JobEval>,
        now: i64,
    },
    /// The drainer migrates allocs: `DesiredTransition.Migrate` set, a `node-drain` eval per
    /// job; with `stop` they are also stopped (see `node_ops::migrate`).
    AllocMigrate {
        alloc_ids: Vec<String>,
        evals: Vec<super::node_ops::JobEval>,
        #[serde(default)]
        stop: bool,
        now: i64,
    },
    /// `POST /v1/job/:id/stable`: mark one kept version of a job stable (or not).
    JobSetStable {
        namespace: String,
        job_id: String,
        version: u64,
        stable: bool,
    },
    /// `PUT /v1/job/:id/scale`: with a count, set the group's count (a new version) and
    /// queue a `job-scaling` eval, if the job is still at `job_modify_index`; either way
    /// record the scaling event (message, error, meta) on the group.
    JobScale {
        namespace: String,
        job_id: String,
        group: String,
        count: Option<i64>,
        job_modify_index: u64,
        eval_id: String,
        event: Box<super::jobs::history::ScalingEvent>,
        now: i64,
    },
    /// `PUT /v1/job/:id/evaluate`: queue an eval; `force_reschedule` marks the job's failed
    /// allocs to be rescheduled now.
    JobEvaluate {
        namespace: String,
        job_id: String,
        force_reschedule: bool,
        eval_id: String,
        now: i64,
    },
    /// A child of a running parent job (a dispatch, a periodic launch): stored like a
    /// submitted job, with a `pending` eval triggered by `triggered_by` (none when the child
    /// is periodic itself). Refused when the parent is gone or stopped.
    JobLaunch {
        job: Box<Job>,
        eval_id: String,
        triggered_by: String,
        now: i64,
    },
    /// `PUT /v1/operator/snapshot`: the state read from a snapshot archive replaces the whole
    /// state (restored objects keep their indexes; the state's index becomes this command's).
    RestoreSnapshot {
        state: RestoredState,
    },
    /// `PUT /v1/operator/autopilot/configuration` (and a new leader storing the defaults):
    /// with `cas`, written only when the stored config's modify index is `cas`.
    AutopilotSetConfig {
        config: super::autopilot::AutopilotConfig,
        #[serde(default)]
        cas: Option<u64>,
    },
    /// Server garbage collection (`state::gc`): forget the finished jobs, evals and allocs the
    /// leader chose; apply removes only those still finished.
    GcReap {
        reap: super::gc::Reap,
    },
}

/// The whole server state a [`Command::RestoreSnapshot`] carries: serialized as the state's
/// image (the same shape as [`ServerState::to_bytes`]), so the command replays and replicates
/// like any other; the derived indexes are rebuilt when it is decoded.
#[derive(Clone)]
pub struct RestoredState(pub Arc<ServerState>);

impl fmt::Debug for RestoredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.0;
        f.debug_struct("RestoredState")
            .field("index", &s.index)
            .field("jobs", &s.jobs.len())
            .field("evals", &s.evals.len())
            .field("allocs", &s.allocs.len())
            .field("nodes", &s.nodes.len())
            .finish()
    }
}

impl Serialize for RestoredState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.image_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RestoredState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let img = StateImage::deserialize(deserializer)?;
        Ok(RestoredState(Arc::new(ServerState::from_image(img))))
    }
}

/// What applying a command did (the proposer's answer).
#[derive(Clone, Debug)]
pub enum Applied {
    /// A job register or deregister.
    Job(JobWrite),
    /// An alloc stop: the evaluation made.
    AllocStopped { eval_id: String },
    /// A garbage collection: what it removed.
    Gc(super::gc::Reaped),
    /// A client update: the alloc as it now is.
    Alloc(Box<AllocRecord>),
    /// An ACL write (`false`: a delete found nothing).
    Acl(bool),
    /// An autopilot configuration set (`false`: the check-and-set index did not match).
    Autopilot(bool),
    /// A one-time token exchanged: the ACL token it stood for.
    AclToken(Box<AclToken>),
    /// A node write: the node's modify index.
    Node(u64),
    /// A plan applied: what was placed, refused and stopped.
    Plan(super::plan::PlanResult),
    /// A node operation (drain, eligibility, evaluate, purge, migrate): what it changed.
    NodeOp(super::node_ops::NodeWrite),
    /// A snapshot's state replaced the whole state.
    Restored,
}

/// The answer to a register or deregister.
#[derive(Clone, Debug)]
pub struct JobWrite {
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
}

/// A command that changes nothing (deterministically: the replay gets the same error).
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyError {
    UnknownJob,
    UnknownAlloc,
    UnknownToken,
    UnknownNode,
    /// A draining node cannot be made eligible.
    NodeDraining,
    /// ACL bootstrap was done, at this index.
    AlreadyBootstrapped(u64),
    /// Stored policy rules that do not parse (the API checks them before).
    BadPolicy(crate::acl::policy::PolicyError),
    /// More one-time tokens outstanding than allowed.
    TooManyOneTimeTokens,
    /// A one-time token secret that is unknown, used, expired, or whose ACL token is gone.
    OneTimeTokenInvalid,
    UnknownEval,
    /// A plan for an eval that is no longer pending (done, or canceled meanwhile).
    EvalNotPending,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::UnknownJob => write!(f, "job not found"),
            ApplyError::UnknownAlloc => write!(f, "alloc not found"),
            ApplyError::UnknownToken => write!(f, "ACL token not found"),
            ApplyError::UnknownNode => write!(f, "node not found"),
            ApplyError::NodeDraining => write!(
                f,
                "can not set node's scheduling eligibility to eligible while it is draining"
            ),
            ApplyError::AlreadyBootstrapped(i) => write!(f, "ACL bootstrap already done at {i}"),
            ApplyError::BadPolicy(e) => write!(f, "policy rules do not parse: {e}"),
            ApplyError::TooManyOneTimeTokens => write!(f, "too many one-time tokens"),
            ApplyError::OneTimeTokenInvalid => write!(f, "one-time token not usable"),
            ApplyError::UnknownEval => write!(f, "eval not found"),
            ApplyError::EvalNotPending => write!(f, "eval is not pending"),
        }
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApplyError::BadPolicy(e) => Some(e),
            _ => None,
        }
    }
}

/// The server state: what every command changes. Tables are persistent maps of shared
/// (`Arc`) values, so a copy for the next batch or snapshot costs O(1), not the objects.
#[derive(Clone, Debug, Default)]
pub struct ServerState {
    /// The index of the last command applied (or of the snapshot loaded).
    pub index: u64,
    pub jobs: Table<JobKey, Job>,
    pub evals: Table<String, EvalRecord>,
    /// Keyed by the alloc's shared ID ([`AllocId`](super::alloc_index::AllocId)): the key and every
    /// derived index hold the same string.
    pub allocs: Table<super::alloc_index::AllocId, AllocRecord>,
    /// ACL tokens, policies, the bootstrap marker.
    pub acl: Arc<AclTables>,
    /// The nodes clients registered, by ID.
    pub nodes: Table<String, Node>,
    /// Derived, never stored: the IDs of each job's allocs (so a register does not walk
    /// every alloc). Kept by apply as allocs are added; [`ServerState::reindex`] rebuilds it.
    pub allocs_by_job: imbl::OrdMap<JobKey, imbl::OrdSet<super::alloc_index::AllocId>>,
    /// Derived, never stored: the IDs of each node's allocs (the scheduler's and the plan
    /// check's view of what a node runs). Kept by apply; [`ServerState::reindex`] rebuilds it.
    pub allocs_by_node:
        imbl::OrdMap<super::alloc_index::NodeKey, imbl::OrdSet<super::alloc_index::AllocId>>,
    /// Derived, never stored: the IDs of the `blocked` evals (what a capacity change wakes).
    /// Kept by [`ServerState::put_eval`]; [`ServerState::reindexed`] rebuilds it.
    pub blocked_evals: imbl::OrdSet<String>,
    /// Derived, never stored: the IDs of each job's evals (so the events of a command, a
    /// job's status and a register do not walk every eval). Kept by
    /// [`ServerState::put_eval`] and [`ServerState::remove_eval`]; rebuilt by
    /// [`ServerState::reindexed`].
    pub evals_by_job: imbl::OrdMap<JobKey, imbl::OrdSet<String>>,
    /// Derived, never stored: the `pending` evals by `(create index, ID)`, oldest first (what
    /// the scheduler takes next). Kept and rebuilt like [`ServerState::evals_by_job`].
    pub pending_evals: imbl::OrdSet<(u64, String)>,
    /// Derived, never stored: what each node's live allocs use (an entry per node with
    /// allocs), kept exact as allocs change (`state::alloc_index`). The scheduler's view and
    /// the plan check's at apply.
    pub node_usage: imbl::OrdMap<super::alloc_index::NodeKey, super::plan::Usage>,
    /// Derived, never stored: the IDs of each node's live allocs that hold ports (what the
    /// plan check's port check walks). Kept by `state::alloc_index`.
    pub ported_allocs_by_node:
        imbl::OrdMap<super::alloc_index::NodeKey, imbl::OrdSet<super::alloc_index::AllocId>>,
    /// Derived, never stored: `(AllocModifyIndex, alloc ID)` → node ID of every alloc, so
    /// "which nodes' allocs did the server change after index X" (the `tunnel-push` thread's
    /// question after every index change) walks those allocs only
    /// ([`ServerState::nodes_with_allocs_modified_after`]). Kept by `state::alloc_index`.
    pub allocs_by_modify:
        imbl::OrdMap<(u64, super::alloc_index::AllocId), super::shared_str::SharedStr>,
    /// The kept versions of each job (`state::jobs::history`), by `(namespace, id, version)`.
    pub job_versions: Table<super::jobs::history::VersionKey, super::jobs::history::JobVersion>,
    /// The last scaling events of each job's groups (`state::jobs::history`).
    pub scaling_events: Table<JobKey, super::jobs::history::ScalingEvents>,
    /// Autopilot's configuration (`None` until a leader or an operator stored one).
    pub autopilot: Option<Arc<super::autopilot::AutopilotConfig>>,
    /// Added to a Raft index to make the Nomad index of the command applied there: raised
    /// when a snapshot restored into a cluster whose Raft index is below the snapshot's, so
    /// indexes never go back below those the restored objects carry.
    pub index_offset: u64,
}

/// The serialized form of [`ServerState`] (snapshots, the determinism check).
#[derive(Serialize, Deserialize)]
struct StateImage {
    index: u64,
    jobs: Vec<Job>,
    evals: Vec<EvalRecord>,
    allocs: Vec<AllocRecord>,
    #[serde(default)]
    acl: AclTables,
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(default)]
    job_versions: Vec<super::jobs::history::JobVersion>,
    #[serde(default)]
    scaling_events: Vec<super::jobs::history::ScalingEvents>,
    #[serde(default)]
    autopilot: Option<super::autopilot::AutopilotConfig>,
    #[serde(default)]
    index_offset: u64,
}

/// The serialized form, borrowing (what a snapshot writes).
#[derive(Serialize)]
struct StateImageRef<'a> {
    index: u64,
    jobs: Vec<&'a Job>,
    evals: Vec<&'a EvalRecord>,
    allocs: Vec<&'a AllocRecord>,
    acl: &'a AclTables,
    nodes: Vec<&'a Node>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    job_versions: Vec<&'a super::jobs::history::JobVersion>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scaling_events: Vec<&'a super::jobs::history::ScalingEvents>,
    #[serde(skip_serializing_if = "Option::is_none")]
    autopilot: Option<&'a super::autopilot::AutopilotConfig>,
    #[serde(skip_serializing_if = "is_zero")]
    index_offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ServerState {
    /// The state as bytes: the same state always gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.image_ref())
    }

    /// The state back from [`ServerState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ServerState, serde_json::Error> {
        let img: StateImage = serde_json::from_slice(bytes)?;
        Ok(ServerState::from_image(img))
    }

    /// A state of these objects (the import of the old file store, a snapshot).
    pub fn from_parts(
        index: u64,
        jobs: Vec<Job>,
        evals: Vec<EvalRecord>,
        allocs: Vec<AllocRecord>,
    ) -> ServerState {
        ServerState {
            index,
            jobs: jobs
                .into_iter()
                .map(|j| ((j.namespace.clone(), j.id.clone()), Arc::new(j)))
                .collect(),
            evals: evals
                .into_iter()
                .map(|e| (e.id.clone(), Arc::new(e)))
                .collect(),
            allocs: allocs
                .into_iter()
                .map(|a| (a.id.clone(), Arc::new(a)))
                .collect(),
            acl: Arc::default(),
            nodes: Table::default(),
            allocs_by_job: imbl::OrdMap::default(),
            allocs_by_node: imbl::OrdMap::default(),
            blocked_evals: imbl::OrdSet::default(),
            evals_by_job: imbl::OrdMap::default(),
            pending_evals: imbl::OrdSet::default(),
            node_usage: imbl::OrdMap::default(),
            ported_allocs_by_node: imbl::OrdMap::default(),
            allocs_by_modify: imbl::OrdMap::default(),
            job_versions: Table::default(),
            scaling_events: Table::default(),
            autopilot: None,
            index_offset: 0,
        }
        .reindexed()
    }

    /// The serialized form, borrowing (what [`RestoredState`] writes).
    fn image_ref(&self) -> StateImageRef<'_> {
        StateImageRef {
            index: self.index,
            jobs: self.jobs.values().map(|j| &**j).collect(),
            evals: self.evals.values().map(|e| &**e).collect(),
            allocs: self.allocs.values().map(|a| &**a).collect(),
            acl: &self.acl,
            nodes: self.nodes.values().map(|n| &**n).collect(),
            job_versions: self.job_versions.values().map(|v| &**v).collect(),
            scaling_events: self.scaling_events.values().map(|v| &**v).collect(),
            autopilot: self.autopilot.as_deref(),
            index_offset: self.index_offset,
        }
    }

    /// The state of a decoded image, every derived index rebuilt (also the usage of nodes).
    fn from_image(img: StateImage) -> ServerState {
        let mut state = ServerState::from_parts(img.index, img.jobs, img.evals, img.allocs);
        let mut acl = img.acl;
        acl.parse_policies();
        state.acl = Arc::new(acl);
        state.nodes = img
            .nodes
            .into_iter()
            .map(|n| (n.id.clone(), Arc::new(n)))
            .collect();
        state.job_versions = img
            .job_versions
            .into_iter()
            .map(|v| {
                let key = (v.job.namespace.clone(), v.job.id.clone(), v.job.version);
                (key, Arc::new(v))
            })
            .collect();
        state.scaling_events = img
            .scaling_events
            .into_iter()
            .map(|e| ((e.namespace.clone(), e.job_id.clone()), Arc::new(e)))
            .collect();
        state.autopilot = img.autopilot.map(Arc::new);
        state.index_offset = img.index_offset;
        state.reindexed()
    }

    /// The state with every derived index rebuilt from its allocs and evals.
    pub fn reindexed(mut self) -> ServerState {
        self.rebuild_alloc_indexes();
        self.share_node_parts();
        self.blocked_evals = imbl::OrdSet::default();
        self.evals_by_job = imbl::OrdMap::default();
        self.pending_evals = imbl::OrdSet::default();
        let evals: Vec<Arc<EvalRecord>> = self.evals.values().cloned().collect();
        for e in &evals {
            self.index_eval(e);
        }
        self
    }

    /// Let each node only this state holds (one just loaded) take its neighbour's copies of
    /// the parts they report the same (as a register does).
    fn share_node_parts(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        let mut prev: Option<Arc<Node>> = None;
        for (id, mut n) in nodes {
            if let (Some(p), Some(m)) = (&prev, Arc::get_mut(&mut n)) {
                m.attributes.share_if_equal(&p.attributes);
                m.meta.share_if_equal(&p.meta);
                m.resources.share_if_equal(&p.resources);
                m.drivers.share_if_equal(&p.drivers);
            }
            prev = Some(n.clone());
            self.nodes.insert(id, n);
        }
    }

    /// Add a new alloc (and its entries in the derived indexes).
    pub(crate) fn insert_new_alloc(&mut self, a: AllocRecord) {
        self.put_alloc(Arc::new(a));
    }

    /// Insert or replace an eval, keeping the indexes of evals (blocked, pending, by job).
    pub(crate) fn put_eval(&mut self, e: EvalRecord) {
        if let Some(old) = self.evals.get(&e.id).cloned() {
            self.unindex_eval(&old);
        }
        let e = Arc::new(e);
        self.index_eval(&e);
        self.evals.insert(e.id.clone(), e);
    }

    /// Remove an eval and its entries in the indexes of evals.
    pub(crate) fn remove_eval(&mut self, id: &str) {
        if let Some(old) = self.evals.remove(id) {
            self.unindex_eval(&old);
        }
    }

    fn index_eval(&mut self, e: &EvalRecord) {
        match e.status {
            EvalStatus::Blocked => {
                self.blocked_evals.insert(e.id.clone());
            }
            EvalStatus::Pending => {
                self.pending_evals.insert((e.create_index, e.id.clone()));
            }
            _ => {}
        }
        self.evals_by_job
            .entry((e.namespace.clone(), e.job_id.clone()))
            .or_default()
            .insert(e.id.clone());
    }

    fn unindex_eval(&mut self, e: &EvalRecord) {
        self.blocked_evals.remove(&e.id);
        self.pending_evals.remove(&(e.create_index, e.id.clone()));
        let key = (e.namespace.clone(), e.job_id.clone());
        let emptied = match self.evals_by_job.get_mut(&key) {
            Some(ids) => {
                ids.remove(&e.id);
                ids.is_empty()
            }
            None => false,
        };
        if emptied {
            self.evals_by_job.remove(&key);
        }
    }

    /// A job's evals (through the index, not a walk over every eval).
    pub fn evals_of<'a>(&'a self, key: &JobKey) -> impl Iterator<Item = &'a Arc<EvalRecord>> + 'a {
        self.evals_by_job
            .get(key)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.evals.get(id))
    }

    /// The `pending` evals, oldest (lowest create index) first.
    pub fn pending_evals(&self) -> impl Iterator<Item = &Arc<EvalRecord>> + '_ {
        self.pending_evals
            .iter()
            .filter_map(|(_, id)| self.evals.get(id))
    }

    /// A job's allocs (through the index, not a walk over every alloc).
    pub fn allocs_of<'a>(
        &'a self,
        key: &JobKey,
    ) -> impl Iterator<Item = &'a Arc<AllocRecord>> + 'a {
        self.allocs_by_job
            .get(key)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.allocs.get(&**id))
    }

    /// A node's allocs (through the index).
    pub fn allocs_on<'a>(
        &'a self,
        node_id: &str,
    ) -> impl Iterator<Item = &'a Arc<AllocRecord>> + 'a {
        self.allocs_by_node
            .get(node_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.allocs.get(&**id))
    }
}

/// Apply one command at `index`. Deterministic: the same state and command give the same
/// state. On error the state is unchanged.
pub fn apply(state: &mut ServerState, cmd: &Command, index: u64) -> Result<Applied, ApplyError> {
    let applied = match cmd {
        Command::JobRegister {
            job,
            node,
            eval_id,
            blocked_eval_id,
            alloc_ids,
            now,
        } => Applied::Job(register(
            state,
            job,
            node,
            (eval_id, blocked_eval_id),
            alloc_ids,
            *now,
            index,
        )),
        Command::JobDeregister {
            namespace,
            job_id,
            purge,
            eval_id,
            now,
        } => {
            let key: JobKey = (namespace.clone(), job_id.clone());
            Applied::Job(deregister(state, &key, *purge, eval_id, *now, index)?)
        }
        Command::AllocStop {
            alloc_id,
            node,
            eval_id,
            replacement_id,
            now,
        } => {
            stop_alloc(state, alloc_id, node, eval_id, replacement_id, *now, index)?;
            Applied::AllocStopped {
                eval_id: eval_id.clone(),
            }
        }
        Command::AllocClientUpdate {
            alloc_id,
            tasks,
            client_status,
            collected,
            now,
        } => {
            let Some(old) = state.allocs.get(alloc_id.as_str()) else {
                return Err(ApplyError::UnknownAlloc);
            };
            let mut a = (**old).clone();
            for (name, ts) in tasks {
                a.task_states.insert(name.clone(), ts.clone());
            }
            if let Some(update) = client_status {
                a.client_status = update.status;
                a.client_description = SharedStr::common(&update.description);
            }
            a.collected |= *collected;
            a.refresh_client_status();
            a.modify_index = index;
            a.modify_time = *now;
            let before = old.clone();
            state.put_alloc(Arc::new(a.clone()));
            super::plan::alloc_updated(state, &before, &a, *now, index);
            Applied::Alloc(Box::new(a))
        }
        Command::JobSubmit {
            job, eval_id, now, ..
        } => Applied::Job(super::plan::submit(state, job, eval_id, *now, index)),
        Command::JobSetStable {
            namespace,
            job_id,
            version,
            stable,
        } => {
            let key: JobKey = (namespace.clone(), job_id.clone());
            super::jobs::history::set_stable(state, &key, *version, *stable, index)?;
            Applied::Job(JobWrite {
                eval_id: String::new(),
                eval_create_index: 0,
                job_modify_index: 0,
            })
        }
        Command::JobScale {
            namespace,
            job_id,
            group,
            count,
            job_modify_index,
            eval_id,
            event,
            now,
        } => {
            let key: JobKey = (namespace.clone(), job_id.clone());
            Applied::Job(super::jobs::history::scale(
                state,
                &key,
                (group, *count),
                (*job_modify_index, eval_id),
                event,
                *now,
                index,
            )?)
        }
        Command::JobEvaluate {
            namespace,
            job_id,
            force_reschedule,
            eval_id,
            now,
        } => {
            let key: JobKey = (namespace.clone(), job_id.clone());
            Applied::Job(super::jobs::history::evaluate(
                state,
                &key,
                *force_reschedule,
                eval_id,
                *now,
                index,
            )?)
        }
        Command::JobStop {
            namespace,
            job_id,
            purge,
            eval_id,
            now,
        } => {
            let key: JobKey = (namespace.clone(), job_id.clone());
            Applied::Job(super::plan::stop_job(
                state, &key, *purge, eval_id, *now, index,
            )?)
        }
        Command::AllocStopQueued {
            alloc_id,
            eval_id,
            now,
        } => {
            super::plan::stop_alloc_by_user(state, alloc_id, eval_id, *now, index)?;
            Applied::AllocStopped {
                eval_id: eval_id.clone(),
            }
        }
        Command::PlanApply { plan } => super::plan::apply_plan(state, plan, index)?,
        Command::AclBootstrap { .. }
        | Command::AclTokenUpsert { .. }
        | Command::AclTokenDelete { .. }
        | Command::AclPolicyUpsert { .. }
        | Command::AclPolicyDelete { .. }
        | Command::AclOneTimeTokenCreate { .. }
        | Command::AclOneTimeTokenExchange { .. } => {
            // On a copy: a failing command leaves the tables as they were.
            let mut acl = (*state.acl).clone();
            let applied = apply_acl(&mut acl, cmd)?;
            state.acl = Arc::new(acl);
            applied
        }
        Command::NodeRegister { .. }
        | Command::NodeUpdateMeta { .. }
        | Command::NodeUpdateStatus { .. }
        | Command::NodeUpdateEligibility { .. }
        | Command::NodeEvents { .. } => apply_node(state, cmd, index)?,
        Command::NodeUpdateDrain {
            node_id,
            update,
            event,
            evals,
            now,
        } => super::node_ops::update_drain(state, node_id, update, (event, evals), *now, index)?,
        Command::NodeDrainComplete {
            node_id,
            event,
            now,
        } => super::node_ops::drain_complete(state, node_id, event, *now, index)?,
        Command::NodeSetEligibility {
            node_id,
            eligibility,
            event,
            evals,
            now,
        } => super::node_ops::set_eligibility(
            state,
            node_id,
            *eligibility,
            (event, evals),
            *now,
            index,
        )?,
        Command::NodeEvaluate {
            node_id,
            evals,
            now,
        } => super::node_ops::evaluate(state, node_id, evals, *now, index)?,
        Command::NodeDeregister {
            node_id,
            evals,
            now,
        } => super::node_ops::deregister(state, node_id, evals, *now, index)?,
        Command::AllocMigrate {
            alloc_ids,
            evals,
            stop,
            now,
        } => super::node_ops::migrate(state, alloc_ids, evals, *stop, *now, index)?,
        Command::JobLaunch {
            job,
            eval_id,
            triggered_by,
            now,
        } => super::jobs::launch::apply_launch(state, job, eval_id, triggered_by, *now, index)?,
        Command::GcReap { reap } => Applied::Gc(super::gc::reap(state, reap)),
        Command::RestoreSnapshot { state: restored } => {
            // A replacement: nothing of the state before survives (the derived indexes came
            // with the decoded image). Deterministic: the command carries the whole state.
            // The index never goes below the snapshot's: a fresh cluster (a low Raft index)
            // moves every later index up by the difference (`index_offset`).
            let offset = state.index_offset;
            *state = (*restored.0).clone();
            let at = index.max(restored.0.index.saturating_add(1));
            state.index_offset = offset.saturating_add(at - index);
            state.index = at;
            Applied::Restored
        }
        Command::AutopilotSetConfig { config, cas } => Applied::Autopilot(super::autopilot::set(
            &mut state.autopilot,
            config,
            *cas,
            index,
        )),
    };
    super::plan::after_node_op(state, cmd, index);
    super::jobs::history::after_apply(state, cmd, index);
    state.index = state.index.max(index);
    #[cfg(test)]
    if state.allocs.len() <= CHECKED_ALLOCS {
        state.assert_alloc_indexes();
    }
    Ok(applied)
}

/// Unit tests check the derived alloc indexes against a full scan after every command
/// applied to a state of at most this many allocs (larger ones would make them slow).
#[cfg(test)]
const CHECKED_ALLOCS: usize = 400;

/// The ACL commands.
fn apply_acl(t: &mut AclTables, cmd: &Command) -> Result<Applied, ApplyError> {
    match cmd {
        Command::AclBootstrap { token, index } => {
            if let Some(i) = t.bootstrap_index {
                return Err(ApplyError::AlreadyBootstrapped(i));
            }
            t.bootstrap_index = Some(*index);
            t.tokens.push((**token).clone());
            Ok(Applied::Acl(true))
        }
        Command::AclTokenUpsert { token, must_exist } => {
            match t
                .tokens
                .iter_mut()
                .find(|x| x.accessor_id == token.accessor_id)
            {
                Some(slot) => *slot = (**token).clone(),
                None if *must_exist => return Err(ApplyError::UnknownToken),
                None => t.tokens.push((**token).clone()),
            }
            Ok(Applied::Acl(true))
        }
        Command::AclTokenDelete { accessor } => {
            let before = t.tokens.len();
            t.tokens.retain(|x| &x.accessor_id != accessor);
            if t.tokens.len() == before {
                return Err(ApplyError::UnknownToken);
            }
            // A deleted token's one-time tokens go with it.
            t.one_time_tokens.retain(|o| &o.accessor_id != accessor);
            Ok(Applied::Acl(true))
        }
        Command::AclPolicyUpsert { policy } => {
            let mut policy = (**policy).clone();
            let parsed = crate::acl::policy::parse(&policy.rules).map_err(ApplyError::BadPolicy)?;
            policy.parsed = Arc::new(parsed);
            if let Some(old) = t.policies.get(&policy.name) {
                policy.create_index = old.create_index;
            }
            policy.rehash();
            t.policies.insert(policy.name.clone(), policy);
            Ok(Applied::Acl(true))
        }
        Command::AclPolicyDelete { name } => Ok(Applied::Acl(t.policies.remove(name).is_some())),
        Command::AclOneTimeTokenCreate { token, now, max } => {
            t.one_time_tokens.retain(|o| !o.is_expired_at(*now));
            if t.one_time_tokens.len() >= *max {
                return Err(ApplyError::TooManyOneTimeTokens);
            }
            t.one_time_tokens.push((**token).clone());
            Ok(Applied::Acl(true))
        }
        Command::AclOneTimeTokenExchange { secret, now } => {
            // Every entry is compared, so the time taken says nothing about the secret.
            let mut found = None;
            for (i, o) in t.one_time_tokens.iter().enumerate() {
                if crate::encoding::constant_time_eq(o.secret_id.as_bytes(), secret.as_bytes()) {
                    found = Some(i);
                }
            }
            let ott = match found {
                Some(i) if !t.one_time_tokens[i].is_expired_at(*now) => t.one_time_tokens.remove(i),
                _ => return Err(ApplyError::OneTimeTokenInvalid),
            };
            t.one_time_tokens.retain(|o| !o.is_expired_at(*now));
            let token = t
                .tokens
                .iter()
                .find(|x| x.accessor_id == ott.accessor_id && !x.is_expired_at(*now))
                .cloned()
                .ok_or(ApplyError::OneTimeTokenInvalid)?;
            Ok(Applied::AclToken(Box::new(token)))
        }
        _ => Ok(Applied::Acl(false)),
    }
}

/// The node commands. Every check comes before the first change.
fn apply_node(state: &mut ServerState, cmd: &Command, index: u64) -> Result<Applied, ApplyError> {
    let known = |state: &ServerState, id: &str| -> Result<Node, ApplyError> {
        state
            .nodes
            .get(id)
            .map(|n| (**n).clone())
            .ok_or(ApplyError::UnknownNode)
    };
    fn push_events(n: &mut Node, events: impl IntoIterator<Item = NodeEvent>, index: u64) {
        for mut e in events {
            e.create_index = index;
            n.events.push(e);
        }
        let extra = n.events.len().saturating_sub(MAX_NODE_EVENTS);
        n.events.drain(..extra);
    }
    let node = match cmd {
        Command::NodeRegister { node, now } => {
            let mut n = (**node).clone();
            match state.nodes.get(&n.id) {
                Some(old) => {
                    // A client registers again with what it registered before: keep one copy.
                    n.attributes.share_if_equal(&old.attributes);
                    n.meta.share_if_equal(&old.meta);
                    n.resources.share_if_equal(&old.resources);
                    n.drivers.share_if_equal(&old.drivers);
                    n.create_index = old.create_index;
                    n.events = old.events.clone();
                    n.scheduling_eligibility = old.scheduling_eligibility;
                    n.drain = old.drain;
                    n.drain_strategy = old.drain_strategy.clone();
                    n.last_drain = old.last_drain.clone();
                    if old.status != n.status {
                        n.status_updated_at = now / 1_000_000_000;
                    } else {
                        n.status_updated_at = old.status_updated_at;
                    }
                }
                None => {
                    // Nodes of one fleet mostly report the same drivers, resources and meta:
                    // take the neighbours' copies of what is equal (one copy, not one each).
                    let near = [state.nodes.get_prev(&n.id), state.nodes.get_next(&n.id)];
                    for (_, other) in near.into_iter().flatten() {
                        n.attributes.share_if_equal(&other.attributes);
                        n.meta.share_if_equal(&other.meta);
                        n.resources.share_if_equal(&other.resources);
                        n.drivers.share_if_equal(&other.drivers);
                    }
                    n.create_index = index;
                    n.status_updated_at = now / 1_000_000_000;
                    n.events = Vec::new();
                    let registered = NodeEvent {
                        message: "Node registered".into(),
                        subsystem: "Cluster".into(),
                        details: None,
                        timestamp: *now,
                        create_index: 0,
                    };
                    push_events(&mut n, [registered], 0);
                }
            }
            n
        }
        Command::NodeUpdateMeta { node_id, meta } => {
            let mut n = known(state, node_id)?;
            n.meta = meta.clone().into();
            n
        }
        Command::NodeUpdateStatus {
            node_id,
            status,
            description,
            event,
            now,
        } => {
            let mut n = known(state, node_id)?;
            if n.status != *status {
                n.status_updated_at = now / 1_000_000_000;
            }
            n.status = *status;
            n.status_description = description.clone();
            push_events(&mut n, event.clone(), index);
            n
        }
        Command::NodeUpdateEligibility {
            node_id,
            eligibility,
            event,
        } => {
            let mut n = known(state, node_id)?;
            n.scheduling_eligibility = *eligibility;
            push_events(&mut n, event.clone(), index);
            n
        }
        Command::NodeEvents { events } => {
            // Every node must exist before any changes.
            let mut changed: BTreeMap<String, Node> = BTreeMap::new();
            for (id, e) in events {
                if !changed.contains_key(id) {
                    changed.insert(id.clone(), known(state, id)?);
                }
                if let Some(n) = changed.get_mut(id) {
                    push_events(n, [e.clone()], index);
                }
            }
            for (id, mut n) in changed {
                n.modify_index = index;
                state.nodes.insert(id, Arc::new(n));
            }
            return Ok(Applied::Node(index));
        }
        _ => return Ok(Applied::Node(0)),
    };
    let mut node = node;
    node.modify_index = index;
    let before = state.nodes.get(&node.id).cloned();
    let id = node.id.clone();
    state.nodes.insert(id.clone(), Arc::new(node.clone()));
    node_consequences(state, cmd, before.as_deref(), &node, index);
    Ok(Applied::Node(index))
}

/// What a node write means for the scheduler (`state::plan`): status changes make allocs
/// lost or unknown and queue `node-update` evals; a node that can take work now (new and
/// ready, changed, eligible again, new metadata) queues evals for system jobs and wakes
/// blocked evals.
fn node_consequences(
    state: &mut ServerState,
    cmd: &Command,
    before: Option<&Node>,
    node: &Node,
    index: u64,
) {
    use super::plan::{node_changed, node_status_changed};
    let now = match cmd {
        Command::NodeRegister { now, .. } | Command::NodeUpdateStatus { now, .. } => *now,
        // These commands carry no time: the node's own last status change stands in.
        _ => node.status_updated_at.saturating_mul(1_000_000_000),
    };
    let Some(old) = before else {
        node_changed(state, &node.id, now, index);
        return;
    };
    if old.status != node.status {
        node_status_changed(state, &node.id, old.status, node.status, now, index);
        return;
    }
    let placement_facts_changed = old.datacenter != node.datacenter
        || old.name != node.name
        || old.node_class != node.node_class
        || old.node_pool != node.node_pool
        || old.attributes != node.attributes
        || old.meta != node.meta
        || old.drivers != node.drivers
        || old.resources != node.resources
        || old.scheduling_eligibility != node.scheduling_eligibility
        || old.drain != node.drain;
    if placement_facts_changed {
        node_changed(state, &node.id, now, index);
    }
}

/// Stop every running alloc of a job.
fn stop_allocs_of(state: &mut ServerState, key: &JobKey, desc: &str, now: i64, index: u64) {
    let running: Vec<String> = state
        .allocs_of(key)
        .filter(|a| {
            a.namespace == key.0 && a.job_id == key.1 && a.desired_status == AllocDesiredStatus::Run
        })
        .map(|a| a.id.to_string())
        .collect();
    for id in running {
        state.update_alloc(&id, |a| {
            a.desired_status = AllocDesiredStatus::Stop;
            a.desired_description = SharedStr::common(desc);
            a.modify_index = index;
            a.alloc_modify_index = index;
            a.modify_time = now;
        });
    }
}

/// Cancel the job's blocked evaluations (a new evaluation supersedes them, as in Nomad).
/// `true` when there was one: its placements are still owed.
pub(crate) fn cancel_blocked_evals(
    state: &mut ServerState,
    key: &JobKey,
    by: &str,
    now: i64,
    index: u64,
) -> bool {
    let blocked: Vec<String> = state
        .blocked_evals
        .iter()
        .filter_map(|id| state.evals.get(id))
        .filter(|e| e.namespace == key.0 && e.job_id == key.1 && e.status == EvalStatus::Blocked)
        .map(|e| e.id.clone())
        .collect();
    for id in &blocked {
        if let Some(e) = state.evals.get(id) {
            let mut e = (**e).clone();
            e.status = EvalStatus::Canceled;
            e.status_description = format!("evaluation {by:?} supersedes it");
            e.modify_index = index;
            e.modify_time = now;
            state.put_eval(e);
        }
    }
    !blocked.is_empty()
}

/// Store `job` as submitted: a new version (indexes, submit time, `pending` status) when its
/// spec changed, else the stored one unchanged. Returns its key, the job as now stored, and
/// whether it changed.
pub(crate) fn store_job_version(
    state: &mut ServerState,
    job: &Job,
    now: i64,
    index: u64,
) -> (JobKey, Job, bool) {
    let key: JobKey = (job.namespace.clone(), job.id.clone());
    let existing = state.jobs.get(&key).cloned();
    let changed = existing
        .as_ref()
        .map(|e| e.spec_changed(job))
        .unwrap_or(true);
    let job = if changed {
        let mut job = job.clone();
        job.version = existing.as_ref().map(|e| e.version + 1).unwrap_or(0);
        job.create_index = existing.as_ref().map(|e| e.create_index).unwrap_or(index);
        job.modify_index = index;
        job.job_modify_index = index;
        job.submit_time = now;
        job.status = JobStatus::Pending.as_str().into();
        state.jobs.insert(key.clone(), Arc::new(job.clone()));
        job
    } else {
        existing
            .map(|e| (*e).clone())
            .unwrap_or_else(|| job.clone())
    };
    (key, job, changed)
}

fn register(
    state: &mut ServerState,
    job: &Job,
    node: &NodeInfo,
    (eval_id, blocked_eval_id): (&str, &str),
    alloc_ids: &[String],
    now: i64,
    index: u64,
) -> JobWrite {
    let (key, job, changed) = store_job_version(state, job, now, index);
    let mut eval = EvalRecord::new_at(&job, "job-register", index, eval_id, now);
    // An unchanged job whose placement failed before is placed again now.
    let owed = cancel_blocked_evals(state, &key, eval_id, now, index);
    if changed {
        stop_allocs_of(
            state,
            &key,
            "alloc not needed due to job update",
            now,
            index,
        );
    }
    if (changed || owed) && !job.stop {
        match &node.unplaceable {
            Some(why) if !blocked_eval_id.is_empty() => {
                eval.fail_placements(&job, why, blocked_eval_id);
                let blocked = EvalRecord::blocked_after(&eval, &job, blocked_eval_id);
                state.put_eval(blocked);
            }
            _ => {
                let mut ids = alloc_ids.iter();
                let shared = Arc::new(job.clone());
                for tg in job.task_groups.iter() {
                    for i in 0..tg.count().max(0) as u32 {
                        // The proposer chose one ID per placement; none left means none placed.
                        let Some(id) = ids.next() else { break };
                        let at = AllocStamp { index, id, now };
                        let a = AllocRecord::new_at(&shared, &tg.name, i, eval_id, node, at);
                        state.insert_new_alloc(a);
                    }
                }
            }
        }
    }
    state.put_eval(eval);
    JobWrite {
        eval_id: eval_id.to_string(),
        eval_create_index: index,
        job_modify_index: job.job_modify_index,
    }
}

fn deregister(
    state: &mut ServerState,
    key: &JobKey,
    purge: bool,
    eval_id: &str,
    now: i64,
    index: u64,
) -> Result<JobWrite, ApplyError> {
    let Some(job) = state.jobs.get(key) else {
        return Err(ApplyError::UnknownJob);
    };
    let mut job = (**job).clone();
    if purge {
        state.jobs.remove(key);
    } else {
        job.stop = true;
        job.modify_index = index;
        job.job_modify_index = index;
        job.version += 1;
        state.jobs.insert(key.clone(), Arc::new(job.clone()));
    }
    cancel_blocked_evals(state, key, eval_id, now, index);
    let eval = EvalRecord::new_at(&job, "job-deregister", index, eval_id, now);
    state.put_eval(eval);
    stop_allocs_of(
        state,
        key,
        "alloc not needed since job is stopped",
        now,
        index,
    );
    Ok(JobWrite {
        eval_id: eval_id.to_string(),
        eval_create_index: index,
        job_modify_index: index,
    })
}

fn stop_alloc(
    state: &mut ServerState,
    alloc_id: &str,
    node: &NodeInfo,
    eval_id: &str,
    replacement_id: &str,
    now: i64,
    index: u64,
) -> Result<(), ApplyError> {
    let Some(old) = state.allocs.get(alloc_id).cloned() else {
        return Err(ApplyError::UnknownAlloc);
    };
    let key: JobKey = (old.namespace.to_string(), old.job_id.to_string());
    let current = state.jobs.get(&key).cloned();
    let eval_job = current.as_deref().unwrap_or(&old.job);
    let eval = EvalRecord::new_at(eval_job, "alloc-stop", index, eval_id, now);
    state.put_eval(eval);
    if old.desired_status == AllocDesiredStatus::Run {
        let replace = current
            .as_ref()
            .filter(|j| !j.stop && j.version == old.job.version && !old.terminal())
            .map(|j| {
                let at = AllocStamp {
                    index,
                    id: replacement_id,
                    now,
                };
                AllocRecord::new_at(j, &old.task_group, old.alloc_index, eval_id, node, at)
            });
        let mut a = (*old).clone();
        a.desired_status = AllocDesiredStatus::Stop;
        a.desired_description = SharedStr::common("alloc was stopped by the user");
        a.modify_index = index;
        a.alloc_modify_index = index;
        a.modify_time = now;
        if let Some(r) = &replace {
            a.next_allocation = r.id.clone();
        }
        state.put_alloc(Arc::new(a));
        if let Some(mut r) = replace {
            r.previous_allocation = old.id.clone();
            state.insert_new_alloc(r);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, count: i64) -> Job {
        let mut j = Job::from_json(serde_json::json!({"ID": id, "TaskGroups": [{"Name": "g",
            "Count": count, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        j.canonicalize("global");
        j
    }

    fn commands() -> Vec<Command> {
        let node = NodeInfo {
            id: "n1".into(),
            name: "node".into(),
            unplaceable: None,
        };
        let mut ts = TaskState::pending();
        ts.state = crate::state::status::TaskStatus::Running;
        vec![
            Command::JobRegister {
                job: Box::new(job("a", 2)),
                node: node.clone(),
                eval_id: "e1".into(),
                blocked_eval_id: String::new(),
                alloc_ids: vec!["a1".into(), "a2".into()],
                now: 100,
            },
            Command::AllocClientUpdate {
                alloc_id: "a1".into(),
                tasks: [("t".to_string(), ts)].into_iter().collect(),
                client_status: None,
                collected: false,
                now: 101,
            },
            Command::AllocStop {
                alloc_id: "a1".into(),
                node: node.clone(),
                eval_id: "e2".into(),
                replacement_id: "a3".into(),
                now: 102,
            },
            Command::JobRegister {
                job: Box::new(job("a", 1)),
                node,
                eval_id: "e3".into(),
                blocked_eval_id: String::new(),
                alloc_ids: vec!["a4".into()],
                now: 103,
            },
            Command::JobDeregister {
                namespace: "default".into(),
                job_id: "nope".into(),
                purge: false,
                eval_id: "e4".into(),
                now: 104,
            },
            Command::JobDeregister {
                namespace: "default".into(),
                job_id: "a".into(),
                purge: true,
                eval_id: "e5".into(),
                now: 105,
            },
        ]
    }

    fn run(cmds: &[Command]) -> (ServerState, Vec<bool>) {
        let mut s = ServerState::default();
        let oks = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| apply(&mut s, c, 10 + i as u64).is_ok())
            .collect();
        (s, oks)
    }

    /// A job stored again with a new status (its allocs started) shares its task groups
    /// with the version kept at register: one copy of the spec per version, not per status.
    #[test]
    fn a_status_change_shares_the_task_groups_of_the_kept_version() {
        let (s, oks) = run(&commands()[..2]);
        assert!(oks.iter().all(|ok| *ok));
        let key = ("default".to_string(), "a".to_string());
        let current = s.jobs.get(&key).expect("job a");
        assert_eq!(
            current.status, "running",
            "the status changed after register"
        );
        let kept = s
            .job_versions
            .get(&("default".to_string(), "a".to_string(), current.version))
            .expect("version kept");
        assert!(!Arc::ptr_eq(current, &kept.job), "the job was stored again");
        assert!(Arc::ptr_eq(&current.task_groups, &kept.job.task_groups));
    }

    #[test]
    fn an_unplaceable_register_blocks_and_a_later_one_places_and_cancels_the_block() {
        let register =
            |eval: &str, blocked: &str, unplaceable: bool, alloc: &str| Command::JobRegister {
                job: Box::new(job("a", 1)),
                node: NodeInfo {
                    id: "n1".into(),
                    name: "node".into(),
                    unplaceable: unplaceable.then(|| {
                        Box::new(crate::state::jobs::Unplaceable {
                            driver: "raw_exec".into(),
                            reason: "enable it".into(),
                            datacenter: "dc1".into(),
                        })
                    }),
                },
                eval_id: eval.into(),
                blocked_eval_id: blocked.into(),
                alloc_ids: vec![alloc.into()],
                now: 100,
            };
        let cmds = [
            register("e1", "b1", true, "a1"),
            register("e2", "b2", false, "a2"),
        ];
        let (s, oks) = run(&cmds[..1]);
        assert_eq!(oks, [true]);
        assert!(s.allocs.is_empty());
        let e1 = &s.evals["e1"];
        assert_eq!(e1.blocked_eval, "b1");
        assert_eq!(e1.queued_allocations["g"], 1);
        assert_eq!(
            e1.failed_tg_allocs["g"]["ConstraintFiltered"]["missing drivers"],
            1
        );
        assert!(e1.status_description.contains("enable it"));
        assert_eq!(s.evals["b1"].status, EvalStatus::Blocked);
        assert_eq!(s.evals["b1"].previous_eval, "e1");

        // The same (unchanged) job registered on a node that can run it: placed now.
        let (s, _) = run(&cmds);
        assert!(s.allocs.contains_key("a2"));
        assert_eq!(s.evals["b1"].status, EvalStatus::Canceled);
        assert!(!s.evals.contains_key("b2"));
        // Deterministic, also through JSON.
        let again: Vec<Command> = cmds
            .iter()
            .map(|c| serde_json::from_slice(&serde_json::to_vec(c).unwrap()).unwrap())
            .collect();
        assert_eq!(s.to_bytes().unwrap(), run(&again).0.to_bytes().unwrap());
    }

    #[test]
    fn the_same_commands_give_byte_identical_state_also_after_a_trip_through_json() {
        let cmds = commands();
        let (a, oks) = run(&cmds);
        assert_eq!(oks, vec![true, true, true, true, false, true]);
        let wire: Vec<Command> = cmds
            .iter()
            .map(|c| serde_json::from_slice(&serde_json::to_vec(c).unwrap()).unwrap())
            .collect();
        let bytes_of = |c: &[Command]| serde_json::to_vec(c).unwrap();
        assert_eq!(bytes_of(&wire), bytes_of(&cmds));
        let (b, _) = run(&wire);
        let bytes = a.to_bytes().unwrap();
        assert_eq!(bytes, b.to_bytes().unwrap());
        let back = ServerState::from_bytes(&bytes).unwrap();
        assert_eq!(
            back.to_bytes().unwrap(),
            bytes,
            "a snapshot loads to the same state"
        );
        // What the commands did: a1 replaced by a3 (same version), then the new version's
        // a4 replaced a2 and a3, the purge removed the job and stopped a4.
        assert!(a.jobs.is_empty());
        assert_eq!(a.allocs["a1"].next_allocation, "a3");
        assert_eq!(a.allocs["a3"].previous_allocation, "a1");
        assert!(a
            .allocs
            .values()
            .all(|x| x.desired_status == AllocDesiredStatus::Stop));
        assert_eq!(
            a.allocs["a1"].task_states["t"].state,
            crate::state::status::TaskStatus::Running
        );
        assert_eq!(a.evals.len(), 4, "the failed deregister made no eval");
        assert_eq!(a.index, 15);
    }

    #[test]
    fn a_failing_command_leaves_the_state_as_it_was() {
        let (mut s, _) = run(&commands()[..2]);
        let before = s.to_bytes().unwrap();
        let bad = Command::AllocStop {
            alloc_id: "missing".into(),
            node: NodeInfo {
                id: "n".into(),
                name: "n".into(),
                unplaceable: None,
            },
            eval_id: "e9".into(),
            replacement_id: "a9".into(),
            now: 1,
        };
        assert_eq!(
            apply(&mut s, &bad, 99).unwrap_err(),
            ApplyError::UnknownAlloc
        );
        assert_eq!(s.to_bytes().unwrap(), before);
    }
}

#[cfg(test)]
mod acl_tests {
    use super::*;

    #[test]
    fn acl_commands_apply_and_survive_a_snapshot() {
        let mut s = ServerState::default();
        let mut token = AclToken::new("b".into(), "management".into(), None, true, 5);
        token.expiration = Some(1);
        let boot = Command::AclBootstrap {
            token: Box::new(token.clone()),
            index: 5,
        };
        apply(&mut s, &boot, 6).unwrap();
        assert_eq!(
            apply(&mut s, &boot, 7).unwrap_err(),
            ApplyError::AlreadyBootstrapped(5)
        );
        let bytes = s.to_bytes().unwrap();
        let back = ServerState::from_bytes(&bytes).unwrap();
        assert_eq!(
            back.acl.tokens.len(),
            1,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(back.acl.tokens[0].secret_id, token.secret_id);
        assert_eq!(back.acl.tokens[0].expiration, Some(1));
        assert_eq!(back.acl.bootstrap_index, Some(5));
    }
}

#[cfg(test)]
mod typed_status_tests {
    use super::*;
    use crate::state::status::{AllocClientStatus, EvalStatus, JobType, TaskStatus};

    /// A client update as the log held it when statuses were strings.
    const OLD_CLIENT_UPDATE: &str = r#"{"AllocClientUpdate":{"alloc_id":"a1","tasks":{"t":{"State":"dead","Failed":true,"Restarts":2,"LastRestart":null,"StartedAt":"2026-01-01T00:00:00Z","FinishedAt":null,"Events":[],"Paused":""}},"client_status":["failed","Failed tasks"],"collected":false,"now":7}}"#;

    #[test]
    fn a_command_logged_with_string_statuses_loads_typed_and_writes_the_same_bytes() {
        let cmd: Command = serde_json::from_str(OLD_CLIENT_UPDATE).unwrap();
        let Command::AllocClientUpdate {
            tasks,
            client_status,
            ..
        } = &cmd
        else {
            panic!("wrong command: {cmd:?}");
        };
        assert_eq!(tasks["t"].state, TaskStatus::Dead);
        assert_eq!(
            client_status,
            &Some(ClientStatusUpdate {
                status: AllocClientStatus::Failed,
                description: "Failed tasks".to_string()
            })
        );
        assert_eq!(serde_json::to_string(&cmd).unwrap(), OLD_CLIENT_UPDATE);
    }

    #[test]
    fn a_snapshot_keeps_the_status_words_and_loads_them_back() {
        let mut s = ServerState::default();
        let node = NodeInfo {
            id: "n1".into(),
            name: "node".into(),
            unplaceable: None,
        };
        let mut job = Job::from_json(serde_json::json!({"ID": "b", "Type": "batch",
            "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        job.canonicalize("global");
        let reg = Command::JobRegister {
            job: Box::new(job),
            node,
            eval_id: "e1".into(),
            blocked_eval_id: String::new(),
            alloc_ids: vec!["a1".into()],
            now: 1,
        };
        apply(&mut s, &reg, 5).unwrap();
        let bytes = s.to_bytes().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for word in [
            r#""desired_status":"run""#,
            r#""client_status":"pending""#,
            r#""eval_type":"batch""#,
            r#""status":"complete""#,
            r#""Status":"pending""#,
        ] {
            assert!(text.contains(word), "{word} missing in {text}");
        }
        let back = ServerState::from_bytes(&bytes).unwrap();
        assert_eq!(back.evals["e1"].status, EvalStatus::Complete);
        assert_eq!(back.evals["e1"].eval_type, JobType::Batch);
        assert_eq!(back.allocs["a1"].desired_status, AllocDesiredStatus::Run);
        assert_eq!(back.to_bytes().unwrap(), bytes);
    }
}

#[cfg(test)]
mod node_tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            name: "n".into(),
            datacenter: "dc1".into(),
            http_addr: "127.0.0.1:4646".into(),
            tls_enabled: false,
            node_pool: "default".into(),
            node_class: String::new(),
            version: "0".into(),
            attributes: BTreeMap::new().into(),
            meta: BTreeMap::new().into(),
            resources: serde_json::Value::Null.into(),
            drivers: serde_json::json!({}).into(),
            status: NodeStatus::Ready,
            status_description: String::new(),
            status_updated_at: 0,
            scheduling_eligibility: NodeEligibility::Eligible,
            drain: false,
            drain_strategy: None,
            last_drain: None,
            events: Vec::new(),
            create_index: 0,
            modify_index: 0,
            secret_id: String::new(),
        }
    }

    fn event(msg: &str, at: i64) -> NodeEvent {
        NodeEvent {
            message: msg.into(),
            subsystem: "Cluster".into(),
            details: None,
            timestamp: at,
            create_index: 0,
        }
    }

    /// Node commands and a node row as the log and snapshots held them when node status and
    /// eligibility were strings.
    const OLD_NODE_STATUS: &str = r#"{"NodeUpdateStatus":{"node_id":"n1","status":"down","description":"missed heartbeats","event":null,"now":7}}"#;
    const OLD_NODE_ELIGIBILITY: &str =
        r#"{"NodeUpdateEligibility":{"node_id":"n1","eligibility":"ineligible","event":null}}"#;

    #[test]
    fn node_commands_and_rows_logged_with_string_states_load_typed_and_write_the_same_bytes() {
        let cmd: Command = serde_json::from_str(OLD_NODE_STATUS).unwrap();
        let Command::NodeUpdateStatus { status, .. } = &cmd else {
            panic!("wrong command: {cmd:?}");
        };
        assert_eq!(*status, NodeStatus::Down);
        assert_eq!(serde_json::to_string(&cmd).unwrap(), OLD_NODE_STATUS);
        let cmd: Command = serde_json::from_str(OLD_NODE_ELIGIBILITY).unwrap();
        let Command::NodeUpdateEligibility { eligibility, .. } = &cmd else {
            panic!("wrong command: {cmd:?}");
        };
        assert_eq!(*eligibility, NodeEligibility::Ineligible);
        assert_eq!(serde_json::to_string(&cmd).unwrap(), OLD_NODE_ELIGIBILITY);

        // A snapshot's node row (and a NodeRegister's node) with the words as strings.
        let mut row = serde_json::to_value(node("n1")).unwrap();
        row["status"] = serde_json::json!("initializing");
        row["scheduling_eligibility"] = serde_json::json!("ineligible");
        let text = serde_json::to_string(&row).unwrap();
        let n: Node = serde_json::from_str(&text).unwrap();
        assert_eq!(n.status, NodeStatus::Initializing);
        assert_eq!(n.scheduling_eligibility, NodeEligibility::Ineligible);
        assert_eq!(serde_json::to_string(&n).unwrap(), text);
        row["status"] = serde_json::json!("bogus");
        assert!(serde_json::from_value::<Node>(row).is_err());
    }

    #[test]
    fn node_commands_apply_deterministically_and_keep_what_the_server_owns() {
        let cmds = vec![
            Command::NodeRegister {
                node: Box::new(node("n1")),
                now: 5_000_000_000,
            },
            Command::NodeUpdateEligibility {
                node_id: "n1".into(),
                eligibility: NodeEligibility::Ineligible,
                event: Some(event("Node marked as ineligible", 6)),
            },
            Command::NodeUpdateMeta {
                node_id: "n1".into(),
                meta: [("rack".to_string(), "r1".to_string())].into(),
            },
            Command::NodeEvents {
                events: (0..12).map(|i| ("n1".to_string(), event("e", i))).collect(),
            },
            // The client registers again after a restart: indexes, events and the
            // eligibility the server set are kept.
            Command::NodeRegister {
                node: Box::new(node("n1")),
                now: 9_000_000_000,
            },
            Command::NodeUpdateMeta {
                node_id: "nope".into(),
                meta: BTreeMap::new(),
            },
            Command::NodeEvents {
                events: vec![("n1".into(), event("x", 1)), ("nope".into(), event("y", 1))],
            },
        ];
        let run = |cmds: &[Command]| {
            let mut s = ServerState::default();
            let oks: Vec<bool> = cmds
                .iter()
                .enumerate()
                .map(|(i, c)| apply(&mut s, c, 10 + i as u64).is_ok())
                .collect();
            (s, oks)
        };
        let (a, oks) = run(&cmds);
        assert_eq!(oks, vec![true, true, true, true, true, false, false]);
        let wire: Vec<Command> =
            serde_json::from_slice(&serde_json::to_vec(&cmds).unwrap()).unwrap();
        let (b, _) = run(&wire);
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        let back = ServerState::from_bytes(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(back.to_bytes().unwrap(), a.to_bytes().unwrap());
        let n = &a.nodes["n1"];
        assert_eq!(n.create_index, 10);
        assert_eq!(n.modify_index, 14);
        assert_eq!(n.scheduling_eligibility, NodeEligibility::Ineligible);
        assert_eq!(n.status_updated_at, 5);
        assert_eq!(n.events.len(), MAX_NODE_EVENTS);
        assert_eq!(n.events.last().unwrap().timestamp, 11);
        assert!(
            n.meta.is_empty(),
            "a register carries the client's metadata"
        );
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn the_allocs_by_job_index_apply_keeps_equals_the_one_rebuilt_from_the_allocs() {
        let mut s = ServerState::default();
        let node = NodeInfo {
            id: "n1".into(),
            name: "node".into(),
            unplaceable: None,
        };
        let mut job = |id: &str, count: i64, n: u64| {
            let mut j = Job::from_json(serde_json::json!({"ID": id, "TaskGroups": [{"Name": "g",
                "Count": count, "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/true"}}]}]}))
            .unwrap();
            j.canonicalize("global");
            let cmd = Command::JobRegister {
                job: Box::new(j),
                node: node.clone(),
                eval_id: format!("e{n}"),
                blocked_eval_id: String::new(),
                alloc_ids: (0..count).map(|i| format!("{id}-{n}-{i}")).collect(),
                now: n as i64,
            };
            apply(&mut s, &cmd, n).unwrap();
        };
        job("a", 2, 1);
        job("b", 3, 2);
        job("a", 1, 3);
        let rebuilt = s.clone().reindexed();
        assert_eq!(s.allocs_by_job, rebuilt.allocs_by_job);
        let a_key = ("default".to_string(), "a".to_string());
        assert_eq!(s.allocs_by_job[&a_key].len(), 3);
        let running = s
            .allocs_of(&a_key)
            .filter(|a| a.desired_status == AllocDesiredStatus::Run)
            .count();
        assert_eq!(
            running, 1,
            "the update stopped the first two through the index"
        );
        assert_eq!(s.evals_by_job, rebuilt.evals_by_job);
        assert_eq!(s.evals_of(&a_key).count(), 2);
    }

    #[test]
    fn the_eval_indexes_follow_every_status_change_and_removal_as_a_rebuild_would() {
        let mut s = ServerState::default();
        let key = ("default".to_string(), "j".to_string());
        let mut job = Job::from_json(serde_json::json!({"ID": "j", "TaskGroups": [{"Name": "g",
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        job.canonicalize("global");
        let eval = |id: &str, create: u64, status: EvalStatus| {
            let mut e = EvalRecord::new_at(&job, "job-register", create, id, 0);
            e.status = status;
            e
        };
        let same_as_rebuilt = |s: &ServerState| {
            let r = s.clone().reindexed();
            assert_eq!(s.evals_by_job, r.evals_by_job);
            assert_eq!(s.pending_evals, r.pending_evals);
            assert_eq!(s.blocked_evals, r.blocked_evals);
        };
        s.put_eval(eval("e2", 2, EvalStatus::Pending));
        s.put_eval(eval("e1", 1, EvalStatus::Pending));
        same_as_rebuilt(&s);
        let order: Vec<&str> = s.pending_evals().map(|e| e.id.as_str()).collect();
        assert_eq!(order, ["e1", "e2"], "oldest first");
        s.put_eval(eval("e1", 1, EvalStatus::Blocked));
        same_as_rebuilt(&s);
        assert_eq!(s.pending_evals().count(), 1);
        assert!(s.blocked_evals.contains("e1"));
        s.put_eval(eval("e2", 2, EvalStatus::Complete));
        same_as_rebuilt(&s);
        assert_eq!(s.pending_evals().count(), 0);
        assert_eq!(s.evals_of(&key).count(), 2);
        s.remove_eval("e1");
        s.remove_eval("e2");
        same_as_rebuilt(&s);
        assert!(s.evals_by_job.is_empty() && s.blocked_evals.is_empty());
    }
}
