//! Node and status endpoints: `/v1/nodes`, `/v1/node/:id[/allocations]`, `/v1/status/leader`,
//! `/v1/status/peers`, `/v1/regions` (ref §6.3).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::http::Method;
use crate::state::node_table::Node;

use super::params::{check_common, parse_go_bool};
use super::{allocs, filter, json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// Serve `nodes` and `node/...`.
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    if path == "nodes" {
        return list(ctx);
    }
    let Some(rest) = path.strip_prefix("node/") else {
        return Err(ApiError::no_route());
    };
    match rest.split_once('/') {
        None => read(ctx, rest),
        Some((id, "allocations")) => {
            ctx.require_method(&[Method::Get])?;
            check_common(ctx.req)?;
            ctx.identity.allow_node(false)?;
            find_node(ctx, id)?;
            allocs::node_allocations(ctx, id)
        }
        Some(_) => Err(ApiError::not_found("resource not found")),
    }
}

fn find_node(ctx: &Ctx, id: &str) -> Result<Arc<Node>, ApiError> {
    ctx.agent
        .workloads
        .node(id)
        .ok_or_else(|| ApiError::not_found("node not found"))
}

fn bool_param(ctx: &Ctx, name: &str) -> Result<bool, ApiError> {
    match ctx.req.query(name) {
        None => Ok(false),
        Some(v) => parse_go_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Failed to parse node list fields: Failed to parse value of {name:?} ({v}) as a bool: strconv.ParseBool: parsing {v:?}: invalid syntax"
            ))
        }),
    }
}

fn list(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    check_common(ctx.req)?;
    ctx.identity.allow_node(false)?;
    let with_os = bool_param(ctx, "os")?;
    let with_resources = bool_param(ctx, "resources")?;
    let expr = filter::from_query(ctx.req)?;
    let prefix = ctx.req.query("prefix").unwrap_or("");
    let mut out: Vec<Value> = Vec::new();
    // The index comes from the same snapshot as the body: a blocking query must never get a
    // newer index with an older node.
    let mut index = 0;
    for node in ctx.agent.workloads.nodes() {
        let full = node.api_json();
        index = index.max(stub_index(&full));
        if node.id.starts_with(prefix) && filter::keeps(expr.as_ref(), &full) {
            out.push(node.stub_json(with_os, with_resources));
        }
    }
    json_meta(&out, IndexMeta::Query(index))
}

fn read(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    check_common(ctx.req)?;
    ctx.identity.allow_node(false)?;
    let node = find_node(ctx, id)?.api_json();
    let index = stub_index(&node);
    json_meta(&node, IndexMeta::Query(index))
}

/// The `ModifyIndex` of a node object (read with the object, never separately).
fn stub_index(node: &Value) -> u64 {
    node.get("ModifyIndex").and_then(Value::as_u64).unwrap_or(0)
}

/// `/v1/status/leader`, `/v1/status/peers`, `/v1/regions`.
pub fn route_status(ctx: &Ctx, path: &str) -> ApiResult {
    let value = match path {
        "status/leader" => json!(ctx.agent.config.rpc_addr()),
        "status/peers" => json!([ctx.agent.config.rpc_addr()]),
        "regions" => json!([ctx.agent.config.region]),
        _ => return Err(ApiError::no_route()),
    };
    ctx.require_method(&[Method::Get])?;
    super::json(&value)
}
