//! The client half of the agent: alloc runners, task runners, the raw_exec driver, logs,
//! stats and garbage collection.

pub mod task_hooks;

use std::path::PathBuf;
use std::sync::Arc;

use crate::agent::Agent;
use crate::config::Config;

/// What the filesystem API needs to know about one allocation on this client.
#[derive(Clone, Debug)]
pub struct AllocFsView {
    pub alloc_id: String,
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

/// The client: every alloc runner on this node.
pub struct Client {}

impl Client {
    pub fn new(_config: &Config) -> Client {
        Client {}
    }

    /// Restore allocations from disk and start their runners and the stats sampler.
    pub fn start(&self, _agent: &Arc<Agent>) {}

    /// Stop every task runner and sampler thread and join them.
    pub fn shutdown(&self) {}

    /// The filesystem view of an allocation known to this client.
    pub fn alloc_fs_view(&self, _alloc_id: &str) -> Option<AllocFsView> {
        None
    }
}
