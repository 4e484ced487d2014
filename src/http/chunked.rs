//! Reading a request body: Content-Length bodies and chunked bodies, both under the body
//! deadline and the handler's body limit, never buffering past either. Body bytes are taken
//! from the body budgets as they arrive (never as declared).

use std::time::Instant;

use super::budget::BodyBudget;
use super::limits::MAX_CHUNK_LINE;
use super::status::Status;
use super::wire::{ConnError, Phase, Wire};

const TOO_LARGE: &str = "request body too large";
/// The reason when the server's or the client's body budget is spent.
pub(crate) const BUSY: &str = "server busy, retry later";

/// Read exactly `len` body bytes (the caller has checked `len` against the limit), taking
/// each piece from `budget` as it arrives.
pub(crate) fn read_length(
    wire: &mut Wire,
    len: u64,
    budget: &mut BodyBudget,
    deadline: Instant,
) -> Result<Vec<u8>, ConnError> {
    let len = usize::try_from(len)
        .map_err(|_| ConnError::refuse(Status::CONTENT_TOO_LARGE, TOO_LARGE))?;
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    take_exact(wire, &mut body, len, budget, deadline)?;
    Ok(body)
}

/// Move `n` body bytes from the wire into `out`, reading as needed; each piece is taken from
/// `budget` before it is kept (503 when it cannot be).
fn take_exact(
    wire: &mut Wire,
    out: &mut Vec<u8>,
    mut n: usize,
    budget: &mut BodyBudget,
    deadline: Instant,
) -> Result<(), ConnError> {
    while n > 0 {
        if wire.buf.is_empty() && fill(wire, deadline)? == 0 {
            return Err(ConnError::Closed { partial: true });
        }
        let k = n.min(wire.buf.len());
        if !budget.take(k) {
            return Err(ConnError::refuse(Status::SERVICE_UNAVAILABLE, BUSY));
        }
        out.extend_from_slice(&wire.buf[..k]);
        wire.consume(k);
        n -= k;
    }
    Ok(())
}

/// The CRLF that ends a chunk's data (framing, not body: no budget).
fn expect_crlf(wire: &mut Wire, deadline: Instant) -> Result<(), ConnError> {
    while wire.buf.len() < 2 {
        if fill(wire, deadline)? == 0 {
            return Err(ConnError::Closed { partial: true });
        }
    }
    if &wire.buf[..2] != b"\r\n" {
        return Err(ConnError::refuse(
            Status::BAD_REQUEST,
            "invalid chunked encoding",
        ));
    }
    wire.consume(2);
    Ok(())
}

fn fill(wire: &mut Wire, deadline: Instant) -> Result<usize, ConnError> {
    wire.fill(deadline, Phase::Body)
}

/// One CRLF-terminated line (without the CRLF), at most [`MAX_CHUNK_LINE`] bytes.
fn read_line(wire: &mut Wire, deadline: Instant) -> Result<Vec<u8>, ConnError> {
    let mut searched = 0;
    loop {
        if let Some(i) = wire.buf[searched..].iter().position(|&b| b == b'\n') {
            let end = searched + i;
            if end == 0 || wire.buf[end - 1] != b'\r' {
                return Err(ConnError::refuse(
                    Status::BAD_REQUEST,
                    "invalid chunked encoding",
                ));
            }
            let line = wire.buf[..end - 1].to_vec();
            wire.consume(end + 1);
            return Ok(line);
        }
        searched = wire.buf.len();
        if searched > MAX_CHUNK_LINE {
            return Err(ConnError::refuse(
                Status::BAD_REQUEST,
                "invalid chunked encoding",
            ));
        }
        if fill(wire, deadline)? == 0 {
            return Err(ConnError::Closed { partial: true });
        }
    }
}

/// The size in a chunk-size line: 1 to 16 hex digits, then optional `;extensions`.
pub(crate) fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty()
        || (rest.iter().find(|&&b| b != b' ' && b != b'\t') == Some(&b';')
            && rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)));
    if !rest_ok {
        return None;
    }
    let s = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// Decode a chunked body; more than `limit` decoded bytes: 413 as soon as it is known; data
/// the body `budget` cannot hold as it arrives: 503. Trailer fields are read (bounded) and
/// dropped.
pub(crate) fn read_chunked(
    wire: &mut Wire,
    limit: usize,
    budget: &mut BodyBudget,
    max_trailer: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ConnError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(wire, deadline)?;
        let size = chunk_size(&line)
            .ok_or_else(|| ConnError::refuse(Status::BAD_REQUEST, "invalid chunk size"))?;
        if size == 0 {
            break;
        }
        if size > (limit - body.len()) as u64 {
            return Err(ConnError::refuse(Status::CONTENT_TOO_LARGE, TOO_LARGE));
        }
        take_exact(wire, &mut body, size as usize, budget, deadline)?;
        expect_crlf(wire, deadline)?;
    }
    let mut trailer = 0usize;
    loop {
        let line = read_line(wire, deadline)?;
        if line.is_empty() {
            return Ok(body);
        }
        trailer += line.len();
        if trailer > max_trailer {
            return Err(ConnError::refuse(
                Status::HEADER_FIELDS_TOO_LARGE,
                "request header fields too large",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"1aF"), Some(0x1af));
        assert_eq!(chunk_size(b"10;name=value"), Some(16));
        assert_eq!(chunk_size(b"10 ;x"), Some(16));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"-1"), None);
        assert_eq!(chunk_size(b"0x10"), None);
        assert_eq!(chunk_size(b"1 2"), None);
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(chunk_size(b"10000000000000000"), None);
        assert_eq!(chunk_size(b"5\x00"), None);
    }
}
