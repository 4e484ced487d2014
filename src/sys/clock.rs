//! `CLOCK_MONOTONIC` as a number: std's `Instant` reads the same clock but keeps its value
//! opaque, and systemd's `MONOTONIC_USEC=` wants the raw microseconds.

/// `CLOCK_MONOTONIC` now, in microseconds (0 if the clock cannot be read).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own and pass by pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_monotonic_and_nonzero() {
        let a = super::monotonic_usec();
        let b = super::monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
