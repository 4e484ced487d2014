//! The server's scheduler: one `scheduler` thread takes the `pending` evals of the published
//! state (the queue: every command that makes work queues one), oldest first, runs the
//! scheduler of the eval's job type on that immutable snapshot ([`reconcile::schedule`]) and
//! proposes the result as `Command::PlanApply`. Apply checks every placement against the
//! node again, so a plan made on an older snapshot can never overcommit a node; what it
//! refuses leaves the eval pending for another run (at most [`MAX_PLAN_ATTEMPTS`], then the
//! eval blocks). It does not wait for a plan to apply before it plans the next eval: up to
//! [`pipeline::MAX_IN_FLIGHT`] plans are in flight, and the next is made on the published
//! state plus their node usage (see [`pipeline`] for the rules). It waits on the index
//! counter or a plan's answer with a deadline: no busy loop.

pub mod bench;
pub mod dry_run;
pub mod feasible;
pub mod pipeline;
pub mod rank;
pub mod reconcile;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::state::command::ServerState;
use crate::state::jobs::eval::EvalRecord;
use crate::state::jobs::{PlanTicket, Workloads};
use crate::state::plan::{Plan, PlanResult};
use crate::state::status::JobType;
use crate::state::IndexCounter;

use self::pipeline::Flight;

/// The longest the thread sleeps with nothing to do before it looks again.
pub const IDLE_WAKE: Duration = Duration::from_secs(5);
/// After a failed proposal (the store failed), the wait before the next try.
pub const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Plans per eval of a service job before refused placements block it (Nomad: 5).
pub const MAX_PLAN_ATTEMPTS: u32 = 5;
/// ... of a batch job (Nomad: 2).
pub const MAX_PLAN_ATTEMPTS_BATCH: u32 = 2;

/// What the scheduler did (the bench and tests read it).
#[derive(Debug, Default)]
pub struct SchedStats {
    pub evals: AtomicU64,
    pub plans: AtomicU64,
    pub placed: AtomicU64,
    pub refused: AtomicU64,
    /// The most plans in flight at once (the pipeline's depth reached).
    pub deepest: AtomicU64,
}

/// How long the `scheduler` thread goes on with nothing to plan before it ends: an idle
/// server runs no scheduler thread. It starts again when a command publishes a due eval
/// (the counter's notify hook), and from [`Scheduler::tick`] when the GC or a waiting eval
/// falls due. Longer than a burst's pauses (a thread per burst, not per eval), short
/// against an idle agent's life.
#[cfg(not(test))]
pub const IDLE_EXIT: Duration = Duration::from_secs(3);
/// Unit tests: short, so publishes can race the thread's end many times.
#[cfg(test)]
pub const IDLE_EXIT: Duration = Duration::from_millis(20);

/// The scheduler: its `scheduler` thread runs only while there is work (see [`IDLE_EXIT`]).
pub struct Scheduler {
    inner: Arc<Inner>,
    /// The counter's notify hook that wakes it (removed at shutdown).
    hook: u64,
    pub stats: Arc<SchedStats>,
}

/// What the thread and its starters share.
struct Inner {
    workloads: Arc<Workloads>,
    index: Arc<IndexCounter>,
    stop: AtomicBool,
    stats: Arc<SchedStats>,
    slot: Mutex<Slot>,
}

