//! Agent state kept in locked maps: the node, servers and members, jobs and allocations, ACLs.
//! What must survive a restart is written through [`store`] before a change is acknowledged.

pub mod host;
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

/// Size of the filesystem holding the current directory, in MB (for node resources).
pub fn host_disk_mb() -> u64 {
    // SAFETY: statvfs fills a plain struct for a NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c"/".as_ptr(), &mut s) };
    if rc != 0 {
        return 0;
    }
    (s.f_blocks as u64).saturating_mul(s.f_frsize as u64) / (1024 * 1024)
}
