//! Allocations, task states and task events as Nomad names them (their API JSON views are
//! built in `api::allocs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::network::AllocPorts;
use super::spec::Job;
use super::NodeInfo;
use crate::state::status::{AllocClientStatus, AllocDesiredStatus, TaskStatus};

/// One allocation as the server side keeps it (also its on-disk form).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocRecord {
    pub id: String,
    pub namespace: String,
    pub eval_id: String,
    pub name: String,
    pub node_id: String,
    pub node_name: String,
    pub job_id: String,
    /// Shared with the job table and every other alloc of the same version (not a copy each).
    pub job: Arc<Job>,
    pub task_group: String,
    pub alloc_index: u32,
    pub desired_status: AllocDesiredStatus,
    pub desired_description: String,
    pub client_status: AllocClientStatus,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
    pub previous_allocation: String,
    pub next_allocation: String,
    pub create_index: u64,
    pub modify_index: u64,
    pub alloc_modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
    /// The client removed the alloc dir (GC); the alloc itself is still listed.
    #[serde(default)]
    pub collected: bool,
    /// What the scheduler is asked to do with it (`Migrate`: the drainer moves it).
    #[serde(default, skip_serializing_if = "DesiredTransition::is_empty")]
    pub desired_transition: DesiredTransition,
    /// The reschedules that led to this alloc (Nomad's `RescheduleTracker.Events`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reschedule_events: Vec<RescheduleEvent>,
    /// The eval that will reschedule this (failed) alloc later.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub followup_eval_id: String,
    /// The ports the scheduler assigned it (its group's and its tasks' networks).
    #[serde(default, skip_serializing_if = "AllocPorts::is_empty")]
    pub ports: AllocPorts,
}

/// `structs.DesiredTransition`: requests to the scheduler about one alloc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredTransition {
    /// Replace it elsewhere and stop it (a drain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<bool>,
    /// Reschedule it although its policy would not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_reschedule: Option<bool>,
}

impl DesiredTransition {
    pub fn is_empty(&self) -> bool {
        self.migrate.is_none() && self.force_reschedule.is_none()
    }

    pub fn should_migrate(&self) -> bool {
        self.migrate == Some(true)
    }
}

/// One reschedule (`structs.RescheduleEvent`): when, from which alloc and node, after what delay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescheduleEvent {
    /// Unix nanoseconds.
    pub reschedule_time: i64,
    pub prev_alloc_id: String,
    pub prev_node_id: String,
    /// Nanoseconds.
    pub delay: i64,
}

/// `structs.TaskState`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskState {
    pub state: TaskStatus,
    pub failed: bool,
    pub restarts: u64,
    pub last_restart: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub events: Vec<TaskEvent>,
    pub paused: String,
}

/// A client status the client set, with its description. Logged as the pair
/// `["failed","Failed tasks"]`, the form commands had before it was a struct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "(AllocClientStatus, String)",
    into = "(AllocClientStatus, String)"
)]
pub struct ClientStatusUpdate {
    pub status: AllocClientStatus,
    pub description: String,
}

impl From<(AllocClientStatus, String)> for ClientStatusUpdate {
    fn from((status, description): (AllocClientStatus, String)) -> ClientStatusUpdate {
        ClientStatusUpdate {
            status,
            description,
        }
    }
}

impl From<ClientStatusUpdate> for (AllocClientStatus, String) {
    fn from(u: ClientStatusUpdate) -> (AllocClientStatus, String) {
        (u.status, u.description)
    }
}

/// The client keeps this many events per task.
pub const MAX_TASK_EVENTS: usize = 10;

/// `structs.TaskEvent`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskEvent {
    #[serde(rename = "Type")]
    pub event_type: String,
    pub time: i64,
    pub message: String,
    pub display_message: String,
    pub details: BTreeMap<String, String>,
    pub fails_task: bool,
    pub restart_reason: String,
    pub setup_error: String,
    pub driver_error: String,
    pub exit_code: i64,
    pub signal: i64,
    pub kill_timeout: i64,
    pub kill_error: String,
    pub kill_reason: String,
    pub start_delay: i64,
    pub download_error: String,
    pub validation_error: String,
    pub disk_limit: i64,
    pub failed_sibling: String,
    pub vault_error: String,
    pub task_signal_reason: String,
    pub task_signal: String,
    pub driver_message: String,
    pub generic_source: String,
}

