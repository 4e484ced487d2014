//! `PUT /v1/system/gc`: a forced garbage collection, as Nomad's operator command runs it.
//! nomadlet's collector is the client's: every terminal allocation that is not yet collected
//! is marked collected (durably) and its alloc dir destroyed.

use super::{empty, ApiError, ApiResult, Ctx};

/// Serve `/v1/system/*` (`path` is after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    match path {
        "system/gc" => {
            ctx.require_method(&["PUT"])?;
            ctx.identity.allow_management()?;
            ctx.agent.client.gc_all();
            empty()
        }
        _ => Err(ApiError::no_route()),
    }
}
