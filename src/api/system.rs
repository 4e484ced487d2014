//! `PUT /v1/system/gc`: a forced garbage collection, as Nomad's operator command runs it.
//! The server reaps every finished job, eval and alloc (`state::gc`, thresholds zero), and
//! this agent's client collects its terminal allocations' dirs.

use crate::http::Method;

use super::{empty, ApiError, ApiResult, Ctx};

/// Serve `/v1/system/*` (`path` is after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    match path {
        "system/gc" => {
            ctx.require_method(&[Method::Put])?;
            ctx.identity.allow_management()?;
            // The servers' collection (every finished job, eval and alloc, whatever its
            // age), then this client's: terminal allocs' dirs.
            if ctx.agent.config.server_enabled {
                let r = ctx
                    .agent
                    .workloads
                    .collect_garbage(&crate::state::gc::GcThresholds::FORCE)
                    .map_err(super::error::store_err)?;
                log::info!(
                    "gc: forced: collected {} jobs, {} evals, {} allocs",
                    r.jobs,
                    r.evals,
                    r.allocs
                );
            }
            ctx.agent.client.gc_all();
            empty()
        }
        _ => Err(ApiError::no_route()),
    }
}
