//! One task's runner thread: build its dir, run the prestart hooks, make its cgroup, start it
//! with raw_exec, pump its logs, wait, apply the restart policy, and stop it (KillSignal, then
//! SIGKILL after KillTimeout, then everything left in its cgroup), recording Nomad's task
//! events as it goes. A task is recorded dead only once no process of it is left.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::agent::Agent;
use crate::state::jobs::alloc::{TaskEvent, TaskState};
use crate::state::jobs::spec::Task;
use crate::state::jobs::timefmt::{go_duration, rfc3339_ns};
use crate::sys::cgroup::{Limits, KILL_WAIT};
use crate::time::unix_now_nanos as now_ns;

use super::alloc_dir::AllocDir;
use super::logs::{LogPump, Rotator};
use super::raw_exec::{self, Process, SpawnSpec};
use super::restarts::{later, Decision, RestartTracker};
use super::signals::{parse_signal, signal_name};
use super::task_env::{self, NodeFacts};
use super::task_hooks::{self, TaskHookInput};

/// How long log pumps may drain after the task exits before they are told to stop.
pub const LOG_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Nomad's default `resources.cpu` (MHz), for a task stored without one.
pub const DEFAULT_CPU_MHZ: i64 = 100;
/// Nomad's default `resources.memory` (MB), for a task stored without one.
pub const DEFAULT_MEMORY_MB: i64 = 300;
/// The exit message of a task the OOM killer killed (Nomad's).
pub const OOM_MESSAGE: &str = "OOM Killed";
/// How often the exit wait wakes to check the process.
pub const WAIT_TICK: Duration = Duration::from_millis(100);

/// What the client asks of a running task.
#[derive(Debug, Clone)]
pub enum TaskCmd {
    /// The alloc is stopped: kill the task for good.
    Stop,
    /// The agent is shutting down: kill the task, keep it to start again on the next run.
    Shutdown,
    /// `alloc restart`: kill and start again, outside the restart policy.
    Restart,
    /// `alloc signal`.
    Signal(i32),
    /// Another task of the alloc failed: stop this one for good.
    SiblingFailed(String),
}

/// How one run of the process ended.
enum RunEnd {
    Exited { code: i64 },
    Stopped,
    Shutdown,
    Restart,
}

/// The runner of one task of one allocation.
pub struct TaskRunner {
    pub agent: Arc<Agent>,
    pub alloc_id: String,
    pub task_name: String,
    /// Started again after an agent restart.
    pub restored: bool,
    pub cmds: Receiver<TaskCmd>,
}

