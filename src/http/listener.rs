//! Accept loops (one blocking acceptor thread per listener) and the connection registry.

use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use super::{Handler, Limits};

/// A running HTTP server: a handler, its limits and every listener started on it.
pub struct Server {
    _handler: Arc<dyn Handler>,
    _limits: Limits,
}

/// One listener's acceptor; `stop` closes it and every connection it accepted.
pub struct ListenerHandle {}

impl Server {
    pub fn new(handler: Arc<dyn Handler>, limits: Limits) -> Server {
        Server {
            _handler: handler,
            _limits: limits,
        }
    }

    /// Serve a bound TCP listener on a new acceptor thread.
    pub fn serve_tcp(&self, _listener: TcpListener) -> io::Result<ListenerHandle> {
        Err(io::Error::other("not yet"))
    }

    /// Serve a bound Unix listener; requests carry `Origin::Unix { tag }`.
    pub fn serve_unix(
        &self,
        _listener: UnixListener,
        _tag: Arc<str>,
    ) -> io::Result<ListenerHandle> {
        Err(io::Error::other("not yet"))
    }

    /// Stop every listener, let in-flight requests finish, end streams, join every thread.
    pub fn shutdown(&self) {}
}

impl ListenerHandle {
    /// Stop accepting, close this listener's connections and join its threads.
    pub fn stop(self) {}
}
