//! Sending one request over a stream someone else connected, reading the reply head under a
//! deadline, and its body (Content-Length, chunked, or to close) — either whole, bounded, or
//! piped as it arrives into the reply this server writes (a proxy). One request per stream:
//! every request sent says `Connection: close`. Knows nothing of what is behind the stream.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::limits::{MAX_CHUNK_LINE, READ_CHUNK};
use super::reply::{Body, Reply, StreamBody, StreamSink};
use super::status::Status;
use super::stream::RawStream;

/// Largest reply head read (status line and header block).
pub const MAX_REPLY_HEAD_BYTES: usize = 64 * 1024;

/// Most header fields read in a reply head.
pub const MAX_REPLY_HEADERS: usize = 100;

/// How long a piped body's read waits before the proxy checks whether its own client is
/// still there (and the server still running).
pub const PIPE_POLL: Duration = Duration::from_millis(250);

/// While waiting for a reply head, how often the caller's `gone` check runs (a forwarded
/// blocking query ends early when the one who asked has left).
pub const REPLY_PEER_CHECK: Duration = Duration::from_millis(200);

/// Request and reply headers that describe one hop, never passed on by a proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "expect",
];

/// Whether a header field belongs to one hop only (and is not forwarded).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Characters kept as they are in a path segment (RFC 3986 unreserved plus sub-delims, `:`,
/// `@` and the `/` separator); everything else is percent-encoded.
fn path_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

fn query_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn encode(out: &mut String, s: &str, ok: fn(u8) -> bool) {
    for b in s.bytes() {
        if ok(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A request target from a decoded path and decoded query pairs (the inverse of how the
/// server decodes them).
pub fn encode_target(path: &str, query: &[(String, String)]) -> String {
    let mut out = String::with_capacity(path.len() + 16);
    encode(&mut out, path, path_char_ok);
    for (i, (k, v)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        encode(&mut out, k, query_char_ok);
        out.push('=');
        encode(&mut out, v, query_char_ok);
    }
    out
}

/// Write one request: `headers` (hop-by-hop fields and CR/LF are dropped), then
/// `Content-Length` and `Connection: close`, then `body`. Writes must finish by `deadline`.
pub fn write_request(
    stream: &mut RawStream,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(String, String)],
    body: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(256 + body.len());
    head.extend_from_slice(format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    for (name, value) in headers {
        let Some(name) = super::respond::clean_name(name) else {
            continue;
        };
        if is_hop_by_hop(name) {
            continue;
        }
        let value = super::respond::clean_value(value);
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head.extend_from_slice(body);
    stream.set_write_timeout(Some(left(deadline)?))?;
    stream.write_all(&head)
}

/// Time left until `deadline`, or a `TimedOut` error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(d)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// How a reply body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// This many bytes remain.
    Length(u64),
    /// A chunk-size line comes next.
    ChunkHead,
    /// This many bytes of the current chunk remain.
    ChunkData(u64),
    /// The CRLF after a chunk's data comes next.
    ChunkEnd,
    /// Trailer lines up to an empty one come next.
    Trailers,
    /// Everything up to the peer's close.
    Close,
    Done,
}

/// A reply read from a stream: its head, and the body still to read.
pub struct Incoming {
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    stream: RawStream,
    /// Bytes read past what was consumed.
    buf: Vec<u8>,
    state: State,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Incoming({})", self.status)
    }
}

/// Read a reply head from `stream` by `deadline`. `head_request`: the request was HEAD (no
/// body follows whatever the head says).
pub fn read_reply(
    stream: RawStream,
    deadline: Instant,
    head_request: bool,
) -> io::Result<Incoming> {
    read_reply_while(stream, deadline, head_request, &|| false)
}

/// [`read_reply`], giving up early (`ConnectionAborted`) once `gone()` says nobody waits for
/// the reply any more (checked every [`REPLY_PEER_CHECK`] while the head is awaited).
pub fn read_reply_while(
    mut stream: RawStream,
    deadline: Instant,
    head_request: bool,
    gone: &dyn Fn() -> bool,
) -> io::Result<Incoming> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let state = body_state(status, &headers, head_request)?;
                buf.drain(..n);
                return Ok(Incoming {
                    status,
                    headers,
                    stream,
                    buf,
                    state,
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_REPLY_HEAD_BYTES {
                    return Err(bad("reply head too large"));
                }
            }
            Err(_) => return Err(bad("malformed reply head")),
        }
        let wait =
            left(deadline).map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "reply timeout"))?;
        stream.set_read_timeout(Some(wait.min(REPLY_PEER_CHECK)))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a reply",
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "reply timeout"));
                }
                if gone() {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the requester went away",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why a request passed on to another HTTP server got no reply.
#[derive(Debug)]
pub enum PassError {
    /// No connection was made: nothing was sent, so the request may go elsewhere.
    Connect(io::Error),
    /// The request was (perhaps partly) sent, and its reply did not come whole.
    Exchange(io::Error),
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassError::Connect(e) => write!(f, "connect: {e}"),
            PassError::Exchange(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PassError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PassError::Connect(e) | PassError::Exchange(e) => Some(e),
        }
    }
}

