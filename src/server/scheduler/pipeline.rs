//! The scheduler's pipeline: plans made and not answered yet ("in flight": one in the log,
//! the next made meanwhile and submitted when the first is answered), and what the next plan
//! must know of them. On a replicated server a plan's answer takes a Raft round trip and the
//! fsyncs of leader and followers; the `scheduler` thread plans the next eval meanwhile, on
//! the published state plus the node usage of the plans in flight ([`planning_state`]), so
//! the plans do not count on the same room twice. Apply stays the
//! authority: it checks every placement against the node as it is then, and what it refuses
//! leaves the eval pending for another run, as without the pipeline.
//!
//! Rules that keep pipelined plans equal to plans made one by one:
//! - an eval with a plan in flight, and every eval of a job with a plan in flight, waits
//!   until that plan is answered ([`next_free_eval`]): the reconciler of a job never plans
//!   without its allocs of an earlier plan, so nothing is placed twice;
//! - a plan in flight that placed ports stops the pipeline until it is answered (the
//!   overlay carries usage, not ports);
//! - a plan already applied in the published state adds nothing more ([`Flight::unapplied_in`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::command::{JobKey, ServerState};
use crate::state::jobs::eval::EvalRecord;
use crate::state::plan::{group_ask, Plan, Usage};
use crate::state::status::EvalStatus;

/// Plans made and not answered yet, at most (the pipeline's depth): one in the log and the
/// next one made meanwhile.
pub const MAX_IN_FLIGHT: usize = 2;
/// Of those, plans in the log at once: the next is submitted when the one before is
/// answered. Every other write (a job registered) commits behind the plans in the log and
/// waits for their apply: with 2 and 4 plans in the log, job registrations during the fleet
/// bench on three servers took 4-5x as long (120-229 ms each) and the bench's submission
/// became its bottleneck; planning ahead needs no more than one there.
pub const MAX_SUBMITTED: usize = 1;
/// The longest the thread waits for a plan's answer before it gives the plan up (the eval
/// stays pending; the log's own deadline answers long before).
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// What the scheduler keeps of a plan in flight.
#[derive(Clone, Debug)]
pub struct Flight {
    pub eval_id: String,
    pub job: JobKey,
    /// The index of the published state the plan was made on.
    pub base_index: u64,
    /// What its placements ask of each node.
    pub usage: BTreeMap<String, Usage>,
    /// Whether a placement carries ports.
    pub ports: bool,
    pub placements: usize,
    /// Which plan of the eval this is (1: the first).
    pub attempt: u32,
    pub submitted: Instant,
}

impl Flight {
    /// The flight record of `plan`, made on `state` (published at `base_index`).
    pub fn of(state: &ServerState, base_index: u64, plan: &Plan, attempt: u32) -> Flight {
        let job = state
            .jobs
            .get(&(plan.namespace.clone(), plan.job_id.clone()));
        let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
        for p in &plan.placements {
            let ask = job
                .and_then(|j| j.group(&p.task_group))
                .map(group_ask)
                .unwrap_or_default();
            usage.entry(p.node_id.clone()).or_default().add(&ask);
        }
        Flight {
            eval_id: plan.eval_id.clone(),
            job: (plan.namespace.clone(), plan.job_id.clone()),
            base_index,
            usage,
            ports: plan.placements.iter().any(|p| !p.ports.is_empty()),
            placements: plan.placements.len(),
            attempt,
            submitted: Instant::now(),
        }
    }

    /// Whether `state` does not show the plan applied yet: its eval is still pending and
    /// unchanged since the plan was made (apply changes it whatever the outcome; nothing
    /// else changes a pending eval). When unsure it says applied: the next plan may then
    /// count on room this one takes, and apply refuses what does not fit (a retry).
    pub fn unapplied_in(&self, state: &ServerState) -> bool {
        state
            .evals
            .get(&self.eval_id)
            .is_some_and(|e| e.status == EvalStatus::Pending && e.modify_index <= self.base_index)
    }
}

/// The state the next plan is made on: `state` with the node usage of every plan in flight
/// it does not show applied yet. `state` itself when there is none (no copy).
pub fn planning_state<'a>(
    state: &Arc<ServerState>,
    flights: impl IntoIterator<Item = &'a Flight>,
) -> Arc<ServerState> {
    let mut spec: Option<ServerState> = None;
    for f in flights {
        if f.usage.is_empty() || !f.unapplied_in(state) {
            continue;
        }
        // Cheap: the tables are persistent maps, a clone shares them.
        let s = spec.get_or_insert_with(|| (**state).clone());
        for (node, ask) in &f.usage {
            match s.node_usage.get_mut(node.as_str()) {
                Some(u) => u.add(ask),
                None => {
                    let mut u = Usage::default();
                    u.add(ask);
                    s.node_usage.insert(node.as_str().into(), u);
                }
            }
        }
    }
    spec.map_or_else(|| state.clone(), Arc::new)
}

/// Whether a plan in flight is for this eval or its job (then the eval waits for it).
pub fn is_busy<'a>(e: &EvalRecord, mut flights: impl Iterator<Item = &'a Flight>) -> bool {
    flights.any(|f| f.eval_id == e.id || (f.job.0 == e.namespace && f.job.1 == e.job_id))
}

/// The oldest due pending eval that no plan in flight makes wait ([`is_busy`]), or the
/// earliest time a waiting free one is due ([`super::next_eval`] is this with no flights).
pub fn next_free_eval(
    state: &ServerState,
    now: i64,
    flights: &[&Flight],
) -> (Option<Arc<EvalRecord>>, Option<i64>) {
    let mut wake: Option<i64> = None;
    // Oldest first: the first whose wait is over is the one (and then no wake is needed).
    for e in state.pending_evals() {
        if is_busy(e, flights.iter().copied()) {
            continue;
        }
        if e.wait_until <= now {
            return (Some(e.clone()), None);
        }
        wake = Some(wake.map_or(e.wait_until, |w| w.min(e.wait_until)));
    }
    (None, wake)
}
