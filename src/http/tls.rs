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
use rustls::{ServerConfig, ServerConnection};

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

/// An accepted TLS connection. The rustls state sits behind a lock that only the
/// connection's own thread takes (the acceptor and shutdown touch only `tcp`), one socket
/// call at a time: it is never contended and never held across a wait for another thread.
pub(crate) struct TlsSock {
    pub(crate) tcp: TcpStream,
    conn: Mutex<ServerConnection>,
}

impl TlsSock {
    pub(crate) fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsSock> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsSock {
            tcp,
            conn: Mutex::new(conn),
        })
    }

    /// Complete the handshake before `deadline`.
    pub(crate) fn handshake(&self, deadline: Instant) -> Result<(), ConnError> {
        let mut conn = self.conn.lock();
        let mut buf = [0u8; HANDSHAKE_READ];
        let mut first = true;
        while conn.is_handshaking() {
            flush(&mut conn, &self.tcp).map_err(ConnError::Io)?;
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
                process(&mut conn, &self.tcp).map_err(ConnError::Io)?;
            }
        }
        flush(&mut conn, &self.tcp).map_err(ConnError::Io)
    }

    /// Drive the handshake as far as the socket (non-blocking) allows without waiting: `true`
    /// once it is complete, `false` when it needs more from the peer. A peer that closes or
    /// sends what is not TLS is an error.
    pub(crate) fn handshake_step(&self) -> io::Result<bool> {
        let mut conn = self.conn.lock();
        loop {
            flush(&mut conn, &self.tcp)?;
            if !conn.is_handshaking() {
                return Ok(true);
            }
            match conn.read_tls(&mut &self.tcp) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => process(&mut conn, &self.tcp)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Decrypted bytes: what rustls holds already, else ONE socket read fed to it.
    /// `Interrupted` means "no plaintext yet, try again" (the caller re-checks its deadline).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut conn = self.conn.lock();
        if let Some(r) = plaintext(&mut conn, buf) {
            return r;
        }
        if conn.read_tls(&mut &self.tcp)? == 0 {
            // The peer closed the TCP connection (with or without close_notify).
            return Ok(0);
        }
        process(&mut conn, &self.tcp)?;
        match plaintext(&mut conn, buf) {
            Some(r) => r,
            None => Err(io::ErrorKind::Interrupted.into()),
        }
    }

    /// Encrypt `buf` and send it all (each socket write under `SO_SNDTIMEO`).
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut conn = self.conn.lock();
        let n = conn.writer().write(buf)?;
        flush(&mut conn, &self.tcp)?;
        Ok(n)
    }

    /// Tell the peer we are done (close_notify), without waiting for room to send it.
    pub(crate) fn close_notify(&self) {
        let mut conn = self.conn.lock();
        if conn.is_handshaking() {
            return;
        }
        conn.send_close_notify();
        if self.tcp.set_nonblocking(true).is_ok() {
            let _ = flush(&mut conn, &self.tcp);
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

/// `Some` when the reader has an answer without reading the socket: bytes, or end of stream.
fn plaintext(conn: &mut ServerConnection, buf: &mut [u8]) -> Option<io::Result<usize>> {
    match conn.reader().read(buf) {
        Ok(n) => Some(Ok(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        // The peer closed without close_notify: for a request reader, that is end of stream.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
        Err(e) => Some(Err(e)),
    }
}

/// Process what was read; on a TLS error send the alert rustls queued, then fail.
fn process(conn: &mut ServerConnection, tcp: &TcpStream) -> io::Result<()> {
    match conn.process_new_packets() {
        Ok(_) => flush(conn, tcp),
        Err(e) => {
            let _ = flush(conn, tcp);
            Err(io::Error::new(io::ErrorKind::InvalidData, e))
        }
    }
}

/// Send every TLS record rustls has queued.
fn flush(conn: &mut ServerConnection, tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut &*tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
