//! Output in the `nomad` CLI's layout: `Key = Value` lists, space-aligned tables (columnize
//! with two spaces between columns), short IDs, times as RFC 3339 seconds and "5s ago".

use serde_json::Value;

/// Short IDs are the first 8 characters, as `nomad` prints them without `-verbose`.
pub const SHORT_ID: usize = 8;

/// The ID as printed: full with `-verbose`, else its first [`SHORT_ID`] characters.
pub fn id(s: &str, verbose: bool) -> String {
    if verbose {
        s.to_string()
    } else {
        s.chars().take(SHORT_ID).collect()
    }
}

/// Rows of `|`-separated cells, aligned with two spaces between columns (the last column is
/// not padded).
pub fn table(rows: &[String]) -> String {
    let cells: Vec<Vec<&str>> = rows.iter().map(|r| r.split('|').collect()).collect();
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                let pad = widths[i] - c.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `Key = Value` lines aligned on the `=`, as Nomad's `formatKV`.
pub fn kv(rows: &[(&str, String)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let line = format!("{k}{} = {v}", " ".repeat(w - k.chars().count()));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A unix time in nanoseconds as local RFC 3339 seconds (`N/A` for zero).
pub fn time_ns(ns: i64) -> String {
    if ns <= 0 {
        return "N/A".into();
    }
    crate::time::rfc3339_unix(ns.div_euclid(1_000_000_000), 0)
}

/// An RFC 3339 time string (as task states carry them) reduced to seconds; `N/A` if unset.
pub fn time_str(s: &str) -> String {
    if s.is_empty() || s.starts_with("0001-01-01") {
        return "N/A".into();
    }
    match s.split_once('.') {
        // Drop the fraction but keep the zone.
        Some((head, tail)) => {
            let zone = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}{zone}")
        }
        None => s.to_string(),
    }
}

/// How long ago a unix time in nanoseconds was, as Nomad's `prettyTimeDiff` ("1m5s ago").
pub fn ago(ns: i64) -> String {
    if ns <= 0 {
        return String::new();
    }
    let now = crate::time::unix_now_nanos();
    let secs = ((now - ns) / 1_000_000_000).max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let parts: Vec<String> = [(d, "d"), (h, "h"), (m, "m"), (s, "s")]
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if parts.is_empty() {
        "0s ago".into()
    } else {
        format!("{} ago", parts.join(""))
    }
}

/// A string member, `""` when absent.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// An integer member, 0 when absent.
pub fn n(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// `<none>` for an empty text, as Nomad prints it.
pub fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_lists_align_like_nomads() {
        assert_eq!(
            table(&["ID|Type|Status".into(), "hello|service|running".into()]),
            "ID     Type     Status\nhello  service  running\n"
        );
        assert_eq!(
            kv(&[("ID", "x".into()), ("Node Pool", "default".into())]),
            "ID        = x\nNode Pool = default\n"
        );
        assert_eq!(
            time_str("2024-01-02T03:04:05.123456Z"),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(time_str("0001-01-01T00:00:00Z"), "N/A");
        let now = crate::time::unix_now_nanos();
        assert_eq!(ago(now - 65_000_000_000), "1m5s ago");
    }
}
