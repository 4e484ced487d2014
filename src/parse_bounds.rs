//! Cheap lexical pre-scans that bound nesting depth and expression size of request-fed text
//! BEFORE a recursive parser (hcl-rs, serde_json) sees it, so a stack overflow is impossible
//! rather than caught. Shared by ACL policies and JSON request bodies; meant for jobspec and
//! agent-config HCL too.
//!
//! Soundness: each scan over-approximates what the parser could recurse on. The HCL scan tracks
//! the lexical contexts hcl-edit (hcl-rs's parser) has — code, quoted string (which may span
//! lines), `${`/`%{` template code, comments — with hcl-edit's own transitions (`"`, `\`
//! escapes, `$${`/`%%{` escapes, `#`, `//`, `/* */`), so the scan is in code wherever the
//! parser could be. Heredocs and `%{` template directives are refused: hcl-edit tries a
//! heredoc's first line as template before as its end marker, and parses a directive's body
//! as a template that ignores the closing `"`; a lexical scan cannot follow either, and no
//! policy needs them. Wherever the views could still differ the scan counts more: non-ASCII text is never
//! part of an identifier (so `-` after it counts), and an unbalanced closer is refused outright
//! (the parser would refuse it too).

use std::fmt;

/// How much nesting and how many operators one kind of HCL document may have.
///
/// hcl-rs (hcl-edit's winnow parser) recurses per nesting level and per operator. Measured
/// (`tests::measure_stack`, debug and release alike): about 7 KiB of stack per level of `[`,
/// `{`, `f(`, blocks; about 8 KiB per nested `%{ if }` directive and 2.5–5 KiB per operator.
/// So a document within `limits` needs at most about `7 KiB × max_depth + 8 KiB ×
/// max_operators` plus a few KiB; pick limits that keep this at most half the smallest thread
/// stack that parses it (coverage instrumentation and future hcl-rs versions grow frames).
#[derive(Clone, Copy, Debug)]
pub struct HclLimits {
    /// Deepest nesting of `(`, `[`, `{`, quoted strings and `${` template interpolations.
    pub max_depth: usize,
    /// Most expression operators (unary, binary, conditional `?`/`:`, `=>`) in the whole
    /// document.
    pub max_operators: usize,
}

/// Deepest HCL nesting an ACL policy may have. Policies need 3 (block, list, string).
pub const HCL_MAX_DEPTH: usize = 10;

/// Most HCL operators an ACL policy may have. Policies need none.
pub const HCL_MAX_OPERATORS: usize = 4;

/// The bounds for ACL policies: about 10 × 7 + 4 × 8 = 102 KiB of parser stack at worst,
/// proven to fit a 256 KiB thread by `tests::worst_cases_fit_a_small_stack` and fuzzed on
/// one (`fuzz/`, target `hcl_policy`).
pub const ACL_POLICY_LIMITS: HclLimits = HclLimits {
    max_depth: HCL_MAX_DEPTH,
    max_operators: HCL_MAX_OPERATORS,
};

/// Deepest nesting of JSON arrays and objects accepted in a request body. Nomad's job JSON
/// needs about 10 plus whatever a task's `Config` nests; serde_json itself stops at 128.
pub const JSON_MAX_DEPTH: usize = 64;

/// Why a text was refused before parsing, with where (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundsError {
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for BoundsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "At {}:{}: {}", self.line, self.column, self.reason)
    }
}

impl std::error::Error for BoundsError {}

fn error_at(text: &[u8], pos: usize, reason: String) -> BoundsError {
    let upto = &text[..pos.min(text.len())];
    let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = upto.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&upto[line_start..]).chars().count() + 1;
    BoundsError {
        line,
        column,
        reason,
    }
}

fn too_deep(text: &[u8], pos: usize, limit: usize) -> BoundsError {
    error_at(text, pos, format!("nesting deeper than {limit} levels"))
}

/// One open construct of the HCL scan.
#[derive(Debug, PartialEq, Eq)]
enum Open {
    Paren,
    Bracket,
    Brace,
    /// `${`: code up to the matching `}`.
    Interp,
    Quoted,
}

struct HclScan<'a> {
    text: &'a [u8],
    limits: HclLimits,
    stack: Vec<Open>,
    operators: usize,
}

