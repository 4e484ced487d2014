//! HCL2 jobspecs → Nomad's JSON `Job`: `variable` and `locals` blocks, `-var`/var-file
//! input, the common functions, and Nomad's block layout (`map`), behind the same pre-scan
//! (`parse_bounds`) and HCL parser (hcl-rs) as every other HCL reader. Shared by
//! `POST /v1/jobs/parse` and the CLI's `job run`.
//!
//! References the parser cannot know (`${NOMAD_ALLOC_DIR}`, `${attr.kernel.name}`,
//! `${meta.rack}`, …) are runtime interpolations: inside a string they are kept as written, as
//! Nomad's jobspec2 does; `var.*`, `local.*` and function calls are evaluated.

mod budget;
mod error;
mod funcs;
mod heredoc;
mod map;

use std::fmt;

use hcl::eval::{Context, Evaluate};
use hcl::expr::{Expression, TemplateExpr};
use hcl::template::{Element, Template};
use serde_json::Value;

pub use error::SpecError;

use crate::parse_bounds::{check_hcl, BoundsError, HclLimits};

/// Deepest nesting a jobspec may have. A jobspec needs about 8 (job, group, task, config, a
/// list, a string, an interpolation, a call); 16 leaves room for nested config objects.
pub const JOBSPEC_MAX_DEPTH: usize = 16;

/// Most expression operators a jobspec may have (conditionals on variables, arithmetic).
pub const JOBSPEC_MAX_OPERATORS: usize = 16;

/// The jobspec bounds: about 16 × 7 + 16 × 8 = 240 KiB of parser stack at worst, within half
/// of the 512 KiB connection-thread stack; `tests::worst_case_fits_the_connection_stack`
/// parses and evaluates the worst case on a thread of that size.
pub const JOBSPEC_LIMITS: HclLimits = HclLimits {
    max_depth: JOBSPEC_MAX_DEPTH,
    max_operators: JOBSPEC_MAX_OPERATORS,
};

/// Largest jobspec text (and var-file text) accepted, in bytes.
pub const JOBSPEC_MAX_BYTES: usize = 512 * 1024;

/// The file name used in error texts when the jobspec came without one (Nomad's API says
/// `input.hcl` too).
pub const DEFAULT_FILE_NAME: &str = "input.hcl";

/// Most locals a jobspec may define (each is evaluated with the ones before it in scope).
pub const MAX_LOCALS: usize = 1024;

/// Most `variable` blocks a jobspec may declare.
pub const MAX_VARIABLES: usize = 1024;

/// Why a jobspec did not become a job.
#[derive(Debug)]
pub enum JobspecError {
    /// Larger than [`JOBSPEC_MAX_BYTES`].
    TooLarge { file: String, len: usize },
    /// Refused by the pre-scan (too deep, too many operators, heredocs).
    Bounds { file: String, err: BoundsError },
    /// Not HCL (hcl-rs's message and position).
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// HCL, but not a valid jobspec (unknown block, wrong type, unset variable, …), with the
    /// line and column of the argument or block the reason names when it can be found.
    Invalid {
        file: String,
        at: Option<(usize, usize)>,
        reason: SpecError,
    },
}

impl fmt::Display for JobspecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobspecError::TooLarge { file, len } => write!(
                f,
                "{file}: jobspec is {len} bytes, larger than the {JOBSPEC_MAX_BYTES} bytes accepted"
            ),
            JobspecError::Bounds { file, err } => {
                write!(f, "{file}:{},{}: {}", err.line, err.column, err.reason)
            }
            JobspecError::Syntax {
                file,
                line,
                column,
                message,
            } => write!(f, "{file}:{line},{column}: {message}"),
            JobspecError::Invalid {
                file,
                at: Some((line, column)),
                reason,
            } => write!(f, "{file}:{line},{column}: {reason}"),
            JobspecError::Invalid {
                file,
                at: None,
                reason,
            } => write!(f, "{file}: {reason}"),
        }
    }
}

