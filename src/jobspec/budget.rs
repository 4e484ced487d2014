//! An upper bound on what evaluating an expression can allocate, computed from the expression
//! alone before it is evaluated: references to variables and locals copy their values, and a
//! small jobspec could otherwise name a large variable a hundred thousand times. The parser
//! charges each attribute's bound against [`MAX_EVALUATED_BYTES`] first.

use hcl::expr::{Expression, ObjectKey, TemplateExpr, TraversalOperator};
use hcl::template::{Element, Template};

use super::funcs::MAX_FUNC_RESULT_BYTES;

/// Most bytes all of a jobspec's evaluated values (attributes and locals) may add up to, as
/// bounded by [`bound`]; real jobspecs stay far below.
pub const MAX_EVALUATED_BYTES: u64 = 32 * 1024 * 1024;

/// Bytes charged for a scalar (number, bool, null) or per collection element.
const SCALAR: u64 = 16;

/// Sizes of the values that `var.<name>` and `local.<name>` copy.
pub struct RefSizes<'a> {
    pub vars: &'a hcl::Map<String, hcl::Value>,
    pub locals: &'a hcl::Map<String, hcl::Value>,
}

/// The size of a value as it is held (strings by length, collections by their elements).
pub fn value_size(v: &hcl::Value) -> u64 {
    match v {
        hcl::Value::String(s) => s.len() as u64 + SCALAR,
        hcl::Value::Array(a) => a.iter().map(value_size).fold(SCALAR, u64::saturating_add),
        hcl::Value::Object(m) => m.iter().fold(SCALAR, |acc, (k, v)| {
            acc.saturating_add(k.len() as u64)
                .saturating_add(value_size(v))
        }),
        _ => SCALAR,
    }
}

fn map_size(m: &hcl::Map<String, hcl::Value>) -> u64 {
    m.values().map(value_size).fold(SCALAR, u64::saturating_add)
}

impl RefSizes<'_> {
    /// What a reference rooted at `root` with first attribute `attr` can copy.
    fn of(&self, root: &str, attr: Option<&str>) -> u64 {
        let map = match root {
            "var" => self.vars,
            "local" => self.locals,
            other => return other.len() as u64 + SCALAR,
        };
        match attr.and_then(|a| map.get(a)) {
            Some(v) => value_size(v),
            None => map_size(map),
        }
    }
}

/// An upper bound on the bytes evaluating `e` allocates (its result and what it computes on
/// the way).
pub fn bound(e: &Expression, refs: &RefSizes) -> u64 {
    let sum = |es: &mut dyn Iterator<Item = &Expression>| {
        es.map(|x| bound(x, refs)).fold(0u64, u64::saturating_add)
    };
    match e {
        Expression::String(s) => s.len() as u64 + SCALAR,
        Expression::Array(items) => sum(&mut items.iter()).saturating_add(SCALAR),
        Expression::Object(obj) => obj.iter().fold(SCALAR, |acc, (k, v)| {
            let key = match k {
                ObjectKey::Expression(ke) => bound(ke, refs),
                other => other.to_string().len() as u64,
            };
            acc.saturating_add(key).saturating_add(bound(v, refs))
        }),
        Expression::TemplateExpr(t) => template(t, refs),
        Expression::Variable(v) => refs.of(v.as_str(), None),
        Expression::Traversal(t) => {
            let first = t.operators.first().and_then(|op| match op {
                TraversalOperator::GetAttr(id) => Some(id.as_str()),
                _ => None,
            });
            let base = match &t.expr {
                Expression::Variable(v) => refs.of(v.as_str(), first),
                other => bound(other, refs),
            };
            let index = t.operators.iter().filter_map(|op| match op {
                TraversalOperator::Index(ix) => Some(bound(ix, refs)),
                _ => None,
            });
            index.fold(base, u64::saturating_add)
        }
        Expression::FuncCall(f) => {
            let args = sum(&mut f.args.iter());
            let result = match f.name.name.as_str() {
                // Strings built from their arguments, each call capped.
                "format" | "join" | "replace" | "upper" | "lower" | "trimspace" | "substr"
                | "tostring" | "jsonencode" | "split" => args
                    .saturating_mul(4)
                    .saturating_add(SCALAR)
                    .min(MAX_FUNC_RESULT_BYTES as u64 * 2),
                // Collections and picks: at most what went in.
                _ => args.saturating_add(SCALAR),
            };
            args.saturating_add(result)
        }
        Expression::Parenthesis(inner) => bound(inner, refs),
        Expression::Conditional(c) => bound(&c.cond_expr, refs)
            .saturating_add(bound(&c.true_expr, refs))
            .saturating_add(bound(&c.false_expr, refs)),
        Expression::Operation(op) => match op.as_ref() {
            hcl::expr::Operation::Unary(u) => bound(&u.expr, refs).saturating_add(SCALAR),
            hcl::expr::Operation::Binary(b) => bound(&b.lhs_expr, refs)
                .saturating_add(bound(&b.rhs_expr, refs))
                .saturating_add(SCALAR),
        },
        // One result per element of the collection, whose size bounds the element count.
        Expression::ForExpr(f) => {
            let per = bound(&f.value_expr, refs)
                .saturating_add(f.key_expr.as_ref().map_or(0, |k| bound(k, refs)))
                .saturating_add(f.cond_expr.as_ref().map_or(0, |c| bound(c, refs)));
            let coll = bound(&f.collection_expr, refs);
            coll.saturating_add(coll.saturating_mul(per))
        }
        _ => SCALAR,
    }
}

fn template(t: &TemplateExpr, refs: &RefSizes) -> u64 {
    let raw = t.to_string().len() as u64 + SCALAR;
    let Ok(tpl) = Template::from_expr(t) else {
        return raw;
    };
    tpl.elements().iter().fold(raw, |acc, el| match el {
        Element::Interpolation(i) => acc.saturating_add(bound(&i.expr, refs)),
        _ => acc,
    })
}
