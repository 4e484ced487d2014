//! This node: its identity (kept in the data dir), attributes read from the host, its static
//! and dynamic metadata (Nomad's merge and tombstone rules), and what it registers with the
//! server (the server's node table is `state::node_table`, changed only by commands).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;

use super::host::HostFacts;
use super::node_table::Node;
use super::store::{self, StoreError};

/// Dynamic metadata: `None` is a tombstone that unsets a static key.
pub type DynamicMeta = BTreeMap<String, Option<String>>;

/// Built-in static metadata every Nomad client injects unless configured.
const DEFAULT_STATIC_META: &[(&str, &str)] = &[
    (
        "connect.sidecar_image",
        "docker.io/envoyproxy/envoy:v${NOMAD_envoy_version}",
    ),
    (
        "connect.gateway_image",
        "docker.io/envoyproxy/envoy:v${NOMAD_envoy_version}",
    ),
    ("connect.log_level", "info"),
    ("connect.proxy_concurrency", "1"),
    ("connect.transparent_proxy.default_uid", "101"),
    ("connect.transparent_proxy.default_outbound_port", "15001"),
];

/// The node's identity, generated once and kept at `<data_dir>/client/node.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeIdentity {
    id: String,
    secret_id: String,
}

/// The three views of metadata `GET|POST /v1/client/metadata` returns.
#[derive(Clone, Debug, Serialize)]
pub struct MetaView {
    #[serde(rename = "Meta")]
    pub meta: BTreeMap<String, String>,
    #[serde(rename = "Dynamic")]
    pub dynamic: DynamicMeta,
    #[serde(rename = "Static")]
    pub static_meta: BTreeMap<String, String>,
}

/// The node and its metadata.
pub struct NodeState {
    identity: NodeIdentity,
    name: String,
    datacenter: String,
    http_addr: String,
    /// `client.node_class` and `client.node_pool`.
    node_class: String,
    node_pool: String,
    /// The HTTP API speaks HTTPS (`tls.http`): Nomad's clients dial `HTTPAddr` accordingly.
    tls_enabled: bool,
    attributes: BTreeMap<String, String>,
    facts: HostFacts,
    raw_exec: bool,
    /// How to enable raw_exec (the disabled driver's health description the scheduler shows).
    raw_exec_advice: String,
    /// Built-in defaults plus `client.meta`/`-meta`; replaced by a reload, under the write gate.
    static_meta: RwLock<BTreeMap<String, String>>,
    meta_path: PathBuf,
    /// Serialises metadata writers across their durable write (readers never take it).
    meta_write_gate: Mutex<()>,
    dynamic: RwLock<DynamicMeta>,
    /// `meta_view()` as compact JSON, rebuilt once per change so a read serialises nothing.
    meta_json: RwLock<Arc<Vec<u8>>>,
    /// Unix seconds of this start (the drivers' fingerprint time).
    registered_at: u64,
    /// `NodeResources.Networks` and `NodeNetworks` (`state::node_net`).
    networks: (Value, Value),
    /// The dynamic port range.
    dynamic_ports: (u16, u16),
    /// `client.reserved { cpu memory disk }`: `NodeResources.Reserved`, which the scheduler
    /// takes off the node's capacity.
    reserved: crate::config::ReservedResources,
}

/// The built-in static metadata with the configured keys over it.
fn static_meta_with(config_meta: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = DEFAULT_STATIC_META
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.extend(config_meta.clone());
    m
}

/// Static metadata merged with dynamic: a value sets, a tombstone removes.
fn merge_meta(
    static_meta: &BTreeMap<String, String>,
    dynamic: &DynamicMeta,
) -> BTreeMap<String, String> {
    let mut out = static_meta.clone();
    for (k, v) in dynamic {
        match v {
            Some(v) => {
                out.insert(k.clone(), v.clone());
            }
            None => {
                out.remove(k);
            }
        }
    }
    out
}

/// The compact JSON of the views for these maps (what `serde_json` makes of a `MetaView`).
fn view_json(static_meta: &BTreeMap<String, String>, dynamic: &DynamicMeta) -> Vec<u8> {
    let view = MetaView {
        meta: merge_meta(static_meta, dynamic),
        dynamic: dynamic.clone(),
        static_meta: static_meta.clone(),
    };
    // Maps of strings always serialise.
    serde_json::to_vec(&view).unwrap_or_default()
}

