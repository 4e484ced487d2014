//! `/v1/operator/snapshot` (ref §6.5): `GET` saves the server state as Nomad's archive (a gzip
//! tar of `meta.json`, `state.bin`, `SHA256SUMS`, with `Digest: sha-256=<base64>`); `PUT` or
//! `POST` restores one: the whole archive is read and verified first
//! (`state::snapshot_archive::read`: bounds, checksums, decoding), then ONE
//! `Command::RestoreSnapshot` replaces the state, so a bad archive changes nothing and a good
//! one replicates like any other command. Both need a management token.

use std::collections::BTreeSet;

use crate::http::{Method, Reply, Status};
use crate::state::command::{Applied, Command, RestoredState};
use crate::state::command_log::LogError;
use crate::state::snapshot_archive;
use crate::state::status::NodeStatus;

use super::{ApiError, ApiReply, ApiResult, Ctx};

/// The path this module serves.
pub const PATH: &str = "/v1/operator/snapshot";

/// Serve `/v1/operator/snapshot`.
pub fn route(ctx: &Ctx) -> ApiResult {
    match ctx.req.method {
        Method::Get => {
            ctx.identity.allow_management()?;
            save(ctx)
        }
        Method::Put | Method::Post => {
            ctx.identity.allow_management()?;
            restore(ctx)
        }
        _ => Err(ApiError::invalid_method()),
    }
}

/// The Raft term for `meta.json` (0 without Raft).
fn term(ctx: &Ctx) -> u64 {
    ctx.agent
        .leadership
        .get()
        .map(|l| l.view().term)
        .unwrap_or(0)
}

fn save(ctx: &Ctx) -> ApiResult {
    let state = ctx.agent.workloads.state();
    let archive = snapshot_archive::write(&state, term(ctx), crate::time::unix_now_nanos())
        .map_err(|e| {
            log::error!("snapshot save failed: {e}");
            ApiError::internal(e.to_string())
        })?;
    log::info!(
        "snapshot saved at index {}: {} bytes",
        state.index,
        archive.bytes.len()
    );
    if archive.bytes.len() > snapshot_archive::MAX_ARCHIVE_BYTES {
        // Served anyway (a backup is better than none), but say it plainly.
        log::warn!(
            "snapshot archive is {} bytes: over the {} bytes a restore accepts",
            archive.bytes.len(),
            snapshot_archive::MAX_ARCHIVE_BYTES
        );
    }
    let digest = format!("sha-256={}", crate::encoding::base64_std(&archive.sha256));
    Ok(ApiReply::Http(
        Reply::bytes(Status::OK, "application/x-gzip", archive.bytes)
            .with_header("Digest", digest)
            .with_header("X-Nomad-Index", state.index.to_string()),
    ))
}

/// A `Digest: sha-256=<base64>` request header, when sent, must match the body.
fn check_digest(ctx: &Ctx) -> Result<(), ApiError> {
    let Some(value) = ctx.req.header("Digest") else {
        return Ok(());
    };
    let Some(b64) = value.trim().strip_prefix("sha-256=") else {
        // Another algorithm: nothing we can check (Nomad ignores the header on restore).
        return Ok(());
    };
    use sha2::Digest;
    let have: [u8; 32] = sha2::Sha256::digest(&ctx.req.body).into();
    match crate::encoding::base64_std_decode(b64) {
        Some(want) if crate::encoding::constant_time_eq(&want, &have) => Ok(()),
        _ => Err(ApiError::bad_request(
            "snapshot body does not match its Digest header",
        )),
    }
}

fn restore(ctx: &Ctx) -> ApiResult {
    if ctx.req.body.is_empty() {
        return Err(ApiError::empty_body());
    }
    check_digest(ctx)?;
    let (meta, state) = snapshot_archive::read(&ctx.req.body).map_err(|e| {
        log::warn!("snapshot restore refused: {e}");
        ApiError::bad_request(e.to_string())
    })?;
    let before: BTreeSet<String> = ctx.agent.workloads.state().nodes.keys().cloned().collect();
    // Without Raft the index may jump: the command's index is then above every index the
    // restored objects carry. Only reserved: a restore that fails shows no index.
    ctx.agent.index.reserve_above(meta.index);
    let nodes: Vec<(String, bool)> = state
        .nodes
        .values()
        .map(|n| (n.id.clone(), n.status != NodeStatus::Down))
        .collect();
    let (jobs, allocs) = (state.jobs.len(), state.allocs.len());
    let cmd = Command::RestoreSnapshot {
        state: RestoredState(std::sync::Arc::new(state)),
    };
    let index = match ctx.agent.workloads.command_log().propose(cmd) {
        Ok((Applied::Restored, index)) => index,
        Ok(_) => return Err(ApiError::internal("snapshot restore applied to nothing")),
        Err(e @ LogError::Apply(_)) => return Err(ApiError::internal(e.to_string())),
        Err(e) => {
            log::error!("snapshot restore failed: {e}");
            return Err(ApiError::internal(format!("failed to persist state: {e}")));
        }
    };
    // Leader duties see the new state: the restored nodes' heartbeat timers start now (a node
    // that stays silent goes down after a full TTL), timers of nodes no longer known go; the
    // scheduler and blocked evals wake on the index notify the router does after a write.
    let hb = &ctx.agent.heartbeats;
    for id in &before {
        if !nodes.iter().any(|(n, _)| n == id) {
            hb.clear(id);
        }
    }
    for (id, alive) in &nodes {
        if *alive {
            hb.reset(id);
        } else {
            hb.clear(id);
        }
    }
    ctx.agent.drainer.kick();
    log::info!(
        "snapshot restored at index {index} (taken at index {}, term {}): {jobs} jobs, \
         {allocs} allocs, {} nodes",
        meta.index,
        meta.term,
        nodes.len()
    );
    Ok(ApiReply::Empty {
        meta: super::IndexMeta::Write(index),
    })
}

/// The body limit of a restore (the archive's bound).
pub fn body_limit() -> usize {
    snapshot_archive::MAX_ARCHIVE_BYTES
}
