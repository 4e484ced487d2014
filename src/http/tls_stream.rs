//! A TLS session over a connected TCP socket, owned outright, client or server side: what an
//! outbound request to a TLS peer is sent on ([`TlsStream::connect`], the configuration
//! comes from the caller), what a TLS connection becomes when an upgrade detaches it from
//! its connection thread, and what a dialed stream on which the peer is the HTTP client is
//! served on. Knows nothing of who the peer is.
//!
//! Reads are ONE socket call each (under the socket's `SO_RCVTIMEO`) fed to rustls, as on an
//! accepted HTTPS connection: a read that brings a TLS record but no plaintext (a session
//! ticket, a partial record) answers `Interrupted`, so a caller re-checks its deadline between
//! records and a peer trickling records cannot hold one call forever. A peer that closes the
//! TCP connection without `close_notify` reads as end of stream. Bytes rustls already holds
//! do not make the socket readable: ask [`TlsStream::has_buffered`] before waiting on the fd.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection};

/// An owned TLS session and the TCP socket it runs over.
pub struct TlsStream {
    tcp: TcpStream,
    conn: Connection,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsStream({:?})", self.tcp.peer_addr().ok())
    }
}

impl TlsStream {
    /// The client side of a TLS session on `tcp` (connected), presenting and verifying
    /// `server_name` as `config` says, handshaken before `deadline`: a peer that fails
    /// verification is an error here (with TLS 1.3 a peer refusing OUR certificate says so
    /// only on the first read). The socket is returned with no read or write timeout.
    pub fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
        deadline: Instant,
    ) -> io::Result<TlsStream> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{server_name:?} is not a valid TLS server name"),
            )
        })?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut conn = Connection::Client(conn);
        while conn.is_handshaking() {
            let wait = left(deadline)?;
            if conn.wants_write() {
                tcp.set_write_timeout(Some(wait))?;
                conn.write_tls(&mut &tcp)?;
                continue;
            }
            tcp.set_read_timeout(Some(wait))?;
            match conn.read_tls(&mut &tcp) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    ))
                }
                Ok(_) => process(&mut conn, &tcp)?,
                Err(e) if retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
        flush(&mut conn, &tcp)?;
        tcp.set_read_timeout(None)?;
        tcp.set_write_timeout(None)?;
        Ok(TlsStream { tcp, conn })
    }

    /// A session someone else handshook (an accepted connection detached by an upgrade).
    pub(crate) fn from_parts(tcp: TcpStream, conn: Connection) -> TlsStream {
        TlsStream { tcp, conn }
    }

    /// The socket and the session, taken apart (to serve HTTP on them).
    pub(crate) fn into_parts(self) -> (TcpStream, Connection) {
        (self.tcp, self.conn)
    }

    /// The TCP socket underneath (timeouts, polling, shutdown act on it).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether rustls holds what the peer sent and nobody read yet (plaintext, or its
    /// close_notify): the socket will not become readable for it. A session that failed is
    /// "buffered" too (the next read reports the failure).
    pub fn has_buffered(&mut self) -> bool {
        match self.conn.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }

    /// Tell the peer we are done (close_notify), without waiting for room to send it.
    pub fn close_notify(&mut self) {
        if self.conn.is_handshaking() {
            return;
        }
        self.conn.send_close_notify();
        if self.tcp.set_nonblocking(true).is_ok() {
            let _ = flush(&mut self.conn, &self.tcp);
            let _ = self.tcp.set_nonblocking(false);
        }
    }
}

impl Read for TlsStream {
    /// Plaintext rustls holds, else ONE socket read fed to it: `Interrupted` when that read
    /// brought no plaintext yet (the caller re-checks its deadline and reads again).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(r) = plaintext(&mut self.conn, buf) {
            return r;
        }
        // A request may wait on an answer we still owe the peer (a key update, an alert).
        flush(&mut self.conn, &self.tcp)?;
        if self.conn.read_tls(&mut &self.tcp)? == 0 {
            // The peer closed the TCP connection (with or without close_notify).
            return Ok(0);
        }
        process(&mut self.conn, &self.tcp)?;
        match plaintext(&mut self.conn, buf) {
            Some(r) => r,
            None => Err(io::ErrorKind::Interrupted.into()),
        }
    }
}

impl Write for TlsStream {
    /// Encrypt `buf` (as much as rustls buffers) and send every record (each socket write
    /// under `SO_SNDTIMEO`).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        flush(&mut self.conn, &self.tcp)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        flush(&mut self.conn, &self.tcp)
    }
}

/// Time left until `deadline`, or `TimedOut` once it passed.
fn left(deadline: Instant) -> io::Result<std::time::Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))
}

/// A socket call that only says "not yet" (a timeout slice, a signal).
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// `Some` when the reader has an answer without reading the socket: bytes, or end of stream.
pub(crate) fn plaintext(conn: &mut Connection, buf: &mut [u8]) -> Option<io::Result<usize>> {
    match conn.reader().read(buf) {
        Ok(n) => Some(Ok(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        // The peer closed without close_notify: for an HTTP reader, that is end of stream.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
        Err(e) => Some(Err(e)),
    }
}

/// Process what was read; on a TLS error send the alert rustls queued, then fail.
pub(crate) fn process(conn: &mut Connection, tcp: &TcpStream) -> io::Result<()> {
    match conn.process_new_packets() {
        Ok(_) => flush(conn, tcp),
        Err(e) => {
            let _ = flush(conn, tcp);
            Err(io::Error::new(io::ErrorKind::InvalidData, e))
        }
    }
}

/// Send every TLS record rustls has queued.
pub(crate) fn flush(conn: &mut Connection, tcp: &TcpStream) -> io::Result<()> {
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
