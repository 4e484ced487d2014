//! Wall-clock time as Nomad writes it: unix nanoseconds, RFC 3339 (through `src/time.rs`) and
//! Go's duration text.

/// RFC 3339 with nanoseconds for unix nanoseconds, in the local zone (`src/time.rs`).
pub fn rfc3339_ns(ns: i64) -> String {
    crate::time::rfc3339_unix(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// Go's `time.Duration.String()` for the durations in event messages (`15s`, `1m30s`, `250ms`).
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let ns = ns.unsigned_abs();
    let s = if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        trim_frac(ns as f64 / 1e3, "µs")
    } else if ns < 1_000_000_000 {
        trim_frac(ns as f64 / 1e6, "ms")
    } else {
        let total = ns as f64 / 1e9;
        let h = (total / 3600.0).floor() as u64;
        let m = ((total - h as f64 * 3600.0) / 60.0).floor() as u64;
        let sec = total - h as f64 * 3600.0 - m as f64 * 60.0;
        let sec = trim_frac(sec, "s");
        if h > 0 {
            format!("{h}h{m}m{sec}")
        } else if m > 0 {
            format!("{m}m{sec}")
        } else {
            sec
        }
    };
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

fn trim_frac(v: f64, unit: &str) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        assert!(rfc3339_ns(1_458_056_400_414_236_712).contains(":00.414236712"));
        assert_eq!(go_duration(15_000_000_000), "15s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_800_000_000_000), "30m0s");
        assert_eq!(go_duration(250_000_000), "250ms");
        assert_eq!(go_duration(86_400_000_000_000), "24h0m0s");
    }
}
