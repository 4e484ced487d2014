//! A small blocking HTTP/1.1 client over any `Read + Write` stream (TCP, a Unix socket, a TLS
//! stream the caller makes): one request per connection (`Connection: close`), the response
//! head bounded, bodies by Content-Length, chunked or to close, read as a stream or into
//! memory (bounded). Shared by the CLI and the client's RPC link; knows nothing of Nomad.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};

/// Largest response head read (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest response body read into memory (streamed bodies are not bounded).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Longest chunk-size line of a chunked body.
pub const MAX_CHUNK_LINE: usize = 1024;

/// What the CLI talks to: a byte stream both ways.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// The request to send.
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// The `Host` header's value.
    pub host: &'a str,
    /// Path and query, already escaped.
    pub path: &'a str,
    pub user_agent: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ClientError {
    /// Reading or writing the stream failed (or timed out).
    Io(io::Error),
    /// The response (or a header to send) is not usable HTTP.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Protocol(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            ClientError::Protocol(_) => None,
        }
    }
}

/// Send `out` on `stream` and read the response head; the body is read from the response.
pub fn exchange(mut stream: Box<dyn Stream>, out: &Outgoing) -> Result<Response, ClientError> {
    let (method, path, headers, body) = (out.method, out.path, out.headers, out.body);
    let io_err = ClientError::Io;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nConnection: close\r\n",
        out.host, out.user_agent
    );
    for (k, v) in headers {
        if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
            return Err(ClientError::Protocol("header contains a line break".into()));
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(io_err)?;
    stream.write_all(body).map_err(io_err)?;
    stream.flush().map_err(io_err)?;
    let mut reader = BufReader::new(stream);
    let raw = read_head(&mut reader).map_err(io_err)?;
    let mut hbuf = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hbuf);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(ClientError::Protocol("malformed HTTP response".into()))
        }
    }
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body = if find("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        Body::Chunked(Chunked {
            inner: reader,
            left: 0,
            done: false,
        })
    } else if let Some(len) = find("Content-Length") {
        let len: u64 = len
            .parse()
            .map_err(|_| ClientError::Protocol("bad Content-Length".into()))?;
        Body::Length(reader.take(len))
    } else if method == "HEAD" || status == 204 || status == 304 {
        Body::Length(reader.take(0))
    } else {
        Body::Close(reader)
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Body,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as a reader (for streams).
    pub fn into_reader(self) -> Box<dyn Read> {
        Box::new(self.body)
    }

    /// The whole body, at most [`MAX_BODY_BYTES`].
    /// The whole body, at most `limit` bytes (more is an error).
    pub fn bytes_limited(self, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut r = self.body.take(limit as u64 + 1);
        r.read_to_end(&mut out)?;
        if out.len() > limit {
            return Err(io::Error::other(format!(
                "response body larger than {limit} bytes"
            )));
        }
        Ok(out)
    }

    pub fn bytes(self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut r = self.body.take(MAX_BODY_BYTES as u64 + 1);
        r.read_to_end(&mut out)?;
        if out.len() > MAX_BODY_BYTES {
            return Err(io::Error::other(format!(
                "response body larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        Ok(out)
    }
}

enum Body {
    Length(io::Take<BufReader<Box<dyn Stream>>>),
    Chunked(Chunked),
    Close(BufReader<Box<dyn Stream>>),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Length(r) => r.read(buf),
            Body::Chunked(c) => c.read(buf),
            Body::Close(r) => r.read(buf),
        }
    }
}

/// A chunked body, decoded as it is read.
struct Chunked {
    inner: BufReader<Box<dyn Stream>>,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl Chunked {
    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        (&mut self.inner)
            .take(MAX_CHUNK_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad chunked encoding: chunk line too long or cut short",
            ));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad chunked encoding: chunk size",
                )
            })?;
            if size == 0 {
                // Trailers, then the blank line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a chunk",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// One request on a kept-alive connection (no `Connection: close`): the reply must carry a
/// `Content-Length` body of at most `max_body` bytes, read whole, so the connection can take
/// the next request. Any error leaves the connection unusable (drop it).
pub fn exchange_keep_alive(
    conn: &mut BufReader<Box<dyn Stream>>,
    out: &Outgoing,
    max_body: usize,
) -> Result<(u16, Vec<u8>), ClientError> {
    let io_err = ClientError::Io;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\n",
        out.method, out.path, out.host, out.user_agent
    );
    for (k, v) in out.headers {
        if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
            return Err(ClientError::Protocol("header contains a line break".into()));
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", out.body.len()));
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes()).map_err(io_err)?;
    stream.write_all(out.body).map_err(io_err)?;
    stream.flush().map_err(io_err)?;
    let raw = read_head(conn).map_err(io_err)?;
    let mut hbuf = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hbuf);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(ClientError::Protocol("malformed HTTP response".into()))
        }
    }
    let status = resp.code.unwrap_or(0);
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Content-Length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| ClientError::Protocol("a kept-alive reply needs Content-Length".into()))?;
    if len > max_body {
        return Err(ClientError::Protocol(format!(
            "response body larger than {max_body} bytes"
        )));
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).map_err(io_err)?;
    Ok((status, body))
}

fn read_head(r: &mut BufReader<Box<dyn Stream>>) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let n = r
            .by_ref()
            .take((MAX_HEAD_BYTES - head.len()) as u64 + 1)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn chunked_bodies_decode() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n")
            .unwrap();
        drop(b);
        let mut c = Chunked {
            inner: BufReader::new(Box::new(a)),
            left: 0,
            done: false,
        };
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert_eq!(s, "Wikipedia");
    }
}
