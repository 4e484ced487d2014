//! Agent state kept in locked maps: the node, servers and members, jobs and allocations, ACLs.
//! What must survive a restart is written through [`store`] before a change is acknowledged.

pub mod jobs;
pub mod members;
pub mod node;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};

/// Nomad's Raft-like index: one counter for every write, raised to the largest index seen on
/// disk at start so indexes keep growing across restarts.
#[derive(Debug, Default)]
pub struct IndexCounter(AtomicU64);

impl IndexCounter {
    /// Take the next index for a write.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    /// The latest index handed out.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// Make sure later indexes are above `seen` (used while loading state).
    pub fn observe(&self, seen: u64) {
        self.0.fetch_max(seen, Ordering::SeqCst);
    }
}
