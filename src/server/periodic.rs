//! The periodic dispatcher: one `periodic` thread launches the children of periodic jobs
//! (`<id>/periodic-<unix>`) at their cron times, in their `time_zone`, skipping a launch
//! while an earlier child still runs when `prohibit_overlap` says so. Each launch is a
//! `Command::JobLaunch` (it replicates with the log); what it remembers between launches is
//! only the next time per job, rebuilt from state when it starts: the last launch is the
//! newest child's launch time (or the job's submit time), and a launch missed while no
//! dispatcher ran is made once, at start, as Nomad's leader does on election.
//!
//! A leader duty: the composition root starts it ([`PeriodicDispatcher::start`]) where this
//! server leads and stops it ([`PeriodicDispatcher::shutdown`]) when it no longer does. It
//! sleeps on the index counter until the next launch (at most [`IDLE_WAKE`]); a change to
//! the jobs table wakes it to look again. No busy loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::state::command::{JobKey, ServerState, Table};
use crate::state::jobs::launch::{self, Schedule, TRIGGER_PERIODIC};
use crate::state::jobs::spec::Job;
use crate::state::jobs::Workloads;
use crate::state::IndexCounter;

/// The longest the thread sleeps before it looks again with nothing due.
pub const IDLE_WAKE: Duration = Duration::from_secs(60);
/// After a failed launch proposal (the store failed), the wait before the next look.
pub const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// What the dispatcher knows of one periodic job.
#[derive(Clone, Debug)]
struct Tracked {
    /// The job version this was computed for: a changed spec starts over.
    job_modify_index: u64,
    /// The next launch (Unix seconds); `None` when the schedule names no future time.
    next: Option<i64>,
}

/// The running dispatcher thread.
pub struct PeriodicDispatcher {
    stop: Arc<AtomicBool>,
    index: Arc<IndexCounter>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PeriodicDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeriodicDispatcher").finish_non_exhaustive()
    }
}

