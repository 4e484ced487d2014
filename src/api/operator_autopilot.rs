//! `/v1/operator/autopilot/configuration` (`GET`, `PUT ?cas=`) and
//! `/v1/operator/autopilot/health` (ref §5.8, §6.3) in Nomad's shapes: durations as Go
//! strings, a `PUT` answering `true`/`false`, health answered 429 (body still JSON) when any
//! server is unhealthy. The configuration is replicated (`Command::AutopilotSetConfig`);
//! health is the leader's view (`raft::autopilot`). Reads need `operator:read`, a set
//! `operator:write`; a follower passes both to the leader like any other consistent read or
//! write (`api::forward`).

use serde_json::{json, Map, Value};

use crate::http::{Method, Reply, Status};
use crate::state::autopilot::AutopilotConfig;
use crate::state::command::{Applied, Command};
use crate::state::command_log::LogError;

use super::{ApiError, ApiReply, ApiResult, Ctx, IndexMeta};

/// Nomad's text when no leader stored the configuration yet.
const NOT_INITIALIZED: &str = "autopilot config not initialized yet";

/// Serve `/v1/operator/autopilot/*` (`rest` without the leading `/v1/`).
pub fn route(ctx: &Ctx, rest: &str) -> ApiResult {
    match rest {
        "operator/autopilot/configuration" => match ctx.req.method {
            Method::Get => get_config(ctx),
            Method::Put => set_config(ctx),
            _ => Err(ApiError::not_found("Invalid method")),
        },
        "operator/autopilot/health" => match ctx.req.method {
            Method::Get => health(ctx),
            _ => Err(ApiError::not_found("Invalid method")),
        },
        _ => Err(ApiError::no_route()),
    }
}

fn go_duration(ns: u64) -> String {
    crate::state::jobs::timefmt::go_duration(i64::try_from(ns).unwrap_or(i64::MAX))
}

/// Nomad's `api.AutopilotConfiguration`.
pub fn config_json(c: &AutopilotConfig) -> Value {
    json!({
        "CleanupDeadServers": c.cleanup_dead_servers,
        "LastContactThreshold": go_duration(c.last_contact_threshold_ns),
        "MaxTrailingLogs": c.max_trailing_logs,
        "MinQuorum": c.min_quorum,
        "ServerStabilizationTime": go_duration(c.server_stabilization_time_ns),
        "EnableRedundancyZones": c.enable_redundancy_zones,
        "DisableUpgradeMigration": c.disable_upgrade_migration,
        "EnableCustomUpgrades": c.enable_custom_upgrades,
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

fn get_config(ctx: &Ctx) -> ApiResult {
    ctx.identity.allow_operator(false)?;
    let state = ctx.agent.workloads.state();
    let config = match (&state.autopilot, ctx.agent.raft.get()) {
        (Some(c), _) => (**c).clone(),
        // A replicated server's leader stores it on taking office (Nomad's behaviour).
        (None, Some(_)) => return Err(ApiError::internal(NOT_INITIALIZED)),
        // A single server without Raft: Nomad's defaults until one is set.
        (None, None) => AutopilotConfig::default(),
    };
    super::json_meta(&config_json(&config), IndexMeta::Query(state.index))
}

/// A field of the body (Go's decoder matches keys case-insensitively).
fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn parse_error(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Error parsing autopilot config: {what}"))
}

fn bool_field(m: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match field(m, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(parse_error(format!("{key} must be a boolean"))),
    }
}

fn u64_field(m: &Map<String, Value>, key: &str) -> Result<u64, ApiError> {
    match field(m, key) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| parse_error(format!("{key} must be a non-negative integer"))),
    }
}

/// A duration as Nomad's API takes it: a Go duration string, or nanoseconds.
fn duration_field(m: &Map<String, Value>, key: &str) -> Result<u64, ApiError> {
    match field(m, key) {
        None => Ok(0),
        Some(Value::String(s)) => crate::config::parse_go_duration(s)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .ok_or_else(|| parse_error(format!("time: invalid duration {s:?}"))),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| parse_error(format!("{key} must be a duration"))),
    }
}

/// The body of a `PUT`: absent fields take Go's zero values, as Nomad decodes them.
fn parse_config(body: &[u8]) -> Result<AutopilotConfig, ApiError> {
    if body.is_empty() {
        return Err(parse_error("EOF"));
    }
    let m = match crate::parse_bounds::json_value(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(parse_error("body must be a JSON object")),
        Err(e) => return Err(parse_error(e)),
    };
    Ok(AutopilotConfig {
        cleanup_dead_servers: bool_field(&m, "CleanupDeadServers")?,
        last_contact_threshold_ns: duration_field(&m, "LastContactThreshold")?,
        max_trailing_logs: u64_field(&m, "MaxTrailingLogs")?,
        min_quorum: u64_field(&m, "MinQuorum")?,
        server_stabilization_time_ns: duration_field(&m, "ServerStabilizationTime")?,
        enable_redundancy_zones: bool_field(&m, "EnableRedundancyZones")?,
        disable_upgrade_migration: bool_field(&m, "DisableUpgradeMigration")?,
        enable_custom_upgrades: bool_field(&m, "EnableCustomUpgrades")?,
        create_index: 0,
        modify_index: 0,
    })
}

