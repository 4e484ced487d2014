//! `poll(2)` over a small set of fds: one thread waits on several pipes or sockets at once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// The fds one `poll(2)` call waits on, reused between calls so a wait allocates nothing.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    pub fn new() -> PollSet {
        PollSet::default()
    }

    /// Forget every fd.
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Wait for input on `fd` (at index `len()` before the call).
    pub fn push(&mut self, fd: BorrowedFd<'_>) {
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// Wait for input on a raw fd number the caller keeps open while it may be polled (an fd
    /// closed meanwhile yields `ready`, through POLLNVAL, never undefined behaviour).
    pub fn push_raw(&mut self, fd: std::os::fd::RawFd) {
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        });
    }

    /// Wait up to `timeout` (rounded up to whole milliseconds) until one of the fds is ready;
    /// returns how many are. `EINTR` comes back as an `Interrupted` error.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<usize> {
        for p in &mut self.fds {
            p.revents = 0;
        }
        let ms = timeout
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a valid, exclusively borrowed array of `len` pollfds; the kernel
        // writes only their `revents`. An fd closed meanwhile yields POLLNVAL, not UB.
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Whether fd `i` has input, or its other end closed, or it failed — in each case a read
    /// (or accept) will not block and tells which.
    pub fn ready(&self, i: usize) -> bool {
        self.fds.get(i).is_some_and(|p| {
            p.revents
                & (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL)
                != 0
        })
    }
}

/// `poll(2)` on one fd for up to `timeout_ms` (negative: no limit): how many fds are ready
/// (0 or 1); `pfd.revents` says what happened. `EINTR` comes back as an `Interrupted` error.
pub fn poll_one(pfd: &mut libc::pollfd, timeout_ms: libc::c_int) -> io::Result<usize> {
    pfd.revents = 0;
    // SAFETY: one valid, exclusively borrowed pollfd; the kernel writes only its `revents`. An
    // fd that is not open yields POLLNVAL, not UB.
    let rc = unsafe { libc::poll(pfd, 1, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_only_the_fd_with_input_and_times_out_when_none_has() {
        let (mut a, a_in) = UnixStream::pair().unwrap();
        let (_b, b_in) = UnixStream::pair().unwrap();
        let mut set = PollSet::new();
        set.push(a_in.as_fd());
        set.push(b_in.as_fd());
        assert_eq!(set.wait(Duration::from_millis(1)).unwrap(), 0);
        a.write_all(b"x").unwrap();
        assert_eq!(set.wait(Duration::from_secs(5)).unwrap(), 1);
        assert!(set.ready(0));
        assert!(!set.ready(1));
        assert!(!set.ready(2), "out of range is not ready");
        drop(a);
        set.clear();
        set.push(b_in.as_fd());
        assert_eq!(set.wait(Duration::ZERO).unwrap(), 0);
    }
}
