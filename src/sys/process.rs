//! Signals to processes and process groups (`kill(2)`), the kernel's clock tick and page
//! size for reading `/proc`, and the calling thread's scheduling priority.

use std::io;

use rustix::process::{Pid, Signal};

fn invalid() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// A real process or group id (> 0): never "every process" or "my own group".
fn pid(raw: i32) -> io::Result<Pid> {
    if raw <= 0 {
        return Err(invalid());
    }
    Pid::from_raw(raw).ok_or_else(invalid)
}

/// A named signal (`SIGHUP` .. `SIGSYS`); 0 is the existence probe and handled apart.
fn signal(raw: i32) -> io::Result<Signal> {
    Signal::from_named_raw(raw).ok_or_else(invalid)
}

/// `kill(pid, sig)`; `sig` 0 only checks that the process exists and may be signalled.
pub fn kill(pid_raw: i32, sig: i32) -> io::Result<()> {
    let p = pid(pid_raw)?;
    if sig == 0 {
        return Ok(rustix::process::test_kill_process(p)?);
    }
    Ok(rustix::process::kill_process(p, signal(sig)?)?)
}

/// `kill(-pgid, sig)`: every process of the group `pgid`.
pub fn kill_group(pgid: i32, sig: i32) -> io::Result<()> {
    let p = pid(pgid)?;
    if sig == 0 {
        return Ok(rustix::process::test_kill_process_group(p)?);
    }
    Ok(rustix::process::kill_process_group(p, signal(sig)?)?)
}

/// The nice value of background work that must not take CPU from requests.
pub const BACKGROUND_NICE: i32 = 19;

/// Lower the calling thread's priority to [`BACKGROUND_NICE`] (Linux keeps nice per thread:
/// `setpriority(PRIO_PROCESS, 0)` is this thread only). Best effort: the work runs anyway.
pub fn background_thread() {
    if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        log::debug!("cannot lower this thread's priority: {e}");
    }
}

/// The size of a memory page in bytes.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Clock ticks per second (`USER_HZ`), the unit of `/proc/<pid>/stat` CPU times.
pub fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_a_child_and_bad_targets_are_refused() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        kill(pid, 0).expect("a live child can be signalled");
        kill(pid, libc::SIGKILL).expect("kill");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(
            kill(0, libc::SIGTERM).unwrap_err().raw_os_error(),
            Some(libc::EINVAL),
            "never the agent's own group"
        );
        assert!(kill_group(-5, libc::SIGTERM).is_err());
        assert!(kill(pid, 1000).is_err());
        assert!(page_size() >= 4096 && page_size().is_power_of_two());
        assert!(clock_ticks() > 0);
    }
}
