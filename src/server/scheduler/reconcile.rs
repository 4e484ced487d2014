//! One scheduling run: an eval and an immutable state in, a [`Plan`] out. The generic
//! scheduler (service, batch) reconciles each group's wanted count against its allocs —
//! stops for a stopped job, a removed group, a scale-down, a new job version (replaced whole),
//! a lost node, a migration; reschedules for failed allocs per the group's policy; then places
//! what is missing. The system schedulers (system, sysbatch) want one alloc per candidate node.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::feasible;
use super::rank::{Choice, Metric, OnNode, Placer};
use crate::state::command::ServerState;
use crate::state::jobs::alloc::{AllocRecord, RescheduleEvent};
use crate::state::jobs::eval::EvalRecord;
use crate::state::jobs::spec::{Job, TaskGroup, SECOND};
use crate::state::plan::{FollowUp, Placement, Plan, PlanStop, DESC_LOST};
use crate::state::status::{AllocClientStatus, AllocDesiredStatus, JobType, NodeStatus};

/// Nomad's alloc descriptions.
pub const DESC_JOB_STOPPED: &str = "alloc not needed since job is stopped";
pub const DESC_JOB_UPDATE: &str = "alloc not needed due to job update";
pub const DESC_MIGRATING: &str = "alloc is being migrated";
pub const DESC_RESCHEDULED: &str = "alloc was rescheduled because it failed";
/// A reschedule due within this long is made now rather than by a follow-up eval.
pub const RESCHEDULE_NOW_WINDOW: i64 = SECOND;
/// Delayed reschedules due within one window share one follow-up eval.
pub const FOLLOWUP_BATCH_WINDOW: i64 = 5 * SECOND;
/// An unlimited policy keeps this many past reschedule events on the new alloc.
pub const MAX_UNLIMITED_EVENTS: usize = 5;

/// A group's `reschedule` block with the job type's defaults (ref §3.4).
#[derive(Clone, Debug, PartialEq)]
pub struct ReschedulePolicy {
    pub attempts: i64,
    pub interval: i64,
    pub delay: i64,
    pub delay_function: String,
    pub max_delay: i64,
    pub unlimited: bool,
}

impl ReschedulePolicy {
    /// The policy of `tg` in a job of type `t` (`None`: system jobs never reschedule).
    pub fn of(t: JobType, tg: &TaskGroup) -> Option<ReschedulePolicy> {
        let mut p = match t {
            JobType::Service => ReschedulePolicy {
                attempts: 0,
                interval: 0,
                delay: 30 * SECOND,
                delay_function: "exponential".into(),
                max_delay: 3600 * SECOND,
                unlimited: true,
            },
            JobType::Batch => ReschedulePolicy {
                attempts: 1,
                interval: 24 * 3600 * SECOND,
                delay: 5 * SECOND,
                delay_function: "constant".into(),
                max_delay: 0,
                unlimited: false,
            },
            _ => return None,
        };
        let v = &tg.reschedule_policy;
        let int = |k: &str| v.get(k).and_then(Value::as_i64);
        if let Some(x) = int("Attempts") {
            p.attempts = x;
        }
        if let Some(x) = int("Interval") {
            p.interval = x;
        }
        if let Some(x) = int("Delay") {
            p.delay = x;
        }
        if let Some(x) = int("MaxDelay") {
            p.max_delay = x;
        }
        if let Some(f) = v.get("DelayFunction").and_then(Value::as_str) {
            if !f.is_empty() {
                p.delay_function = f.to_string();
            }
        }
        if let Some(u) = v.get("Unlimited").and_then(Value::as_bool) {
            p.unlimited = u;
        }
        Some(p)
    }

    /// The delay before the next reschedule after `events`.
    pub fn next_delay(&self, events: &[RescheduleEvent]) -> i64 {
        let d = match self.delay_function.as_str() {
            "exponential" => events.last().map(|e| e.delay * 2).unwrap_or(self.delay),
            "fibonacci" => match events {
                [.., a, b] => a.delay + b.delay,
                [a] => a.delay.max(self.delay),
                [] => self.delay,
            },
            _ => self.delay,
        };
        if self.max_delay > 0 && self.delay_function != "constant" {
            d.min(self.max_delay)
        } else {
            d
        }
    }