impl std::error::Error for JobspecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobspecError::Bounds { err, .. } => Some(err),
            JobspecError::Invalid { reason, .. } => Some(reason),
            JobspecError::TooLarge { .. } | JobspecError::Syntax { .. } => None,
        }
    }
}

/// What a jobspec is parsed with: its text, a name for errors, and variable values.
#[derive(Debug, Default, Clone)]
pub struct Input<'a> {
    /// The jobspec's HCL text.
    pub text: &'a str,
    /// Name used in errors (`input.hcl` when empty).
    pub file: &'a str,
    /// Var-file contents (HCL `name = value` lines), in order; later wins.
    pub var_files: Vec<(String, String)>,
    /// `-var name=value` pairs; they win over var files. Values are converted to the
    /// variable's declared type.
    pub vars: Vec<(String, String)>,
    /// `NOMAD_VAR_<name>` values from the environment: below var files and `-var`, and only
    /// for declared variables (others are ignored, as Nomad does).
    pub env_vars: Vec<(String, String)>,
}

/// Parse a jobspec into the JSON `Job` (Go field names, only what the spec sets plus `ID` and
/// `Name` from the job's label), as Nomad's `/v1/jobs/parse` answers without `Canonicalize`.
pub fn parse(input: &Input) -> Result<Value, JobspecError> {
    let file = if input.file.is_empty() {
        DEFAULT_FILE_NAME
    } else {
        input.file
    };
    let body = parse_body(file, input.text)?;
    let invalid = |reason: SpecError| JobspecError::Invalid {
        at: locate(input.text, &reason.to_string()),
        file: file.to_string(),
        reason,
    };
    let vars = variables(file, &body, input)?;
    let mut ctx = Context::new();
    funcs::declare(&mut ctx);
    ctx.declare_var("var", hcl::Value::Object(vars.clone()));
    let mut locals = hcl::Map::new();
    let mut spent = 0u64;
    let local_count: usize = body
        .blocks()
        .filter(|b| b.identifier() == "locals")
        .map(|b| b.body().attributes().count())
        .sum();
    if local_count > MAX_LOCALS {
        return Err(invalid(SpecError::TooManyLocals));
    }
    for block in body.blocks().filter(|b| b.identifier() == "locals") {
        for attr in block.body().attributes() {
            let refs = budget::RefSizes {
                vars: &vars,
                locals: &locals,
            };
            charge(&mut spent, attr.expr(), &refs).map_err(&invalid)?;
            ctx.declare_var("local", hcl::Value::Object(locals.clone()));
            let v = attr.expr().evaluate(&ctx).map_err(|source| {
                invalid(SpecError::Eval {
                    what: format!("local.{}", attr.key()),
                    source,
                })
            })?;
            locals.insert(attr.key().to_string(), v);
        }
    }
    ctx.declare_var("local", hcl::Value::Object(locals.clone()));
    let refs = budget::RefSizes {
        vars: &vars,
        locals: &locals,
    };
    let mut jobs = Vec::new();
    if let Some(attr) = body.attributes().next() {
        return Err(invalid(SpecError::UnsupportedArgument(
            attr.key().to_string(),
        )));
    }
    for block in body.blocks() {
        match block.identifier() {
            "variable" | "locals" => {}
            "job" => jobs.push(block),
            other => return Err(invalid(SpecError::UnsupportedBlock(other.to_string()))),
        }
    }
    let job = match jobs.as_slice() {
        [one] => *one,
        [] => return Err(invalid(SpecError::MissingJob)),
        _ => return Err(invalid(SpecError::DuplicateJob)),
    };
    let tree = evaluate_block(job, &ctx, &refs, &mut spent).map_err(invalid)?;
    map::job(&tree).map_err(invalid)
}