impl NodeState {
    pub fn load(config: &Config) -> Result<NodeState, StoreError> {
        let client_dir = config.data_dir.join("client");
        let id_path = client_dir.join("node.json");
        let identity = match store::read_json::<NodeIdentity>(&id_path)? {
            Some(id) => id,
            None => {
                let id = NodeIdentity {
                    id: uuid::Uuid::new_v4().to_string(),
                    secret_id: uuid::Uuid::new_v4().to_string(),
                };
                store::write_json(&id_path, &id)?;
                id
            }
        };
        let static_meta = static_meta_with(&config.meta);
        let meta_path = client_dir.join("meta.json");
        let mut dynamic: DynamicMeta = store::read_json(&meta_path)?.unwrap_or_default();
        // Tombstones only make sense for keys that are still static.
        dynamic.retain(|k, v| v.is_some() || static_meta.contains_key(k));
        let facts = HostFacts::read();
        let http_addr = config
            .advertise_http
            .clone()
            .unwrap_or_else(|| format!("{}:{}", config.advertise_ip(), config.http_port));
        let attributes = facts.attributes(
            config.raw_exec_enabled,
            &http_addr,
            env!("CARGO_PKG_VERSION"),
        );
        let default_ip = http_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .unwrap_or_else(|_| config.advertise_ip());
        let ifaddrs = crate::sys::host::interface_addrs().unwrap_or_default();
        let networks = super::node_net::networks(&config.client_network, default_ip, &ifaddrs);
        let now = crate::time::unix_now_secs();
        let meta_json = RwLock::new(Arc::new(view_json(&static_meta, &dynamic)));
        Ok(NodeState {
            name: config.node_name.clone(),
            datacenter: config.datacenter.clone(),
            http_addr,
            node_class: config.node_class.clone(),
            node_pool: config.node_pool.clone(),
            tls_enabled: config.tls.http,
            attributes,
            facts,
            raw_exec: config.raw_exec_enabled,
            raw_exec_advice: config.raw_exec_advice(),
            static_meta: RwLock::new(static_meta),
            meta_path,
            meta_write_gate: Mutex::new(()),
            dynamic: RwLock::new(dynamic),
            meta_json,
            identity,
            registered_at: now,
            networks,
            dynamic_ports: (
                config.client_network.min_dynamic_port,
                config.client_network.max_dynamic_port,
            ),
            reserved: config.client_reserved,
        })
    }

    pub fn id(&self) -> &str {
        &self.identity.id
    }

    /// The node's secret (made once with its ID): the credential of every call to a server.
    pub fn secret_id(&self) -> &str {
        &self.identity.secret_id
    }

    pub fn facts(&self) -> &HostFacts {
        &self.facts
    }

    /// The metadata views as the client holds them now.
    pub fn meta_view(&self) -> MetaView {
        let dynamic = self.dynamic.read().clone();
        let static_meta = self.static_meta.read().clone();
        MetaView {
            meta: merge_meta(&static_meta, &dynamic),
            dynamic,
            static_meta,
        }
    }

    /// `meta_view()` as compact JSON, as it was after the last change.
    pub fn meta_view_json(&self) -> Arc<Vec<u8>> {
        self.meta_json.read().clone()
    }

    /// Apply a metadata update with Nomad's rules (a null for a non-static key is dropped,
    /// for a static key it is kept as a tombstone), durably, and return the new views.
    pub fn apply_dynamic(&self, changes: &DynamicMeta) -> Result<MetaView, StoreError> {
        let _gate = self.meta_write_gate.lock();
        let mut next = self.dynamic.read().clone();
        let static_meta = self.static_meta.read().clone();
        for (k, v) in changes {
            match v {
                None if !static_meta.contains_key(k) => {
                    next.remove(k);
                }
                _ => {
                    next.insert(k.clone(), v.clone());
                }
            }
        }
        store::write_json(&self.meta_path, &next)?;
        // Still under the gate: the cached JSON always matches the latest published map.
        let encoded = Arc::new(view_json(&static_meta, &next));
        *self.dynamic.write() = next;
        *self.meta_json.write() = encoded;
        Ok(self.meta_view())
    }

    /// The node's metadata as its record shows it (static merged with dynamic).
    pub fn merged_meta(&self) -> BTreeMap<String, String> {
        merge_meta(&self.static_meta.read(), &self.dynamic.read())
    }

