//! The agent's view of the cluster: the client's known servers (durable) and this agent as a
//! member when gossip does not run (the member table itself is `gossip`'s).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::config::Config;

use super::store::{self, StoreError};

/// One entry of `/v1/agent/members` (Nomad's `AgentMember`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Member {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Addr")]
    pub addr: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "ProtocolMin")]
    pub protocol_min: u8,
    #[serde(rename = "ProtocolMax")]
    pub protocol_max: u8,
    #[serde(rename = "ProtocolCur")]
    pub protocol_cur: u8,
    #[serde(rename = "DelegateMin")]
    pub delegate_min: u8,
    #[serde(rename = "DelegateMax")]
    pub delegate_max: u8,
    #[serde(rename = "DelegateCur")]
    pub delegate_cur: u8,
}

/// Takes the servers a reply listed (see [`Membership::server_learner`]).
pub type ServerLearner = Arc<dyn Fn(&[String]) + Send + Sync>;

/// Known servers and members.
pub struct Membership {
    servers_path: PathBuf,
    /// Serialises server-list writers across their durable write.
    servers_gate: Mutex<()>,
    servers: Arc<RwLock<Vec<String>>>,
    local: Member,
}

impl Membership {
    pub fn load(config: &Config, node_id: &str) -> Result<Membership, StoreError> {
        let servers_path = config.data_dir.join("client").join("servers.json");
        let servers = match store::read_json::<Vec<String>>(&servers_path)? {
            Some(s) => s,
            None if !config.client_servers.is_empty() => config.client_servers.clone(),
            None => vec![config.rpc_addr()],
        };
        let mut tags = BTreeMap::new();
        for (k, v) in [
            ("role", "nomad".to_string()),
            ("region", config.region.clone()),
            ("dc", config.datacenter.clone()),
            ("build", env!("CARGO_PKG_VERSION").to_string()),
            ("port", config.ports_rpc.to_string()),
            ("bootstrap", "1".to_string()),
            ("expect", "1".to_string()),
            ("mvn", "1".to_string()),
            ("vsn", "1".to_string()),
            ("raft_vsn", "3".to_string()),
            ("id", node_id.to_string()),
            ("rpc_addr", config.advertise_ip().to_string()),
        ] {
            tags.insert(k.to_string(), v);
        }
        let local = Member {
            name: format!("{}.{}", config.node_name, config.region),
            addr: config.advertise_ip().to_string(),
            port: config.ports_serf,
            tags,
            status: "alive".into(),
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        };
        Ok(Membership {
            servers_path,
            servers_gate: Mutex::new(()),
            servers: Arc::new(RwLock::new(servers)),
            local,
        })
    }

    /// Whether the client knows any server (no copy of the list).
    pub fn has_servers(&self) -> bool {
        !self.servers.read().is_empty()
    }

    /// The client's server list, sorted.
    pub fn servers(&self) -> Vec<String> {
        let mut s = self.servers.read().clone();
        s.sort();
        s
    }

    /// The server list as a function the client's RPC link reads at every call (so a
    /// `PUT /v1/agent/servers` takes effect at the next call).
    pub fn server_list(&self) -> Arc<dyn Fn() -> Vec<String> + Send + Sync> {
        let servers = self.servers.clone();
        Arc::new(move || servers.read().clone())
    }

    /// What a client does with the servers a register/heartbeat reply lists (ref §5.2): the
    /// list (in memory; a restart begins again from the configured or `PUT` list) becomes
    /// them (sorted), unless it already holds the same servers. The link keeps calling the
    /// server that answered last while it is in the list.
    pub fn server_learner(&self) -> ServerLearner {
        let servers = self.servers.clone();
        Arc::new(move |learned: &[String]| {
            let mut want: Vec<String> = learned.to_vec();
            want.sort();
            want.dedup();
            let mut have = servers.read().clone();
            have.sort();
            if have == want {
                return;
            }
            log::info!("servers learned from a reply: {}", want.join(", "));
            *servers.write() = want;
        })
    }

    /// Replace the server list, durably.
    pub fn set_servers(&self, servers: Vec<String>) -> Result<(), StoreError> {
        let _gate = self.servers_gate.lock();
        store::write_json(&self.servers_path, &servers)?;
        *self.servers.write() = servers;
        Ok(())
    }

    pub fn local(&self) -> &Member {
        &self.local
    }
}
