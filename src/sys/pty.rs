//! Pseudo-terminals for `alloc exec` with a tty, on rustix: open a master/slave pair, size it
//! (`TIOCSWINSZ`), make the slave a child's controlling terminal (`TIOCSCTTY`, in a
//! `pre_exec` hook: the one `unsafe` here); and `O_NONBLOCK` on the pipes and masters an exec
//! session multiplexes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::pty::OpenptFlags;

/// A master/slave pseudo-terminal pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: File,
}

/// Open a new pseudo-terminal (`posix_openpt`, `grantpt`, `unlockpt`, `ptsname`).
pub fn open() -> io::Result<Pty> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(name.into_bytes()));
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    Ok(Pty { master, slave })
}

/// Set the terminal's size on the master; the foreground group gets SIGWINCH.
pub fn set_size(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, ws)?;
    Ok(())
}

/// Make the child's stdin (the pty slave) its controlling terminal. Register after
/// `child::install`, whose hook starts the new session this needs.
pub fn install_controlling_tty(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child and makes one system call (an ioctl, which is
    // async-signal-safe) on fd 0, which `Command` has already set to the slave and which
    // stays open for the call; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let stdin = BorrowedFd::borrow_raw(0);
            rustix::process::ioctl_tiocsctty(stdin)?;
            Ok(())
        });
    }
}

/// Turn `O_NONBLOCK` on for `fd`.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true)?;
    Ok(())
}
