//! Server events (Nomad's event stream): what each applied [`Command`] changed, as typed
//! events made by the committer from the command and the state before and after it. Events
//! come out of apply only — never from an API handler — so every server that applies the
//! same log makes the same events. [`events_of`] is the one mapping from commands to events;
//! a command without an arm there makes none. `api::events` renders them as Nomad's JSON.

use std::sync::Arc;

use super::command::{Command, JobKey, ServerState};
use super::jobs::alloc::AllocRecord;
use super::jobs::eval::EvalRecord;
use super::jobs::job_status_of;
use super::jobs::spec::Job;
use super::node_table::Node;
use super::status::JobStatus;
use crate::acl::tokens::{AclPolicy, AclToken};

/// Nomad's event topics (the ones nomadlet's state has objects for, and those a subscriber
/// may name although nothing here publishes them yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Job,
    Evaluation,
    Allocation,
    Deployment,
    Node,
    NodePool,
    AclToken,
    AclPolicy,
    Service,
}

impl Topic {
    /// Nomad's name of the topic (also the key of the object in an event's `Payload`).
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Job => "Job",
            Topic::Evaluation => "Evaluation",
            Topic::Allocation => "Allocation",
            Topic::Deployment => "Deployment",
            Topic::Node => "Node",
            Topic::NodePool => "NodePool",
            Topic::AclToken => "ACLToken",
            Topic::AclPolicy => "ACLPolicy",
            Topic::Service => "Service",
        }
    }

    /// The topic of a name as a subscriber writes it; `None` for names Nomad does not have.
    pub fn parse(name: &str) -> Option<Topic> {
        [
            Topic::Job,
            Topic::Evaluation,
            Topic::Allocation,
            Topic::Deployment,
            Topic::Node,
            Topic::NodePool,
            Topic::AclToken,
            Topic::AclPolicy,
            Topic::Service,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
    }
}

/// Nomad's event `Type` words (`structs.Type*`), one per kind of state change. Some are
/// for the arms of commands still to come (plan apply, drain, node deregister).
#[allow(dead_code)]
pub mod kind {
    pub const JOB_REGISTERED: &str = "JobRegistered";
    pub const JOB_DEREGISTERED: &str = "JobDeregistered";
    pub const JOB_BATCH_DEREGISTERED: &str = "JobBatchDeregistered";
    pub const EVALUATION_UPDATED: &str = "EvaluationUpdated";
    pub const ALLOCATION_UPDATED: &str = "AllocationUpdated";
    pub const ALLOCATION_UPDATE_DESIRED_STATUS: &str = "AllocationUpdateDesiredStatus";
    pub const PLAN_RESULT: &str = "PlanResult";
    pub const NODE_REGISTRATION: &str = "NodeRegistration";
    pub const NODE_DEREGISTRATION: &str = "NodeDeregistration";
    pub const NODE_ELIGIBILITY: &str = "NodeEligibility";
    pub const NODE_DRAIN: &str = "NodeDrain";
    /// Nomad's `TypeNodeEvent` (node status changes and node events).
    pub const NODE_EVENT: &str = "NodeStreamEvent";
    pub const ACL_TOKEN_UPSERTED: &str = "ACLTokenUpserted";
    pub const ACL_TOKEN_DELETED: &str = "ACLTokenDeleted";
    pub const ACL_POLICY_UPSERTED: &str = "ACLPolicyUpserted";
    pub const ACL_POLICY_DELETED: &str = "ACLPolicyDeleted";
}

/// The object an event carries, shared with the state it was taken from.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A job and its status as of the event's index.
    Job {
        job: Arc<Job>,
        status: JobStatus,
    },
    Evaluation(Arc<EvalRecord>),
    Allocation(Arc<AllocRecord>),
    Node(Arc<Node>),
    /// A token with its secret already blanked (Nomad redacts it in events).
    AclToken(Box<AclToken>),
    AclPolicy(Box<AclPolicy>),
}

