//! Query-string conventions: Go's boolean parsing, `?pretty`, integers with Nomad's messages.

use crate::http::Request;

use super::ApiError;

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The text Go's `strconv.ParseBool` error carries.
pub fn go_bool_error(s: &str) -> String {
    format!("strconv.ParseBool: parsing {s:?}: invalid syntax")
}

/// The text Go's `strconv.ParseInt` error carries.
pub fn go_int_error(s: &str) -> String {
    if s.trim_start_matches(['-', '+'])
        .chars()
        .all(|c| c.is_ascii_digit())
        && !s.is_empty()
        && s != "-"
        && s != "+"
    {
        format!("strconv.ParseInt: parsing {s:?}: value out of range")
    } else {
        format!("strconv.ParseInt: parsing {s:?}: invalid syntax")
    }
}

/// `?pretty`: present with an empty value or anything but `0`.
pub fn wants_pretty(req: &Request) -> bool {
    req.query("pretty").map(|v| v != "0").unwrap_or(false)
}

/// A query parameter value that is not one of Go's booleans (the value as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotABool(pub String);

impl std::fmt::Display for NotABool {
    /// Go's `strconv.ParseBool` error text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&go_bool_error(&self.0))
    }
}

impl std::error::Error for NotABool {}

/// An optional boolean parameter; `Err` (with the value) when it does not parse.
pub fn opt_bool(req: &Request, name: &str) -> Result<Option<bool>, NotABool> {
    match req.query(name) {
        None => Ok(None),
        Some(v) => parse_go_bool(v)
            .map(Some)
            .ok_or_else(|| NotABool(v.to_string())),
    }
}

/// Nomad's common query parameters that every read validates (`stale`, `index`, `wait`,
/// `per_page`), with Nomad's messages.
pub fn check_common(req: &Request) -> Result<(), ApiError> {
    if let Some(v) = req.query("stale") {
        if !v.is_empty() && parse_go_bool(v).is_none() {
            return Err(ApiError::bad_request(
                "Expect `true` or `false` for `stale` query string parameter",
            ));
        }
    }
    if let Some(v) = req.query("index") {
        if v.parse::<u64>().is_err() {
            return Err(ApiError::bad_request("Invalid index"));
        }
    }
    if let Some(v) = req.query("wait") {
        if crate::config::parse_go_duration(v).is_none() {
            return Err(ApiError::bad_request("Invalid wait time"));
        }
    }
    if let Some(v) = req.query("per_page") {
        if v.parse::<i32>().is_err() {
            return Err(ApiError::bad_request(
                "Expect a number for `per_page` query string parameter",
            ));
        }
    }
    Ok(())
}

/// Case-insensitive lookup of a key in a JSON object, as Go's decoder matches field names.
pub fn get_ci<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<&'a serde_json::Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "true", "True", "TRUE"] {
            assert_eq!(parse_go_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "false", "False", "FALSE"] {
            assert_eq!(parse_go_bool(f), Some(false));
        }
        assert_eq!(parse_go_bool("yes"), None);
        assert_eq!(parse_go_bool("tRUE"), None);
    }

    #[test]
    fn go_int_errors() {
        assert_eq!(
            go_int_error(""),
            "strconv.ParseInt: parsing \"\": invalid syntax"
        );
        assert_eq!(
            go_int_error("abc"),
            "strconv.ParseInt: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            go_int_error("99999999999999999999"),
            "strconv.ParseInt: parsing \"99999999999999999999\": value out of range"
        );
    }
}
