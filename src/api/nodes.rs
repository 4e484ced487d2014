//! Node and status endpoints: `/v1/nodes`, `/v1/node/:id[/allocations]`, `/v1/status/leader`,
//! `/v1/status/peers`, `/v1/regions` (ref §6.3).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
        Some((id, op @ ("eligibility" | "drain" | "evaluate" | "purge"))) => {
            super::node_ops::route(ctx, id, op)
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
        let full = node_json(&node);
        index = index.max(stub_index(&full));
        if node.id.starts_with(prefix) && filter::keeps(expr.as_ref(), &full) {
            out.push(stub_json(&node, with_os, with_resources));
        }
    }
    json_meta(&out, IndexMeta::Query(index))
}

fn read(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    check_common(ctx.req)?;
    ctx.identity.allow_node(false)?;
    let node = node_json(&*find_node(ctx, id)?);
    let index = stub_index(&node);
    json_meta(&node, IndexMeta::Query(index))
}

/// The `ModifyIndex` of a node object (read with the object, never separately).
fn stub_index(node: &Value) -> u64 {
    node.get("ModifyIndex").and_then(Value::as_u64).unwrap_or(0)
}

fn rfc3339(nanos: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    crate::time::rfc3339_nanos(t)
}

/// The full `Node` object of `GET /v1/node/:id` (SecretID blanked, `Drain` added).
pub fn node_json(node: &Node) -> Value {
    let events: Vec<Value> = node
        .events
        .iter()
        .map(|e| {
            json!({
                "Message": e.message,
                "Subsystem": e.subsystem,
                "Details": e.details,
                "Timestamp": rfc3339(e.timestamp),
                "CreateIndex": e.create_index,
            })
        })
        .collect();
    json!({
        "ID": node.id,
        "SecretID": "",
        "Datacenter": node.datacenter,
        "Name": node.name,
        "HTTPAddr": node.http_addr,
        "TLSEnabled": node.tls_enabled,
        "Attributes": node.attributes,
        "NodeResources": node_resources(node),
        "ReservedResources": {
            "Cpu": {"CpuShares": reserved(node, "/Reserved/Cpu/CpuShares"), "ReservedCpuCores": []},
            "Memory": {"MemoryMB": reserved(node, "/Reserved/Memory/MemoryMB")},
            "Disk": {"DiskMB": reserved(node, "/Reserved/Disk/DiskMB")},
            "Networks": {"ReservedHostPorts": reserved_host_ports(node)}},
        "Links": {},
        "Meta": node.meta,
        "NodeClass": node.node_class,
        "NodePool": node.node_pool,
        "ComputedClass": "",
        "DrainStrategy": super::node_ops::drain_strategy_json(node),
        "SchedulingEligibility": node.scheduling_eligibility,
        "Status": node.status,
        "StatusDescription": node.status_description,
        "StatusUpdatedAt": node.status_updated_at,
        "Events": events,
        "Drivers": node.drivers,
        "CSIControllerPlugins": null,
        "CSINodePlugins": null,
        "HostVolumes": null,
        "HostNetworks": null,
        "LastDrain": super::node_ops::last_drain_json(node),
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
        "Drain": node.drain,
    })
}

/// `NodeResources` as Nomad shows it: the client's report without the `Reserved` part it
/// carries for the scheduler (that is `ReservedResources`).
fn node_resources(node: &Node) -> Value {
    let mut r = (*node.resources).clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("Reserved");
    }
    r
}

/// One figure of the client's `reserved` block (0 when it reported none).
fn reserved(node: &Node, pointer: &str) -> Value {
    node.resources
        .pointer(pointer)
        .cloned()
        .unwrap_or_else(|| json!(0))
}

/// The client's `reserved.reserved_ports`: what its default address reserves.
fn reserved_host_ports(node: &Node) -> Value {
    node.resources
        .pointer("/NodeNetworks/0/Addresses/0/ReservedPorts")
        .cloned()
        .unwrap_or_else(|| json!(""))
}

/// The `NodeListStub` of `GET /v1/nodes`.
fn stub_json(node: &Node, with_os: bool, with_resources: bool) -> Value {
    let mut stub = serde_json::Map::new();
    stub.insert(
        "Address".into(),
        json!(node
            .http_addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or("")),
    );
    stub.insert("ID".into(), json!(node.id));
    if with_os {
        let os: BTreeMap<&str, &str> = ["os.name", "os.version"]
            .iter()
            .filter_map(|k| node.attributes.get(*k).map(|v| (*k, v.as_str())))
            .collect();
        stub.insert("Attributes".into(), json!(os));
    }
    stub.insert("Datacenter".into(), json!(node.datacenter));
    stub.insert("Name".into(), json!(node.name));
    stub.insert("NodeClass".into(), json!(node.node_class));
    stub.insert("NodePool".into(), json!(node.node_pool));
    stub.insert("Version".into(), json!(node.version));
    stub.insert("Drain".into(), json!(node.drain));
    stub.insert(
        "SchedulingEligibility".into(),
        json!(node.scheduling_eligibility),
    );
    stub.insert("Status".into(), json!(node.status));
    stub.insert("StatusDescription".into(), json!(node.status_description));
    stub.insert("Drivers".into(), (*node.drivers).clone());
    stub.insert("HostVolumes".into(), Value::Null);
    if with_resources {
        stub.insert("NodeResources".into(), node_resources(node));
        stub.insert(
            "ReservedResources".into(),
            json!({"Cpu": {"CpuShares": reserved(node, "/Reserved/Cpu/CpuShares")},
                "Memory": {"MemoryMB": reserved(node, "/Reserved/Memory/MemoryMB")},
                "Disk": {"DiskMB": reserved(node, "/Reserved/Disk/DiskMB")}}),
        );
    }
    stub.insert("LastDrain".into(), super::node_ops::last_drain_json(node));
    stub.insert("CreateIndex".into(), json!(node.create_index));
    stub.insert("ModifyIndex".into(), json!(node.modify_index));
    Value::Object(stub)
}

/// `/v1/status/leader`, `/v1/status/peers`, `/v1/regions`.
pub fn route_status(ctx: &Ctx, path: &str) -> ApiResult {
    let value = match path {
        "status/leader" => match ctx.agent.raft.get() {
            Some(raft) => {
                let view = crate::state::leader::Leadership::view(&**raft);
                json!(view
                    .leader_rpc_addr
                    .map(|a| a.to_string())
                    .unwrap_or_default())
            }
            None => json!(ctx.agent.config.rpc_addr()),
        },
        "status/peers" => match ctx.agent.raft.get() {
            Some(raft) => json!(super::raft_status::peer_addresses(raft)),
            None => json!([ctx.agent.config.rpc_addr()]),
        },
        "regions" => json!([ctx.agent.config.region]),
        _ => return Err(ApiError::no_route()),
    };
    ctx.require_method(&[Method::Get])?;
    super::json(&value)
}
