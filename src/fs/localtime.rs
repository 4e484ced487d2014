//! RFC 3339 timestamps with nanoseconds in the agent's local zone, as Go's `time.Time` encodes.

/// Format seconds + nanoseconds since the epoch like Go's `time.RFC3339Nano` in local time:
/// trailing zeros of the fraction trimmed, `Z` for a zero offset.
pub fn rfc3339_nano_local(secs: i64, nanos: u32) -> String {
    // SAFETY: `tm` is plain data that localtime_r fills in; `t` is a valid time_t.
    let tm = unsafe {
        let t: libc::time_t = secs as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            libc::gmtime_r(&t, &mut tm);
            tm.tm_gmtoff = 0;
        }
        tm
    };
    format_tm(&tm, nanos)
}

fn format_tm(tm: &libc::tm, nanos: u32) -> String {
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    );
    if nanos > 0 {
        let frac = format!("{:09}", nanos.min(999_999_999));
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    let off = tm.tm_gmtoff;
    if off == 0 {
        out.push('Z');
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tm(off: i64) -> libc::tm {
        // SAFETY: zeroed tm is a valid value of this plain-data struct.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_year = 116;
        tm.tm_mon = 2;
        tm.tm_mday = 15;
        tm.tm_hour = 15;
        tm.tm_min = 40;
        tm.tm_sec = 56;
        tm.tm_gmtoff = off;
        tm
    }

    #[test]
    fn go_shapes() {
        assert_eq!(
            format_tm(&tm(-7 * 3600), 822238153),
            "2016-03-15T15:40:56.822238153-07:00"
        );
        assert_eq!(format_tm(&tm(0), 500_000_000), "2016-03-15T15:40:56.5Z");
        assert_eq!(format_tm(&tm(19800), 0), "2016-03-15T15:40:56+05:30");
    }

    #[test]
    fn local_conversion_runs() {
        let s = rfc3339_nano_local(0, 1);
        assert!(s.contains("T") && s.contains(".000000001"), "{s}");
    }
}
