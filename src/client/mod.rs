//! The client half of the agent: alloc runners (a thread per task), the raw_exec driver,
//! task cgroups (found once here, see `sys::cgroup`), alloc dirs, task env, rotating logs,
//! stats and garbage collection.

pub mod alloc_dir;
pub mod dirfd;
pub mod logs;
pub mod raw_exec;
pub mod restarts;
pub mod shim;
pub mod signals;
pub mod stats;
pub mod task_env;
pub mod task_events;
pub mod task_hooks;
pub mod task_runner;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Sender};
use parking_lot::Mutex;

use crate::agent::Agent;
use crate::config::{Config, DrainOnShutdown};
use crate::state::jobs::alloc::{AllocRecord, TaskEvent};
use crate::sys::cgroup::{Cgroups, Mode};

use self::alloc_dir::AllocDir;
use self::task_runner::{TaskCmd, TaskRunner};

/// What the filesystem API needs to know about one allocation on this client.
#[derive(Clone, Debug)]
pub struct AllocFsView {
    pub namespace: String,
    /// `<data_dir>/alloc/<alloc_id>`.
    pub dir: PathBuf,
    /// The alloc dir was garbage-collected (the alloc is still known).
    pub collected: bool,
    pub tasks: Vec<TaskFsView>,
}

/// One task of an allocation, as the filesystem API sees it.
#[derive(Clone, Debug)]
pub struct TaskFsView {
    pub name: String,
    /// The task has started at least once (`StartedAt` set).
    pub started: bool,
    /// The task is dead and will not run again.
    pub dead: bool,
}

struct TaskHandle {
    name: String,
    cmds: Sender<TaskCmd>,
    join: Option<JoinHandle<()>>,
}

impl TaskHandle {
    fn finished(&self) -> bool {
        self.join.as_ref().map(|j| j.is_finished()).unwrap_or(true)
    }
}

/// Why an allocation could not be collected.
#[derive(Debug, PartialEq, Eq)]
pub enum GcError {
    UnknownAlloc,
    NotEligible,
    Io(String),
}

/// Why a lifecycle call (restart, signal) failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LifecycleError {
    UnknownTask(String),
    NotRunning,
}

/// What the agent's stop does to running tasks.
#[derive(Debug)]
enum TasksOnStop {
    /// Leave them running; the next agent re-attaches.
    Detach,
    /// Kill them (nothing could re-attach).
    Kill,
    /// Kill them, as `drain_on_shutdown` says.
    Drain(DrainOnShutdown),
}

/// The settings that decide [`TasksOnStop`].
struct OnStop {
    temp_data_dir: bool,
    drain: Option<DrainOnShutdown>,
    leave_on_interrupt: bool,
    leave_on_terminate: bool,
}

impl OnStop {
    fn tasks_stop(&self, signal: i32) -> TasksOnStop {
        if self.temp_data_dir {
            log::info!("stopping every task: the data dir is temporary, nothing could re-attach");
            return TasksOnStop::Kill;
        }
        let leave = (signal == libc::SIGINT && self.leave_on_interrupt)
            || (signal == libc::SIGTERM && self.leave_on_terminate);
        match &self.drain {
            Some(d) if leave => {
                log::info!("draining: stopping the allocations before the agent exits");
                TasksOnStop::Drain(d.clone())
            }
            _ => {
                log::info!("leaving tasks running for the next agent to re-attach");
                TasksOnStop::Detach
            }
        }
    }
}

/// The client: every alloc runner on this node.
pub struct Client {
    runners: Mutex<HashMap<String, Vec<TaskHandle>>>,
    pub stats: stats::Sampler,
    /// The cgroups tasks run in (mode `None`: process groups only).
    pub cgroups: Cgroups,
    data_dir: PathBuf,
    gc_max_allocs: usize,
    /// What happens to running tasks when the agent stops.
    on_stop: OnStop,
    stopping: AtomicBool,
    /// Set by `start`; a weak reference because the agent owns the client.
    agent: OnceLock<Weak<Agent>>,
}