/// Where the argument or block a reason's text names (`named "x"`, `type "x"`, `attribute "x"`)
/// is first written: a line that starts with it. hcl-rs's bodies carry no positions, so this
/// finds the first such line, which is the right one unless the name is used twice.
fn locate(text: &str, message: &str) -> Option<(usize, usize)> {
    let name = ["named \"", "type \"", "attribute \""]
        .iter()
        .find_map(|p| message.split_once(p))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name)?;
    text.lines().enumerate().find_map(|(i, line)| {
        let trimmed = line.trim_start();
        let after = trimmed.strip_prefix(name)?;
        let next = after.chars().next()?;
        (next.is_whitespace() || matches!(next, '=' | '{' | '"'))
            .then(|| (i + 1, line.len() - trimmed.len() + 1))
    })
}

/// Bound, then parse, HCL text (plain heredocs first rewritten to quoted strings).
fn parse_body(file: &str, text: &str) -> Result<hcl::Body, JobspecError> {
    if text.len() > JOBSPEC_MAX_BYTES {
        return Err(JobspecError::TooLarge {
            file: file.to_string(),
            len: text.len(),
        });
    }
    let text = heredoc::rewrite(text);
    check_hcl(&text, JOBSPEC_LIMITS).map_err(|err| JobspecError::Bounds {
        file: file.to_string(),
        err,
    })?;
    hcl::parse(&text).map_err(|e| match e {
        hcl::Error::Parse(p) => JobspecError::Syntax {
            file: file.to_string(),
            line: p.location().line(),
            column: p.location().column(),
            message: p.message().to_string(),
        },
        other => JobspecError::Invalid {
            at: None,
            file: file.to_string(),
            reason: SpecError::Hcl(other),
        },
    })
}

/// A declared variable: its default and declared type name (`string`, `number`, `bool`, or
/// anything else, which takes `-var` values as HCL expressions).
struct Declared {
    default: Option<hcl::Value>,
    type_name: String,
}

