//! The security hooks a task runner calls around a task: the Task API socket and the
//! workload identity (token in env or file).

use std::path::PathBuf;
use std::sync::Arc;

use crate::agent::Agent;

/// What the task runner knows about a task when it prepares it.
#[derive(Clone, Debug)]
pub struct TaskHookInput {
    pub alloc_id: String,
    pub job_id: String,
    pub namespace: String,
    pub region: String,
    pub group: String,
    pub task: String,
    /// `task.user`, when set.
    pub user: Option<String>,
    /// `<alloc>/<task>`.
    pub task_dir: PathBuf,
    /// `<alloc>/<task>/secrets`.
    pub secrets_dir: PathBuf,
    /// `identity { env = true }`.
    pub identity_env: bool,
    /// `identity { file = true }`.
    pub identity_file: bool,
}

/// What the hooks give back to the task runner.
#[derive(Default)]
pub struct TaskHookOutput {
    /// Extra environment variables for the task (`NOMAD_TOKEN`, `NOMAD_UNIX_ADDR`).
    pub env: Vec<(String, String)>,
    /// Problems to record as task events; the task still starts.
    pub warnings: Vec<String>,
    /// Dropped when the task stops for good: closes the socket and removes its file.
    pub guard: Option<Box<dyn Send + Sync>>,
}

/// Prepare the Task API socket and workload identity for a task (prestart).
pub fn prestart(_agent: &Arc<Agent>, _input: &TaskHookInput) -> TaskHookOutput {
    TaskHookOutput::default()
}
