//! A subset of go-bexpr, the `?filter=` language of Nomad's list endpoints, evaluated against
//! a JSON document: selectors (`Meta.key`, `Meta["a.b"]`), `==`, `!=`, `contains`,
//! `not contains`, `in`, `not in`, `is empty`, `is not empty`, `matches`-free; `and`, `or`,
//! `not`, parentheses.

use serde_json::Value;

use super::ApiError;
use crate::http::Request;

/// A parsed filter expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `a and b and ...`: kept flat, so a long chain adds no depth.
    And(Vec<Expr>),
    /// `a or b or ...`: kept flat, so a long chain adds no depth.
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Cmp {
        selector: Vec<String>,
        op: Op,
        value: String,
    },
    /// `"value" in Selector` / `"value" not in Selector`.
    In {
        value: String,
        selector: Vec<String>,
        negate: bool,
    },
    Empty {
        selector: Vec<String>,
        negate: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Contains,
    NotContains,
}

/// Longest filter text accepted (checked before lexing).
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting of parentheses and `not`: the only way the parser, `matches` and drop
/// recurse (`and`/`or` chains are flat).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    EqEq,
    NotEq,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '[' => {
                out.push(Tok::LBracket);
                i += 1
            }
            ']' => {
                out.push(Tok::RBracket);
                i += 1
            }
            '.' => {
                out.push(Tok::Dot);
                i += 1
            }
            '=' if cs.get(i + 1) == Some(&'=') => {
                out.push(Tok::EqEq);
                i += 2
            }
            '!' if cs.get(i + 1) == Some(&'=') => {
                out.push(Tok::NotEq);
                i += 2
            }
            '"' | '`' => {
                let q = c;
                let mut v = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err(format!("unterminated string at column {}", i + 1)),
                        Some(&ch) if ch == q => {
                            i += 1;
                            break;
                        }
                        Some('\\') if q == '"' => match cs.get(i + 1) {
                            Some(&e) => {
                                v.push(match e {
                                    'n' => '\n',
                                    't' => '\t',
                                    o => o,
                                });
                                i += 2;
                            }
                            None => return Err("unterminated string".into()),
                        },
                        Some(&ch) => {
                            v.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' || c == '/' => {
                let start = i;
                while i < cs.len()
                    && (cs[i].is_alphanumeric() || cs[i] == '_' || cs[i] == '-' || cs[i] == '/')
                {
                    i += 1;
                }
                out.push(Tok::Ident(cs[start..i].iter().collect()));
            }
            other => {
                return Err(format!(
                    "unexpected character {other:?} at column {}",
                    i + 1
                ))
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == kw)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut terms = vec![self.and()?];
        while self.peek_kw("or") {
            self.pos += 1;
            terms.push(self.and()?);
        }
        Ok(match terms.len() {
            1 => terms.remove(0),
            _ => Expr::Or(terms),
        })
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut terms = vec![self.unary()?];
        while self.peek_kw("and") {
            self.pos += 1;
            terms.push(self.unary()?);
        }
        Ok(match terms.len() {
            1 => terms.remove(0),
            _ => Expr::And(terms),
        })
    }
    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("expression nested deeper than {MAX_DEPTH} levels"));
        }
        let r = if self.peek_kw("not") {
            self.pos += 1;
            self.unary().map(|e| Expr::Not(Box::new(e)))
        } else if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            match self.next() {
                Some(Tok::RParen) => Ok(e),
                _ => Err("expected )".into()),
            }
        } else {
            self.match_expr()
        };
        self.depth -= 1;
        r
    }
    fn selector(&mut self) -> Result<Vec<String>, String> {
        let mut sel = match self.next() {
            Some(Tok::Ident(s)) => vec![s],
            other => return Err(format!("expected a selector, found {other:?}")),
        };
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    match self.next() {
                        Some(Tok::Ident(s)) => sel.push(s),
                        other => {
                            return Err(format!("expected a field name after '.', found {other:?}"))
                        }
                    }
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    match (self.next(), self.next()) {
                        (Some(Tok::Str(s)), Some(Tok::RBracket)) => sel.push(s),
                        _ => return Err("expected [\"key\"]".into()),
                    }
                }
                _ => return Ok(sel),
            }
        }
    }
    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            Some(Tok::Ident(s)) => Ok(s),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
    fn match_expr(&mut self) -> Result<Expr, String> {
        if let Some(Tok::Str(_)) = self.peek() {
            let value = self.value()?;
            let negate = if self.peek_kw("not") {
                self.pos += 1;
                true
            } else {
                false
            };
            if !self.peek_kw("in") {
                return Err("expected 'in' after a value".into());
            }
            self.pos += 1;
            let selector = self.selector()?;
            return Ok(Expr::In {
                value,
                selector,
                negate,
            });
        }
        let selector = self.selector()?;
        match self.next() {
            Some(Tok::EqEq) => Ok(Expr::Cmp {
                selector,
                op: Op::Eq,
                value: self.value()?,
            }),
            Some(Tok::NotEq) => Ok(Expr::Cmp {
                selector,
                op: Op::Ne,
                value: self.value()?,
            }),
            Some(Tok::Ident(k)) if k == "contains" => Ok(Expr::Cmp {
                selector,
                op: Op::Contains,
                value: self.value()?,
            }),
            Some(Tok::Ident(k)) if k == "is" => {
                let negate = if self.peek_kw("not") {
                    self.pos += 1;
                    true
                } else {
                    false
                };
                match self.next() {
                    Some(Tok::Ident(k)) if k == "empty" => Ok(Expr::Empty { selector, negate }),
                    _ => Err("expected 'empty'".into()),
                }
            }
            Some(Tok::Ident(k)) if k == "not" => match self.next() {
                Some(Tok::Ident(k)) if k == "contains" => Ok(Expr::Cmp {
                    selector,
                    op: Op::NotContains,
                    value: self.value()?,
                }),
                _ => Err("expected 'contains' after 'not'".into()),
            },
            other => Err(format!("expected an operator, found {other:?}")),
        }
    }
}