/// The `var` object: defaults, then var files, then `-var` values; every declared variable
/// must end up with a value, and every given value must be declared.
fn variables(
    file: &str,
    body: &hcl::Body,
    input: &Input,
) -> Result<hcl::Map<String, hcl::Value>, JobspecError> {
    let invalid = |reason: SpecError| JobspecError::Invalid {
        at: None,
        file: file.to_string(),
        reason,
    };
    let empty = Context::new();
    let mut declared: Vec<(String, Declared)> = Vec::new();
    if body
        .blocks()
        .filter(|b| b.identifier() == "variable")
        .count()
        > MAX_VARIABLES
    {
        return Err(invalid(SpecError::TooManyVariables));
    }
    for block in body.blocks().filter(|b| b.identifier() == "variable") {
        let [label] = block.labels() else {
            return Err(invalid(SpecError::MissingVariableName));
        };
        let name = label.as_str().to_string();
        if declared.iter().any(|(n, _)| *n == name) {
            return Err(invalid(SpecError::DuplicateVariable(name)));
        }
        let mut decl = Declared {
            default: None,
            type_name: String::new(),
        };
        for attr in block.body().attributes() {
            match attr.key() {
                "default" => {
                    decl.default = Some(attr.expr().evaluate(&empty).map_err(|source| {
                        invalid(SpecError::Eval {
                            what: format!("variable {name:?} default"),
                            source,
                        })
                    })?)
                }
                "type" => decl.type_name = attr.expr().to_string(),
                "description" | "sensitive" | "nullable" => {}
                other => return Err(invalid(SpecError::UnsupportedArgument(other.to_string()))),
            }
        }
        if let Some(b) = block
            .body()
            .blocks()
            .find(|b| b.identifier() != "validation")
        {
            return Err(invalid(SpecError::UnsupportedBlock(
                b.identifier().to_string(),
            )));
        }
        declared.push((name, decl));
    }
    let mut values: hcl::Map<String, hcl::Value> = hcl::Map::new();
    for (name, decl) in &declared {
        if let Some(d) = &decl.default {
            values.insert(name.clone(), d.clone());
        }
    }
    let declared_only = input
        .env_vars
        .iter()
        .filter(|(name, _)| declared.iter().any(|(n, _)| n == name));
    for (name, raw) in declared_only {
        if let Some((_, decl)) = declared.iter().find(|(n, _)| n == name) {
            values.insert(name.clone(), typed_value(file, name, raw, decl)?);
        }
    }
    for (vf_name, text) in &input.var_files {
        let vf = parse_body(vf_name, text)?;
        if let Some(b) = vf.blocks().next() {
            return Err(JobspecError::Invalid {
                at: None,
                file: vf_name.clone(),
                reason: SpecError::UnsupportedBlock(b.identifier().to_string()),
            });
        }
        for attr in vf.attributes() {
            let name = attr.key();
            if !declared.iter().any(|(n, _)| n == name) {
                return Err(JobspecError::Invalid {
                    at: None,
                    file: vf_name.clone(),
                    reason: SpecError::UndeclaredInVarFile(name.to_string()),
                });
            }
            let v = attr
                .expr()
                .evaluate(&empty)
                .map_err(|source| JobspecError::Invalid {
                    at: None,
                    file: vf_name.clone(),
                    reason: SpecError::Eval {
                        what: name.to_string(),
                        source,
                    },
                })?;
            values.insert(name.to_string(), v);
        }
    }
    for (name, raw) in &input.vars {
        let Some((_, decl)) = declared.iter().find(|(n, _)| n == name) else {
            return Err(invalid(SpecError::UndeclaredVarFlag(name.clone())));
        };
        let v = typed_value(file, name, raw, decl)?;
        values.insert(name.clone(), v);
    }
    for (name, _) in &declared {
        if !values.contains_key(name) {
            return Err(invalid(SpecError::UnsetVariable(name.clone())));
        }
    }
    Ok(values)
}

/// A `-var` or `NOMAD_VAR_` text as a value of the variable's declared type.
fn typed_value(
    file: &str,
    name: &str,
    raw: &str,
    decl: &Declared,
) -> Result<hcl::Value, JobspecError> {
    let invalid = |reason: SpecError| JobspecError::Invalid {
        at: None,
        file: file.to_string(),
        reason,
    };
    let empty = Context::new();
    Ok(match decl.type_name.as_str() {
        "" | "string" | "any" => hcl::Value::String(raw.to_string()),
        "number" => raw
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(hcl::Number::from_f64)
            .map(|n| match raw.trim().parse::<i64>() {
                Ok(i) => hcl::Value::Number(i.into()),
                Err(_) => hcl::Value::Number(n),
            })
            .ok_or_else(|| invalid(SpecError::NotANumber(name.to_string())))?,
        "bool" => match raw.trim() {
            "true" => hcl::Value::Bool(true),
            "false" => hcl::Value::Bool(false),
            _ => return Err(invalid(SpecError::NotABool(name.to_string()))),
        },
        _ => {
            let text = format!("v = {raw}");
            let b = parse_body(&format!("<value for var.{name}>"), &text)?;
            let expr = b
                .attributes()
                .next()
                .map(|a| a.expr().clone())
                .unwrap_or(Expression::Null);
            expr.evaluate(&empty).map_err(|source| {
                invalid(SpecError::Eval {
                    what: format!("variable {name:?}"),
                    source,
                })
            })?
        }
    })
}

/// A block after evaluation: identifier, labels, attribute values (JSON) and sub-blocks, in
/// the order written.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub ident: String,
    pub labels: Vec<String>,
    pub attrs: Vec<(String, Value)>,
    pub blocks: Vec<Block>,
}

