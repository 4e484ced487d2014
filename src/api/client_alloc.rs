//! Client allocation endpoints: GC (one alloc or all), restart, signal, and stats routing.

use serde_json::{json, Value};

use crate::client::task_runner::TaskCmd;
use crate::client::Error as ClientError;
use crate::http::Method;
use crate::signals::parse_signal;

use super::params::get_ci;
use super::{client_stats, empty, json, ApiError, ApiResult, Ctx};

/// Serve `path` (the request path after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    if path == "client/gc" {
        ctx.identity.allow_node(true)?;
        ctx.agent.client.gc_all();
        return empty();
    }
    let Some(rest) = path.strip_prefix("client/allocation/") else {
        return Err(ApiError::no_route());
    };
    let Some((id, action)) = rest.split_once('/') else {
        return Err(ApiError::not_found("resource not found"));
    };
    match action {
        "gc" => gc(ctx, id),
        "stats" => client_stats::alloc_stats(ctx, id),
        "restart" => restart(ctx, id),
        "signal" => signal(ctx, id),
        "checks" => checks(ctx, id),
        _ => Err(ApiError::not_found("resource not found")),
    }
}

fn alloc_namespace(ctx: &Ctx, id: &str) -> Result<String, ApiError> {
    super::forward::local_alloc(ctx.agent, id)
        .map(|a| a.namespace.to_string())
        .ok_or_else(|| ApiError::not_found(format!("Unknown allocation {id:?}")))
}

fn gc(ctx: &Ctx, id: &str) -> ApiResult {
    let ns = alloc_namespace(ctx, id)?;
    ctx.identity.allow_namespace(&ns, "submit-job")?;
    match ctx.agent.client.gc_alloc(id) {
        Ok(()) => empty(),
        Err(ClientError::UnknownAlloc) => {
            Err(ApiError::not_found(format!("Unknown allocation {id:?}")))
        }
        Err(ClientError::NotEligible) => Err(ApiError::internal(
            "No such allocation on client, or allocation not eligible for GC",
        )),
        Err(ClientError::Io(e)) => Err(ApiError::internal(format!(
            "failed to destroy alloc dir: {e}"
        ))),
        Err(e) => Err(ApiError::internal(format!("failed to persist state: {e}"))),
    }
}

/// `GET /v1/client/allocation/:id/checks`: the results of the alloc's Nomad service checks,
/// keyed by check ID. nomadlet runs no checks, so a known alloc has none.
fn checks(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    let ns = alloc_namespace(ctx, id)?;
    ctx.identity.allow_namespace(&ns, "read-job")?;
    json(&serde_json::Map::new())
}

fn body_object(ctx: &Ctx) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    if ctx.req.body.is_empty() {
        return Ok(None);
    }
    let v: Value = crate::parse_bounds::json_value(&ctx.req.body)
        .map_err(|e| ApiError::bad_request(format!("Failed to decode body: {e}")))?;
    match v {
        Value::Object(m) => Ok(Some(m)),
        _ => Err(ApiError::bad_request(
            "Failed to decode body: expected a JSON object",
        )),
    }
}

fn lifecycle_err(e: ClientError) -> ApiError {
    match e {
        ClientError::UnknownTask(t) => {
            ApiError::bad_request(format!("Could not find task runner for task: {t}"))
        }
        ClientError::NotRunning => ApiError::internal("Task not running"),
        e => ApiError::internal(e.to_string()),
    }
}

fn restart(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let ns = alloc_namespace(ctx, id)?;
    ctx.identity.allow_namespace(&ns, "alloc-lifecycle")?;
    let body = body_object(ctx)?.unwrap_or_default();
    let task = get_ci(&body, "TaskName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let all = get_ci(&body, "AllTasks")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let target = if all { None } else { task };
    ctx.agent
        .client
        .command(id, target, TaskCmd::Restart)
        .map_err(lifecycle_err)?;
    json(&json!({"Index": 0}))
}

fn signal(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let ns = alloc_namespace(ctx, id)?;
    ctx.identity.allow_namespace(&ns, "alloc-lifecycle")?;
    let Some(body) = body_object(ctx)? else {
        return Err(ApiError::bad_request(
            "Failed to decode body: Request body is empty",
        ));
    };
    let name = get_ci(&body, "Signal")
        .and_then(Value::as_str)
        .unwrap_or("");
    // raw_exec's rule in Nomad: a name it does not know (or none) sends SIGINT, with a warning.
    let sig = parse_signal(name).unwrap_or_else(|| {
        log::warn!("client: unknown signal {name:?} to send to alloc {id}, using SIGINT instead");
        libc::SIGINT
    });
    let task = get_ci(&body, "Task")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    ctx.agent
        .client
        .command(id, task, TaskCmd::Signal(sig))
        .map_err(lifecycle_err)?;
    json(&json!({"Index": 0}))
}
