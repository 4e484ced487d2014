//! The reply a handler returns: status, headers and a body the connection thread writes.

use std::fs::File;
use std::io;
use std::time::Duration;

use super::status::Status;

/// A response. Header values are sanitised by the writer: CR and LF never reach the wire.
pub struct Reply {
    pub status: Status,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// What follows the head.
pub enum Body {
    /// No body (`Content-Length: 0`).
    Empty,
    /// A body held in memory.
    Bytes(Vec<u8>),
    /// `len` bytes of an open file from `offset`, copied in bounded chunks.
    File { file: File, offset: u64, len: u64 },
    /// A body of unknown length, produced by the connection thread running the stream
    /// (chunked on HTTP/1.1, close-delimited on HTTP/1.0). The connection closes after it.
    Stream(Box<dyn StreamBody>),
    /// `101 Switching Protocols`: after the head, the handler owns the raw connection (see
    /// `upgrade`); the connection closes when it returns.
    Upgrade(Box<dyn super::upgrade::Upgrade>),
}

/// A long-lived body: the connection thread calls `run` and becomes its producer.
pub trait StreamBody: Send {
    /// Write the body through `sink` until done, the client goes away or the server stops.
    fn run(self: Box<Self>, sink: &mut dyn StreamSink) -> io::Result<()>;
}

/// The connection as a stream producer sees it.
pub trait StreamSink {
    /// Write and flush one piece of the body. Fails once the client has gone.
    fn send(&mut self, data: &[u8]) -> io::Result<()>;
    /// True once the peer closed its side or the server is shutting down; never blocks
    /// longer than `wait` (use `Duration::ZERO` to poll).
    fn should_stop(&mut self, wait: Duration) -> bool;
}

impl Reply {
    /// A reply with a status and no body.
    pub fn empty(status: Status) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// A reply with a body and a Content-Type.
    pub fn bytes(status: Status, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".to_string(), content_type.to_string())],
            body: Body::Bytes(body),
        }
    }

    /// Add a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}
