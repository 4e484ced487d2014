//! Agent state kept in locked maps: the node, servers and members, jobs and allocations, ACLs.
//! What must survive a restart is written through [`store`] before a change is acknowledged.

pub mod acl;
pub mod alloc_index;
pub mod autopilot;
pub mod command;
pub mod command_log;
pub mod event_broker;
pub mod events;
pub mod gc;
pub mod jobs;
pub mod leader;
pub mod members;
/// Durable file writes live in `crate::store` (a leaf every layer may use); the old path
/// still names it.
pub(crate) use crate::store;
pub mod node_ops;
pub mod node_table;
pub mod plan;
pub mod rare;
pub mod reaper;
pub mod shared;
pub mod shared_str;
pub mod snapshot;
pub mod snapshot_archive;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Nomad's Raft-like index: one counter for every write, raised to the largest index seen on
/// disk at start so indexes keep growing across restarts. Blocking queries wait on it.
///
/// A writer reserves an index with [`IndexCounter::next`]; readers only ever see indexes that
/// [`IndexCounter::notify`] published once a change was visible. An index reserved by a write
/// that failed is skipped, never shown.
#[derive(Default)]
pub struct IndexCounter {
    /// The latest index reserved by `next` (or taken by `notify`).
    value: AtomicU64,
    /// The latest index published by `notify` (or seen on disk): what `current` reports.
    published: AtomicU64,
    /// Bumped by every `notify`: blocking queries wait for it to change.
    generation: AtomicU64,
    /// Taken only to pair a waiter's check with a writer's notify (never across I/O).
    gate: Mutex<()>,
    advanced: Condvar,
    closed: AtomicBool,
    /// Called after every `notify` while the counter is open, on the notifier's thread
    /// (the committer, the Raft driver) with no lock of the counter held: what starts an
    /// on-demand worker (the scheduler, this node's alloc puller) when work is published.
    /// Each must be quick and must never propose a command (the committer waits for it).
    on_notify: parking_lot::RwLock<Vec<(u64, NotifyHook)>>,
    /// The ID the next hook gets.
    next_hook: AtomicU64,
}

/// A hook run after each publish (see [`IndexCounter::on_notify`]).
pub type NotifyHook = Box<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for IndexCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCounter")
            .field("current", &self.current())
            .field("generation", &self.generation())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl IndexCounter {
    /// Reserve the next index for a write. Call [`IndexCounter::notify`] once the change is
    /// visible to readers: waking blocking queries before that would let them re-read the old
    /// state and park again. A write that fails just drops its index (it is never published).
    pub fn next(&self) -> u64 {
        self.value.fetch_add(1, Ordering::SeqCst) + 1
    }
    /// Publish: a change is now visible to readers. Takes a fresh index above every reserved
    /// one and publishes it, so an index a reader saw before this change became visible is
    /// always passed once it is; then wakes blocking queries.
    pub fn notify(&self) {
        let gate = self.gate.lock();
        let fresh = self.value.fetch_add(1, Ordering::SeqCst) + 1;
        self.published.fetch_max(fresh, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(gate);
        self.advanced.notify_all();
        if !self.is_closed() {
            for (_, hook) in self.on_notify.read().iter() {
                hook();
            }
        }
    }
    /// Run `hook` after every later `notify` (until the counter is closed): it starts
    /// on-demand workers when something they serve was published.
    /// Returns its ID for [`IndexCounter::remove_hook`].
    pub fn on_notify(&self, hook: NotifyHook) -> u64 {
        let id = self.next_hook.fetch_add(1, Ordering::SeqCst);
        self.on_notify.write().push((id, hook));
        id
    }
    /// Run the hook `id` no more (its worker stopped).
    pub fn remove_hook(&self, id: u64) {
        self.on_notify.write().retain(|(h, _)| *h != id);
    }
    /// How many times `notify` was called: read it before reading state, then wait for it to
    /// change, and no visible change can be missed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    /// The latest published index (never one reserved by a write still in flight or failed).
    pub fn current(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }
    /// Make sure later indexes are above `seen`, and publish it (used while loading state,
    /// for indexes that are already visible).
    pub fn observe(&self, seen: u64) {
        self.value.fetch_max(seen, Ordering::SeqCst);
        self.published.fetch_max(seen, Ordering::SeqCst);
    }
    /// Make sure later indexes are above `seen` WITHOUT publishing anything (a write that
    /// brings objects of higher indexes, e.g. a snapshot restore: its own index must be above
    /// them; if it fails, no index was shown).
    pub fn reserve_above(&self, seen: u64) {
        self.value.fetch_max(seen, Ordering::SeqCst);
    }
    /// Wait until `notify` is called after `generation` was read, the deadline passes, or the
    /// counter is closed. Returns whether a change was notified.
    pub fn wait_for_change(&self, generation: u64, deadline: Instant) -> bool {
        let mut gate = self.gate.lock();
        loop {
            if self.generation() != generation {
                return true;
            }
            if self.closed.load(Ordering::SeqCst)
                || self.advanced.wait_until(&mut gate, deadline).timed_out()
            {
                return self.generation() != generation;
            }
        }
    }
    /// Wake every waiter for good (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(self.gate.lock());
        self.advanced.notify_all();
    }
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The directories the agent's durable writes go to (where interrupted writes leave temp
/// files). Alloc dirs are not among them: tasks own what is in there.
pub fn state_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let server = data_dir.join("server");
    vec![
        data_dir.join("client"),
        server.join("jobs"),
        server.join("evals"),
        server.join("allocs"),
        server,
    ]
}

/// At start, before any write: remove the temp files that writes interrupted by a crash left
/// in the state directories (only files named as [`store::is_temp_name`] says), logged at INFO.
pub fn remove_leftover_temps(data_dir: &Path) -> Result<usize, store::StoreError> {
    let removed = store::remove_leftover_temps(&state_dirs(data_dir))?;
    if removed > 0 {
        log::info!("removed {removed} temp files left by interrupted state writes");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_notify_after_the_generation_was_read_wakes_the_waiter() {
        let c = Arc::new(IndexCounter::default());
        let g = c.generation();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            c2.wait_for_change(g, Instant::now() + Duration::from_secs(10))
        });
        c.next();
        c.notify();
        assert!(t.join().unwrap());
        assert!(!c.wait_for_change(c.generation(), Instant::now() + Duration::from_millis(20)));
    }

    #[test]
    fn a_reserved_index_is_published_only_by_notify() {
        let c = IndexCounter::default();
        c.observe(10);
        assert_eq!(c.current(), 10);
        let failed = c.next();
        assert_eq!(failed, 11);
        assert_eq!(c.current(), 10, "a reserved index is not shown");
        let ok = c.next();
        c.notify();
        assert!(
            c.current() > ok,
            "notify publishes past every reserved index"
        );
    }

    #[test]
    fn close_wakes_every_waiter() {
        let c = Arc::new(IndexCounter::default());
        let g = c.generation();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            c2.wait_for_change(g, Instant::now() + Duration::from_secs(30));
            start.elapsed()
        });
        std::thread::yield_now();
        c.close();
        assert!(t.join().unwrap() < Duration::from_secs(30));
        assert!(c.is_closed());
    }
}