/// One event: an object that a command at `index` changed.
#[derive(Clone, Debug)]
pub struct Event {
    pub topic: Topic,
    /// Nomad's `Type` (a [`kind`] word).
    pub kind: &'static str,
    /// The object's ID (a job's ID, a token's accessor, a policy's name).
    pub key: String,
    /// The object's namespace; empty for objects without one (nodes, ACL objects).
    pub namespace: String,
    /// More keys a `Topic:Key` filter matches (an eval's or alloc's job ID).
    pub filter_keys: Vec<String>,
    pub index: u64,
    pub payload: Payload,
}

/// Event types for a job, its evals and its allocs, in that order.
pub type Kinds = (&'static str, &'static str, &'static str);

/// The types of what a node write changed in jobs: Nomad makes such changes through an
/// eval update and the scheduler's plan.
pub const NODE_CONSEQUENCES: Kinds = (
    kind::PLAN_RESULT,
    kind::EVALUATION_UPDATED,
    kind::PLAN_RESULT,
);

/// The events one command made, in the order of its changes.
#[derive(Debug)]
pub struct EventBatch {
    pub index: u64,
    pub events: Vec<Event>,
}

/// The events of `cmd`, applied at `index` to `before` giving `after`. The one mapping of
/// commands to events: a command with no arm here (or one that changed nothing Nomad
/// publishes, such as a one-time token) makes no events.
pub fn events_of(
    cmd: &Command,
    before: &ServerState,
    after: &ServerState,
    index: u64,
) -> Vec<Event> {
    let mut out = Collector {
        before,
        after,
        index,
        events: Vec::new(),
    };
    match cmd {
        Command::JobRegister { job, .. } => {
            let key = (job.namespace.clone(), job.id.clone());
            out.job(&key, kind::JOB_REGISTERED);
            out.job_changes(&key, kind::JOB_REGISTERED)
        }
        Command::JobDeregister {
            namespace, job_id, ..
        } => {
            let key = (namespace.clone(), job_id.clone());
            out.job(&key, kind::JOB_DEREGISTERED);
            out.job_changes(&key, kind::JOB_DEREGISTERED)
        }
        Command::AllocStop { alloc_id, .. } | Command::AllocStopQueued { alloc_id, .. } => {
            if let Some(key) = out.job_of_alloc(alloc_id) {
                out.job_changes(&key, kind::ALLOCATION_UPDATE_DESIRED_STATUS);
            }
        }
        // The scheduler's queue: a submitted job (its pending eval), a stopped job.
        Command::JobSubmit { job, .. } | Command::JobLaunch { job, .. } => {
            let key = (job.namespace.clone(), job.id.clone());
            out.job(&key, kind::JOB_REGISTERED);
            out.job_changes(&key, kind::JOB_REGISTERED)
        }
        // A scale is a new version of the job; stability changes the job (or a kept version).
        Command::JobScale {
            namespace, job_id, ..
        }
        | Command::JobSetStable {
            namespace, job_id, ..
        } => {
            let key = (namespace.clone(), job_id.clone());
            out.job_changes(&key, kind::JOB_REGISTERED)
        }
        // A forced evaluation: the eval, and allocs marked to reschedule.
        Command::JobEvaluate {
            namespace, job_id, ..
        } => {
            let key = (namespace.clone(), job_id.clone());
            out.job_changes_as(
                &key,
                kind::JOB_REGISTERED,
                kind::EVALUATION_UPDATED,
                kind::ALLOCATION_UPDATE_DESIRED_STATUS,
            )
        }
        Command::JobStop {
            namespace, job_id, ..
        } => {
            let key = (namespace.clone(), job_id.clone());
            out.job(&key, kind::JOB_DEREGISTERED);
            out.job_changes(&key, kind::JOB_DEREGISTERED)
        }
        // A plan: its allocs are `PlanResult`, the eval it completes `EvaluationUpdated`.
        Command::PlanApply { plan } => {
            let key = (plan.namespace.clone(), plan.job_id.clone());
            out.job_changes_as(
                &key,
                kind::PLAN_RESULT,
                kind::EVALUATION_UPDATED,
                kind::PLAN_RESULT,
            )
        }
        Command::AllocClientUpdate { alloc_id, .. } => {
            out.alloc_update(alloc_id, kind::ALLOCATION_UPDATED)
        }
        Command::AclTokenUpsert { token, .. } => {
            out.acl_token(&token.accessor_id, kind::ACL_TOKEN_UPSERTED)
        }
        Command::AclTokenDelete { accessor } => {
            out.acl_token_deleted(accessor, kind::ACL_TOKEN_DELETED)
        }
        Command::AclPolicyUpsert { policy } => {
            out.acl_policy(&policy.name, kind::ACL_POLICY_UPSERTED)
        }
        Command::AclPolicyDelete { name } => out.acl_policy_deleted(name, kind::ACL_POLICY_DELETED),
        // A node write may also change the jobs on it (lost allocs, new evals): those are
        // published with the types Nomad gives them (they come from its evals and plans).
        Command::NodeRegister { node, .. } => {
            out.node(&node.id, kind::NODE_REGISTRATION);
            out.changed_at_index(NODE_CONSEQUENCES);
        }
        Command::NodeUpdateStatus { node_id, .. } => {
            out.node(node_id, kind::NODE_EVENT);
            out.changed_at_index(NODE_CONSEQUENCES);
        }
        // Nomad publishes an eligibility change as a drain event.
        Command::NodeUpdateEligibility { node_id, .. } => {
            out.node(node_id, kind::NODE_DRAIN);
            out.changed_at_index(NODE_CONSEQUENCES);
        }
        Command::NodeEvents { events } => {
            let mut seen: Vec<&str> = Vec::new();
            for (id, _) in events {
                if !seen.contains(&id.as_str()) {
                    seen.push(id);
                    out.node(id, kind::NODE_EVENT);
                }
            }
        }
        // A Nomad client sends its changed metadata as a new registration of its node.
        Command::NodeUpdateMeta { node_id, .. } => {
            out.node(node_id, kind::NODE_REGISTRATION);
            out.changed_at_index(NODE_CONSEQUENCES);
        }
        Command::NodeUpdateDrain { node_id, evals, .. }
        | Command::NodeSetEligibility { node_id, evals, .. } => {
            out.node(node_id, kind::NODE_DRAIN);
            out.jobs_changes(
                evals
                    .iter()
                    .map(|e| (e.namespace.as_str(), e.job_id.as_str())),
                NODE_CONSEQUENCES,
            );
        }
        Command::NodeDrainComplete { node_id, .. } => out.node(node_id, kind::NODE_DRAIN),
        Command::NodeEvaluate { evals, .. } => out.jobs_changes(
            evals
                .iter()
                .map(|e| (e.namespace.as_str(), e.job_id.as_str())),
            NODE_CONSEQUENCES,
        ),
        Command::NodeDeregister { node_id, evals, .. } => {
            out.node_deleted(node_id, kind::NODE_DEREGISTRATION);
            out.jobs_changes(
                evals
                    .iter()
                    .map(|e| (e.namespace.as_str(), e.job_id.as_str())),
                NODE_CONSEQUENCES,
            );
        }
        Command::AllocMigrate {
            alloc_ids, evals, ..
        } => {
            let mut keys: Vec<JobKey> = alloc_ids
                .iter()
                .filter_map(|id| out.job_of_alloc(id))
                .collect();
            keys.extend(
                evals
                    .iter()
                    .map(|e| (e.namespace.clone(), e.job_id.clone())),
            );
            let d = kind::ALLOCATION_UPDATE_DESIRED_STATUS;
            out.jobs_changes(
                keys.iter().map(|(ns, id)| (ns.as_str(), id.as_str())),
                (d, d, d),
            );
        }
        // No event in Nomad: the bootstrap token, one-time tokens.
        _ => {}
    }
    out.events
}

/// Builds the events of one command from the state before and after it. Each helper adds
/// the events of one kind of change; an arm of [`events_of`] combines them.
pub struct Collector<'a> {
    pub before: &'a ServerState,
    pub after: &'a ServerState,
    pub index: u64,
    pub events: Vec<Event>,
}

