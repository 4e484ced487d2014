//! Allocations, task states and task events as Nomad names them (their API JSON views are
//! built in `api::allocs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::network::AllocPorts;
use super::spec::Job;
use super::NodeInfo;
use crate::state::rare::{Empty, Rare};
use crate::state::shared_str::{Interner, SharedStr};
use crate::state::status::{AllocClientStatus, AllocDesiredStatus, TaskStatus};

/// One allocation as the server side keeps it (also its on-disk form).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocRecord {
    pub id: SharedStr,
    pub namespace: SharedStr,
    pub eval_id: SharedStr,
    pub name: String,
    pub node_id: SharedStr,
    pub node_name: SharedStr,
    pub job_id: SharedStr,
    /// Shared with the job table and every other alloc of the same version (not a copy each).
    pub job: Arc<Job>,
    pub task_group: SharedStr,
    pub alloc_index: u32,
    pub desired_status: AllocDesiredStatus,
    pub desired_description: SharedStr,
    pub client_status: AllocClientStatus,
    pub client_description: SharedStr,
    pub task_states: BTreeMap<String, TaskState>,
    pub previous_allocation: SharedStr,
    pub next_allocation: SharedStr,
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
    /// The reschedules that led to this alloc (Nomad's `RescheduleTracker.Events`); most
    /// allocs have none, so it is one pointer until set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reschedule_events: Rare<Vec<RescheduleEvent>>,
    /// The eval that will reschedule this (failed) alloc later.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub followup_eval_id: SharedStr,
    /// The ports the scheduler assigned it (its group's and its tasks' networks); one
    /// pointer while it has none.
    #[serde(default, skip_serializing_if = "AllocPorts::is_empty")]
    pub ports: Rare<AllocPorts>,
}

impl Empty for Vec<RescheduleEvent> {
    fn empty() -> &'static Vec<RescheduleEvent> {
        static EMPTY: Vec<RescheduleEvent> = Vec::new();
        &EMPTY
    }
    fn is_empty(&self) -> bool {
        <[RescheduleEvent]>::is_empty(self)
    }
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

/// The names a new allocation holds, each a copy it may share with its siblings.
#[derive(Clone, Debug)]
pub struct AllocNames {
    pub namespace: SharedStr,
    pub job_id: SharedStr,
    pub group: SharedStr,
    pub eval_id: SharedStr,
    pub node_id: SharedStr,
    pub node_name: SharedStr,
}

