//! The agent's view of the cluster: known servers (durable) and gossip members.

use parking_lot::RwLock;

use crate::config::Config;

use super::store::StoreError;

/// Known servers and members.
pub struct Membership {
    servers: RwLock<Vec<String>>,
}

impl Membership {
    pub fn load(config: &Config) -> Result<Membership, StoreError> {
        Ok(Membership {
            servers: RwLock::new(config.servers.clone()),
        })
    }

    pub fn servers(&self) -> Vec<String> {
        self.servers.read().clone()
    }
}
