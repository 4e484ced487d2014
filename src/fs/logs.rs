//! Task logs: listing `alloc/logs/<task>.<type>.<n>`, Nomad's global offsets over the retained
//! files, and the follower that moves from `.N` to `.N+1` without losing or repeating a byte.

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use super::follow::{read_to_eof, Liveness, Output, Waiter, Wake};
use super::frames::{FILE_DELETED, FILE_TRUNCATED};
use super::safe_path::{fstat, SafeDir};
use crate::http::{StreamBody, StreamSink};

/// After the task is seen dead, keep reading this long for bytes still being flushed.
pub const DEAD_DRAIN: Duration = Duration::from_millis(500);

/// A log listing failed.
#[derive(Debug)]
pub enum LogListError {
    /// `<task>.<type>.<x>` where `x` is not an index.
    BadIndex(String),
    Io(io::Error),
}

impl std::fmt::Display for LogListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogListError::BadIndex(x) => write!(f, "failed to convert {x:?} to a log index"),
            LogListError::Io(e) => write!(f, "failed to list entries: {e}"),
        }
    }
}

impl std::error::Error for LogListError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogListError::Io(e) => Some(e),
            LogListError::BadIndex(_) => None,
        }
    }
}

/// One retained log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogFile {
    pub index: u64,
    pub size: u64,
}

/// The regular files `<task>.<kind>.<n>` in the logs dir, by ascending index.
pub fn list_logs(dir: &SafeDir, task: &str, kind: &str) -> Result<Vec<LogFile>, LogListError> {
    let prefix = format!("{task}.{kind}.");
    let mut out = Vec::new();
    for e in dir.entries().map_err(LogListError::Io)? {
        let Some(rest) = e.name.strip_prefix(&prefix) else {
            continue;
        };
        // Only plain, singly linked files: a task could hard-link its secrets in here.
        if e.stat.st_mode & libc::S_IFMT != libc::S_IFREG || e.stat.st_nlink > 1 {
            continue;
        }
        let index: u64 = rest
            .parse()
            .map_err(|_| LogListError::BadIndex(rest.to_string()))?;
        out.push(LogFile {
            index,
            size: e.stat.st_size as u64,
        });
    }
    out.sort_by_key(|f| f.index);
    Ok(out)
}

