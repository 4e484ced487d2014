//! Cron expressions as Nomad's periodic jobs write them (hashicorp/cronexpr's syntax): 5
//! fields (minute hour day-of-month month day-of-week), 6 (… year) or 7 (second first), the
//! `@hourly`-style macros, lists, ranges, steps, `?`, month and weekday names. `L`, `W` and
//! `#` are refused with a clear error. The next launch is found in civil time of a named zone
//! (the system's zoneinfo through `jiff`), scanning at most [`MAX_SCAN_YEARS`] years.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The longest cron expression accepted (bytes).
pub const MAX_CRON_LEN: usize = 256;
/// The most comma-separated items one field may have.
pub const MAX_FIELD_ITEMS: usize = 64;
/// How far ahead the next launch is looked for: an expression that matches nothing sooner
/// (`0 0 30 2 *`) has no next launch.
pub const MAX_SCAN_YEARS: i16 = 8;
/// The last year a cron expression can name (cronexpr's bound).
pub const MAX_YEAR: i16 = 2099;
/// The first year a cron expression can name.
pub const MIN_YEAR: i16 = 1970;

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Why a cron expression or a zone name was refused (Nomad's `Invalid cron spec` and
/// `Invalid time zone` texts wrap it).
#[derive(Debug)]
pub enum CronError {
    /// Longer than [`MAX_CRON_LEN`].
    TooLong,
    /// `@something` that is not a known macro (the spec as written).
    UnknownMacro(String),
    /// Not 5, 6 or 7 fields.
    FieldCount(usize),
    /// More than [`MAX_FIELD_ITEMS`] items in the named field.
    TooManyItems(&'static str),
    /// A step that is not a positive number.
    InvalidStep { step: String, field: &'static str },
    /// A range whose start is after its end.
    InvalidRange { range: String, field: &'static str },
    /// A number outside the field's bounds.
    OutOfRange {
        value: u32,
        field: &'static str,
        min: u32,
        max: u32,
    },
    /// `L`, `W` or `#`.
    Unsupported { text: String, field: &'static str },
    /// Neither a number nor a name the field knows.
    InvalidValue { text: String, field: &'static str },
    /// A zone name with characters or components zone names do not have.
    InvalidZoneName,
    /// No such zone in the system's zoneinfo.
    UnknownZone { name: String, source: jiff::Error },
    /// `Local`, and the system's zone cannot be read.
    LocalZone(jiff::Error),
}

impl std::fmt::Display for CronError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CronError::TooLong => write!(f, "longer than {MAX_CRON_LEN} bytes"),
            CronError::UnknownMacro(spec) => write!(f, "unknown macro {spec:?}"),
            CronError::FieldCount(n) => write!(f, "{n} fields; a cron expression has 5, 6 or 7"),
            CronError::TooManyItems(field) => write!(f, "too many items in the {field} field"),
            CronError::InvalidStep { step, field } => {
                write!(f, "invalid step {step:?} in the {field} field")
            }
            CronError::InvalidRange { range, field } => {
                write!(f, "invalid range {range:?} in the {field} field")
            }
            CronError::OutOfRange {
                value,
                field,
                min,
                max,
            } => write!(
                f,
                "{value} is out of range for the {field} field ({min}-{max})"
            ),
            CronError::Unsupported { text, field } => {
                write!(
                    f,
                    "{text:?} in the {field} field: L, W and # are not supported"
                )
            }
            CronError::InvalidValue { text, field } => {
                write!(f, "invalid value {text:?} in the {field} field")
            }
            CronError::InvalidZoneName => f.write_str("invalid time zone name"),
            CronError::UnknownZone { name, .. } => write!(f, "unknown time zone {name}"),
            CronError::LocalZone(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CronError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CronError::UnknownZone { source, .. } | CronError::LocalZone(source) => Some(source),
            _ => None,
        }
    }
}

/// One parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    seconds: Vec<u8>,
    minutes: Vec<u8>,
    hours: Vec<u8>,
    /// Day of month 1..=31 (index = day).
    dom: [bool; 32],
    /// Month 1..=12 (index = month).
    months: [bool; 13],
    /// Weekday, 0 = Sunday.
    dow: [bool; 7],
    /// Day of month was `*` or `?`.
    dom_any: bool,
    /// Day of week was `*` or `?`.
    dow_any: bool,
    /// Inclusive year range and step (`*`: every year up to [`MAX_YEAR`]).
    years: Vec<i16>,
}

/// A field's allowed range and names.
struct FieldDef {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name stands for this number (months: 1, days: 0).
    name_base: u32,
    question: bool,
}

const F_SEC: FieldDef = FieldDef {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
    question: false,
};
const F_MIN: FieldDef = FieldDef {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
    question: false,
};
const F_HOUR: FieldDef = FieldDef {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    name_base: 0,
    question: false,
};
const F_DOM: FieldDef = FieldDef {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    name_base: 0,
    question: true,
};
const F_MONTH: FieldDef = FieldDef {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    name_base: 1,
    question: false,
};
const F_DOW: FieldDef = FieldDef {
    name: "day of week",
    min: 0,
    max: 7,
    names: &DAYS,
    name_base: 0,
    question: true,
};
const F_YEAR: FieldDef = FieldDef {
    name: "year",
    min: MIN_YEAR as u32,
    max: MAX_YEAR as u32,
    names: &[],
    name_base: 0,
    question: false,
};

/// The values a field selects (sorted, unique) and whether it was `*`/`?`.
fn parse_field(text: &str, def: &FieldDef) -> Result<(Vec<u32>, bool), CronError> {
    let items: Vec<&str> = text.split(',').collect();
    if items.len() > MAX_FIELD_ITEMS {
        return Err(CronError::TooManyItems(def.name));
    }
    let any = text == "*" || (def.question && text == "?");
    let mut out: Vec<u32> = Vec::new();
    for item in items {
        let (range, step) =
            match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        CronError::InvalidStep {
                            step: s.to_string(),
                            field: def.name,
                        }
                    })?;
                    (r, step)
                }
                None => (item, 1),
            };
        let (lo, hi) = if range == "*" || (def.question && range == "?") {
            (def.min, def.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, def)?, value(b, def)?)
        } else {
            let v = value(range, def)?;
            // `5/15`: from 5 to the end, every 15.
            (v, if step > 1 { def.max } else { v })
        };
        if lo > hi {
            return Err(CronError::InvalidRange {
                range: range.to_string(),
                field: def.name,
            });
        }
        let mut v = lo;
        while v <= hi {
            out.push(v);
            v += step;
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok((out, any))
}

