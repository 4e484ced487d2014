//! placeholder

use super::{ApiError, ApiResult, Ctx};

/// Serve `path` (the request path after `/v1/`).
pub fn route(_ctx: &Ctx, _path: &str) -> ApiResult {
    Err(ApiError::no_route())
}
