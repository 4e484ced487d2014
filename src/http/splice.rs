//! Splicing an upgraded connection to another stream (a proxy after both sides said 101):
//! bytes are copied both ways as they come, unchanged, until either side closes, fails or
//! stalls, or the server stops. One thread (the connection's own) does both directions with
//! `poll(2)`; one bounded buffer; nothing is read from a side whose bytes cannot be written.
//! Knows nothing of the protocol spoken.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::time::Duration;

use super::stream::RawStream;
use super::upgrade::{Upgrade, Upgraded};
use crate::sys::poll::PollSet;

/// Most bytes moved by one read (the one buffer both directions share).
pub const SPLICE_CHUNK: usize = 16 * 1024;

/// Longest one wait for either side; then the server's stop flag is looked at again.
pub const SPLICE_TICK: Duration = Duration::from_millis(250);

/// Longest a write to either side may stall (its reader not reading) before the splice ends.
pub const SPLICE_WRITE_STALL: Duration = Duration::from_secs(10);

/// The upgrade that splices the requester's connection to `other` (a stream that already
/// switched protocols), first passing on what `other` sent past its own 101 head.
pub struct Splice {
    other: RawStream,
    ahead: Vec<u8>,
}

impl Splice {
    /// `ahead`: bytes already read from `other` after its 101 head.
    pub fn new(other: RawStream, ahead: Vec<u8>) -> Splice {
        Splice { other, ahead }
    }
}

/// What one copy step did.
enum Step {
    /// Bytes were moved; `true` when the read filled the buffer (more may be waiting where
    /// `poll` cannot see it, such as inside a TLS session).
    Moved(bool),
    /// Nothing to read after all.
    Idle,
    /// A side closed, failed or stalled: the splice ends.
    Ended,
}

fn copy_once(from: &mut dyn Read, to: &mut dyn Write, buf: &mut [u8]) -> Step {
    match from.read(buf) {
        Ok(0) => Step::Ended,
        Ok(n) => match to.write_all(&buf[..n]).and_then(|()| to.flush()) {
            Ok(()) => Step::Moved(n == buf.len()),
            Err(_) => Step::Ended,
        },
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Step::Idle
        }
        Err(_) => Step::Ended,
    }
}

impl Upgrade for Splice {
    fn run(self: Box<Self>, mut conn: Upgraded<'_>) {
        let Splice { mut other, ahead } = *self;
        let timeouts = conn
            .set_read_timeout(SPLICE_TICK)
            .and_then(|()| conn.set_write_timeout(SPLICE_WRITE_STALL))
            .and_then(|()| other.set_read_timeout(Some(SPLICE_TICK)))
            .and_then(|()| other.set_write_timeout(Some(SPLICE_WRITE_STALL)));
        if timeouts.is_err() || (!ahead.is_empty() && conn.write_all(&ahead).is_err()) {
            other.shutdown(Shutdown::Both);
            return;
        }
        let mut buf = vec![0u8; SPLICE_CHUNK];
        let mut set = PollSet::new();
        // Bytes the requester sent with its upgrade request are read before any poll.
        let mut conn_more = conn.has_buffered();
        let mut other_more = false;
        while !conn.stopping() {
            let (conn_ready, other_ready) = if conn_more || other_more {
                (conn_more, other_more)
            } else {
                set.clear();
                set.push(conn.fd());
                set.push(other.as_fd());
                match set.wait(SPLICE_TICK) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                (set.ready(0), set.ready(1))
            };
            conn_more = false;
            other_more = false;
            if conn_ready {
                match copy_once(&mut conn, &mut other, &mut buf) {
                    Step::Moved(full) => conn_more = full,
                    Step::Idle => {}
                    Step::Ended => break,
                }
            }
            if other_ready {
                match copy_once(&mut other, &mut conn, &mut buf) {
                    Step::Moved(full) => other_more = full,
                    Step::Idle => {}
                    Step::Ended => break,
                }
            }
        }
        // The far side sees its peer go; the requester's connection closes when this returns.
        other.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Handler, Limits, Origin, Reply, Request, RequestHead};
    use parking_lot::Mutex;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// Answers every request with a 101 spliced to the far stream it holds.
    struct SpliceTo(Mutex<Option<RawStream>>);

    impl Handler for SpliceTo {
        fn body_limit(&self, _: &RequestHead) -> usize {
            0
        }
        fn handle(&self, _: Request) -> Reply {
            let far = self.0.lock().take().expect("one request");
            Reply::upgrade(
                vec![("Upgrade".into(), "test".into())],
                Box::new(Splice::new(far, b"early".to_vec())),
            )
        }
    }

    fn read_exactly(s: &UnixStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = vec![0u8; n];
        (&*s).read_exact(&mut out).unwrap();
        out
    }

    /// A connection served on its own thread whose request is spliced to `far`: (the
    /// requester's end, the thread).
    fn spliced(far: UnixStream) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (conn, requester) = UnixStream::pair().unwrap();
        let handler = SpliceTo(Mutex::new(Some(RawStream::from(far))));
        let thread = std::thread::spawn(move || {
            let stopping = AtomicBool::new(false);
            crate::http::conn::serve_stream(
                RawStream::from(conn),
                Vec::new(),
                &handler,
                &Limits::default(),
                &stopping,
                Origin::Tcp { peer: None },
            );
        });
        // The request, and a first byte of the new protocol sent along with it.
        (&requester)
            .write_all(
                b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n!",
            )
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.extend(read_exactly(&requester, 1));
        }
        assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
        (requester, thread)
    }

    #[test]
    fn bytes_pass_both_ways_unchanged_until_the_far_side_closes() {
        let (far, node) = UnixStream::pair().unwrap();
        let (requester, thread) = spliced(far);
        // What the far side sent past its own 101 comes first; what the requester sent
        // with its request reaches the far side.
        assert_eq!(read_exactly(&requester, 5), b"early");
        assert_eq!(read_exactly(&node, 1), b"!");
        let big: Vec<u8> = (0..SPLICE_CHUNK * 3 + 7).map(|i| (i % 251) as u8).collect();
        let writer = {
            let (node, big) = (node.try_clone().unwrap(), big.clone());
            std::thread::spawn(move || (&node).write_all(&big).unwrap())
        };
        assert_eq!(read_exactly(&requester, big.len()), big);
        writer.join().unwrap();
        (&requester).write_all(b"\x00\xffback").unwrap();
        assert_eq!(read_exactly(&node, 6), b"\x00\xffback");
        // The far side goes: the requester's connection ends, and so does the thread.
        drop(node);
        let mut rest = Vec::new();
        requester
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (&requester).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        thread.join().unwrap();
    }

    #[test]
    fn the_requester_leaving_closes_the_far_side() {
        let (far, node) = UnixStream::pair().unwrap();
        let (requester, thread) = spliced(far);
        assert_eq!(read_exactly(&requester, 5), b"early");
        let started = Instant::now();
        drop(requester);
        node.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        (&node).read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"!");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "at once, not at a deadline"
        );
        thread.join().unwrap();
    }
}
