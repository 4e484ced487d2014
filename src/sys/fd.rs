//! File-descriptor primitives on rustix: open relative to a directory fd, `fstat`, `lstat` by
//! name, `readlinkat` on a link's own fd, make/remove entries, list a directory, `statvfs`.
//! No path is ever followed here unless the caller's flags say so; `O_CLOEXEC` is always added.
//! `fs::safe_path` (request-derived paths) and `client::dirfd` (alloc dirs, task log files)
//! sit on top; neither makes a system call of its own.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode};

pub use rustix::fs::OFlags;

/// What `stat(2)` tells of a file, in fixed-width fields named as POSIX names them, so no
/// platform (or libc) type reaches the layers above.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub st_dev: u64,
    pub st_ino: u64,
    /// File type and permission bits (`S_IFMT | 07777`).
    pub st_mode: u32,
    pub st_nlink: u64,
    pub st_uid: u32,
    pub st_gid: u32,
    pub st_size: i64,
    pub st_mtime: i64,
    pub st_mtime_nsec: i64,
}

impl Stat {
    fn from_rustix(s: &rustix::fs::Stat) -> Stat {
        // The casts only widen (or keep) each kernel field on every Linux target.
        #[allow(clippy::unnecessary_cast)]
        Stat {
            st_dev: s.st_dev as u64,
            st_ino: s.st_ino as u64,
            st_mode: s.st_mode as u32,
            st_nlink: s.st_nlink as u64,
            st_uid: s.st_uid as u32,
            st_gid: s.st_gid as u32,
            st_size: s.st_size as i64,
            st_mtime: s.st_mtime as i64,
            st_mtime_nsec: s.st_mtime_nsec as i64,
        }
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.st_mode as _)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    pub fn is_regular(&self) -> bool {
        self.file_type() == FileType::RegularFile
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == FileType::Symlink
    }

    pub fn is_socket(&self) -> bool {
        self.file_type() == FileType::Socket
    }

    /// Whether `other` describes the same inode.
    pub fn same_inode(&self, other: &Stat) -> bool {
        self.st_dev == other.st_dev && self.st_ino == other.st_ino
    }
}

/// `open(path, flags | O_CLOEXEC)` relative to the working directory.
pub fn open(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`.
pub fn openat(dir: impl AsFd, name: &CStr, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        Mode::from_bits_truncate(mode as _),
    )?)
}

/// `fstat` of an open fd (an `O_PATH` fd too).
pub fn fstat(fd: impl AsFd) -> io::Result<Stat> {
    Ok(Stat::from_rustix(&rustix::fs::fstat(fd)?))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: a symlink is described, not followed.
pub fn lstat_at(dir: impl AsFd, name: &CStr) -> io::Result<Stat> {
    Ok(Stat::from_rustix(&rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// The target of the symlink that `fd` (opened `O_PATH | O_NOFOLLOW`) is, at most `max`
/// bytes (a longer target is cut, as `readlink` cuts it).
pub fn readlink_fd(fd: impl AsFd, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // An empty path with an O_PATH fd of a symlink reads that link (Linux >= 2.6.39).
    let n = rustix::fs::readlinkat_raw(fd, c"", &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: impl AsFd, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(
        dir,
        name,
        Mode::from_bits_truncate(mode as _),
    )?)
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: impl AsFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_bits_truncate(mode as _))?)
}

/// `chmod` of the file an `O_PATH` fd stands for, through `/proc/self/fd` (`fchmod` refuses
/// `O_PATH` fds, and the path of the file itself could be swapped).
pub fn chmod_fd_path(fd: impl AsFd, mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    Ok(rustix::fs::chmod(
        proc_path.as_str(),
        Mode::from_bits_truncate(mode as _),
    )?)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`: change the owner of what `fd` (even an
/// `O_PATH` fd) stands for.
pub fn chown_fd(fd: impl AsFd, uid: u32, gid: u32) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        fd,
        c"",
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::EMPTY_PATH,
    )?)
}