    /// Whether an alloc that failed at `failed_at` after `events` may be rescheduled.
    pub fn allows(&self, events: &[RescheduleEvent], failed_at: i64) -> bool {
        if self.unlimited {
            return true;
        }
        if self.attempts <= 0 {
            return false;
        }
        let recent = events
            .iter()
            .filter(|e| failed_at - e.reschedule_time < self.interval)
            .count();
        (recent as i64) < self.attempts
    }
}

/// What the run decided to place.
struct Want {
    group: String,
    index: u32,
    previous: String,
    events: Vec<RescheduleEvent>,
    penalty: Vec<String>,
}

/// The state of one run.
struct Run<'a> {
    state: &'a ServerState,
    eval: &'a EvalRecord,
    now: i64,
    plan: Plan,
    stopping: HashSet<String>,
    wants: Vec<Want>,
    /// Delayed reschedules: batch window end → the failed allocs due in it.
    followups: BTreeMap<i64, Vec<String>>,
}

impl Run<'_> {
    fn stop(&mut self, a: &AllocRecord, desc: &str, lost: bool) {
        if self.stopping.insert(a.id.to_string()) {
            self.plan.stops.push(PlanStop {
                alloc_id: a.id.to_string(),
                description: desc.to_string(),
                client_status: lost.then_some(AllocClientStatus::Lost),
            });
        }
    }
}

/// Make the plan for `eval` on `state` (IDs from `new_id`, times from `now`).
pub fn schedule(
    state: &ServerState,
    eval: &EvalRecord,
    now: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let key = (eval.namespace.clone(), eval.job_id.clone());
    let job = state.jobs.get(&key).cloned();
    let mut run = Run {
        state,
        eval,
        now,
        plan: Plan {
            eval_id: eval.id.clone(),
            namespace: eval.namespace.clone(),
            job_id: eval.job_id.clone(),
            job_modify_index: job.as_ref().map(|j| j.job_modify_index).unwrap_or(0),
            stops: Vec::new(),
            placements: Vec::new(),
            failed_tg_allocs: BTreeMap::new(),
            queued: BTreeMap::new(),
            blocked_eval_id: String::new(),
            status_description: String::new(),
            follow_ups: Vec::new(),
            final_attempt: false,
            now,
        },
        stopping: HashSet::new(),
        wants: Vec::new(),
        followups: BTreeMap::new(),
    };
    let mut allocs: Vec<Arc<AllocRecord>> = state.allocs_of(&key).cloned().collect();
    allocs.sort_by_key(|a| (a.create_index, a.id.clone()));
    let job = match job {
        // A periodic or parameterized parent is never placed (its children are).
        Some(j) if crate::state::jobs::launch::is_parent(&j) => return run.plan,
        Some(j) if !j.stop => j,
        _ => {
            for a in allocs
                .iter()
                .filter(|a| a.desired_status == AllocDesiredStatus::Run)
            {
                run.stop(a, DESC_JOB_STOPPED, false);
            }
            return run.plan;
        }
    };
    // A purged job's allocs (another `CreateIndex`) are not this job's: stopped when still
    // wanted, never counted as its placements.
    let (allocs, older): (Vec<_>, Vec<_>) = allocs
        .into_iter()
        .partition(|a| crate::state::jobs::history::of_incarnation(&job, a));
    for a in older
        .iter()
        .filter(|a| a.desired_status == AllocDesiredStatus::Run)
    {
        run.stop(a, DESC_JOB_STOPPED, false);
    }
    for tg in job.task_groups.iter() {
        run.plan.queued.insert(tg.name.clone(), 0);
    }
    for a in allocs
        .iter()
        .filter(|a| a.desired_status == AllocDesiredStatus::Run)
    {
        if job.group(&a.task_group).is_none() {
            run.stop(a, DESC_JOB_UPDATE, false);
        }
    }
    let system = matches!(job.job_type(), JobType::System | JobType::Sysbatch);
    if system {
        system_stops(&mut run, &job, &allocs);
    } else {
        for tg in job.task_groups.iter() {
            let mine: Vec<&Arc<AllocRecord>> =
                allocs.iter().filter(|a| a.task_group == tg.name).collect();
            generic_group(&mut run, &job, tg, &mine);
        }
    }
    // Follow-up evals for delayed reschedules, one per batch window.
    for (wait_until, ids) in std::mem::take(&mut run.followups) {
        run.plan.follow_ups.push(FollowUp {
            eval_id: new_id(),
            wait_until,
            alloc_ids: ids,
        });
    }
    let stopping = run.stopping.clone();
    let mut placer = Placer::new(state, &job, &eval.id, stopping);
    let mut failed: BTreeMap<String, Metric> = BTreeMap::new();
    if system {
        system_place(&mut run, &job, &allocs, &mut placer, &mut failed, new_id);
    } else {
        let wants = std::mem::take(&mut run.wants);
        for w in wants {
            let Some(tg) = job.group(&w.group) else {
                continue;
            };
            if let Some(m) = failed.get_mut(&w.group) {
                m.coalesced_failures += 1;
                *run.plan.queued.entry(w.group.clone()).or_default() += 1;
                continue;
            }
            match placer.select(tg, &w.penalty) {
                Choice::Placed(node_id, ports) => run.plan.placements.push(Placement {
                    id: new_id(),
                    node_id,
                    task_group: w.group.clone(),
                    alloc_index: w.index,
                    previous_alloc: w.previous,
                    reschedule_events: w.events,
                    ports,
                }),
                Choice::Failed(m) => {
                    *run.plan.queued.entry(w.group.clone()).or_default() += 1;
                    failed.insert(w.group.clone(), m);
                }
            }
        }
    }
    if !failed.is_empty() {
        for (g, m) in &failed {
            run.plan.failed_tg_allocs.insert(g.clone(), m.to_json());
        }
        let blocks = run.plan.queued.values().any(|q| *q > 0);
        if blocks {
            run.plan.blocked_eval_id = new_id();
        }
        run.plan.status_description = failure_description(&job, &placer, &failed);
    }
    run.plan
}

