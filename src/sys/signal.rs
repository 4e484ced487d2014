//! Signals for the main thread: block a set (so no handler ever runs), then wait for one with
//! a deadline (`sigtimedwait`), so the main thread can do periodic work between signals
//! instead of keeping a thread of its own for it.
//!
//! Raw libc: rustix offers the signal mask and `sigtimedwait` only in its `runtime` module,
//! which is for implementing a libc (unsafe, outside its semver promise); glibc reserves
//! signals of its own that those raw calls would not respect.

use std::io;
use std::time::Duration;

/// A set of signals (`sigset_t`).
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// The set holding exactly `signals`.
    pub fn of(signals: &[i32]) -> io::Result<SignalSet> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &sig in signals {
            // SAFETY: as above; an invalid signal number is reported, not UB.
            if unsafe { libc::sigaddset(&mut set, sig) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalSet(set))
    }

    /// Block these signals in the calling thread (and so in every thread it spawns later).
    /// Child processes get an empty mask from std (and from `sys::child`).
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: a valid, initialised set that is only read; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

/// Wait up to `timeout` for one of the signals in `set` (which the calling thread must have
/// blocked). `Some(signal)` when one arrived, `None` when the time ran out.
pub fn wait_timeout(set: &SignalSet, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid, initialised signal set and `ts` a valid timespec, both only
    // read; no siginfo is asked for (null is allowed).
    let rc = unsafe { libc::sigtimedwait(&set.0, std::ptr::null_mut(), &ts) };
    // -1: EAGAIN (timeout) or EINTR; the caller simply waits again.
    (rc > 0).then_some(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_without_a_signal() {
        let set = SignalSet::of(&[libc::SIGUSR2]).expect("set");
        let t0 = std::time::Instant::now();
        assert_eq!(wait_timeout(&set, Duration::from_millis(20)), None);
        assert!(t0.elapsed() >= Duration::from_millis(20));
        assert!(SignalSet::of(&[1000]).is_err(), "no such signal");
    }

    #[test]
    fn a_blocked_signal_is_taken_by_the_wait() {
        // On a thread of its own: the mask is per thread, and raise() signals only the
        // calling thread, so no other test thread is touched.
        std::thread::spawn(|| {
            let set = SignalSet::of(&[libc::SIGUSR1]).expect("set");
            set.block().expect("block");
            // SAFETY: raise sends to the calling thread, which has SIGUSR1 blocked, so no
            // handler (or default action) runs; the wait below takes it.
            assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
            assert_eq!(
                wait_timeout(&set, Duration::from_secs(5)),
                Some(libc::SIGUSR1)
            );
        })
        .join()
        .expect("signal thread");
    }
}
