//! placeholder

use super::{ApiError, ApiResult, Ctx};

/// Serve `path` (the request path after `/v1/`).
pub fn route(_ctx: &Ctx, _path: &str) -> ApiResult {
    Err(ApiError::no_route())
}

/// `/v1/status/leader`, `/v1/status/peers`, `/v1/regions`.
pub fn route_status(_ctx: &Ctx, _path: &str) -> ApiResult {
    Err(ApiError::no_route())
}
