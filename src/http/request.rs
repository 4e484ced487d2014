//! The request as the API layer sees it: parsed head, decoded path and query, whole body.

use std::net::SocketAddr;
use std::sync::Arc;

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
    pub method: String,
    /// Percent-decoded path, without the query string.
    pub path: String,
}

/// One complete request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Percent-decoded path, without the query string.
    pub path: String,
    /// Query parameters in order, percent-decoded (`+` is a space).
    pub query: Vec<(String, String)>,
    /// Header fields in order; names as sent (compare case-insensitively).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub origin: Origin,
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

    /// Whether the query has this parameter at all (even with an empty value).
    pub fn has_query(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
}