impl TaskRunner {
    /// Record an event and change the task state, durably.
    fn event(&self, ev: TaskEvent, f: impl FnOnce(&mut TaskState)) {
        let res = self.agent.workloads.update_task(
            &self.agent.index,
            &self.alloc_id,
            &self.task_name,
            |ts| {
                f(ts);
                ts.push_event(ev);
            },
        );
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
            ts.state = "dead".into();
            ts.failed = failed;
            ts.finished_at = Some(rfc3339_ns(now_ns()));
        });
    }

    fn driver_failure(&self, err: String) {
        let mut ev =
            TaskEvent::new("Driver Failure", err.clone()).detail("driver_error", err.clone());
        ev.driver_error = err;
        ev.fails_task = true;
        self.event(ev, |_| {});
        let mut nr = TaskEvent::new("Not Restarting", "Error was unrecoverable")
            .detail("restart_reason", "Error was unrecoverable")
            .detail("fails_task", "true");
        nr.restart_reason = "Error was unrecoverable".into();
        nr.fails_task = true;
        self.dead(nr, true);
    }

    /// The thread body.
    pub fn run(self) {
        let Some(alloc) = self.agent.workloads.alloc(&self.alloc_id) else {
            return;
        };
        let Some(tg) = alloc.job.group(&alloc.task_group).cloned() else {
            return;
        };
        let Some(task) = tg.tasks.iter().find(|t| t.name == self.task_name).cloned() else {
            return;
        };
        if self.restored {
            self.kill_leftover(&alloc);
            self.event(
                TaskEvent::new("Received", "Task restored by client after agent restart"),
                |ts| ts.state = "pending".into(),
            );
        } else {
            self.event(
                TaskEvent::new("Received", "Task received by client"),
                |_| {},
            );
        }
        let ad = AllocDir::new(&self.agent.config.data_dir, &self.alloc_id);
        let built = ad
            .build_shared()
            .and_then(|logs| ad.build_task(&task.name).map(|td| (logs, td)));
        let (logs_fd, task_dir) = match built {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("failed to build task directory for {:?}: {e}", task.name);
                let mut ev =
                    TaskEvent::new("Setup Failure", msg.clone()).detail("setup_error", msg.clone());
                ev.setup_error = msg;
                ev.fails_task = true;
                self.dead(ev, true);
                return;
            }
        };
        let logs_fd = Arc::new(logs_fd);
        let mut setup = TaskEvent::new("Task Setup", "Building Task Directory")
            .detail("message", "Building Task Directory");
        setup.message = "Building Task Directory".into();
        self.event(setup, |_| {});

        let (identity_env, identity_file) = task.identity_flags();
        let hook = task_hooks::prestart(
            &self.agent,
            &TaskHookInput {
                alloc_id: self.alloc_id.clone(),
                job_id: alloc.job_id.clone(),
                namespace: alloc.namespace.clone(),
                region: alloc.job.region.clone(),
                group: alloc.task_group.clone(),
                task: task.name.clone(),
                user: (!task.user.is_empty()).then(|| task.user.clone()),
                secrets_dir: task_dir.secrets.clone(),
                identity_env,
                identity_file,
            },
        );
        for w in &hook.warnings {
            let mut ev = TaskEvent::new("Task Setup", w.clone()).detail("message", w.clone());
            ev.message = w.clone();
            self.event(ev, |_| {});
        }
        // Dropped when this thread ends: the task has stopped for good or the agent stops.
        let _guard = hook.guard;

        if !self.agent.config.raw_exec_enabled {
            self.driver_failure(self.agent.config.raw_exec_advice());
            return;
        }
        if self.restored {
            let mut ev = TaskEvent::new("Restarting", "Task restarting after agent restart")
                .detail("restart_reason", "agent restarted");
            ev.restart_reason = "agent restarted".into();
            self.event(ev, |_| {});
        }
        let node = NodeFacts {
            id: self.agent.node.id().to_string(),
            name: self.agent.config.node_name.clone(),
            datacenter: self.agent.config.datacenter.clone(),
            region: self.agent.config.region.clone(),
            // The node's metadata now (a reload may have changed the configured keys).
            meta: self.agent.node.meta_view().meta,
        };
        let mut tracker = RestartTracker::new(&tg);
        loop {
            let env = task_env::build(
                &alloc,
                &task,
                (&ad, &task_dir),
                &node,
                std::env::vars(),
                &hook.env,
            );
            let end = match self.start_and_wait(&task, &env, &node, &task_dir.dir, &logs_fd) {
                Ok(end) => end,
                Err(msg) => {
                    self.driver_failure(msg);
                    return;
                }
            };
            match end {
                RunEnd::Stopped => {
                    self.dead(TaskEvent::new("Killed", "Task successfully killed"), false);
                    return;
                }
                RunEnd::Shutdown => {
                    self.event(
                        TaskEvent::new("Killed", "Task killed because the agent is shutting down"),
                        |ts| ts.state = "pending".into(),
                    );
                    return;
                }
                RunEnd::Restart => {
                    self.restarting(0, "User requested restart");
                }
                RunEnd::Exited { code } => match tracker.decide(alloc.job.is_batch(), code == 0) {
                    Decision::Done { failed } => {
                        self.finish(failed);
                        return;
                    }
                    Decision::Fail { reason } => {
                        let mut ev = TaskEvent::new("Not Restarting", reason.clone())
                            .detail("restart_reason", reason.clone());
                        ev.restart_reason = reason;
                        ev.fails_task = true;
                        self.dead(ev, true);
                        return;
                    }
                    Decision::Restart { delay, reason } => {
                        self.restarting(delay, &reason);
                        match self.wait_delay(delay) {
                            Some(RunEnd::Stopped) => {
                                self.dead(
                                    TaskEvent::new("Killed", "Task successfully killed"),
                                    false,
                                );
                                return;
                            }
                            Some(RunEnd::Shutdown) => {
                                self.event(
                                    TaskEvent::new(
                                        "Killed",
                                        "Task killed because the agent is shutting down",
                                    ),
                                    |ts| ts.state = "pending".into(),
                                );
                                return;
                            }
                            _ => {}
                        }
                    }
                },
            }
        }
    }

    /// After an agent crash the task's processes may still run: kill everything in its cgroup,
    /// and its last process group, but only when `/proc/<pid>/environ` proves it is this task
    /// (pids are reused).
    fn kill_leftover(&self, alloc: &crate::state::jobs::alloc::AllocRecord) {
        // Its cgroup is this agent's and this task's by its path (parent, alloc ID, task).
        if let Some(cg) = self
            .agent
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

    fn sibling_failed(&self, name: &str) {
        let mut ev = TaskEvent::new(
            "Sibling Task Failed",
            format!("Task's sibling {name:?} failed"),
        )
        .detail("failed_sibling", name);
        ev.failed_sibling = name.to_string();
        self.event(ev, |_| {});
    }

    /// A batch task ran to completion: its `Terminated` event is already recorded.
    fn finish(&self, failed: bool) {
        let _ = self.agent.workloads.update_task(
            &self.agent.index,
            &self.alloc_id,
            &self.task_name,
            |ts| {
                ts.state = "dead".into();
                ts.failed = failed;
                ts.finished_at = Some(rfc3339_ns(now_ns()));
            },
        );
    }

    fn restarting(&self, delay: i64, reason: &str) {
        let display = if reason == "Restart within policy" {
            format!("Task restarting in {}", go_duration(delay))
        } else {
            format!("Task restarting in {} - {}", go_duration(delay), reason)
        };
        let mut ev = TaskEvent::new("Restarting", display)
            .detail("restart_reason", reason)
            .detail("start_delay", delay.to_string());
        ev.restart_reason = reason.to_string();
        ev.start_delay = delay;
        self.event(ev, |ts| {
            ts.state = "pending".into();
            ts.restarts += 1;
            ts.last_restart = Some(rfc3339_ns(now_ns()));
        });
    }

    /// Sleep through a restart delay unless told to stop.
    fn wait_delay(&self, delay: i64) -> Option<RunEnd> {
        let deadline = later(Duration::from_nanos(delay.max(0) as u64));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.cmds.recv_timeout(left) {
                Ok(TaskCmd::Stop) => return Some(RunEnd::Stopped),
                Ok(TaskCmd::SiblingFailed(name)) => {
                    self.sibling_failed(&name);
                    return Some(RunEnd::Stopped);
                }
                Ok(TaskCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    return Some(RunEnd::Shutdown)
                }
                Ok(TaskCmd::Restart) => return None,
                Ok(TaskCmd::Signal(_)) => {}
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    fn start_and_wait(
        &self,
        task: &Task,
        env: &BTreeMap<String, String>,
        node: &NodeFacts,
        task_dir: &std::path::Path,
        logs_fd: &Arc<std::os::fd::OwnedFd>,
    ) -> Result<RunEnd, String> {
        // A stop that arrived before the start wins.
        match self.cmds.try_recv() {
            Ok(TaskCmd::Stop) => return Ok(RunEnd::Stopped),
            Ok(TaskCmd::SiblingFailed(name)) => {
                self.sibling_failed(&name);
                return Ok(RunEnd::Stopped);
            }
            Ok(TaskCmd::Shutdown) => return Ok(RunEnd::Shutdown),
            _ => {}
        }
        let user = raw_exec::task_user(&task.user)?;
        let command =
            raw_exec::resolve_command(task.config_str("command").unwrap_or(""), task_dir, env)
                .map_err(|e| format!("failed to launch command with executor: {e}"))?;
        let args: Vec<String> = task
            .config_args()
            .iter()
            .map(|a| task_env::interpolate(a, env, node))
            .collect();
        let work_dir = task
            .config_str("work_dir")
            .map(|w| std::path::PathBuf::from(task_env::interpolate(w, env, node)))
            .unwrap_or_else(|| task_dir.to_path_buf());
        let (max_files, max_mb, disabled) = task.log_limits();
        // The files are chosen before the task runs, so nothing it plants first can move them.
        let rotators = (!disabled).then(|| {
            let max_size = max_mb * 1024 * 1024;
            let open = |stream: &str| {
                let base = format!("{}.{}", self.task_name, stream);
                Rotator::open(logs_fd.clone(), &base, max_files, max_size)
            };
            [open("stdout"), open("stderr")]
        });
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
        let cgroup = self
            .agent
            .client
            .cgroups
            .create(&self.alloc_id, &self.task_name, &limits)
            .map_err(|e| format!("failed to create the task's cgroup: {e}"))?;
        let mut proc = raw_exec::spawn(SpawnSpec {
            command,
            args,
            work_dir,
            env,
            user,
            capture: !disabled,
            cgroup,
        })?;
        let note = format!(
            "{} raw_exec: started pid {} ({})",
            rfc3339_ns(now_ns()),
            proc.pid,
            task.name
        );
        if let Err(e) = AllocDir::new(&self.agent.config.data_dir, &self.alloc_id)
            .executor_note(&task.name, &note)
        {
            log::warn!(
                "alloc {} task {}: executor.out refused: {e}",
                self.alloc_id,
                self.task_name
            );
        }
        self.agent.client.stats.register(
            &self.alloc_id,
            &self.task_name,
            proc.pid,
            proc.cgroup.as_ref().map(|c| c.stats_source()),
        );
        let mut started = TaskEvent::new("Started", "Task started by client");
        started.details.insert("pid".into(), proc.pid.to_string());
        self.event(started, |ts| {
            ts.state = "running".into();
            if ts.started_at.is_none() {
                ts.started_at = Some(rfc3339_ns(now_ns()));
            }
        });
        // Output reaches the log files only once the task is recorded as running.
        let pump = match rotators {
            Some([out, err]) => self.start_pumps(&mut proc, out, err),
            None => None,
        };
        let end = self.wait(task, &mut proc);
        // Whatever the task left behind goes with it: its group, and everything in its cgroup
        // (whatever left the group with setsid), which is then removed.
        raw_exec::signal_group(proc.pid, libc::SIGKILL);
        if let Some(cg) = proc.cgroup.take() {
            if let Err(e) = cg.destroy(KILL_WAIT) {
                log::error!(
                    "alloc {} task {}: {e}; processes of the task may be left",
                    self.alloc_id,
                    self.task_name
                );
            }
        }
        if let Some(p) = pump {
            p.finish(LOG_DRAIN_GRACE);
        }
        self.agent
            .client
            .stats
            .unregister(&self.alloc_id, &self.task_name);
        Ok(end)
    }

    /// One pump thread for both pipes of the task.
    fn start_pumps(&self, proc: &mut Process, out: Rotator, err: Rotator) -> Option<LogPump> {
        let pipes: Vec<_> = [(proc.stdout.take(), out), (proc.stderr.take(), err)]
            .into_iter()
            .filter_map(|(fd, rot)| Some((fd?, Some(rot))))
            .collect();
        if pipes.is_empty() {
            return None;
        }
        let name = format!(
            "logs-{}-{}",
            &self.alloc_id[..8.min(self.alloc_id.len())],
            self.task_name
        );
        match LogPump::start(name, pipes) {
            Ok(p) => Some(p),
            Err(e) => {
                log::error!("cannot start the log pump of {}: {e}", self.task_name);
                None
            }
        }
    }

    /// Nomad's `Terminated` event; an OOM kill is marked as Nomad marks it (`oom_killed`, and
    /// the exit message "OOM Killed").
    fn terminated(&self, code: i64, signal: i64, oom: bool) {
        let mut display = format!("Exit Code: {code}");
        if signal != 0 {
            display.push_str(&format!(", Signal: {signal}"));
        }
        if oom {
            display.push_str(&format!(", Exit Message: {OOM_MESSAGE:?}"));
        }
        let mut ev = TaskEvent::new("Terminated", display)
            .detail("exit_code", code.to_string())
            .detail("signal", signal.to_string())
            .detail("oom_killed", oom.to_string());
        if oom {
            ev.message = OOM_MESSAGE.to_string();
            ev.details.insert("exit_message".into(), OOM_MESSAGE.into());
            log::warn!(
                "alloc {} task {}: OOM killed (exit code {code})",
                self.alloc_id,
                self.task_name
            );
        }
        ev.exit_code = code;
        ev.signal = signal;
        self.event(ev, |_| {});
    }

    /// Kill: KillSignal to the group, SIGKILL after KillTimeout; records Killing and
    /// Terminated.
    fn kill(&self, task: &Task, proc: &mut Process, reason: &str) {
        let timeout = task.kill_timeout();
        let sig = parse_signal(&task.kill_signal).unwrap_or(libc::SIGINT);
        let mut ev = TaskEvent::new(
            "Killing",
            format!(
                "Sent interrupt. Waiting {} before force killing",
                go_duration(timeout)
            ),
        )
        .detail("kill_timeout", go_duration(timeout));
        ev.kill_timeout = timeout;
        ev.kill_reason = reason.to_string();
        if !reason.is_empty() {
            ev.details.insert("kill_reason".into(), reason.to_string());
        }
        self.event(ev, |_| {});
        raw_exec::signal_group(proc.pid, sig);
        let status = match raw_exec::wait_for(&mut proc.child, Duration::from_nanos(timeout as u64))
        {
            Some(st) => Some(st),
            None => {
                log::info!(
                    "task {} did not exit after {}; sending SIGKILL",
                    self.task_name,
                    signal_name(sig)
                );
                raw_exec::signal_group(proc.pid, libc::SIGKILL);
                raw_exec::wait_for(&mut proc.child, Duration::from_secs(10))
            }
        };
        match status {
            Some(st) => {
                let (code, signal) = raw_exec::exit_parts(&st);
                self.terminated(code, signal, proc.oom_killed());
            }
            None => log::error!("task {} did not exit after SIGKILL", self.task_name),
        }
    }

    fn wait(&self, task: &Task, proc: &mut Process) -> RunEnd {
        // Starting the task (events, identity signing, cgroup set-up) went deep; a task may
        // then run for months, with this thread waking every WAIT_TICK only a few KiB deep.
        let _ = crate::sys::mem::trim_stack();
        loop {
            match self.cmds.recv_timeout(WAIT_TICK) {
                Ok(TaskCmd::Stop) => {
                    self.kill(task, proc, "");
                    return RunEnd::Stopped;
                }
                Ok(TaskCmd::SiblingFailed(name)) => {
                    self.sibling_failed(&name);
                    self.kill(task, proc, "");
                    return RunEnd::Stopped;
                }
                Ok(TaskCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    self.kill(task, proc, "agent shutting down");
                    return RunEnd::Shutdown;
                }
                Ok(TaskCmd::Restart) => {
                    let mut ev = TaskEvent::new("Restart Signaled", "User requested restart")
                        .detail("restart_reason", "User requested restart");
                    ev.restart_reason = "User requested restart".into();
                    self.event(ev, |_| {});
                    self.kill(task, proc, "");
                    return RunEnd::Restart;
                }
                Ok(TaskCmd::Signal(sig)) => {
                    let name = signal_name(sig);
                    let mut ev =
                        TaskEvent::new("Signaling", format!("Task being sent signal {name}"))
                            .detail("signal", name.clone());
                    ev.task_signal = name;
                    self.event(ev, |_| {});
                    if let Err(e) = raw_exec::signal_process(proc.pid, sig) {
                        log::warn!("signal to task {} failed: {e}", self.task_name);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Ok(Some(st)) = proc.child.try_wait() {
                let (code, signal) = raw_exec::exit_parts(&st);
                self.terminated(code, signal, proc.oom_killed());
                return RunEnd::Exited { code };
            }
        }
    }
}