impl HclScan<'_> {
    fn at(&self, i: usize) -> u8 {
        self.text.get(i).copied().unwrap_or(0)
    }

    fn push(&mut self, open: Open, pos: usize) -> Result<(), BoundsError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(too_deep(self.text, pos, self.limits.max_depth));
        }
        self.stack.push(open);
        Ok(())
    }

    fn operator(&mut self, pos: usize) -> Result<(), BoundsError> {
        self.operators += 1;
        if self.operators > self.limits.max_operators {
            return Err(error_at(
                self.text,
                pos,
                format!("more than {} operators", self.limits.max_operators),
            ));
        }
        Ok(())
    }

    /// `${`, `%{` (and their `$${`, `%%{` escapes) inside a string at `i`; returns
    /// how many bytes were consumed, 0 when there is none. A `%{` directive is refused:
    /// hcl-edit parses a directive's body as a template that does not end at the closing
    /// `"` (found by fuzzing: `x = "%{if a}"` followed by more `%{if` nests without bound).
    fn template_start(&mut self, i: usize) -> Result<usize, BoundsError> {
        let (b, n1, n2) = (self.at(i), self.at(i + 1), self.at(i + 2));
        if (b == b'$' || b == b'%') && n1 == b && n2 == b'{' {
            return Ok(3);
        }
        if b == b'%' && n1 == b'{' {
            return Err(error_at(
                self.text,
                i,
                "template directives are not allowed here".into(),
            ));
        }
        if b == b'$' && n1 == b'{' {
            self.push(Open::Interp, i)?;
            return Ok(2);
        }
        Ok(0)
    }

    fn close(&mut self, i: usize, c: u8) -> Result<(), BoundsError> {
        let ok = matches!(
            (self.stack.last(), c),
            (Some(Open::Paren), b')')
                | (Some(Open::Bracket), b']')
                | (Some(Open::Brace), b'}')
                | (Some(Open::Interp), b'}')
        );
        if !ok {
            return Err(error_at(
                self.text,
                i,
                format!("unbalanced {:?}", char::from(c)),
            ));
        }
        self.stack.pop();
        Ok(())
    }

    /// One step in code context; returns the next position.
    fn code(&mut self, i: usize) -> Result<usize, BoundsError> {
        let c = self.at(i);
        let next = self.at(i + 1);
        let line_end = |from: usize| {
            self.text[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.text.len(), |p| from + p)
        };
        Ok(match c {
            b'#' => line_end(i),
            b'/' if next == b'/' => line_end(i),
            b'/' if next == b'*' => match self.text[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(p) => i + 2 + p + 2,
                None => {
                    return Err(error_at(self.text, i, "unterminated comment".into()));
                }
            },
            b'"' => {
                self.push(Open::Quoted, i)?;
                i + 1
            }
            b'<' if next == b'<' => {
                return Err(error_at(
                    self.text,
                    i,
                    "heredocs are not allowed here".into(),
                ));
            }
            b'(' => {
                self.push(Open::Paren, i)?;
                i + 1
            }
            b'[' => {
                self.push(Open::Bracket, i)?;
                i + 1
            }
            b'{' => {
                self.push(Open::Brace, i)?;
                i + 1
            }
            b')' | b']' | b'}' => {
                self.close(i, c)?;
                i + 1
            }
            b'=' if next == b'=' || next == b'>' => {
                self.operator(i)?;
                i + 2
            }
            b'=' => i + 1,
            b'!' | b'<' | b'>' if next == b'=' => {
                self.operator(i)?;
                i + 2
            }
            b'&' | b'|' if next == c => {
                self.operator(i)?;
                i + 2
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'!' | b'<' | b'>' | b'?' | b':' | b'&' | b'|' => {
                self.operator(i)?;
                i + 1
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i + 1;
                while j < self.text.len() {
                    let b = self.text[j];
                    if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                        j += 1;
                    } else {
                        break;
                    }
                }
                j
            }
            c if c.is_ascii_digit() => {
                let mut j = i + 1;
                while j < self.text.len() {
                    let b = self.text[j];
                    if b.is_ascii_digit() || b == b'.' {
                        j += 1;
                    } else if b == b'e' || b == b'E' {
                        j += 1;
                        if matches!(self.at(j), b'+' | b'-') {
                            j += 1;
                        }
                    } else {
                        break;
                    }
                }
                j
            }
            _ => i + 1,
        })
    }

    fn run(&mut self) -> Result<(), BoundsError> {
        let mut i = 0;
        while i < self.text.len() {
            match self.stack.last() {
                Some(Open::Quoted) => {
                    let n = self.template_start(i)?;
                    i += match (n, self.at(i)) {
                        (0, b'\\') => 2,
                        (0, b'"') => {
                            self.stack.pop();
                            1
                        }
                        (0, _) => 1,
                        (n, _) => n,
                    };
                }
                _ => i = self.code(i)?,
            }
        }
        Ok(())
    }
}

/// Refuse HCL text beyond `limits` (nesting depth, operators), and heredocs and template
/// directives (whose extent a lexical scan cannot follow the way hcl-edit does), before any
/// recursive parser sees it.
pub fn check_hcl(text: &str, limits: HclLimits) -> Result<(), BoundsError> {
    HclScan {
        text: text.as_bytes(),
        limits,
        stack: Vec::new(),
        operators: 0,
    }
    .run()
}

/// Refuse JSON text nesting arrays and objects deeper than `limit`, before serde_json (which
/// recurses per level) sees it. Brackets inside strings do not count.
pub fn check_json_depth(text: &[u8], limit: usize) -> Result<(), BoundsError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return Err(too_deep(text, i, limit));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    Ok(())
}

/// [`check_json_depth`] with [`JSON_MAX_DEPTH`], then serde_json: every JSON request body is
/// decoded through here.
pub fn json_value(text: &[u8]) -> Result<serde_json::Value, JsonBodyError> {
    check_json_depth(text, JSON_MAX_DEPTH).map_err(JsonBodyError::TooDeep)?;
    serde_json::from_slice(text).map_err(JsonBodyError::Syntax)
}

/// Why a JSON body did not decode.
#[derive(Debug)]
pub enum JsonBodyError {
    TooDeep(BoundsError),
    Syntax(serde_json::Error),
}

impl fmt::Display for JsonBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonBodyError::TooDeep(e) => {
                write!(f, "{} at line {} column {}", e.reason, e.line, e.column)
            }
            JsonBodyError::Syntax(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for JsonBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JsonBodyError::TooDeep(e) => Some(e),
            JsonBodyError::Syntax(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests;
