//! Client stats endpoints: `HostStats` of this node and `AllocResourceUsage` of an alloc.

use serde_json::{json, Map, Value};

use crate::client::stats::{DiskUsage, HostStats, TaskUsage};

use super::{json, ApiError, ApiResult, Ctx};

/// Serve `path` (the request path after `/v1/`): `client/stats`.
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    if path != "client/stats" {
        return Err(ApiError::no_route());
    }
    if let Some(node) = ctx.req.query("node_id").filter(|n| !n.is_empty()) {
        if node != ctx.agent.node.id() {
            return Err(ApiError::not_found(format!("Unknown node {node:?}")));
        }
    }
    ctx.identity.allow_node(false)?;
    let root = ctx.agent.config.data_dir.join("alloc");
    let _ = std::fs::create_dir_all(&root);
    json(&host_stats_json(
        &ctx.agent
            .client
            .stats
            .host_stats(&root, ctx.agent.started_at),
    ))
}

/// Nomad's `HostStats` object.
fn host_stats_json(h: &HostStats) -> Value {
    let m = &h.memory;
    let cpu: Vec<Value> = h
        .cpu
        .iter()
        .map(|c| {
            json!({"CPU": c.name, "User": c.user, "System": c.system, "Idle": c.idle,
                   "TotalPercent": c.total_percent, "TotalTicks": c.total_ticks})
        })
        .collect();
    let disks: Vec<Value> = h.disks.iter().map(disk_json).collect();
    json!({
        "Memory": {"Total": m.total, "Available": m.available, "Used": m.used, "Free": m.free},
        "CPU": cpu,
        "DiskStats": disks,
        "AllocDirStats": h.alloc_dir.as_ref().map(disk_json),
        "DeviceStats": [],
        "Uptime": h.uptime,
        "Timestamp": h.timestamp,
        "CPUTicksConsumed": h.cpu_ticks_consumed,
    })
}

/// Nomad's `DiskStats` object.
fn disk_json(d: &DiskUsage) -> Value {
    json!({"Device": d.device, "Mountpoint": d.mountpoint, "Size": d.size, "Used": d.used,
           "Available": d.available, "UsedPercent": d.used_percent,
           "InodesUsedPercent": d.inodes_used_percent})
}

fn resource_usage(u: &TaskUsage) -> Value {
    json!({
        "MemoryStats": {
            "RSS": u.rss, "Cache": u.cache, "Swap": u.swap, "MappedFile": u.mapped_file,
            "Usage": u.usage, "MaxUsage": u.max_usage, "KernelUsage": u.kernel_usage,
            "KernelMaxUsage": u.kernel_max_usage, "Measured": u.memory_measured
        },
        "CpuStats": {
            "SystemMode": u.system_percent, "UserMode": u.user_percent, "TotalTicks": u.total_ticks,
            "ThrottledPeriods": u.throttled_periods, "ThrottledTime": u.throttled_time,
            "Percent": u.percent, "Measured": u.cpu_measured
        },
        "DeviceStats": null
    })
}

/// `GET /v1/client/allocation/:id/stats` (`?task=` restricts to one task).
pub fn alloc_stats(ctx: &Ctx, id: &str) -> ApiResult {
    let a = super::forward::local_alloc(ctx.agent, id)
        .ok_or_else(|| ApiError::not_found(format!("Unknown allocation {id:?}")))?;
    ctx.identity.allow_namespace(&a.namespace, "read-job")?;
    let only = ctx.req.query("task").filter(|t| !t.is_empty());
    let names: Vec<String> = a
        .job
        .group(&a.task_group)
        .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    if let Some(t) = only {
        if !names.iter().any(|n| n == t) {
            return Err(ApiError::bad_request(format!(
                "task {t:?} not found in allocation"
            )));
        }
    }
    let mut tasks = Map::new();
    let mut total = TaskUsage::default();
    let mut ts_max = 0i64;
    for name in names
        .iter()
        .filter(|n| only.map(|t| t == n.as_str()).unwrap_or(true))
    {
        let Some(u) = ctx.agent.client.stats.task_usage(id, name) else {
            continue;
        };
        total.add(&u);
        ts_max = ts_max.max(u.timestamp);
        tasks.insert(
            name.clone(),
            json!({"ResourceUsage": resource_usage(&u), "Timestamp": u.timestamp, "Pids": null}),
        );
    }
    json(&json!({"ResourceUsage": resource_usage(&total), "Tasks": tasks, "Timestamp": ts_max}))
}