/// Why placements failed, when a node says (a disabled driver's advice).
fn failure_description(
    job: &Job,
    placer: &Placer<'_>,
    failed: &BTreeMap<String, Metric>,
) -> String {
    for (g, m) in failed {
        if !m
            .constraint_filtered
            .contains_key(feasible::FILTER_MISSING_DRIVERS)
        {
            continue;
        }
        let Some(tg) = job.group(g) else { continue };
        for n in &placer.nodes {
            if let Some((driver, advice)) = feasible::driver_advice(tg, n) {
                return format!("driver {driver:?} is not available on this node: {advice}");
            }
        }
    }
    String::new()
}

/// The failure time of an alloc: its last change (the client update that reported it).
fn failed_at(a: &AllocRecord) -> i64 {
    a.modify_time
}

/// One group of a service or batch job: what stops, what is rescheduled, what is placed.
fn generic_group(run: &mut Run<'_>, job: &Job, tg: &TaskGroup, mine: &[&Arc<AllocRecord>]) {
    let batch = job.is_batch();
    let count = tg.count().max(0) as u32;
    // index → allocs holding it; index → the alloc a new one there replaces.
    let mut kept: BTreeMap<u32, Vec<&Arc<AllocRecord>>> = BTreeMap::new();
    let mut freed: BTreeMap<u32, (String, Vec<RescheduleEvent>, Vec<String>)> = BTreeMap::new();
    let policy = ReschedulePolicy::of(job.job_type(), tg);
    for a in mine {
        let current = a.job.version == job.version;
        if a.desired_status != AllocDesiredStatus::Run {
            if batch && current && a.client_status == AllocClientStatus::Complete {
                kept.entry(a.alloc_index).or_default().push(a);
            } else if a.next_allocation.is_empty() {
                freed
                    .entry(a.alloc_index)
                    .or_insert_with(|| (a.id.to_string(), Vec::new(), Vec::new()));
            }
            continue;
        }
        let node = run.state.nodes.get(a.node_id.as_str());
        let node_gone = node.is_none_or(|n| n.status == NodeStatus::Down);
        if node_gone && !a.terminal() {
            run.stop(a, DESC_LOST, true);
            freed.insert(a.alloc_index, (a.id.to_string(), Vec::new(), Vec::new()));
            continue;
        }
        if a.desired_transition.should_migrate() && !a.terminal() {
            run.stop(a, DESC_MIGRATING, false);
            freed.insert(a.alloc_index, (a.id.to_string(), Vec::new(), Vec::new()));
            continue;
        }
        if !current {
            run.stop(a, DESC_JOB_UPDATE, false);
            freed.insert(a.alloc_index, (a.id.to_string(), Vec::new(), Vec::new()));
            continue;
        }
        if a.client_status == AllocClientStatus::Failed {
            let Some(p) = &policy else {
                kept.entry(a.alloc_index).or_default().push(a);
                continue;
            };
            let at = failed_at(a);
            let forced = a.desired_transition.force_reschedule == Some(true);
            if !forced && !p.allows(&a.reschedule_events, at) {
                kept.entry(a.alloc_index).or_default().push(a);
                continue;
            }
            let delay = p.next_delay(&a.reschedule_events);
            let due = at + delay;
            let is_followup = !a.followup_eval_id.is_empty() && a.followup_eval_id == run.eval.id;
            if forced || is_followup || due <= run.now + RESCHEDULE_NOW_WINDOW {
                run.stop(a, DESC_RESCHEDULED, false);
                let mut events: Vec<RescheduleEvent> = if p.unlimited {
                    let skip = a
                        .reschedule_events
                        .len()
                        .saturating_sub(MAX_UNLIMITED_EVENTS);
                    a.reschedule_events[skip..].to_vec()
                } else {
                    a.reschedule_events
                        .iter()
                        .filter(|e| run.now - e.reschedule_time < p.interval)
                        .cloned()
                        .collect()
                };
                events.push(RescheduleEvent {
                    reschedule_time: run.now,
                    prev_alloc_id: a.id.to_string(),
                    prev_node_id: a.node_id.to_string(),
                    delay,
                });
                let mut penalty: Vec<String> =
                    events.iter().map(|e| e.prev_node_id.clone()).collect();
                penalty.dedup();
                freed.insert(a.alloc_index, (a.id.to_string(), events, penalty));
            } else {
                if a.followup_eval_id.is_empty() {
                    let window =
                        due - due.rem_euclid(FOLLOWUP_BATCH_WINDOW) + FOLLOWUP_BATCH_WINDOW;
                    run.followups
                        .entry(window)
                        .or_default()
                        .push(a.id.to_string());
                }
                kept.entry(a.alloc_index).or_default().push(a);
            }
            continue;
        }
        kept.entry(a.alloc_index).or_default().push(a);
    }
    // Scale down (and duplicates): the highest indexes go first.
    let mut holding: Vec<(u32, &Arc<AllocRecord>)> = Vec::new();
    for (idx, v) in &kept {
        for (k, a) in v.iter().enumerate() {
            let live = a.desired_status == AllocDesiredStatus::Run;
            if k > 0 && live {
                run.stop(a, DESC_JOB_UPDATE, false);
            } else if k == 0 {
                holding.push((*idx, a));
            }
        }
    }
    let mut in_use: BTreeSet<u32> = holding.iter().map(|(i, _)| *i).collect();
    while in_use.len() as u32 > count {
        let Some(&(idx, a)) = holding.iter().rev().find(|(i, _)| in_use.contains(i)) else {
            break;
        };
        if a.desired_status == AllocDesiredStatus::Run {
            run.stop(a, DESC_JOB_UPDATE, false);
        }
        in_use.remove(&idx);
    }
    // Place what is missing: replacements first (they keep their index), then new indexes.
    let mut missing = count.saturating_sub(in_use.len() as u32);
    let mut order: Vec<u32> = freed
        .keys()
        .copied()
        .filter(|i| *i < count && !in_use.contains(i))
        .collect();
    let mut next = 0u32;
    while (order.len() as u32) < missing {
        if !in_use.contains(&next) && !order.contains(&next) {
            order.push(next);
        }
        next += 1;
    }
    for idx in order {
        if missing == 0 {
            break;
        }
        missing -= 1;
        in_use.insert(idx);
        let (previous, events, penalty) = freed.remove(&idx).unwrap_or_default();
        run.wants.push(Want {
            group: tg.name.clone(),
            index: idx,
            previous,
            events,
            penalty,
        });
    }
}

