//! The server's node table: what a client registered (identity, attributes, resources,
//! drivers), and what the server keeps of it (status, eligibility, metadata, events, indexes).
//! Changed only by the node commands of `state::command::apply`; the client's own files (its
//! ID, its dynamic metadata) stay in `state::node`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::state::status::{NodeEligibility, NodeStatus};

/// Nomad keeps this many events per node (`MaxRetainedNodeEvents`).
pub const MAX_NODE_EVENTS: usize = 10;

/// One node event (`structs.NodeEvent`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub message: String,
    pub subsystem: String,
    #[serde(default)]
    pub details: Option<BTreeMap<String, String>>,
    /// Unix nanoseconds, chosen by the proposer.
    pub timestamp: i64,
    #[serde(default)]
    pub create_index: u64,
}

/// A node as the server keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub http_addr: String,
    /// The node's HTTP API speaks TLS.
    #[serde(default)]
    pub tls_enabled: bool,
    pub node_pool: String,
    pub node_class: String,
    pub version: String,
    pub attributes: BTreeMap<String, String>,
    /// Static and dynamic metadata merged (what the node's `Meta` shows).
    pub meta: BTreeMap<String, String>,
    /// `NodeResources` as the client fingerprinted them.
    pub resources: Value,
    /// `Drivers` as the client fingerprinted them.
    pub drivers: Value,
    /// `initializing`, `ready`, `down` or `disconnected` (serde: Nomad's word).
    pub status: NodeStatus,
    pub status_description: String,
    /// Unix seconds of the last status change.
    pub status_updated_at: i64,
    /// `eligible` or `ineligible` (serde: Nomad's word).
    pub scheduling_eligibility: NodeEligibility,
    pub drain: bool,
    pub events: Vec<NodeEvent>,
    pub create_index: u64,
    pub modify_index: u64,
}

fn rfc3339(nanos: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    crate::time::rfc3339_nanos(t)
}

impl Node {
    /// The full `Node` object of `GET /v1/node/:id` (SecretID blanked, `Drain` added).
    pub fn api_json(&self) -> Value {
        let events: Vec<Value> = self
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
            "ID": self.id,
            "SecretID": "",
            "Datacenter": self.datacenter,
            "Name": self.name,
            "HTTPAddr": self.http_addr,
            "TLSEnabled": self.tls_enabled,
            "Attributes": self.attributes,
            "NodeResources": self.resources,
            "ReservedResources": {"Cpu": {"CpuShares": 0, "ReservedCpuCores": []}, "Memory": {"MemoryMB": 0}, "Disk": {"DiskMB": 0}, "Networks": {"ReservedHostPorts": ""}},
            "Links": {},
            "Meta": self.meta,
            "NodeClass": self.node_class,
            "NodePool": self.node_pool,
            "ComputedClass": "",
            "DrainStrategy": null,
            "SchedulingEligibility": self.scheduling_eligibility,
            "Status": self.status,
            "StatusDescription": self.status_description,
            "StatusUpdatedAt": self.status_updated_at,
            "Events": events,
            "Drivers": self.drivers,
            "CSIControllerPlugins": null,
            "CSINodePlugins": null,
            "HostVolumes": null,
            "HostNetworks": null,
            "LastDrain": null,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "Drain": self.drain,
        })
    }

    /// The `NodeListStub` of `GET /v1/nodes`.
    pub fn stub_json(&self, with_os: bool, with_resources: bool) -> Value {
        let mut stub = serde_json::Map::new();
        stub.insert(
            "Address".into(),
            json!(self
                .http_addr
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or("")),
        );
        stub.insert("ID".into(), json!(self.id));
        if with_os {
            let os: BTreeMap<&str, &str> = ["os.name", "os.version"]
                .iter()
                .filter_map(|k| self.attributes.get(*k).map(|v| (*k, v.as_str())))
                .collect();
            stub.insert("Attributes".into(), json!(os));
        }
        stub.insert("Datacenter".into(), json!(self.datacenter));
        stub.insert("Name".into(), json!(self.name));
        stub.insert("NodeClass".into(), json!(self.node_class));
        stub.insert("NodePool".into(), json!(self.node_pool));
        stub.insert("Version".into(), json!(self.version));
        stub.insert("Drain".into(), json!(self.drain));
        stub.insert(
            "SchedulingEligibility".into(),
            json!(self.scheduling_eligibility),
        );
        stub.insert("Status".into(), json!(self.status));
        stub.insert("StatusDescription".into(), json!(self.status_description));
        stub.insert("Drivers".into(), self.drivers.clone());
        stub.insert("HostVolumes".into(), Value::Null);
        if with_resources {
            stub.insert("NodeResources".into(), self.resources.clone());
            stub.insert(
                "ReservedResources".into(),
                json!({"Cpu": {"CpuShares": 0}, "Memory": {"MemoryMB": 0}, "Disk": {"DiskMB": 0}}),
            );
        }
        stub.insert("LastDrain".into(), Value::Null);
        stub.insert("CreateIndex".into(), json!(self.create_index));
        stub.insert("ModifyIndex".into(), json!(self.modify_index));
        Value::Object(stub)
    }
}
