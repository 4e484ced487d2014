//! Every size limit and deadline of the HTTP layer, as named settings with defaults.
//!
//! Hidden environment variables (read by [`Limits::with_env`], used by the integration tests
//! to avoid waiting out the real deadlines; not part of the documented CLI):
//! `NOMADLET_HTTP_HEAD_TIMEOUT_MS`, `NOMADLET_HTTP_BODY_TIMEOUT_MS`,
//! `NOMADLET_HTTP_IDLE_TIMEOUT_MS`, `NOMADLET_HTTP_WRITE_TIMEOUT_MS`,
//! `NOMADLET_HTTP_MAX_CONNS_PER_LISTENER`, `NOMADLET_HTTP_MAX_CONNS_TOTAL`,
//! `NOMADLET_HTTP_MAX_CONNS_PER_CLIENT` (0 turns the per-client cap off),
//! `NOMADLET_HTTP_MAX_BODY_BYTES_IN_FLIGHT`, `NOMADLET_HTTP_MAX_BODY_BYTES_PER_CLIENT`,
//! `NOMADLET_HTTP_CONN_STACK_KIB` (to measure how little stack the connection threads need).

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
/// Open connections on one listener; over it, the listener's longest-idle keep-alive is
/// closed to make room, or (none idle) the newcomer gets a quick 503 and close.
pub const MAX_CONNS_PER_LISTENER: usize = 256;
/// Open connections across all listeners (lowered to what `RLIMIT_NOFILE` can carry, see
/// [`FD_RESERVE_MIN`]); over it, the longest-idle keep-alive anywhere is closed to make room,
/// or (none idle) the newcomer gets a quick 503 and close.
pub const MAX_CONNS_TOTAL: usize = 1024;
/// Open TCP connections from one client IP address, across TCP listeners (Nomad's
/// `limits.http_max_conns_per_client`, default 100; 0 turns it off). Over it: Nomad's
/// [`TOO_MANY_CONNS_REPLY`] and close. A Unix listener is one client: its own cap applies.
pub const MAX_CONNS_PER_CLIENT: usize = 100;
/// Nomad's answer (go-connlimit's) to a connection over the per-client cap: 429, a fixed
/// plain-text body, then the connection is closed.
pub const TOO_MANY_CONNS_REPLY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
Content-Type: text/plain\r\n\
Content-Length: 81\r\n\
Connection: close\r\n\
\r\n\
Your IP is issuing too many concurrent connections, please rate limit your calls\n";
/// Request body bytes held in memory at once across the whole server. Bytes are counted as
/// they arrive, not as declared; a request whose next bytes would pass it gets a 503.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// Request body bytes one client (a TCP peer address; a Unix listener as a whole) may hold
/// in memory at once: two largest job bodies. A request whose next bytes would pass it gets
/// a 503; other clients keep the rest of [`MAX_BODY_BYTES_IN_FLIGHT`].
pub const MAX_BODY_BYTES_PER_CLIENT: usize = 16 * 1024 * 1024;
/// Open-file descriptors kept back from HTTP connections for everything else the agent
/// opens (task pipes and log files, Task API sockets, state files, the inotify watcher, the
/// files a request reads): a quarter of `RLIMIT_NOFILE`, and at least this many.
pub const FD_RESERVE_MIN: usize = 32;
/// The share of `RLIMIT_NOFILE` kept back from HTTP connections is `1 / FD_RESERVE_DIVISOR`.
pub const FD_RESERVE_DIVISOR: usize = 4;
/// When `accept` runs out of descriptors, at most this many pending connections are accepted
/// and refused in one go (through the spare descriptor), so the backlog is told at once.
pub const EMFILE_DRAIN_MAX: usize = LISTEN_BACKLOG as usize;
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
/// At most this many unread bytes are drained after an error reply: room for a body twice
/// the largest request limit, so a client refused with 413 while still sending reads its
/// reply instead of a reset (a clean-clone CI rehearsal saw a 2 MiB body end in EPIPE when
/// this was 1 MiB). [`LINGER_TIME`] bounds it too.
pub const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Stack of each connection thread, which also runs the handler and any stream or follower
/// (Rust's default is 2 MiB). Measured by shrinking it under the integration tests: the debug
/// build needs more than 128 KiB and at most 192 KiB (`PUT /v1/jobs` with resources), a
/// release build touches about 24 KiB in a follower. Request-fed recursive parsers are
/// bounded to fit 256 KiB. 512 KiB keeps a factor of 2.6 over the worst debug use; RSS counts
/// only the pages a thread touches, so a smaller stack would save address space, not memory.
pub const CONN_STACK: usize = 512 * 1024;
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
    /// 0: no per-client cap.
    pub max_conns_per_client: usize,
    pub max_body_bytes_in_flight: usize,
    pub max_body_bytes_per_client: usize,
    /// Stack size of connection threads.
    pub conn_stack: usize,
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
            max_conns_per_client: MAX_CONNS_PER_CLIENT,
            max_body_bytes_in_flight: MAX_BODY_BYTES_IN_FLIGHT,
            max_body_bytes_per_client: MAX_BODY_BYTES_PER_CLIENT,
            conn_stack: CONN_STACK,
        }
    }
}

impl Limits {
    /// These limits with any hidden `NOMADLET_HTTP_*` override (see the module docs) applied.
    /// Unparsable values are ignored, and so is zero except for the per-client connection cap
    /// (0 = off).
    pub fn with_env(self) -> Limits {
        let mut l = self;
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let ms = |name: &str| number(name).filter(|v| *v > 0);
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
        if let Some(v) = number("NOMADLET_HTTP_MAX_CONNS_PER_CLIENT") {
            l.max_conns_per_client = v as usize;
        }
        if let Some(v) = ms("NOMADLET_HTTP_MAX_BODY_BYTES_IN_FLIGHT") {
            l.max_body_bytes_in_flight = v as usize;
        }
        if let Some(v) = ms("NOMADLET_HTTP_MAX_BODY_BYTES_PER_CLIENT") {
            l.max_body_bytes_per_client = v as usize;
        }
        if let Some(v) = ms("NOMADLET_HTTP_CONN_STACK_KIB") {
            l.conn_stack = (v as usize).saturating_mul(1024);
        }
        l
    }

    /// The total connection cap that `open_files` descriptors can carry: connections over it
    /// get the quick 503 instead of waiting in the backlog for a descriptor. `None` (no
    /// limit) keeps the cap as it is.
    pub fn fit_to_open_files(mut self, open_files: Option<u64>) -> Limits {
        if let Some(n) = open_files {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let reserve = (n / FD_RESERVE_DIVISOR).max(FD_RESERVE_MIN);
            let fit = n.saturating_sub(reserve).max(1);
            self.max_conns_total = self.max_conns_total.min(fit);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_rest() {
        let fit = |n| Limits::default().fit_to_open_files(n).max_conns_total;
        assert_eq!(fit(None), MAX_CONNS_TOTAL);
        assert_eq!(fit(Some(1_048_576)), MAX_CONNS_TOTAL);
        assert_eq!(fit(Some(1024)), 768);
        assert_eq!(fit(Some(128)), 96);
        assert_eq!(fit(Some(64)), 32);
        assert_eq!(fit(Some(16)), 1);
    }

    #[test]
    fn the_429_declares_its_body_length() {
        let text = String::from_utf8_lossy(TOO_MANY_CONNS_REPLY);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
