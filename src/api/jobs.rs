//! Job and evaluation endpoints: register, read, list, allocations, deregister; evaluations.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::api::Agent;
use crate::http::Method;
use crate::state::jobs::eval::EvalRecord;
use crate::state::jobs::spec::Job;
use crate::state::jobs::validate::validate_job;
use crate::state::status::{AllocClientStatus, JobStatus};

use super::allocs::alloc_stub;
use super::error::store_err;
use super::params::{self, get_ci};
use super::{filter, json_meta, omit_zero, ApiError, ApiResult, Ctx, IndexMeta};

/// Serve `path` (the request path after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    if path == "jobs" {
        return match ctx.method() {
            Method::Get => list_jobs(ctx),
            Method::Put | Method::Post => register(ctx, None),
            _ => Err(ApiError::invalid_method()),
        };
    }
    if path == "evaluations" {
        ctx.require_method(&[Method::Get])?;
        return list_evals(ctx);
    }
    if let Some(rest) = path.strip_prefix("evaluation/") {
        return eval_route(ctx, rest);
    }
    let Some(rest) = path.strip_prefix("job/") else {
        return Err(ApiError::no_route());
    };
    if let Some(result) = super::job_versions::route(ctx, rest) {
        return result;
    }
    if let Some(result) = super::scaling::route_job(ctx, rest) {
        return result;
    }
    if let Some(id) = rest.strip_suffix("/allocations") {
        ctx.require_method(&[Method::Get])?;
        return job_allocations(ctx, id);
    }
    if let Some(id) = rest.strip_suffix("/dispatch") {
        return super::job_dispatch::dispatch(ctx, id);
    }
    if let Some(id) = rest.strip_suffix("/periodic/force") {
        return super::job_dispatch::periodic_force(ctx, id);
    }
    if let Some(id) = rest.strip_suffix("/plan") {
        return super::job_plan::plan(ctx, id);
    }
    if let Some(id) = rest.strip_suffix("/evaluations") {
        ctx.require_method(&[Method::Get])?;
        return job_evaluations(ctx, id);
    }
    // nomadlet makes no deployments: the latest is null and the list is empty, as Nomad
    // answers for a job without an update block.
    if let Some(id) = rest
        .strip_suffix("/deployment")
        .or_else(|| rest.strip_suffix("/deployments"))
    {
        ctx.require_method(&[Method::Get])?;
        let job = readable_job(ctx, id)?;
        let body = if rest.ends_with("/deployment") {
            Value::Null
        } else {
            json!([])
        };
        return json_meta(&body, IndexMeta::Query(job.modify_index));
    }
    if let Some(id) = rest.strip_suffix("/summary") {
        ctx.require_method(&[Method::Get])?;
        let job = readable_job(ctx, id)?;
        return json_meta(
            &job_summary(ctx.agent, &job),
            IndexMeta::Query(job.modify_index),
        );
    }
    if rest.is_empty() {
        return Err(ApiError::bad_request("Missing job ID"));
    }
    // A sub-path nomadlet does not serve (`/plan`, `/dispatch`, ...) is an unknown route, not
    // a job ID with a slash in it — unless a job with that very ID exists.
    if rest.contains('/') && ctx.agent.workloads.job(&namespace(ctx), rest).is_none() {
        return Err(ApiError::no_route());
    }
    match ctx.method() {
        Method::Get => read_job(ctx, rest),
        Method::Put | Method::Post => register(ctx, Some(rest)),
        Method::Delete => deregister(ctx, rest),
        _ => Err(ApiError::invalid_method()),
    }
}

