//! Scaling: `GET|PUT /v1/job/:id/scale` (a group's count, as a new job version and a
//! `job-scaling` eval, within the group's `scaling` bounds) and the scaling policies that
//! groups' `scaling` blocks make, `GET /v1/scaling/policies` and `/v1/scaling/policy/:id`.
//! A policy's ID is derived from its job's `CreateIndex` and its group, so it stays the same
//! across versions of the job and every server derives the same one.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::http::Method;
use crate::state::command::ServerState;
use crate::state::command::{ApplyError, Command};
use crate::state::jobs::history::{scaling_events_of, ScalingEvent};
use crate::state::jobs::spec::{Job, TaskGroup};
use crate::state::status::{AllocClientStatus, JobType};

use super::error::store_err;
use super::job_versions::{body_object, register_response};
use super::jobs::namespace;
use super::params::{self, get_ci};
use super::{json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// `/v1/job/:id/scale`; `None` for other paths.
pub fn route_job(ctx: &Ctx, rest: &str) -> Option<ApiResult> {
    let id = rest.strip_suffix("/scale")?;
    Some(match ctx.method() {
        Method::Get => scale_status(ctx, id),
        Method::Put | Method::Post => scale(ctx, id),
        _ => Err(ApiError::invalid_method()),
    })
}

/// `/v1/scaling/...`.
pub fn route(ctx: &Ctx, rest: &str) -> ApiResult {
    if rest == "scaling/policies" {
        ctx.require_method(&[Method::Get])?;
        return list_policies(ctx);
    }
    if let Some(id) = rest.strip_prefix("scaling/policy/") {
        ctx.require_method(&[Method::Get])?;
        return read_policy(ctx, id);
    }
    Err(ApiError::no_route())
}

/// An integer member of a group's `scaling` block.
fn scaling_int(tg: &TaskGroup, name: &str) -> Option<i64> {
    tg.scaling
        .as_object()
        .and_then(|s| get_ci(s, name))
        .and_then(Value::as_i64)
}

/// The `Min` of a group's policy (the group's count when unset, as Nomad canonicalizes it).
fn policy_min(tg: &TaskGroup) -> i64 {
    scaling_int(tg, "Min").unwrap_or_else(|| tg.count())
}

fn scale(ctx: &Ctx, id: &str) -> ApiResult {
    let obj = body_object(ctx)?;
    let target: Map<String, Value> = get_ci(&obj, "Target")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let target_str = |k: &str| {
        get_ci(&target, k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let target_job = target_str("Job");
    if !target_job.is_empty() && target_job != id {
        return Err(ApiError::bad_request("job ID in payload did not match URL"));
    }
    let ns = namespace(ctx);
    let hdr_ns = target_str("Namespace");
    if !hdr_ns.is_empty() && hdr_ns != ns {
        return Err(ApiError::bad_request(
            "namespace in payload did not match header",
        ));
    }
    let allowed = ctx.identity.allow_namespace(&ns, "scale-job").is_ok()
        || ctx.identity.allow_namespace(&ns, "submit-job").is_ok();
    if !allowed {
        return Err(ApiError::permission_denied());
    }
    let group = target_str("Group");
    if group.is_empty() {
        return Err(ApiError::bad_request(
            "missing task group name for scaling action",
        ));
    }
    let count = match get_ci(&obj, "Count") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "json: cannot unmarshal {v} into Go struct field ScalingRequest.Count of type int64"
            ))
        })?),
    };
    let is_error = get_ci(&obj, "Error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(c) = count {
        if c < 0 {
            return Err(ApiError::bad_request(
                "scaling action count can't be negative",
            ));
        }
        if is_error {
            return Err(ApiError::bad_request(
                "scaling action should not contain count if error is true",
            ));
        }
    }
    let job = ctx
        .agent
        .workloads
        .job(&ns, id)
        .ok_or_else(|| ApiError::not_found(format!("job {id:?} not found")))?;
    if job.job_type() == JobType::System && count.is_some_and(|c| c > 1) {
        return Err(ApiError::bad_request(
            r#"jobs of type "system" can only be scaled to 1 or 0"#,
        ));
    }
    let Some(tg) = job.group(&group) else {
        return Err(ApiError::bad_request(format!(
            "task group {group:?} specified for scaling does not exist in job"
        )));
    };
    if let Some(count) = count.filter(|_| !tg.scaling.is_null()) {
        let min = policy_min(tg);
        if count < min {
            return Err(ApiError::bad_request(format!(
                "group count was less than scaling policy minimum: {count} < {min}"
            )));
        }
        if let Some(max) = scaling_int(tg, "Max").filter(|m| *m < count) {
            return Err(ApiError::bad_request(format!(
                "group count was greater than scaling policy maximum: {count} > {max}"
            )));
        }
    }
    let want = get_ci(&obj, "JobModifyIndex")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if want > 0 && want != job.job_modify_index {
        return Err(ApiError::internal(format!(
            "Enforcing job modify index {want}: job exists with conflicting job modify index: {}",
            job.job_modify_index
        )));
    }
    // A count-less request is an autoscaler's report (often an error): only its event is
    // recorded.
    let event = ScalingEvent {
        message: get_ci(&obj, "Message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        error: is_error,
        meta: get_ci(&obj, "Meta")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        ..ScalingEvent::default()
    };
    let cmd = Command::JobScale {
        namespace: ns,
        job_id: id.to_string(),
        group,
        count,
        job_modify_index: job.job_modify_index,
        eval_id: uuid::Uuid::new_v4().to_string(),
        event: Box::new(event),
        now: crate::time::unix_now_nanos(),
    };
    match ctx.agent.workloads.propose_job(cmd).map_err(store_err)? {
        Ok(res) => register_response(&res),
        // The job changed (or went) between the check and the write.
        Err(ApplyError::UnknownJob) => Err(ApiError::internal(format!(
            "job {id:?} changed while it was being scaled; try again"
        ))),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

fn scale_status(ctx: &Ctx, id: &str) -> ApiResult {
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    let allowed = ctx
        .identity
        .allow_namespace(&ns, "read-job-scaling")
        .is_ok()
        || ctx.identity.allow_namespace(&ns, "read-job").is_ok();
    if !allowed {
        return Err(ApiError::permission_denied());
    }
    let state = ctx.agent.workloads.state();
    let key = (ns.clone(), id.to_string());
    let job = state
        .jobs
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found("job not found"))?;
    let mut groups = Map::new();
    for tg in job.task_groups.iter() {
        let (mut placed, mut running) = (0u64, 0u64);
        for a in state.allocs_of(&key) {
            if a.task_group != tg.name || !crate::state::jobs::history::of_incarnation(&job, a) {
                continue;
            }
            if a.is_live() {
                placed += 1;
            }
            if a.client_status == AllocClientStatus::Running && a.is_live() {
                running += 1;
            }
        }
        groups.insert(
            tg.name.clone(),
            json!({"Desired": tg.count(), "Placed": placed, "Running": running,
                "Healthy": 0, "Unhealthy": 0, "Events": events_json(&state, &key, &tg.name)}),
        );
    }
    json_meta(
        &json!({
            "JobID": job.id,
            "Namespace": job.namespace,
            "JobCreateIndex": job.create_index,
            "JobModifyIndex": job.job_modify_index,
            "JobStopped": job.stop,
            "TaskGroups": groups
        }),
        IndexMeta::Query(job.modify_index),
    )
}

/// A group's policy: its ID and the policy JSON (`ScalingPolicy`).
fn policy_of(job: &Job, seq: usize, tg: &TaskGroup) -> Option<(String, Value)> {
    let s = tg.scaling.as_object()?;
    let id = crate::state::plan::derived_id(
        job.create_index,
        seq as u64,
        &format!("scaling\0{}\0{}\0{}", job.namespace, job.id, tg.name),
    );
    let enabled = get_ci(s, "Enabled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let policy_type = get_ci(s, "Type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or("horizontal");
    let v = json!({
        "ID": id,
        "Type": policy_type,
        "Target": {"Namespace": job.namespace, "Job": job.id, "Group": tg.name},
        "Policy": get_ci(s, "Policy").cloned().unwrap_or(Value::Null),
        "Min": policy_min(tg),
        "Max": scaling_int(tg, "Max").unwrap_or(0),
        "Enabled": enabled,
        "CreateIndex": job.create_index,
        "ModifyIndex": job.job_modify_index
    });
    Some((id, v))
}

/// Every policy of the jobs in `ns` (`*`: every namespace).
fn policies(ctx: &Ctx, ns: &str) -> Vec<(Arc<Job>, String, Value)> {
    let state = ctx.agent.workloads.state();
    let mut out = Vec::new();
    for job in state.jobs.values() {
        if ns != "*" && job.namespace != ns {
            continue;
        }
        for (seq, tg) in job.task_groups.iter().enumerate() {
            if let Some((id, v)) = policy_of(job, seq, tg) {
                out.push((job.clone(), id, v));
            }
        }
    }
    out
}

fn list_policies(ctx: &Ctx) -> ApiResult {
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "list-scaling-policies")?;
    let job_filter = ctx.req.query("job").filter(|j| !j.is_empty());
    let type_filter = ctx.req.query("type").filter(|t| !t.is_empty());
    let mut out: Vec<Value> = policies(ctx, &ns)
        .into_iter()
        .filter(|(job, _, _)| job_filter.is_none_or(|j| j == job.id))
        .filter(|(_, _, v)| type_filter.is_none_or(|t| v["Type"] == t))
        .map(|(_, _, v)| {
            json!({
                "ID": v["ID"], "Enabled": v["Enabled"], "Type": v["Type"], "Target": v["Target"],
                "CreateIndex": v["CreateIndex"], "ModifyIndex": v["ModifyIndex"]
            })
        })
        .collect();
    out.sort_by(|a, b| a["ID"].as_str().cmp(&b["ID"].as_str()));
    json_meta(&out, IndexMeta::Query(ctx.agent.index.current()))
}

fn read_policy(ctx: &Ctx, id: &str) -> ApiResult {
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-scaling-policy")?;
    let found = policies(ctx, &ns).into_iter().find(|(_, pid, _)| pid == id);
    match found {
        Some((job, _, v)) => json_meta(&v, IndexMeta::Query(job.modify_index)),
        None => Err(ApiError::not_found("scaling policy not found")),
    }
}

/// A group's scaling events as Nomad shows them (`null` when there are none).
fn events_json(state: &ServerState, key: &(String, String), group: &str) -> Value {
    let events = scaling_events_of(state, key, group);
    if events.is_empty() {
        Value::Null
    } else {
        serde_json::to_value(events).unwrap_or(Value::Null)
    }
}
