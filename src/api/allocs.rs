//! Allocation endpoints: list, read, stop, and a node's allocations.

use serde_json::{json, Value};

use crate::state::jobs::alloc::AllocRecord;

use super::jobs::{job_json, namespace, node_info};
use super::params;
use super::{filter, json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// Serve `path` (the request path after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    if path == "allocations" {
        ctx.require_method(&["GET"])?;
        return list(ctx);
    }
    let Some(rest) = path.strip_prefix("allocation/") else {
        return Err(ApiError::no_route());
    };
    if let Some(id) = rest.strip_suffix("/stop") {
        ctx.require_method(&["PUT", "POST"])?;
        return stop(ctx, id);
    }
    if rest.is_empty() || rest.contains('/') {
        return Err(ApiError::not_found("resource not found"));
    }
    ctx.require_method(&["GET"])?;
    read(ctx, rest)
}

fn bool_param(ctx: &Ctx, name: &str, default: bool) -> Result<bool, ApiError> {
    match params::opt_bool(ctx.req, name) {
        Ok(v) => Ok(v.unwrap_or(default)),
        Err(v) => Err(ApiError::internal(format!(
            "Failed to parse value of {name:?} ({v}) as a bool: {}",
            params::go_bool_error(&v)
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
        .map(|a| a.to_stub(with_states, with_resources))
        .collect();
    json_meta(&out, IndexMeta::Query(ctx.agent.index.current()))
}

/// The full `Allocation` JSON of a record.
pub fn alloc_json(ctx: &Ctx, a: &AllocRecord) -> Value {
    a.to_api(job_json(ctx.agent, &a.job))
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
    let (eval_id, index) = ctx
        .agent
        .workloads
        .stop_alloc(&ctx.agent.index, &node_info(ctx.agent), id)
        .map_err(|e| ApiError::internal(format!("failed to persist state: {e}")))?
        .ok_or_else(|| ApiError::not_found("allocation not found"))?;
    json_meta(
        &json!({"EvalID": eval_id, "Index": index}),
        IndexMeta::Write(index),
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
