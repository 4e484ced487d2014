//! The scheduler's side of apply: plans (what the scheduler decided for one evaluation) and
//! the commands that queue work for it (a job submitted or stopped, an alloc stopped: each
//! makes a `pending` eval), the consequences of node changes (lost and unknown allocs,
//! `node-update` evals, blocked evals woken by new capacity), and the fit check every plan
//! passes again at apply time, so two plans made on the same snapshot never overcommit a node.
//!
//! Deterministic like every apply: IDs and times come from the command; IDs apply must make
//! itself (evals for node changes) are derived from the index ([`derived_id`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::{cancel_blocked_evals, Applied, ApplyError, JobKey, JobWrite, ServerState};
use super::jobs::alloc::{AllocNames, AllocRecord, AllocStamp, RescheduleEvent};
use super::jobs::eval::EvalRecord;
use super::jobs::network::{AllocPorts, NodeNet, UsedPorts};
use super::jobs::spec::{Job, TaskGroup};
use super::node_table::Node;
use super::shared_str::SharedStr;
use crate::state::status::{
    AllocClientStatus, AllocDesiredStatus, EvalStatus, JobType, NodeEligibility, NodeStatus,
};

/// Nomad's `TriggeredBy` words this module writes.
pub const TRIGGER_NODE_UPDATE: &str = "node-update";
pub const TRIGGER_ALLOC_FAILURE: &str = "alloc-failure";
pub const TRIGGER_QUEUED_ALLOCS: &str = "queued-allocs";
pub const TRIGGER_MAX_PLAN_ATTEMPTS: &str = "max-plan-attempts";
pub const TRIGGER_RESCHEDULE: &str = "alloc-reschedule";

/// Nomad's alloc descriptions for what the scheduler and node changes do.
pub const DESC_LOST: &str = "alloc is lost since its node is down";
pub const DESC_UNKNOWN: &str = "alloc is unknown since its node is disconnected";
pub const DESC_USER_STOP: &str = "alloc was stopped by the user";

/// One placement: the alloc the plan makes (ID chosen by the proposer) and where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub id: String,
    pub node_id: String,
    pub task_group: String,
    pub alloc_index: u32,
    /// The alloc this one replaces (its `NextAllocation` is set to this one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous_alloc: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reschedule_events: Vec<RescheduleEvent>,
    /// The ports the scheduler assigned (apply re-checks them against the node).
    #[serde(default, skip_serializing_if = "AllocPorts::is_empty")]
    pub ports: AllocPorts,
}

/// One alloc the plan stops, why, and (lost) the client status the scheduler sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanStop {
    pub alloc_id: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_status: Option<AllocClientStatus>,
}

/// A later eval the plan asks for (a delayed reschedule), and the failed allocs it is for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FollowUp {
    pub eval_id: String,
    pub wait_until: i64,
    pub alloc_ids: Vec<String>,
}

/// What the scheduler decided for one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub eval_id: String,
    pub namespace: String,
    pub job_id: String,
    /// The job's `JobModifyIndex` the plan was made for (0: the job is gone). A plan for an
    /// older version applies nothing: the newer version's own eval is queued.
    pub job_modify_index: u64,
    pub stops: Vec<PlanStop>,
    pub placements: Vec<Placement>,
    /// Task group → Nomad's `AllocMetric` of its failed placements.
    pub failed_tg_allocs: BTreeMap<String, Value>,
    /// Task group → placements not made.
    pub queued: BTreeMap<String, u64>,
    /// Made when placements failed: the blocked eval's ID (the eval re-blocks itself when it
    /// was a woken blocked eval).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blocked_eval_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<FollowUp>,
    /// The proposer's last attempt: placements apply refuses block the eval instead of
    /// leaving it pending for another try.
    pub final_attempt: bool,
    pub now: i64,
}

/// What applying a plan did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanResult {
    pub placed: usize,
    /// Placements refused because the node no longer takes them (gone, not ready, full).
    pub refused: usize,
    pub stopped: usize,
    /// The eval is still pending (something was refused; the scheduler tries again).
    pub retry: bool,
}

