//! This node: its identity (kept in the data dir), attributes read from the host, and its
//! static and dynamic metadata.

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::Config;

use super::store::{self, StoreError};
use super::IndexCounter;

/// The node's identity, generated once and kept at `<data_dir>/client/node.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeIdentity {
    id: String,
    secret_id: String,
}

/// The node record and its metadata.
pub struct NodeState {
    identity: NodeIdentity,
    record: RwLock<NodeRecord>,
}

/// The parts of the node record that change.
#[derive(Clone, Debug)]
pub struct NodeRecord {
    pub create_index: u64,
    pub modify_index: u64,
}

impl NodeState {
    pub fn load(config: &Config, index: &IndexCounter) -> Result<NodeState, StoreError> {
        let path = config.data_dir.join("client").join("node.json");
        let identity = match store::read_json::<NodeIdentity>(&path)? {
            Some(id) => id,
            None => {
                let id = NodeIdentity {
                    id: uuid::Uuid::new_v4().to_string(),
                    secret_id: uuid::Uuid::new_v4().to_string(),
                };
                store::write_json(&path, &id)?;
                id
            }
        };
        let i = index.next();
        Ok(NodeState {
            identity,
            record: RwLock::new(NodeRecord {
                create_index: i,
                modify_index: i,
            }),
        })
    }

    pub fn id(&self) -> &str {
        &self.identity.id
    }

    pub fn modify_index(&self) -> u64 {
        self.record.read().modify_index
    }
}