/// `?namespace`, default `default`.
pub fn namespace(ctx: &Ctx) -> String {
    ctx.req
        .query("namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string()
}

fn ns_matches(want: &str, ns: &str) -> bool {
    want == "*" || want == ns
}

fn index_now(ctx: &Ctx) -> u64 {
    ctx.agent.index.current()
}

/// Decode a job registration body (`{"Job": {...}, ...}`): depth-bounded JSON, the `Job`
/// object, and a non-empty job ID. Returns the whole body object and the job.
pub(crate) fn decode_register(body: &[u8]) -> Result<(Map<String, Value>, Job), ApiError> {
    if body.is_empty() {
        return Err(ApiError::empty_body());
    }
    let body = crate::parse_bounds::json_value(body)
        .map_err(|e| ApiError::bad_request(format!("Failed to decode body: {e}")))?;
    let Value::Object(obj) = body else {
        return Err(ApiError::bad_request(
            "Failed to decode body: expected a JSON object",
        ));
    };
    let job_value = match get_ci(&obj, "Job") {
        Some(v) if v.is_object() => v.clone(),
        _ => return Err(ApiError::bad_request("Job must be specified")),
    };
    let job = Job::from_json(job_value)?;
    if job.id.is_empty() {
        return Err(ApiError::bad_request("Job ID hasn't been provided"));
    }
    Ok((obj, job))
}

fn register(ctx: &Ctx, path_id: Option<&str>) -> ApiResult {
    let (obj, mut job) = decode_register(&ctx.req.body)?;
    let obj = &obj;
    if let Some(id) = path_id {
        if id != job.id {
            return Err(ApiError::bad_request("Job ID does not match name"));
        }
    }
    let str_field = |k: &str| {
        get_ci(obj, k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(ns) = ctx
        .req
        .query("namespace")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| str_field("Namespace"))
    {
        job.namespace = ns;
    }
    if let Some(r) = str_field("Region").or_else(|| {
        ctx.req
            .query("region")
            .filter(|r| !r.is_empty())
            .map(str::to_string)
    }) {
        job.region = r;
    }
    job.canonicalize(&ctx.agent.config.region);
    ctx.identity.allow_namespace(&job.namespace, "submit-job")?;
    super::namespaces::require_known(&job.namespace)?;
    validate_job(&job)?;
    super::job_dispatch::check_register(ctx, &job)?;
    if get_ci(obj, "EnforceIndex")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let want = get_ci(obj, "JobModifyIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let existing = ctx.agent.workloads.job(&job.namespace, &job.id);
        let problem = match (&existing, want) {
            (Some(_), 0) => Some(format!("Enforcing job modify index {want}: job already exists")),
            (None, w) if w != 0 => Some(format!("Enforcing job modify index {want}: job does not exist")),
            (Some(j), w) if j.job_modify_index != w => Some(format!(
                "Enforcing job modify index {want}: job exists with conflicting job modify index: {}",
                j.job_modify_index
            )),
            _ => None,
        };
        if let Some(p) = problem {
            return Err(ApiError::internal(p));
        }
    }
    let submission = super::job_versions::submission_from(obj);
    // The scheduler places the job moments after this write: the eval is pending now.
    let periodic = crate::state::jobs::launch::is_periodic(&job);
    let res = ctx
        .agent
        .workloads
        .register_with_source(job, submission)
        .map_err(store_err)?;
    if periodic {
        ctx.agent.periodic.kick();
    }
    json_meta(
        &json!({
            "EvalID": res.eval_id,
            "EvalCreateIndex": res.eval_create_index,
            "JobModifyIndex": res.job_modify_index,
            "Warnings": "",
            "Index": res.index,
            "LastContact": 0,
            "KnownLeader": false,
            "NextToken": ""
        }),
        IndexMeta::Write(res.index),
    )
}

fn deregister(ctx: &Ctx, id: &str) -> ApiResult {
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "submit-job")?;
    let mut purge = false;
    for name in ["purge", "global", "no_shutdown_delay"] {
        if let Some(v) = ctx.req.query(name) {
            let b = params::parse_go_bool(v).ok_or_else(|| {
                ApiError::internal(format!(
                    "Failed to parse value of {name:?} ({v}) as a bool: {}",
                    params::go_bool_error(v)
                ))
            })?;
            if name == "purge" {
                purge = b;
            }
        }
    }
    let res = ctx
        .agent
        .workloads
        .deregister(&ns, id, purge)
        .map_err(store_err)?;
    // Nomad deregisters an unknown (or already purged) job without error: nothing changes,
    // no evaluation is made, and the reply carries an empty EvalID.
    let res = match res {
        Some(r) => r,
        None => {
            let index = index_now(ctx);
            crate::state::jobs::WriteResult {
                eval_id: String::new(),
                eval_create_index: 0,
                job_modify_index: index,
                index,
            }
        }
    };
    json_meta(
        &json!({
            "EvalID": res.eval_id,
            "EvalCreateIndex": res.eval_create_index,
            "JobModifyIndex": res.job_modify_index,
            "VolumeEvalID": "",
            "VolumeEvalIndex": 0,
            "Index": res.index,
            "LastContact": 0,
            "KnownLeader": false,
            "NextToken": ""
        }),
        IndexMeta::Write(res.index),
    )
}

/// The `Job` JSON with its live `Status`.
pub fn job_json(agent: &Agent, job: &Job) -> Value {
    job_value(job, agent.workloads.job_status(job))
}

/// The `Job` JSON with the given `Status` (a job event's status as of its index).
pub fn job_value(job: &Job, status: JobStatus) -> Value {
    let mut j = job.clone();
    j.status = status.to_string();
    serde_json::to_value(&j).unwrap_or(Value::Null)
}

/// The job a read names, after the common query checks and the `read-job` capability.
fn readable_job(ctx: &Ctx, id: &str) -> Result<Job, ApiError> {
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    ctx.agent
        .workloads
        .job(&ns, id)
        .ok_or_else(|| ApiError::not_found("job not found"))
}

fn read_job(ctx: &Ctx, id: &str) -> ApiResult {
    let job = readable_job(ctx, id)?;
    json_meta(
        &job_json(ctx.agent, &job),
        IndexMeta::Query(job.modify_index),
    )
}

/// `JobSummary` (ref §4.10): per group, its allocs counted by client status, and `Queued`
/// from the job's blocked eval (else its latest evaluated one): the placements still owed.
fn job_summary(agent: &Arc<Agent>, job: &Job) -> Value {
    let state = agent.workloads.state();
    let key = (job.namespace.clone(), job.id.clone());
    let mut counts: std::collections::BTreeMap<&str, [u64; 7]> = job
        .task_groups
        .iter()
        .map(|tg| (tg.name.as_str(), [0; 7]))
        .collect();
    let incarnation = |a: &&Arc<crate::state::jobs::alloc::AllocRecord>| {
        crate::state::jobs::history::of_incarnation(job, a)
    };
    for a in state.allocs_of(&key).filter(incarnation) {
        let Some(c) = counts.get_mut(a.task_group.as_str()) else {
            continue;
        };
        let slot = match a.client_status {
            AllocClientStatus::Complete => 1,
            AllocClientStatus::Failed => 2,
            AllocClientStatus::Running => 3,
            AllocClientStatus::Pending => 4,
            AllocClientStatus::Lost => 5,
            AllocClientStatus::Unknown => 6,
        };
        c[slot] += 1;
    }
    let queued_from = state
        .blocked_evals
        .iter()
        .filter_map(|id| state.evals.get(id))
        .find(|e| e.namespace == job.namespace && e.job_id == job.id)
        .cloned()
        .or_else(|| {
            state
                .evals_of(&(job.namespace.clone(), job.id.clone()))
                .filter(|e| {
                    e.status != crate::state::status::EvalStatus::Pending
                        && e.job_modify_index == job.job_modify_index
                })
                .max_by_key(|e| e.modify_index)
                .cloned()
        });
    let children = crate::state::jobs::launch::children_summary(&state, job);
    let mut summary = Map::new();
    for (name, c) in counts {
        let queued = queued_from
            .as_ref()
            .and_then(|e| e.queued_allocations.get(name))
            .copied()
            .unwrap_or(0);
        summary.insert(
            name.to_string(),
            json!({"Queued": queued, "Complete": c[1], "Failed": c[2], "Running": c[3],
                "Starting": c[4], "Lost": c[5], "Unknown": c[6]}),
        );
    }
    json!({
        "JobID": job.id,
        "Namespace": job.namespace,
        "Summary": summary,
        "Children": {"Pending": children[0], "Running": children[1], "Dead": children[2]},
        "CreateIndex": job.create_index,
        "ModifyIndex": job.modify_index
    })
}

fn list_jobs(ctx: &Ctx) -> ApiResult {
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "list-jobs")?;
    let prefix = ctx.req.query("prefix").unwrap_or("");
    // Like Nomad, the filter sees the full job, not the list stub.
    let expr = filter::from_query(ctx.req)?;
    let mut out = Vec::new();
    let mut jobs = ctx.agent.workloads.jobs();
    jobs.sort_by(|a, b| a.id.cmp(&b.id));
    for job in jobs {
        if !ns_matches(&ns, &job.namespace) || !job.id.starts_with(prefix) {
            continue;
        }
        if expr.is_some() && !filter::keeps(expr.as_ref(), &job_json(ctx.agent, &job)) {
            continue;
        }
        out.push(json!({
            "ID": job.id,
            "ParentID": job.parent_id,
            "Name": job.name,
            "Namespace": job.namespace,
            "Datacenters": job.datacenters,
            "Multiregion": job.multiregion,
            "Type": job.job_type(),
            "Priority": job.priority,
            "Periodic": !job.periodic.is_null(),
            "ParameterizedJob": crate::state::jobs::launch::is_parameterized(&job),
            "Stop": job.stop,
            "Status": ctx.agent.workloads.job_status(&job),
            "StatusDescription": job.status_description,
            "JobSummary": job_summary(ctx.agent, &job),
            "CreateIndex": job.create_index,
            "ModifyIndex": job.modify_index,
            "JobModifyIndex": job.job_modify_index,
            "SubmitTime": job.submit_time,
            "Meta": job.meta
        }));
    }
    json_meta(&out, IndexMeta::Query(index_now(ctx)))
}

