//! Directory-fd operations that never follow a symlink a task may have planted: open a
//! directory, make or open a subdirectory, open/stat/unlink a file, all relative to a dir fd.
//! The client's alloc-dir and log-file code uses these; the system calls are `sys::fd`'s.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::sys::fd::{self, OFlags, Stat};

fn cstr(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad path component {name:?}"),
        ));
    }
    CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path component"))
}

/// Open an absolute directory path; the last component must not be a symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"));
    }
    fd::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
}

/// Make `name` under `dir` if missing, open it without following a symlink, and set `mode`.
pub fn ensure_subdir(dir: &OwnedFd, name: &str, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    if let Err(e) = fd::mkdirat(dir, &c, mode) {
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    let owned = fd::openat(
        dir,
        &c,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        0,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("{name} is not a directory: {e}")))?;
    fd::fchmod(&owned, mode)?;
    Ok(owned)
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`; `Ok(None)` when the name does not exist.
pub fn lstat_at(dir: &OwnedFd, name: &str) -> io::Result<Option<Stat>> {
    let c = cstr(name)?;
    match fd::lstat_at(dir, &c) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstat` of an open fd.
pub fn fstat(fd: &impl AsFd) -> io::Result<Stat> {
    fd::fstat(fd)
}

/// `openat` with the given flags (always adding `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`).
pub fn open_at(dir: &OwnedFd, name: &str, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // `O_*` values are the kernel's on Linux, the same for libc and rustix.
    let flags = OFlags::from_bits_retain(flags as _) | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    fd::openat(dir, &c, flags, mode)
}

/// `unlinkat` of a non-directory entry (never follows: a symlink itself is removed).
pub fn unlink_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    let c = cstr(name)?;
    fd::unlinkat(dir, &c)
}

/// The names in a directory, read through the fd (so the fd's directory is listed even if
/// its path was swapped); names that are not UTF-8 are left out.
pub fn list(dir: &OwnedFd) -> io::Result<Vec<String>> {
    Ok(fd::read_dir(dir)?
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .collect())
}

/// The effective uid of the agent.
pub fn euid() -> u32 {
    crate::sys::user::euid()
}

pub fn is_reg(st: &Stat) -> bool {
    st.is_regular()
}
