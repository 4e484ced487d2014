//! Reading an allocation's files safely: path resolution that never escapes the alloc dir,
//! the one shared inotify watcher, followers and stream frames.

pub mod watch;
