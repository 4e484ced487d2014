//! Task logs: the task's shim copies both of its pipes (polled together) into
//! rotating files `alloc/logs/<task>.<stdout|stderr>.<n>` with Nomad's rotation (append to
//! the highest index at start, next index when full, oldest deleted beyond `MaxFiles`).
//!
//! `alloc/logs` is writable by the task (Nomad CVE-2026-6959): every file is opened relative
//! to a directory fd with `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`, new files with `O_EXCL`, then
//! checked with `fstat` (a regular file owned by the agent, one link). Old files are removed
//! with `unlinkat` after `fstatat(AT_SYMLINK_NOFOLLOW)`. Nothing is ever truncated, and no
//! log file is ever read or reopened by name. The pump runs in the task's shim
//! (`client::shim`), so the files keep growing while the agent is away.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::dirfd;

/// Indexes tried past a planted file before the output is dropped.
pub const MAX_INDEX_SKIPS: u64 = 16;
/// Read size of the pump under a flood of output.
pub const PUMP_CHUNK: usize = 64 * 1024;
/// Read size of the pump until a read fills it (an idle task's pump holds no 64 KiB buffer).
pub const PUMP_FIRST_CHUNK: usize = 4 * 1024;
/// Mode of log files.
pub const LOG_FILE_MODE: u32 = 0o644;

/// A rotating writer for one stream of one task.
pub struct Rotator {
    dir: Arc<OwnedFd>,
    base: String,
    max_files: u64,
    max_size: u64,
    index: u64,
    oldest: u64,
    file: Option<File>,
    size: u64,
}

fn parse_index(name: &str, base: &str) -> Option<u64> {
    let rest = name.strip_prefix(base)?.strip_prefix('.')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// Whether an open file is one the agent may write: regular, owned by us, not hard-linked.
pub fn safe_file(fd: &OwnedFd) -> io::Result<u64> {
    let st = dirfd::fstat(fd)?;
    if !dirfd::is_reg(&st) {
        return Err(io::Error::other("not a regular file"));
    }
    if st.st_uid != dirfd::euid() {
        return Err(io::Error::other("not owned by the agent"));
    }
    if st.st_nlink != 1 {
        return Err(io::Error::other("has more than one link"));
    }
    Ok(st.st_size as u64)
}

impl Rotator {
    /// Start writing `<base>.<n>` in `dir`, appending to the highest existing index.
    pub fn open(dir: Arc<OwnedFd>, base: &str, max_files: u64, max_size: u64) -> Rotator {
        let indexes: Vec<u64> = dirfd::list(&dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| parse_index(n, base))
            .collect();
        let start = indexes.iter().copied().max().unwrap_or(0);
        let oldest = indexes.iter().copied().min().unwrap_or(0);
        let mut r = Rotator {
            dir,
            base: base.to_string(),
            max_files: max_files.max(1),
            max_size: max_size.max(1),
            index: start,
            oldest,
            file: None,
            size: 0,
        };
        r.open_from(start);
        r
    }

    fn name(&self, i: u64) -> String {
        format!("{}.{}", self.base, i)
    }

    /// Open the first usable index at or after `start`.
    fn open_from(&mut self, start: u64) {
        self.file = None;
        for i in start..start + MAX_INDEX_SKIPS {
            let name = self.name(i);
            let created = dirfd::open_at(
                &self.dir,
                &name,
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_EXCL,
                LOG_FILE_MODE,
            );
            let fd = match created {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    match dirfd::open_at(&self.dir, &name, libc::O_WRONLY | libc::O_APPEND, 0) {
                        Ok(fd) => fd,
                        Err(e) => {
                            log::warn!("log file {name} refused: {e}");
                            continue;
                        }
                    }
                }
                Err(e) => {
                    log::warn!("log file {name} cannot be created: {e}");
                    continue;
                }
            };
            match safe_file(&fd) {
                Ok(size) if size < self.max_size => {
                    self.index = i;
                    self.size = size;
                    self.file = Some(File::from(fd));
                    self.purge();
                    return;
                }
                Ok(_) => continue,
                Err(e) => {
                    log::warn!("log file {name} refused: {e}");
                    continue;
                }
            }
        }
        log::warn!("no usable log file for {}; output is dropped", self.base);
    }

    /// Delete the lowest indexes so that at most `max_files` remain.
    fn purge(&mut self) {
        while self.index >= self.max_files && self.oldest <= self.index - self.max_files {
            let name = self.name(self.oldest);
            match dirfd::lstat_at(&self.dir, &name) {
                Ok(Some(st)) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                    if let Err(e) = dirfd::unlink_at(&self.dir, &name) {
                        log::warn!("cannot remove old log file {name}: {e}");
                    }
                }
                _ => {}
            }
            self.oldest += 1;
        }
    }

    /// Append bytes, rotating exactly at the size limit.
    pub fn write(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.size >= self.max_size {
                let next = self.index + 1;
                self.open_from(next);
            }
            let Some(f) = self.file.as_mut() else {
                return;
            };
            let room = (self.max_size - self.size) as usize;
            let n = room.min(buf.len());
            if let Err(e) = f.write_all(&buf[..n]) {
                log::warn!("writing {}.{} failed: {e}", self.base, self.index);
                self.file = None;
                return;
            }
            self.size += n as u64;
            buf = &buf[n..];
        }
    }
}