/// Charge an expression's allocation bound before it is evaluated.
fn charge(spent: &mut u64, expr: &Expression, refs: &budget::RefSizes) -> Result<(), SpecError> {
    *spent = spent.saturating_add(budget::bound(expr, refs));
    if *spent > budget::MAX_EVALUATED_BYTES {
        return Err(SpecError::EvaluatedTooLarge);
    }
    Ok(())
}

fn evaluate_block(
    block: &hcl::Block,
    ctx: &Context,
    refs: &budget::RefSizes,
    spent: &mut u64,
) -> Result<Block, SpecError> {
    let mut out = Block {
        ident: block.identifier().to_string(),
        labels: block
            .labels()
            .iter()
            .map(|l| l.as_str().to_string())
            .collect(),
        attrs: Vec::new(),
        blocks: Vec::new(),
    };
    for attr in block.body().attributes() {
        charge(spent, attr.expr(), refs)?;
        let v = evaluate_expr(attr.expr(), ctx).map_err(|e| SpecError::Argument {
            key: attr.key().to_string(),
            source: Box::new(e),
        })?;
        let v = serde_json::to_value(v).map_err(|source| SpecError::Json {
            key: attr.key().to_string(),
            source,
        })?;
        out.attrs.push((attr.key().to_string(), v));
    }
    for b in block.body().blocks() {
        out.blocks.push(evaluate_block(b, ctx, refs, spent)?);
    }
    Ok(out)
}

/// Evaluate an expression; strings keep the interpolations the parser cannot resolve.
fn evaluate_expr(expr: &Expression, ctx: &Context) -> Result<hcl::Value, SpecError> {
    match expr {
        Expression::TemplateExpr(t) => evaluate_template(t, ctx),
        Expression::Array(items) => items
            .iter()
            .map(|e| evaluate_expr(e, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(hcl::Value::Array),
        Expression::Object(obj) => {
            let mut out = hcl::Map::new();
            for (k, v) in obj.iter() {
                let key = match k {
                    hcl::expr::ObjectKey::Identifier(i) => i.as_str().to_string(),
                    hcl::expr::ObjectKey::Expression(e) => match evaluate_expr(e, ctx)? {
                        hcl::Value::String(s) => s,
                        other => other.to_string(),
                    },
                    other => other.to_string(),
                };
                out.insert(key, evaluate_expr(v, ctx)?);
            }
            Ok(hcl::Value::Object(out))
        }
        other => other.evaluate(ctx).map_err(SpecError::Expr),
    }
}

fn evaluate_template(t: &TemplateExpr, ctx: &Context) -> Result<hcl::Value, SpecError> {
    let template = Template::from_expr(t).map_err(SpecError::Template)?;
    let mut out = String::new();
    for element in template.elements() {
        match element {
            Element::Literal(s) => out.push_str(s),
            Element::Interpolation(i) if runtime_only(&i.expr) => {
                out.push_str("${");
                out.push_str(&i.expr.to_string());
                out.push('}');
            }
            Element::Interpolation(i) => match i.expr.evaluate(ctx).map_err(SpecError::Expr)? {
                hcl::Value::String(s) => out.push_str(&s),
                hcl::Value::Null => {}
                v @ (hcl::Value::Bool(_) | hcl::Value::Number(_)) => out.push_str(&v.to_string()),
                _ => return Err(SpecError::TemplateValue(i.expr.to_string())),
            },
            Element::Directive(_) => return Err(SpecError::TemplateDirective),
        }
    }
    Ok(hcl::Value::String(out))
}

/// Whether an interpolation refers to something only known at run time: any variable other
/// than `var` and `local` (`NOMAD_ALLOC_DIR`, `attr`, `node`, `meta`, `env`, …).
fn runtime_only(expr: &Expression) -> bool {
    match expr {
        Expression::Variable(v) => !matches!(v.as_str(), "var" | "local"),
        Expression::Traversal(t) => runtime_only(&t.expr),
        Expression::Parenthesis(e) => runtime_only(e),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
