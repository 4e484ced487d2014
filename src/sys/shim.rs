//! What the per-task shim (`nomadlet task-shim`) needs from the kernel: its own session, a
//! FIFO for the agent's commands, a pidfd to wait for the task's exit inside its poll loop,
//! and `kill(2)` on the task (its process or its whole group).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Leave the agent's session and process group: a Ctrl-C on the agent's terminal, or a
/// service manager killing the agent's group, does not reach the shim.
pub fn new_session() -> io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// `mkfifo(path, mode)`.
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    super::fd::mkfifo(path, mode)
}

/// A pidfd of `pid` (a child of this process): readable once it exited. `Unsupported` on
/// kernels before 5.3, where the caller falls back to a timed `try_wait`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid.max(0))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok(fd),
        Err(e) if e == rustix::io::Errno::NOSYS => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            io::Error::from(e),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `kill(pid, sig)`; a negative `pid` is a process group.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid == 0 || pid == -1 || pid == 1 || pid == i32::MIN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing pid"));
    }
    if pid < 0 {
        super::process::kill_group(-pid, sig)
    } else {
        super::process::kill(pid, sig)
    }
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