/// Open one log file of the logs dir: a regular file with a single link (see [`list_logs`]).
pub fn open_log(dir: &SafeDir, name: &str) -> io::Result<File> {
    let f = dir.open_file(name)?;
    if fstat(&f)?.st_nlink > 1 {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(f)
}

/// Where a logs stream starts (ref §3.10): `(position in files, byte offset in that file)`.
/// The offset is global over the concatenation of the retained files; `origin=end` with
/// offset 0 streams the whole current file (Nomad issue #18368, kept for compatibility).
pub fn start_position(files: &[LogFile], origin_end: bool, offset: i64) -> (usize, u64) {
    let Some(last) = files.len().checked_sub(1) else {
        return (0, 0);
    };
    let mut n = offset.max(0) as u64;
    if !origin_end {
        for (i, f) in files.iter().enumerate() {
            if n < f.size {
                return (i, n);
            }
            n -= f.size;
        }
        return (last, files[last].size);
    }
    if n == 0 {
        return (last, 0);
    }
    for i in (0..files.len()).rev() {
        let size = files[i].size;
        if n <= size {
            return (i, size - n);
        }
        n -= size;
    }
    (0, 0)
}

/// `fs/logs`: follows one task's stdout or stderr across rotation.
pub struct LogFollower {
    pub dir: SafeDir,
    pub task: String,
    pub kind: String,
    pub index: u64,
    pub file: File,
    pub pos: u64,
    pub follow: bool,
    /// Without follow, the highest index at request time is the last one streamed.
    pub last_index: u64,
    pub out: Output,
    pub waiter: Waiter,
}

impl LogFollower {
    fn frame_name(&self) -> String {
        format!("alloc/logs/{}.{}.{}", self.task, self.kind, self.index)
    }

    fn file_name(&self, index: u64) -> String {
        format!("{}.{}.{}", self.task, self.kind, index)
    }

    /// The smallest retained index above the current one.
    fn next_index(&self) -> io::Result<Option<u64>> {
        let files = list_logs(&self.dir, &self.task, &self.kind).map_err(io::Error::other)?;
        Ok(files.iter().map(|f| f.index).find(|i| *i > self.index))
    }

    /// Move to the next retained file; false when it vanished before it could be opened.
    fn switch_to(&mut self, index: u64) -> io::Result<bool> {
        match open_log(&self.dir, &self.file_name(index)) {
            Ok(f) => {
                self.file = f;
                self.index = index;
                self.pos = 0;
                Ok(true)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM)) => {
                // Rotated away between listing and opening: skip past it and re-list.
                self.index = index;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn drive(&mut self, sink: &mut dyn StreamSink) -> io::Result<()> {
        let mut dead_since: Option<Instant> = None;
        let mut deleted_sent = false;
        loop {
            let name = self.frame_name();
            let mut read = read_to_eof(&self.file, &mut self.pos, &name, &mut self.out, sink)?;
            if let Some(next) = self.next_index()? {
                if !self.follow && self.index >= self.last_index {
                    return self.out.finish(sink);
                }
                // The writer moved on: whatever it wrote here before rotating is complete
                // now, so read to the end once more before switching.
                read_to_eof(&self.file, &mut self.pos, &name, &mut self.out, sink)?;
                self.switch_to(next)?;
                deleted_sent = false;
                continue;
            }
            if !self.follow {
                return self.out.finish(sink);
            }
            let st = fstat(&self.file)?;
            if st.st_nlink == 0 && !deleted_sent {
                deleted_sent = true;
                self.out.event(sink, &name, self.pos, FILE_DELETED)?;
                // Wait for (or find) the next index; the current fd still reads what it had.
                read += read_to_eof(&self.file, &mut self.pos, &name, &mut self.out, sink)?;
            } else if (st.st_size as u64) < self.pos {
                self.out.event(sink, &name, 0, FILE_TRUNCATED)?;
                self.pos = 0;
                continue;
            }
            if let Some(since) = dead_since {
                if read == 0 && since.elapsed() >= DEAD_DRAIN {
                    return self.out.finish(sink);
                }
            }
            match self.waiter.wait(&self.out, sink) {
                Wake::ClientGone => return Ok(()),
                Wake::TaskDead => {
                    if self.waiter.liveness() == Liveness::Gone {
                        return self.out.finish(sink);
                    }
                    if dead_since.is_none() {
                        dead_since = Some(Instant::now());
                        self.waiter.fast = true;
                    }
                }
                Wake::FsEvent | Wake::Heartbeat => {}
            }
            self.out.tick(sink)?;
        }
    }
}

impl StreamBody for LogFollower {
    fn run(mut self: Box<Self>, sink: &mut dyn StreamSink) -> io::Result<()> {
        if let Err(e) = self.drive(sink) {
            log::debug!("log stream of {}.{} ended: {e}", self.task, self.kind);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(sizes: &[u64]) -> Vec<LogFile> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, s)| LogFile {
                index: i as u64 + 3,
                size: *s,
            })
            .collect()
    }

    #[test]
    fn start_offsets() {
        let f = files(&[10, 20, 5]);
        assert_eq!(start_position(&f, false, 0), (0, 0));
        assert_eq!(start_position(&f, false, 9), (0, 9));
        assert_eq!(start_position(&f, false, 10), (1, 0));
        assert_eq!(start_position(&f, false, 32), (2, 2));
        assert_eq!(start_position(&f, false, 1000), (2, 5));
        assert_eq!(
            start_position(&f, true, 0),
            (2, 0),
            "issue 18368: whole current file"
        );
        assert_eq!(start_position(&f, true, 3), (2, 2));
        assert_eq!(start_position(&f, true, 5), (2, 0));
        assert_eq!(start_position(&f, true, 6), (1, 19));
        assert_eq!(start_position(&f, true, 1000), (0, 0));
        assert_eq!(start_position(&[], true, 5), (0, 0));
    }
}