fn job_allocations(ctx: &Ctx, id: &str) -> ApiResult {
    params::check_common(ctx.req)?;
    if let Some(v) = ctx.req.query("all") {
        if params::parse_go_bool(v).is_none() {
            return Err(ApiError::bad_request(params::go_bool_error(v)));
        }
    }
    let all = ctx
        .req
        .query("all")
        .and_then(params::parse_go_bool)
        .unwrap_or(false);
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    let out: Vec<Value> = ctx
        .agent
        .workloads
        .allocs_of_job(&ns, id, all)
        .iter()
        .map(|a| alloc_stub(a, true, false))
        .collect();
    json_meta(&out, IndexMeta::Query(index_now(ctx)))
}

fn job_evaluations(ctx: &Ctx, id: &str) -> ApiResult {
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    let out: Vec<Value> = ctx
        .agent
        .workloads
        .evals()
        .iter()
        .filter(|e| e.namespace == ns && e.job_id == id)
        .map(eval_json)
        .collect();
    json_meta(&out, IndexMeta::Query(index_now(ctx)))
}

fn list_evals(ctx: &Ctx) -> ApiResult {
    params::check_common(ctx.req)?;
    let ns = namespace(ctx);
    ctx.identity.allow_namespace(&ns, "read-job")?;
    let prefix = ctx.req.query("prefix").unwrap_or("");
    let job = ctx.req.query("job").filter(|j| !j.is_empty());
    let status = ctx.req.query("status").filter(|s| !s.is_empty());
    let expr = filter::from_query(ctx.req)?;
    if expr.is_some() && (job.is_some() || status.is_some()) {
        return Err(ApiError::bad_request(
            "Filter expression cannot be used with other filter parameters",
        ));
    }
    let out: Vec<Value> = ctx
        .agent
        .workloads
        .evals()
        .iter()
        .filter(|e| ns_matches(&ns, &e.namespace) && e.id.starts_with(prefix))
        .filter(|e| job.map(|j| j == e.job_id).unwrap_or(true))
        .filter(|e| status.map(|s| s == e.status.as_str()).unwrap_or(true))
        .map(eval_json)
        .filter(|v| filter::keeps(expr.as_ref(), v))
        .collect();
    json_meta(&out, IndexMeta::Query(index_now(ctx)))
}

