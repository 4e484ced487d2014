//! `PUT|POST /v1/job/:id/plan` (`nomad job plan`): the job checked as a registration would
//! be, then the real scheduler run on a copy of the published state
//! (`server::scheduler::dry_run`), nothing proposed. The reply is Nomad's
//! `JobPlanResponse`: `Annotations.DesiredTGUpdates`, `FailedTGAllocs`, `JobModifyIndex`,
//! `CreatedEvals`, the annotated `Diff` when asked, `NextPeriodicLaunch`.

use serde_json::{json, Map, Value};

use crate::http::Method;
use crate::server::scheduler::dry_run::{dry_run, DesiredUpdates};
use crate::state::jobs::diff::{job_diff, DiffType, JobDiff};
use crate::state::jobs::launch::{self, Schedule};
use crate::state::jobs::spec::Job;
use crate::state::jobs::validate::validate_job;

use super::jobs::eval_json;
use super::params::get_ci;
use super::{json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// Go's zero `time.Time` as JSON (no periodic launch).
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Nomad's annotations of a plan's diff (`scheduler/annotate.go`).
const UPDATE_IGNORE: &str = "ignore";
const UPDATE_CREATE: &str = "create";
const UPDATE_DESTROY: &str = "destroy";
const UPDATE_MIGRATE: &str = "migrate";
const UPDATE_IN_PLACE: &str = "in-place update";
const UPDATE_DESTRUCTIVE: &str = "create/destroy update";
const FORCES_CREATE: &str = "forces create";
const FORCES_DESTROY: &str = "forces destroy";
const FORCES_DESTRUCTIVE: &str = "forces create/destroy update";

fn decode(ctx: &Ctx, path_id: &str) -> Result<(Map<String, Value>, Job), ApiError> {
    if ctx.req.body.is_empty() {
        return Err(ApiError::empty_body());
    }
    let obj = match crate::parse_bounds::json_value(&ctx.req.body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(ApiError::bad_request(
                "Failed to decode body: expected a JSON object",
            ))
        }
        Err(e) => return Err(ApiError::bad_request(format!("Failed to decode body: {e}"))),
    };
    let job_value = match get_ci(&obj, "Job") {
        Some(v) if v.is_object() => v.clone(),
        _ => return Err(ApiError::bad_request("Job must be specified")),
    };
    if !job_value.get("ID").is_some_and(Value::is_string) {
        return Err(ApiError::bad_request("Job must have a valid ID"));
    }
    let job = Job::from_json(job_value)?;
    if !path_id.is_empty() && job.id != path_id {
        return Err(ApiError::bad_request("Job ID does not match"));
    }
    Ok((obj, job))
}

fn desired_json(d: &DesiredUpdates) -> Value {
    json!({"Ignore": d.ignore, "Place": d.place, "Migrate": d.migrate, "Stop": d.stop,
        "InPlaceUpdate": d.in_place_update, "DestructiveUpdate": d.destructive_update,
        "Canary": 0, "Preemptions": 0, "Disconnect": 0, "Reconnect": 0,
        "RescheduleNow": d.reschedule_now, "RescheduleLater": d.reschedule_later})
}

