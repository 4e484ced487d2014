//! The one shared inotify watcher; followers subscribe to the directories they care about.
//!
//! The kernel allows 128 inotify instances per user by default, so a watcher per follower
//! fails at the 129th. Instead the agent owns one `notify` watcher; each follower holds a
//! [`Subscription`] for a directory and is woken over a crossbeam channel when anything in
//! that directory changes. The directory is watched while it has at least one subscriber;
//! dropping the last subscription removes the watch. Events are only wake-up hints:
//! followers re-check their files themselves (and poll slowly when no watch could be set).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, INotifyWatcher, RecursiveMode, Watcher};
use parking_lot::{Mutex, RwLock};

/// How long `shutdown` waits for notify's event thread to end.
pub const WATCHER_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `shutdown` looks whether it has.
const WATCHER_STOP_POLL: Duration = Duration::from_millis(5);

/// Subscribers by watched directory. The event thread reads it; (un)subscribing writes it.
type SubMap = HashMap<PathBuf, Vec<(u64, Sender<()>)>>;

/// The agent's single file watcher.
#[derive(Default)]
pub struct SharedWatcher {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Taken only for map operations, never across a call into the watcher: notify's event
    /// thread takes it to fan events out, while `watch()` waits on that same thread.
    subs: Arc<RwLock<SubMap>>,
    /// Serialises watch/unwatch calls; holds the watcher (created on first use).
    watcher: Mutex<WatchState>,
    next_id: AtomicU64,
    stopped: AtomicBool,
}

#[derive(Default)]
struct WatchState {
    watcher: Option<INotifyWatcher>,
    /// Alive while notify's event thread holds our handler: the thread drops it as it ends,
    /// which is how `shutdown` knows the thread is gone (notify offers no join handle).
    loop_token: Option<Weak<()>>,
    /// Directories with a kernel watch in place.
    watched: HashSet<PathBuf>,
}

impl std::fmt::Debug for SharedWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWatcher")
            .field("dirs", &self.inner.subs.read().len())
            .finish()
    }
}

/// Interest in one directory; wakes arrive on `rx`. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    dir: PathBuf,
    /// Whether the kernel watch is in place (otherwise the follower must poll).
    pub watched: bool,
    pub rx: Receiver<()>,
    inner: Arc<Inner>,
}

/// Whether an event can mean new content, a new file or a file gone. notify watches with
/// `IN_OPEN` in its mask, so a follower's own listing of the directory (and every open of a
/// log file) is reported too: waking on those made each follower wake itself at once, forever.
fn may_change_content(event: &Event) -> bool {
    !matches!(
        event.kind,
        EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Read | AccessMode::Execute))
    )
}

fn fan_out(subs: &RwLock<SubMap>, event: &Event) {
    if !may_change_content(event) {
        return;
    }
    let map = subs.read();
    for path in &event.paths {
        let keys = [Some(path.as_path()), path.parent()];
        for key in keys.into_iter().flatten() {
            if let Some(list) = map.get(key) {
                for (_, tx) in list {
                    // A full channel already holds a pending wake-up: nothing is lost.
                    let _ = tx.try_send(());
                }
            }
        }
    }
}

impl SharedWatcher {
    pub fn new() -> SharedWatcher {
        SharedWatcher::default()
    }