fn eval_route(ctx: &Ctx, rest: &str) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    let (id, allocs) = match rest.strip_suffix("/allocations") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let ev = ctx
        .agent
        .workloads
        .eval(id)
        .ok_or_else(|| ApiError::not_found("eval not found"))?;
    ctx.identity.allow_namespace(&ev.namespace, "read-job")?;
    if allocs {
        let out: Vec<Value> = ctx
            .agent
            .workloads
            .allocs()
            .iter()
            .filter(|a| a.eval_id == ev.id)
            .map(|a| alloc_stub(a, true, false))
            .collect();
        return json_meta(&out, IndexMeta::Query(index_now(ctx)));
    }
    json_meta(&eval_json(&ev), IndexMeta::Query(ev.modify_index))
}

/// `Evaluation` JSON: Go order, every zero field omitted.
pub fn eval_json(e: &EvalRecord) -> Value {
    omit_zero(vec![
        ("ID", json!(e.id)),
        ("Namespace", json!(e.namespace)),
        ("Priority", json!(e.priority)),
        ("Type", json!(e.eval_type)),
        ("TriggeredBy", json!(e.triggered_by)),
        ("JobID", json!(e.job_id)),
        ("JobModifyIndex", json!(e.job_modify_index)),
        ("NodeID", json!(e.node_id)),
        ("NodeModifyIndex", json!(e.node_modify_index)),
        ("Status", json!(e.status)),
        ("StatusDescription", json!(e.status_description)),
        (
            "WaitUntil",
            if e.wait_until == 0 {
                Value::Null
            } else {
                json!(crate::state::jobs::timefmt::rfc3339_ns(e.wait_until))
            },
        ),
        ("PreviousEval", json!(e.previous_eval)),
        ("BlockedEval", json!(e.blocked_eval)),
        ("FailedTGAllocs", json!(e.failed_tg_allocs)),
        ("QueuedAllocations", json!(e.queued_allocations)),
        ("SnapshotIndex", json!(e.snapshot_index)),
        ("CreateIndex", json!(e.create_index)),
        ("ModifyIndex", json!(e.modify_index)),
        ("CreateTime", json!(e.create_time)),
        ("ModifyTime", json!(e.modify_time)),
    ])
}

#[cfg(test)]
mod eval_tests {
    use super::*;

    #[test]
    fn an_evaluation_is_written_with_nomads_words_in_go_order() {
        let mut job = Job::from_json(json!({"ID": "web", "TaskGroups": [{"Name": "g"}]})).unwrap();
        job.canonicalize("global");
        let e = EvalRecord::new_at(&job, "job-register", 4, "e1", 5);
        let text = serde_json::to_string(&eval_json(&e)).unwrap();
        assert!(
            text.starts_with(
                r#"{"ID":"e1","Namespace":"default","Priority":50,"Type":"service","TriggeredBy":"job-register","JobID":"web","Status":"complete","#
            ),
            "{text}"
        );
    }
}