/// CPU (MHz), memory and disk (MB): a node's capacity, its use, or a group's ask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: i64,
    pub memory_mb: i64,
    pub disk_mb: i64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.cpu += o.cpu;
        self.memory_mb += o.memory_mb;
        self.disk_mb += o.disk_mb;
    }

    /// The first dimension where `self + ask` exceeds `cap` (Nomad's `DimensionExhausted`
    /// word), or `None` when it fits.
    pub fn exceeds(&self, ask: &Usage, cap: &Usage) -> Option<&'static str> {
        if self.cpu + ask.cpu > cap.cpu {
            Some("cpu")
        } else if self.memory_mb + ask.memory_mb > cap.memory_mb {
            Some("memory")
        } else if self.disk_mb + ask.disk_mb > cap.disk_mb {
            Some("disk")
        } else {
            None
        }
    }
}

/// What a group's allocation asks of a node: its tasks' `cpu` and `memory` (`memory_max`
/// counts only with memory oversubscription, which nomadlet does not enable, as Nomad's
/// default) and the group's `ephemeral_disk`.
pub fn group_ask(tg: &TaskGroup) -> Usage {
    let mut u = Usage {
        disk_mb: tg
            .ephemeral_disk
            .as_ref()
            .and_then(|d| d.size_mb)
            .unwrap_or(300),
        ..Usage::default()
    };
    for t in &tg.tasks {
        let r = t.resources.as_ref();
        u.cpu += r.and_then(|r| r.cpu).unwrap_or(100);
        u.memory_mb += r.and_then(|r| r.memory_mb).unwrap_or(300);
    }
    u
}

fn num(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return 0,
        }
    }
    cur.as_i64()
        .or_else(|| cur.as_f64().map(|f| f as i64))
        .unwrap_or(0)
}

/// What a node offers: its fingerprinted `NodeResources` (`Cpu.CpuShares`,
/// `Memory.MemoryMB`, `Disk.DiskMB`) minus its `Reserved` part when it reports one.
pub fn node_capacity(node: &Node) -> Usage {
    let r = &node.resources;
    // Borrowed, not cloned: the scheduler asks this of every node it ranks.
    let reserved = r.get("Reserved").unwrap_or(&Value::Null);
    Usage {
        cpu: num(r, &["Cpu", "CpuShares"]) - num(reserved, &["Cpu", "CpuShares"]),
        memory_mb: num(r, &["Memory", "MemoryMB"]) - num(reserved, &["Memory", "MemoryMB"]),
        disk_mb: num(r, &["Disk", "DiskMB"]) - num(reserved, &["Disk", "DiskMB"]),
    }
}

/// An alloc's ask (its own job version's group).
pub fn alloc_ask(a: &AllocRecord) -> Usage {
    a.job
        .group(&a.task_group)
        .map(group_ask)
        .unwrap_or_default()
}

/// What the node's live allocs (wanted running, not finished) use now, by a walk over them:
/// the reference [`ServerState::usage_of`] (kept as allocs change) must always equal.
#[cfg(test)]
pub fn node_used(state: &ServerState, node_id: &str) -> Usage {
    let mut u = Usage::default();
    for a in state.allocs_on(node_id).filter(|a| a.is_live()) {
        u.add(&alloc_ask(a));
    }
    u
}

/// The ports in use on a node: its reserved ports and its live allocs' ports (in alloc ID
/// order, through the index of live allocs holding ports: the others add nothing).
pub fn node_ports(state: &ServerState, node: &Node) -> UsedPorts {
    let mut used = UsedPorts::of_node(&NodeNet::of(node));
    for a in state.ported_allocs_on(&node.id) {
        used.add_existing(&a.id, &a.ports);
    }
    used
}

/// A node new allocs may go to: ready, eligible, not draining.
pub fn node_schedulable(n: &Node) -> bool {
    n.status == NodeStatus::Ready
        && n.scheduling_eligibility == NodeEligibility::Eligible
        && !n.drain
        && n.drain_strategy.is_none()
}

/// After the node operations (`state::node_ops`): a node made eligible again (or evaluated)
/// may have room for blocked evals, so they wake.
pub(super) fn after_node_op(state: &mut ServerState, cmd: &super::command::Command, index: u64) {
    use super::command::Command;
    let (node_id, now) = match cmd {
        Command::NodeSetEligibility {
            node_id,
            eligibility: NodeEligibility::Eligible,
            now,
            ..
        }
        | Command::NodeUpdateDrain { node_id, now, .. }
        | Command::NodeEvaluate { node_id, now, .. } => (node_id, *now),
        _ => return,
    };
    if state
        .nodes
        .get(node_id)
        .is_some_and(|n| node_schedulable(n))
    {
        wake_blocked(state, now, index);
    }
}

