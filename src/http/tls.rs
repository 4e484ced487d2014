//! HTTPS on a TCP listener: the [`TlsAcceptor`] a caller hands the server, and the TLS side of
//! an accepted connection (a rustls `ServerConnection` over the `TcpStream`), driven one socket
//! call at a time so every deadline of the plain connection still holds.
//!
//! The handshake runs on the connection thread under the first request's head deadline
//! (counted from accept); a client that connects and sends nothing, or trickles its handshake,
//! is cut when it passes. After it, each read is ONE `recv` (under the phase's
//! `SO_RCVTIMEO`) fed to rustls, so a request trickled in tiny TLS records is still bounded by
//! the phase deadline the caller re-checks between reads. Plain HTTP sent to the HTTPS port
//! gets Go's `400` answer (as Nomad's port gives) and is closed. A connection refused over a
//! connection cap is handshaken a step at a time on a non-blocking socket
//! ([`TlsSock::handshake_step`]) by the listener's refusal worker, then told 429 or 503.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rustls::{Connection, ServerConfig, ServerConnection};

use super::tls_stream::{flush, plaintext, process, TlsStream};
use super::wire::{ConnError, Phase};

/// Where a TLS listener gets the configuration for each new connection. The caller may swap
/// what it returns at any time (certificate rotation): connections already open keep theirs.
pub trait TlsAcceptor: Send + Sync + 'static {
    /// The server configuration the next accepted connection handshakes with.
    fn server_config(&self) -> Arc<ServerConfig>;
}

/// Bytes read from the socket at once during the handshake.
const HANDSHAKE_READ: usize = 4096;
/// What Go's HTTPS server answers to plain HTTP on its port (Nomad's does the same).
const PLAIN_HTTP_REPLY: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
/// Content type byte of a TLS handshake record: what every TLS client sends first.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// An accepted TLS connection (or a dialed one served as if accepted: the client end of a
/// tunnel). The rustls state sits behind a lock that only the connection's own thread takes
/// (the acceptor and shutdown touch only `tcp`), one socket call at a time: it is never
/// contended and never held across a wait for another thread. `None` once an upgrade
/// detached the session ([`TlsSock::detach`]): every later call fails.
pub(crate) struct TlsSock {
    pub(crate) tcp: TcpStream,
    conn: Mutex<Option<Connection>>,
}

/// What a call on a detached session answers.
fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS session was detached")
}

impl TlsSock {
    pub(crate) fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsSock> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsSock {
            tcp,
            conn: Mutex::new(Some(Connection::Server(conn))),
        })
    }

    /// A session handshaken elsewhere, to serve HTTP on.
    pub(crate) fn from_stream(stream: TlsStream) -> TlsSock {
        let (tcp, conn) = stream.into_parts();
        TlsSock {
            tcp,
            conn: Mutex::new(Some(conn)),
        }
    }

    /// Take the session away (an upgrade's handler owns the connection from here on): the
    /// session and a second handle on the socket. This `TlsSock` is dead afterwards.
    pub(crate) fn detach(&self) -> io::Result<TlsStream> {
        let tcp = self.tcp.try_clone()?;
        let conn = self.conn.lock().take().ok_or_else(detached)?;
        Ok(TlsStream::from_parts(tcp, conn))
    }

    /// Complete the handshake before `deadline`.
    pub(crate) fn handshake(&self, deadline: Instant) -> Result<(), ConnError> {
        let mut guard = self.conn.lock();
        let conn = guard.as_mut().ok_or_else(|| ConnError::Io(detached()))?;
        let mut buf = [0u8; HANDSHAKE_READ];
        let mut first = true;
        while conn.is_handshaking() {
            flush(conn, &self.tcp).map_err(ConnError::Io)?;
            if !conn.is_handshaking() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConnError::Timeout {
                    phase: Phase::Handshake,
                    partial: !first,
                });
            }
            self.tcp
                .set_read_timeout(Some(deadline - now))
                .map_err(ConnError::Io)?;
            let n = match (&self.tcp).read(&mut buf) {
                Ok(0) => return Err(ConnError::Closed { partial: !first }),
                Ok(n) => n,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut => continue,
                    _ => return Err(ConnError::Io(e)),
                },
            };
            if first && looks_like_plain_http(&buf[..n]) {
                let _ = (&self.tcp).write_all(PLAIN_HTTP_REPLY);
                return Err(ConnError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "plain HTTP sent to the HTTPS port",
                )));
            }
            first = false;
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                conn.read_tls(&mut rest).map_err(ConnError::Io)?;
                process(conn, &self.tcp).map_err(ConnError::Io)?;
            }
        }
        flush(conn, &self.tcp).map_err(ConnError::Io)
    }

    /// Drive the handshake as far as the socket (non-blocking) allows without waiting: `true`
    /// once it is complete, `false` when it needs more from the peer. A peer that closes or
    /// sends what is not TLS is an error.
    pub(crate) fn handshake_step(&self) -> io::Result<bool> {
        let mut guard = self.conn.lock();
        let conn = guard.as_mut().ok_or_else(detached)?;
        loop {
            flush(conn, &self.tcp)?;
            if !conn.is_handshaking() {
                return Ok(true);
            }
            match conn.read_tls(&mut &self.tcp) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => process(conn, &self.tcp)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Decrypted bytes: what rustls holds already, else ONE socket read fed to it.
    /// `Interrupted` means "no plaintext yet, try again" (the caller re-checks its deadline).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut guard = self.conn.lock();
        let conn = guard.as_mut().ok_or_else(detached)?;
        if let Some(r) = plaintext(conn, buf) {
            return r;
        }
        if conn.read_tls(&mut &self.tcp)? == 0 {
            // The peer closed the TCP connection (with or without close_notify).
            return Ok(0);
        }
        process(conn, &self.tcp)?;
        match plaintext(conn, buf) {
            Some(r) => r,
            None => Err(io::ErrorKind::Interrupted.into()),
        }
    }

    /// Encrypt `buf` and send it all (each socket write under `SO_SNDTIMEO`).
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut guard = self.conn.lock();
        let conn = guard.as_mut().ok_or_else(detached)?;
        let n = conn.writer().write(buf)?;
        flush(conn, &self.tcp)?;
        Ok(n)
    }

    /// Tell the peer we are done (close_notify), without waiting for room to send it.
    pub(crate) fn close_notify(&self) {
        let mut guard = self.conn.lock();
        let Some(conn) = guard.as_mut() else {
            return;
        };
        if conn.is_handshaking() {
            return;
        }
        conn.send_close_notify();
        if self.tcp.set_nonblocking(true).is_ok() {
            let _ = flush(conn, &self.tcp);
            let _ = self.tcp.set_nonblocking(false);
        }
    }
}

/// Plain HTTP starts with an upper-case method; a TLS client's first byte is a handshake
/// record type.
fn looks_like_plain_http(first: &[u8]) -> bool {
    first.first().is_some_and(|b| *b != TLS_HANDSHAKE_RECORD)
        && first.len() >= 3
        && first.iter().take(3).all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::looks_like_plain_http;

    #[test]
    fn plain_http_is_told_from_a_client_hello() {
        assert!(looks_like_plain_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_plain_http(b"POST"));
        assert!(!looks_like_plain_http(b"GE"));
        assert!(!looks_like_plain_http(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_plain_http(b""));
    }
}