fn set_config(ctx: &Ctx) -> ApiResult {
    ctx.identity.allow_operator(true)?;
    let config = parse_config(&ctx.req.body)?;
    let cas = match ctx.req.query("cas") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|e| ApiError::bad_request(format!("Error parsing cas value: {e}")))?,
        ),
    };
    let cmd = Command::AutopilotSetConfig { config, cas };
    match ctx.agent.workloads.command_log().propose(cmd) {
        Ok((Applied::Autopilot(done), index)) => {
            if done {
                log::info!("autopilot configuration set at index {index}");
            }
            // Without a check-and-set Nomad answers `true` whatever the apply said.
            super::json_meta(&Value::Bool(done || cas.is_none()), IndexMeta::Write(index))
        }
        Ok(_) => Err(ApiError::internal("autopilot set applied to nothing")),
        Err(e @ LogError::Apply(_)) => Err(ApiError::internal(e.to_string())),
        Err(e) => Err(ApiError::internal(format!(
            "failed applying AutoPilot configuration: {e}"
        ))),
    }
}

/// Go's `time.Time` rounded to the second, UTC (`StableSince`).
fn utc_seconds(t: std::time::SystemTime) -> String {
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        .round() as i64;
    crate::time::rfc3339_with_offset(d, 0, 0)
}

fn health(ctx: &Ctx) -> ApiResult {
    ctx.identity.allow_operator(false)?;
    let Some(raft) = ctx.agent.raft.get() else {
        return single_server_health(ctx);
    };
    let Some(h) = raft.health() else {
        // Forwarded here because this server led a moment ago: it no longer does.
        return Err(ApiError::internal(crate::state::leader::NO_LEADER));
    };
    let servers: Vec<Value> = h
        .servers
        .iter()
        .map(|s| {
            json!({
                "ID": s.uuid,
                "Name": s.name,
                "Address": s.address,
                "SerfStatus": s.serf_status,
                "Version": s.version,
                "Leader": s.leader,
                // Never heard from: Go's -1 (as Nomad's stats fetcher reports "never").
                "LastContact": s.last_contact.map_or_else(
                    || "-1ns".to_string(),
                    |d| go_duration(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                ),
                "LastTerm": s.last_term,
                "LastIndex": s.last_index,
                "Healthy": s.healthy,
                "Voter": s.voter,
                "StableSince": utc_seconds(s.stable_since),
            })
        })
        .collect();
    let body = json!({
        "Healthy": h.healthy,
        "FailureTolerance": h.failure_tolerance,
        "Servers": servers,
        "Leader": h.leader,
        "Voters": h.voters,
    });
    health_reply(h.healthy, &body)
}

/// A server without Raft: itself, the leader, healthy.
fn single_server_health(ctx: &Ctx) -> ApiResult {
    let a = ctx.agent;
    let id = a.node.id().to_string();
    let body = json!({
        "Healthy": true,
        "FailureTolerance": 0,
        "Servers": [{
            "ID": id,
            "Name": format!("{}.{}", a.config.node_name, a.config.region),
            "Address": a.config.rpc_addr(),
            "SerfStatus": "alive",
            "Version": env!("CARGO_PKG_VERSION"),
            "Leader": true,
            "LastContact": "0s",
            "LastTerm": 0,
            "LastIndex": a.index.current(),
            "Healthy": true,
            "Voter": true,
            "StableSince": utc_seconds(a.started_at),
        }],
        "Leader": id,
        "Voters": [id],
    });
    health_reply(true, &body)
}

fn health_reply(healthy: bool, body: &Value) -> ApiResult {
    if healthy {
        return super::json(body);
    }
    let bytes = serde_json::to_vec(body)
        .map_err(|e| ApiError::internal(format!("failed to encode response: {e}")))?;
    Ok(ApiReply::Http(Reply::bytes(
        Status::TOO_MANY_REQUESTS,
        "application/json",
        bytes,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_body_takes_go_durations_or_nanoseconds_and_zeroes_what_is_absent() {
        let c = parse_config(
            br#"{"CleanupDeadServers":true,"LastContactThreshold":"300ms","ServerStabilizationTime":2000000000,"MaxTrailingLogs":10}"#,
        )
        .unwrap();
        assert!(c.cleanup_dead_servers);
        assert_eq!(c.last_contact_threshold_ns, 300_000_000);
        assert_eq!(c.server_stabilization_time_ns, 2_000_000_000);
        assert_eq!((c.max_trailing_logs, c.min_quorum), (10, 0));
        for bad in [
            &b""[..],
            b"[]",
            b"{\"LastContactThreshold\":\"soon\"}",
            b"{\"MaxTrailingLogs\":-1}",
            b"{\"CleanupDeadServers\":\"yes\"}",
        ] {
            let e = parse_config(bad).unwrap_err();
            assert!(
                e.to_string().contains("Error parsing autopilot config"),
                "{e}"
            );
        }
        let json = config_json(&AutopilotConfig::default());
        assert_eq!(json["LastContactThreshold"], "200ms");
        assert_eq!(json["ServerStabilizationTime"], "10s");
        assert_eq!(json["MaxTrailingLogs"], 250);
    }
}