impl Client {
    pub fn new(config: &Config) -> Client {
        let cgroups = Cgroups::detect();
        if cgroups.mode() == Mode::None {
            log::warn!(
                "cgroups: not used ({}); tasks are held by their process group only: a process \
                 that leaves it (setsid) escapes stop, and no memory or cpu limit is enforced",
                cgroups.reason()
            );
        } else {
            log::info!(
                "cgroups: mode {}, parents {:?}, memory limit {}, cpu weight {}",
                cgroups.mode().as_str(),
                cgroups.parents(),
                if cgroups.controls("memory") {
                    "enforced"
                } else {
                    "not enforced"
                },
                if cgroups.controls("cpu") {
                    "enforced"
                } else {
                    "not enforced"
                },
            );
        }
        Client {
            runners: Mutex::new(HashMap::new()),
            stats: stats::Sampler::new(),
            cgroups,
            data_dir: config.data_dir.clone(),
            gc_max_allocs: config.gc_max_allocs,
            on_stop: OnStop {
                temp_data_dir: config.data_dir_is_temp,
                drain: config.drain_on_shutdown.clone(),
                leave_on_interrupt: config.leave_on_interrupt,
                leave_on_terminate: config.leave_on_terminate,
            },
            stopping: AtomicBool::new(false),
            agent: OnceLock::new(),
        }
    }

    /// Restore allocations from disk and start their runners.
    pub fn start(&self, agent: &Arc<Agent>) {
        let _ = self.agent.set(Arc::downgrade(agent));
        self.sync(agent);
    }

    /// Stop every task runner and join them, the agent having caught `signal`. Running
    /// tasks are left running for the next agent (their shims keep them and their logs),
    /// except when nothing could re-attach (`-dev`'s temporary data dir) or the agent
    /// leaves with `drain_on_shutdown`: then they are killed (KillSignal, then SIGKILL after
    /// KillTimeout) and start again on the next run.
    pub fn shutdown(&self, signal: i32) {
        self.stopping.store(true, Ordering::SeqCst);
        let stop = self.on_stop.tasks_stop(signal);
        let drain_deadline = match &stop {
            TasksOnStop::Drain(d) => crate::client::restarts::later(d.deadline),
            _ => std::time::Instant::now(),
        };
        let agent = self.agent.get().and_then(Weak::upgrade);
        let runners: Vec<(String, Vec<TaskHandle>)> = self.runners.lock().drain().collect();
        for (alloc_id, tasks) in &runners {
            let cmd = match &stop {
                TasksOnStop::Detach => TaskCmd::Detach,
                TasksOnStop::Kill => TaskCmd::Shutdown(None),
                TasksOnStop::Drain(d) => {
                    let system = agent
                        .as_ref()
                        .and_then(|a| a.workloads.alloc(alloc_id))
                        .is_some_and(|a| a.job.job_type() == "system");
                    if d.ignore_system_jobs && system {
                        TaskCmd::Detach
                    } else {
                        TaskCmd::Shutdown(Some(drain_deadline))
                    }
                }
            };
            for t in tasks {
                let _ = t.cmds.send(cmd.clone());
            }
        }
        for (_, tasks) in runners {
            for mut t in tasks {
                if let Some(j) = t.join.take() {
                    let _ = j.join();
                }
            }
        }
    }