/// Nomad's `scheduler.Annotate`: each group's `Updates` from its desired updates, each task
/// what its change forces, a count change what it creates or destroys.
fn annotate(diff: &mut JobDiff, desired: &std::collections::BTreeMap<String, DesiredUpdates>) {
    for tg in &mut diff.task_groups {
        if let Some(d) = desired.get(&tg.name) {
            for (word, n) in [
                (UPDATE_IGNORE, d.ignore),
                (UPDATE_CREATE, d.place),
                (UPDATE_MIGRATE, d.migrate),
                (UPDATE_DESTROY, d.stop),
                (UPDATE_IN_PLACE, d.in_place_update),
                (UPDATE_DESTRUCTIVE, d.destructive_update),
            ] {
                if n > 0 {
                    tg.updates.insert(word.to_string(), n);
                }
            }
        }
        for f in &mut tg.fields {
            if f.name == "Count" && f.kind == DiffType::Edited {
                let (o, n) = (
                    f.old.parse::<i64>().unwrap_or(0),
                    f.new.parse::<i64>().unwrap_or(0),
                );
                f.annotations
                    .push(if n > o { FORCES_CREATE } else { FORCES_DESTROY }.into());
            }
        }
        for t in &mut tg.tasks {
            let a = match t.kind {
                DiffType::Added => FORCES_CREATE,
                DiffType::Deleted => FORCES_DESTROY,
                // nomadlet replaces every alloc of a changed version (no in-place updates).
                DiffType::Edited => FORCES_DESTRUCTIVE,
                DiffType::None => continue,
            };
            t.annotations.push(a.into());
        }
    }
}

/// The next launch of a periodic job as Go prints a `time.Time` in the job's zone.
fn next_launch(job: &Job) -> String {
    if !launch::is_periodic_active(job) {
        return ZERO_TIME.into();
    }
    let Some(s) = Schedule::of(job) else {
        return ZERO_TIME.into();
    };
    let now = crate::time::unix_now_nanos().div_euclid(1_000_000_000);
    let Some(at) = s.next_after(now) else {
        return ZERO_TIME.into();
    };
    match jiff::Timestamp::from_second(at) {
        Ok(ts) => {
            let z = ts.to_zoned(s.tz.clone());
            if z.offset().seconds() == 0 {
                z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
            } else {
                z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
            }
        }
        Err(_) => ZERO_TIME.into(),
    }
}

/// `PUT|POST /v1/job/:id/plan`.
pub fn plan(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let (obj, mut job) = decode(ctx, id)?;
    let str_field = |k: &str| {
        get_ci(&obj, k)
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
    if let Some(r) = str_field("Region") {
        job.region = r;
    }
    job.canonicalize(&ctx.agent.config.region);
    ctx.identity.allow_namespace(&job.namespace, "submit-job")?;
    super::namespaces::require_known(&job.namespace)?;
    validate_job(&job)?;
    let errs = launch::validate(&job);
    if !errs.is_empty() {
        return Err(crate::state::jobs::error::JobError::Invalid(errs).into());
    }
    let want_diff = get_ci(&obj, "Diff")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let state = ctx.agent.workloads.state();
    let old = state
        .jobs
        .get(&(job.namespace.clone(), job.id.clone()))
        .cloned();
    let index = old.as_ref().map(|j| j.job_modify_index).unwrap_or(0);
    let now = crate::time::unix_now_nanos();
    let run = dry_run(&state, &job, now).ok_or_else(|| {
        ApiError::internal("scheduler resulted in an unexpected number of plans: 0")
    })?;
    let diff = if want_diff {
        let mut d = job_diff(old.as_deref(), Some(&job), true)
            .map_err(|e| ApiError::internal(format!("failed to create job diff: {e}")))?;
        annotate(&mut d, &run.desired);
        serde_json::to_value(&d).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let desired: Map<String, Value> = run
        .desired
        .iter()
        .map(|(g, d)| (g.clone(), desired_json(d)))
        .collect();
    let failed = if run.plan.failed_tg_allocs.is_empty() {
        Value::Null
    } else {
        json!(run.plan.failed_tg_allocs)
    };
    let created: Vec<Value> = run.created_evals.iter().map(eval_json).collect();
    json_meta(
        &json!({
            "Annotations": {"DesiredTGUpdates": desired, "PreemptedAllocs": null},
            "FailedTGAllocs": failed,
            "JobModifyIndex": index,
            "CreatedEvals": if created.is_empty() { Value::Null } else { json!(created) },
            "Diff": diff,
            "NextPeriodicLaunch": next_launch(&job),
            "Warnings": "",
            "Index": index
        }),
        IndexMeta::Write(index),
    )
}
