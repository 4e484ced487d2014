//! The request method, parsed once from the request line.

use std::fmt;

/// An HTTP method. Methods are case-sensitive (RFC 9110 §9.1): `get` is `Other("get")`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Options,
    Patch,
    /// Any other token the request line carried.
    Other(String),
}

impl Method {
    /// The method of a request-line token.
    pub fn parse(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }

    /// The token as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }

    /// A known method (not [`Method::Other`]).
    pub fn is_known(&self) -> bool {
        !matches!(self, Method::Other(_))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_parse_and_print_back_and_others_are_kept_as_sent() {
        for token in ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"] {
            let m = Method::parse(token);
            assert!(m.is_known(), "{token}");
            assert_eq!(m.to_string(), token);
        }
        assert_eq!(Method::parse("get"), Method::Other("get".into()));
        assert_eq!(Method::parse("PROPFIND").as_str(), "PROPFIND");
        assert!(!Method::parse("BREW").is_known());
    }
}
