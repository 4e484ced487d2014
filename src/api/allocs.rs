//! Allocation endpoints: list, read, stop, and a node's allocations.

use serde_json::{json, Map, Value};

use crate::http::Method;
use crate::state::jobs::alloc::AllocRecord;

use super::jobs::{job_json, namespace};
use super::params;
use super::{filter, json_meta, omit_zero, ApiError, ApiResult, Ctx, IndexMeta};

/// Serve `path` (the request path after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    if path == "allocations" {
        ctx.require_method(&[Method::Get])?;
        return list(ctx);
    }
    let Some(rest) = path.strip_prefix("allocation/") else {
        return Err(ApiError::no_route());
    };
    if let Some(id) = rest.strip_suffix("/stop") {
        ctx.require_method(&[Method::Put, Method::Post])?;
        return stop(ctx, id);
    }
    if rest.is_empty() || rest.contains('/') {
        return Err(ApiError::not_found("resource not found"));
    }
    ctx.require_method(&[Method::Get])?;
    read(ctx, rest)
}

fn bool_param(ctx: &Ctx, name: &str, default: bool) -> Result<bool, ApiError> {
    match params::opt_bool(ctx.req, name) {
        Ok(v) => Ok(v.unwrap_or(default)),
        Err(bad) => Err(ApiError::internal(format!(
            "Failed to parse value of {name:?} ({}) as a bool: {bad}",
            bad.0
        ))),
    }
}

fn list(ctx: &Ctx) -> ApiResult {
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    let with_states = bool_param(ctx, "task_states", true)?;
    let with_resources = bool_param(ctx, "resources", false)?;
    let prefix = ctx.req.query("prefix").unwrap_or("");
    // Like Nomad, the filter sees the full allocation, not the list stub.
    let expr = filter::from_query(ctx.req)?;
    let out: Vec<Value> = ctx
        .agent
        .workloads
        .allocs()
        .iter()
        .filter(|a| (ns == "*" || a.namespace == ns) && a.id.starts_with(prefix))
        .filter(|a| expr.is_none() || filter::keeps(expr.as_ref(), &alloc_json(ctx, a)))
        .map(|a| alloc_stub(a, with_states, with_resources))
        .collect();
    json_meta(&out, IndexMeta::Query(ctx.agent.index.current()))
}

/// The full `Allocation` JSON of a record.
pub fn alloc_json(ctx: &Ctx, a: &AllocRecord) -> Value {
    allocation(a, job_json(ctx.agent, &a.job))
}

/// `TaskStates`: null when there are none.
fn task_states_json(a: &AllocRecord) -> Value {
    if a.task_states.is_empty() {
        return Value::Null;
    }
    serde_json::to_value(&a.task_states).unwrap_or(Value::Null)
}

