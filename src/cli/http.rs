//! The CLI's small blocking HTTP/1.1 client: one request per connection over any
//! `Read + Write` stream (TCP, a Unix socket, or a TLS stream the caller's connector makes),
//! Content-Length, chunked and read-to-close bodies, every read under a deadline (a follower,
//! `alloc logs -f`, retries reads that timed out between chunks).

use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// Longest a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one read or write may wait (a blocking query asks for less than this).
pub const IO_TIMEOUT: Duration = Duration::from_secs(90);

use crate::http::client;
pub use crate::http::client::{Response, Stream};

/// Makes the stream for an endpoint. The default connects TCP (http) and Unix sockets; an
/// `https` endpoint needs a connector that wraps TCP in TLS (`Client::with_connector`).
pub type Connector = Arc<dyn Fn(&Endpoint) -> io::Result<Box<dyn Stream>> + Send + Sync>;

/// Where the agent is, from `NOMAD_ADDR` / `-address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http`, `https` or `unix`.
    pub scheme: String,
    /// Host (without brackets) for TCP; the socket path for `unix`.
    pub host: String,
    pub port: u16,
}

/// Why an agent address (`NOMAD_ADDR`, `-address`) was refused; each carries the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// `unix://` with no path.
    NoSocketPath(String),
    /// A scheme other than `http`, `https` or `unix` (the address, the scheme).
    UnknownScheme(String, String),
    /// `[` without its `]`.
    Unbracketed(String),
    /// A port that is not a number from 0 to 65535.
    BadPort(String),
    /// No host before the port.
    NoHost(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::NoSocketPath(a) => write!(f, "invalid address {a:?}: no socket path"),
            AddressError::UnknownScheme(a, s) => {
                write!(f, "invalid address {a:?}: unknown scheme {s:?}")
            }
            AddressError::Unbracketed(a) => write!(f, "invalid address {a:?}"),
            AddressError::BadPort(a) => write!(f, "invalid port in {a:?}"),
            AddressError::NoHost(a) => write!(f, "invalid address {a:?}: no host"),
        }
    }
}

impl std::error::Error for AddressError {}