impl PeriodicDispatcher {
    /// Start the `periodic` thread over `workloads`' published state.
    pub fn start(
        workloads: Arc<Workloads>,
        index: Arc<IndexCounter>,
    ) -> std::io::Result<PeriodicDispatcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, index) = (stop.clone(), index.clone());
            std::thread::Builder::new()
                .name("periodic".into())
                .spawn(move || worker(&workloads, &index, &stop))?
        };
        Ok(PeriodicDispatcher {
            stop,
            index,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Stop the thread (after the launch it is proposing) and join it.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.index.notify();
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for PeriodicDispatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Bring `tracked` in line with the periodic jobs of `state`: new or changed jobs get their
/// next launch from their last one; the jobs whose last launch's successor already passed
/// (missed while nothing dispatched) are returned to be launched now, once.
fn resync(state: &ServerState, tracked: &mut HashMap<JobKey, Tracked>, now: i64) -> Vec<JobKey> {
    let mut missed = Vec::new();
    tracked.retain(|k, _| {
        state
            .jobs
            .get(k)
            .is_some_and(|j| launch::is_periodic_active(j))
    });
    for (key, job) in state.jobs.iter() {
        if !launch::is_periodic_active(job) {
            continue;
        }
        if tracked
            .get(key)
            .is_some_and(|t| t.job_modify_index == job.job_modify_index)
        {
            continue;
        }
        let Some(schedule) = Schedule::of(job) else {
            continue;
        };
        let last = launch::last_launch(state, job);
        let mut next = schedule.next_after(last);
        if next.is_some_and(|n| n < now) {
            missed.push(key.clone());
            next = schedule.next_after(now);
        }
        tracked.insert(
            key.clone(),
            Tracked {
                job_modify_index: job.job_modify_index,
                next,
            },
        );
    }
    missed
}

/// Launch one child of `job` at `at`, unless `prohibit_overlap` finds one still running.
fn launch_one(w: &Workloads, state: &ServerState, job: &Job, at: i64, overlap_ok: bool) -> bool {
    if !overlap_ok && launch::running_children(state, job) {
        log::info!(
            "periodic job {:?} (namespace {:?}): launch skipped, a previous child still runs (prohibit_overlap)",
            job.id,
            job.namespace
        );
        return true;
    }
    match w.launch(launch::periodic_child(job, at), TRIGGER_PERIODIC) {
        Ok(Some(r)) => {
            log::info!(
                "periodic job {:?}: launched {}{}{at} (eval {})",
                job.id,
                job.id,
                launch::PERIODIC_SUFFIX,
                r.eval_id
            );
            true
        }
        // Stopped or removed meanwhile: the next look drops it.
        Ok(None) => true,
        Err(e) => {
            log::error!("periodic job {:?}: cannot launch: {e}", job.id);
            false
        }
    }
}

fn worker(w: &Workloads, index: &IndexCounter, stop: &AtomicBool) {
    let mut tracked: HashMap<JobKey, Tracked> = HashMap::new();
    let mut seen: Option<Table<JobKey, Job>> = None;
    while !stop.load(Ordering::SeqCst) && !index.is_closed() {
        let generation = index.generation();
        let state = w.state();
        let now_ns = crate::time::unix_now_nanos();
        let now = now_ns.div_euclid(1_000_000_000);
        let mut ok = true;
        // Only a change to the jobs table can change what is tracked.
        if seen.as_ref().is_none_or(|s| !s.ptr_eq(&state.jobs)) {
            for key in resync(&state, &mut tracked, now) {
                if let Some(job) = state.jobs.get(&key) {
                    let overlap_ok = Schedule::of(job).is_some_and(|s| !s.prohibit_overlap);
                    ok &= launch_one(w, &state, job, now, overlap_ok);
                }
            }
            seen = Some(state.jobs.clone());
        }
        let due: Vec<(JobKey, i64)> = tracked
            .iter()
            .filter_map(|(k, t)| t.next.filter(|n| *n <= now).map(|n| (k.clone(), n)))
            .collect();
        for (key, at) in due {
            let Some(job) = state.jobs.get(&key) else {
                continue;
            };
            let Some(schedule) = Schedule::of(job) else {
                continue;
            };
            if let Some(t) = tracked.get_mut(&key) {
                t.next = schedule.next_after(at);
            }
            ok &= launch_one(w, &state, job, at, !schedule.prohibit_overlap);
        }
        let mut wait = if ok { IDLE_WAKE } else { ERROR_BACKOFF };
        if let Some(next) = tracked.values().filter_map(|t| t.next).min() {
            let ns = next
                .saturating_mul(1_000_000_000)
                .saturating_sub(now_ns)
                .max(0);
            wait = wait.min(Duration::from_nanos(ns as u64));
        }
        index.wait_for_change(generation, Instant::now() + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn periodic(id: &str, submitted: i64) -> Job {
        let mut j = Job::from_json(json!({"ID": id, "Type": "batch", "TaskGroups": [],
            "Periodic": {"Spec": "0 * * * *"}}))
        .unwrap();
        j.canonicalize("global");
        j.submit_time = submitted * 1_000_000_000;
        j.job_modify_index = 7;
        j
    }

    #[test]
    fn a_launch_missed_while_nothing_dispatched_is_made_once_and_the_schedule_goes_on() {
        let now = 1_800_000_000 + 1800; // half past an hour
        let old = periodic("old", now - 3 * 3600);
        let fresh = periodic("fresh", now - 60);
        // A child of "fresh" launched at the last full hour: its successor is due next hour.
        let mut launched = periodic("done", now - 7200);
        launched.parent_id = "old".into();
        launched.id = format!("old/periodic-{}", now - 1800 + 3600);
        launched.periodic = serde_json::Value::Null;
        let state = ServerState::from_parts(9, vec![old, fresh], vec![], vec![]);
        let mut tracked = HashMap::new();
        let missed = resync(&state, &mut tracked, now);
        assert_eq!(missed, vec![("default".to_string(), "old".to_string())]);
        let next_hour = now + 1800;
        assert_eq!(
            tracked[&("default".into(), "old".into())].next,
            Some(next_hour)
        );
        assert_eq!(
            tracked[&("default".into(), "fresh".into())].next,
            Some(next_hour)
        );
        // Tracked jobs are not looked at again until their spec changes.
        assert!(resync(&state, &mut tracked, now + 7200).is_empty());
        // A child's launch time counts as the last launch.
        let state = ServerState::from_parts(
            9,
            vec![periodic("old", now - 3 * 3600), launched],
            vec![],
            vec![],
        );
        let mut tracked = HashMap::new();
        assert!(resync(&state, &mut tracked, now).is_empty());
        assert_eq!(
            tracked[&("default".into(), "old".into())].next,
            Some(next_hour + 3600)
        );
    }
}
