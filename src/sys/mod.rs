//! The system layer: the only module with `unsafe` code (`#![deny(unsafe_code)]` holds
//! everywhere else; tests/tidy.rs checks the text). Each module offers safe functions; system
//! calls go through rustix where it covers them, raw libc only where it does not (each such
//! module says why), and every `unsafe` block carries a `// SAFETY:` comment.
//!
//! `fd`: open relative to a dir fd, `fstat`, `lstat`, `readlinkat`, mkdir/chmod/chown/unlink,
//! directory listings, `statvfs` (what `fs::safe_path` and `client::dirfd` sit on); `user`:
//! effective uid, user lookup; `process`: `kill` to a process or group, page size, clock
//! ticks; `socket`: listen, `SO_RCVTIMEO`, shutdown, peek; `poll`: one or several fds;
//! `signal`: block a set, wait with a deadline; `tz`: the local UTC offset; `cgroup`: each
//! task's control group (create, limit, kill, sample, remove); `child`: what a forked task
//! does before `exec`; `shim`: what the per-task shim needs (session, FIFO, pidfd, kill);
//! `malloc`: the allocator's arena cap; `mem`: trimming resident code and
//! stack pages; `host`: uname, statvfs and network interfaces for `/v1/agent/host`. Plus the
//! open-files limit and a zero-wait readability check.

pub mod cgroup;
pub mod child;
pub mod fd;
pub mod host;
pub mod malloc;
pub mod mem;
pub mod poll;
pub mod process;
pub mod shim;
pub mod signal;
pub mod socket;
pub mod tz;
pub mod user;

use std::os::fd::RawFd;

/// The soft `RLIMIT_NOFILE` of this process; `None` when it is unlimited or unknown.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether `fd` is readable right now (for a listening socket: a connection is pending),
/// without waiting. Errors count as not readable; an fd that is not open reports POLLNVAL,
/// which is not POLLIN.
pub fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    poll::poll_one(&mut pfd, 0).is_ok_and(|n| n > 0) && pfd.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_pending_connection_makes_a_listener_readable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(!readable_now(l.as_raw_fd()));
        let addr = l.local_addr().expect("addr");
        let _c = std::net::TcpStream::connect(addr).expect("connect");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !readable_now(l.as_raw_fd()) {
            assert!(std::time::Instant::now() < deadline, "never readable");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(open_files_limit().is_none_or(|n| n > 3));
    }
}
