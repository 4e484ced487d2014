//! Resolving a request path inside an allocation directory without ever leaving it.
//!
//! Every lookup starts from a file descriptor of the alloc dir and walks one component at a
//! time with `openat(dirfd, name, O_PATH | O_NOFOLLOW)`. Symlinks are followed by hand
//! (`readlinkat` on the link's own fd, a bounded number of hops), re-resolved relative to the
//! alloc dir, and refused when they lead outside it. Content is read only through fds opened
//! here, never through a path, so a directory swapped for a symlink between the check and the
//! read cannot lead anywhere else (Nomad CVE-2022-24683). Nothing outside this module opens a
//! path derived from a request or from a task's files.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub use crate::sys::fd::Stat;
use crate::sys::fd::{self, OFlags};

/// How many symlinks one resolution may follow (Linux's own limit is 40).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// How many directory lookups one resolution may make in all (re-walks after `..` included),
/// so a task's deep tree and long `../../..` link targets cannot make a lookup expensive.
pub const MAX_WALK_STEPS: usize = 32 * 1024;

/// The largest symlink target we read.
const MAX_LINK_TARGET: usize = 4096;

/// Why a path could not be resolved.
#[derive(Debug)]
pub enum PathError {
    /// The path leaves the alloc dir (`..`, an absolute symlink elsewhere, a loop).
    Escapes,
    /// A system call failed on `abs` (the lexical host path, as Nomad reports it).
    Os { abs: PathBuf, err: io::Error },
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Escapes => f.write_str("Path escapes the alloc directory"),
            PathError::Os { abs, err } => write!(f, "{}: {}", abs.display(), os_text(err)),
        }
    }
}

impl std::error::Error for PathError {}

/// Go's lower-case text for an OS error (`no such file or directory`): the C library's text
/// that `io::Error` shows, without its ` (os error N)` suffix.
pub fn os_text(err: &io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(code) => {
            let bare = text
                .strip_suffix(&format!(" (os error {code})"))
                .unwrap_or(&text);
            if bare.is_empty() {
                text.clone()
            } else {
                bare.to_lowercase()
            }
        }
        None => text,
    }
}

/// `fstat` of an open file or directory.
pub fn fstat(fd: impl AsFd) -> io::Result<Stat> {
    fd::fstat(fd)
}

fn cstring(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A request path after Go's `filepath.Clean`: components without `.` or `..`.
/// `None` when it climbs above the root.
pub fn clean_components(path: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p.to_string()),
        }
    }
    Some(out)
}

/// An open allocation directory: every lookup starts from its fd.
pub struct AllocDir {
    root: OwnedFd,
    /// The alloc dir as the client knows it.
    root_path: PathBuf,
    /// The same, with symlinks resolved (absolute link targets are compared to both).
    canon_root: PathBuf,
}

/// What one resolution found: the object (an `O_PATH` fd), its parent directory and its
/// place inside the alloc dir.
pub struct Resolved {
    obj: OwnedFd,
    /// `None` when the object is the alloc dir itself.
    parent: Option<(OwnedFd, CString)>,
    stat: Stat,
    /// Components of the resolved location relative to the alloc dir (symlinks followed).
    pub components: Vec<String>,
    /// The host path of the resolved location.
    pub host_path: PathBuf,
}

/// One entry of a directory listing, as `lstat` sees it.
pub struct DirEntry {
    pub name: String,
    pub stat: Stat,
}

/// A directory opened for listing and for opening its files by name (never following links).
pub struct SafeDir {
    fd: OwnedFd,
}

impl AllocDir {
    /// Open the alloc dir itself (a path the client created, not one from a request).
    pub fn open(dir: &Path) -> io::Result<AllocDir> {
        let root = fd::open(dir, OFlags::PATH | OFlags::DIRECTORY)?;
        let canon_root = std::fs::canonicalize(dir)?;
        Ok(AllocDir {
            root,
            root_path: dir.to_path_buf(),
            canon_root,
        })
    }

