//! Every size limit and deadline of the HTTP layer, as named settings with defaults.

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
/// How long the accept loop sleeps after an accept error such as EMFILE.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
        }
    }
}
