//! Parsing a request head with httparse: limits on size and field count, message framing
//! (Content-Length / chunked) with the anti-smuggling rules, connection options, and the
//! percent-decoded request target.

use super::method::Method;
use super::status::Status;
use super::wire::ConnError;

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// HTTP/1.x minor version (0 or 1).
    pub minor: u8,
    pub framing: Framing,
    /// What the request asks for; the server may still close.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

const BAD: &str = "malformed request";

fn bad(reason: &'static str) -> ConnError {
    ConnError::refuse(Status::BAD_REQUEST, reason)
}

fn too_large() -> ConnError {
    ConnError::refuse(
        Status::HEADER_FIELDS_TOO_LARGE,
        "request header fields too large",
    )
}

/// Try to parse a head from the start of `buf`. `Ok(None)`: more bytes are needed (and may
/// be read: the caller enforces `max_head_bytes` on the buffer). `Ok(Some((head, n)))`: the
/// head used the first `n` bytes.
pub(crate) fn parse_head(
    buf: &[u8],
    max_head_bytes: usize,
    max_headers: usize,
) -> Result<Option<(Head, usize)>, ConnError> {
    let mut fields = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut fields);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head_bytes {
                Err(too_large())
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(_) => return Err(bad(BAD)),
    };
    if n > max_head_bytes {
        return Err(too_large());
    }
    let method = Method::parse(req.method.ok_or_else(|| bad(BAD))?);
    let target = req.path.ok_or_else(|| bad(BAD))?;
    let minor = req.version.ok_or_else(|| bad(BAD))?;
    let (path, query) = decode_target(target)?;

    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| bad("invalid header value"))?;
        if value.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(bad("invalid header value"));
        }
        headers.push((h.name.to_string(), value.trim().to_string()));
    }

    let framing = framing(&headers)?;
    if framing == Framing::Chunked && minor == 0 {
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        return Err(bad("unsupported Transfer-Encoding"));
    }
    let mut close = false;
    let mut keep = false;
    let mut expect_continue = false;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            expect_continue = minor >= 1;
        }
    }
    let keep_alive = !close && (minor >= 1 || keep);
    Ok(Some((
        Head {
            method,
            path,
            query,
            headers,
            minor,
            framing,
            keep_alive,
            expect_continue,
        },
        n,
    )))
}

/// Content-Length and Transfer-Encoding, refusing every ambiguous combination.
fn framing(headers: &[(String, String)]) -> Result<Framing, ConnError> {
    let mut length: Option<u64> = None;
    let mut coding: Option<&str> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(bad("duplicate Content-Length"));
            }
            if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("invalid Content-Length"));
            }
            length = Some(value.parse().map_err(|_| bad("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if coding.is_some() {
                return Err(bad("unsupported Transfer-Encoding"));
            }
            coding = Some(value.as_str());
        }
    }
    match (length, coding) {
        (Some(_), Some(_)) => Err(bad("Content-Length with Transfer-Encoding")),
        (None, Some(c)) if c.trim().eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        (None, Some(_)) => Err(bad("unsupported Transfer-Encoding")),
        (Some(0), None) | (None, None) => Ok(Framing::None),
        (Some(n), None) => Ok(Framing::Length(n)),
    }
}

/// Split and decode the request target: origin-form `/path?query`, or absolute-form
/// `http://authority/path?query` with the scheme and authority dropped.
pub(crate) fn decode_target(target: &str) -> Result<(String, Vec<(String, String)>), ConnError> {
    let origin_form = if target.starts_with('/') {
        target.to_string()
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(bad("request target must start with /"));
        };
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => rest[i..].to_string(),
            Some(i) => format!("/{}", &rest[i..]),
            None => "/".to_string(),
        }
    };
    // A fragment is never sent by a well-behaved client; drop it as a browser would.
    let origin_form = match origin_form.split_once('#') {
        Some((before, _)) => before.to_string(),
        None => origin_form,
    };
    let (raw_path, raw_query) = match origin_form.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin_form.as_str(), None),
    };
    let path = percent_decode(raw_path, false).ok_or_else(|| bad("invalid escape in path"))?;
    let mut query = Vec::new();
    if let Some(q) = raw_query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k, true).ok_or_else(|| bad("invalid escape in query"))?;
            let v = percent_decode(v, true).ok_or_else(|| bad("invalid escape in query"))?;
            query.push((k, v));
        }
    }
    Ok((path, query))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode `%XX` escapes (and `+` as a space when `plus_is_space`); `None` for a broken
/// escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<Option<(Head, usize)>, ConnError>) -> u16 {
        match r {
            Ok(_) => 0,
            Err(ConnError::Refuse { status, .. }) => status.code(),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn parse(raw: &str) -> Result<Option<(Head, usize)>, ConnError> {
        parse_head(raw.as_bytes(), 16 * 1024, 100)
    }

    #[test]
    fn target_decoding_plus_is_space_only_in_query() {
        let (p, q) = decode_target("/a+b/c%20d?x=1+2&y=%41&z&&w=").unwrap_or_default();
        assert_eq!(p, "/a+b/c d");
        assert_eq!(
            q,
            vec![
                ("x".into(), "1 2".into()),
                ("y".into(), "A".into()),
                ("z".into(), "".into()),
                ("w".into(), "".into())
            ]
        );
        assert!(decode_target("/a%zz").is_err());
        assert!(decode_target("/a%4").is_err());
        assert!(decode_target("/a%ff").is_err());
        assert!(decode_target("/a?x=%ff").is_err());
        assert!(decode_target("a/b").is_err());
        assert!(decode_target("*").is_err());
        let (p, q) = decode_target("http://host:1/v1/x?a=b").unwrap_or_default();
        assert_eq!((p.as_str(), q.len()), ("/v1/x", 1));
        let (p, _) = decode_target("HTTP://host").unwrap_or_default();
        assert_eq!(p, "/");
        let (p, q) = decode_target("/x?a=1#frag?b=2").unwrap_or_default();
        assert_eq!((p.as_str(), q.len()), ("/x", 1));
        let (p, q) = decode_target("https://host?a=1").unwrap_or_default();
        assert_eq!((p.as_str(), q.len()), ("/", 1));
    }

    #[test]
    fn framing_rules_refuse_smuggling() {
        let cl_te = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(parse(cl_te)), 400);
        assert_eq!(
            status(parse(
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            status(parse("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse(
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            )),
            400
        );
        assert_eq!(status(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")), 400);
        assert_eq!(
            status(parse(
                "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n"
            )),
            400
        );
        assert_eq!(status(parse("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n")), 400);
        assert_eq!(status(parse("GET / HTTP/1.1\r\nX\x01: a\r\n\r\n")), 400);
        assert_eq!(status(parse("GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n")), 400);
        assert_eq!(
            status(parse("POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse(
                "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            status(parse("POST / HTTP/1.1\r\n Content-Length: 3\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse(
                "GET / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n"
            )),
            0
        );
    }

    #[test]
    fn head_limits_give_431() {
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..101 {
            many.push_str(&format!("h{i}: v\r\n"));
        }
        assert_eq!(status(parse(&many)), 431);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
        assert_eq!(status(parse(&long)), 431);
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
    }

    #[test]
    fn keep_alive_defaults_by_version() {
        let ka = |raw: &str| parse(raw).ok().flatten().map(|(h, _)| h.keep_alive);
        assert_eq!(ka("GET / HTTP/1.1\r\n\r\n"), Some(true));
        assert_eq!(
            ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"),
            Some(false)
        );
        assert_eq!(ka("GET / HTTP/1.0\r\n\r\n"), Some(false));
        assert_eq!(
            ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
            Some(true)
        );
    }
}
