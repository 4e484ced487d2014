//! The socket of one connection (TCP or Unix) and its bounded read buffer, read under a
//! deadline that names the phase it belongs to.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::limits::READ_CHUNK;
use super::tls::TlsSock;

/// An accepted connection's socket.
pub(crate) enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// HTTPS: reads and writes go through rustls; timeouts, shutdown and polling act on the
    /// TCP socket underneath.
    Tls(Box<TlsSock>),
}

impl Sock {
    /// The socket's fd, borrowed (to wait on with `poll`).
    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
            Sock::Tls(t) => t.tcp.as_fd(),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tls(t) => t.tcp.as_raw_fd(),
        }
    }

    /// Complete a TLS handshake before `deadline` (nothing to do for a plain socket).
    pub(crate) fn handshake(&self, deadline: Instant) -> Result<(), ConnError> {
        match self {
            Sock::Tls(t) => t.handshake(deadline),
            _ => Ok(()),
        }
    }

    /// One non-blocking step of a TLS handshake (see [`TlsSock::handshake_step`]); a plain
    /// socket has none to do.
    pub(crate) fn handshake_step(&self) -> io::Result<bool> {
        match self {
            Sock::Tls(t) => t.handshake_step(),
            _ => Ok(true),
        }
    }

    /// Tell a TLS peer the connection ends (close_notify), without waiting; plain: nothing.
    pub(crate) fn close_notify(&self) {
        if let Sock::Tls(t) = self {
            t.close_notify();
        }
    }

    /// Read the socket itself, under any TLS: for draining what a closing peer still sends.
    pub(crate) fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(buf),
            Sock::Unix(s) => (&*s).read(buf),
            Sock::Tls(t) => (&t.tcp).read(buf),
        }
    }

    /// SO_RCVTIMEO; a zero duration is raised to 1 ms (zero would mean "forever").
    pub(crate) fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        let d = Some(d.max(Duration::from_millis(1)));
        match self {
            Sock::Tcp(s) => s.set_read_timeout(d),
            Sock::Unix(s) => s.set_read_timeout(d),
            Sock::Tls(t) => t.tcp.set_read_timeout(d),
        }
    }

    /// SO_SNDTIMEO: how long one write may stall.
    pub(crate) fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        let d = Some(d.max(Duration::from_millis(1)));
        match self {
            Sock::Tcp(s) => s.set_write_timeout(d),
            Sock::Unix(s) => s.set_write_timeout(d),
            Sock::Tls(t) => t.tcp.set_write_timeout(d),
        }
    }

    /// O_NONBLOCK on or off.
    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_nonblocking(on),
            Sock::Unix(s) => s.set_nonblocking(on),
            Sock::Tls(t) => t.tcp.set_nonblocking(on),
        }
    }

    /// shutdown(2); errors (already closed, not connected) do not matter to any caller.
    pub(crate) fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(how),
            Sock::Unix(s) => s.shutdown(how),
            Sock::Tls(t) => t.tcp.shutdown(how),
        };
    }
}

impl Read for &Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Sock::Tcp(s) => (&*s).read(buf),
            Sock::Unix(s) => (&*s).read(buf),
            Sock::Tls(t) => t.read(buf),
        }
    }
}

impl Write for &Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Sock::Tcp(s) => (&*s).write(buf),
            Sock::Unix(s) => (&*s).write(buf),
            Sock::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Which part of the exchange a deadline or failure belongs to (named in log lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A kept-alive connection waiting for the next request's first byte.
    Idle,
    /// The TLS handshake of an HTTPS connection (under the first request's head deadline).
    Handshake,
    /// The request line and header block.
    Head,
    /// The request body.
    Body,
    /// Writing the response.
    Write,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Idle => "keep-alive idle",
            Phase::Handshake => "TLS handshake",
            Phase::Head => "request head",
            Phase::Body => "request body",
            Phase::Write => "response write",
        })
    }
}

/// Why a connection stops being served.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The peer closed (or the server shut our read side); `partial` if mid-request.
    Closed { partial: bool },
    /// A phase deadline passed; `partial` if some of the request had arrived.
    Timeout { phase: Phase, partial: bool },
    /// The request is refused with this status and plain-text reason, then the connection
    /// closes.
    Refuse {
        status: super::Status,
        reason: &'static str,
    },
    /// Any other socket error.
    Io(io::Error),
}

impl ConnError {
    pub(crate) fn refuse(status: super::Status, reason: &'static str) -> ConnError {
        ConnError::Refuse { status, reason }
    }
}

/// A socket with its read buffer. Bytes are only read when the parser needs more, so the
/// buffer holds at most what the current phase allows plus one [`READ_CHUNK`].
pub(crate) struct Wire<'a> {
    pub(crate) sock: &'a Sock,
    pub(crate) buf: Vec<u8>,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(sock: &'a Sock) -> Wire<'a> {
        Wire {
            sock,
            buf: Vec::with_capacity(READ_CHUNK),
        }
    }

    /// Read once (at most [`READ_CHUNK`] bytes) before `deadline`; `Ok(0)` is end of stream.
    pub(crate) fn fill(&mut self, deadline: Instant, phase: Phase) -> Result<usize, ConnError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ConnError::Timeout {
                    phase,
                    partial: true,
                });
            }
            self.sock
                .set_read_timeout(deadline - now)
                .map_err(ConnError::Io)?;
            let old = self.buf.len();
            self.buf.resize(old + READ_CHUNK, 0);
            let r = (&*self.sock).read(&mut self.buf[old..]);
            match r {
                Ok(n) => {
                    self.buf.truncate(old + n);
                    return Ok(n);
                }
                Err(e) => {
                    self.buf.truncate(old);
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            if Instant::now() >= deadline {
                                return Err(ConnError::Timeout {
                                    phase,
                                    partial: true,
                                });
                            }
                        }
                        _ => return Err(ConnError::Io(e)),
                    }
                }
            }
        }
    }

    /// Drop the first `n` buffered bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
    }
}
