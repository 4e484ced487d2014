//! Followers: the connection thread reads a file to its end, then waits for more.
//!
//! A follower runs as the `StreamBody` of its response, on the connection's own thread. What
//! can wake it is one closed enum, [`Wake`]; it waits with `select!` and a timeout, never a
//! bare blocking receive. Wake-ups come from the shared watcher (a hint: the follower re-reads
//! its fd), a heartbeat tick that also serves as the slow fallback poll, and the checks made at
//! each heartbeat: the client has gone, or the task is dead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver};

use super::frames::{Framer, FILE_DELETED, FILE_TRUNCATED, HEARTBEAT_INTERVAL};
use super::safe_path::fstat;
use super::watch::Subscription;
use crate::http::{StreamBody, StreamSink};

/// How much one read takes from a file, at most.
pub const READ_CHUNK: usize = 64 * 1024;
/// A follower about to wait at least this long first trims its stack (a shorter wait is a
/// batch window with data pending).
pub const TRIM_BEFORE_WAIT: Duration = Duration::from_millis(100);
/// The smallest read buffer (used when the file looked empty past the position).
pub const MIN_READ: usize = 4 * 1024;
/// How often a follower without a kernel watch re-checks its file.
pub const POLL_FALLBACK: Duration = Duration::from_millis(250);

/// What woke a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Something changed in the watched directory.
    FsEvent,
    /// The heartbeat / batch / fallback-poll tick.
    Heartbeat,
    /// The client closed its side or the server is stopping.
    ClientGone,
    /// The task being followed is dead (or its alloc is gone) and will write no more.
    TaskDead,
}

/// Whether the owner of the followed file can still write to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// The task is dead and will not run again.
    Dead,
    /// The allocation was collected or is no longer known.
    Gone,
}

/// Asks the client whether the followed task/alloc is still alive.
pub trait TaskProbe: Send {
    fn liveness(&self) -> Liveness;
}

/// A probe for files that belong to no task in particular.
#[cfg(test)]
pub struct AlwaysAlive;

#[cfg(test)]
impl TaskProbe for AlwaysAlive {
    fn liveness(&self) -> Liveness {
        Liveness::Alive
    }
}

/// Where the bytes go: JSON frames, or the raw bytes (`plain=true`).
pub enum Output {
    Framed(Framer),
    Plain,
}

impl Output {
    pub fn framed() -> Output {
        Output::Framed(Framer::new())
    }

    pub fn data(
        &mut self,
        sink: &mut dyn StreamSink,
        file: &str,
        offset: u64,
        bytes: &[u8],
    ) -> io::Result<()> {
        match self {
            Output::Framed(f) => f.data(sink, file, offset, bytes),
            Output::Plain => sink.send(bytes),
        }
    }

    /// A file event; plain streams carry none.
    pub fn event(
        &mut self,
        sink: &mut dyn StreamSink,
        file: &str,
        offset: u64,
        event: &str,
    ) -> io::Result<()> {
        match self {
            Output::Framed(f) => f.event(sink, file, offset, event),
            Output::Plain => Ok(()),
        }
    }

    pub fn tick(&mut self, sink: &mut dyn StreamSink) -> io::Result<()> {
        match self {
            Output::Framed(f) => f.tick(sink, Instant::now()),
            Output::Plain => Ok(()),
        }
    }

    pub fn finish(&mut self, sink: &mut dyn StreamSink) -> io::Result<()> {
        match self {
            Output::Framed(f) => f.flush(sink),
            Output::Plain => Ok(()),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Output::Framed(f) => Some(f.deadline()),
            Output::Plain => None,
        }
    }
}

/// Read `file` from `*pos` to its current end, sending everything. Returns the byte count.
pub fn read_to_eof(
    file: &File,
    pos: &mut u64,
    name: &str,
    out: &mut Output,
    sink: &mut dyn StreamSink,
) -> io::Result<u64> {
    // Sized to what the file holds past `pos` (an appended line, typically), so a woken
    // follower does not clear a 64 KiB buffer to read a few bytes.
    let want = match fstat(file) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
            (st.st_size as u64).saturating_sub(*pos) as usize
        }
        _ => READ_CHUNK,
    };
    let mut buf = vec![0u8; want.clamp(MIN_READ, READ_CHUNK)];
    let mut total = 0;
    loop {
        let n = match file.read_at(&mut buf, *pos) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(total);
        }
        out.data(sink, name, *pos, &buf[..n])?;
        *pos += n as u64;
        total += n as u64;
    }
}

