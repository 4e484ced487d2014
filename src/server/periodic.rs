//! The periodic dispatcher: one `periodic` thread launches the children of periodic jobs
//! (`<id>/periodic-<unix>`) at their cron times, in their `time_zone`, skipping a launch
//! while an earlier child still runs when `prohibit_overlap` says so. Each launch is a
//! `Command::JobLaunch` (it replicates with the log); what it remembers between launches is
//! only the next time per job, rebuilt from state when it starts: the last launch is the
//! newest child's launch time (or the job's submit time), and a launch missed while no
//! dispatcher ran is made once, at start, as Nomad's leader does on election.
//!
//! A leader duty: the composition root owns the handle, turns the duty on
//! ([`PeriodicDispatcher::start`]) where this server leads and off
//! ([`PeriodicDispatcher::stop`]) when it no longer does. Like the drainer, the thread runs
//! only while some periodic job is active (an idle agent has no such thread): registering
//! one `kick`s it, and it ends by itself, under its slot lock, once none is. It sleeps on the
//! index counter until the next launch (at most [`IDLE_WAKE`]); a change to the jobs table
//! wakes it to look again. No busy loop.

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

/// The periodic dispatcher: a handle the composition root owns; its `periodic` thread runs
/// only while it is enabled (this server leads) and some periodic job is active.
pub struct PeriodicDispatcher {
    workloads: Arc<Workloads>,
    index: Arc<IndexCounter>,
    /// The leader duty is on ([`PeriodicDispatcher::start`] / [`PeriodicDispatcher::stop`]).
    enabled: AtomicBool,
    /// Shut down for good.
    closed: AtomicBool,
    slot: Mutex<Slot>,
}

/// The thread, and whether it still works (changed only under the lock: a thread that ends
/// says so under it, after one last look at the state).
#[derive(Default)]
struct Slot {
    handle: Option<JoinHandle<()>>,
    running: bool,
}

impl std::fmt::Debug for PeriodicDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeriodicDispatcher").finish_non_exhaustive()
    }
}

/// Some job the dispatcher must launch.
fn any_active(state: &ServerState) -> bool {
    state.jobs.values().any(|j| launch::is_periodic_active(j))
}

impl PeriodicDispatcher {
    /// A dispatcher over `workloads`' state, woken by `index`; disabled, no thread yet.
    pub fn new(workloads: Arc<Workloads>, index: Arc<IndexCounter>) -> Arc<PeriodicDispatcher> {
        Arc::new(PeriodicDispatcher {
            workloads,
            index,
            enabled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            slot: Mutex::new(Slot::default()),
        })
    }

    /// The leader duty on: dispatch from now on (the thread starts when a periodic job is
    /// active; a launch missed while none ran is made once).
    pub fn start(self: &Arc<Self>) {
        self.enabled.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// Make sure the thread runs when it should: called after a periodic job was registered
    /// (published) and by [`PeriodicDispatcher::start`]. It ends by itself once no periodic
    /// job is active.
    pub fn kick(self: &Arc<Self>) {
        if !self.enabled.load(Ordering::SeqCst)
            || self.closed.load(Ordering::SeqCst)
            || !any_active(&self.workloads.state())
        {
            return;
        }
        let mut slot = self.slot.lock();
        if slot.running {
            return;
        }
        if let Some(old) = slot.handle.take() {
            // It said it ends (under this lock) and holds nothing: joined at once.
            let _ = old.join();
        }
        let me = self.clone();
        match std::thread::Builder::new()
            .name("periodic".into())
            .spawn(move || me.run())
        {
            Ok(h) => {
                slot.handle = Some(h);
                slot.running = true;
            }
            Err(e) => log::error!("cannot start the periodic dispatcher: {e}"),
        }
    }

    /// The leader duty off: the thread stops (after the launch it is proposing) and is
    /// joined; [`PeriodicDispatcher::start`] may start it again.
    pub fn stop(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        let handle = self.slot.lock().handle.take();
        if let Some(h) = handle {
            if !self.index.is_closed() {
                self.index.notify();
            }
            let _ = h.join();
        }
    }

    /// Stop for good (agent shutdown).
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stop();
    }

    fn should_run(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
            && !self.closed.load(Ordering::SeqCst)
            && !self.index.is_closed()
    }

    /// The thread ends when no periodic job is active (or it should stop): decided under the
    /// lock, so a `kick` after a new periodic job was published finds it running or starts one.
    fn try_end(&self) -> bool {
        let mut slot = self.slot.lock();
        if self.should_run() && any_active(&self.workloads.state()) {
            return false;
        }
        slot.running = false;
        true
    }

    fn run(self: Arc<Self>) {
        worker(
            &self.workloads,
            &self.index,
            || self.should_run(),
            || self.try_end(),
        );
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

/// The thread body: it ends when `should_run` turns false or nothing is tracked, once
/// `try_end` (under the slot lock) agrees.
fn worker(
    w: &Workloads,
    index: &IndexCounter,
    should_run: impl Fn() -> bool,
    try_end: impl Fn() -> bool,
) {
    let mut tracked: HashMap<JobKey, Tracked> = HashMap::new();
    let mut seen: Option<Table<JobKey, Job>> = None;
    loop {
        // The generation first: a change published after this read ends the wait below.
        let generation = index.generation();
        let state = w.state();
        if !should_run() && try_end() {
            return;
        }
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
            if tracked.is_empty() && try_end() {
                log::debug!("periodic: no periodic job is active any more");
                return;
            }
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

    /// Poll `f` until true or 10 s.
    fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_leader_duty_starts_and_stops_and_the_thread_runs_only_for_active_jobs() {
        let dir = std::env::temp_dir().join(format!("nomadlet-per-{}", uuid::Uuid::new_v4()));
        let index = Arc::new(IndexCounter::default());
        let w = Arc::new(Workloads::load(&dir, index.clone()).unwrap());
        let d = PeriodicDispatcher::new(w.clone(), index.clone());
        d.start();
        assert!(!d.slot.lock().running, "no periodic job: no thread");
        let mut j = Job::from_json(json!({"ID": "p", "Type": "batch", "TaskGroups": [],
            "Periodic": {"Spec": "* * * * * * *"}}))
        .unwrap();
        j.canonicalize("global");
        w.register(j).unwrap();
        index.notify();
        d.kick();
        let children = || {
            let s = w.state();
            let p = s
                .jobs
                .get(&("default".into(), "p".into()))
                .cloned()
                .unwrap();
            launch::children(&s, &p).count()
        };
        eventually("a launch", || children() >= 1);
        d.stop();
        assert!(d.slot.lock().handle.is_none(), "stopped and joined");
        d.kick();
        assert!(
            d.slot.lock().handle.is_none(),
            "a kick does nothing while the duty is off"
        );
        let n = children();
        d.start();
        eventually("launches again", || children() > n);
        w.deregister("default", "p", false).unwrap();
        eventually("the thread ends", || !d.slot.lock().running);
        d.shutdown();
        w.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
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
