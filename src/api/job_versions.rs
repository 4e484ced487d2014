//! A job's history and the writes on it: `GET /v1/job/:id/versions` (with `?diffs=true`,
//! Nomad's `JobDiff` between each version and the one before it), `POST /v1/job/:id/revert`,
//! `POST /v1/job/:id/stable`, `GET /v1/job/:id/submission?version=`, and
//! `POST /v1/job/:id/evaluate`. Each write is a command through the state's log.

use serde_json::{json, Map, Value};

use crate::http::Method;
use crate::state::command::{ApplyError, Command, JobKey};
use crate::state::jobs::diff::job_diff;
use crate::state::jobs::history::{self, JobSubmission};
use crate::state::jobs::WriteResult;

use super::error::store_err;
use super::jobs::{job_value, namespace};
use super::params::{self, get_ci};
use super::{json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// The sub-resources this module serves, as `(suffix, handler)`.
pub fn route(ctx: &Ctx, rest: &str) -> Option<ApiResult> {
    type Handler = fn(&Ctx, &str) -> ApiResult;
    let table: [(&str, Handler); 5] = [
        ("/versions", versions),
        ("/revert", revert),
        ("/stable", stable),
        ("/submission", submission),
        ("/evaluate", evaluate),
    ];
    table
        .iter()
        .find_map(|(suffix, h)| rest.strip_suffix(suffix).map(|id| h(ctx, id)))
}

/// A `?name=` bool as Nomad parses it (an error is a 500 with Go's text).
fn query_bool(ctx: &Ctx, name: &str) -> Result<bool, ApiError> {
    match ctx.req.query(name).filter(|v| !v.is_empty()) {
        None => Ok(false),
        Some(v) => params::parse_go_bool(v).ok_or_else(|| {
            ApiError::internal(format!(
                "Failed to parse value of {name:?} ({v}) as a bool: {}",
                params::go_bool_error(v)
            ))
        }),
    }
}

/// The JSON body of a write (an object), depth-bounded; `Request body is empty` without one.
pub(super) fn body_object(ctx: &Ctx) -> Result<Map<String, Value>, ApiError> {
    if ctx.req.body.is_empty() {
        return Err(ApiError::empty_body());
    }
    match crate::parse_bounds::json_value(&ctx.req.body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad_request(
            "json: cannot unmarshal non-object into Go value",
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// Nomad's `JobRegisterResponse` (revert, evaluate, scale).
pub(super) fn register_response(res: &WriteResult) -> ApiResult {
    json_meta(
        &json!({
            "EvalID": res.eval_id,
            "EvalCreateIndex": res.eval_create_index,
            "JobModifyIndex": res.job_modify_index,
            "Warnings": "",
            "Index": res.index,
            "LastContact": 0,
            "KnownLeader": true,
            "NextToken": ""
        }),
        IndexMeta::Query(res.index),
    )
}

fn versions(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    let diffs = query_bool(ctx, "diffs")?;
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    let diff_version = match ctx.req.query("diff_version").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("Failed to parse value of \"diff_version\" ({v})"))
        })?),
    };
    let state = ctx.agent.workloads.state();
    let key: JobKey = (ns, id.to_string());
    let out = history::versions_newest_first(&state, &key);
    if out.is_empty() {
        return Err(ApiError::not_found("job versions not found"));
    }
    let index = out.iter().map(|j| j.modify_index).max().unwrap_or(0);
    let current_status = ctx.agent.workloads.job_status(&out[0]);
    let mut shown = Vec::with_capacity(out.len());
    for (i, j) in out.iter().enumerate() {
        let status = if i == 0 {
            current_status
        } else {
            crate::state::status::JobStatus::parse(&j.status).unwrap_or(current_status)
        };
        shown.push(job_value(j, status));
    }
    let diffs = if diffs {
        let against = match diff_version {
            Some(v) => Some(
                out.iter()
                    .find(|j| j.version == v)
                    .cloned()
                    .ok_or_else(|| ApiError::internal(format!("version {v} not found")))?,
            ),
            None => None,
        };
        let mut d = Vec::new();
        for (i, new) in out.iter().enumerate() {
            let old = match &against {
                Some(a) => a.clone(),
                None if i + 1 < out.len() => out[i + 1].clone(),
                None => break,
            };
            let diff = job_diff(Some(&old), Some(new), true)
                .map_err(|e| ApiError::internal(format!("failed to create job diff: {e}")))?;
            d.push(serde_json::to_value(&diff).unwrap_or(Value::Null));
        }
        Value::Array(d)
    } else {
        Value::Null
    };
    json_meta(
        &json!({
            "Versions": shown,
            "Diffs": diffs,
            "Index": index,
            "LastContact": 0,
            "KnownLeader": true,
            "NextToken": ""
        }),
        IndexMeta::Query(index),
    )
}

/// `JobID` of a body, checked against the path as Nomad does for revert and stable.
fn body_job_id(obj: &Map<String, Value>, id: &str) -> Result<(), ApiError> {
    let body_id = get_ci(obj, "JobID").and_then(Value::as_str).unwrap_or("");
    if body_id.is_empty() {
        return Err(ApiError::bad_request("JobID must be specified"));
    }
    if body_id != id {
        return Err(ApiError::bad_request("Job ID does not match"));
    }
    Ok(())
}

