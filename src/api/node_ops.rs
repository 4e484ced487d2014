//! Node operations (ref cluster §2.7–2.9): `PUT|POST /v1/node/:id/eligibility`, `/drain`,
//! `/evaluate` and `/purge`, with Nomad's bodies, replies and error texts; and the JSON of a
//! node's `DrainStrategy` and `LastDrain`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::http::Method;
use crate::state::command::{ApplyError, Command};
use crate::state::node_ops::{self, DrainUpdate, JobEval, NodeWrite};
use crate::state::node_table::{DrainStrategy, Node, NodeEvent};
use crate::state::status::NodeEligibility;

use super::error::store_err;
use super::params::get_ci;
use super::{json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// Go's zero `time.Time` as JSON (an unset `ForceDeadline`).
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Serve `node/:id/<op>` for `op` in `eligibility`, `drain`, `evaluate`, `purge`.
pub fn route(ctx: &Ctx, id: &str, op: &str) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    ctx.identity.allow_node(true)?;
    match op {
        "eligibility" => eligibility(ctx, id),
        "drain" => drain(ctx, id),
        "evaluate" => evaluate(ctx, id),
        "purge" => purge(ctx, id),
        _ => Err(ApiError::not_found("resource not found")),
    }
}

/// Refusals of apply in Nomad's words (500, as Nomad's RPC errors are).
fn apply_err(e: ApplyError) -> ApiError {
    ApiError::internal(e.to_string())
}

fn node_not_found() -> ApiError {
    ApiError::internal("node not found")
}

fn find(ctx: &Ctx, id: &str) -> Result<Arc<Node>, ApiError> {
    ctx.agent.workloads.node(id).ok_or_else(node_not_found)
}

/// Go's name of a JSON value's type in its decoder errors.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Go's text for a value of the wrong type in `field` (`Struct.Field`) of type `ty` (a
/// number names itself only when it does not fit an integer field).
fn mismatch(v: &Value, field: &str, ty: &str) -> ApiError {
    let what = match v {
        Value::Number(n) if ty == "time.Duration" => format!("number {n}"),
        other => go_type(other).to_string(),
    };
    ApiError::bad_request(format!(
        "json: cannot unmarshal {what} into Go struct field {field} of type {ty}"
    ))
}

/// The body as a JSON object (Go: decoded into `type_name`; `null` is an empty request).
fn body_object(ctx: &Ctx, type_name: &str) -> Result<Map<String, Value>, ApiError> {
    let body = &ctx.req.body;
    if body.is_empty() {
        return Err(ApiError::empty_body());
    }
    let v =
        crate::parse_bounds::json_value(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    match v {
        Value::Object(o) => Ok(o),
        Value::Null => Ok(Map::new()),
        other => Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go value of type {type_name}",
            go_type(&other)
        ))),
    }
}

fn str_field(obj: &Map<String, Value>, key: &str, owner: &str) -> Result<Option<String>, ApiError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(mismatch(other, &format!("{owner}.{key}"), "string")),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str, owner: &str) -> Result<bool, ApiError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(mismatch(other, &format!("{owner}.{key}"), "bool")),
    }
}

/// The write reply of eligibility and drain (`NodeUpdateEligibilityResponse`,
/// `NodeDrainUpdateResponse`).
fn write_reply(w: &NodeWrite, index: u64) -> ApiResult {
    let eval_ids = (!w.eval_ids.is_empty()).then(|| w.eval_ids.clone());
    json_meta(
        &json!({
            "NodeModifyIndex": w.node_modify_index,
            "EvalIDs": eval_ids,
            "EvalCreateIndex": w.eval_create_index,
            "Index": index,
        }),
        IndexMeta::Write(index),
    )
}

fn event(message: &str, subsystem: &str, now: i64) -> NodeEvent {
    NodeEvent {
        message: message.into(),
        subsystem: subsystem.into(),
        details: None,
        timestamp: now,
        create_index: 0,
    }
}

/// Fresh evals for the node's node-update jobs (Nomad's `createNodeEvals`).
fn node_evals(ctx: &Ctx, node: &Node) -> Vec<JobEval> {
    let state = ctx.agent.workloads.state();
    node_ops::evals_for(&node_ops::node_update_jobs(&state, node))
}

fn propose(ctx: &Ctx, cmd: Command) -> Result<(NodeWrite, u64), ApiError> {
    ctx.agent
        .workloads
        .propose_node_op(cmd)
        .map_err(store_err)?
        .map_err(apply_err)
}