impl Endpoint {
    /// Parse `http://host:port`, `https://host:port`, `host:port` or `unix:///path`.
    pub fn parse(addr: &str) -> Result<Endpoint, AddressError> {
        let addr = addr.trim().trim_end_matches('/');
        if let Some(path) = addr.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(AddressError::NoSocketPath(addr.to_string()));
            }
            return Ok(Endpoint {
                scheme: "unix".into(),
                host: path.to_string(),
                port: 0,
            });
        }
        let (scheme, rest) = match addr.split_once("://") {
            Some((s, r)) if s == "http" || s == "https" => (s, r),
            Some((s, _)) => {
                return Err(AddressError::UnknownScheme(addr.to_string(), s.to_string()))
            }
            None => ("http", addr),
        };
        let rest = rest.split('/').next().unwrap_or(rest);
        let default_port = 4646;
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| AddressError::Unbracketed(addr.to_string()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p
                    .parse()
                    .map_err(|_| AddressError::BadPort(addr.to_string()))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| AddressError::BadPort(addr.to_string()))?,
                ),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(AddressError::NoHost(addr.to_string()));
        }
        Ok(Endpoint {
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    /// `http://host:port` as Go prints it in errors.
    pub fn url(&self) -> String {
        match self.scheme.as_str() {
            "unix" => format!("unix://{}", self.host),
            s if self.host.contains(':') => format!("{s}://[{}]:{}", self.host, self.port),
            s => format!("{s}://{}:{}", self.host, self.port),
        }
    }

    pub fn host_header(&self) -> String {
        match self.scheme.as_str() {
            "unix" => "localhost".into(),
            _ if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// Why a request failed before an HTTP status came back, or what status came back.
#[derive(Debug)]
pub enum HttpError {
    /// Could not connect.
    Connect {
        method: String,
        url: String,
        source: io::Error,
    },
    /// The connection failed mid-request.
    Io {
        method: String,
        url: String,
        source: io::Error,
    },
    /// The server's answer was not HTTP we understand.
    Protocol { url: String, reason: String },
    /// A non-2xx status, with the body Nomad wrote (plain text).
    Status { code: u16, body: String },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect {
                method,
                url,
                source,
            } => write!(f, "{method} {url:?}: dial: {source}"),
            HttpError::Io {
                method,
                url,
                source,
            } => write!(f, "{method} {url:?}: {source}"),
            HttpError::Protocol { url, reason } => write!(f, "{url:?}: {reason}"),
            HttpError::Status { code, body } => {
                write!(f, "Unexpected response code: {code} ({body})")
            }
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Connect { source, .. } | HttpError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Settings every request carries (from the environment and the common flags).
#[derive(Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    connector: Connector,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn default_connect(ep: &Endpoint) -> io::Result<Box<dyn Stream>> {
    match ep.scheme.as_str() {
        "unix" => {
            let s = UnixStream::connect(&ep.host)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(Box::new(s))
        }
        "http" => {
            let mut last = None;
            for addr in (ep.host.as_str(), ep.port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        s.set_nodelay(true)?;
                        return Ok(Box::new(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        }
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{other}:// addresses need TLS, which this CLI build cannot speak yet"),
        )),
    }
}

/// Percent-encode a query value or path segment.
pub fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            token: None,
            region: None,
            namespace: None,
            connector: Arc::new(default_connect),
        }
    }

    /// Use another way to make streams (TLS).
    pub fn with_connector(mut self, connector: Connector) -> Client {
        self.connector = connector;
        self
    }

    /// `path` (with its query) plus `region`/`namespace` unless the path sets them.
    fn full_path(&self, path: &str) -> String {
        let mut p = path.to_string();
        for (key, val) in [("region", &self.region), ("namespace", &self.namespace)] {
            if let Some(v) = val {
                let has = p.split_once('?').is_some_and(|(_, q)| {
                    q.split('&').any(|kv| kv.starts_with(&format!("{key}=")))
                });
                if !has {
                    p.push(if p.contains('?') { '&' } else { '?' });
                    p.push_str(&format!("{key}={}", escape(v)));
                }
            }
        }
        p
    }

    /// Send one request; the response body is left to the caller.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let path = self.full_path(path);
        let url = format!("{}{path}", self.endpoint.url());
        let io_err = |source: io::Error| HttpError::Io {
            method: method.to_string(),
            url: url.clone(),
            source,
        };
        let stream = (self.connector)(&self.endpoint).map_err(|source| HttpError::Connect {
            method: method.to_string(),
            url: url.clone(),
            source,
        })?;
        let mut all: Vec<(String, String)> = Vec::new();
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if let Some(t) = self.token.as_deref().filter(|t| !t.is_empty()) {
            if !has("X-Nomad-Token") {
                all.push(("X-Nomad-Token".into(), t.to_string()));
            }
        }
        all.extend(headers.iter().cloned());
        let out = client::Outgoing {
            method,
            host: &self.endpoint.host_header(),
            path: &path,
            user_agent: "nomadlet-cli",
            headers: &all,
            body,
        };
        client::exchange(stream, &out).map_err(|e| match e {
            client::ClientError::Io(source) => io_err(source),
            client::ClientError::Protocol(reason) => HttpError::Protocol {
                url: url.clone(),
                reason,
            },
        })
    }

    /// A request whose 2xx body is read whole; other statuses become `HttpError::Status`.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, HttpError> {
        let url = format!("{}{path}", self.endpoint.url());
        let resp = self.send(method, path, &[], body)?;
        let status = resp.status;
        let bytes = resp.bytes().map_err(|source| HttpError::Io {
            method: method.to_string(),
            url,
            source,
        })?;
        if !(200..300).contains(&status) {
            return Err(HttpError::Status {
                code: status,
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        Ok(bytes)
    }

    /// `call` and decode JSON (depth-bounded, as every JSON nomadlet reads).
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<serde_json::Value, HttpError> {
        let bytes = self.call(method, path, body)?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        crate::parse_bounds::json_value(&bytes).map_err(|e| HttpError::Protocol {
            url: format!("{}{path}", self.endpoint.url()),
            reason: format!("bad JSON in the response: {e}"),
        })
    }

    pub fn get(&self, path: &str) -> Result<serde_json::Value, HttpError> {
        self.json("GET", path, b"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_nomads() {
        let e = Endpoint::parse("http://127.0.0.1:4646").unwrap();
        assert_eq!(
            (e.scheme.as_str(), e.host.as_str(), e.port),
            ("http", "127.0.0.1", 4646)
        );
        let e = Endpoint::parse("127.0.0.1").unwrap();
        assert_eq!(e.port, 4646);
        let e = Endpoint::parse("https://[::1]:8443/").unwrap();
        assert_eq!(
            (e.scheme.as_str(), e.host.as_str(), e.port),
            ("https", "::1", 8443)
        );
        assert_eq!(e.url(), "https://[::1]:8443");
        let e = Endpoint::parse("unix:///run/nomad.sock").unwrap();
        assert_eq!(e.host, "/run/nomad.sock");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x:notaport").is_err());
    }
}
