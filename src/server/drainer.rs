//! The node drainer (Nomad's `nomad/drainer`): one `drainer` thread that watches the server
//! state and moves allocs off draining nodes. Each time the state changes (it waits on the
//! [`IndexCounter`]) or a drain deadline passes, [`plan`] computes — from one immutable
//! snapshot — which allocs to migrate now and which drains are done; the thread proposes that
//! as `AllocMigrate` and `NodeDrainComplete` commands. Every decision is read back from the
//! state, so a step that finds nothing new proposes nothing (no loop on its own writes).
//!
//! Per service task group, at most `healthy − (count − migrate.max_parallel)` allocs are
//! migrating at a time (`max_parallel` defaults to 1), where *healthy* counts the group's
//! running allocs not marked for migration: the next batch waits for the replacements to run.
//! Batch allocs wait for the deadline; system allocs go once everything else on the node is
//! client-terminal (unless `IgnoreSystemJobs`). At the deadline (or at once for a forced
//! drain, deadline `< 0`) every remaining alloc is migrated and the drain completes with
//! `deadline_reached`. When no other non-terminal alloc is left the drain completes: the
//! strategy is cleared, `LastDrain` is `complete`, the node stays ineligible.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::state::command::{Command, JobKey, ServerState};
use crate::state::jobs::alloc::AllocRecord;
use crate::state::jobs::Workloads;
use crate::state::node_ops::{self, JobEval};
use crate::state::node_table::NodeEvent;
use crate::state::status::{AllocClientStatus, AllocDesiredStatus, JobType};
use crate::state::IndexCounter;

/// Longest the drainer sleeps without a state change or a deadline to wait for.
pub const IDLE_WAIT: Duration = Duration::from_secs(60);

/// How long the drainer waits before trying again after a write failed.
pub const RETRY_WAIT: Duration = Duration::from_secs(1);

/// While a node drains, the drainer looks at the state at most this often (every state change
/// wakes it; a busy fleet changes state thousands of times a second). Nomad batches its
/// migrations in 1 s windows.
pub const MIN_STEP_INTERVAL: Duration = Duration::from_millis(200);

/// Whether the drainer stops the allocs it migrates itself ("alloc is being migrated"). It
/// does not: the server's scheduler stops a migrating alloc in the plan that places its
/// replacement, from the `node-drain` eval the migration makes.
pub const STOP_MIGRATING: bool = false;

/// `Message` of the node event that ends a drain.
pub const DRAIN_COMPLETE: &str = "Node drain complete";

/// The drainer: its thread runs only while some node drains (an idle agent has none).
pub struct Drainer {
    workloads: Arc<Workloads>,
    index: Arc<IndexCounter>,
    /// Only a server drains nodes.
    enabled: bool,
    stop: AtomicBool,
    /// A replicated server that is not the leader drains nothing (ref §6.6).
    follower: AtomicBool,
    slot: Mutex<Slot>,
}

/// The thread, and whether it still works (changed only under the lock: a thread that ends
/// says so under it, after one last look at the state).
#[derive(Default)]
struct Slot {
    handle: Option<JoinHandle<()>>,
    running: bool,
}

impl Drainer {
    /// A drainer over `workloads`' state, woken by `index`; no thread yet (see [`Drainer::kick`]).
    pub fn new(workloads: Arc<Workloads>, index: Arc<IndexCounter>, enabled: bool) -> Arc<Drainer> {
        Arc::new(Drainer {
            workloads,
            index,
            enabled,
            stop: AtomicBool::new(false),
            follower: AtomicBool::new(false),
            slot: Mutex::new(Slot::default()),
        })
    }

    /// Make sure the `drainer` thread runs when a node drains: called after a drain was set
    /// (published) and at start. It ends by itself once no node drains.
    pub fn kick(self: &Arc<Self>) {
        if !self.enabled
            || self.stop.load(Ordering::SeqCst)
            || self.follower.load(Ordering::SeqCst)
            || !any_draining(&self.workloads)
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
            .name("drainer".into())
            .spawn(move || me.run())
        {
            Ok(h) => {
                slot.handle = Some(h);
                slot.running = true;
            }
            Err(e) => log::error!("cannot start the node drainer: {e}"),
        }
    }

