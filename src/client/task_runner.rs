//! One task's runner thread: build its dir, run the prestart hooks, make its cgroup, start it
//! through its shim (`client::shim`, the task's parent, which owns its pipes and log files),
//! wait, apply the restart policy, and stop it (KillSignal, then SIGKILL after KillTimeout,
//! then everything left in its cgroup), recording Nomad's task events as it goes. A task is
//! recorded dead only once no process of it is left. When the agent stops with a persistent
//! data dir, the runner detaches: the task keeps running and the next agent re-attaches to
//! its shim (or, if the task ended meanwhile, takes its exit status from the shim's file).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::state::jobs::alloc::{AllocRecord, TaskEvent, TaskState};
use crate::state::jobs::spec::Task;
use crate::state::jobs::timefmt::rfc3339_ns;
use crate::state::status::TaskStatus;
use crate::sys::cgroup::{Limits, TaskCgroup, KILL_WAIT};
use crate::time::unix_now_nanos as now_ns;

use super::alloc_dir::{AllocDir, TaskDir};
use super::raw_exec;
use super::restarts::{later, Decision, RestartTracker};
use super::shim::{self, ExitInfo, Found, LogSpec, Shim, ShimSpec};
use super::task_env::{self, NodeFacts};
use super::task_events::{self, UNRECOVERABLE, USER_RESTART};
use super::task_hooks::{self, TaskHookInput, TaskHookOutput};
use super::Client;
use crate::signals::{parse_signal, signal_name};

/// How long the runner waits for the shim to drain the pipes after the task exited.
pub const LOG_DRAIN_GRACE: Duration = Duration::from_secs(3);
/// Nomad's default `resources.cpu` (MHz), for a task stored without one.
pub const DEFAULT_CPU_MHZ: i64 = 100;
/// Nomad's default `resources.memory` (MB), for a task stored without one.
pub const DEFAULT_MEMORY_MB: i64 = 300;
/// How often the exit wait wakes to check the process.
pub const WAIT_TICK: Duration = Duration::from_millis(100);
/// How long the runner waits for the exit after SIGKILL.
pub const SIGKILL_WAIT: Duration = Duration::from_secs(10);

/// What the client asks of a running task.
#[derive(Debug, Clone)]
pub enum TaskCmd {
    /// The alloc is stopped: kill the task for good.
    Stop,
    /// The agent is shutting down and the task cannot outlive it (`-dev`'s temporary data
    /// dir, or a drain on shutdown, whose deadline cuts the kill timeout): kill it, keep it
    /// to start again on the next run.
    Shutdown(Option<Instant>),
    /// The agent is shutting down: leave the task running for the next agent.
    Detach,
    /// `alloc restart`: kill and start again, outside the restart policy.
    Restart,
    /// `alloc signal`.
    Signal(i32),
    /// Another task of the alloc failed: stop this one for good.
    SiblingFailed(String),
}

/// How one run of the task ended (or why the runner stops watching it).
enum RunEnd {
    Exited { code: i64 },
    Stopped,
    Shutdown,
    Detached,
    Restart,
}

/// A started task: its shim and its cgroup.
/// What an exec in a task started from `spec` needs.
fn exec_target(spec: &ShimSpec) -> super::exec::ExecTarget {
    super::exec::ExecTarget {
        env: spec.env.clone(),
        work_dir: spec.work_dir.clone(),
        user: spec.user,
        cgroup_procs: spec.cgroup_procs.clone(),
    }
}

struct Running {
    shim: Shim,
    cgroup: Option<TaskCgroup>,
}

impl Running {
    fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0)
    }
}

/// Where a restored task picks up.
enum Resume {
    /// Its shim still runs: watch it again.
    Attach(Running),
    /// It ended while no agent watched: record the exit, then apply the restart policy.
    Exited(ExitInfo, Option<TaskCgroup>),
    /// It was waiting out a restart delay: wait the rest (ns), then start.
    Delay(i64),
}

/// The runner of one task of one allocation.
pub struct TaskRunner {
    pub client: Arc<Client>,
    pub alloc_id: String,
    pub task_name: String,
    /// Started again after an agent restart.
    pub restored: bool,
    pub cmds: Receiver<TaskCmd>,
    /// Published while the task runs, for `alloc exec`.
    pub exec: super::exec::ExecSlot,
}

