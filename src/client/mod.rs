//! The client half of the agent: alloc runners (a thread per task), the raw_exec driver,
//! task cgroups (found once here, see `sys::cgroup`), alloc dirs, task env, rotating logs,
//! stats and garbage collection.

pub mod alloc_dir;
pub mod dirfd;
pub mod logs;
pub mod raw_exec;
pub mod restarts;
pub mod signals;
pub mod stats;
pub mod task_env;
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
use crate::config::Config;
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

/// The client: every alloc runner on this node.
pub struct Client {
    runners: Mutex<HashMap<String, Vec<TaskHandle>>>,
    pub stats: stats::Sampler,
    /// The cgroups tasks run in (mode `None`: process groups only).
    pub cgroups: Cgroups,
    data_dir: PathBuf,
    gc_max_allocs: usize,
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
            stopping: AtomicBool::new(false),
            agent: OnceLock::new(),
        }
    }

    /// Restore allocations from disk and start their runners.
    pub fn start(&self, agent: &Arc<Agent>) {
        let _ = self.agent.set(Arc::downgrade(agent));
        self.sync(agent);
    }

    /// Stop every task runner and join them. Running tasks are killed
    /// (KillSignal, then SIGKILL after KillTimeout) and start again on the next run.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let runners: Vec<Vec<TaskHandle>> = self.runners.lock().drain().map(|(_, v)| v).collect();
        for tasks in &runners {
            for t in tasks {
                let _ = t.cmds.send(TaskCmd::Shutdown);
            }
        }
        for tasks in runners {
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
        let allocs: Vec<Arc<AllocRecord>> = agent
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
            let _ = agent.workloads.update_alloc(&id, |a| {
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
                .update_alloc(alloc_id, |a| a.collected = true)
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
        let mut terminal: Vec<Arc<AllocRecord>> = agent
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
