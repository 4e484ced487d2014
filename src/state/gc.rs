//! Server garbage collection, as Nomad's core scheduler does it: finished jobs, evaluations
//! and allocations old enough are forgotten, so a long-running server (dispatched and periodic
//! children, replaced allocations, every eval) does not grow without end.
//!
//! The leader chooses what to reap from a published snapshot and the clock
//! ([`candidates`]); one replicated `Command::GcReap` removes it ([`reap`]). Apply reads no
//! clock: it re-checks only what the state itself says (still present, still finished), so a
//! reap computed on an older snapshot never removes something that came back to life.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::{JobKey, ServerState};
use super::jobs::alloc::AllocRecord;
use super::jobs::eval::EvalRecord;
use super::jobs::launch::is_parent;
use super::jobs::spec::Job;
use super::status::{AllocClientStatus, EvalStatus, JobStatus, JobType};

/// How old finished things must be before they are collected (Nomad's
/// `server.job_gc_threshold`, `eval_gc_threshold`, `batch_eval_gc_threshold`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GcThresholds {
    pub job: Duration,
    pub eval: Duration,
    pub batch_eval: Duration,
}

impl GcThresholds {
    /// `PUT /v1/system/gc`: everything finished, whatever its age.
    pub const FORCE: GcThresholds = GcThresholds {
        job: Duration::ZERO,
        eval: Duration::ZERO,
        batch_eval: Duration::ZERO,
    };
}

impl Default for GcThresholds {
    /// Nomad's defaults: 4 h for jobs, 1 h for evals, 24 h for batch evals.
    fn default() -> GcThresholds {
        GcThresholds {
            job: Duration::from_secs(4 * 3600),
            eval: Duration::from_secs(3600),
            batch_eval: Duration::from_secs(24 * 3600),
        }
    }
}

/// The leader's periodic collection: how often it runs (`server.job_gc_interval`, Nomad's
/// default 5 min) and what it reaps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GcPolicy {
    pub interval: Duration,
    pub thresholds: GcThresholds,
}

/// Nomad's `server.job_gc_interval` default.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(300);

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            interval: DEFAULT_GC_INTERVAL,
            thresholds: GcThresholds::default(),
        }
    }
}

/// What one collection removes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reap {
    pub jobs: Vec<JobKey>,
    pub evals: Vec<String>,
    pub allocs: Vec<String>,
}

impl Reap {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.evals.is_empty() && self.allocs.is_empty()
    }
}

/// What a reap removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reaped {
    pub jobs: usize,
    pub evals: usize,
    pub allocs: usize,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn eval_finished(e: &EvalRecord) -> bool {
    matches!(
        e.status,
        EvalStatus::Complete | EvalStatus::Failed | EvalStatus::Canceled
    )
}

fn job_dead(job: &Job) -> bool {
    job.status == JobStatus::Dead.as_str()
}

/// An alloc done on the client that nothing still waits on: its job is gone, stopped or dead,
/// or it did not fail, or its replacement exists (a failed alloc of a live job may still be
/// rescheduled from).
fn alloc_finished(state: &ServerState, a: &AllocRecord) -> bool {
    if !a.terminal() {
        return false;
    }
    let job = state
        .jobs
        .get(&(a.namespace.to_string(), a.job_id.to_string()));
    match job {
        None => true,
        Some(j) => {
            j.stop
                || job_dead(j)
                || a.client_status != AllocClientStatus::Failed
                || !a.next_allocation.is_empty()
                || j.create_index != a.job.create_index
        }
    }
}

/// Whether a batch eval's job lets its allocs go (Nomad keeps a live batch job's allocs: they
/// are its record of what ran).
fn batch_job_done(state: &ServerState, e: &EvalRecord) -> bool {
    match state.jobs.get(&(e.namespace.clone(), e.job_id.clone())) {
        None => true,
        Some(j) => job_dead(j),
    }
}

/// What is old and finished enough to collect at `now` (unix nanoseconds).
pub fn candidates(state: &ServerState, now: i64, t: &GcThresholds) -> Reap {
    let mut reap = Reap::default();
    let mut taken_evals: BTreeSet<String> = BTreeSet::new();
    let mut taken_allocs: BTreeSet<String> = BTreeSet::new();

    // Jobs first: a dead job that is stopped or batch, idle past the job threshold, goes with
    // every eval and alloc of it.
    let job_cut = now.saturating_sub(nanos(t.job));
    for (key, job) in state.jobs.iter() {
        if !job_dead(job) || (is_parent(job) && !job.stop) {
            continue;
        }
        if !(job.stop || job.job_type().is_batch()) {
            continue;
        }
        let evals: Vec<&Arc<EvalRecord>> = state.evals_of(key).collect();
        let allocs: Vec<&Arc<AllocRecord>> = state.allocs_of(key).collect();
        let idle = job.submit_time <= job_cut
            && evals
                .iter()
                .all(|e| eval_finished(e) && e.modify_time <= job_cut)
            && allocs
                .iter()
                .all(|a| a.terminal() && a.modify_time <= job_cut);
        if !idle {
            continue;
        }
        reap.jobs.push(key.clone());
        taken_evals.extend(evals.iter().map(|e| e.id.clone()));
        taken_allocs.extend(allocs.iter().map(|a| a.id.to_string()));
    }

    // Evals of jobs that stay: finished, past their threshold, and with every alloc they
    // made finished too; finished allocs go even when their eval must stay.
    for e in state.evals.values() {
        if taken_evals.contains(&e.id) || !eval_finished(e) {
            continue;
        }
        let batch = matches!(e.eval_type, JobType::Batch | JobType::Sysbatch);
        let cut = now.saturating_sub(nanos(if batch { t.batch_eval } else { t.eval }));
        if e.modify_time > cut {
            continue;
        }
        if batch && !batch_job_done(state, e) {
            continue;
        }
        let key: JobKey = (e.namespace.clone(), e.job_id.clone());
        let mut all = true;
        for a in state.allocs_of(&key).filter(|a| a.eval_id == e.id) {
            if alloc_finished(state, a) && a.modify_time <= cut {
                taken_allocs.insert(a.id.to_string());
            } else {
                all = false;
            }
        }
        if all {
            taken_evals.insert(e.id.clone());
        }
    }
    reap.evals = taken_evals.into_iter().collect();
    reap.allocs = taken_allocs.into_iter().collect();
    reap
}

/// Remove what `r` names that is still finished (apply: deterministic, no clock).
pub fn reap(state: &mut ServerState, r: &Reap) -> Reaped {
    let mut done = Reaped::default();
    for key in &r.jobs {
        let Some(job) = state.jobs.get(key) else {
            continue;
        };
        let live = state.allocs_of(key).any(|a| !a.terminal());
        if !job_dead(job) || live {
            continue;
        }
        state.jobs.remove(key);
        state.scaling_events.remove(key);
        super::jobs::history::remove_versions(state, key);
        done.jobs += 1;
    }
    for id in &r.evals {
        let finished = state.evals.get(id).is_some_and(|e| eval_finished(e));
        if finished {
            state.remove_eval(id);
            done.evals += 1;
        }
    }
    for id in &r.allocs {
        let finished = state.allocs.get(id.as_str()).is_some_and(|a| a.terminal());
        if finished {
            state.remove_alloc(id);
            done.allocs += 1;
        }
    }
    done
}