    /// Bring runners in line with the allocations: start runners for allocs that should
    /// run, stop those whose alloc was stopped, reap finished ones.
    pub fn sync(&self, agent: &Arc<Agent>) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let node_id = agent.node.id().to_string();
        let allocs: Vec<AllocRecord> = agent
            .workloads
            .allocs()
            .into_iter()
            .filter(|a| a.node_id == node_id)
            .collect();
        let mut reaped = Vec::new();
        let mut never_started = Vec::new();
        {
            let mut runners = self.runners.lock();
            runners.retain(|_, tasks| {
                if tasks.iter().all(TaskHandle::finished) {
                    reaped.append(tasks);
                    false
                } else {
                    true
                }
            });
            for a in &allocs {
                let has_runner = runners.contains_key(&a.id);
                if a.desired_status == "run" && !a.terminal() && !has_runner {
                    let restored = !a.task_states.is_empty();
                    match self.spawn_runner(agent, a, restored) {
                        Ok(tasks) => {
                            runners.insert(a.id.clone(), tasks);
                        }
                        Err(e) => log::error!("cannot start runner for alloc {}: {e}", a.id),
                    }
                } else if a.desired_status != "run" {
                    if let Some(tasks) = runners.get(&a.id) {
                        for t in tasks {
                            let _ = t.cmds.send(TaskCmd::Stop);
                        }
                    } else if !a.terminal() {
                        never_started.push(a.id.clone());
                    }
                }
            }
        }
        for mut t in reaped {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
        for id in never_started {
            // A task a previous agent left running (stopped while no agent watched) goes
            // before it is recorded dead.
            if let Some(a) = agent.workloads.alloc(&id) {
                for t in a
                    .job
                    .group(&a.task_group)
                    .map(|g| g.tasks.as_slice())
                    .unwrap_or(&[])
                {
                    task_runner::kill_orphan(agent, &id, &t.name);
                }
            }
            let _ = agent.workloads.update_alloc(&agent.index, &id, |a| {
                let names: Vec<String> = a
                    .job
                    .group(&a.task_group)
                    .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
                    .unwrap_or_default();
                for n in names {
                    let ts = a.task_states.entry(n).or_default();
                    if ts.state != "dead" {
                        ts.state = "dead".into();
                        ts.push_event(TaskEvent::new("Killed", "Task successfully killed"));
                    }
                }
                if a.task_states.is_empty() {
                    a.client_status = "complete".into();
                }
            });
        }
        self.auto_gc(agent);
    }

    fn spawn_runner(
        &self,
        agent: &Arc<Agent>,
        a: &AllocRecord,
        restored: bool,
    ) -> std::io::Result<Vec<TaskHandle>> {
        let Some(tg) = a.job.group(&a.task_group) else {
            return Ok(Vec::new());
        };
        let mut handles = Vec::new();
        for task in &tg.tasks {
            let (tx, rx) = unbounded();
            let runner = TaskRunner {
                agent: agent.clone(),
                alloc_id: a.id.clone(),
                task_name: task.name.clone(),
                restored,
                cmds: rx,
            };
            let short: String = a.id.chars().take(8).collect();
            let agent2 = agent.clone();
            let join = std::thread::Builder::new()
                .name(format!("task-{short}-{}", task.name))
                .spawn(move || {
                    let alloc_id = runner.alloc_id.clone();
                    let task = runner.task_name.clone();
                    runner.run();
                    let failed = agent2
                        .workloads
                        .alloc(&alloc_id)
                        .and_then(|a| a.task_states.get(&task).map(|t| t.failed))
                        .unwrap_or(false);
                    if failed {
                        let _ =
                            agent2
                                .client
                                .command(&alloc_id, None, TaskCmd::SiblingFailed(task));
                    }
                    agent2.client.auto_gc(&agent2);
                })?;
            handles.push(TaskHandle {
                name: task.name.clone(),
                cmds: tx,
                join: Some(join),
            });
        }
        Ok(handles)
    }

    /// Send a lifecycle command to one task (`None`: every running task).
    pub fn command(
        &self,
        alloc_id: &str,
        task: Option<&str>,
        cmd: TaskCmd,
    ) -> Result<(), LifecycleError> {
        let runners = self.runners.lock();
        let Some(tasks) = runners.get(alloc_id) else {
            return Err(LifecycleError::NotRunning);
        };
        let mut sent = false;
        for t in tasks {
            if task.map(|n| n == t.name).unwrap_or(true) && !t.finished() {
                sent |= t.cmds.send(cmd.clone()).is_ok();
            }
        }
        if let Some(n) = task {
            if !tasks.iter().any(|t| t.name == n) {
                return Err(LifecycleError::UnknownTask(n.to_string()));
            }
        }
        if sent {
            Ok(())
        } else {
            Err(LifecycleError::NotRunning)
        }
    }

