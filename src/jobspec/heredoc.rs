//! Heredocs in jobspecs (`data = <<EOH` … `EOH`, mostly in `template` blocks), rewritten to
//! the quoted strings they mean before the pre-scan sees the text, since the pre-scan refuses
//! heredocs (it cannot follow them lexically). Only the plain form is rewritten: an attribute
//! line `name = <<MARK` or `name = <<-MARK` whose body ends at a line holding only `MARK`;
//! anything else is left for the pre-scan to refuse. The rewritten attribute is followed by
//! as many empty lines as the heredoc spanned, so later line numbers do not move. Whatever
//! comes out is bounded and parsed exactly like hand-written text.

use std::borrow::Cow;

/// `name = <<MARK` / `name = <<-MARK`: (the text up to `<<`, indented?, marker).
fn opener(line: &str) -> Option<(&str, bool, &str)> {
    let (head, rest) = line.split_once("<<")?;
    let trimmed = head.trim();
    let name = trimmed.strip_suffix('=')?.trim_end();
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return None;
    }
    let (indent, marker) = match rest.strip_prefix('-') {
        Some(m) => (true, m.trim_end()),
        None => (false, rest.trim_end()),
    };
    let mut mc = marker.chars();
    let marker_ok = mc
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && mc.all(|c| c.is_ascii_alphanumeric() || c == '_');
    marker_ok.then_some((head, indent, marker))
}

/// A heredoc body as the body of a quoted HCL string (templates `${`/`%{` kept as they are).
fn quote(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 16);
    for c in body.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `text` with every plain heredoc attribute rewritten to a quoted string.
pub fn rewrite(text: &str) -> Cow<'_, str> {
    if !text.contains("<<") {
        return Cow::Borrowed(text);
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut changed = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let Some((head, indent, marker)) = opener(line) else {
            out.push(line.to_string());
            i += 1;
            continue;
        };
        let Some(end) = (i + 1..lines.len()).find(|&j| lines[j].trim() == marker) else {
            out.push(line.to_string());
            i += 1;
            continue;
        };
        let body_lines = &lines[i + 1..end];
        let strip = if indent {
            body_lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
                .min()
                .unwrap_or(0)
        } else {
            0
        };
        let mut body = String::new();
        for l in body_lines {
            body.push_str(
                l.get(strip..)
                    .unwrap_or_else(|| l.trim_start_matches([' ', '\t'])),
            );
            body.push('\n');
        }
        out.push(format!("{head}\"{}\"", quote(&body)));
        out.extend(std::iter::repeat_n(String::new(), end - i));
        changed = true;
        i = end + 1;
    }
    if changed {
        Cow::Owned(out.join("\n"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_heredocs_become_quoted_strings_and_keep_line_numbers() {
        let text = "a {\n  data = <<EOH\nline \"1\"\n  ${x}\nEOH\n  b = 1\n}\n";
        let out = rewrite(text);
        assert_eq!(
            out,
            "a {\n  data = \"line \\\"1\\\"\\n  ${x}\\n\"\n\n\n\n  b = 1\n}\n"
        );
        assert_eq!(out.lines().count(), text.lines().count());
        let out = rewrite("x = <<-EOT\n    one\n      two\n    EOT\n");
        assert_eq!(out, "x = \"one\\n  two\\n\"\n\n\n\n");
        // Not the plain form: left for the pre-scan to refuse.
        assert_eq!(rewrite("x = [<<EOT\nhi\nEOT\n]"), "x = [<<EOT\nhi\nEOT\n]");
        assert_eq!(rewrite("x = <<EOT\nno end\n"), "x = <<EOT\nno end\n");
    }
}