/// A `?filter=` expression that does not parse: where and why, as the lexer or parser saw it.
/// Prints like Nomad's (`failed to read filter expression: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed to read filter expression: {}", self.0)
    }
}

impl std::error::Error for FilterError {}

/// A bad filter is a 400 with its text.
impl From<FilterError> for ApiError {
    fn from(e: FilterError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

/// Parse a filter.
pub fn parse(text: &str) -> Result<Expr, FilterError> {
    let fail = FilterError;
    if text.len() > MAX_FILTER_LEN {
        return Err(fail(format!(
            "expression longer than {MAX_FILTER_LEN} bytes"
        )));
    }
    let toks = lex(text).map_err(fail)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.or().map_err(fail)?;
    if p.pos != p.toks.len() {
        return Err(fail(format!("unexpected {:?}", p.toks[p.pos])));
    }
    Ok(e)
}

/// The request's `?filter=` expression, if it has a non-empty one; a bad one is a 400.
pub fn from_query(req: &Request) -> Result<Option<Expr>, ApiError> {
    match req.query("filter") {
        Some(f) if !f.is_empty() => Ok(Some(parse(f)?)),
        _ => Ok(None),
    }
}

/// Whether `doc` passes an optional filter (no filter: everything passes).
pub fn keeps(expr: Option<&Expr>, doc: &Value) -> bool {
    expr.is_none_or(|e| e.matches(doc))
}

fn lookup<'a>(doc: &'a Value, sel: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for s in sel {
        cur = cur.as_object()?.get(s)?;
    }
    Some(cur)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Expr {
    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Value) -> bool {
        match self {
            Expr::And(terms) => terms.iter().all(|t| t.matches(doc)),
            Expr::Or(terms) => terms.iter().any(|t| t.matches(doc)),
            Expr::Not(e) => !e.matches(doc),
            Expr::Cmp {
                selector,
                op,
                value,
            } => {
                let v = lookup(doc, selector);
                match op {
                    Op::Eq => v.map(|v| as_text(v) == *value).unwrap_or(false),
                    Op::Ne => v.map(|v| as_text(v) != *value).unwrap_or(true),
                    Op::Contains | Op::NotContains => {
                        let has = match v {
                            Some(Value::String(s)) => s.contains(value.as_str()),
                            Some(Value::Array(a)) => a.iter().any(|x| as_text(x) == *value),
                            Some(Value::Object(m)) => m.contains_key(value),
                            _ => false,
                        };
                        has == (*op == Op::Contains)
                    }
                }
            }
            Expr::In {
                value,
                selector,
                negate,
            } => {
                let has = match lookup(doc, selector) {
                    Some(Value::String(s)) => s.contains(value.as_str()),
                    Some(Value::Array(a)) => a.iter().any(|x| as_text(x) == *value),
                    Some(Value::Object(m)) => m.contains_key(value),
                    _ => false,
                };
                has != *negate
            }
            Expr::Empty { selector, negate } => {
                let empty = match lookup(doc, selector) {
                    None | Some(Value::Null) => true,
                    Some(Value::String(s)) => s.is_empty(),
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Object(m)) => m.is_empty(),
                    _ => false,
                };
                empty != *negate
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_filters_match() {
        let node = json!({"Name": "n1", "Meta": {"example": "Hello World!", "a.b": "x"}, "Status": "ready"});
        assert!(parse(r#"Meta.example == "Hello World!""#)
            .unwrap()
            .matches(&node));
        assert!(!parse(r#"Meta.example == "nope""#).unwrap().matches(&node));
        assert!(parse(r#"Meta["a.b"] == "x" and Status == ready"#)
            .unwrap()
            .matches(&node));
        assert!(parse(r#""example" in Meta"#).unwrap().matches(&node));
        assert!(parse(r#"not (Name != "n1") or Status == "x""#)
            .unwrap()
            .matches(&node));
        assert!(parse(r#"Meta.missing is empty"#).unwrap().matches(&node));
    }

    #[test]
    fn depth_is_bounded_and_long_chains_add_none() {
        let deep = |n: usize| format!("{}Name == \"a\"{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&deep(MAX_DEPTH - 1)).is_ok());
        let e = parse(&deep(MAX_DEPTH + 1)).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 32 levels"), "{e}");
        assert!(parse(&format!("{}Name == a", "not ".repeat(MAX_DEPTH + 1))).is_err());
        let e = parse(&"a".repeat(MAX_FILTER_LEN + 1))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("failed to read filter expression: "), "{e}");
        // The longest chains fit in the limit and, being flat, evaluate and drop on a small
        // stack (256 KiB), as do the deepest nestings.
        let chain = "Name == a and ".repeat(MAX_FILTER_LEN / 14 - 1) + "Name == a";
        let mixed =
            "(Name == a or ".repeat(MAX_DEPTH - 2) + "not Name == b" + &")".repeat(MAX_DEPTH - 2);
        for text in [chain, mixed, deep(MAX_DEPTH - 1)] {
            let ok = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let e = parse(&text).unwrap();
                    e.matches(&json!({"Name": "a"}))
                })
                .unwrap()
                .join()
                .unwrap();
            assert!(ok);
        }
    }

    #[test]
    fn bad_filters_are_errors() {
        for bad in [
            "Meta.x ==",
            "== 1",
            "(Name == \"a\"",
            "Name ~ 1",
            "\"x\" Meta",
            &"(".repeat(100),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
