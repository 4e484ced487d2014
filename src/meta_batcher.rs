//! The metadata batcher thread: coalesces dynamic metadata changes and publishes them to the
//! node record once per window.

use std::sync::Arc;

use crate::agent::Agent;
use crate::config::Config;

/// Handle to the batcher thread.
pub struct Batcher {}

impl Batcher {
    pub fn new(_config: &Config) -> Batcher {
        Batcher {}
    }
    pub fn start(&self, _agent: &Arc<Agent>) {}
    pub fn shutdown(&self) {}
}