/// A `u64` member (`JobVersion`), absent as 0; anything else is a decode error.
fn u64_member(obj: &Map<String, Value>, name: &str) -> Result<u64, ApiError> {
    match get_ci(obj, name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "json: cannot unmarshal {v} into Go struct field .{name} of type uint64"
            ))
        }),
    }
}

fn version_not_found(id: &str, ns: &str, version: u64) -> ApiError {
    ApiError::internal(format!(
        "job {id:?} in namespace {ns:?} at version {version} not found"
    ))
}

fn revert(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let obj = body_object(ctx)?;
    body_job_id(&obj, id)?;
    let version = u64_member(&obj, "JobVersion")?;
    let enforce = match get_ci(&obj, "EnforcePriorVersion") {
        None | Some(Value::Null) => None,
        Some(_) => Some(u64_member(&obj, "EnforcePriorVersion")?),
    };
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "submit-job")?;
    let state = ctx.agent.workloads.state();
    let key: JobKey = (ns.clone(), id.to_string());
    let current = state
        .jobs
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("job {id:?} not found")))?;
    if version == current.version {
        return Err(ApiError::internal("can't revert to current version"));
    }
    let old = history::version_of(&state, &key, version)
        .ok_or_else(|| version_not_found(id, &ns, version))?;
    if let Some(want) = enforce {
        if current.version != want {
            return Err(ApiError::internal(format!(
                "Current job has version {}; enforcing version {want}",
                current.version
            )));
        }
    }
    let submission = history::submission_of(&state, &key, version);
    let job = (*old).clone();
    let periodic = crate::state::jobs::launch::is_periodic(&job);
    let res = ctx
        .agent
        .workloads
        .register_with_source(job, submission)
        .map_err(store_err)?;
    if periodic {
        // A reverted version may be periodic again: the dispatcher learns of it now.
        ctx.agent.periodic.kick();
    }
    register_response(&res)
}

fn stable(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let obj = body_object(ctx)?;
    body_job_id(&obj, id)?;
    let version = u64_member(&obj, "JobVersion")?;
    let stable = get_ci(&obj, "Stable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "submit-job")?;
    let cmd = Command::JobSetStable {
        namespace: ns.clone(),
        job_id: id.to_string(),
        version,
        stable,
    };
    match ctx.agent.workloads.propose_job(cmd).map_err(store_err)? {
        Ok(res) => json_meta(&json!({"Index": res.index}), IndexMeta::Write(res.index)),
        Err(_) => Err(version_not_found(id, &ns, version)),
    }
}

fn submission(ctx: &Ctx, id: &str) -> ApiResult {
    let version = ctx
        .req
        .query("version")
        .unwrap_or("")
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request("Unable to parse job submission version parameter"))?;
    ctx.require_method(&[Method::Get])?;
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    let state = ctx.agent.workloads.state();
    let key: JobKey = (ns.clone(), id.to_string());
    let (Some(s), Some(job)) = (
        history::submission_of(&state, &key, version),
        history::version_of(&state, &key, version),
    ) else {
        return Err(ApiError::not_found("job source not found"));
    };
    let JobSubmission {
        source,
        format,
        variable_flags,
        variables,
    } = s;
    json_meta(
        &json!({
            "Source": source,
            "Format": format,
            "VariableFlags": if variable_flags.is_empty() { Value::Null } else { json!(variable_flags) },
            "Variables": variables,
            "Namespace": ns,
            "JobID": id,
            "Version": version,
            "JobModifyIndex": job.job_modify_index
        }),
        IndexMeta::Query(job.job_modify_index),
    )
}

fn evaluate(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let mut force = false;
    if !ctx.req.body.is_empty() {
        let obj = body_object(ctx)?;
        let body_id = get_ci(&obj, "JobID").and_then(Value::as_str).unwrap_or("");
        if body_id.is_empty() {
            return Err(ApiError::bad_request("Job ID must be specified"));
        }
        if body_id != id {
            return Err(ApiError::bad_request("JobID not same as job name"));
        }
        force = get_ci(&obj, "EvalOptions")
            .and_then(Value::as_object)
            .and_then(|o| get_ci(o, "ForceReschedule"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    }
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    let job = ctx
        .agent
        .workloads
        .job(&ns, id)
        .ok_or_else(|| ApiError::internal("job not found"))?;
    if !job.periodic.is_null() {
        return Err(ApiError::internal("can't evaluate periodic job"));
    }
    if !job.parameterized_job.is_null() {
        return Err(ApiError::internal("can't evaluate parameterized job"));
    }
    let cmd = Command::JobEvaluate {
        namespace: ns,
        job_id: id.to_string(),
        force_reschedule: force,
        eval_id: uuid::Uuid::new_v4().to_string(),
        now: crate::time::unix_now_nanos(),
    };
    match ctx.agent.workloads.propose_job(cmd).map_err(store_err)? {
        Ok(res) => register_response(&res),
        Err(ApplyError::UnknownJob) => Err(ApiError::internal("job not found")),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// The register body's `Submission` (the source the job was written in), if it has one.
pub(super) fn submission_from(obj: &Map<String, Value>) -> Option<JobSubmission> {
    let s = get_ci(obj, "Submission")?.as_object()?;
    let text = |k: &str| {
        get_ci(s, k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let variable_flags = get_ci(s, "VariableFlags")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some(JobSubmission {
        source: text("Source"),
        format: text("Format"),
        variable_flags,
        variables: text("Variables"),
    })
}