impl Collector<'_> {
    fn push(&mut self, topic: Topic, kind: &'static str, key: &str, ns: &str, payload: Payload) {
        let filter_keys = match &payload {
            Payload::Evaluation(e) => vec![e.job_id.clone(), String::new()],
            Payload::Allocation(a) => vec![a.job_id.to_string(), String::new()],
            _ => Vec::new(),
        };
        self.events.push(Event {
            topic,
            kind,
            key: key.to_string(),
            namespace: ns.to_string(),
            filter_keys,
            index: self.index,
            payload,
        });
    }

    /// The job key of an alloc (after the command, else before it).
    pub fn job_of_alloc(&self, alloc_id: &str) -> Option<JobKey> {
        self.after
            .allocs
            .get(alloc_id)
            .or_else(|| self.before.allocs.get(alloc_id))
            .map(|a| (a.namespace.to_string(), a.job_id.to_string()))
    }

    /// A job's status in `state`: the one apply keeps on the job (computed from its allocs
    /// for a job stored before statuses were kept).
    fn status_in(state: &ServerState, job: &Job, key: &JobKey) -> JobStatus {
        JobStatus::parse(&job.status)
            .unwrap_or_else(|| job_status_of(job, state.allocs_of(key).map(|a| &**a)))
    }

    /// The job as it is after the command (nothing once purged: Nomad publishes no event for a
    /// deleted job), unless an event for it is already in this batch.
    pub fn job(&mut self, key: &JobKey, kind: &'static str) {
        let already = self
            .events
            .iter()
            .any(|e| e.topic == Topic::Job && e.key == key.1 && e.namespace == key.0);
        if already {
            return;
        }
        if let Some(job) = self.after.jobs.get(key).cloned() {
            let status = Self::status_in(self.after, &job, key);
            self.push(
                Topic::Job,
                kind,
                &key.1,
                &key.0,
                Payload::Job { job, status },
            );
        }
    }

    /// The job, when the command changed it or its status.
    fn job_if_changed(&mut self, key: &JobKey, kind: &'static str) {
        let Some(job) = self.after.jobs.get(key) else {
            return;
        };
        let changed = match self.before.jobs.get(key) {
            None => true,
            Some(old) => {
                job.modify_index == self.index
                    || Self::status_in(self.before, old, key)
                        != Self::status_in(self.after, job, key)
            }
        };
        if changed {
            self.job(key, kind);
        }
    }

    /// Everything of one job the command touched: the job (when it or its status changed),
    /// its evaluations and allocations modified at this index.
    pub fn job_changes(&mut self, key: &JobKey, kind: &'static str) {
        self.job_changes_as(key, kind, kind, kind);
    }

    /// [`Collector::job_changes`] with a type per topic: a plan's allocations are Nomad's
    /// `PlanResult` while the eval it completes is `EvaluationUpdated`.
    pub fn job_changes_as(
        &mut self,
        key: &JobKey,
        job_kind: &'static str,
        eval_kind: &'static str,
        alloc_kind: &'static str,
    ) {
        self.job_if_changed(key, job_kind);
        let evals: Vec<Arc<EvalRecord>> = self
            .after
            .evals_of(key)
            .filter(|e| e.modify_index == self.index)
            .cloned()
            .collect();
        for e in evals {
            let (id, ns) = (e.id.clone(), e.namespace.clone());
            self.push(
                Topic::Evaluation,
                eval_kind,
                &id,
                &ns,
                Payload::Evaluation(e),
            );
        }
        let allocs: Vec<Arc<AllocRecord>> = self
            .after
            .allocs_of(key)
            .filter(|a| a.modify_index == self.index)
            .cloned()
            .collect();
        for a in allocs {
            let (id, ns) = (a.id.clone(), a.namespace.clone());
            self.push(
                Topic::Allocation,
                alloc_kind,
                &id,
                &ns,
                Payload::Allocation(a),
            );
        }
    }

    /// [`Collector::job_changes`] for each job named (once each, in order): the jobs of a
    /// node operation's evals, of migrated allocs.
    #[allow(dead_code)] // for the arms of the node operations
    pub fn jobs_changes<'k>(
        &mut self,
        keys: impl IntoIterator<Item = (&'k str, &'k str)>,
        (job_kind, eval_kind, alloc_kind): Kinds,
    ) {
        let mut seen: Vec<JobKey> = Vec::new();
        for (ns, id) in keys {
            let key = (ns.to_string(), id.to_string());
            if !seen.contains(&key) {
                self.job_changes_as(&key, job_kind, eval_kind, alloc_kind);
                seen.push(key);
            }
        }
    }

    /// One alloc the command changed, and its job when the job's status changed with it.
    pub fn alloc_update(&mut self, alloc_id: &str, kind: &'static str) {
        let Some(a) = self.after.allocs.get(alloc_id).cloned() else {
            return;
        };
        let key = (a.namespace.to_string(), a.job_id.to_string());
        let (id, ns) = (a.id.clone(), a.namespace.clone());
        self.push(Topic::Allocation, kind, &id, &ns, Payload::Allocation(a));
        self.job_if_changed(&key, kind);
    }

    /// Every job, evaluation and allocation modified at this index: a walk over each table
    /// the command changed (a table it left alone is the same tree, found in O(1)); for rare
    /// commands whose changes are spread over many jobs, such as a node going down.
    pub fn changed_at_index(&mut self, (job_kind, eval_kind, alloc_kind): Kinds) {
        let (before, after, index) = (self.before, self.after, self.index);
        let mut keys = std::collections::BTreeSet::new();
        if !before.jobs.ptr_eq(&after.jobs) {
            keys.extend(
                after
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.modify_index == index)
                    .map(|(k, _)| k.clone()),
            );
        }
        if !before.evals.ptr_eq(&after.evals) {
            keys.extend(
                after
                    .evals
                    .values()
                    .filter(|e| e.modify_index == index)
                    .map(|e| (e.namespace.clone(), e.job_id.clone())),
            );
        }
        if !before.allocs.ptr_eq(&after.allocs) {
            keys.extend(
                after
                    .allocs
                    .values()
                    .filter(|a| a.modify_index == index)
                    .map(|a| (a.namespace.to_string(), a.job_id.to_string())),
            );
        }
        for key in keys {
            self.job_changes_as(&key, job_kind, eval_kind, alloc_kind);
        }
    }

    /// A node as it is after the command.
    pub fn node(&mut self, node_id: &str, kind: &'static str) {
        if let Some(n) = self.after.nodes.get(node_id).cloned() {
            let id = n.id.clone();
            self.push(Topic::Node, kind, &id, "", Payload::Node(n));
        }
    }

    /// A node the command removed, as it was.
    #[allow(dead_code)] // for NodeDeregister's arm
    pub fn node_deleted(&mut self, node_id: &str, kind: &'static str) {
        if let Some(n) = self.before.nodes.get(node_id).cloned() {
            let id = n.id.clone();
            self.push(Topic::Node, kind, &id, "", Payload::Node(n));
        }
    }

    fn token_event(&mut self, t: Option<AclToken>, kind: &'static str) {
        if let Some(mut t) = t {
            t.secret_id = String::new();
            let id = t.accessor_id.clone();
            self.push(
                Topic::AclToken,
                kind,
                &id,
                "",
                Payload::AclToken(Box::new(t)),
            );
        }
    }

    /// A token as it is after the command (its secret blanked).
    pub fn acl_token(&mut self, accessor: &str, kind: &'static str) {
        let t = self
            .after
            .acl
            .tokens
            .iter()
            .find(|t| t.accessor_id == accessor)
            .cloned();
        self.token_event(t, kind);
    }

    /// A token the command deleted, as it was (its secret blanked).
    pub fn acl_token_deleted(&mut self, accessor: &str, kind: &'static str) {
        let t = self
            .before
            .acl
            .tokens
            .iter()
            .find(|t| t.accessor_id == accessor)
            .cloned();
        self.token_event(t, kind);
    }

    /// A policy as it is after the command.
    pub fn acl_policy(&mut self, name: &str, kind: &'static str) {
        if let Some(p) = self.after.acl.policies.get(name).cloned() {
            self.push(
                Topic::AclPolicy,
                kind,
                name,
                "",
                Payload::AclPolicy(Box::new(p)),
            );
        }
    }

    /// A policy the command deleted, as it was.
    pub fn acl_policy_deleted(&mut self, name: &str, kind: &'static str) {
        if self.after.acl.policies.contains_key(name) {
            return;
        }
        if let Some(p) = self.before.acl.policies.get(name).cloned() {
            self.push(
                Topic::AclPolicy,
                kind,
                name,
                "",
                Payload::AclPolicy(Box::new(p)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::apply;
    use crate::state::jobs::alloc::{ClientStatusUpdate, TaskState};
    use crate::state::jobs::NodeInfo;
    use crate::state::status::{AllocClientStatus, TaskStatus};
    use std::collections::BTreeMap;

    fn job(id: &str) -> Job {
        let mut j = Job::from_json(serde_json::json!({"ID": id, "Type": "batch",
            "TaskGroups": [{"Name": "g", "Count": 2, "Tasks": [{"Name": "t",
            "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        j.canonicalize("global");
        j
    }

    /// Apply `cmd` at `index`; its events as `(topic, type, key)`.
    fn step(
        s: &mut ServerState,
        cmd: Command,
        index: u64,
    ) -> Vec<(&'static str, &'static str, String)> {
        let before = s.clone();
        apply(s, &cmd, index).unwrap();
        let events = events_of(&cmd, &before, s, index);
        assert!(events.iter().all(|e| e.index == index));
        events
            .into_iter()
            .map(|e| (e.topic.as_str(), e.kind, e.key))
            .collect()
    }

    #[test]
    fn job_commands_make_events_for_the_job_its_evals_and_its_allocs() {
        let mut s = ServerState::default();
        let node = NodeInfo {
            id: "n1".into(),
            name: "n".into(),
            unplaceable: None,
        };
        let register = Command::JobRegister {
            job: Box::new(job("web")),
            node: node.clone(),
            eval_id: "e1".into(),
            blocked_eval_id: String::new(),
            alloc_ids: vec!["a1".into(), "a2".into()],
            now: 1,
        };
        let r = kind::JOB_REGISTERED;
        assert_eq!(
            step(&mut s, register, 5),
            [
                ("Job", r, "web".to_string()),
                ("Evaluation", r, "e1".into()),
                ("Allocation", r, "a1".into()),
                ("Allocation", r, "a2".into()),
            ]
        );
        let mut running = TaskState::pending();
        running.state = TaskStatus::Running;
        let update = |alloc: &str, ts: TaskState, status: Option<AllocClientStatus>| {
            Command::AllocClientUpdate {
                alloc_id: alloc.into(),
                tasks: [("t".to_string(), ts)]
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
                client_status: status.map(|status| ClientStatusUpdate {
                    status,
                    description: String::new(),
                }),
                collected: false,
                now: 2,
            }
        };
        let u = kind::ALLOCATION_UPDATED;
        // The job's status changes with its first running alloc: its event comes too.
        assert_eq!(
            step(&mut s, update("a1", running.clone(), None), 6),
            [
                ("Allocation", u, "a1".to_string()),
                ("Job", u, "web".into())
            ]
        );
        assert_eq!(
            step(&mut s, update("a2", running, None), 7),
            [("Allocation", u, "a2".to_string())]
        );
        let stop = Command::AllocStop {
            alloc_id: "a1".into(),
            node,
            eval_id: "e2".into(),
            replacement_id: "a3".into(),
            now: 3,
        };
        let d = kind::ALLOCATION_UPDATE_DESIRED_STATUS;
        assert_eq!(
            step(&mut s, stop, 8),
            [
                ("Evaluation", d, "e2".to_string()),
                ("Allocation", d, "a1".into()),
                ("Allocation", d, "a3".into()),
            ]
        );
        // A purge: no event for the deleted job, its eval and stopped allocs.
        let purge = Command::JobDeregister {
            namespace: "default".into(),
            job_id: "web".into(),
            purge: true,
            eval_id: "e3".into(),
            now: 4,
        };
        let events = step(&mut s, purge, 9);
        assert_eq!(
            events[0],
            ("Evaluation", kind::JOB_DEREGISTERED, "e3".to_string())
        );
        assert!(events.iter().all(|e| e.0 != "Job"), "{events:?}");
        assert_eq!(events.iter().filter(|e| e.0 == "Allocation").count(), 2);
    }

    #[test]
    fn token_events_carry_no_secret_and_commands_without_events_make_none() {
        let mut s = ServerState::default();
        let token = AclToken::new(
            "t".into(),
            "client".into(),
            Some(vec!["p".into()]),
            false,
            1,
        );
        let upsert = Command::AclTokenUpsert {
            token: Box::new(token.clone()),
            must_exist: false,
        };
        let before = s.clone();
        apply(&mut s, &upsert, 3).unwrap();
        let events = events_of(&upsert, &before, &s, 3);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, token.accessor_id);
        let Payload::AclToken(t) = &events[0].payload else {
            panic!("{events:?}");
        };
        assert!(t.secret_id.is_empty() && !token.secret_id.is_empty());
        let delete = Command::AclTokenDelete {
            accessor: token.accessor_id.clone(),
        };
        assert_eq!(
            step(&mut s, delete, 4),
            [(
                "ACLToken",
                kind::ACL_TOKEN_DELETED,
                token.accessor_id.clone()
            )]
        );
        let boot = Command::AclBootstrap {
            token: Box::new(AclToken::new(
                "b".into(),
                "management".into(),
                None,
                true,
                5,
            )),
            index: 5,
        };
        assert!(
            step(&mut s, boot, 5).is_empty(),
            "Nomad publishes no bootstrap event"
        );
    }

    #[test]
    fn a_node_status_change_makes_its_node_event_and_the_changes_at_its_index() {
        let mut s = ServerState::default();
        let node: Node = serde_json::from_value(serde_json::json!({
            "id": "n1", "name": "n", "datacenter": "dc1", "http_addr": "127.0.0.1:1",
            "tls_enabled": false, "node_pool": "default", "node_class": "", "version": "0",
            "attributes": {}, "meta": {}, "resources": null, "drivers": {},
            "status": "ready", "status_description": "", "status_updated_at": 0,
            "scheduling_eligibility": "eligible", "drain": false, "events": [],
            "create_index": 0, "modify_index": 0}))
        .unwrap();
        let register = Command::NodeRegister {
            node: Box::new(node),
            now: 1,
        };
        assert_eq!(
            step(&mut s, register, 3),
            [("Node", kind::NODE_REGISTRATION, "n1".to_string())]
        );
        let down = Command::NodeUpdateStatus {
            node_id: "n1".into(),
            status: crate::state::status::NodeStatus::Down,
            description: String::new(),
            event: None,
            now: 2,
        };
        assert_eq!(
            step(&mut s, down, 4),
            [("Node", kind::NODE_EVENT, "n1".to_string())]
        );
    }
}