/// `PUT /v1/node/:id/eligibility` with `{"Eligibility": "eligible"|"ineligible"}`.
fn eligibility(ctx: &Ctx, path_id: &str) -> ApiResult {
    const TYPE: &str = "NodeUpdateEligibilityRequest";
    let obj = body_object(ctx, "structs.NodeUpdateEligibilityRequest")?;
    let body_id = str_field(&obj, "NodeID", TYPE)?.unwrap_or_default();
    let wanted = str_field(&obj, "Eligibility", TYPE)?.unwrap_or_default();
    if get_ci(&obj, "NodeEvent").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::internal("node event must not be set"));
    }
    let id = if body_id.is_empty() {
        path_id
    } else {
        &body_id
    };
    if id.is_empty() {
        return Err(ApiError::internal(
            "missing node ID for setting scheduling eligibility",
        ));
    }
    let Some(eligibility) = NodeEligibility::parse(&wanted) else {
        return Err(ApiError::internal(format!(
            "invalid scheduling eligibility {wanted:?}"
        )));
    };
    let node = find(ctx, id)?;
    if eligibility == NodeEligibility::Eligible && node.drain_strategy.is_some() {
        return Err(apply_err(ApplyError::NodeDraining));
    }
    if node.scheduling_eligibility == eligibility {
        // Nomad writes nothing: every index of the reply is 0.
        return write_reply(&NodeWrite::default(), 0);
    }
    let now = crate::time::unix_now_nanos();
    let (message, evals) = match eligibility {
        NodeEligibility::Eligible => (
            "Node marked as eligible for scheduling",
            node_evals(ctx, &node),
        ),
        NodeEligibility::Ineligible => ("Node marked as ineligible for scheduling", Vec::new()),
    };
    let (w, index) = propose(
        ctx,
        Command::NodeSetEligibility {
            node_id: node.id.clone(),
            eligibility,
            event: Some(event(message, "Cluster", now)),
            evals,
            now,
        },
    )?;
    write_reply(&w, index)
}

/// `DrainSpec` of a drain request: `None` when absent or `null` (disable).
fn drain_spec(obj: &Map<String, Value>) -> Result<Option<(i64, bool)>, ApiError> {
    const TYPE: &str = "NodeUpdateDrainRequest.DrainSpec";
    let spec = match get_ci(obj, "DrainSpec") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(mismatch(
                other,
                "NodeUpdateDrainRequest.DrainSpec",
                "api.DrainSpec",
            ))
        }
    };
    let deadline = match get_ci(spec, "Deadline") {
        None | Some(Value::Null) => 0,
        Some(v @ Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| mismatch(v, &format!("{TYPE}.Deadline"), "time.Duration"))?,
        Some(other) => {
            return Err(mismatch(
                other,
                &format!("{TYPE}.Deadline"),
                "time.Duration",
            ))
        }
    };
    let ignore = bool_field(spec, "IgnoreSystemJobs", TYPE)?;
    Ok(Some((deadline, ignore)))
}

fn meta_field(obj: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    const FIELD: &str = "NodeUpdateDrainRequest.Meta";
    match get_ci(obj, "Meta") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Null => Ok((k.clone(), String::new())),
                other => Err(mismatch(other, FIELD, "string")),
            })
            .collect(),
        Some(other) => Err(mismatch(other, FIELD, "map[string]string")),
    }
}

/// `PUT /v1/node/:id/drain` with `{"DrainSpec": {"Deadline": ns, "IgnoreSystemJobs": b} |
/// null, "MarkEligible": b, "Meta": {..}}`.
fn drain(ctx: &Ctx, id: &str) -> ApiResult {
    let obj = body_object(ctx, "api.NodeUpdateDrainRequest")?;
    let spec = drain_spec(&obj)?;
    let mark_eligible = bool_field(&obj, "MarkEligible", "NodeUpdateDrainRequest")?;
    let meta = meta_field(&obj)?;
    let node = find(ctx, id)?;
    let now = crate::time::unix_now_nanos();
    let strategy = spec.map(|(deadline_ns, ignore_system_jobs)| DrainStrategy {
        deadline_ns,
        force_deadline: if deadline_ns > 0 {
            now.saturating_add(deadline_ns)
        } else {
            0
        },
        ignore_system_jobs,
        started_at: node.drain_strategy.as_ref().map_or(now, |d| d.started_at),
    });
    let message = match (&node.drain_strategy, &strategy) {
        (None, Some(_)) => Some("Node drain strategy set"),
        (Some(_), Some(_)) => Some("Node drain strategy updated"),
        (Some(_), None) => Some("Node drain disabled"),
        (None, None) => None,
    };
    let evals = if strategy.is_none()
        && mark_eligible
        && node.scheduling_eligibility == NodeEligibility::Ineligible
    {
        node_evals(ctx, &node)
    } else {
        Vec::new()
    };
    let accessor = ctx
        .identity
        .token()
        .map(|t| format!("token:{}", t.accessor_id))
        .unwrap_or_default();
    let (w, index) = propose(
        ctx,
        Command::NodeUpdateDrain {
            node_id: node.id.clone(),
            update: Box::new(DrainUpdate {
                strategy,
                mark_eligible,
                meta,
                accessor,
            }),
            event: message.map(|m| event(m, "Drain", now)),
            evals,
            now,
        },
    )?;
    // Published: the drainer (started if it was not running) sees it.
    ctx.agent.drainer.kick();
    write_reply(&w, index)
}