/// The thread, whether it still works, and the GC's next time (kept across its runs).
/// `running` changes only under the lock: a thread that ends says so under it, after its
/// last look at the state found nothing and no publish came after that look.
struct Slot {
    handle: Option<JoinHandle<()>>,
    running: bool,
    next_gc: Instant,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Start the scheduler over `workloads`' published state: its thread takes a first look
    /// now (and ends after [`IDLE_EXIT`] with nothing to do); every publish wakes it.
    pub fn start(
        workloads: Arc<Workloads>,
        index: Arc<IndexCounter>,
    ) -> std::io::Result<Scheduler> {
        let stats = Arc::new(SchedStats::default());
        // The first GC an interval after leadership began (or the agent started).
        let next_gc = Instant::now() + workloads.gc_policy().interval;
        let inner = Arc::new(Inner {
            workloads,
            index: index.clone(),
            stop: AtomicBool::new(false),
            stats: stats.clone(),
            slot: Mutex::new(Slot {
                handle: None,
                running: false,
                next_gc,
            }),
        });
        {
            let mut slot = inner.slot.lock();
            inner.spawn(&mut slot)?;
        }
        let weak = Arc::downgrade(&inner);
        let hook = index.on_notify(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.wake(false);
            }
        }));
        Ok(Scheduler { inner, hook, stats })
    }

    /// Start the thread if a timer fell due while it did not run: the GC, or an eval whose
    /// wait is over (or one a failed start left). The agent calls it about once a second.
    pub fn tick(&self) {
        self.inner.wake(true);
    }

    /// Whether the thread runs now (tests).
    #[cfg(test)]
    pub fn is_running(&self) -> bool {
        self.inner.slot.lock().running
    }

    /// Stop the thread (after the plan it is making) and join it.
    pub fn shutdown(&self) {
        let inner = &self.inner;
        inner.stop.store(true, Ordering::SeqCst);
        inner.index.remove_hook(self.hook);
        // Wake its wait: a notify is harmless to every other waiter.
        inner.index.notify();
        let handle = inner.slot.lock().handle.take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    /// Start the thread unless it runs or the scheduler stops: after a publish when a due
    /// eval is pending; on a `tick` also when the GC is due.
    fn wake(self: &Arc<Self>, tick: bool) {
        let mut slot = self.slot.lock();
        if slot.running || self.stop.load(Ordering::SeqCst) || self.index.is_closed() {
            return;
        }
        let gc_due = tick && Instant::now() >= slot.next_gc;
        let state = self.workloads.state();
        if !gc_due && next_eval(&state, crate::time::unix_now_nanos()).0.is_none() {
            return;
        }
        drop(state);
        if let Err(e) = self.spawn(&mut slot) {
            // The eval stays pending: the next tick tries again.
            log::error!("cannot start the scheduler: {e}");
        }
    }

    /// Start the thread (the slot says none runs).
    fn spawn(self: &Arc<Self>, slot: &mut Slot) -> std::io::Result<()> {
        if let Some(old) = slot.handle.take() {
            // It said it ends (under this lock) and holds nothing: joined at once.
            let _ = old.join();
        }
        let me = self.clone();
        let next_gc = slot.next_gc;
        let h = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || worker(&me, next_gc))?;
        slot.handle = Some(h);
        slot.running = true;
        Ok(())
    }

    /// The thread ends if nothing was published since it read `generation` (then its look
    /// at that state found nothing due): decided under the lock, so a publish after this
    /// either was seen here or finds the thread gone and starts a new one.
    fn try_end(&self, generation: u64, next_gc: Instant) -> bool {
        let mut slot = self.slot.lock();
        if self.index.generation() != generation && !self.stop.load(Ordering::SeqCst) {
            return false;
        }
        slot.running = false;
        slot.next_gc = next_gc;
        true
    }
}

/// The next eval to run (oldest pending whose wait is over) and, when none is due, the
/// earliest time a waiting one is (unix nanoseconds).
pub fn next_eval(state: &ServerState, now: i64) -> (Option<Arc<EvalRecord>>, Option<i64>) {
    pipeline::next_free_eval(state, now, &[])
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Plans an eval of this type gets before refusals block it.
fn max_attempts(t: JobType) -> u32 {
    if t.is_batch() {
        MAX_PLAN_ATTEMPTS_BATCH
    } else {
        MAX_PLAN_ATTEMPTS
    }
}

/// Make the plan for `eval` (the scheduling itself, no I/O).
pub fn plan_for(state: &ServerState, eval: &EvalRecord, now: i64, attempt: u32) -> Plan {
    let mut plan = reconcile::schedule(state, eval, now, &mut new_id);
    plan.final_attempt = attempt >= max_attempts(eval.eval_type);
    plan
}

fn log_failures(eval: &EvalRecord, plan: &Plan) {
    if plan.failed_tg_allocs.is_empty() {
        return;
    }
    let why = if plan.status_description.is_empty() {
        let groups: Vec<String> = plan
            .failed_tg_allocs
            .iter()
            .map(|(g, m)| {
                // Reasons only where there are some: a group with no eligible node at all
                // says just that.
                let mut line = format!(
                    "group {g:?}: {} nodes evaluated, {} filtered, {} exhausted",
                    m["NodesEvaluated"], m["NodesFiltered"], m["NodesExhausted"]
                );
                for key in ["ConstraintFiltered", "ClassFiltered", "DimensionExhausted"] {
                    if m[key].as_object().is_some_and(|o| !o.is_empty()) {
                        line.push_str(&format!(" {key} {}", m[key]));
                    }
                }
                line
            })
            .collect();
        groups.join("; ")
    } else {
        plan.status_description.clone()
    };
    log::warn!(
        "job {:?} (namespace {:?}): placement failed, eval {}: {why}",
        eval.job_id,
        eval.namespace,
        eval.id
    );
}

/// A plan in flight and its answer to come.
struct Submitted {
    flight: Flight,
    ticket: PlanTicket,
}

/// The `scheduler` thread's loop state: the plans in flight and the attempts per eval.
struct Worker<'a> {
    w: &'a Workloads,
    stats: &'a SchedStats,
    flights: VecDeque<Submitted>,
    /// A plan made while another is in the log, submitted once that one is answered.
    held: Option<(Flight, Plan)>,
    attempts: HashMap<String, u32>,
}

