//! The request as the API layer sees it: parsed head, decoded path and query, whole body,
//! and a way to ask whether the client is still there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::method::Method;
use super::respond::peer_gone;
use super::wire::Sock;

/// Where a request came from: the TCP listener or one of the Unix socket listeners.
#[derive(Clone, Debug)]
pub enum Origin {
    /// The TCP API; `peer` is the remote address.
    Tcp { peer: Option<SocketAddr> },
    /// A Unix socket listener, identified by the tag it was registered with.
    Unix { tag: Arc<str> },
}

/// A request head before its body is read (used to choose the body limit).
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    /// Percent-decoded path, without the query string.
    pub path: String,
}

/// One complete request.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// Percent-decoded path, without the query string.
    pub path: String,
    /// Query parameters in order, percent-decoded (`+` is a space).
    pub query: Vec<(String, String)>,
    /// Header fields in order; names as sent (compare case-insensitively).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub origin: Origin,
    /// The connection the request came on, for [`Request::peer_gone`].
    pub peer: Peer,
}

/// The connection a request came on, as far as a handler may see it: whether its client is
/// still there.
#[derive(Clone, Default)]
pub struct Peer(Option<Arc<Sock>>);

impl Peer {
    pub(crate) fn new(sock: Arc<Sock>) -> Peer {
        Peer(Some(sock))
    }

    /// A request with no connection behind it (tests): its peer is never gone.
    pub fn none() -> Peer {
        Peer(None)
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Peer"
        } else {
            "Peer(none)"
        })
    }
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter with this name.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable query parameter.
    pub fn query_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client has closed its connection (or it failed), without waiting. Bytes
    /// the client sent ahead (a pipelined request) do not count as gone.
    pub fn peer_gone(&self) -> bool {
        self.peer
            .0
            .as_deref()
            .is_some_and(|s| peer_gone(s, Duration::ZERO))
    }

    /// Whether the query has this parameter at all (even with an empty value).
    pub fn has_query(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
}
