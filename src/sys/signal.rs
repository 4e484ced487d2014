//! Waiting for a blocked signal with a deadline (`sigtimedwait`), so the main thread can do
//! periodic work between signals instead of keeping a thread of its own for it.

use std::time::Duration;

/// Wait up to `timeout` for one of the signals in `set` (which the calling thread must have
/// blocked). `Some(signal)` when one arrived, `None` when the time ran out.
pub fn wait_timeout(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid, initialised signal set and `ts` a valid timespec, both only
    // read; no siginfo is asked for (null is allowed).
    let rc = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    // -1: EAGAIN (timeout) or EINTR; the caller simply waits again.
    (rc > 0).then_some(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_without_a_signal() {
        // SAFETY: a zeroed sigset_t filled by sigemptyset/sigaddset.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            set
        };
        let t0 = std::time::Instant::now();
        assert_eq!(wait_timeout(&set, Duration::from_millis(20)), None);
        assert!(t0.elapsed() >= Duration::from_millis(20));
    }
}