/// An ID apply makes itself (evals for node changes), derived from the command's index and a
/// sequence number: the same log replays to the same IDs. UUID-shaped (version nibble 8).
pub fn derived_id(index: u64, seq: u64, salt: &str) -> String {
    fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
        let mut h = seed;
        for p in parts {
            for b in *p {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
    let (i, s) = (index.to_le_bytes(), seq.to_le_bytes());
    let parts: [&[u8]; 3] = [&i, &s, salt.as_bytes()];
    let a = fnv(0xcbf2_9ce4_8422_2325, &parts);
    let b = fnv(0x6c62_272e_07bb_0142, &parts);
    let v = (u128::from(a) << 64) | u128::from(b);
    let v = (v & !(0xf << 76)) | (0x8 << 76);
    let v = (v & !(0x3 << 62)) | (0x2 << 62);
    uuid::Uuid::from_u128(v).to_string()
}

/// A job submitted: stored (a new version when its spec changed), its older blocked evals
/// canceled, and a `pending` `job-register` eval queued for the scheduler.
pub(super) fn submit(
    state: &mut ServerState,
    job: &Job,
    eval_id: &str,
    now: i64,
    index: u64,
) -> JobWrite {
    let (key, job, _) = super::command::store_job_version(state, job, now, index);
    if eval_id.is_empty() {
        // A periodic or parameterized parent: stored, never scheduled.
        return JobWrite {
            eval_id: String::new(),
            eval_create_index: 0,
            job_modify_index: job.job_modify_index,
        };
    }
    cancel_blocked_evals(state, &key, eval_id, now, index);
    let eval = EvalRecord::pending_at(&job, "job-register", index, eval_id, now);
    state.put_eval(eval);
    JobWrite {
        eval_id: eval_id.to_string(),
        eval_create_index: index,
        job_modify_index: job.job_modify_index,
    }
}

/// A job stopped (`purge`: removed): its allocs are told to stop now and a `pending`
/// `job-deregister` eval is queued (the scheduler completes it).
pub(super) fn stop_job(
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
    // A periodic or parameterized parent has nothing to evaluate (Nomad makes no eval).
    if !eval_id.is_empty() {
        cancel_blocked_evals(state, key, eval_id, now, index);
        let eval = EvalRecord::pending_at(&job, "job-deregister", index, eval_id, now);
        state.put_eval(eval);
    }
    let running: Vec<String> = state
        .allocs_of(key)
        .filter(|a| a.desired_status == AllocDesiredStatus::Run)
        .map(|a| a.id.to_string())
        .collect();
    for id in running {
        set_stop(
            state,
            &id,
            "alloc not needed since job is stopped",
            None,
            now,
            index,
        );
    }
    wake_blocked(state, now, index);
    Ok(JobWrite {
        eval_id: eval_id.to_string(),
        eval_create_index: if eval_id.is_empty() { 0 } else { index },
        job_modify_index: index,
    })
}

/// The user stopped one alloc: it stops now, and a `pending` `alloc-stop` eval lets the
/// scheduler place its replacement when the job still wants it.
pub(super) fn stop_alloc_by_user(
    state: &mut ServerState,
    alloc_id: &str,
    eval_id: &str,
    now: i64,
    index: u64,
) -> Result<(), ApplyError> {
    let Some(old) = state.allocs.get(alloc_id).cloned() else {
        return Err(ApplyError::UnknownAlloc);
    };
    let key: JobKey = (old.namespace.to_string(), old.job_id.to_string());
    let current = state.jobs.get(&key).cloned();
    let eval_job = current.as_deref().unwrap_or(&old.job);
    let eval = EvalRecord::pending_at(eval_job, "alloc-stop", index, eval_id, now);
    state.put_eval(eval);
    if old.desired_status == AllocDesiredStatus::Run {
        set_stop(state, alloc_id, DESC_USER_STOP, None, now, index);
        wake_blocked(state, now, index);
    }
    Ok(())
}

/// Mark one alloc desired-stop (and, for lost, its client status).
fn set_stop(
    state: &mut ServerState,
    id: &str,
    desc: &str,
    client_status: Option<AllocClientStatus>,
    now: i64,
    index: u64,
) -> bool {
    state
        .update_alloc(id, |a| {
            a.desired_status = AllocDesiredStatus::Stop;
            a.desired_description = SharedStr::common(desc);
            if let Some(cs) = client_status {
                if !a.client_status.is_terminal() {
                    a.client_status = cs;
                    a.client_description = SharedStr::common(desc);
                }
            }
            a.modify_index = index;
            a.alloc_modify_index = index;
            a.modify_time = now;
        })
        .is_some()
}

/// Capacity may have appeared (a node became ready or eligible or changed, an alloc ended):
/// every blocked eval goes back to `pending`, the scheduler's queue.
pub(super) fn wake_blocked(state: &mut ServerState, now: i64, index: u64) {
    let ids: Vec<String> = state.blocked_evals.iter().cloned().collect();
    for id in ids {
        if let Some(e) = state.evals.get(&id) {
            let mut e = (**e).clone();
            e.status = EvalStatus::Pending;
            e.modify_index = index;
            e.modify_time = now;
            state.put_eval(e);
        }
    }
}

/// Whether `job` may place on `node` by its datacenters (globs) and node pool.
pub fn job_targets_node(job: &Job, node: &Node) -> bool {
    let pool = job.node_pool.as_deref().unwrap_or("default");
    if pool != "all" && pool != node.node_pool {
        return false;
    }
    let default = ["*".to_string()];
    let dcs = job.datacenters.as_deref().unwrap_or(&default);
    dcs.iter().any(|g| glob_match(g, &node.datacenter))
}

/// `*`-wildcard glob match (Nomad's datacenter globs).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// `node-update` evals, one per job affected by a change of `node`: jobs with allocs on it
/// that still matter (service: not fully terminal; batch: not client-terminal) and every
/// running system job that targets it. A job that already has a pending eval gets none (that
/// eval sees the change too).
pub(super) fn node_update_evals(state: &mut ServerState, node_id: &str, now: i64, index: u64) {
    let Some(node) = state.nodes.get(node_id).cloned() else {
        return;
    };
    let mut jobs: BTreeSet<JobKey> = BTreeSet::new();
    for a in state.allocs_on(node_id) {
        let wanted = match a.job.job_type() {
            JobType::Service => a.desired_status == AllocDesiredStatus::Run || !a.terminal(),
            JobType::Batch => !a.terminal(),
            JobType::System => true,
            _ => false,
        };
        if wanted {
            jobs.insert((a.namespace.to_string(), a.job_id.to_string()));
        }
    }
    for (key, job) in state.jobs.iter() {
        if job.job_type() == JobType::System && !job.stop && job_targets_node(job, &node) {
            jobs.insert(key.clone());
        }
    }
    if jobs.is_empty() {
        return;
    }
    let pending: BTreeSet<JobKey> = state
        .pending_evals()
        .filter(|e| e.wait_until == 0)
        .map(|e| (e.namespace.clone(), e.job_id.clone()))
        .collect();
    for (seq, key) in jobs.into_iter().enumerate() {
        if pending.contains(&key) {
            continue;
        }
        let Some(job) = state.jobs.get(&key).cloned() else {
            continue;
        };
        let id = derived_id(index, seq as u64, node_id);
        let mut e = EvalRecord::pending_at(&job, TRIGGER_NODE_UPDATE, index, &id, now);
        e.node_id = node_id.to_string();
        e.node_modify_index = node.modify_index;
        state.put_eval(e);
    }
}

/// Whether a group's allocs wait for a disconnected node (`disconnect.lost_after` or the
/// legacy `max_client_disconnect`).
pub fn group_can_disconnect(tg: &TaskGroup) -> bool {
    let lost_after = tg
        .disconnect
        .get("LostAfter")
        .map(|v| v.as_i64().unwrap_or(0) > 0 || v.as_str().is_some_and(|s| !s.is_empty()))
        .unwrap_or(false);
    let legacy = match &tg.max_client_disconnect {
        Value::Null => false,
        v => v.as_i64().map(|n| n > 0).unwrap_or(true),
    };
    lost_after || legacy
}

/// What a node status change does to its allocs and the queue (after the node record was
/// written): `down` → every non-terminal alloc `lost` (desired stop) and `node-update` evals;
/// `disconnected` → allocs of groups that may wait `unknown`, the others lost, and evals;
/// back to `ready` → evals, and blocked evals woken.
pub(super) fn node_status_changed(
    state: &mut ServerState,
    node_id: &str,
    old: NodeStatus,
    new: NodeStatus,
    now: i64,
    index: u64,
) {
    if old == new {
        return;
    }
    match new {
        NodeStatus::Down | NodeStatus::Disconnected => {
            // The evals first: they are made for the jobs whose allocs are still live here.
            node_update_evals(state, node_id, now, index);
            let ids: Vec<(String, bool)> = state
                .allocs_on(node_id)
                .filter(|a| !a.terminal() && a.desired_status == AllocDesiredStatus::Run)
                .map(|a| {
                    let wait = new == NodeStatus::Disconnected
                        && a.client_status != AllocClientStatus::Pending
                        && a.job.group(&a.task_group).is_some_and(group_can_disconnect);
                    (a.id.to_string(), wait)
                })
                .collect();
            for (id, wait) in ids {
                if wait {
                    state.update_alloc(&id, |a| {
                        a.client_status = AllocClientStatus::Unknown;
                        a.client_description = SharedStr::common(DESC_UNKNOWN);
                        a.modify_index = index;
                        a.alloc_modify_index = index;
                        a.modify_time = now;
                    });
                } else {
                    set_stop(
                        state,
                        &id,
                        DESC_LOST,
                        Some(AllocClientStatus::Lost),
                        now,
                        index,
                    );
                }
            }
        }
        NodeStatus::Ready => {
            node_update_evals(state, node_id, now, index);
            wake_blocked(state, now, index);
        }
        NodeStatus::Initializing => {}
    }
}

/// A node registered (again) or its metadata or eligibility changed: when it can take work
/// now, system jobs get evals for it and blocked evals wake.
pub(super) fn node_changed(state: &mut ServerState, node_id: &str, now: i64, index: u64) {
    let ready = state
        .nodes
        .get(node_id)
        .is_some_and(|n| node_schedulable(n));
    if ready {
        node_update_evals(state, node_id, now, index);
        wake_blocked(state, now, index);
    }
}

/// After a client update: an alloc that just ended frees capacity (blocked evals wake); one
/// that failed while wanted gets an `alloc-failure` eval (the reschedule policy decides).
pub(super) fn alloc_updated(
    state: &mut ServerState,
    before: &AllocRecord,
    after: &AllocRecord,
    now: i64,
    index: u64,
) {
    if before.terminal() || !after.terminal() {
        return;
    }
    if after.client_status == AllocClientStatus::Failed
        && after.desired_status == AllocDesiredStatus::Run
        && after.followup_eval_id.is_empty()
        && matches!(after.job.job_type(), JobType::Service | JobType::Batch)
    {
        let key: JobKey = (after.namespace.to_string(), after.job_id.to_string());
        if let Some(job) = state.jobs.get(&key).cloned() {
            let id = derived_id(index, 0, &after.id);
            let e = EvalRecord::pending_at(&job, TRIGGER_ALLOC_FAILURE, index, &id, now);
            state.put_eval(e);
        }
    }
    wake_blocked(state, now, index);
}

/// Apply a plan: stops, then placements node by node in plan order, each checked against
/// the node as it is now (ready, eligible, not draining, and the ask fits what its live
/// allocs leave); a placement that does not is refused, deterministically. With nothing
/// refused (or on the final attempt) the eval takes the plan's outcome.
pub(super) fn apply_plan(
    state: &mut ServerState,
    plan: &Plan,
    index: u64,
) -> Result<Applied, ApplyError> {
    let Some(eval) = state.evals.get(&plan.eval_id).cloned() else {
        return Err(ApplyError::UnknownEval);
    };
    if eval.status != EvalStatus::Pending {
        return Err(ApplyError::EvalNotPending);
    }
    let now = plan.now;
    let mut eval = (*eval).clone();
    eval.modify_index = index;
    eval.modify_time = now;
    eval.snapshot_index = index;
    let key: JobKey = (plan.namespace.clone(), plan.job_id.clone());
    let job = state.jobs.get(&key).cloned();
    let current = job.as_ref().map(|j| j.job_modify_index).unwrap_or(0);
    let mut result = PlanResult::default();
    if current != plan.job_modify_index {
        // The job changed after the snapshot: its newer eval is queued and plans for it.
        eval.status = EvalStatus::Complete;
        eval.status_description = "job changed while the plan was made".into();
        state.put_eval(eval);
        return Ok(Applied::Plan(result));
    }
    // Stops first: what they free is room for the placements.
    let mut next_of: BTreeMap<String, String> = BTreeMap::new();
    for p in &plan.placements {
        if !p.previous_alloc.is_empty() {
            next_of.insert(p.previous_alloc.clone(), p.id.clone());
        }
    }
    for st in &plan.stops {
        if set_stop(
            state,
            &st.alloc_id,
            &st.description,
            st.client_status,
            now,
            index,
        ) {
            result.stopped += 1;
        }
    }
    // Placements, grouped by node (in order of first appearance), checked against the node.
    // Each node is checked on its own, so the order of nodes does not change the outcome.
    let mut by_node: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in plan.placements.iter().enumerate() {
        by_node.entry(p.node_id.as_str()).or_default().push(i);
    }
    let mut refused_by_group: BTreeMap<String, u64> = BTreeMap::new();
    // Each accepted placement with its node's ID and name: the copies the node's allocs share.
    let mut accepted: Vec<(usize, SharedStr, SharedStr)> = Vec::new();
    for (node_id, idxs) in &by_node {
        let node = state.nodes.get(*node_id).cloned();
        let usable = node.as_ref().filter(|n| node_schedulable(n));
        let node_key = state.node_key(node_id);
        let node_name = node.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        let (cap, mut used) = match usable {
            Some(n) => (node_capacity(n), state.usage_of(node_id)),
            None => (Usage::default(), Usage::default()),
        };
        // The ports the node's live allocs hold, made only when a placement carries ports.
        let mut ports: Option<UsedPorts> = None;
        for &i in idxs {
            let p = &plan.placements[i];
            let ask = job
                .as_ref()
                .and_then(|j| j.group(&p.task_group))
                .map(group_ask);
            let fits = match (&usable, ask) {
                (Some(n), Some(ask)) if used.exceeds(&ask, &cap).is_none() => {
                    let ports_fit = p.ports.is_empty()
                        || ports
                            .get_or_insert_with(|| node_ports(state, n))
                            .try_add(&p.ports)
                            .is_ok();
                    if ports_fit {
                        used.add(&ask);
                    }
                    ports_fit
                }
                _ => false,
            };
            if fits {
                accepted.push((i, node_key.clone(), node_name.clone()));
            } else {
                *refused_by_group.entry(p.task_group.clone()).or_default() += 1;
                result.refused += 1;
            }
        }
    }
    accepted.sort_unstable_by_key(|(i, _, _)| *i);
    if let Some(job) = &job {
        // One copy of each of the job's names for all the plan's allocs: a sibling's when
        // the job has allocs, else new (the plan's eval ID is always new).
        let sib = state.job_sibling(&key).cloned();
        let shared = |mine: &str, theirs: Option<&SharedStr>| match theirs {
            Some(t) if t == mine => t.clone(),
            _ => SharedStr::from(mine),
        };
        let namespace = shared(&job.namespace, sib.as_ref().map(|s| &s.namespace));
        let job_id = shared(&job.id, sib.as_ref().map(|s| &s.job_id));
        let eval_id = SharedStr::from(plan.eval_id.as_str());
        let mut groups: Vec<SharedStr> = Vec::new();
        for (i, node_id, node_name) in accepted {
            let p = &plan.placements[i];
            let group = match groups.iter().find(|g| **g == p.task_group) {
                Some(g) => g.clone(),
                None => {
                    let g = shared(&p.task_group, sib.as_ref().map(|s| &s.task_group));
                    groups.push(g.clone());
                    g
                }
            };
            let names = AllocNames {
                namespace: namespace.clone(),
                job_id: job_id.clone(),
                group,
                eval_id: eval_id.clone(),
                node_id,
                node_name,
            };
            let at = AllocStamp {
                index,
                id: &p.id,
                now,
            };
            let mut a = AllocRecord::new_named(job, names, p.alloc_index, at);
            if !p.previous_alloc.is_empty() {
                // The replaced alloc's own copy of its ID (the table's key), when it is there.
                a.previous_allocation = match state.allocs.get_key_value(p.previous_alloc.as_str())
                {
                    Some((prev, _)) => prev.clone(),
                    None => SharedStr::from(p.previous_alloc.as_str()),
                };
                state.update_alloc(&p.previous_alloc, |prev| {
                    prev.next_allocation = a.id.clone();
                    prev.modify_index = index;
                });
            }
            a.reschedule_events = p.reschedule_events.clone().into();
            a.ports = p.ports.clone().into();
            state.insert_shared_alloc(a);
            result.placed += 1;
        }
    }
    if result.refused > 0 && !plan.final_attempt {
        // Left pending: the scheduler runs it again on the state this plan made.
        result.retry = true;
        state.put_eval(eval);
        return Ok(Applied::Plan(result));
    }
    for f in &plan.follow_ups {
        let Some(job) = &job else { break };
        let mut e = EvalRecord::pending_at(job, TRIGGER_RESCHEDULE, index, &f.eval_id, now);
        e.wait_until = f.wait_until;
        e.previous_eval = plan.eval_id.clone();
        e.status_description = "created for delayed rescheduling".into();
        state.put_eval(e);
        for id in &f.alloc_ids {
            state.update_alloc(id, |a| {
                a.followup_eval_id = SharedStr::from(f.eval_id.as_str());
                a.modify_index = index;
            });
        }
    }
    let mut queued = plan.queued.clone();
    for (g, n) in &refused_by_group {
        *queued.entry(g.clone()).or_default() += n;
    }
    let mut failed = plan.failed_tg_allocs.clone();
    for (g, n) in &refused_by_group {
        failed
            .entry(g.clone())
            .or_insert_with(|| refused_metric(*n));
    }
    eval.queued_allocations = queued;
    eval.failed_tg_allocs = failed;
    eval.status_description = plan.status_description.clone();
    let blocked =
        eval.queued_allocations.values().any(|q| *q > 0) && job.as_ref().is_some_and(|j| !j.stop);
    if blocked && eval.triggered_by == TRIGGER_QUEUED_ALLOCS {
        // A woken blocked eval that still cannot place everything waits again.
        eval.status = EvalStatus::Blocked;
        if eval.status_description.is_empty() {
            eval.status_description = super::jobs::eval::BLOCKED_FAILED_PLACEMENTS.into();
        }
        state.put_eval(eval);
        return Ok(Applied::Plan(result));
    }
    eval.status = EvalStatus::Complete;
    if blocked {
        let blocked_id = if plan.blocked_eval_id.is_empty() {
            derived_id(index, 0, &plan.eval_id)
        } else {
            plan.blocked_eval_id.clone()
        };
        if let Some(job) = &job {
            cancel_blocked_evals(state, &key, &blocked_id, now, index);
            let mut b = EvalRecord::blocked_after(&eval, job, &blocked_id);
            b.create_index = index;
            b.modify_index = index;
            b.snapshot_index = index;
            if result.refused > 0 && plan.failed_tg_allocs.is_empty() {
                b.triggered_by = TRIGGER_MAX_PLAN_ATTEMPTS.into();
            }
            eval.blocked_eval = blocked_id;
            state.put_eval(b);
        }
    }
    state.put_eval(eval);
    Ok(Applied::Plan(result))
}

/// The metric of placements apply refused (the nodes filled up after the plan was made).
fn refused_metric(n: u64) -> Value {
    serde_json::json!({
        "NodesEvaluated": 0, "NodesFiltered": 0, "NodesInPool": 0, "NodePool": "",
        "NodesAvailable": {}, "ClassFiltered": null, "ConstraintFiltered": null,
        "NodesExhausted": n, "ClassExhausted": null,
        "DimensionExhausted": {"plan refused": n}, "QuotaExhausted": null,
        "ResourcesExhausted": null, "Scores": null, "ScoreMetaData": null,
        "AllocationTime": 0, "CoalescedFailures": n.saturating_sub(1),
    })
}
