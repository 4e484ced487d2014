//! Evaluations: the record of each scheduling decision (register, deregister, alloc stop).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::spec::Job;
use super::Unplaceable;
use crate::state::status::{EvalStatus, JobType};

/// Nomad's `AllocMetric` key for nodes filtered out by a missing driver.
pub const FILTER_MISSING_DRIVERS: &str = "missing drivers";
/// Nomad's description of a blocked evaluation made by failed placements.
pub const BLOCKED_FAILED_PLACEMENTS: &str = "created due to placement conflicts";

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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_description: String,
    /// The eval this one follows (a blocked eval's failed one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous_eval: String,
    /// The blocked eval made for placements this one could not make.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blocked_eval: String,
    /// Task group → Nomad's `AllocMetric` of its failed placements.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_tg_allocs: BTreeMap<String, Value>,
    /// The node whose change made this eval (`node-update`, `node-drain`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub node_modify_index: u64,
    /// Unix nanoseconds before which the scheduler leaves it waiting (a delayed reschedule).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub wait_until: i64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
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
            status_description: String::new(),
            previous_eval: String::new(),
            blocked_eval: String::new(),
            failed_tg_allocs: BTreeMap::new(),
            node_id: String::new(),
            node_modify_index: 0,
            wait_until: 0,
        }
    }

    /// A `pending` evaluation of `job` (the scheduler's queue), made at `index`.
    pub fn pending_at(job: &Job, triggered_by: &str, index: u64, id: &str, now: i64) -> EvalRecord {
        let mut e = EvalRecord::new_at(job, triggered_by, index, id, now);
        e.status = EvalStatus::Pending;
        e
    }

    /// Record that no placement of `job` fitted (its driver is missing on the one node): each
    /// group's placements are queued, its `AllocMetric` says the node was filtered for a
    /// missing driver, and `blocked` names the eval that waits for a node that can.
    pub fn fail_placements(&mut self, job: &Job, why: &Unplaceable, blocked: &str) {
        for tg in job.task_groups.iter() {
            let count = tg.count().max(0) as u64;
            if count == 0 {
                continue;
            }
            self.queued_allocations.insert(tg.name.clone(), count);
            self.failed_tg_allocs.insert(
                tg.name.clone(),
                json!({
                    "NodesEvaluated": 1,
                    "NodesFiltered": 1,
                    "NodesInPool": 1,
                    "NodesAvailable": {why.datacenter.as_str(): 1},
                    "ClassFiltered": null,
                    "ConstraintFiltered": {FILTER_MISSING_DRIVERS: 1},
                    "NodesExhausted": 0,
                    "ClassExhausted": null,
                    "DimensionExhausted": null,
                    "QuotaExhausted": null,
                    "ResourcesExhausted": null,
                    "ScoreMetaData": null,
                    "AllocationTime": 0,
                    "CoalescedFailures": count - 1,
                }),
            );
        }
        self.blocked_eval = blocked.to_string();
        self.status_description = format!(
            "driver {:?} is not available on this node: {}",
            why.driver, why.reason
        );
    }

    /// The blocked eval that `failed` (which could not place `job`) leaves behind.
    pub fn blocked_after(failed: &EvalRecord, job: &Job, id: &str) -> EvalRecord {
        let mut e = EvalRecord::new_at(
            job,
            "queued-allocs",
            failed.create_index,
            id,
            failed.create_time,
        );
        e.status = EvalStatus::Blocked;
        e.status_description = BLOCKED_FAILED_PLACEMENTS.into();
        e.previous_eval = failed.id.clone();
        e.queued_allocations = failed.queued_allocations.clone();
        e.failed_tg_allocs = failed.failed_tg_allocs.clone();
        e
    }
}