    /// Subscribe to changes in `dir` (a directory's host path).
    pub fn subscribe(&self, dir: &Path) -> Subscription {
        let (tx, rx) = bounded(1);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut watched = false;
        if !self.inner.stopped.load(Ordering::SeqCst) {
            let mut guard = self.inner.watcher.lock();
            self.inner
                .subs
                .write()
                .entry(dir.to_path_buf())
                .or_default()
                .push((id, tx));
            if guard.watcher.is_none() {
                let subs = self.inner.subs.clone();
                let token = Arc::new(());
                let held = token.clone();
                let handler = move |res: notify::Result<Event>| {
                    let _alive = &held;
                    if let Ok(ev) = res {
                        fan_out(&subs, &ev);
                    }
                };
                match INotifyWatcher::new(handler, notify::Config::default()) {
                    Ok(w) => {
                        guard.watcher = Some(w);
                        guard.loop_token = Some(Arc::downgrade(&token));
                    }
                    Err(e) => log::warn!("fs watcher unavailable, followers poll instead: {e}"),
                }
            }
            let state = &mut *guard;
            if state.watched.contains(dir) {
                watched = true;
            } else if let Some(w) = state.watcher.as_mut() {
                match w.watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        state.watched.insert(dir.to_path_buf());
                        watched = true;
                    }
                    Err(e) => log::debug!("cannot watch {}: {e}", dir.display()),
                }
            }
        }
        Subscription {
            id,
            dir: dir.to_path_buf(),
            watched,
            rx,
            inner: self.inner.clone(),
        }
    }

    /// How many directories have subscribers right now.
    #[cfg(test)]
    pub fn watched_dirs(&self) -> usize {
        self.inner.subs.read().len()
    }

    /// Stop the watcher thread. Later subscriptions poll instead.
    pub fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let (watcher, token) = {
            let mut state = self.inner.watcher.lock();
            state.watched.clear();
            (state.watcher.take(), state.loop_token.take())
        };
        // Dropping the watcher tells notify's event thread to end and close the inotify fd;
        // then wait (bounded) until the thread has let go of our handler.
        drop(watcher);
        let Some(token) = token else { return };
        let deadline = Instant::now() + WATCHER_STOP_TIMEOUT;
        while token.upgrade().is_some() {
            if Instant::now() > deadline {
                log::warn!("fs watcher thread did not stop within {WATCHER_STOP_TIMEOUT:?}");
                return;
            }
            std::thread::sleep(WATCHER_STOP_POLL);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut guard = self.inner.watcher.lock();
        let last = {
            let mut map = self.inner.subs.write();
            match map.get_mut(&self.dir) {
                Some(list) => {
                    list.retain(|(id, _)| *id != self.id);
                    if list.is_empty() {
                        map.remove(&self.dir);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last && guard.watched.remove(&self.dir) {
            if let Some(w) = guard.watcher.as_mut() {
                // The directory may be gone already (the kernel dropped the watch).
                let _ = w.unwatch(&self.dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fans_out_and_unwatches_on_last_drop() {
        let dir = std::env::temp_dir().join(format!("nomadlet-watch-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = SharedWatcher::new();
        let a = w.subscribe(&dir);
        let b = w.subscribe(&dir);
        assert!(a.watched && b.watched);
        std::fs::write(dir.join("f"), b"x").unwrap();
        a.rx.recv_timeout(Duration::from_secs(5)).unwrap();
        b.rx.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(a);
        assert_eq!(w.watched_dirs(), 1);
        drop(b);
        assert_eq!(w.watched_dirs(), 0);
        let c = w.subscribe(&dir);
        std::fs::write(dir.join("g"), b"y").unwrap();
        c.rx.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(c);
        let token = w.inner.watcher.lock().loop_token.clone().unwrap();
        w.shutdown();
        assert!(
            token.upgrade().is_none(),
            "notify's thread is gone after shutdown"
        );
        let d = w.subscribe(&dir);
        assert!(!d.watched);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn opening_or_listing_the_dir_does_not_wake_but_a_write_does() {
        let dir = std::env::temp_dir().join(format!("nomadlet-watch-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let w = SharedWatcher::new();
        let a = w.subscribe(&dir);
        assert!(a.watched);
        // What a follower does on every pass: list the dir, open and read a file. Nothing was
        // written since the subscription, so any wake now came from these.
        for _ in 0..3 {
            let _ = std::fs::read_dir(&dir).unwrap().count();
            let _ = std::fs::read(dir.join("f")).unwrap();
        }
        assert!(
            a.rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a listing or a read woke the subscriber"
        );
        // A write does wake.
        std::fs::write(dir.join("g"), b"y").unwrap();
        a.rx.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(a);
        w.shutdown();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