fn value(text: &str, def: &FieldDef) -> Result<u32, CronError> {
    if let Ok(v) = text.parse::<u32>() {
        if (def.min..=def.max).contains(&v) {
            return Ok(v);
        }
        return Err(CronError::OutOfRange {
            value: v,
            field: def.name,
            min: def.min,
            max: def.max,
        });
    }
    let lower = text.to_ascii_lowercase();
    if let Some(i) = def.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + def.name_base);
    }
    if text.contains(['L', 'W', '#']) {
        return Err(CronError::Unsupported {
            text: text.to_string(),
            field: def.name,
        });
    }
    Err(CronError::InvalidValue {
        text: text.to_string(),
        field: def.name,
    })
}

impl Cron {
    /// Parse an expression (Nomad's `Invalid cron spec` text wraps the error).
    pub fn parse(spec: &str) -> Result<Cron, CronError> {
        if spec.len() > MAX_CRON_LEN {
            return Err(CronError::TooLong);
        }
        let spec = spec.trim();
        let expanded = match spec.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 * *".to_string(),
            "@monthly" => "0 0 0 1 * * *".to_string(),
            "@weekly" => "0 0 0 * * 0 *".to_string(),
            "@daily" | "@midnight" => "0 0 0 * * * *".to_string(),
            "@hourly" => "0 0 * * * * *".to_string(),
            s if s.starts_with('@') => return Err(CronError::UnknownMacro(spec.to_string())),
            _ => spec.to_string(),
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match f.len() {
            5 | 6 => ("0", &f[..]),
            7 => (f[0], &f[1..]),
            n => return Err(CronError::FieldCount(n)),
        };
        let year = rest.get(5).copied().unwrap_or("*");
        let (seconds, _) = parse_field(sec, &F_SEC)?;
        let (minutes, _) = parse_field(rest[0], &F_MIN)?;
        let (hours, _) = parse_field(rest[1], &F_HOUR)?;
        let (doms, dom_any) = parse_field(rest[2], &F_DOM)?;
        let (months, _) = parse_field(rest[3], &F_MONTH)?;
        let (dows, dow_any) = parse_field(rest[4], &F_DOW)?;
        let (years, _) = parse_field(year, &F_YEAR)?;
        let mut c = Cron {
            seconds: seconds.into_iter().map(|v| v as u8).collect(),
            minutes: minutes.into_iter().map(|v| v as u8).collect(),
            hours: hours.into_iter().map(|v| v as u8).collect(),
            dom: [false; 32],
            months: [false; 13],
            dow: [false; 7],
            dom_any,
            dow_any,
            years: years.into_iter().map(|v| v as i16).collect(),
        };
        for d in doms {
            c.dom[d as usize] = true;
        }
        for m in months {
            c.months[m as usize] = true;
        }
        for d in dows {
            c.dow[(d % 7) as usize] = true;
        }
        Ok(c)
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.dom[date.day() as usize];
        let dow = self.dow[date.weekday().to_sunday_zero_offset() as usize];
        match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first time strictly after `after` (Unix seconds) this expression names, in civil
    /// time of `tz`; `None` when there is none within [`MAX_SCAN_YEARS`] (or before 2100).
    pub fn next_after(&self, after: i64, tz: &TimeZone) -> Option<i64> {
        let start = Timestamp::from_second(after).ok()?.to_zoned(tz.clone());
        let from = start.date();
        let last_year = from.year().saturating_add(MAX_SCAN_YEARS).min(MAX_YEAR);
        for &year in self.years.iter().filter(|y| **y >= from.year()) {
            if year > last_year {
                return None;
            }
            for month in 1..=12i8 {
                if !self.months[month as usize] || (year, month) < (from.year(), from.month()) {
                    continue;
                }
                let Ok(first) = Date::new(year, month, 1) else {
                    continue;
                };
                for day in 1..=first.days_in_month() {
                    let Ok(date) = Date::new(year, month, day) else {
                        continue;
                    };
                    if date < from || !self.day_matches(date) {
                        continue;
                    }
                    if let Some(t) = self.first_in_day(date, after, tz) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    /// The first matching time of `date` after `after`.
    fn first_in_day(&self, date: Date, after: i64, tz: &TimeZone) -> Option<i64> {
        for &h in &self.hours {
            for &m in &self.minutes {
                for &s in &self.seconds {
                    let dt = DateTime::new(
                        date.year(),
                        date.month(),
                        date.day(),
                        h as i8,
                        m as i8,
                        s as i8,
                        0,
                    )
                    .ok()?;
                    let Ok(z) = tz.to_ambiguous_zoned(dt).compatible() else {
                        continue;
                    };
                    let t = z.timestamp().as_second();
                    if t > after {
                        return Some(t);
                    }
                }
            }
        }
        None
    }
}

/// A zone by its IANA name (`""` and `UTC` are UTC), from the system's zoneinfo. The name is
/// checked before any file is looked up: no `..` component, not absolute, only the
/// characters zone names use.
pub fn zone(name: &str) -> Result<TimeZone, CronError> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    if name == "Local" {
        return TimeZone::try_system().map_err(CronError::LocalZone);
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
    if !ok_chars
        || name.len() > 64
        || name.starts_with('/')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(CronError::InvalidZoneName);
    }
    TimeZone::get(name).map_err(|source| CronError::UnknownZone {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn five_six_and_seven_fields_and_macros() {
        let utc = TimeZone::UTC;
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            c.next_after(ts("2026-11-30T07:05:44Z"), &utc),
            Some(ts("2026-11-30T07:15:00Z"))
        );
        let c = Cron::parse("* * * * * * *").unwrap();
        assert_eq!(c.next_after(100, &utc), Some(101));
        let c = Cron::parse("@daily").unwrap();
        assert_eq!(
            c.next_after(ts("2026-11-30T00:00:00Z"), &utc),
            Some(ts("2026-12-01T00:00:00Z"))
        );
        let c = Cron::parse("0 9 * * MON-FRI").unwrap();
        // 2026-12-05 is a Saturday: the next is Monday the 7th.
        assert_eq!(
            c.next_after(ts("2026-12-04T10:00:00Z"), &utc),
            Some(ts("2026-12-07T09:00:00Z"))
        );
        let c = Cron::parse("0 0 1 jan * 2027").unwrap();
        assert_eq!(
            c.next_after(ts("2026-06-01T00:00:00Z"), &utc),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(c.next_after(ts("2027-06-01T00:00:00Z"), &utc), None);
        let c = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(c.next_after(0, &utc), None, "February 30th never comes");
    }

    #[test]
    fn day_of_month_and_weekday_together_match_either() {
        let c = Cron::parse("0 0 13 * FRI").unwrap();
        // 2026-12-04 is a Friday, before the 13th.
        assert_eq!(
            c.next_after(ts("2026-12-01T00:00:00Z"), &TimeZone::UTC),
            Some(ts("2026-12-04T00:00:00Z"))
        );
    }

    #[test]
    fn a_named_zone_shifts_the_launch() {
        let tz = zone("America/New_York").unwrap();
        let c = Cron::parse("0 9 * * *").unwrap();
        // 09:00 EST is 14:00 UTC.
        assert_eq!(
            c.next_after(ts("2026-12-01T00:00:00Z"), &tz),
            Some(ts("2026-12-01T14:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "0 0 L * *",
            "0 0 * * 1#2",
            "@fortnightly",
            "x * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cron::parse(&"1,".repeat(200)).is_err());
        for bad in [
            "../etc/passwd",
            "/etc/localtime",
            "Europe/../../x",
            "A B",
            "Nowhere/City",
        ] {
            assert!(zone(bad).is_err(), "{bad:?}");
        }
        assert!(zone("UTC").is_ok() && zone("").is_ok());
    }
}