    /// Leadership changed (a replicated server): the leader drains what drains; a follower
    /// stops its thread (joined) and starts none.
    pub fn set_leader(self: &Arc<Self>, leader: bool) {
        self.follower.store(!leader, Ordering::SeqCst);
        if leader {
            self.kick();
        } else {
            self.join();
        }
    }

    /// Stop the thread and join it. The agent closes the index counter first (which wakes
    /// it); otherwise it is woken here.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.join();
    }

    fn join(&self) {
        let handle = self.slot.lock().handle.take();
        if let Some(h) = handle {
            if !self.index.is_closed() {
                self.index.notify();
            }
            // It may be pausing between two steps of a drain.
            h.thread().unpark();
            let _ = h.join();
        }
    }

    /// The thread ends when nothing drains: decided under the lock, so a `kick` after a new
    /// drain was published either finds it running or starts a new one.
    fn try_end(&self) -> bool {
        let mut slot = self.slot.lock();
        if any_draining(&self.workloads) && !self.stop.load(Ordering::SeqCst) {
            return false;
        }
        slot.running = false;
        true
    }

    fn run(self: Arc<Self>) {
        let (workloads, index, stop) = (&self.workloads, &self.index, &self.stop);
        loop {
            // The generation first: a change published after this read ends the wait below.
            let generation = index.generation();
            if stop.load(Ordering::SeqCst)
                || self.follower.load(Ordering::SeqCst)
                || index.is_closed()
            {
                self.slot.lock().running = false;
                return;
            }
            let state = workloads.state();
            let now = crate::time::unix_now_nanos();
            let step = plan(&state, now);
            drop(state);
            if !step.draining && step.commands.is_empty() && self.try_end() {
                log::debug!("drainer: no node drains any more");
                return;
            }
            let mut failed = false;
            for cmd in step.commands {
                match workloads.propose_node_op(cmd) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => log::debug!("drainer: a command changed nothing: {e}"),
                    Err(e) => {
                        log::error!("drainer: cannot write a drain step: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            let mut wait = IDLE_WAIT;
            if let Some(at) = step.next_deadline {
                let left = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
                wait = wait.min(Duration::from_nanos(left));
            }
            if failed {
                wait = wait.min(RETRY_WAIT);
            }
            if step.draining {
                // A pause between steps (`shutdown` unparks it), then the changes it let pass.
                let until = Instant::now() + MIN_STEP_INTERVAL;
                while !stop.load(Ordering::SeqCst)
                    && !self.follower.load(Ordering::SeqCst)
                    && Instant::now() < until
                {
                    std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
                }
            }
            index.wait_for_change(generation, Instant::now() + wait);
        }
    }
}

fn any_draining(workloads: &Workloads) -> bool {
    workloads
        .state()
        .nodes
        .values()
        .any(|n| n.drain_strategy.is_some())
}

/// What one look at the state decided.
#[derive(Debug, Default)]
pub struct Step {
    /// `AllocMigrate` (at most one, every job's allocs together) then `NodeDrainComplete`s.
    pub commands: Vec<Command>,
    /// The earliest drain deadline still to come (Unix nanoseconds).
    pub next_deadline: Option<i64>,
    /// Some node drains (after this step's commands, perhaps not any more).
    pub draining: bool,
}

fn is_system(a: &AllocRecord) -> bool {
    a.job.job_type() == JobType::System
}

/// Nomad's `TerminalStatus`: stopped by the server or done on the client.
fn server_or_client_terminal(a: &AllocRecord) -> bool {
    a.desired_status != AllocDesiredStatus::Run || a.terminal()
}

fn complete_event(now: i64, deadline_reached: bool) -> NodeEvent {
    NodeEvent {
        message: DRAIN_COMPLETE.into(),
        subsystem: "Drain".into(),
        details: deadline_reached
            .then(|| [("deadline_reached".to_string(), "true".to_string())].into()),
        timestamp: now,
        create_index: 0,
    }
}

/// `migrate { max_parallel }` of a group (Nomad's default 1).
fn max_parallel(a: &AllocRecord, state: &ServerState) -> i64 {
    let key: JobKey = (a.namespace.to_string(), a.job_id.to_string());
    let job = state.jobs.get(&key).map_or(&*a.job, |j| &**j);
    job.task_groups
        .iter()
        .find(|g| g.name == a.task_group)
        .and_then(|g| g.migrate.get("MaxParallel").and_then(|v| v.as_i64()))
        .unwrap_or(1)
}

/// The group's wanted count (the current job's, else the alloc's version's).
fn group_count(a: &AllocRecord, state: &ServerState) -> i64 {
    let key: JobKey = (a.namespace.to_string(), a.job_id.to_string());
    let job = state.jobs.get(&key).map_or(&*a.job, |j| &**j);
    job.task_groups
        .iter()
        .find(|g| g.name == a.task_group)
        .map_or(0, |g| g.count())
}

/// Decide what to do now for every draining node of `state` at `now` (Unix nanoseconds).
pub fn plan(state: &ServerState, now: i64) -> Step {
    let mut step = Step::default();
    let mut migrate: BTreeSet<String> = BTreeSet::new();
    let mut complete: Vec<(String, bool)> = Vec::new();
    // Service groups with allocs still to move off a draining node.
    let mut groups: BTreeSet<(String, String, String)> = BTreeSet::new();
    let draining: BTreeSet<&str> = state
        .nodes
        .values()
        .filter(|n| n.drain_strategy.is_some())
        .map(|n| n.id.as_str())
        .collect();
    step.draining = !draining.is_empty();
    for node in state.nodes.values() {
        let Some(strategy) = &node.drain_strategy else {
            continue;
        };
        let allocs = node_ops::allocs_on_node(state, &node.id);
        let unmarked_live = |a: &&&Arc<AllocRecord>| {
            !server_or_client_terminal(a) && !a.desired_transition.should_migrate()
        };
        match strategy.deadline_at() {
            Some(at) if now >= at => {
                // Deadline: everything left goes now (system allocs unless ignored).
                for a in allocs.iter().filter(unmarked_live) {
                    if !(is_system(a) && strategy.ignore_system_jobs) {
                        migrate.insert(a.id.to_string());
                    }
                }
                complete.push((node.id.clone(), true));
                continue;
            }
            Some(at) => {
                step.next_deadline = Some(step.next_deadline.map_or(at, |d: i64| d.min(at)));
            }
            None => {}
        }
        let done = allocs
            .iter()
            .filter(|a| !is_system(a))
            .all(|a| a.terminal());
        if done {
            if !strategy.ignore_system_jobs {
                for a in allocs.iter().filter(unmarked_live).filter(|a| is_system(a)) {
                    migrate.insert(a.id.to_string());
                }
            }
            complete.push((node.id.clone(), false));
            continue;
        }
        for a in allocs.iter().filter(unmarked_live) {
            if a.job.job_type() == JobType::Service {
                groups.insert((
                    a.namespace.to_string(),
                    a.job_id.to_string(),
                    a.task_group.to_string(),
                ));
            }
        }
    }
    for (ns, job_id, group) in groups {
        let key: JobKey = (ns, job_id);
        let mut allocs: Vec<&Arc<AllocRecord>> = state
            .allocs_by_job
            .get(&key)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| state.allocs.get(id))
            .filter(|a| a.task_group == group)
            .collect();
        allocs.sort_by_key(|a| (a.create_index, a.id.clone()));
        let Some(first) = allocs.first() else {
            continue;
        };
        let threshold = group_count(first, state) - max_parallel(first, state);
        let healthy = allocs
            .iter()
            .filter(|a| {
                a.desired_status == AllocDesiredStatus::Run
                    && a.client_status == AllocClientStatus::Running
                    && !a.desired_transition.should_migrate()
            })
            .count() as i64;
        let drainable: Vec<&&Arc<AllocRecord>> = allocs
            .iter()
            .filter(|a| {
                draining.contains(a.node_id.as_str())
                    && !server_or_client_terminal(a)
                    && !a.desired_transition.should_migrate()
                    && !migrate.contains(a.id.as_str())
            })
            .collect();
        let n = (healthy - threshold).clamp(0, drainable.len() as i64) as usize;
        migrate.extend(drainable[..n].iter().map(|a| a.id.to_string()));
    }
    if !migrate.is_empty() {
        let mut jobs: BTreeMap<JobKey, ()> = BTreeMap::new();
        for id in &migrate {
            if let Some(a) = state.allocs.get(id.as_str()) {
                jobs.insert((a.namespace.to_string(), a.job_id.to_string()), ());
            }
        }
        let keys: Vec<JobKey> = jobs.into_keys().collect();
        let evals: Vec<JobEval> = node_ops::evals_for(&keys);
        step.commands.push(Command::AllocMigrate {
            alloc_ids: migrate.into_iter().collect(),
            evals,
            stop: STOP_MIGRATING,
            now,
        });
    }
    for (node_id, deadline_reached) in complete {
        step.commands.push(Command::NodeDrainComplete {
            node_id,
            event: complete_event(now, deadline_reached),
            now,
        });
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::apply;
    use crate::state::jobs::spec::Job;
    use crate::state::jobs::NodeInfo;
    use crate::state::node_ops::DrainUpdate;
    use crate::state::node_table::{DrainStrategy, Node};
    use crate::state::status::{NodeEligibility, NodeStatus};

    struct World {
        s: ServerState,
        index: u64,
    }

    impl World {
        fn apply(&mut self, cmd: &Command) {
            self.index += 1;
            apply(&mut self.s, cmd, self.index).unwrap();
        }

        fn node(&mut self, id: &str) {
            let n = Node {
                id: id.into(),
                name: id.into(),
                datacenter: "dc1".into(),
                http_addr: String::new(),
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
            };
            self.apply(&Command::NodeRegister {
                node: Box::new(n),
                now: 1,
            });
        }

        /// A job of `count` allocs on `node`, all running; their IDs.
        fn job(&mut self, id: &str, kind: &str, count: i64, max_parallel: i64) -> Vec<String> {
            let mut j = Job::from_json(serde_json::json!({"ID": id, "Type": kind,
                "TaskGroups": [{"Name": "g", "Count": count,
                "Migrate": {"MaxParallel": max_parallel},
                "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/true"}}]}]}))
            .unwrap();
            j.canonicalize("global");
            let ids: Vec<String> = (0..count).map(|i| format!("{id}-{i}")).collect();
            self.apply(&Command::JobRegister {
                job: Box::new(j),
                node: NodeInfo {
                    id: "n1".into(),
                    name: "n1".into(),
                    unplaceable: None,
                },
                eval_id: format!("e-{id}"),
                blocked_eval_id: String::new(),
                alloc_ids: ids.clone(),
                now: 2,
            });
            for a in &ids {
                self.set_client(a, AllocClientStatus::Running);
            }
            ids
        }

        fn set_client(&mut self, id: &str, status: AllocClientStatus) {
            self.apply(&Command::AllocClientUpdate {
                alloc_id: id.into(),
                tasks: BTreeMap::new(),
                client_status: Some((status, String::new()).into()),
                collected: false,
                now: 3,
            });
        }

        /// A running copy of `from` on node `n2` (a replacement the scheduler placed).
        fn replacement(&mut self, from: &str, id: &str) {
            let mut a = (*self.s.allocs[from]).clone();
            a.id = id.into();
            a.node_id = "n2".into();
            a.desired_status = AllocDesiredStatus::Run;
            a.client_status = AllocClientStatus::Running;
            a.desired_transition = Default::default();
            self.s.insert_new_alloc(a);
        }

        fn drain(&mut self, deadline_ns: i64, force_deadline: i64) {
            self.apply(&Command::NodeUpdateDrain {
                node_id: "n1".into(),
                update: Box::new(DrainUpdate {
                    strategy: Some(DrainStrategy {
                        deadline_ns,
                        force_deadline,
                        ignore_system_jobs: false,
                        started_at: 5,
                    }),
                    mark_eligible: false,
                    meta: BTreeMap::new(),
                    accessor: String::new(),
                }),
                event: None,
                evals: Vec::new(),
                now: 5,
            });
        }

        /// Plan at `now` and apply what it decided (migrating without stopping, as when
        /// the scheduler stops them); the allocs it marked.
        fn step(&mut self, now: i64) -> (Vec<String>, bool) {
            let step = plan(&self.s, now);
            let mut marked = Vec::new();
            let mut completed = false;
            for cmd in step.commands {
                match cmd {
                    Command::AllocMigrate {
                        alloc_ids,
                        evals,
                        now,
                        ..
                    } => {
                        marked = alloc_ids.clone();
                        self.apply(&Command::AllocMigrate {
                            alloc_ids,
                            evals,
                            stop: false,
                            now,
                        });
                    }
                    other => {
                        completed = true;
                        self.apply(&other);
                    }
                }
            }
            (marked, completed)
        }
    }

    fn world() -> World {
        let mut w = World {
            s: ServerState::default(),
            index: 0,
        };
        w.node("n1");
        w.node("n2");
        w
    }

    #[test]
    fn service_groups_move_max_parallel_at_a_time_batch_waits_and_system_goes_last() {
        let mut w = world();
        let web = w.job("web", "service", 3, 2);
        let batch = w.job("b", "batch", 1, 1);
        let sys = w.job("sys", "system", 1, 1);
        w.drain(0, 0);
        // healthy 3 − (3 − 2): two at once, with one node-drain eval for the job.
        let (marked, done) = w.step(10);
        assert_eq!(marked, web[..2].to_vec());
        assert!(!done);
        let evals: Vec<_> =
            w.s.evals
                .values()
                .filter(|e| e.triggered_by == "node-drain")
                .collect();
        assert_eq!(evals.len(), 1);
        assert_eq!(evals[0].job_id, "web");
        assert_eq!(evals[0].status, crate::state::status::EvalStatus::Pending);
        assert_eq!(evals[0].node_id, "n1");
        // Nothing more until replacements run; a look that finds nothing proposes nothing.
        assert!(plan(&w.s, 11).commands.is_empty());
        // A replacement runs: healthy 2 (r0 and the unmarked one) − 1: the last one goes.
        w.replacement(&web[0], "r0");
        assert_eq!(w.step(12).0, vec![web[2].clone()]);
        w.replacement(&web[1], "r1");
        assert!(plan(&w.s, 13).commands.is_empty(), "nothing left to mark");
        // The migrated allocs stop; the batch alloc still runs: not done, system waits.
        for a in &web {
            w.set_client(a, AllocClientStatus::Complete);
        }
        assert!(plan(&w.s, 14).commands.is_empty());
        w.set_client(&batch[0], AllocClientStatus::Complete);
        // Everything else is client-terminal: the system alloc goes and the drain completes.
        let (marked, done) = w.step(15);
        assert_eq!(marked, sys);
        assert!(done);
        let n = &w.s.nodes["n1"];
        assert!(n.drain_strategy.is_none() && !n.drain);
        assert_eq!(
            n.last_drain.as_ref().unwrap().status,
            crate::state::status::DrainStatus::Complete
        );
        assert_eq!(n.scheduling_eligibility, NodeEligibility::Ineligible);
        let ev = n.events.last().unwrap();
        assert_eq!(
            (ev.message.as_str(), ev.subsystem.as_str()),
            (DRAIN_COMPLETE, "Drain")
        );
        assert!(ev.details.is_none());
        assert!(plan(&w.s, 16).commands.is_empty(), "completed once");
    }

    #[test]
    fn the_deadline_migrates_everything_left_and_completes_with_deadline_reached() {
        let mut w = world();
        let web = w.job("web", "service", 2, 1);
        let batch = w.job("b", "batch", 1, 1);
        w.drain(1_000, 1_000);
        let step = plan(&w.s, 500);
        assert_eq!(step.next_deadline, Some(1_000));
        let (marked, done) = w.step(500);
        assert_eq!(marked, vec![web[0].clone()]);
        assert!(!done);
        let (mut marked, done) = w.step(1_000);
        marked.sort();
        let mut want = vec![batch[0].clone(), web[1].clone()];
        want.sort();
        assert_eq!(marked, want);
        assert!(done);
        let ev = w.s.nodes["n1"].events.last().unwrap().clone();
        assert_eq!(ev.details.unwrap()["deadline_reached"], "true");
        // A forced drain (deadline < 0) is due at once.
        w.drain(-1, 0);
        assert_eq!(
            plan(&w.s, 0).commands.len(),
            1,
            "only the completion: nothing left"
        );
    }
}
