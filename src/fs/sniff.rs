//! Content-type sniffing: a small hand-written subset of Go's `http.DetectContentType`, and the
//! rewrite that keeps task-written HTML from ever being served as HTML.

/// How many leading bytes are sniffed.
pub const SNIFF_LEN: usize = 512;

const HTML_TAGS: &[&[u8]] = &[
    b"<!DOCTYPE HTML",
    b"<HTML",
    b"<HEAD",
    b"<SCRIPT",
    b"<IFRAME",
    b"<H1",
    b"<DIV",
    b"<FONT",
    b"<TABLE",
    b"<A",
    b"<STYLE",
    b"<TITLE",
    b"<B",
    b"<BODY",
    b"<BR",
    b"<P",
    b"<!--",
];

const MAGIC: &[(&[u8], &str)] = &[
    (b"%PDF-", "application/pdf"),
    (b"%!PS-Adobe-", "application/postscript"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"BM", "image/bmp"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"OggS\x00", "application/ogg"),
    (b"ID3", "audio/mpeg"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
    (b"\x1f\x8b\x08", "application/x-gzip"),
    (b"PK\x03\x04", "application/zip"),
    (b"Rar!\x1a\x07\x00", "application/x-rar-compressed"),
    (b"Rar!\x1a\x07\x01\x00", "application/x-rar-compressed"),
    (b"\x00asm", "application/wasm"),
];

fn is_ws(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0c | b'\r' | b' ')
}

fn is_tag_end(b: u8) -> bool {
    b == b' ' || b == b'>'
}

/// Go's `http.DetectContentType` for the common cases.
pub fn detect(data: &[u8]) -> &'static str {
    let data = &data[..data.len().min(SNIFF_LEN)];
    if data.starts_with(b"\xfe\xff") {
        return "text/plain; charset=utf-16be";
    }
    if data.starts_with(b"\xff\xfe") {
        return "text/plain; charset=utf-16le";
    }
    if data.starts_with(b"\xef\xbb\xbf") {
        return "text/plain; charset=utf-8";
    }
    let start = data.iter().position(|b| !is_ws(*b)).unwrap_or(data.len());
    let trimmed = &data[start..];
    for tag in HTML_TAGS {
        if trimmed.len() > tag.len()
            && trimmed[..tag.len()].eq_ignore_ascii_case(tag)
            && is_tag_end(trimmed[tag.len()])
        {
            return "text/html; charset=utf-8";
        }
    }
    if trimmed.starts_with(b"<?xml") {
        return "text/xml; charset=utf-8";
    }
    if data.len() >= 14 && data.starts_with(b"RIFF") && &data[8..14] == b"WEBPVP" {
        return "image/webp";
    }
    for (magic, ct) in MAGIC {
        if data.starts_with(magic) {
            return ct;
        }
    }
    let binary = data
        .iter()
        .any(|b| matches!(b, 0x00..=0x08 | 0x0b | 0x0e..=0x1a | 0x1c..=0x1f));
    if binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// The Content-Type `fs/stat` reports: `.json` paths are JSON, others are sniffed.
pub fn stat_content_type(path: &str, head: &[u8]) -> &'static str {
    if path.ends_with(".json") {
        "application/json"
    } else {
        detect(head)
    }
}

/// The Content-Type `cat`/`readat` serve: never a type a browser would render as a page
/// (Nomad PR #7487 rewrites HTML; XML is rewritten too, since an SVG can carry script).
pub fn untrusted_content_type(path: &str, head: &[u8]) -> &'static str {
    match stat_content_type(path, head) {
        t if t.starts_with("text/html")
            || t.starts_with("text/xhtml")
            || t.starts_with("text/xml") =>
        {
            "text/plain; charset=utf-8"
        }
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_types() {
        assert_eq!(detect(b"hello world\n"), "text/plain; charset=utf-8");
        assert_eq!(detect(b""), "text/plain; charset=utf-8");
        assert_eq!(detect(b"  <html><body>x"), "text/html; charset=utf-8");
        assert_eq!(detect(b"<!DOCTYPE html>"), "text/html; charset=utf-8");
        assert_eq!(detect(b"<htmlx"), "text/plain; charset=utf-8");
        assert_eq!(detect(b"\x89PNG\r\n\x1a\nxxxx"), "image/png");
        assert_eq!(
            detect(b"\x7fELF\x02\x01\x01\x00"),
            "application/octet-stream"
        );
        assert_eq!(detect(b"\x1f\x8b\x08\x00"), "application/x-gzip");
        assert_eq!(
            detect(b"<?xml version=\"1.0\"?><svg/>"),
            "text/xml; charset=utf-8"
        );
    }

    #[test]
    fn untrusted_never_html() {
        assert_eq!(
            untrusted_content_type("a.html", b"<html>hi"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            untrusted_content_type("a.svg", b"<?xml version=\"1.0\"?><svg onload=x>"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            untrusted_content_type("a.svg", b"<svg onload=alert(1)>"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(untrusted_content_type("x.json", b"{}"), "application/json");
    }
}