impl TaskRunner {
    /// Record an event and change the task state, durably; one INFO line in the agent log.
    fn event(&self, ev: TaskEvent, f: impl FnOnce(&mut TaskState)) {
        if let Some(line) = task_events::log_line(&ev) {
            log::info!("alloc {} task {}: {line}", self.alloc_id, self.task_name);
        }
        let res = self
            .client
            .update_task(&self.alloc_id, &self.task_name, |ts| {
                f(ts);
                ts.push_event(ev);
            });
        if let Err(e) = res {
            log::error!(
                "alloc {} task {}: cannot save task state: {e}",
                self.alloc_id,
                self.task_name
            );
        }
    }

    fn dead(&self, ev: TaskEvent, failed: bool) {
        self.event(ev, |ts| {
            ts.state = TaskStatus::Dead;
            ts.failed = failed;
            ts.finished_at = Some(rfc3339_ns(now_ns()));
        });
    }

    fn driver_failure(&self, err: String) {
        self.event(TaskEvent::driver_failure(err), |_| {});
        self.dead(TaskEvent::not_restarting(UNRECOVERABLE.into(), true), true);
    }

    /// The thread body: set up (or re-attach), then run the task until it is done for good,
    /// or the agent stops.
    pub fn run(self) {
        let Some(alloc) = self.client.alloc(&self.alloc_id) else {
            return;
        };
        let Some(tg) = alloc.job.group(&alloc.task_group).cloned() else {
            return;
        };
        let Some(task) = tg.tasks.iter().find(|t| t.name == self.task_name).cloned() else {
            return;
        };
        let prior = alloc.task_states.get(&self.task_name).cloned();
        if self.restored
            && prior
                .as_ref()
                .is_some_and(|ts| ts.state == TaskStatus::Dead)
        {
            kill_orphan(&self.client, &self.alloc_id, &self.task_name);
            return;
        }
        let mut resume = if self.restored {
            self.resume(&alloc, prior.as_ref())
        } else {
            None
        };
        if resume.is_none() {
            if self.restored {
                self.kill_leftover(&alloc);
            }
            self.event(TaskEvent::received(self.restored), |ts| {
                if self.restored {
                    ts.state = TaskStatus::Pending;
                }
            });
        }
        let ad = AllocDir::new(self.client.data_dir(), &self.alloc_id);
        let task_dir = match &resume {
            Some(_) => ad.task(&task.name),
            None => match ad.build_shared().and_then(|_| ad.build_task(&task.name)) {
                Ok(td) => td,
                Err(e) => {
                    let msg = format!("failed to build task directory for {:?}: {e}", task.name);
                    self.dead(TaskEvent::setup_failure(msg), true);
                    return;
                }
            },
        };
        if resume.is_none() {
            self.event(TaskEvent::task_setup("Building Task Directory"), |_| {});
            if let Err(e) = super::dispatch_payload::write(&ad, &alloc.job, &task) {
                let msg = format!("failed to write dispatch payload: {e}");
                self.dead(TaskEvent::setup_failure(msg), true);
                return;
            }
        }
        let hook = self.hooks(&task, &task_dir, resume.is_none());
        // Dropped when this thread ends: the task has stopped for good or the agent stops.
        let _guard = hook.guard;

        if resume.is_none() {
            if !self.client.raw_exec_enabled() {
                self.driver_failure(
                    "raw_exec driver is disabled on this client: enable it with plugin \"raw_exec\" { config { enabled = true } }"
                        .to_string(),
                );
                return;
            }
            if self.restored {
                self.event(TaskEvent::restarting_after_agent_restart(), |_| {});
            }
        }
        let node = self.client.node_facts();
        let mut tracker = RestartTracker::new(&tg);
        loop {
            let end = match resume.take() {
                Some(Resume::Attach(running)) => {
                    // A task started just before the last agent stopped may lack its event.
                    if prior
                        .as_ref()
                        .is_some_and(|ts| ts.state != TaskStatus::Running)
                    {
                        self.event(TaskEvent::started(running.shim.pid), |ts| {
                            ts.state = TaskStatus::Running;
                            if ts.started_at.is_none() {
                                ts.started_at = Some(rfc3339_ns(now_ns()));
                            }
                        });
                    }
                    // The new agent learns what an exec needs the way the start did: the
                    // task's env (hooks ran again above), dir, user and cgroup.
                    let env = task_env::build(
                        &alloc,
                        &task,
                        (&ad, &task_dir),
                        &node,
                        std::env::vars(),
                        &hook.env,
                    );
                    let procs = running
                        .cgroup
                        .as_ref()
                        .map(|c| c.procs_paths())
                        .unwrap_or_default();
                    if let Err(e) = self.publish_exec(&task, env, &node, &task_dir.dir, procs) {
                        log::warn!(
                            "alloc {} task {}: exec unavailable after re-attach: {e}",
                            self.alloc_id,
                            self.task_name
                        );
                    }
                    self.supervise(&task, running)
                }
                Some(Resume::Exited(info, cgroup)) => {
                    self.terminated(info, cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0));
                    self.destroy(cgroup);
                    RunEnd::Exited { code: info.code }
                }
                Some(Resume::Delay(delay)) => match self.wait_delay(delay) {
                    Some(end) => end,
                    None => continue,
                },
                None => {
                    let env = task_env::build(
                        &alloc,
                        &task,
                        (&ad, &task_dir),
                        &node,
                        std::env::vars(),
                        &hook.env,
                    );
                    match self.start(&task, &env, &node, &task_dir.dir) {
                        Ok(Some(running)) => self.supervise(&task, running),
                        Ok(None) => continue,
                        Err(StartStop(end)) => end,
                        Err(StartFailed(msg)) => {
                            self.driver_failure(msg);
                            return;
                        }
                    }
                }
            };
            let (delay, reason) = match end {
                RunEnd::Stopped => {
                    self.dead(TaskEvent::killed(false), false);
                    return;
                }
                RunEnd::Shutdown => {
                    self.event(TaskEvent::killed(true), |ts| ts.state = TaskStatus::Pending);
                    return;
                }
                RunEnd::Detached => {
                    log::info!(
                        "alloc {} task {}: left running for the next agent",
                        self.alloc_id,
                        self.task_name
                    );
                    return;
                }
                RunEnd::Restart => (0, USER_RESTART.to_string()),
                RunEnd::Exited { code } => match tracker.decide(alloc.job.is_batch(), code == 0) {
                    Decision::Done { failed } => {
                        self.finish(failed);
                        return;
                    }
                    Decision::Fail { reason } => {
                        self.dead(TaskEvent::not_restarting(reason, false), true);
                        return;
                    }
                    Decision::Restart { delay, reason } => (delay, reason),
                },
            };
            self.restarting(delay, &reason);
            if delay > 0 {
                resume = Some(Resume::Delay(delay));
            }
        }
    }

    /// After an agent restart: re-attach to the task's shim, or take the exit it recorded,
    /// or resume a restart delay. `None`: nothing to resume (start afresh).
    fn resume(&self, alloc: &AllocRecord, prior: Option<&TaskState>) -> Option<Resume> {
        let ts = prior?;
        let dir = shim::shim_dir(self.client.data_dir(), &self.alloc_id, &self.task_name).ok()?;
        let cgroup = || {
            self.client
                .cgroups
                .leftover(&self.alloc_id, &self.task_name)
        };
        match Shim::find(&dir) {
            Found::Alive(shim) => {
                log::info!(
                    "alloc {} task {}: re-attached to pid {} (shim {})",
                    self.alloc_id,
                    self.task_name,
                    shim.pid,
                    shim.shim_pid
                );
                // A shim started just before the last agent stopped may still wait for this.
                let _ = shim.pump();
                let running = Running {
                    shim,
                    cgroup: cgroup(),
                };
                self.client.stats.register(
                    &self.alloc_id,
                    &self.task_name,
                    running.shim.pid,
                    running.cgroup.as_ref().map(|c| c.stats_source()),
                );
                return Some(Resume::Attach(running));
            }
            Found::Exited(info) => {
                let _ = std::fs::remove_dir_all(&dir);
                if ts.state == TaskStatus::Running {
                    log::info!(
                        "alloc {} task {}: exited while the agent was away",
                        self.alloc_id,
                        self.task_name
                    );
                    return Some(Resume::Exited(info, cgroup()));
                }
            }
            Found::Lost => {}
        }
        let _ = alloc;
        // A restart delay the previous agent was waiting out: its Restarting event is the
        // last one, stamped when the wait began.
        let last = ts.events.last()?;
        if ts.state == TaskStatus::Pending
            && last.event_type == "Restarting"
            && last.start_delay > 0
        {
            let left = (last.time + last.start_delay - now_ns()).max(0);
            log::info!(
                "alloc {} task {}: resuming its restart delay ({} ms left)",
                self.alloc_id,
                self.task_name,
                left / 1_000_000
            );
            return Some(Resume::Delay(left));
        }
        None
    }

    /// The prestart hooks (Task API socket, workload identity); warnings become events on
    /// a fresh start.
    fn hooks(&self, task: &Task, task_dir: &TaskDir, record: bool) -> TaskHookOutput {
        let crate::state::jobs::spec::IdentityFlags {
            env: identity_env,
            file: identity_file,
        } = task.identity_flags();
        let hook = task_hooks::prestart(
            &self.client,
            &TaskHookInput {
                alloc_id: self.alloc_id.clone(),
                task: task.name.clone(),
                user: (!task.user.is_empty()).then(|| task.user.clone()),
                secrets_dir: task_dir.secrets.clone(),
                identity_env,
                identity_file,
            },
        );
        if record {
            for w in &hook.warnings {
                self.event(TaskEvent::task_setup(w), |_| {});
            }
        }
        hook
    }

    /// After an agent crash that also took the task's shim: kill everything in its cgroup,
    /// and its last process group, but only when `/proc/<pid>/environ` proves it is this
    /// task (pids are reused).
    fn kill_leftover(&self, alloc: &AllocRecord) {
        // Its cgroup is this agent's and this task's by its path (parent, alloc ID, task).
        if let Some(cg) = self
            .client
            .cgroups
            .leftover(&self.alloc_id, &self.task_name)
        {
            log::warn!(
                "alloc {} task {}: killing the processes left in its cgroup",
                self.alloc_id,
                self.task_name
            );
            if let Err(e) = cg.destroy(KILL_WAIT) {
                log::error!("alloc {} task {}: {e}", self.alloc_id, self.task_name);
            }
        }
        let Some(pid) = alloc
            .task_states
            .get(&self.task_name)
            .and_then(|ts| ts.events.iter().rev().find(|e| e.event_type == "Started"))
            .and_then(|e| e.details.get("pid"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            return;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return;
        };
        let want_alloc = format!("NOMAD_ALLOC_ID={}", self.alloc_id);
        let want_task = format!("NOMAD_TASK_NAME={}", self.task_name);
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if vars.contains(&want_alloc.as_bytes()) && vars.contains(&want_task.as_bytes()) {
            log::warn!(
                "alloc {} task {}: killing leftover process group {pid}",
                self.alloc_id,
                self.task_name
            );
            raw_exec::signal_group(pid, libc::SIGKILL);
        }
    }

    /// A batch task ran to completion: its `Terminated` event is already recorded.
    fn finish(&self, failed: bool) {
        let _ = self
            .client
            .update_task(&self.alloc_id, &self.task_name, |ts| {
                ts.state = TaskStatus::Dead;
                ts.failed = failed;
                ts.finished_at = Some(rfc3339_ns(now_ns()));
            });
    }

    fn restarting(&self, delay: i64, reason: &str) {
        self.event(TaskEvent::restarting(delay, reason), |ts| {
            ts.state = TaskStatus::Pending;
            ts.restarts += 1;
            ts.last_restart = Some(rfc3339_ns(now_ns()));
        });
    }

    /// The one place a command is handled. `running`: the task runs (else it waits to
    /// start, or waits out a restart delay). `Some(end)`: stop watching, for that reason.
    fn handle(&self, cmd: TaskCmd, task: &Task, running: Option<&mut Running>) -> Option<RunEnd> {
        match (cmd, running) {
            (TaskCmd::Stop, run) => {
                if let Some(run) = run {
                    self.kill(task, run, "");
                }
                Some(RunEnd::Stopped)
            }
            (TaskCmd::SiblingFailed(name), run) => {
                self.event(TaskEvent::sibling_failed(&name), |_| {});
                if let Some(run) = run {
                    self.kill(task, run, "");
                }
                Some(RunEnd::Stopped)
            }
            (TaskCmd::Shutdown(deadline), run) => {
                if let Some(run) = run {
                    self.kill_by(task, run, "agent shutting down", deadline);
                }
                Some(RunEnd::Shutdown)
            }
            (TaskCmd::Detach, _) => Some(RunEnd::Detached),
            (TaskCmd::Restart, Some(run)) => {
                self.event(TaskEvent::restart_signaled(), |_| {});
                self.kill(task, run, "");
                Some(RunEnd::Restart)
            }
            // In a restart delay: start now.
            (TaskCmd::Restart, None) => Some(RunEnd::Restart),
            (TaskCmd::Signal(sig), Some(run)) => {
                self.event(TaskEvent::signaling(signal_name(sig)), |_| {});
                if let Err(e) = run.shim.signal(sig) {
                    log::warn!("signal to task {} failed: {e}", self.task_name);
                }
                None
            }
            (TaskCmd::Signal(_), None) => None,
        }
    }

    /// Sleep through a restart delay (ns) unless told otherwise; `None`: start now.
    fn wait_delay(&self, delay: i64) -> Option<RunEnd> {
        let deadline = later(Duration::from_nanos(delay.max(0) as u64));
        let task = Task::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let cmd = match self.cmds.recv_timeout(left) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Disconnected) => TaskCmd::Detach,
                Err(RecvTimeoutError::Timeout) => return None,
            };
            match self.handle(cmd, &task, None) {
                Some(RunEnd::Restart) => return None,
                Some(end) => return Some(end),
                None => {}
            }
        }
    }

    /// Publish the exec target of a task this runner re-attached to: the same user, dir and
    /// env a start computes (the host env and hook outputs of this agent), and its cgroup.
    fn publish_exec(
        &self,
        task: &Task,
        env: BTreeMap<String, String>,
        node: &NodeFacts,
        task_dir: &std::path::Path,
        cgroup_procs: Vec<std::path::PathBuf>,
    ) -> Result<(), raw_exec::DriverError> {
        let user = raw_exec::task_user(&task.user)?;
        let work_dir = task
            .config_str("work_dir")
            .map(|w| std::path::PathBuf::from(task_env::interpolate(w, &env, node)))
            .unwrap_or_else(|| task_dir.to_path_buf());
        *self.exec.lock() = Some(super::exec::ExecTarget {
            env,
            work_dir,
            user: user.map(|u| (u.uid, u.gid)),
            cgroup_procs,
        });
        Ok(())
    }

    /// Start the task through a new shim. `Ok(None)`: a restart command came first (start
    /// again); `Err(StartStop)`: a stop came first.
    fn start(
        &self,
        task: &Task,
        env: &BTreeMap<String, String>,
        node: &NodeFacts,
        task_dir: &std::path::Path,
    ) -> Result<Option<Running>, StartError> {
        // A stop that arrived before the start wins.
        loop {
            match self.cmds.try_recv() {
                Ok(cmd) => {
                    if let Some(end) = self.handle(cmd, task, None) {
                        if matches!(end, RunEnd::Restart) {
                            continue;
                        }
                        return Err(StartStop(end));
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(StartStop(RunEnd::Detached)),
            }
        }
        let user = raw_exec::task_user(&task.user).map_err(|e| StartFailed(e.to_string()))?;
        let command =
            raw_exec::resolve_command(task.config_str("command").unwrap_or(""), task_dir, env)
                .map_err(|e| StartFailed(format!("failed to launch command with executor: {e}")))?;
        let args: Vec<String> = task
            .config_args()
            .iter()
            .map(|a| task_env::interpolate(a, env, node))
            .collect();
        let work_dir = task
            .config_str("work_dir")
            .map(|w| std::path::PathBuf::from(task_env::interpolate(w, env, node)))
            .unwrap_or_else(|| task_dir.to_path_buf());
        let crate::state::jobs::spec::LogLimits {
            max_files,
            max_file_size_mb: max_mb,
            disabled,
        } = task.log_limits();
        let limits = task
            .resources
            .as_ref()
            .map(|r| Limits {
                cpu_mhz: r.cpu.unwrap_or(DEFAULT_CPU_MHZ),
                memory_mb: r.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
                memory_max_mb: r.memory_max_mb,
            })
            .unwrap_or(Limits {
                cpu_mhz: DEFAULT_CPU_MHZ,
                memory_mb: DEFAULT_MEMORY_MB,
                memory_max_mb: 0,
            });
        let dir = shim::shim_dir(self.client.data_dir(), &self.alloc_id, &self.task_name)
            .map_err(|e| StartFailed(e.to_string()))?;
        let cgroup = self
            .client
            .cgroups
            .create(&self.alloc_id, &self.task_name, &limits)
            .map_err(|e| StartFailed(format!("failed to create the task's cgroup: {e}")))?;
        let spec = ShimSpec {
            data_dir: self.client.data_dir().to_path_buf(),
            alloc_id: self.alloc_id.clone(),
            task: self.task_name.clone(),
            command,
            args,
            work_dir,
            env: env.clone(),
            user: user.map(|u| (u.uid, u.gid)),
            logs: (!disabled).then(|| LogSpec {
                max_files,
                max_size: max_mb * 1024 * 1024,
            }),
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_paths()).unwrap_or_default(),
        };
        let shim = match Shim::spawn(&spec, &dir) {
            Ok(s) => s,
            Err(e) => {
                self.destroy(cgroup);
                return Err(StartFailed(e.to_string()));
            }
        };
        *self.exec.lock() = Some(exec_target(&spec));
        drop(spec);
        let note = format!(
            "{} raw_exec: started pid {} ({})",
            rfc3339_ns(now_ns()),
            shim.pid,
            task.name
        );
        if let Err(e) =
            AllocDir::new(self.client.data_dir(), &self.alloc_id).executor_note(&task.name, &note)
        {
            log::warn!(
                "alloc {} task {}: executor.out refused: {e}",
                self.alloc_id,
                self.task_name
            );
        }
        self.client.stats.register(
            &self.alloc_id,
            &self.task_name,
            shim.pid,
            cgroup.as_ref().map(|c| c.stats_source()),
        );
        self.event(TaskEvent::started(shim.pid), |ts| {
            ts.state = TaskStatus::Running;
            if ts.started_at.is_none() {
                ts.started_at = Some(rfc3339_ns(now_ns()));
            }
        });
        // Output reaches the log files only once the task is recorded as running.
        if let Err(e) = shim.pump() {
            log::warn!(
                "alloc {} task {}: cannot reach its shim: {e}",
                self.alloc_id,
                self.task_name
            );
        }
        Ok(Some(Running { shim, cgroup }))
    }

    /// Watch a running task until it ends or a command ends the watch; then (unless the
    /// runner detaches) empty and remove its cgroup and let the shim finish its logs.
    fn supervise(&self, task: &Task, mut run: Running) -> RunEnd {
        let end = self.wait(task, &mut run);
        *self.exec.lock() = None;
        if matches!(end, RunEnd::Detached) {
            run.shim.detach();
            return end;
        }
        // Whatever the task left behind goes with it: everything in its cgroup (whatever
        // left the group with setsid), which is then removed.
        let Running { shim, cgroup } = run;
        if cgroup.is_none() {
            let _ = shim.signal_group(libc::SIGKILL);
        }
        self.destroy(cgroup);
        shim.finish(LOG_DRAIN_GRACE);
        self.client
            .stats
            .unregister(&self.alloc_id, &self.task_name);
        end
    }

    fn destroy(&self, cgroup: Option<TaskCgroup>) {
        if let Some(cg) = cgroup {
            if let Err(e) = cg.destroy(KILL_WAIT) {
                log::error!(
                    "alloc {} task {}: {e}; processes of the task may be left",
                    self.alloc_id,
                    self.task_name
                );
            }
        }
    }

    /// Nomad's `Terminated` event.
    fn terminated(&self, info: ExitInfo, oom: bool) {
        self.event(TaskEvent::terminated(info.code, info.signal, oom), |_| {});
    }

    /// Kill: KillSignal to the group, SIGKILL after KillTimeout; records Killing and
    /// Terminated.
    fn kill(&self, task: &Task, run: &mut Running, reason: &str) {
        self.kill_by(task, run, reason, None);
    }

    /// [`Self::kill`], with SIGKILL no later than `deadline`.
    fn kill_by(&self, task: &Task, run: &mut Running, reason: &str, deadline: Option<Instant>) {
        let mut timeout = task.kill_timeout();
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now()).as_nanos();
            timeout = timeout.min(left.min(i64::MAX as u128) as i64);
        }
        let sig = parse_signal(&task.kill_signal).unwrap_or(libc::SIGINT);
        self.event(TaskEvent::killing(timeout, reason), |_| {});
        let _ = run.shim.signal_group(sig);
        let status = match run
            .shim
            .wait_exit(Duration::from_nanos(timeout.max(0) as u64))
        {
            Some(st) => Some(st),
            None => {
                log::info!(
                    "alloc {} task {}: did not exit after {}; sending SIGKILL",
                    self.alloc_id,
                    self.task_name,
                    signal_name(sig)
                );
                let _ = run.shim.signal_group(libc::SIGKILL);
                run.shim.wait_exit(SIGKILL_WAIT)
            }
        };
        match status {
            Some(st) => self.terminated(st, run.oom_killed()),
            None => log::error!(
                "alloc {} task {}: no exit status after SIGKILL",
                self.alloc_id,
                self.task_name
            ),
        }
    }

    fn wait(&self, task: &Task, run: &mut Running) -> RunEnd {
        // Starting the task (events, identity signing, cgroup set-up) went deep; a task may
        // then run for months, with this thread waking every WAIT_TICK only a few KiB deep.
        let _ = crate::sys::mem::trim_stack();
        loop {
            let cmd = match self.cmds.recv_timeout(WAIT_TICK) {
                Ok(cmd) => Some(cmd),
                Err(RecvTimeoutError::Disconnected) => Some(TaskCmd::Detach),
                Err(RecvTimeoutError::Timeout) => None,
            };
            if let Some(cmd) = cmd {
                if let Some(end) = self.handle(cmd, task, Some(run)) {
                    return end;
                }
            }
            if let Some(st) = run.shim.exited() {
                self.terminated(st, run.oom_killed());
                return RunEnd::Exited { code: st.code };
            }
            if !run.shim.alive() {
                // The shim was killed before the task ended: nothing reports the exit any more.
                let lost = run.shim.exited().unwrap_or(ExitInfo {
                    code: -1,
                    signal: 0,
                });
                log::warn!(
                    "alloc {} task {}: its shim is gone",
                    self.alloc_id,
                    self.task_name
                );
                self.terminated(lost, run.oom_killed());
                return RunEnd::Exited { code: lost.code };
            }
        }
    }
}

/// Kill a task no runner will watch (its alloc was stopped, or it is recorded dead, while a
/// shim of it still runs): its process group through the shim, everything in its cgroup,
/// then the shim. Nothing happens when it has no live shim.
pub fn kill_orphan(client: &Client, alloc_id: &str, task: &str) {
    let Ok(dir) = shim::shim_dir(client.data_dir(), alloc_id, task) else {
        return;
    };
    let Found::Alive(shim) = Shim::find(&dir) else {
        return;
    };
    log::warn!("alloc {alloc_id} task {task}: killing the task a previous agent left running");
    let _ = shim.signal_group(libc::SIGKILL);
    if let Some(cg) = client.cgroups.leftover(alloc_id, task) {
        if let Err(e) = cg.destroy(KILL_WAIT) {
            log::error!("alloc {alloc_id} task {task}: {e}");
        }
    }
    shim.finish(LOG_DRAIN_GRACE);
}

/// Why a start did not happen.
enum StartError {
    /// A command ended the run before the task started.
    Stop(RunEnd),
    /// The driver could not start it (the driver error).
    Failed(String),
}
use StartError::{Failed as StartFailed, Stop as StartStop};