/// `unlinkat(dir, name, 0)`: removes a non-directory entry (a symlink itself, never its target).
pub fn unlinkat(dir: impl AsFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}

/// `mkfifo(path, mode)` (the task shim's command FIFO; tests plant FIFOs where the agent must
/// not block).
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        FileType::Fifo,
        Mode::from_bits_truncate(mode as _),
        0,
    )?)
}

/// The names in the directory `dir` (opened for reading), without `.` and `..`, in the order
/// the kernel gives them. The listing reads through its own fd of the same directory, so
/// `dir`'s position is not moved and the listing always starts at the beginning.
pub fn read_dir(dir: impl AsFd) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        out.push(name.to_owned());
    }
    Ok(out)
}

/// Sizes of a filesystem, in bytes and inodes (`statvfs(3)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FsSpace {
    pub total: u64,
    pub free: u64,
    /// Free to unprivileged users.
    pub avail: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// `statvfs(path)`.
pub fn statvfs(path: &Path) -> io::Result<FsSpace> {
    let st = rustix::fs::statvfs(path)?;
    let bs = st.f_frsize;
    Ok(FsSpace {
        total: st.f_blocks.saturating_mul(bs),
        free: st.f_bfree.saturating_mul(bs),
        avail: st.f_bavail.saturating_mul(bs),
        inodes: st.f_files,
        inodes_free: st.f_ffree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nomadlet-sysfd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn walks_by_fd_without_following_links() {
        let d = scratch("walk");
        std::fs::write(d.join("f"), b"hello").unwrap();
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        mkfifo(&d.join("p"), 0o600).unwrap();
        let dir = open(&d, OFlags::RDONLY | OFlags::DIRECTORY).unwrap();

        let f = lstat_at(&dir, c"f").unwrap();
        assert!(f.is_regular() && f.st_size == 5 && f.st_nlink == 1);
        let l = lstat_at(&dir, c"l").unwrap();
        assert!(l.is_symlink());
        let link = openat(&dir, c"l", OFlags::PATH | OFlags::NOFOLLOW, 0).unwrap();
        assert!(fstat(&link).unwrap().is_symlink());
        assert_eq!(readlink_fd(&link, 4096).unwrap(), b"f");
        let e = openat(&dir, c"l", OFlags::RDONLY | OFlags::NOFOLLOW, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let by_fd = openat(&dir, c"f", OFlags::RDONLY, 0).unwrap();
        assert!(fstat(&by_fd).unwrap().same_inode(&f));

        let mut names = read_dir(&dir).unwrap();
        names.sort();
        assert_eq!(names, [c"f", c"l", c"p"]);
        assert_eq!(
            read_dir(&dir).unwrap().len(),
            3,
            "a second listing starts over"
        );

        mkdirat(&dir, c"sub", 0o700).unwrap();
        let sub = openat(&dir, c"sub", OFlags::RDONLY | OFlags::DIRECTORY, 0).unwrap();
        fchmod(&sub, 0o711).unwrap();
        assert_eq!(fstat(&sub).unwrap().st_mode & 0o7777, 0o711);
        assert!(fstat(&sub).unwrap().is_dir());
        let e = mkdirat(&dir, c"sub", 0o700).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));

        let fpath = openat(&dir, c"f", OFlags::PATH | OFlags::NOFOLLOW, 0).unwrap();
        chmod_fd_path(&fpath, 0o640).unwrap();
        assert_eq!(lstat_at(&dir, c"f").unwrap().st_mode & 0o7777, 0o640);
        let me = fstat(&fpath).unwrap();
        chown_fd(&fpath, me.st_uid, me.st_gid).unwrap();

        unlinkat(&dir, c"l").unwrap();
        assert!(lstat_at(&dir, c"f").is_ok(), "the target stays");
        let e = lstat_at(&dir, c"l").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);

        let space = statvfs(&d).unwrap();
        assert!(space.total > 0 && space.avail <= space.total && space.free <= space.total);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
