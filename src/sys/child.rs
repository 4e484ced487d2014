//! What a forked task process does before `exec`, in this order: join its cgroup(s) by writing
//! `0` to `cgroup.procs` files the parent opened, start a new session, clear the signal mask and
//! dispositions, then drop to the task's user. Only async-signal-safe calls on pre-opened fds.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// What the child sets up for itself between `fork` and `exec`.
pub struct ChildSetup {
    /// `cgroup.procs` of the task's cgroup in every hierarchy, opened `O_WRONLY | O_CLOEXEC`
    /// by the agent (so nothing is resolved after the fork, and exec closes them).
    pub cgroup_procs: Vec<OwnedFd>,
    /// `(uid, gid)` to switch to, after joining the cgroups (which needs the agent's rights).
    pub user: Option<(u32, u32)>,
}

/// Install the setup as the command's `pre_exec` hook. The fds are closed in the agent when
/// the command is dropped.
pub fn install(cmd: &mut Command, setup: ChildSetup) {
    let ChildSetup { cgroup_procs, user } = setup;
    // SAFETY: the hook runs in the forked child of a multi-threaded process, so it only makes
    // async-signal-safe system calls (write, setsid, sigprocmask, signal, setgroups, setgid,
    // setuid) on memory and fds that were set up before the fork; it allocates nothing
    // (`io::Error::last_os_error` only reads errno).
    unsafe {
        cmd.pre_exec(move || {
            // First, before anything of the task can run: into the task's cgroups, so no
            // process it forks can start outside them.
            for fd in &cgroup_procs {
                let n = libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if n != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent blocks SIGINT/SIGTERM (it takes them with sigtimedwait) and may itself have
            // been started with signals ignored; both survive exec. A task starts clean so its
            // KillSignal works.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if let Some((uid, gid)) = user {
                // As std does for `Command::uid`: no supplementary groups of the agent.
                if libc::setgroups(0, std::ptr::null()) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(gid) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(uid) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