/// Nomad's `NodeUpdateResponse`; `server_info` fills the leader and servers part.
fn update_response(
    ctx: &Ctx,
    w: &NodeWrite,
    index: u64,
    eligibility: &str,
    server_info: bool,
) -> Value {
    let eval_ids = (!w.eval_ids.is_empty()).then(|| w.eval_ids.clone());
    let (leader, num_nodes, servers) = if server_info {
        let rpc = ctx.agent.config.rpc_addr();
        (
            rpc.clone(),
            ctx.agent.workloads.state().nodes.len(),
            json!([{"RPCAdvertiseAddr": rpc, "RPCMajorVersion": 0, "RPCMinorVersion": 0,
                "Datacenter": ctx.agent.config.datacenter}]),
        )
    } else {
        (String::new(), 0, Value::Null)
    };
    json!({
        "HeartbeatTTL": 0,
        "EvalIDs": eval_ids,
        "EvalCreateIndex": w.eval_create_index,
        "NodeModifyIndex": w.node_modify_index,
        "Features": 0,
        "LeaderRPCAddr": leader,
        "NumNodes": num_nodes,
        "Servers": servers,
        "SchedulingEligibility": eligibility,
        "SignedIdentity": null,
        "Index": index,
        "LastContact": 0,
        "KnownLeader": false,
        "NextToken": "",
    })
}

/// `PUT /v1/node/:id/evaluate`: a pending node-update eval per job of the node.
fn evaluate(ctx: &Ctx, id: &str) -> ApiResult {
    let node = find(ctx, id)?;
    let evals = node_evals(ctx, &node);
    let eligibility = node.scheduling_eligibility.as_str();
    if evals.is_empty() {
        let v = update_response(ctx, &NodeWrite::default(), 0, eligibility, true);
        return json_meta(&v, IndexMeta::Write(0));
    }
    let now = crate::time::unix_now_nanos();
    let (w, _) = propose(
        ctx,
        Command::NodeEvaluate {
            node_id: node.id.clone(),
            evals,
            now,
        },
    )?;
    let index = w.eval_create_index;
    let v = update_response(ctx, &w, index, eligibility, true);
    json_meta(&v, IndexMeta::Write(index))
}

/// `PUT /v1/node/:id/purge`: the node is removed now (a live client registers again).
fn purge(ctx: &Ctx, id: &str) -> ApiResult {
    let node = find(ctx, id)?;
    let evals = node_evals(ctx, &node);
    let now = crate::time::unix_now_nanos();
    let (mut w, index) = propose(
        ctx,
        Command::NodeDeregister {
            node_id: node.id.clone(),
            evals,
            now,
        },
    )?;
    w.node_modify_index = index;
    // Its heartbeat timer goes with it (a client that registers again gets a new one).
    ctx.agent.heartbeats.clear(&node.id);
    log::info!("node {} purged at index {index}", node.id);
    let v = update_response(ctx, &w, index, "", false);
    json_meta(&v, IndexMeta::Write(index))
}

fn rfc3339(nanos: i64) -> String {
    if nanos <= 0 {
        return GO_ZERO_TIME.to_string();
    }
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64);
    crate::time::rfc3339_nanos(t)
}

/// A node's `DrainStrategy` (`null` when it is not draining).
pub fn drain_strategy_json(node: &Node) -> Value {
    match &node.drain_strategy {
        None => Value::Null,
        Some(d) => json!({
            "Deadline": d.deadline_ns,
            "IgnoreSystemJobs": d.ignore_system_jobs,
            "ForceDeadline": rfc3339(d.force_deadline),
            "StartedAt": rfc3339(d.started_at),
        }),
    }
}

/// A node's `LastDrain` (`null` when it was never drained).
pub fn last_drain_json(node: &Node) -> Value {
    match &node.last_drain {
        None => Value::Null,
        Some(l) => json!({
            "StartedAt": rfc3339(l.started_at),
            "UpdatedAt": rfc3339(l.updated_at),
            "Status": l.status,
            "AccessorID": l.accessor_id,
            "Meta": (!l.meta.is_empty()).then_some(&l.meta),
        }),
    }
}
