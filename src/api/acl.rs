//! ACL endpoints: bootstrap, tokens, policies, and the JWKS document.

use super::{ApiError, ApiResult, Ctx};

/// Serve `path` (the request path after `/v1/`).
pub fn route(_ctx: &Ctx, _path: &str) -> ApiResult {
    Err(ApiError::no_route())
}

/// Serve `/.well-known/<rest>` (the JWKS document and OIDC discovery).
pub fn well_known(_ctx: &Ctx, _rest: &str) -> ApiResult {
    Err(ApiError::no_route())
}
