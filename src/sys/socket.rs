//! Socket calls std does not offer: `listen` again (to resize a backlog), `SO_RCVTIMEO` on a
//! listening socket, `shutdown` of a listening socket (wakes a blocked `accept`), and a
//! non-blocking one-byte peek. They take the raw fd of a socket the caller holds open.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use rustix::net::{RecvFlags, Shutdown};

/// Run `f` on `fd` borrowed for the call. `EBADF` for a negative fd.
fn with_fd<T>(fd: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> rustix::io::Result<T>) -> io::Result<T> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is not -1, and every caller passes the fd of a socket it owns and keeps
    // open across this call (`Sock`, `ListenSock`); the borrow does not outlive `f`.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(f(borrowed)?)
}

/// `listen(fd, backlog)`; on a socket already listening, Linux resizes its queue.
pub fn listen(fd: RawFd, backlog: i32) -> io::Result<()> {
    with_fd(fd, |s| rustix::net::listen(s, backlog))
}

/// `SO_RCVTIMEO`: a blocking receive (or `accept`) on `fd` returns after `timeout`.
pub fn set_recv_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    with_fd(fd, |s| {
        rustix::net::sockopt::set_socket_timeout(
            s,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )
    })
}

/// `shutdown(fd, SHUT_RDWR)`.
pub fn shutdown(fd: RawFd) -> io::Result<()> {
    with_fd(fd, |s| rustix::net::shutdown(s, Shutdown::Both))
}

/// `recv(fd, buf, MSG_PEEK | MSG_DONTWAIT)`: what is waiting, left in place; `Ok(0)` means the
/// peer closed its side, `WouldBlock` that nothing is waiting.
pub fn peek_nowait(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    with_fd(fd, |s| {
        rustix::net::recv(s, buf, RecvFlags::PEEK | RecvFlags::DONTWAIT).map(|(n, _)| n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn peek_listen_timeout_and_shutdown_on_real_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        listen(l.as_raw_fd(), 8).expect("listen again");
        set_recv_timeout(l.as_raw_fd(), Duration::from_millis(50)).expect("SO_RCVTIMEO");
        let t0 = std::time::Instant::now();
        let e = l.accept().expect_err("times out");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(t0.elapsed() >= Duration::from_millis(40));

        let mut c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
        let (s, _) = l.accept().expect("accept");
        let mut b = [0u8; 1];
        let e = peek_nowait(s.as_raw_fd(), &mut b).expect_err("nothing yet");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        c.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match peek_nowait(s.as_raw_fd(), &mut b) {
                Ok(1) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("{other:?}"),
            }
            assert!(std::time::Instant::now() < deadline, "byte never arrived");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            peek_nowait(s.as_raw_fd(), &mut b).unwrap(),
            1,
            "peek leaves it"
        );
        shutdown(l.as_raw_fd()).expect("shutdown listener");
        assert_eq!(
            peek_nowait(-1, &mut b).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
