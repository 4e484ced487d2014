//! The system layer: the only home of new `unsafe` code. `cgroup` puts each task in its own
//! control group (create, limit, kill, sample, remove); `child` is the code that runs in a
//! forked task process before `exec` (join the cgroup, new session, clean signals, user);
//! `poll` waits on several fds from one thread; `signal` waits for a signal with a deadline.

pub mod cgroup;
pub mod child;
pub mod poll;
pub mod signal;
