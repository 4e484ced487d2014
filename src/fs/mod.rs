//! Reading an allocation's files safely: path resolution that never escapes the alloc dir,
//! the one shared inotify watcher, followers and stream frames.

pub mod filemode;
pub mod follow;
pub mod frames;
pub mod localtime;
pub mod logs;
pub mod safe_path;
pub mod sniff;
pub mod watch;