    /// Collect one terminal allocation: remove its alloc dir; the alloc stays listed.
    pub fn gc_alloc(&self, agent: &Arc<Agent>, alloc_id: &str) -> Result<(), GcError> {
        let Some(a) = agent.workloads.alloc(alloc_id) else {
            return Err(GcError::UnknownAlloc);
        };
        if !a.terminal() {
            return Err(GcError::NotEligible);
        }
        // Every task of a terminal alloc is dead; its threads are done or about to be.
        let finished = {
            let mut runners = self.runners.lock();
            let done = runners
                .get(alloc_id)
                .map(|t| t.iter().all(TaskHandle::finished))
                .unwrap_or(false);
            if done {
                runners.remove(alloc_id)
            } else {
                None
            }
        };
        for mut t in finished.into_iter().flatten() {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
        // Persist, then act: the alloc is durably collected before its dir goes (a retry
        // destroys what a failed destroy left).
        if !a.collected {
            agent
                .workloads
                .update_alloc(&agent.index, alloc_id, |a| a.collected = true)
                .map_err(|e| GcError::Io(e.to_string()))?;
        }
        AllocDir::new(&self.data_dir, alloc_id)
            .destroy()
            .map_err(|e| GcError::Io(e.to_string()))?;
        Ok(())
    }

    /// Collect every terminal allocation.
    pub fn gc_all(&self, agent: &Arc<Agent>) {
        for a in agent.workloads.allocs() {
            if a.terminal() && !a.collected {
                let _ = self.gc_alloc(agent, &a.id);
            }
        }
    }

    /// Keep at most `gc_max_allocs` terminal, uncollected allocations.
    pub fn auto_gc(&self, agent: &Arc<Agent>) {
        let mut terminal: Vec<AllocRecord> = agent
            .workloads
            .allocs()
            .into_iter()
            .filter(|a| a.terminal() && !a.collected)
            .collect();
        if terminal.len() <= self.gc_max_allocs {
            return;
        }
        terminal.sort_by_key(|a| a.modify_time);
        let extra = terminal.len() - self.gc_max_allocs;
        for a in terminal.into_iter().take(extra) {
            if let Err(e) = self.gc_alloc(agent, &a.id) {
                log::debug!("auto gc of alloc {} skipped: {e:?}", a.id);
            }
        }
    }

    /// The filesystem view of an allocation known to this client.
    pub fn alloc_fs_view(&self, alloc_id: &str) -> Option<AllocFsView> {
        let agent = self.agent.get()?.upgrade()?;
        let a = agent.workloads.alloc(alloc_id)?;
        let names: Vec<String> = a
            .job
            .group(&a.task_group)
            .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default();
        let tasks = names
            .into_iter()
            .map(|n| {
                let ts = a.task_states.get(&n);
                TaskFsView {
                    started: ts.map(|t| t.started_at.is_some()).unwrap_or(false),
                    dead: ts.map(|t| t.state == "dead").unwrap_or(false) || a.terminal(),
                    name: n,
                }
            })
            .collect();
        Some(AllocFsView {
            dir: AllocDir::new(&self.data_dir, &a.id).root,
            namespace: a.namespace,
            collected: a.collected,
            tasks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_stop(temp: bool, drain: bool, int: bool, term: bool) -> OnStop {
        OnStop {
            temp_data_dir: temp,
            drain: drain.then(|| DrainOnShutdown {
                deadline: std::time::Duration::from_secs(60),
                force: false,
                ignore_system_jobs: false,
            }),
            leave_on_interrupt: int,
            leave_on_terminate: term,
        }
    }

    #[test]
    fn tasks_stay_unless_nothing_could_reattach_or_the_agent_leaves_with_a_drain() {
        let is = |o: OnStop, sig: i32| format!("{:?}", o.tasks_stop(sig));
        assert_eq!(
            is(on_stop(false, false, true, true), libc::SIGTERM),
            "Detach"
        );
        assert_eq!(
            is(on_stop(true, false, false, false), libc::SIGTERM),
            "Kill"
        );
        assert!(is(on_stop(false, true, false, true), libc::SIGTERM).starts_with("Drain"));
        assert_eq!(
            is(on_stop(false, true, false, true), libc::SIGINT),
            "Detach"
        );
        assert!(is(on_stop(false, true, true, false), libc::SIGINT).starts_with("Drain"));
        // leave_on_* without drain_on_shutdown: nothing to drain.
        assert_eq!(
            is(on_stop(false, false, true, true), libc::SIGINT),
            "Detach"
        );
    }
}