/// Opens the stream a request goes over: `(address, longest the connect may take)` → a
/// connected stream (plain TCP, or TLS with a configuration the caller holds), handshaken.
pub type Connect<'a> = &'a dyn Fn(&std::net::SocketAddr, Duration) -> io::Result<RawStream>;

/// A [`Connect`] to keep and share between threads.
pub type Connector =
    std::sync::Arc<dyn Fn(&std::net::SocketAddr, Duration) -> io::Result<RawStream> + Send + Sync>;

/// A plain TCP connection to `addr` within `timeout` (Nagle off: requests go in one write).
pub fn connect_plain(addr: &std::net::SocketAddr, timeout: Duration) -> io::Result<RawStream> {
    let tcp = std::net::TcpStream::connect_timeout(addr, timeout)?;
    let _ = tcp.set_nodelay(true);
    Ok(RawStream::from(tcp))
}

/// Pass `req` on to the HTTP server at `addr` (connected by `connect`, bounded by
/// `connect_timeout`): its method, path and query, the given `headers` and its body; the reply
/// comes back as [`Incoming::into_reply`] makes it (small bodies whole, the rest piped). The
/// head must arrive by `deadline`; waiting for it ends early when `req`'s own client left.
#[allow(clippy::too_many_arguments)]
pub fn pass_on(
    addr: &std::net::SocketAddr,
    connect: Connect<'_>,
    req: &super::Request,
    headers: &[(String, String)],
    connect_timeout: Duration,
    deadline: Instant,
    max_inline: usize,
) -> Result<Reply, PassError> {
    let wait = left(deadline).map_err(PassError::Connect)?;
    let mut stream = connect(addr, wait.min(connect_timeout)).map_err(PassError::Connect)?;
    let target = encode_target(&req.path, &req.query);
    let host = addr.to_string();
    write_request(
        &mut stream,
        req.method.as_str(),
        &target,
        &host,
        headers,
        &req.body,
        deadline,
    )
    .and_then(|()| {
        read_reply_while(stream, deadline, req.method == super::Method::Head, &|| {
            req.peer_gone()
        })
    })
    .and_then(|incoming| incoming.into_reply(max_inline, deadline))
    .map_err(PassError::Exchange)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn body_state(status: u16, headers: &[(String, String)], head_request: bool) -> io::Result<State> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(State::Length(0));
    }
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.trim())
    };
    if let Some(te) = header("transfer-encoding") {
        if te.eq_ignore_ascii_case("chunked") {
            return Ok(State::ChunkHead);
        }
        return Err(bad("unsupported transfer encoding"));
    }
    match header("content-length") {
        Some(v) => v
            .parse::<u64>()
            .map(State::Length)
            .map_err(|_| bad("bad content-length")),
        None => Ok(State::Close),
    }
}

impl Incoming {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The stream after a `101 Switching Protocols` head, with the bytes already read past it.
    pub fn into_upgraded(self) -> (RawStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// Read the whole body by `deadline`; more than `max` bytes is an error.
    pub fn read_body(mut self, max: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            self.stream.set_read_timeout(Some(left(deadline)?))?;
            match self.read_some(&mut chunk) {
                Ok(0) => return Ok(out),
                Ok(n) => {
                    if out.len() + n > max {
                        return Err(bad("reply body too large"));
                    }
                    out.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "reply body timeout",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The reply as this server's own: status and end-to-end headers kept; a body of known
    /// length up to `max_inline` bytes read now (by `deadline`), anything else piped to the
    /// requester as it arrives, for as long as both ends are there.
    pub fn into_reply(self, max_inline: usize, deadline: Instant) -> io::Result<Reply> {
        if !(100..=999).contains(&self.status) {
            return Err(bad("reply status out of range"));
        }
        let status = Status::from_code(self.status);
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !is_hop_by_hop(k))
            .cloned()
            .collect();
        let inline = match self.state {
            State::Length(n) => n <= max_inline as u64,
            _ => false,
        };
        let body = if inline {
            let bytes = self.read_body(max_inline, deadline)?;
            if bytes.is_empty() {
                Body::Empty
            } else {
                Body::Bytes(bytes)
            }
        } else {
            Body::Stream(Box::new(Pipe(self)))
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Fill the read-ahead buffer with one read (timeouts as set on the stream).
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// A complete line (without its CRLF) from the buffer, reading more as needed.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(bad("chunk line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "reply ended mid-chunk",
                ));
            }
        }
    }