/// System jobs: stops (lost nodes, old versions, a stopped group) before placing.
fn system_stops(run: &mut Run<'_>, job: &Job, allocs: &[Arc<AllocRecord>]) {
    for a in allocs
        .iter()
        .filter(|a| a.desired_status == AllocDesiredStatus::Run)
    {
        let node = run.state.nodes.get(a.node_id.as_str());
        if node.is_none_or(|n| n.status == NodeStatus::Down) && !a.terminal() {
            run.stop(a, DESC_LOST, true);
        } else if a.job.version != job.version && !a.terminal() {
            run.stop(a, DESC_JOB_UPDATE, false);
        } else if a.desired_transition.should_migrate() && !a.terminal() {
            run.stop(a, DESC_MIGRATING, false);
        }
    }
}

/// System jobs: one alloc of each group per candidate node that has none.
fn system_place(
    run: &mut Run<'_>,
    job: &Job,
    allocs: &[Arc<AllocRecord>],
    placer: &mut Placer<'_>,
    failed: &mut BTreeMap<String, Metric>,
    new_id: &mut dyn FnMut() -> String,
) {
    let sysbatch = job.job_type() == JobType::Sysbatch;
    let nodes: Vec<String> = placer.nodes.iter().map(|n| n.id.clone()).collect();
    for tg in job.task_groups.iter() {
        let mut have: BTreeMap<&str, &Arc<AllocRecord>> = BTreeMap::new();
        for a in allocs.iter().filter(|a| a.task_group == tg.name) {
            let holds = (a.desired_status == AllocDesiredStatus::Run
                && !run.stopping.contains(a.id.as_str())
                && (sysbatch || !a.terminal() || a.client_status == AllocClientStatus::Failed))
                || (sysbatch
                    && a.job.version == job.version
                    && a.client_status == AllocClientStatus::Complete);
            if holds {
                have.insert(a.node_id.as_str(), a);
            }
        }
        let replaced: BTreeMap<&str, &Arc<AllocRecord>> = allocs
            .iter()
            .filter(|a| {
                a.task_group == tg.name
                    && (run.stopping.contains(a.id.as_str())
                        || (a.desired_status != AllocDesiredStatus::Run
                            && a.next_allocation.is_empty()))
            })
            .map(|a| (a.node_id.as_str(), a))
            .collect();
        let mut filtered: Option<Metric> = None;
        let mut any_feasible = false;
        for node_id in &nodes {
            if have.contains_key(node_id.as_str()) {
                any_feasible = true;
                continue;
            }
            match placer.select_on(tg, node_id) {
                OnNode::Placed(ports) => {
                    any_feasible = true;
                    run.plan.placements.push(Placement {
                        id: new_id(),
                        node_id: node_id.clone(),
                        task_group: tg.name.clone(),
                        alloc_index: 0,
                        previous_alloc: replaced
                            .get(node_id.as_str())
                            .map(|a| a.id.to_string())
                            .unwrap_or_default(),
                        reschedule_events: Vec::new(),
                        ports,
                    });
                }
                OnNode::Exhausted(m) => {
                    any_feasible = true;
                    *run.plan.queued.entry(tg.name.clone()).or_default() += 1;
                    match failed.get_mut(&tg.name) {
                        Some(f) => f.coalesced_failures += 1,
                        None => {
                            failed.insert(tg.name.clone(), m);
                        }
                    }
                }
                OnNode::Filtered(m) => {
                    let f = filtered.get_or_insert_with(|| placer.empty_metric());
                    f.nodes_evaluated += m.nodes_evaluated;
                    f.nodes_filtered += m.nodes_filtered;
                    for (k, v) in m.constraint_filtered {
                        *f.constraint_filtered.entry(k).or_default() += v;
                    }
                    for (k, v) in m.class_filtered {
                        *f.class_filtered.entry(k).or_default() += v;
                    }
                }
            }
        }
        // Filtered nodes are skipped silently unless no node at all could run the group.
        if !any_feasible && !failed.contains_key(&tg.name) {
            failed.insert(
                tg.name.clone(),
                filtered.unwrap_or_else(|| placer.empty_metric()),
            );
        }
    }
}
