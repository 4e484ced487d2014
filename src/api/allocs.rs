//! Allocation endpoints: list, read, stop, and a node's allocations.

use super::{ApiError, ApiResult, Ctx};

/// Serve `path` (the request path after `/v1/`).
pub fn route(_ctx: &Ctx, _path: &str) -> ApiResult {
    Err(ApiError::no_route())
}

/// `GET /v1/node/:id/allocations`: the allocations placed on this node.
pub fn node_allocations(_ctx: &Ctx, _node_id: &str) -> ApiResult {
    super::json(&Vec::<serde_json::Value>::new())
}
