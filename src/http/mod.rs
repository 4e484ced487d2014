//! nomadlet's own small HTTP/1.1 server layer on httparse: listeners, connections, limits.
//!
//! This module knows nothing of Nomad. The API layer sees a [`Request`] (method, path, query,
//! headers, body, origin) and returns a [`Reply`] (status, headers, body: bytes, a file range,
//! or a stream driven by the connection thread). Every limit is a named constant in [`limits`].

pub mod conn;
pub mod limits;
pub mod listener;
pub mod reply;
pub mod request;

pub use limits::Limits;
pub use listener::{ListenerHandle, Server};
pub use reply::{Body, Reply, StreamBody, StreamSink};
pub use request::{Origin, Request, RequestHead};

/// What the connection thread calls once a request head has been parsed.
pub trait Handler: Send + Sync + 'static {
    /// The largest body accepted for this request; a larger one is refused with 413
    /// before it is read.
    fn body_limit(&self, head: &RequestHead) -> usize;
    /// Serve one request. Never panics on input; errors are replies.
    fn handle(&self, req: Request) -> Reply;
}
