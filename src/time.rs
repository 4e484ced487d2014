//! Go-compatible time text: RFC 3339 with nanoseconds in the local zone, and unix nanoseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch, now.
pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Nanoseconds since the unix epoch, now.
pub fn unix_now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// A random duration in `[0, max)` (Nomad's jitter on windows and waits).
pub fn jitter(max: std::time::Duration) -> std::time::Duration {
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return std::time::Duration::ZERO;
    }
    let r = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    std::time::Duration::from_millis(r % ms)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 7231 IMF-fixdate (HTTP's `Date`), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(t: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month as usize).clamp(1, 12) - 1],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The local zone's offset from UTC at `secs`, in seconds.
fn local_offset(secs: i64) -> i64 {
    crate::sys::tz::utc_offset(secs).unwrap_or(0)
}

/// Format like Go's `time.RFC3339Nano` in the local zone: trailing zeros of the fraction are
/// dropped, and UTC is written `Z`.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let s = -(d.as_secs() as i64);
            if d.subsec_nanos() > 0 {
                (s - 1, 1_000_000_000 - d.subsec_nanos())
            } else {
                (s, 0)
            }
        }
    };
    rfc3339_unix(secs, nanos)
}

/// `rfc3339_nanos` for a unix time given as seconds and nanoseconds (e.g. a file's mtime).
pub fn rfc3339_unix(secs: i64, nanos: u32) -> String {
    rfc3339_with_offset(secs, nanos, local_offset(secs))
}

/// The text for a unix time at a given offset from UTC, in seconds.
pub fn rfc3339_with_offset(secs: i64, nanos: u32, off: i64) -> String {
    let local = secs + off;
    let (y, mo, d) = civil_from_days(local.div_euclid(86_400));
    let sod = local.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    if off == 0 {
        out.push('Z');
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.abs();
        out.push_str(&format!("{sign}{:02}:{:02}", a / 3600, (a / 60) % 60));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn rfc3339_matches_go() {
        assert_eq!(
            rfc3339_with_offset(1_503_528_434, 695_408_057, 0),
            "2017-08-23T22:47:14.695408057Z"
        );
        assert_eq!(rfc3339_with_offset(0, 0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_with_offset(1_458_056_400, 414_236_712, -7 * 3600),
            "2016-03-15T08:40:00.414236712-07:00"
        );
        assert_eq!(
            rfc3339_with_offset(0, 500_000_000, 5 * 3600 + 1800),
            "1970-01-01T05:30:00.5+05:30"
        );
    }

    #[test]
    fn rfc3339_shape() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_450_000);
        let s = rfc3339_nanos(t);
        assert!(s.contains(".12345"), "{s}");
        assert!(s.starts_with("2023-11-1"), "{s}");
    }
}
