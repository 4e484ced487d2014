//! `POST /v1/jobs/parse` (an HCL2 jobspec → the JSON job, through `crate::jobspec`) and
//! `PUT /v1/validate/job` (a JSON job → Nomad's `JobValidateResponse`).

use serde_json::{json, Map, Value};

use crate::http::Method;
use crate::jobspec::{self, Input};
use crate::state::jobs::spec::Job;
use crate::state::jobs::validate::validate_job;

use super::params::get_ci;
use super::{json, ApiError, ApiResult, Ctx};

/// `jobs/parse`.
pub fn parse(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let ns = super::jobs::namespace(ctx);
    ctx.identity.allow_namespace(&ns, "parse-job")?;
    let obj = body_object(&ctx.req.body)?;
    let text = match get_ci(&obj, "JobHCL") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::bad_request("Job spec is empty"))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Failed to decode body: JobHCL must be a string",
            ))
        }
    };
    if get_ci(&obj, "HCLv1").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::bad_request(
            "HCLv1 jobspecs are not supported; use HCL2",
        ));
    }
    let mut input = Input {
        text,
        ..Input::default()
    };
    if let Some(vars) = get_ci(&obj, "Variables").and_then(Value::as_str) {
        if !vars.is_empty() {
            input
                .var_files
                .push(("variables.hcl".into(), vars.to_string()));
        }
    }
    let job = jobspec::parse(&input).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if get_ci(&obj, "Canonicalize").and_then(Value::as_bool) != Some(true) {
        return json(&job);
    }
    let mut typed = Job::from_json(job)?;
    typed.canonicalize(&ctx.agent.config.region);
    json(&typed)
}

/// `validate/job`.
pub fn validate(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let obj = body_object(&ctx.req.body)?;
    let job_value = match get_ci(&obj, "Job") {
        Some(v) if v.is_object() => v.clone(),
        _ => return Err(ApiError::bad_request("Job must be specified")),
    };
    let mut job = Job::from_json(job_value)?;
    let ns = if job.namespace.is_empty() {
        super::jobs::namespace(ctx)
    } else {
        job.namespace.clone()
    };
    ctx.identity.allow_namespace(&ns, "read-job")?;
    job.canonicalize(&ctx.agent.config.region);
    let (errors, error) = match validate_job(&job) {
        Ok(()) => (Vec::new(), String::new()),
        Err(e) => {
            let e = e.to_string();
            (
                e.lines()
                    .filter_map(|l| l.strip_prefix("\t* "))
                    .map(|l| Value::String(l.to_string()))
                    .collect::<Vec<_>>(),
                e,
            )
        }
    };
    json(&json!({
        "DriverConfigValidated": errors.is_empty(),
        // Go's nil slice: null when the job is valid.
        "ValidationErrors": if errors.is_empty() { Value::Null } else { Value::Array(errors) },
        "Error": error,
        "Warnings": "",
    }))
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::empty_body());
    }
    match crate::parse_bounds::json_value(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "Failed to decode body: expected a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Failed to decode body: {e}"))),
    }
}
