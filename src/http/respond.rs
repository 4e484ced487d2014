//! Writing a response: status line, `Date`, sanitised handler headers, framing, and the body
//! (bytes, a file range in bounded pieces, or a stream driven through a [`StreamSink`]).

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::limits::FILE_CHUNK;
use super::reply::{Body, Reply, StreamSink};
use super::wire::Sock;

/// The reason phrase for a status code.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// RFC 7231 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn http_date(t: SystemTime) -> String {
    crate::time::imf_fixdate(t)
}

/// A header name as written: token characters only, else the header is dropped.
fn clean_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(name)
}

/// A header value as written: CR, LF, NUL (and other controls but tab) are stripped.
fn clean_value(value: &str) -> String {
    value
        .chars()
        .filter(|&c| c == '\t' || !(c.is_control()))
        .collect::<String>()
        .trim()
        .to_string()
}

/// Headers the writer sets itself; a handler's copies are dropped.
fn is_framing(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "date",
        "server",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// How a reply is to be framed on this connection.
pub(crate) struct Plan {
    /// HTTP/1.1 peer (chunked streams); else HTTP/1.0 (close-delimited streams).
    pub http11: bool,
    /// The request was HEAD: headers only.
    pub head_only: bool,
    /// The connection stays open after this reply (if the body allows it).
    pub keep_alive: bool,
}

/// The plain-text error replies the layer writes itself.
pub(crate) fn error_reply(status: u16, text: &str) -> Reply {
    Reply::bytes(
        status,
        "text/plain; charset=utf-8",
        text.as_bytes().to_vec(),
    )
}

/// Write `reply`; returns whether the connection may carry another request.
pub(crate) fn write_reply(
    sock: &Sock,
    reply: Reply,
    plan: &Plan,
    stopping: &AtomicBool,
) -> io::Result<bool> {
    let no_body_status =
        (100..200).contains(&reply.status) || reply.status == 204 || reply.status == 304;
    let mut keep = plan.keep_alive;
    let mut head = Vec::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n",
        reply.status,
        reason(reply.status)
    );
    let _ = write!(head, "Date: {}\r\n", http_date(SystemTime::now()));
    for (name, value) in &reply.headers {
        let Some(name) = clean_name(name) else {
            continue;
        };
        if is_framing(name) {
            continue;
        }
        let _ = write!(head, "{name}: {}\r\n", clean_value(value));
    }
    let is_stream = matches!(reply.body, Body::Stream(_));
    if is_stream {
        keep = false;
        if plan.http11 && !no_body_status {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
    } else if !no_body_status {
        let len = match &reply.body {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
            Body::Stream(_) => 0,
        };
        let _ = write!(head, "Content-Length: {len}\r\n");
    }
    if !keep {
        head.extend_from_slice(b"Connection: close\r\n");
    } else if !plan.http11 {
        head.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");

    let skip_body = plan.head_only || no_body_status;
    match reply.body {
        Body::Empty => (&*sock).write_all(&head)?,
        Body::Bytes(b) => {
            if !skip_body && head.len() + b.len() <= FILE_CHUNK {
                head.extend_from_slice(&b);
                (&*sock).write_all(&head)?;
            } else {
                (&*sock).write_all(&head)?;
                if !skip_body {
                    (&*sock).write_all(&b)?;
                }
            }
        }
        Body::File { file, offset, len } => {
            (&*sock).write_all(&head)?;
            if !skip_body {
                copy_file(sock, &file, offset, len)?;
            }
        }
        Body::Stream(stream) => {
            (&*sock).write_all(&head)?;
            if !skip_body {
                let mut sink = Sink {
                    sock,
                    chunked: plan.http11,
                    stopping,
                    failed: false,
                };
                // The request's handling went deeper than a stream does: give those stack
                // pages back, as a follower may hold its thread for hours.
                let _ = crate::sys::mem::trim_stack();
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    stream.run(&mut sink)
                }));
                match run {
                    // The last chunk only for a stream that ended well, so a peer can tell a
                    // complete body from a cut one.
                    Ok(Ok(())) if !sink.failed && plan.http11 => {
                        (&*sock).write_all(b"0\r\n\r\n")?
                    }
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::debug!("http: stream body ended with an error: {e}"),
                    Err(_) => log::error!("http: a stream body panicked; closing the connection"),
                }
            }
        }
    }
    Ok(keep)
}

/// Copy `len` bytes of `file` from `offset` in [`FILE_CHUNK`] pieces. A file shorter than
/// promised fails the write (the connection then closes, so the peer sees a short body).
fn copy_file(sock: &Sock, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; FILE_CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(FILE_CHUNK as u64) as usize;
        let n = match file.read_at(&mut buf[..want], offset + done) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than its reply",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        (&*sock).write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// The connection as a stream body sees it.
struct Sink<'a> {
    sock: &'a Sock,
    chunked: bool,
    stopping: &'a AtomicBool,
    failed: bool,
}

impl StreamSink for Sink<'_> {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "client gone"));
        }
        if data.is_empty() {
            return Ok(());
        }
        let r = if self.chunked {
            let mut frame = Vec::with_capacity(data.len().min(FILE_CHUNK) + 24);
            let _ = write!(frame, "{:x}\r\n", data.len());
            if data.len() <= FILE_CHUNK {
                frame.extend_from_slice(data);
                frame.extend_from_slice(b"\r\n");
                (&*self.sock).write_all(&frame)
            } else {
                (&*self.sock)
                    .write_all(&frame)
                    .and_then(|_| (&*self.sock).write_all(data))
                    .and_then(|_| (&*self.sock).write_all(b"\r\n"))
            }
        } else {
            (&*self.sock).write_all(data)
        };
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn should_stop(&mut self, wait: Duration) -> bool {
        if self.failed || self.stopping.load(Ordering::SeqCst) {
            return true;
        }
        let gone = peer_gone(self.sock, wait);
        gone || self.stopping.load(Ordering::SeqCst)
    }
}

/// Whether the peer has closed (or the socket failed), waiting at most `wait` for it.
/// Pending request bytes do not count as activity to stop for.
pub(crate) fn peer_gone(sock: &Sock, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut events = libc::POLLIN | libc::POLLRDHUP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: sock.fd(),
            events,
            revents: 0,
        };
        let rc = match crate::sys::poll::poll_one(&mut pfd, ms) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == io::ErrorKind::Interrupted && !left.is_zero() {
                    continue;
                }
                return false;
            }
        };
        if rc == 0 {
            return false;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return true;
        }
        if pfd.revents & libc::POLLIN != 0 {
            let mut b = [0u8; 1];
            // MSG_PEEK leaves the data for the request reader.
            match crate::sys::socket::peek_nowait(sock.fd(), &mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) {
                        return true;
                    }
                }
            }
            // Data from a live client: keep waiting for a hang-up only, until the deadline.
            events = libc::POLLRDHUP;
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_fixdate() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(http_date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(http_date(t), "Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn header_sanitising() {
        assert_eq!(clean_value("a\r\nSet-Cookie: x\0"), "aSet-Cookie: x");
        assert_eq!(clean_name("X-Ok"), Some("X-Ok"));
        assert_eq!(clean_name("X\r\nEvil"), None);
        assert_eq!(clean_name("X: y"), None);
        assert_eq!(clean_name(""), None);
    }
}
