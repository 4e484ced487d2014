//! Every size limit and deadline of the HTTP layer, as named settings with defaults.
//!
//! Hidden environment variables (read by [`Limits::from_env`], used by the integration tests
//! to avoid waiting out the real deadlines; not part of the documented CLI):
//! `NOMADLET_HTTP_HEAD_TIMEOUT_MS`, `NOMADLET_HTTP_BODY_TIMEOUT_MS`,
//! `NOMADLET_HTTP_IDLE_TIMEOUT_MS`, `NOMADLET_HTTP_WRITE_TIMEOUT_MS`,
//! `NOMADLET_HTTP_MAX_CONNS_PER_LISTENER`, `NOMADLET_HTTP_MAX_CONNS_TOTAL`.

use std::time::Duration;

/// Request line plus all header fields, in bytes; over it: 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Header fields in one request; over it: 431.
pub const MAX_HEADERS: usize = 100;
/// Default body limit; over it: 413 before the body is read.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The whole request head must arrive within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole body must arrive within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A kept-alive connection may sit idle this long between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A single write may stall this long before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections on one listener; over it: a quick 503 and close.
pub const MAX_CONNS_PER_LISTENER: usize = 256;
/// Open connections across all listeners; over it: a quick 503 and close.
pub const MAX_CONNS_TOTAL: usize = 1024;
/// Request bodies held in memory at once across the whole server; a request that would
/// take more gets a 503 (so 256 connections cannot each hold an 8 MiB job body).
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// Pending connections the kernel queues for a listener (std binds with 128; a burst over
/// the queue has its SYNs dropped and its clients stall a second or more).
pub const LISTEN_BACKLOG: i32 = 1024;
/// How long the accept loop sleeps after an accept error such as EMFILE.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a quiet accept loop wakes to join finished connection threads.
pub const ACCEPT_TICK: Duration = Duration::from_secs(1);
/// Write deadline for the quick 503 sent to a connection over a cap.
pub const REJECT_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long in-flight requests may run on after shutdown before their sockets are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// After an error reply, how long unread request bytes are drained before closing (so the
/// peer sees the reply instead of a reset).
pub const LINGER_TIME: Duration = Duration::from_millis(500);
/// At most this many unread bytes are drained after an error reply.
pub const LINGER_BYTES: usize = 1024 * 1024;
/// One read from a socket takes at most this many bytes into the connection's buffer.
pub const READ_CHUNK: usize = 8 * 1024;
/// A File body is copied to the socket in pieces of this size.
pub const FILE_CHUNK: usize = 64 * 1024;
/// Longest chunk-size line (size, extensions) or trailer line in a chunked request body.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;

/// The limits one server runs with (tests and the Task API may lower them).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_conns_per_listener: usize,
    pub max_conns_total: usize,
    pub max_body_bytes_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            head_timeout: HEAD_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_conns_per_listener: MAX_CONNS_PER_LISTENER,
            max_conns_total: MAX_CONNS_TOTAL,
            max_body_bytes_in_flight: MAX_BODY_BYTES_IN_FLIGHT,
        }
    }
}

impl Limits {
    /// The defaults, with any hidden `NOMADLET_HTTP_*` override (see the module docs) applied.
    /// Unparsable or zero values are ignored.
    pub fn from_env() -> Limits {
        let mut l = Limits::default();
        let ms = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|v| *v > 0)
        };
        if let Some(v) = ms("NOMADLET_HTTP_HEAD_TIMEOUT_MS") {
            l.head_timeout = Duration::from_millis(v);
        }
        if let Some(v) = ms("NOMADLET_HTTP_BODY_TIMEOUT_MS") {
            l.body_timeout = Duration::from_millis(v);
        }
        if let Some(v) = ms("NOMADLET_HTTP_IDLE_TIMEOUT_MS") {
            l.idle_timeout = Duration::from_millis(v);
        }
        if let Some(v) = ms("NOMADLET_HTTP_WRITE_TIMEOUT_MS") {
            l.write_timeout = Duration::from_millis(v);
        }
        if let Some(v) = ms("NOMADLET_HTTP_MAX_CONNS_PER_LISTENER") {
            l.max_conns_per_listener = v as usize;
        }
        if let Some(v) = ms("NOMADLET_HTTP_MAX_CONNS_TOTAL") {
            l.max_conns_total = v as usize;
        }
        l
    }
}
