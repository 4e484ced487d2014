//! The network parts of an `Allocation`'s JSON: `AllocatedResources.Shared.{Networks,Ports}`,
//! each task's `Networks`, and the legacy `Resources`, `SharedResources` and `TaskResources`
//! Nomad still fills (`NetworkResource`, `Port` and `AllocatedPortMapping` are struct-wide
//! omitempty: zero fields are left out).

use serde_json::{json, Map, Value};

use crate::state::jobs::alloc::AllocRecord;
use crate::state::jobs::network::{self, NetworkAsk, PortAsk, PortMapping};
use crate::state::jobs::spec::{Task, TaskGroup};

/// `AllocatedResources.Shared.Networks` / a task's `Networks`: the ask with the assigned
/// values and the address (Nomad's `AllocatedPortsToNetworkResouce`), zero fields omitted.
pub fn network_json(ask: &NetworkAsk, ports: &[PortMapping], ip: &str, device: &str) -> Value {
    let find = |label: &str| ports.iter().find(|p| p.label == label);
    let port_json = |p: &PortAsk, assigned: Option<&PortMapping>| {
        let mut m = serde_json::Map::new();
        m.insert("Label".into(), json!(p.label));
        let value = assigned.map(|a| i64::from(a.value)).unwrap_or(p.value);
        let to = assigned.map(|a| a.to).unwrap_or(p.to);
        if value != 0 {
            m.insert("Value".into(), json!(value));
        }
        if to != 0 {
            m.insert("To".into(), json!(to));
        }
        if !p.host_network.is_empty() {
            m.insert("HostNetwork".into(), json!(p.host_network));
        }
        Value::Object(m)
    };
    let reserved: Vec<Value> = ask
        .reserved
        .iter()
        .map(|p| port_json(p, find(&p.label)))
        .collect();
    let dynamic: Vec<Value> = ask
        .dynamic
        .iter()
        .map(|p| port_json(p, find(&p.label)))
        .collect();
    let mut m = serde_json::Map::new();
    if !ask.mode.is_empty() {
        m.insert("Mode".into(), json!(ask.mode));
    }
    if !device.is_empty() {
        m.insert("Device".into(), json!(device));
    }
    if !ip.is_empty() {
        m.insert("IP".into(), json!(ip));
    }
    for (k, v) in [("Hostname", "Hostname"), ("MBits", "MBits"), ("DNS", "DNS")] {
        if let Some(x) = ask.raw.get(k).filter(|x| !is_zero_json(x)) {
            m.insert(v.into(), x.clone());
        }
    }
    if !reserved.is_empty() {
        m.insert("ReservedPorts".into(), Value::Array(reserved));
    }
    if !dynamic.is_empty() {
        m.insert("DynamicPorts".into(), Value::Array(dynamic));
    }
    Value::Object(m)
}

fn is_zero_json(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// `AllocatedPortMapping` JSON (struct-wide omitempty).
pub fn mapping_json(p: &PortMapping) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("Label".into(), json!(p.label));
    if p.value != 0 {
        m.insert("Value".into(), json!(p.value));
    }
    if p.to != 0 {
        m.insert("To".into(), json!(p.to));
    }
    if !p.host_ip.is_empty() {
        m.insert("HostIP".into(), json!(p.host_ip));
    }
    Value::Object(m)
}

/// `Shared.Networks` and `Shared.Ports` of an alloc (null when the group has no network).
pub fn shared(a: &AllocRecord, tg: &TaskGroup) -> (Value, Value) {
    let Some(ask) = network::group_ask(tg) else {
        return (Value::Null, Value::Null);
    };
    let ip = a
        .ports
        .group
        .first()
        .map(|p| p.host_ip.clone())
        .unwrap_or_default();
    let nets = json!([network_json(&ask, &a.ports.group, &ip, "")]);
    let ports = if a.ports.group.is_empty() {
        Value::Null
    } else {
        Value::Array(a.ports.group.iter().map(mapping_json).collect())
    };
    (nets, ports)
}

/// A task's `Networks` (its legacy `resources.network`, with the values assigned).
pub fn task_networks(a: &AllocRecord, t: &Task) -> Value {
    let Some(ask) = network::task_ask(t) else {
        return Value::Null;
    };
    let ports: &[PortMapping] = a.ports.tasks.get(&t.name).map_or(&[], Vec::as_slice);
    let ip = ports.first().map(|p| p.host_ip.clone()).unwrap_or_default();
    json!([network_json(&ask, ports, &ip, "")])
}

/// A legacy `structs.Resources` (every field present).
fn resources_json(
    cpu: i64,
    memory: i64,
    memory_max: i64,
    disk: i64,
    networks: Vec<Value>,
) -> Value {
    json!({
        "CPU": cpu, "Cores": 0, "MemoryMB": memory, "MemoryMaxMB": memory_max, "DiskMB": disk,
        "IOPS": 0,
        "Networks": if networks.is_empty() { Value::Null } else { Value::Array(networks) },
        "Devices": null, "NUMA": null, "SecretsMB": 0,
    })
}

/// Nomad's `Resources.Add` of networks: one entry per device, ports appended.
fn merge_networks(into: &mut Vec<Value>, add: &Value) {
    for n in add.as_array().into_iter().flatten() {
        let device = n.get("Device").cloned();
        match into.iter_mut().find(|x| x.get("Device").cloned() == device) {
            Some(x) => {
                for k in ["ReservedPorts", "DynamicPorts"] {
                    if let Some(ports) = n.get(k).and_then(Value::as_array) {
                        let Some(obj) = x.as_object_mut() else {
                            continue;
                        };
                        let slot = obj.entry(k).or_insert_with(|| json!([]));
                        if let Some(list) = slot.as_array_mut() {
                            list.extend(ports.iter().cloned());
                        }
                    }
                }
            }
            None => into.push(n.clone()),
        }
    }
}

/// The legacy `Resources` (the sum), `SharedResources` and `TaskResources` of an alloc, as
/// Nomad's scheduler and state store fill them for compatibility.
pub fn legacy(a: &AllocRecord, tg: &TaskGroup, disk_mb: i64) -> (Value, Value, Value) {
    let mut tasks = Map::new();
    let (mut cpu, mut mem) = (0, 0);
    let mut nets: Vec<Value> = Vec::new();
    for t in &tg.tasks {
        let r = t.resources.clone().unwrap_or_default();
        let (c, m) = (r.cpu.unwrap_or(100), r.memory_mb.unwrap_or(300));
        let tn = task_networks(a, t);
        cpu += c;
        mem += m;
        merge_networks(&mut nets, &tn);
        let list: Vec<Value> = tn.as_array().cloned().unwrap_or_default();
        tasks.insert(t.name.clone(), resources_json(c, m, 0, 0, list));
    }
    let (shared_nets, _) = shared(a, tg);
    merge_networks(&mut nets, &shared_nets);
    let shared_list: Vec<Value> = shared_nets.as_array().cloned().unwrap_or_default();
    let total = resources_json(cpu, mem, mem, disk_mb, nets);
    let shared_res = resources_json(0, 0, 0, disk_mb, shared_list);
    (total, shared_res, Value::Object(tasks))
}
