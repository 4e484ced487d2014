//! Jobs, evaluations and allocations as the server side keeps them (durable, indexed).

use std::path::Path;

use super::store::StoreError;

/// The server-side job, evaluation and allocation tables.
#[derive(Debug, Default)]
pub struct Workloads {}

impl Workloads {
    /// Load from `<data_dir>/server`.
    pub fn load(_data_dir: &Path) -> Result<Workloads, StoreError> {
        Ok(Workloads {})
    }

    /// Allocations on this node, for the agent's stats.
    pub fn alloc_count(&self) -> usize {
        0
    }

    /// Facts about an allocation that the ACL layer needs: `(job_id, namespace, terminal)`.
    pub fn alloc_status(&self, _alloc_id: &str) -> Option<(String, String, bool)> {
        None
    }
}
