//! Freeing a replaced snapshot state off the write path. When a snapshot becomes durable
//! the state it replaces as "what the tables hold" is dropped, and after ~1 000 commands
//! over random keys most of its tree nodes are its own: freeing them walks the whole state
//! (20 ms at 6 000 jobs, more as the state grows). Done on the committer or the Raft
//! thread, every writer waited for it: the stalls of the register p99 on a grown state.
//! A short-lived `state-drop` thread at background priority frees it instead; the next
//! one joins it first, and so does the owner's drop, so no thread outlives its owner.

use std::sync::Arc;
use std::thread::JoinHandle;

/// Frees states on a thread of its own, one at a time.
#[derive(Default)]
pub struct Reaper {
    last: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Drop `value` on a `state-drop` thread (on this one when nothing else is left to
    /// free, or when no thread can be started).
    pub fn drop_later<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        // Someone else still holds it (the published state, an encoder): ours is a
        // decrement, and the last holder frees it.
        if Arc::strong_count(&value) > 1 {
            return;
        }
        // One snapshot's state at a time; the previous one is long done by now.
        self.join();
        let spawned = std::thread::Builder::new()
            .name("state-drop".into())
            .spawn(move || {
                crate::sys::process::background_thread();
                drop(value);
            });
        match spawned {
            Ok(h) => self.last = Some(h),
            // The closure, with the state, was dropped here.
            Err(e) => log::debug!("cannot start a thread to free a state: {e}"),
        }
    }

    /// Wait for the state being freed, if any.
    pub fn join(&mut self) {
        if let Some(h) = self.last.take() {
            if h.join().is_err() {
                log::error!("freeing a replaced state panicked");
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_value_handed_over_is_dropped_once_and_no_thread_outlives_the_reaper() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut r = Reaper::default();
        let shared = Arc::new(Counted(dropped.clone()));
        // Still held elsewhere: not dropped by the reaper.
        r.drop_later(shared.clone());
        for _ in 0..5 {
            r.drop_later(Arc::new(Counted(dropped.clone())));
        }
        drop(r);
        assert_eq!(dropped.load(Ordering::SeqCst), 5);
        drop(shared);
        assert_eq!(dropped.load(Ordering::SeqCst), 6);
    }
}