/// One pipe of a pump and where its bytes go (`None`: drain and discard).
pub struct Pipe {
    read: Option<File>,
    sink: Option<Rotator>,
}

impl Pipe {
    /// Copy from `fd` into `sink`.
    pub fn new(fd: OwnedFd, sink: Option<Rotator>) -> Pipe {
        Pipe {
            read: Some(File::from(fd)),
            sink,
        }
    }

    /// The read end while the pipe is open.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.read.as_ref().map(|f| f.as_fd())
    }

    /// Take one readable chunk into the sink; closes the pipe at EOF or error. Returns
    /// whether the read filled `buf` (the caller may grow it).
    pub fn pump(&mut self, buf: &mut [u8]) -> bool {
        match self.pump_once(buf) {
            None => {
                self.read = None;
                false
            }
            Some(n) => n == buf.len(),
        }
    }

    /// Read once (the pipe is readable) and store what came: `Some(bytes)`, `None` once the
    /// pipe is done.
    fn pump_once(&mut self, buf: &mut [u8]) -> Option<usize> {
        let f = self.read.as_mut()?;
        match f.read(buf) {
            Ok(0) => None,
            Ok(n) => {
                if let Some(r) = self.sink.as_mut() {
                    r.write(&buf[..n]);
                }
                Some(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                Some(0)
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn setup() -> (std::path::PathBuf, Arc<OwnedFd>) {
        let d = std::env::temp_dir().join(format!("nomadlet-logs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        let fd = Arc::new(dirfd::open_dir(&d).unwrap());
        (d, fd)
    }

    #[test]
    fn rotates_exactly_and_keeps_max_files_of_the_tail() {
        let (d, fd) = setup();
        let mut r = Rotator::open(fd, "t.stdout", 3, 10);
        let data: Vec<u8> = (0..95u8).collect();
        for chunk in data.chunks(7) {
            r.write(chunk);
        }
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort_by_key(|n| parse_index(n, "t.stdout").unwrap());
        assert_eq!(names, ["t.stdout.7", "t.stdout.8", "t.stdout.9"]);
        let mut all = Vec::new();
        for n in &names {
            all.extend(std::fs::read(d.join(n)).unwrap());
        }
        assert_eq!(all, &data[70..]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn planted_symlink_and_fifo_are_skipped_never_followed() {
        let (d, fd) = setup();
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("t.stdout.0")).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("t.stdout.1")).unwrap();
        crate::sys::fd::mkfifo(&d.join("t.stdout.2"), 0o666).unwrap();
        let mut r = Rotator::open(fd, "t.stdout", 2, 4);
        r.write(b"abcdefgh");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.join("t.stdout.3")).unwrap(), b"abcd");
        assert_eq!(std::fs::read(d.join("t.stdout.4")).unwrap(), b"efgh");
        assert!(
            std::fs::symlink_metadata(d.join("t.stdout.0")).is_err(),
            "old symlink unlinked, not followed"
        );
        assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
