//! Child jobs of parents: `POST /v1/job/:id/dispatch` (a parameterized job's instance, with
//! its payload and meta) and `POST /v1/job/:id/periodic/force` (a periodic job launched now),
//! plus the registration checks of periodic and parameterized jobs. Errors are Nomad's texts;
//! what Nomad's RPC layer returns uncoded is a 500, as there.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::http::Method;
use crate::state::jobs::launch::{self, TRIGGER_JOB_REGISTER, TRIGGER_PERIODIC};
use crate::state::jobs::spec::Job;

use super::error::store_err;
use super::jobs::namespace;
use super::params::get_ci;
use super::{json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// Registration checks of periodic and parameterized jobs (`Job.Validate`'s part for them,
/// then `validateJobUpdate` against the stored job).
pub fn check_register(ctx: &Ctx, job: &Job) -> Result<(), ApiError> {
    let errs = launch::validate(job);
    if !errs.is_empty() {
        return Err(crate::state::jobs::error::JobError::Invalid(errs).into());
    }
    let existing = ctx.agent.workloads.job(&job.namespace, &job.id);
    launch::validate_update(existing.as_ref(), job).map_err(|e| ApiError::internal(e.to_string()))
}

/// The request body as an object (`{}` when empty: every member is optional).
fn body_object(ctx: &Ctx) -> Result<Map<String, Value>, ApiError> {
    if ctx.req.body.is_empty() {
        return Ok(Map::new());
    }
    match crate::parse_bounds::json_value(&ctx.req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "json: cannot unmarshal non-object into Go value of type structs.JobDispatchRequest",
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

fn str_member<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(format!(
            "json: cannot unmarshal non-string into Go struct field JobDispatchRequest.{key} of type string"
        ))),
    }
}

/// `POST /v1/job/:id/dispatch`.
pub fn dispatch(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let obj = body_object(ctx)?;
    let body_id = str_member(&obj, "JobID")?;
    if !body_id.is_empty() && body_id != id {
        return Err(ApiError::bad_request("Job ID does not match"));
    }
    let payload = match str_member(&obj, "Payload")? {
        "" => Vec::new(),
        b64 => crate::encoding::base64_std_decode(b64)
            .ok_or_else(|| ApiError::bad_request("illegal base64 data in Payload"))?,
    };
    let mut meta = BTreeMap::new();
    match get_ci(&obj, "Meta") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.len() <= launch::MAX_DISPATCH_META => {
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return Err(ApiError::bad_request(format!(
                        "json: cannot unmarshal non-string into Go struct field JobDispatchRequest.Meta of type string (key {k:?})"
                    )));
                };
                meta.insert(k.clone(), v.to_string());
            }
        }
        Some(Value::Object(_)) => {
            return Err(ApiError::bad_request(format!(
                "Dispatch meta has more than {} keys",
                launch::MAX_DISPATCH_META
            )))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "json: cannot unmarshal non-object into Go struct field JobDispatchRequest.Meta of type map[string]string",
            ))
        }
    }
    let id_prefix = str_member(&obj, "IdPrefixTemplate")?.to_string();
    if id_prefix.len() > 64 || id_prefix.contains(['/', ' ', '\0']) {
        return Err(ApiError::bad_request("invalid IdPrefixTemplate"));
    }
    let token = str_member(&obj, "IdempotencyToken")?.to_string();
    let ns = match ctx.req.query("namespace").filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => match str_member(&obj, "Namespace")? {
            "" => namespace(ctx),
            n => n.to_string(),
        },
    };
    ctx.identity.allow_namespace(&ns, "dispatch-job")?;
    if id.is_empty() {
        return Err(ApiError::internal("missing parameterized job ID"));
    }
    let state = ctx.agent.workloads.state();
    let parent = state
        .jobs
        .get(&(ns.clone(), id.to_string()))
        .cloned()
        .ok_or_else(|| ApiError::internal("parameterized job not found"))?;
    if !launch::is_parameterized(&parent) {
        return Err(ApiError::internal(format!(
            "Specified job {id:?} is not a parameterized job"
        )));
    }
    if parent.stop {
        return Err(ApiError::internal(format!(
            "Specified job {id:?} is stopped"
        )));
    }
    launch::validate_dispatch(&parent, payload.len(), &meta)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !token.is_empty() {
        // A retried dispatch: the child it made before is the answer.
        if let Some((_, child)) = launch::children(&state, &parent)
            .find(|(_, c)| c.dispatched && c.dispatch_idempotency_token == token)
        {
            return json_meta(
                &json!({"DispatchedJobID": child.id, "EvalID": "", "EvalCreateIndex": 0,
                    "JobCreateIndex": child.create_index, "Index": child.modify_index}),
                IndexMeta::Write(child.modify_index),
            );
        }
    }
    drop(state);
    let now = crate::time::unix_now_nanos().div_euclid(1_000_000_000);
    let child = launch::dispatch_child(&parent, now, &id_prefix, &meta, &payload, &token);
    let child_id = child.id.clone();
    let res = ctx
        .agent
        .workloads
        .launch(child, TRIGGER_JOB_REGISTER)
        .map_err(store_err)?
        .ok_or_else(|| ApiError::internal("parameterized job not found"))?;
    json_meta(
        &json!({
            "DispatchedJobID": child_id,
            "EvalID": res.eval_id,
            "EvalCreateIndex": res.eval_create_index,
            "JobCreateIndex": res.index,
            "Index": res.index
        }),
        IndexMeta::Write(res.index),
    )
}

/// `POST /v1/job/:id/periodic/force`: launch a periodic job's child now.
pub fn periodic_force(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let ns = namespace(ctx);
    ctx.identity
        .allow_namespace(&ns, "dispatch-job")
        .or_else(|_| ctx.identity.allow_namespace(&ns, "submit-job"))?;
    let job = ctx
        .agent
        .workloads
        .job(&ns, id)
        .ok_or_else(|| ApiError::internal("job not found"))?;
    if !launch::is_periodic(&job) {
        return Err(ApiError::internal("can't force launch non-periodic job"));
    }
    if !launch::is_periodic_active(&job) {
        return Err(ApiError::internal(format!(
            "force launch for job {id:?} failed: can't force run non-tracked job {id} ({ns})"
        )));
    }
    let now = crate::time::unix_now_nanos().div_euclid(1_000_000_000);
    let res = ctx
        .agent
        .workloads
        .launch(launch::periodic_child(&job, now), TRIGGER_PERIODIC)
        .map_err(store_err)?
        .ok_or_else(|| ApiError::internal("job not found"))?;
    json_meta(
        &json!({"EvalID": res.eval_id, "EvalCreateIndex": res.eval_create_index,
            "Index": res.index}),
        IndexMeta::Write(res.index),
    )
}