/// Nomad's alloc name, `<job>.<group>[<index>]`, in one allocation of its final size (plan
/// apply makes one per placement on every server).
pub fn alloc_name(job: &str, group: &str, idx: u32) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(job.len() + group.len() + 13);
    name.push_str(job);
    name.push('.');
    name.push_str(group);
    name.push('[');
    // Writing to a String cannot fail.
    let _ = write!(name, "{idx}");
    name.push(']');
    name
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
    /// `group` and `eval_id` given as [`SharedStr`] are shared, not copied (a plan's allocs
    /// hold one copy of each).
    pub fn new_at(
        job: &Arc<Job>,
        group: impl Into<SharedStr>,
        idx: u32,
        eval_id: impl Into<SharedStr>,
        node: &NodeInfo,
        at: AllocStamp<'_>,
    ) -> AllocRecord {
        let names = AllocNames {
            namespace: job.namespace.as_str().into(),
            job_id: job.id.as_str().into(),
            group: group.into(),
            eval_id: eval_id.into(),
            node_id: node.id.as_str().into(),
            node_name: node.name.as_str().into(),
        };
        AllocRecord::new_named(job, names, idx, at)
    }

    /// [`AllocRecord::new_at`] with every name given as the copy to share (plan apply gives
    /// each plan's allocs one copy of the job's names and each node's).
    pub fn new_named(
        job: &Arc<Job>,
        names: AllocNames,
        idx: u32,
        at: AllocStamp<'_>,
    ) -> AllocRecord {
        let AllocStamp { index, id, now } = at;
        let AllocNames {
            namespace,
            job_id,
            group,
            eval_id,
            node_id,
            node_name,
        } = names;
        AllocRecord {
            id: id.into(),
            namespace,
            eval_id,
            name: alloc_name(&job.id, &group, idx),
            node_id,
            node_name,
            job_id,
            job: job.clone(),
            task_group: group,
            alloc_index: idx,
            desired_status: AllocDesiredStatus::Run,
            desired_description: SharedStr::default(),
            client_status: AllocClientStatus::Pending,
            client_description: SharedStr::default(),
            task_states: BTreeMap::new(),
            previous_allocation: SharedStr::default(),
            next_allocation: SharedStr::default(),
            create_index: index,
            modify_index: index,
            alloc_modify_index: index,
            create_time: now,
            modify_time: now,
            collected: false,
            desired_transition: DesiredTransition::default(),
            reschedule_events: Rare::default(),
            followup_eval_id: SharedStr::default(),
            ports: Rare::default(),
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
        self.client_description = SharedStr::common(match self.client_status {
            AllocClientStatus::Running => "Tasks are running",
            AllocClientStatus::Complete => "All tasks have completed",
            AllocClientStatus::Failed => "Failed tasks",
            _ => "No tasks have started",
        });
    }

    /// Take `other`'s copies of the names both have the same (job, plan, group, node), so
    /// allocs placed together share one copy of each.
    pub fn share_names_with(&mut self, other: &AllocRecord) {
        self.namespace.share_if_equal(&other.namespace);
        self.job_id.share_if_equal(&other.job_id);
        self.eval_id.share_if_equal(&other.eval_id);
        self.task_group.share_if_equal(&other.task_group);
        self.node_id.share_if_equal(&other.node_id);
        self.node_name.share_if_equal(&other.node_name);
    }

    /// Take the interner's copies of the names allocs repeat, and the process-wide copies of
    /// the descriptions (what a snapshot load does to each alloc it reads).
    pub fn intern_names(&mut self, names: &mut Interner) {
        names.intern(&mut self.namespace);
        names.intern(&mut self.job_id);
        names.intern(&mut self.eval_id);
        names.intern(&mut self.task_group);
        names.intern(&mut self.node_id);
        names.intern(&mut self.node_name);
        self.desired_description = SharedStr::common(&self.desired_description);
        self.client_description = SharedStr::common(&self.client_description);
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
    use crate::state::jobs::network::PortMapping;

    /// `AllocRecord` as it was declared before its names were [`SharedStr`]: the on-disk
    /// form (logs, snapshots) and the client's wire form. Kept here verbatim so the test
    /// below proves both forms byte for byte.
    #[derive(Serialize, Deserialize)]
    struct OldAllocRecord {
        id: String,
        namespace: String,
        eval_id: String,
        name: String,
        node_id: String,
        node_name: String,
        job_id: String,
        job: Arc<Job>,
        task_group: String,
        alloc_index: u32,
        desired_status: AllocDesiredStatus,
        desired_description: String,
        client_status: AllocClientStatus,
        client_description: String,
        task_states: BTreeMap<String, TaskState>,
        previous_allocation: String,
        next_allocation: String,
        create_index: u64,
        modify_index: u64,
        alloc_modify_index: u64,
        create_time: i64,
        modify_time: i64,
        #[serde(default)]
        collected: bool,
        #[serde(default, skip_serializing_if = "DesiredTransition::is_empty")]
        desired_transition: DesiredTransition,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reschedule_events: Vec<RescheduleEvent>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        followup_eval_id: String,
        #[serde(default, skip_serializing_if = "AllocPorts::is_empty")]
        ports: AllocPorts,
    }

    fn record() -> AllocRecord {
        let job = Job::from_json(serde_json::json!({"ID": "web", "TaskGroups": [{"Name": "g",
            "Tasks": [{"Name": "t", "Driver": "raw_exec"}]}]}))
        .unwrap();
        let node = NodeInfo {
            id: "node-1".into(),
            name: "edge \"one\"".into(),
            unplaceable: None,
        };
        let at = AllocStamp {
            index: 7,
            id: "a1",
            now: 99,
        };
        AllocRecord::new_at(&Arc::new(job), "g", 3, "eval-1", &node, at)
    }

    #[test]
    fn the_serialized_form_is_the_one_of_plain_strings_both_ways() {
        let mut full = record();
        full.desired_description = "alloc is being migrated".into();
        full.client_description = SharedStr::common("Tasks are running");
        full.task_states.insert("t".into(), TaskState::pending());
        full.previous_allocation = "a0".into();
        full.next_allocation = "a2".into();
        full.desired_transition.migrate = Some(true);
        full.reschedule_events.push(RescheduleEvent {
            reschedule_time: 5,
            prev_alloc_id: "a0".into(),
            prev_node_id: "node-0".into(),
            delay: 6,
        });
        full.followup_eval_id = "eval-2".into();
        full.ports.group.push(PortMapping {
            label: "http".into(),
            value: 20000,
            to: 8080,
            host_ip: "127.0.0.1".into(),
        });
        // Every optional field set, and none (what a new alloc is).
        for a in [full, record()] {
            let new = serde_json::to_string(&a).unwrap();
            let old: OldAllocRecord = serde_json::from_str(&new).unwrap();
            let old_text = serde_json::to_string(&old).unwrap();
            assert_eq!(new, old_text);
            let back: AllocRecord = serde_json::from_str(&old_text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), old_text);
            assert_eq!(back.node_name, "edge \"one\"");
        }
    }

    #[test]
    fn sharing_the_names_shrinks_the_record() {
        // It was 472 bytes: 312 of them 13 owned `String`s of 24 bytes, 72 the reschedule
        // events and ports most allocs never have.
        let size = std::mem::size_of::<AllocRecord>();
        assert!(size <= 320, "AllocRecord is {size} bytes");
    }

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
