//! The local time zone's offset from UTC (`localtime_r`), for times written in local time.
//!
//! Raw libc: the zone comes from glibc's reading of `TZ` and `/etc/localtime`; rustix has no
//! time-zone support.

/// The local zone's offset from UTC at `secs` (Unix time), in seconds east; `None` when the
/// C library cannot convert that time.
pub fn utc_offset(secs: i64) -> Option<i64> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: tm is plain data (integers and a pointer to a static zone name); all-zero is a
    // valid value that localtime_r overwrites.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t we own and a tm we own exclusively; localtime_r is
    // the thread-safe variant.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return None;
    }
    Some(tm.tm_gmtoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_within_a_day() {
        for secs in [0, 1_700_000_000, -86_400] {
            let off = utc_offset(secs).expect("convertible");
            assert!(off.abs() <= 26 * 3600, "{off}");
        }
        assert_eq!(utc_offset(i64::MAX), None, "year out of range");
    }
}