    /// The host path a request path names lexically (what Nomad puts in its messages).
    pub fn lexical_path(&self, req: &str) -> PathBuf {
        let mut p = self.root_path.clone();
        for c in clean_components(req).unwrap_or_default() {
            p.push(c);
        }
        p
    }

    /// Where a symlink target leads, as components to resolve from the alloc dir root;
    /// `None` for an absolute target outside the alloc dir.
    fn absolute_target(&self, target: &Path) -> Option<Vec<String>> {
        let rest = target
            .strip_prefix(&self.canon_root)
            .or_else(|_| target.strip_prefix(&self.root_path))
            .ok()?;
        Some(component_strings(rest))
    }

    /// Resolve `req` (relative to the alloc dir; a leading `/` is harmless), following
    /// symlinks by hand and never leaving the alloc dir.
    pub fn resolve(&self, req: &str) -> Result<Resolved, PathError> {
        let cleaned = clean_components(req).ok_or(PathError::Escapes)?;
        let abs = self.lexical_path(req);
        let os_err = |err: io::Error| PathError::Os {
            abs: abs.clone(),
            err,
        };
        let mut pending: VecDeque<String> = cleaned.into();
        // Where the walk stands: the names below the root, an O_PATH fd of that location and
        // its stat, and an fd of its parent. Only these few fds are open at any time, however
        // deep the path: a `..` from a symlink target re-walks from the root instead.
        let mut names: Vec<String> = Vec::new();
        let mut steps = 0usize;
        let (mut cur, mut cur_st, mut parent) = self.walk(&[], &mut steps).map_err(os_err)?;
        // Set after `..`: `cur` is stale until the next lookup re-walks (once per run of `..`).
        let mut stale = false;
        let mut hops = 0usize;
        while let Some(name) = pending.pop_front() {
            if name.is_empty() || name == "." {
                continue;
            }
            if name == ".." {
                if !stale && !cur_st.is_dir() {
                    return Err(os_err(io::Error::from_raw_os_error(libc::ENOTDIR)));
                }
                if names.pop().is_none() {
                    return Err(PathError::Escapes);
                }
                stale = true;
                continue;
            }
            if stale {
                (cur, cur_st, parent) = self.walk(&names, &mut steps).map_err(os_err)?;
                stale = false;
            }
            if !cur_st.is_dir() {
                return Err(os_err(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            step(&mut steps).map_err(os_err)?;
            let c = cstring(&name).map_err(os_err)?;
            let fd = fd::openat(&cur, &c, OFlags::PATH | OFlags::NOFOLLOW, 0).map_err(os_err)?;
            let st = fd::fstat(&fd).map_err(os_err)?;
            if !st.is_symlink() {
                parent = Some(std::mem::replace(&mut cur, fd));
                cur_st = st;
                names.push(name);
                continue;
            }
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(os_err(io::Error::from_raw_os_error(libc::ELOOP)));
            }
            let target = fd::readlink_fd(&fd, MAX_LINK_TARGET).map_err(os_err)?;
            let target = Path::new(OsStr::from_bytes(&target));
            let mut next: Vec<String> = if target.is_absolute() {
                let rest = self.absolute_target(target).ok_or(PathError::Escapes)?;
                names.clear();
                stale = true;
                rest
            } else {
                // Relative to the directory holding the link, which is where the walk stands.
                component_strings(target)
            };
            next.extend(pending.drain(..));
            pending = next.into();
        }
        if stale {
            (cur, cur_st, parent) = self.walk(&names, &mut steps).map_err(os_err)?;
        }
        let mut host_path = self.root_path.clone();
        host_path.extend(names.iter());
        let parent = match (names.last(), parent) {
            (None, _) => None,
            (Some(last), Some(p)) => Some((p, cstring(last).map_err(os_err)?)),
            (Some(last), None) => Some((
                self.root.try_clone().map_err(os_err)?,
                cstring(last).map_err(os_err)?,
            )),
        };
        Ok(Resolved {
            obj: cur,
            parent,
            stat: cur_st,
            components: names,
            host_path,
        })
    }

    /// Walk directories `names` from the root without following links: the location's fd,
    /// its stat and its parent's fd (`None` at the root).
    fn walk(
        &self,
        names: &[String],
        steps: &mut usize,
    ) -> io::Result<(OwnedFd, Stat, Option<OwnedFd>)> {
        let mut cur = self.root.try_clone()?;
        let mut parent = None;
        for name in names {
            step(steps)?;
            let c = cstring(name)?;
            let fd = fd::openat(
                &cur,
                &c,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY,
                0,
            )?;
            parent = Some(std::mem::replace(&mut cur, fd));
        }
        let st = fd::fstat(&cur)?;
        Ok((cur, st, parent))
    }
}

/// Count one directory lookup against [`MAX_WALK_STEPS`].
fn step(steps: &mut usize) -> io::Result<()> {
    *steps += 1;
    if *steps > MAX_WALK_STEPS {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(())
}

fn component_strings(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

/// Which protected task directory a resolved location lies in, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protected {
    Secrets,
    Private,
}

impl Resolved {
    pub fn stat(&self) -> &Stat {
        &self.stat
    }

    pub fn is_dir(&self) -> bool {
        self.stat.is_dir()
    }

    pub fn is_regular(&self) -> bool {
        self.stat.is_regular()
    }

    /// A regular file with more than one link: its inode may also live outside the alloc
    /// dir (a task can hard-link another allocation's token, `/etc/passwd` or the agent's
    /// own key into `local/`), so its content is never served.
    pub fn is_hard_linked(&self) -> bool {
        self.is_regular() && self.stat.st_nlink > 1
    }

    /// Whether the resolved location is a task's `secrets/` or `private/` dir or inside it.
    /// The check is on where the path really leads, not on the string asked for.
    pub fn protected(&self) -> Option<Protected> {
        if self.components.len() < 2 || self.components[0] == "alloc" {
            return None;
        }
        let second = &self.components[1];
        if second.eq_ignore_ascii_case("secrets") {
            Some(Protected::Secrets)
        } else if second.eq_ignore_ascii_case("private") {
            Some(Protected::Private)
        } else {
            None
        }
    }

    /// Re-open the object for reading. The open cannot follow a link, and the result must be
    /// the very inode that was resolved.
    fn reopen(&self, flags: OFlags) -> io::Result<OwnedFd> {
        let fd = match &self.parent {
            Some((dir, name)) => fd::openat(dir, name, flags | OFlags::NOFOLLOW, 0)?,
            None => fd::openat(&self.obj, c".", flags, 0)?,
        };
        let st = fd::fstat(&fd)?;
        if !st.same_inode(&self.stat) {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        Ok(fd)
    }

    /// Open the resolved regular file for reading.
    pub fn open_file(&self) -> io::Result<File> {
        if !self.is_regular() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // O_NONBLOCK: a FIFO swapped in at the last moment must not block the open.
        let fd = self.reopen(OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        Ok(File::from(fd))
    }

    /// Open the resolved directory for listing and for opening its entries.
    pub fn open_dir(&self) -> io::Result<SafeDir> {
        let fd = self.reopen(OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(SafeDir { fd })
    }

    /// The host directory a follower watches for changes to this object (a wake-up hint
    /// only: reads always go through the fds).
    pub fn watch_dir(&self) -> PathBuf {
        if self.parent.is_some() {
            self.host_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        } else {
            self.host_path.clone()
        }
    }
}

impl SafeDir {
    /// Every entry except `.` and `..`, with `lstat` information, sorted by name.
    pub fn entries(&self) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for name in fd::read_dir(&self.fd)? {
            // Removed between listing and lstat: skip it, as Go's ReadDir does.
            let Ok(stat) = fd::lstat_at(&self.fd, &name) else {
                continue;
            };
            out.push(DirEntry {
                name: String::from_utf8_lossy(name.to_bytes()).into_owned(),
                stat,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Open a regular file of this directory by name; links are never followed and the name
    /// must be a single component.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let c = cstring(name)?;
        let fd = fd::openat(
            &self.fd,
            &c,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
            0,
        )?;
        let st = fd::fstat(&fd)?;
        if !st.is_regular() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(File::from(fd))
    }
}

#[cfg(test)]
mod tests;
