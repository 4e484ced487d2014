//! Protocol upgrades (`101 Switching Protocols`): the connection thread writes the 101 head a
//! handler asked for, then hands the raw connection to the handler, which owns it until it
//! returns; the connection closes after. Knows nothing of what protocol follows.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::reply::{Body, Reply};
use super::respond::{clean_name, clean_value};
use super::stream::RawStream;
use super::wire::Sock;

/// A handler's side of an upgraded connection: it runs on the connection thread.
pub trait Upgrade: Send {
    /// Speak the new protocol on `conn` until done, the peer goes away or
    /// [`Upgraded::stopping`] says the server stops.
    fn run(self: Box<Self>, conn: Upgraded<'_>);
}

/// The raw connection after the 101 head: bytes the client sent ahead of it first, then the
/// socket. Reads and writes honour the timeouts set here.
pub struct Upgraded<'a> {
    sock: &'a Sock,
    ahead: Vec<u8>,
    stopping: &'a AtomicBool,
}

impl Upgraded<'_> {
    /// The socket's fd, to wait on with `poll(2)`. Check [`Upgraded::has_buffered`] first:
    /// bytes already read ahead do not make the fd readable.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether bytes the client sent with its upgrade request are still unread.
    pub fn has_buffered(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// How long one read may block before it fails with `WouldBlock`.
    pub fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(d)
    }

    /// How long one write may stall before it fails.
    pub fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        self.sock.set_write_timeout(d)
    }

    /// Whether the client has closed its side (or the connection failed), without waiting
    /// and without consuming what it sent.
    pub fn peer_gone(&self) -> bool {
        super::respond::peer_gone(self.sock, Duration::ZERO)
    }

    /// True once the server is shutting down: the handler should finish.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Take the connection away from its connection thread: an owned handle on the same
    /// socket (a dup, blocking, no timeouts) and the bytes the client sent ahead. When the
    /// handler returns, the thread closes only its own fd, so the socket stays open for as
    /// long as the returned stream lives, with no thread behind it. A TLS connection takes
    /// its session along (plaintext rustls already holds stays readable from the stream:
    /// see [`RawStream::has_buffered`]).
    pub fn detach(self) -> io::Result<(RawStream, Vec<u8>)> {
        let stream = match self.sock {
            Sock::Tcp(s) => RawStream::Tcp(s.try_clone()?),
            Sock::Unix(s) => RawStream::Unix(s.try_clone()?),
            Sock::Tls(t) => RawStream::from(t.detach()?),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok((stream, self.ahead))
    }
}

impl Read for Upgraded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.ahead.is_empty() {
            let n = buf.len().min(self.ahead.len());
            buf[..n].copy_from_slice(&self.ahead[..n]);
            self.ahead.drain(..n);
            return Ok(n);
        }
        (&*self.sock).read(buf)
    }
}

impl Write for Upgraded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.sock).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for Upgraded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upgraded(fd {})", self.sock.fd())
    }
}

impl Reply {
    /// A `101 Switching Protocols` reply: `headers` (e.g. `Upgrade`,
    /// `Sec-WebSocket-Accept`) follow `Connection: Upgrade`; then `upgrade` owns the
    /// connection.
    pub fn upgrade(headers: Vec<(String, String)>, upgrade: Box<dyn Upgrade>) -> Reply {
        Reply {
            status: super::Status::SWITCHING_PROTOCOLS,
            headers,
            body: Body::Upgrade(upgrade),
        }
    }
}

/// Write the 101 head of `reply` (whose body is `Body::Upgrade`) and run the upgrade with
/// what the client sent ahead in `ahead`.
pub(crate) fn switch(
    sock: &Sock,
    reply: Reply,
    ahead: Vec<u8>,
    stopping: &AtomicBool,
) -> io::Result<()> {
    let Body::Upgrade(upgrade) = reply.body else {
        return Err(io::Error::other("not an upgrade reply"));
    };
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n");
    for (name, value) in &reply.headers {
        let Some(name) = clean_name(name) else {
            continue;
        };
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        head.extend_from_slice(format!("{name}: {}\r\n", clean_value(value)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    (&*sock).write_all(&head)?;
    let conn = Upgraded {
        sock,
        ahead,
        stopping,
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| upgrade.run(conn)));
    if run.is_err() {
        log::error!("http: an upgraded connection's handler panicked");
    }
    Ok(())
}
