//! A byte stream (TCP, Unix, or TLS over TCP) owned outright: what an upgraded connection
//! becomes once its handler detaches it from the connection thread, and what an outbound
//! request is sent on. Timeouts, non-blocking mode, shutdown and polling act on the socket
//! (under any TLS); reads and writes go through the session. A TLS read may answer
//! `Interrupted` (a record with no plaintext in it: read again) — see [`super::tls_stream`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::tls_stream::TlsStream;

/// An owned, connected stream socket, plain or TLS.
#[derive(Debug)]
pub enum RawStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl RawStream {
    /// SO_RCVTIMEO; `None` blocks without limit, a zero duration is raised to 1 ms.
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        let d = d.map(|d| d.max(Duration::from_millis(1)));
        match self {
            RawStream::Tcp(s) => s.set_read_timeout(d),
            RawStream::Unix(s) => s.set_read_timeout(d),
            RawStream::Tls(t) => t.tcp().set_read_timeout(d),
        }
    }

    /// SO_SNDTIMEO; a zero duration is raised to 1 ms.
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        let d = d.map(|d| d.max(Duration::from_millis(1)));
        match self {
            RawStream::Tcp(s) => s.set_write_timeout(d),
            RawStream::Unix(s) => s.set_write_timeout(d),
            RawStream::Tls(t) => t.tcp().set_write_timeout(d),
        }
    }

    /// O_NONBLOCK on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            RawStream::Tcp(s) => s.set_nonblocking(on),
            RawStream::Unix(s) => s.set_nonblocking(on),
            RawStream::Tls(t) => t.tcp().set_nonblocking(on),
        }
    }

    /// shutdown(2); errors (already closed) do not matter to any caller.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            RawStream::Tcp(s) => s.shutdown(how),
            RawStream::Unix(s) => s.shutdown(how),
            RawStream::Tls(t) => t.tcp().shutdown(how),
        };
    }

    /// A second handle on the same socket (dup). A TLS session has one owner: `Unsupported`.
    pub fn try_clone(&self) -> io::Result<RawStream> {
        Ok(match self {
            RawStream::Tcp(s) => RawStream::Tcp(s.try_clone()?),
            RawStream::Unix(s) => RawStream::Unix(s.try_clone()?),
            RawStream::Tls(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a TLS session cannot be cloned",
                ))
            }
        })
    }

    /// Whether bytes the peer sent are held in this process already (TLS plaintext, or its
    /// close_notify, that rustls read from the socket): polling the fd would not show them.
    /// Always false for a plain socket.
    pub fn has_buffered(&mut self) -> bool {
        match self {
            RawStream::Tls(t) => t.has_buffered(),
            _ => false,
        }
    }

    /// Whether the peer closed its side, failed, or sent something, without waiting and
    /// without consuming it. An idle stream whose peer says nothing is "quiet".
    pub fn is_quiet(&mut self) -> bool {
        if self.has_buffered() {
            return false;
        }
        let mut pfd = libc_pollfd(self.as_fd());
        matches!(crate::sys::poll::poll_one(&mut pfd, 0), Ok(0))
    }
}

/// A pollfd waiting for input (and, always, hang-up and errors) on `fd`.
fn libc_pollfd(fd: BorrowedFd<'_>) -> libc::pollfd {
    use std::os::fd::AsRawFd;
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    }
}

impl AsFd for RawStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            RawStream::Tcp(s) => s.as_fd(),
            RawStream::Unix(s) => s.as_fd(),
            RawStream::Tls(t) => t.tcp().as_fd(),
        }
    }
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.read(buf),
            RawStream::Unix(s) => s.read(buf),
            RawStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write(buf),
            RawStream::Unix(s) => s.write(buf),
            RawStream::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            RawStream::Tls(t) => t.flush(),
            _ => Ok(()),
        }
    }
}

impl From<TcpStream> for RawStream {
    fn from(s: TcpStream) -> RawStream {
        RawStream::Tcp(s)
    }
}

impl From<TlsStream> for RawStream {
    fn from(s: TlsStream) -> RawStream {
        RawStream::Tls(Box::new(s))
    }
}

impl From<UnixStream> for RawStream {
    fn from(s: UnixStream) -> RawStream {
        RawStream::Unix(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_until_the_peer_speaks_or_closes() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = RawStream::from(a);
        assert!(a.is_quiet());
        (&b).write_all(b"x").unwrap();
        assert!(!a.is_quiet());
        let (c, d) = UnixStream::pair().unwrap();
        let mut c = RawStream::from(c);
        drop(d);
        assert!(!c.is_quiet());
    }
}