impl Worker<'_> {
    /// Take the answers that came (in log order: the oldest first). `Err` when a plan could
    /// not be applied (the store failed, leadership was lost): the caller backs off.
    fn reap(&mut self) -> Result<(), ()> {
        let mut failed = false;
        while let Some(answer) = self.flights.front().and_then(|s| s.ticket.try_take()) {
            if let Some(s) = self.flights.pop_front() {
                failed |= self.settle(&s.flight, answer).is_err();
            }
        }
        if failed {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Wait for the oldest plan in flight to be answered (at most `slice`; a plan that
    /// had no answer by [`pipeline::ANSWER_DEADLINE`] is given up).
    fn wait_oldest(&mut self, slice: Duration) -> Result<(), ()> {
        let Some(front) = self.flights.front() else {
            return Ok(());
        };
        let left = pipeline::ANSWER_DEADLINE.saturating_sub(front.flight.submitted.elapsed());
        let answer = match front.ticket.wait_for(slice.min(left)) {
            Some(a) => a,
            // Still within its deadline: the caller looks again.
            None if left > slice => return Ok(()),
            None => {
                log::error!(
                    "eval {}: no answer to its plan within {:?}; given up",
                    front.flight.eval_id,
                    pipeline::ANSWER_DEADLINE
                );
                if let Some(s) = self.flights.pop_front() {
                    self.attempts.remove(&s.flight.eval_id);
                }
                return Err(());
            }
        };
        match self.flights.pop_front() {
            Some(s) => self.settle(&s.flight, answer),
            None => Ok(()),
        }
    }

    /// What a plan's answer means for its eval (as the plan made one by one).
    fn settle(
        &mut self,
        f: &Flight,
        answer: Result<Option<PlanResult>, crate::store::StoreError>,
    ) -> Result<(), ()> {
        match answer {
            Ok(Some(r)) => {
                let stats = self.stats;
                stats.plans.fetch_add(1, Ordering::Relaxed);
                stats.placed.fetch_add(r.placed as u64, Ordering::Relaxed);
                stats.refused.fetch_add(r.refused as u64, Ordering::Relaxed);
                if r.refused > 0 {
                    log::debug!(
                        "eval {}: {} of {} placements refused at apply (attempt {})",
                        f.eval_id,
                        r.refused,
                        f.placements,
                        f.attempt
                    );
                }
                if !r.retry {
                    self.attempts.remove(&f.eval_id);
                }
                Ok(())
            }
            Ok(None) => {
                // Not pending any more (canceled meanwhile): nothing to do.
                self.attempts.remove(&f.eval_id);
                Ok(())
            }
            Err(e) => {
                // The eval stays pending: planned again (here or by the next leader).
                log::error!("eval {}: cannot apply its plan: {e}", f.eval_id);
                self.attempts.remove(&f.eval_id);
                Err(())
            }
        }
    }

    /// Plan `eval` on `state` (published) plus the plans in flight, and submit the plan.
    fn plan_and_submit(
        &mut self,
        state: &Arc<ServerState>,
        eval: &EvalRecord,
        now: i64,
    ) -> Result<(), ()> {
        let attempt = {
            let a = self.attempts.entry(eval.id.clone()).or_default();
            *a += 1;
            *a
        };
        let spec = pipeline::planning_state(state, self.made());
        let plan = plan_for(&spec, eval, now, attempt);
        if attempt == 1 || plan.final_attempt {
            log_failures(eval, &plan);
        }
        let flight = Flight::of(&spec, state.index, &plan, attempt);
        drop(spec);
        self.stats.evals.fetch_add(1, Ordering::Relaxed);
        self.held = Some((flight, plan));
        let depth = self.made().count() as u64;
        self.stats.deepest.fetch_max(depth, Ordering::Relaxed);
        self.submit_held()
    }

    /// Every plan made and not answered: those in the log, then the held one.
    fn made(&self) -> impl Iterator<Item = &Flight> + '_ {
        let held = self.held.as_ref().map(|(f, _)| f);
        self.flights.iter().map(|s| &s.flight).chain(held)
    }

    /// Submit the held plan when the log holds fewer than [`pipeline::MAX_SUBMITTED`].
    fn submit_held(&mut self) -> Result<(), ()> {
        if self.flights.len() >= pipeline::MAX_SUBMITTED {
            return Ok(());
        }
        let Some((flight, plan)) = self.held.take() else {
            return Ok(());
        };
        match self.w.submit_plan(plan) {
            Ok(ticket) => {
                self.flights.push_back(Submitted { flight, ticket });
                Ok(())
            }
            Err(e) => {
                log::error!("eval {}: cannot apply its plan: {e}", flight.eval_id);
                self.attempts.remove(&flight.eval_id);
                Err(())
            }
        }
    }
}

fn worker(inner: &Inner, mut next_gc: Instant) {
    let (w, index, stop) = (&*inner.workloads, &*inner.index, &inner.stop);
    let mut me = Worker {
        w,
        stats: &inner.stats,
        flights: VecDeque::new(),
        held: None,
        attempts: HashMap::new(),
    };
    // The server's garbage collection runs here, between evals, as Nomad's core evals run on
    // its scheduler workers: the first one an interval after leadership began.
    let gc = w.gc_policy();
    // Since when the thread found nothing to plan (`None` while it plans).
    let mut idle_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) && !index.is_closed() {
        // The generation first: a change published after this read ends the wait below.
        let generation = index.generation();
        if me.reap().is_err() || me.submit_held().is_err() {
            index.wait_for_change(index.generation(), Instant::now() + ERROR_BACKOFF);
            continue;
        }
        if Instant::now() >= next_gc && me.flights.is_empty() && me.held.is_none() {
            next_gc = Instant::now() + gc.interval;
            match w.collect_garbage(&gc.thresholds) {
                Ok(r) if r.jobs + r.evals + r.allocs > 0 => log::info!(
                    "gc: collected {} jobs, {} evals, {} allocs",
                    r.jobs,
                    r.evals,
                    r.allocs
                ),
                Ok(_) => {}
                Err(e) => log::warn!("gc: cannot collect: {e}"),
            }
            continue;
        }
        let state = w.state();
        let now = crate::time::unix_now_nanos();
        let flights: Vec<&Flight> = me.made().collect();
        let (next, wake) = pipeline::next_free_eval(&state, now, &flights);
        // A full pipeline, or one holding ports (not in the overlay), waits for its oldest.
        let full = flights.len() >= pipeline::MAX_IN_FLIGHT || flights.iter().any(|f| f.ports);
        drop(flights);
        if !me.flights.is_empty() && (next.is_none() || full) {
            drop(state);
            if me.wait_oldest(IDLE_WAKE).is_err() {
                index.wait_for_change(index.generation(), Instant::now() + ERROR_BACKOFF);
            }
            continue;
        }
        let Some(eval) = next else {
            let mut wait = IDLE_WAKE.min(next_gc.saturating_duration_since(Instant::now()));
            if let Some(at) = wake {
                let ns = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
                wait = wait.min(Duration::from_nanos(ns));
            }
            me.attempts.clear();
            drop(state);
            // Idle long enough, and no timer falls due within the idle period (`tick`
            // starts the thread again for one): end, unless a publish came after this look.
            let since = *idle_since.get_or_insert_with(Instant::now);
            let idle_left = IDLE_EXIT.saturating_sub(since.elapsed());
            if idle_left.is_zero() && wait >= IDLE_EXIT && inner.try_end(generation, next_gc) {
                log::debug!("scheduler: idle, the thread ends");
                return;
            }
            let wait = if wait >= IDLE_EXIT && !idle_left.is_zero() {
                idle_left
            } else {
                wait
            };
            index.wait_for_change(generation, Instant::now() + wait);
            continue;
        };
        idle_since = None;
        if me.plan_and_submit(&state, &eval, now).is_err() {
            drop(state);
            index.wait_for_change(index.generation(), Instant::now() + ERROR_BACKOFF);
        }
    }
}

