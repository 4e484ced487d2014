//! The system layer: the only home of new `unsafe` code. `cgroup` puts each task in its own
//! control group (create, limit, kill, sample, remove); `child` is the code that runs in a
//! forked task process before `exec` (join the cgroup, new session, clean signals, user);
//! `poll` waits on several fds from one thread; `signal` waits for a signal with a deadline;
//! `shim` is what the per-task shim needs (session, FIFO, pidfd, kill);
//! `malloc` caps the allocator's arenas; `mem` trims resident code and stack pages; `host`
//! wraps `uname`, `statvfs` and `getifaddrs` for `/v1/agent/host`; and small safe wrappers
//! for the open-files limit and a zero-wait readability check.

pub mod cgroup;
pub mod child;
pub mod clock;
pub mod host;
pub mod malloc;
pub mod mem;
pub mod poll;
pub mod shim;
pub mod signal;

use std::os::fd::RawFd;

/// The soft `RLIMIT_NOFILE` of this process; `None` when it is unlimited or unknown.
pub fn open_files_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the plain struct we own and pass by pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(r.rlim_cur)
}

/// Whether `fd` is readable right now (for a listening socket: a connection is pending),
/// without waiting. Errors count as not readable.
pub fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack; a zero timeout never blocks. An fd that is not
    // open reports POLLNVAL, which is not POLLIN.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
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
