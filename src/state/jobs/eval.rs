//! Evaluations: the record of each scheduling decision (register, deregister, alloc stop).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::Job;
use crate::state::status::{EvalStatus, JobType};

/// One evaluation (also its on-disk form). nomadlet schedules synchronously, so every
/// evaluation is `complete` by the time its ID is returned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    pub id: String,
    pub namespace: String,
    pub priority: i64,
    pub eval_type: JobType,
    pub triggered_by: String,
    pub job_id: String,
    pub job_modify_index: u64,
    pub status: EvalStatus,
    pub queued_allocations: BTreeMap<String, u64>,
    pub snapshot_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

impl EvalRecord {
    /// A completed evaluation of `job`, made at `index`, with the ID and time chosen before
    /// (by the proposer of the command that makes it: apply reads no clock).
    pub fn new_at(job: &Job, triggered_by: &str, index: u64, id: &str, now: i64) -> EvalRecord {
        EvalRecord {
            id: id.to_string(),
            namespace: job.namespace.clone(),
            priority: job.priority.unwrap_or(50),
            eval_type: job.job_type(),
            triggered_by: triggered_by.to_string(),
            job_id: job.id.clone(),
            job_modify_index: job.job_modify_index,
            status: EvalStatus::Complete,
            queued_allocations: job
                .task_groups
                .iter()
                .map(|g| (g.name.clone(), 0))
                .collect(),
            snapshot_index: index,
            create_index: index,
            modify_index: index,
            create_time: now,
            modify_time: now,
        }
    }
}