    /// What this client registers with the server (the server keeps its own indexes,
    /// events, eligibility and drain; those here are placeholders it replaces).
    pub fn registration(&self) -> Node {
        Node {
            id: self.identity.id.clone(),
            name: self.name.clone(),
            datacenter: self.datacenter.clone(),
            http_addr: self.http_addr.clone(),
            tls_enabled: self.tls_enabled,
            node_pool: self.node_pool.clone(),
            node_class: self.node_class.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            attributes: self.attributes.clone(),
            meta: self.merged_meta(),
            resources: self.node_resources(),
            drivers: self.drivers(),
            status: crate::state::status::NodeStatus::Ready,
            status_description: String::new(),
            status_updated_at: 0,
            scheduling_eligibility: crate::state::status::NodeEligibility::Eligible,
            drain: false,
            drain_strategy: None,
            last_drain: None,
            events: Vec::new(),
            create_index: 0,
            modify_index: 0,
            secret_id: self.identity.secret_id.clone(),
        }
    }

    /// Replace the static metadata with the built-in defaults plus `config_meta` (a config
    /// reload). `true` when it changed; the caller then has the batcher publish it. Nothing
    /// durable changes: static metadata always comes from the config.
    pub fn reload_static_meta(&self, config_meta: &BTreeMap<String, String>) -> bool {
        let _gate = self.meta_write_gate.lock();
        let next = static_meta_with(config_meta);
        if *self.static_meta.read() == next {
            return false;
        }
        let encoded = Arc::new(view_json(&next, &self.dynamic.read()));
        *self.static_meta.write() = next;
        *self.meta_json.write() = encoded;
        true
    }

    fn drivers(&self) -> Value {
        let mut drivers = serde_json::Map::new();
        if self.raw_exec {
            drivers.insert(
                "raw_exec".into(),
                json!({
                    "Attributes": {"driver.raw_exec": "true"},
                    "Detected": true,
                    "Healthy": true,
                    "HealthDescription": "Healthy",
                    "UpdateTime": crate::time::rfc3339_nanos(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.registered_at)),
                }),
            );
        } else {
            // Nomad lists a disabled driver as not detected; its health description says
            // how to enable it, which the scheduler shows when placements fail for it.
            drivers.insert(
                "raw_exec".into(),
                json!({
                    "Attributes": null,
                    "Detected": false,
                    "Healthy": false,
                    "HealthDescription": self.raw_exec_advice,
                    "UpdateTime": crate::time::rfc3339_nanos(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.registered_at)),
                }),
            );
        }
        Value::Object(drivers)
    }

    fn node_resources(&self) -> Value {
        let f = &self.facts;
        let cores: Vec<usize> = (0..f.cpu_cores).collect();
        json!({
            "Cpu": {"CpuShares": f.cpu_mhz * f.cpu_cores as u64, "TotalCpuCores": f.cpu_cores, "ReservableCpuCores": cores},
            "Memory": {"MemoryMB": f.memory_bytes / (1024 * 1024)},
            "Disk": {"DiskMB": f.disk_mb},
            "Networks": self.networks.0,
            "Devices": null,
            "NodeNetworks": self.networks.1,
            "MinDynamicPort": self.dynamic_ports.0,
            "MaxDynamicPort": self.dynamic_ports.1,
            "Reserved": {
                "Cpu": {"CpuShares": self.reserved.cpu_mhz},
                "Memory": {"MemoryMB": self.reserved.memory_mb},
                "Disk": {"DiskMB": self.reserved.disk_mb},
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_meta_json_follows_every_change() {
        let dir = std::env::temp_dir().join(format!("nomadlet-node-{}", uuid::Uuid::new_v4()));
        let config = Config::from_flags(&crate::config::AgentFlags {
            dev: true,
            data_dir: Some(dir.clone()),
            ..Default::default()
        })
        .unwrap();
        let node = NodeState::load(&config).unwrap();
        let fresh = |n: &NodeState| {
            serde_json::to_vec(&serde_json::to_value(n.meta_view()).unwrap()).unwrap()
        };
        assert_eq!(*node.meta_view_json(), fresh(&node));
        let changes: DynamicMeta = [
            ("a".to_string(), Some("1".to_string())),
            ("connect.log_level".to_string(), None),
        ]
        .into();
        node.apply_dynamic(&changes).unwrap();
        let after = node.meta_view_json();
        assert_eq!(*after, fresh(&node));
        let v: Value = serde_json::from_slice(&after).unwrap();
        assert_eq!(v["Meta"]["a"], "1");
        assert!(v["Meta"].get("connect.log_level").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
