//! Allocations, task states and task events as Nomad names them, and their two JSON views:
//! the full `Allocation` (every zero field omitted) and the `AllocListStub`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::spec::Job;
use super::NodeInfo;

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
    pub job: Job,
    pub task_group: String,
    pub alloc_index: u32,
    pub desired_status: String,
    pub desired_description: String,
    pub client_status: String,
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
}

/// `structs.TaskState`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskState {
    pub state: String,
    pub failed: bool,
    pub restarts: u64,
    pub last_restart: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub events: Vec<TaskEvent>,
    pub paused: String,
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
            state: "pending".into(),
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

/// Whether a client status is terminal.
pub fn client_terminal(status: &str) -> bool {
    matches!(status, "complete" | "failed" | "lost")
}

impl AllocRecord {
    /// A new allocation of `job`'s `group` (index `idx`), placed on `node`, with the ID and
    /// time chosen before (by the proposer of the command that makes it).
    pub fn new_at(
        job: &Job,
        group: &str,
        idx: u32,
        eval_id: &str,
        node: &NodeInfo,
        (index, id, now): (u64, &str, i64),
    ) -> AllocRecord {
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
            desired_status: "run".into(),
            desired_description: String::new(),
            client_status: "pending".into(),
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
        }
    }

    /// Terminal: the client is done with it, or it is stopped and was never started.
    pub fn terminal(&self) -> bool {
        client_terminal(&self.client_status)
    }

    /// Recompute `ClientStatus` from the task states (a terminal status never changes back).
    pub fn refresh_client_status(&mut self) {
        if self.terminal() || self.task_states.is_empty() {
            return;
        }
        let states: Vec<&TaskState> = self.task_states.values().collect();
        self.client_status = if states.iter().all(|s| s.state == "dead") {
            if states.iter().any(|s| s.failed) {
                "failed".into()
            } else {
                "complete".into()
            }
        } else if states.iter().any(|s| s.state == "running") {
            "running".into()
        } else {
            "pending".into()
        };
        self.client_description = match self.client_status.as_str() {
            "running" => "Tasks are running".into(),
            "complete" => "All tasks have completed".into(),
            "failed" => "Failed tasks".into(),
            _ => "No tasks have started".into(),
        };
    }

    fn task_states_json(&self) -> Value {
        if self.task_states.is_empty() {
            return Value::Null;
        }
        serde_json::to_value(&self.task_states).unwrap_or(Value::Null)
    }

    fn allocated_resources(&self) -> Value {
        let Some(tg) = self.job.group(&self.task_group) else {
            return Value::Null;
        };
        let mut tasks = Map::new();
        let mut lifecycles = Map::new();
        for t in &tg.tasks {
            let r = t.resources.clone().unwrap_or_default();
            tasks.insert(
                t.name.clone(),
                json!({
                    "Cpu": {"CpuShares": r.cpu.unwrap_or(100), "ReservedCores": null},
                    "Memory": {"MemoryMB": r.memory_mb.unwrap_or(300), "MemoryMaxMB": r.memory_max_mb},
                    "Networks": null,
                    "Devices": null
                }),
            );
            lifecycles.insert(t.name.clone(), Value::Null);
        }
        let disk = tg
            .ephemeral_disk
            .as_ref()
            .and_then(|d| d.size_mb)
            .unwrap_or(300);
        json!({
            "Tasks": tasks,
            "TaskLifecycles": lifecycles,
            "Shared": {"Networks": null, "DiskMB": disk, "Ports": null}
        })
    }

    /// The full `Allocation`: Go field order; every zero-valued field omitted (Nomad's
    /// struct-wide `omitempty`).
    pub fn to_api(&self, job: Value) -> Value {
        let fields: Vec<(&str, Value)> = vec![
            ("ID", json!(self.id)),
            ("Namespace", json!(self.namespace)),
            ("EvalID", json!(self.eval_id)),
            ("Name", json!(self.name)),
            ("NodeID", json!(self.node_id)),
            ("NodeName", json!(self.node_name)),
            ("JobID", json!(self.job_id)),
            ("Job", job),
            ("TaskGroup", json!(self.task_group)),
            ("AllocatedResources", self.allocated_resources()),
            ("DesiredStatus", json!(self.desired_status)),
            ("DesiredDescription", json!(self.desired_description)),
            (
                "DesiredTransition",
                json!({"Migrate": null, "Reschedule": null, "ForceReschedule": null, "NoShutdownDelay": null}),
            ),
            ("ClientStatus", json!(self.client_status)),
            ("ClientDescription", json!(self.client_description)),
            ("TaskStates", self.task_states_json()),
            ("PreviousAllocation", json!(self.previous_allocation)),
            ("NextAllocation", json!(self.next_allocation)),
            ("CreateIndex", json!(self.create_index)),
            ("ModifyIndex", json!(self.modify_index)),
            ("AllocModifyIndex", json!(self.alloc_modify_index)),
            ("CreateTime", json!(self.create_time)),
            ("ModifyTime", json!(self.modify_time)),
        ];
        omit_zero(fields)
    }

    /// `AllocListStub`: every field present, in Go order.
    pub fn to_stub(&self, with_task_states: bool, with_resources: bool) -> Value {
        let mut m = Map::new();
        m.insert("ID".into(), json!(self.id));
        m.insert("EvalID".into(), json!(self.eval_id));
        m.insert("Name".into(), json!(self.name));
        m.insert("Namespace".into(), json!(self.namespace));
        m.insert("NodeID".into(), json!(self.node_id));
        m.insert("NodeName".into(), json!(self.node_name));
        m.insert("JobID".into(), json!(self.job_id));
        m.insert("JobType".into(), json!(self.job.job_type()));
        m.insert("JobVersion".into(), json!(self.job.version));
        m.insert("TaskGroup".into(), json!(self.task_group));
        if with_resources {
            m.insert("AllocatedResources".into(), self.allocated_resources());
        }
        m.insert("DesiredStatus".into(), json!(self.desired_status));
        m.insert("DesiredDescription".into(), json!(self.desired_description));
        m.insert("ClientStatus".into(), json!(self.client_status));
        m.insert("ClientDescription".into(), json!(self.client_description));
        m.insert(
            "DesiredTransition".into(),
            json!({"Migrate": null, "Reschedule": null, "ForceReschedule": null, "NoShutdownDelay": null}),
        );
        let ts = if with_task_states {
            self.task_states_json()
        } else {
            Value::Null
        };
        m.insert("TaskStates".into(), ts);
        m.insert("DeploymentStatus".into(), Value::Null);
        m.insert("FollowupEvalID".into(), json!(""));
        m.insert("NextAllocation".into(), json!(self.next_allocation));
        m.insert("RescheduleTracker".into(), Value::Null);
        m.insert("PreemptedAllocations".into(), Value::Null);
        m.insert("PreemptedByAllocation".into(), json!(""));
        m.insert("CreateIndex".into(), json!(self.create_index));
        m.insert("ModifyIndex".into(), json!(self.modify_index));
        m.insert("CreateTime".into(), json!(self.create_time));
        m.insert("ModifyTime".into(), json!(self.modify_time));
        Value::Object(m)
    }
}

/// Whether a JSON value is Go's zero value for omitempty purposes.
pub fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty() || o.values().all(is_zero),
    }
}

/// An object of the fields that are not zero, in the given order.
pub fn omit_zero(fields: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if !is_zero(&v) {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
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

    #[test]
    fn zero_fields_are_omitted() {
        let v = omit_zero(vec![
            ("A", json!("")),
            ("B", json!(0)),
            ("C", json!("x")),
            ("D", json!({"M": null})),
        ]);
        assert_eq!(v, json!({"C": "x"}));
    }
}