/// Tests: run every due pending eval now, on this thread (as the `scheduler` thread would,
/// each plan its final attempt). Returns how many evals ran.
#[cfg(test)]
pub fn run_pending(w: &Workloads) -> usize {
    let mut ran = 0;
    loop {
        let state = w.state();
        let now = crate::time::unix_now_nanos();
        let (Some(eval), _) = next_eval(&state, now) else {
            return ran;
        };
        let plan = plan_for(&state, &eval, now, MAX_PLAN_ATTEMPTS);
        w.apply_plan(plan).expect("plan applies");
        ran += 1;
        assert!(ran < 10_000, "the queue does not drain");
    }
}

/// Tests: a ready node with room for thousands of small allocs and raw_exec.
#[cfg(test)]
pub fn test_node(id: &str) -> crate::state::node_table::Node {
    let mut n = bench::sim_node(0);
    n.id = id.to_string();
    n.name = format!("node-{id}").into();
    n.datacenter = "dc1".into();
    *n.resources = serde_json::json!({"Cpu": {"CpuShares": 1_000_000_000i64},
        "Memory": {"MemoryMB": 1_000_000_000i64}, "Disk": {"DiskMB": 1_000_000_000i64}});
    n
}

/// The thread ends when idle and the publish of a new eval starts it again: jobs registered
/// right around the moment it ends (swept across its idle period) are all placed, and
/// shutdown joins it.
#[cfg(test)]
#[test]
fn evals_published_around_the_idle_schedulers_end_are_all_placed() {
    let dir = std::env::temp_dir().join(format!("nomadlet-sched-idle-{}", new_id()));
    let index = Arc::new(IndexCounter::default());
    let w = Arc::new(Workloads::load(&dir, index.clone()).unwrap());
    w.register_node(bench::sim_node(0)).unwrap();
    let sched = Scheduler::start(w.clone(), index.clone()).unwrap();
    let placed = |n: usize| w.state().allocs.len() >= n;
    let mut ended = 0;
    for n in 0..60usize {
        let pause = IDLE_EXIT * (n % 41) as u32 / 20;
        let until = Instant::now() + pause;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !sched.is_running() {
            ended += 1;
        }
        w.register(bench::sim_job(&format!("j{n}"), 1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let generation = index.generation();
            if placed(n + 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "job j{n} never placed (a lost wake)"
            );
            index.wait_for_change(generation, Instant::now() + Duration::from_millis(100));
        }
    }
    assert!(ended > 5, "the scheduler ended only {ended} times");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sched.is_running() {
        assert!(Instant::now() < deadline, "the idle scheduler never ends");
        std::thread::sleep(Duration::from_millis(5));
    }
    sched.shutdown();
    assert!(sched.inner.slot.lock().handle.is_none(), "joined");
    w.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The thread plans ahead of apply: twenty jobs filling five nodes exactly are all placed,
/// each exactly its count, no node overcommitted, with plans in flight together and none
/// of their placements refused (each plan counted the room of those before it).
#[cfg(test)]
#[test]
fn the_thread_pipelines_plans_and_fills_nodes_exactly_without_refusals() {
    let dir = std::env::temp_dir().join(format!("nomadlet-sched-pipe-{}", new_id()));
    let index = Arc::new(IndexCounter::default());
    let w = Arc::new(Workloads::load(&dir, index.clone()).unwrap());
    for i in 0..5 {
        // 8000 MHz: 80 allocs of 100 MHz each.
        w.register_node(bench::sim_node(i)).unwrap();
    }
    // Queued before the thread starts: it has twenty evals to plan at once.
    for j in 0..20 {
        w.register(bench::sim_job(&format!("p{j}"), 20)).unwrap();
    }
    let sched = Scheduler::start(w.clone(), index.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let generation = index.generation();
        let s = w.state();
        if s.allocs.len() >= 400 && s.pending_evals().next().is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "only {} placed", s.allocs.len());
        index.wait_for_change(generation, Instant::now() + Duration::from_millis(100));
    }
    let s = w.state();
    assert_eq!(s.allocs.len(), 400);
    for j in 0..20 {
        let key = ("default".to_string(), format!("p{j}"));
        assert_eq!(s.allocs_of(&key).count(), 20, "job p{j}");
    }
    for n in s.nodes.values() {
        let used = crate::state::plan::node_used(&s, &n.id);
        let cap = crate::state::plan::node_capacity(n);
        assert!(
            used.exceeds(&Default::default(), &cap).is_none(),
            "{} overcommitted",
            n.id
        );
    }
    let st = &sched.stats;
    assert_eq!(
        st.refused.load(Ordering::SeqCst),
        0,
        "no plan counted on taken room"
    );
    assert!(
        st.deepest.load(Ordering::SeqCst) >= 2,
        "plans were in flight together"
    );
    sched.shutdown();
    w.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
