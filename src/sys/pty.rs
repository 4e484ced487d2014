//! Pseudo-terminals for `alloc exec` with a tty: open a master/slave pair, size it
//! (`TIOCSWINSZ`), make the slave a child's controlling terminal; and `O_NONBLOCK` on the
//! pipes and masters an exec session multiplexes.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A master/slave pseudo-terminal pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: File,
}

/// Open a new pseudo-terminal (`posix_openpt`, `grantpt`, `unlockpt`, `ptsname_r`).
pub fn open() -> io::Result<Pty> {
    // SAFETY: posix_openpt returns a new fd we own, or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, open fd that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: plain calls on the fd we own; ptsname_r writes at most `name.len()` bytes,
    // NUL-terminated, into our buffer.
    unsafe {
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = libc::ptsname_r(fd, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    let path = std::path::PathBuf::from(path.to_string_lossy().into_owned());
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    Ok(Pty { master, slave })
}

/// Set the terminal's size (`TIOCSWINSZ` on the master); the foreground group gets SIGWINCH.
pub fn set_size(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer we pass.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make the child's stdin (the pty slave) its controlling terminal. Register after
/// `child::install`, whose hook starts the new session this needs.
pub fn install_controlling_tty(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child and makes one async-signal-safe ioctl on
    // fd 0, which `Command` has already set to the slave.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Turn `O_NONBLOCK` on for `fd`.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an fd the caller keeps open for the call.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
