//! The one shared inotify watcher; followers subscribe to the paths they care about.

/// The agent's single file watcher.
#[derive(Debug, Default)]
pub struct SharedWatcher {}

impl SharedWatcher {
    pub fn new() -> SharedWatcher {
        SharedWatcher {}
    }

    /// Stop the watcher thread and join it.
    pub fn shutdown(&self) {}
}
