//! nomadlet's own small HTTP/1.1 server layer on httparse: listeners, connections, limits.
//!
//! This module knows nothing of Nomad. The API layer sees a [`Request`] (method, path, query,
//! headers, body, origin) and returns a [`Reply`] (status, headers, body: bytes, a file range,
//! or a stream driven by the connection thread). Every limit is a named constant in [`limits`].
//! Before a body is read, [`Handler::admit`] may refuse the request; a handler that waits
//! long can ask [`Request::peer_gone`].
//!
//! Where things are: `listener` (acceptor threads, caps, registry, shutdown), `conn` (one
//! connection's request loop), `wire` (socket and bounded read buffer under deadlines),
//! `tls` (HTTPS: handshake under the head deadline, one socket call per read), `tls_stream`
//! (an owned TLS session, client or server side: outbound requests, detached upgrades), `head`
//! (httparse, framing rules, target decoding), `method` and `status` (the request method
//! parsed once, status codes by name), `chunked` (request bodies), `budget`
//! (server-wide body memory), `respond` (status line, `Date`, sanitised headers, bodies,
//! the stream sink and its peer-gone check).
// A library inside a binary: some of its public API is used only by some areas (the Task API
// serves Unix sockets, client_fs streams); the unit tests use all of it, so test builds still
// catch real dead code.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

pub(crate) mod budget;
pub(crate) mod chunked;
pub mod client;
pub mod conn;
pub(crate) mod head;
pub mod limits;
pub mod listener;
pub mod method;
pub mod outbound;
pub mod reply;
pub mod request;
mod respond;
pub mod status;
pub mod stream;
pub mod tls;
pub mod tls_stream;
pub mod upgrade;
pub(crate) mod wire;

#[cfg(test)]
mod tests;

pub use limits::Limits;
pub use listener::{ListenerHandle, Server};
pub use method::Method;
pub use reply::{Body, Reply, StreamBody, StreamSink};
pub use request::{Origin, Peer, Request, RequestHead};
pub use status::Status;
pub use stream::RawStream;
pub use tls::TlsAcceptor;
pub use tls_stream::TlsStream;
pub use upgrade::{Upgrade, Upgraded};

/// What the connection thread calls once a request head has been parsed.
pub trait Handler: Send + Sync + 'static {
    /// The largest body accepted for this request; a larger one is refused with 413
    /// before it is read.
    fn body_limit(&self, head: &RequestHead) -> usize;
    /// Decide, before any byte of a request's body is read or counted against the body
    /// budgets, whether it may send one: `Some(reply)` answers at once and closes the
    /// connection (e.g. a missing or invalid credential). Called only for requests that
    /// declare a body; `req.body` is still empty. The default admits everything.
    fn admit(&self, req: &Request) -> Option<Reply> {
        let _ = req;
        None
    }
    /// Serve one request. Never panics on input; errors are replies.
    fn handle(&self, req: Request) -> Reply;
}