/// `AllocatedResources` from the group's tasks (Nomad's defaults where a task set none).
fn allocated_resources(a: &AllocRecord) -> Value {
    let Some(tg) = a.job.group(&a.task_group) else {
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
                "Networks": super::alloc_ports::task_networks(a, t),
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
    let (networks, ports) = super::alloc_ports::shared(a, tg);
    json!({
        "Tasks": tasks,
        "TaskLifecycles": lifecycles,
        "Shared": {"Networks": networks, "DiskMB": disk, "Ports": ports}
    })
}

/// The legacy `Resources`, `SharedResources` and `TaskResources` (null without the group).
fn legacy_resources(a: &AllocRecord) -> (Value, Value, Value) {
    let Some(tg) = a.job.group(&a.task_group) else {
        return (Value::Null, Value::Null, Value::Null);
    };
    let disk = tg
        .ephemeral_disk
        .as_ref()
        .and_then(|d| d.size_mb)
        .unwrap_or(300);
    super::alloc_ports::legacy(a, tg, disk)
}

/// The full `Allocation` with its job's JSON: Go field order; every zero-valued field
/// omitted (Nomad's struct-wide `omitempty`).
pub fn allocation(a: &AllocRecord, job: Value) -> Value {
    let (resources, shared, task_resources) = legacy_resources(a);
    let fields: Vec<(&str, Value)> = vec![
        ("ID", json!(a.id)),
        ("Namespace", json!(a.namespace)),
        ("EvalID", json!(a.eval_id)),
        ("Name", json!(a.name)),
        ("NodeID", json!(a.node_id)),
        ("NodeName", json!(a.node_name)),
        ("JobID", json!(a.job_id)),
        ("Job", job),
        ("TaskGroup", json!(a.task_group)),
        ("Resources", resources),
        ("SharedResources", shared),
        ("TaskResources", task_resources),
        ("AllocatedResources", allocated_resources(a)),
        ("DesiredStatus", json!(a.desired_status)),
        ("DesiredDescription", json!(a.desired_description)),
        ("DesiredTransition", desired_transition_json(a)),
        ("ClientStatus", json!(a.client_status)),
        ("ClientDescription", json!(a.client_description)),
        ("TaskStates", task_states_json(a)),
        ("PreviousAllocation", json!(a.previous_allocation)),
        ("NextAllocation", json!(a.next_allocation)),
        ("CreateIndex", json!(a.create_index)),
        ("ModifyIndex", json!(a.modify_index)),
        ("AllocModifyIndex", json!(a.alloc_modify_index)),
        ("CreateTime", json!(a.create_time)),
        ("ModifyTime", json!(a.modify_time)),
    ];
    omit_zero(fields)
}

/// `DesiredTransition`: unset fields are `null`.
fn desired_transition_json(a: &AllocRecord) -> Value {
    json!({"Migrate": a.desired_transition.migrate, "Reschedule": null, "ForceReschedule": null, "NoShutdownDelay": null})
}

/// `AllocListStub`: every field present, in Go order.
pub fn alloc_stub(a: &AllocRecord, with_task_states: bool, with_resources: bool) -> Value {
    let mut m = Map::new();
    m.insert("ID".into(), json!(a.id));
    m.insert("EvalID".into(), json!(a.eval_id));
    m.insert("Name".into(), json!(a.name));
    m.insert("Namespace".into(), json!(a.namespace));
    m.insert("NodeID".into(), json!(a.node_id));
    m.insert("NodeName".into(), json!(a.node_name));
    m.insert("JobID".into(), json!(a.job_id));
    m.insert("JobType".into(), json!(a.job.job_type()));
    m.insert("JobVersion".into(), json!(a.job.version));
    m.insert("TaskGroup".into(), json!(a.task_group));
    if with_resources {
        m.insert("AllocatedResources".into(), allocated_resources(a));
    }
    m.insert("DesiredStatus".into(), json!(a.desired_status));
    m.insert("DesiredDescription".into(), json!(a.desired_description));
    m.insert("ClientStatus".into(), json!(a.client_status));
    m.insert("ClientDescription".into(), json!(a.client_description));
    m.insert("DesiredTransition".into(), desired_transition_json(a));
    let ts = if with_task_states {
        task_states_json(a)
    } else {
        Value::Null
    };
    m.insert("TaskStates".into(), ts);
    m.insert("DeploymentStatus".into(), Value::Null);
    m.insert("FollowupEvalID".into(), json!(""));
    m.insert("NextAllocation".into(), json!(a.next_allocation));
    m.insert("RescheduleTracker".into(), Value::Null);
    m.insert("PreemptedAllocations".into(), Value::Null);
    m.insert("PreemptedByAllocation".into(), json!(""));
    m.insert("CreateIndex".into(), json!(a.create_index));
    m.insert("ModifyIndex".into(), json!(a.modify_index));
    m.insert("CreateTime".into(), json!(a.create_time));
    m.insert("ModifyTime".into(), json!(a.modify_time));
    Value::Object(m)
}

fn read(ctx: &Ctx, id: &str) -> ApiResult {
    params::check_common(ctx.req)?;
    let a = ctx
        .agent
        .workloads
        .alloc(id)
        .ok_or_else(|| ApiError::not_found("alloc not found"))?;
    ctx.identity.allow_namespace(&a.namespace, "read-job")?;
    json_meta(&alloc_json(ctx, &a), IndexMeta::Query(a.modify_index))
}

fn stop(ctx: &Ctx, id: &str) -> ApiResult {
    let a = ctx
        .agent
        .workloads
        .alloc(id)
        .ok_or_else(|| ApiError::not_found("allocation not found"))?;
    ctx.identity
        .allow_namespace(&a.namespace, "alloc-lifecycle")?;
    let stopped = ctx
        .agent
        .workloads
        .stop_alloc(id)
        .map_err(|e| ApiError::internal(format!("failed to persist state: {e}")))?
        .ok_or_else(|| ApiError::not_found("allocation not found"))?;
    json_meta(
        &json!({"EvalID": stopped.eval_id, "Index": stopped.index}),
        IndexMeta::Write(stopped.index),
    )
}

/// `GET /v1/node/:id/allocations`: the node's allocations as full `Allocation` objects.
pub fn node_allocations(ctx: &Ctx, node_id: &str) -> ApiResult {
    params::check_common(ctx.req)?;
    ctx.identity.allow_node(false)?;
    let out: Vec<Value> = ctx
        .agent
        .workloads
        .allocs()
        .iter()
        .filter(|a| a.node_id == node_id)
        .filter(|a| {
            ctx.identity
                .allow_namespace(&a.namespace, "read-job")
                .is_ok()
        })
        .map(|a| alloc_json(ctx, a))
        .collect();
    json_meta(&out, IndexMeta::Query(ctx.agent.index.current()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::jobs::alloc::AllocStamp;
    use crate::state::jobs::spec::Job;
    use crate::state::jobs::NodeInfo;
    use crate::state::status::{AllocClientStatus, TaskStatus};

    fn record() -> AllocRecord {
        let mut job = Job::from_json(json!({"ID": "web", "Type": "batch", "TaskGroups": [{
            "Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        job.canonicalize("global");
        let node = NodeInfo {
            id: "n1".into(),
            name: "node".into(),
            unplaceable: None,
        };
        let at = AllocStamp {
            index: 7,
            id: "a1",
            now: 9,
        };
        AllocRecord::new_at(&std::sync::Arc::new(job), "g", 0, "e1", &node, at)
    }

    #[test]
    fn the_views_write_nomads_status_words_and_omit_zero_fields() {
        let mut a = record();
        let stub = alloc_stub(&a, true, false);
        assert_eq!(stub["DesiredStatus"], "run");
        assert_eq!(stub["ClientStatus"], "pending");
        assert_eq!(stub["JobType"], "batch");
        assert_eq!(stub["TaskStates"], Value::Null, "no task states yet");
        assert!(stub.get("AllocatedResources").is_none());

        let mut ts = crate::state::jobs::alloc::TaskState::pending();
        ts.state = TaskStatus::Dead;
        a.task_states.insert("t".into(), ts);
        a.refresh_client_status();
        assert_eq!(a.client_status, AllocClientStatus::Complete);
        let full = allocation(&a, json!({"ID": "web"}));
        assert_eq!(full["ClientStatus"], "complete");
        assert_eq!(full["ClientDescription"], "All tasks have completed");
        assert_eq!(full["TaskStates"]["t"]["State"], "dead");
        assert_eq!(full["AllocatedResources"]["Shared"]["DiskMB"], 300);
        let keys: Vec<&str> = full
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(!keys.contains(&"PreviousAllocation"), "zero field omitted");
        assert_eq!(keys[..3], ["ID", "Namespace", "EvalID"]);
    }
}