/// The follower's waiting half: the subscription, the heartbeat clock and the probe.
pub struct Waiter {
    sub: Option<Subscription>,
    probe: Box<dyn TaskProbe>,
    next_check: Instant,
    /// Poll faster (e.g. while draining a dead task's last bytes).
    pub fast: bool,
}

impl Waiter {
    pub fn new(sub: Option<Subscription>, probe: Box<dyn TaskProbe>) -> Waiter {
        Waiter {
            sub,
            probe,
            next_check: Instant::now() + HEARTBEAT_INTERVAL,
            fast: false,
        }
    }

    /// Wait for the next reason to look at the file again.
    pub fn wait(&mut self, out: &Output, sink: &mut dyn StreamSink) -> Wake {
        let now = Instant::now();
        let poll = match &self.sub {
            Some(s) if s.watched && !self.fast => HEARTBEAT_INTERVAL,
            _ => POLL_FALLBACK,
        };
        let mut deadline = self.next_check.min(now + poll);
        if let Some(d) = out.deadline() {
            deadline = deadline.min(d);
        }
        let timeout = deadline.saturating_duration_since(now);
        let rx: Receiver<()> = match &self.sub {
            Some(s) => s.rx.clone(),
            None => never(),
        };
        if timeout >= TRIM_BEFORE_WAIT {
            // About to sleep with nothing pending: give back the stack pages that reading,
            // listing and sending touched below this frame, so a waiting follower keeps only
            // the few KiB it waits in (hundreds of followers may wait for hours).
            let _ = crate::sys::mem::trim_stack();
        }
        let woke = select! {
            recv(rx) -> _ => Wake::FsEvent,
            default(timeout) => Wake::Heartbeat,
        };
        if Instant::now() >= self.next_check {
            self.next_check = Instant::now() + HEARTBEAT_INTERVAL;
            if sink.should_stop(Duration::ZERO) {
                return Wake::ClientGone;
            }
            if self.probe.liveness() != Liveness::Alive {
                return Wake::TaskDead;
            }
        }
        woke
    }

    /// Ask the probe now (not only at heartbeats).
    pub fn liveness(&self) -> Liveness {
        self.probe.liveness()
    }
}

/// `fs/stream`: one file, from an offset, optionally followed.
pub struct FileFollower {
    pub file: File,
    /// The `File` of every frame: the path as the request gave it.
    pub name: String,
    pub pos: u64,
    pub follow: bool,
    pub out: Output,
    pub waiter: Waiter,
}

impl FileFollower {
    fn drive(&mut self, sink: &mut dyn StreamSink) -> io::Result<()> {
        loop {
            read_to_eof(&self.file, &mut self.pos, &self.name, &mut self.out, sink)?;
            if !self.follow {
                return self.out.finish(sink);
            }
            let st = fstat(&self.file)?;
            if st.st_nlink == 0 {
                self.out.event(sink, &self.name, self.pos, FILE_DELETED)?;
                return self.out.finish(sink);
            }
            if (st.st_size as u64) < self.pos {
                self.out.event(sink, &self.name, 0, FILE_TRUNCATED)?;
                self.pos = 0;
                continue;
            }
            match self.waiter.wait(&self.out, sink) {
                Wake::ClientGone => return Ok(()),
                Wake::TaskDead => {
                    if self.waiter.liveness() == Liveness::Gone {
                        return self.out.finish(sink);
                    }
                }
                Wake::FsEvent | Wake::Heartbeat => {}
            }
            self.out.tick(sink)?;
        }
    }
}

impl StreamBody for FileFollower {
    fn run(mut self: Box<Self>, sink: &mut dyn StreamSink) -> io::Result<()> {
        let res = self.drive(sink);
        // Errors after the first byte end the stream quietly; the fd and the watch are
        // released when `self` drops here.
        if let Err(e) = &res {
            log::debug!("fs stream of {:?} ended: {e}", self.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