impl TaskEvent {
    /// A new event of a type, stamped now, with its display message.
    pub fn new(event_type: &str, display: impl Into<String>) -> TaskEvent {
        TaskEvent {
            event_type: event_type.to_string(),
            time: crate::time::unix_now_nanos(),
            display_message: display.into(),
            ..TaskEvent::default()
        }
    }

    /// Set `Details[key]`, as Nomad mirrors event fields there.
    pub fn detail(mut self, key: &str, value: impl Into<String>) -> TaskEvent {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

impl TaskState {
    pub fn pending() -> TaskState {
        TaskState {
            state: TaskStatus::Pending,
            ..TaskState::default()
        }
    }

    /// Append an event, keeping the latest [`MAX_TASK_EVENTS`].
    pub fn push_event(&mut self, ev: TaskEvent) {
        self.events.push(ev);
        if self.events.len() > MAX_TASK_EVENTS {
            let extra = self.events.len() - MAX_TASK_EVENTS;
            self.events.drain(..extra);
        }
    }
}

/// What makes a new allocation unique: the command's index, the ID and the time its
/// proposer chose.
#[derive(Clone, Copy, Debug)]
pub struct AllocStamp<'a> {
    pub index: u64,
    pub id: &'a str,
    pub now: i64,
}

impl AllocRecord {
    /// A new allocation of `job`'s `group` (index `idx`), placed on `node`, with the ID and
    /// time chosen before (by the proposer of the command that makes it).
    pub fn new_at(
        job: &Arc<Job>,
        group: &str,
        idx: u32,
        eval_id: &str,
        node: &NodeInfo,
        at: AllocStamp<'_>,
    ) -> AllocRecord {
        let AllocStamp { index, id, now } = at;
        AllocRecord {
            id: id.to_string(),
            namespace: job.namespace.clone(),
            eval_id: eval_id.to_string(),
            name: format!("{}.{}[{}]", job.id, group, idx),
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            job_id: job.id.clone(),
            job: job.clone(),
            task_group: group.to_string(),
            alloc_index: idx,
            desired_status: AllocDesiredStatus::Run,
            desired_description: String::new(),
            client_status: AllocClientStatus::Pending,
            client_description: String::new(),
            task_states: BTreeMap::new(),
            previous_allocation: String::new(),
            next_allocation: String::new(),
            create_index: index,
            modify_index: index,
            alloc_modify_index: index,
            create_time: now,
            modify_time: now,
            collected: false,
            desired_transition: DesiredTransition::default(),
            reschedule_events: Vec::new(),
            followup_eval_id: String::new(),
            ports: AllocPorts::default(),
        }
    }

    /// Terminal: the client is done with it, or it is stopped and was never started.
    pub fn terminal(&self) -> bool {
        self.client_status.is_terminal()
    }

    /// Recompute `ClientStatus` from the task states (a terminal status never changes back).
    pub fn refresh_client_status(&mut self) {
        if self.terminal() || self.task_states.is_empty() {
            return;
        }
        let states: Vec<&TaskState> = self.task_states.values().collect();
        self.client_status = if states.iter().all(|s| s.state == TaskStatus::Dead) {
            if states.iter().any(|s| s.failed) {
                AllocClientStatus::Failed
            } else {
                AllocClientStatus::Complete
            }
        } else if states.iter().any(|s| s.state == TaskStatus::Running) {
            AllocClientStatus::Running
        } else {
            AllocClientStatus::Pending
        };
        self.client_description = match self.client_status {
            AllocClientStatus::Running => "Tasks are running",
            AllocClientStatus::Complete => "All tasks have completed",
            AllocClientStatus::Failed => "Failed tasks",
            _ => "No tasks have started",
        }
        .into();
    }

    /// Wanted running and not finished: what the client should run, what keeps a workload
    /// identity valid.
    pub fn is_live(&self) -> bool {
        self.desired_status == AllocDesiredStatus::Run && !self.terminal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_capped_at_ten_keeping_the_latest() {
        let mut ts = TaskState::pending();
        for i in 0..15 {
            ts.push_event(TaskEvent::new("Started", format!("{i}")));
        }
        assert_eq!(ts.events.len(), 10);
        assert_eq!(ts.events[0].display_message, "5");
    }
}
