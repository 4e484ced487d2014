//! What the per-task shim (`nomadlet task-shim`) needs from the kernel: its own session, a
//! FIFO for the agent's commands, a pidfd to wait for the task's exit inside its poll loop,
//! and `kill(2)` on the task (its process or its whole group).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Leave the agent's session and process group: a Ctrl-C on the agent's terminal, or a
/// service manager killing the agent's group, does not reach the shim.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid(2) takes no pointers.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `mkfifo(path, mode)`.
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    if unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd of `pid` (a child of this process): readable once it exited. `Unsupported` on
/// kernels before 5.3, where the caller falls back to a timed `try_wait`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, e));
        }
        return Err(e);
    }
    // SAFETY: the kernel just gave us this fd (pidfds are close-on-exec); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `kill(pid, sig)`; a negative `pid` is a process group.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid == 0 || pid == -1 || pid == 1 || pid == i32::MIN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing pid"));
    }
    // SAFETY: kill(2) takes plain integers.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn pidfd_becomes_readable_when_the_child_exits() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let fd = match pidfd_open(child.id() as i32) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let _ = child.wait();
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let mut set = crate::sys::poll::PollSet::new();
        set.push(fd.as_fd());
        assert_eq!(set.wait(Duration::from_secs(10)).unwrap(), 1);
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    #[test]
    fn kill_refuses_every_process_broadcasts() {
        for pid in [0, -1, 1] {
            assert!(kill(pid, 0).is_err());
        }
    }
}