    /// Up to `out.len()` body bytes; 0 once the body is complete. A read timeout leaves the
    /// decoder where it was, so the call may simply be repeated.
    pub fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                State::Done | State::Length(0) => {
                    self.state = State::Done;
                    return Ok(0);
                }
                State::Length(n) | State::ChunkData(n) => {
                    if self.buf.is_empty() && self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "reply body cut short",
                        ));
                    }
                    let take = (n.min(out.len() as u64) as usize).min(self.buf.len());
                    out[..take].copy_from_slice(&self.buf[..take]);
                    self.buf.drain(..take);
                    let rest = n - take as u64;
                    self.state = match self.state {
                        State::ChunkData(_) if rest == 0 => State::ChunkEnd,
                        State::ChunkData(_) => State::ChunkData(rest),
                        _ => State::Length(rest),
                    };
                    return Ok(take);
                }
                State::Close => {
                    if self.buf.is_empty() && self.fill()? == 0 {
                        self.state = State::Done;
                        return Ok(0);
                    }
                    let take = out.len().min(self.buf.len());
                    out[..take].copy_from_slice(&self.buf[..take]);
                    self.buf.drain(..take);
                    return Ok(take);
                }
                State::ChunkHead => {
                    let line = self.line()?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let n = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
                    self.state = if n == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(n)
                    };
                }
                State::ChunkEnd => {
                    if !self.line()?.is_empty() {
                        return Err(bad("chunk data overran its size"));
                    }
                    self.state = State::ChunkHead;
                }
                State::Trailers => {
                    if self.line()?.is_empty() {
                        self.state = State::Done;
                    }
                }
            }
        }
    }
}

/// A reply body piped from the upstream stream to this server's client as it arrives.
struct Pipe(Incoming);

impl StreamBody for Pipe {
    fn run(self: Box<Self>, sink: &mut dyn StreamSink) -> io::Result<()> {
        let mut up = self.0;
        up.stream.set_read_timeout(Some(PIPE_POLL))?;
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            match up.read_some(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => sink.send(&chunk[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
            if sink.should_stop(Duration::ZERO) {
                // Dropping `up` closes the upstream stream: its producer sees its client go.
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (RawStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (RawStream::from(a), b)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn targets_round_trip_through_encoding() {
        let q = vec![
            ("path".to_string(), "/alloc/logs/a b&c=d".to_string()),
            ("follow".to_string(), "true".to_string()),
        ];
        assert_eq!(
            encode_target("/v1/client/fs/cat/ab cd", &q),
            "/v1/client/fs/cat/ab%20cd?path=%2Falloc%2Flogs%2Fa%20b%26c%3Dd&follow=true"
        );
        assert_eq!(encode_target("/v1/jobs", &[]), "/v1/jobs");
    }

    #[test]
    fn request_drops_hop_by_hop_headers_and_injected_lines() {
        let (mut a, b) = pair();
        let headers = vec![
            ("X-Nomad-Token".to_string(), "t\r\nEvil: 1".to_string()),
            ("Connection".to_string(), "keep-alive".to_string()),
            ("Transfer-Encoding".to_string(), "chunked".to_string()),
        ];
        write_request(&mut a, "POST", "/v1/x", "h", &headers, b"{}", soon()).unwrap();
        drop(a);
        let mut got = String::new();
        (&b).read_to_string(&mut got).unwrap();
        assert_eq!(
            got,
            "POST /v1/x HTTP/1.1\r\nHost: h\r\nX-Nomad-Token: tEvil: 1\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn reads_length_chunked_and_close_delimited_bodies() {
        let (a, b) = pair();
        (&b).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
            .unwrap();
        let r = read_reply(a, soon(), false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-a"), Some("1"));
        assert_eq!(r.read_body(100, soon()).unwrap(), b"hello");

        let (a, b) = pair();
        (&b).write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        let r = read_reply(a, soon(), false).unwrap();
        assert_eq!(r.read_body(100, soon()).unwrap(), b"abcde");

        let (a, b) = pair();
        (&b).write_all(b"HTTP/1.1 404 Not Found\r\n\r\ngone")
            .unwrap();
        drop(b);
        let r = read_reply(a, soon(), false).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.read_body(100, soon()).unwrap(), b"gone");
    }

    #[test]
    fn bounds_are_enforced() {
        let (a, b) = pair();
        (&b).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
            .unwrap();
        (&b).write_all(&[b'x'; 50]).unwrap();
        let r = read_reply(a, soon(), false).unwrap();
        assert!(r.read_body(10, soon()).is_err());

        let (a, b) = pair();
        (&b).write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .unwrap();
        let r = read_reply(a, soon(), false).unwrap();
        assert!(r.read_body(10, soon()).is_err());

        let (a, b) = pair();
        (&b).write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        let err = read_reply(a, Instant::now() + Duration::from_millis(100), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (a, b) = pair();
        (&b).write_all(b"HTTP/1.1 200 OK\r\nX: ").unwrap();
        (&b).write_all(&vec![b'a'; MAX_REPLY_HEAD_BYTES])
            .unwrap_or(());
        assert!(read_reply(a, soon(), false).is_err());
    }

    #[test]
    fn a_chunked_body_survives_timeouts_mid_chunk() {
        let (a, b) = pair();
        (&b).write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
            .unwrap();
        let mut r = read_reply(a, soon(), false).unwrap();
        r.stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut out = [0u8; 16];
        assert_eq!(r.read_some(&mut out).unwrap(), 2);
        assert!(is_timeout(&r.read_some(&mut out).unwrap_err()));
        (&b).write_all(b"cde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.read_some(&mut out).unwrap(), 3);
        assert_eq!(&out[..3], b"cde");
        assert_eq!(r.read_some(&mut out).unwrap(), 0);
    }
}
