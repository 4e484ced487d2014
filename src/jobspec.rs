//! HCL2 jobspecs → Nomad's JSON `Job`: `variable` and `locals` blocks, `-var`/var-file
//! input, the common functions, and Nomad's block layout (`map`), behind the same pre-scan
//! (`parse_bounds`) and HCL parser (hcl-rs) as every other HCL reader. Shared by
//! `POST /v1/jobs/parse` and the CLI's `job run`.
//!
//! References the parser cannot know (`${NOMAD_ALLOC_DIR}`, `${attr.kernel.name}`,
//! `${meta.rack}`, …) are runtime interpolations: inside a string they are kept as written, as
//! Nomad's jobspec2 does; `var.*`, `local.*` and function calls are evaluated.

mod budget;
mod funcs;
mod heredoc;
mod map;

use std::fmt;

use hcl::eval::{Context, Evaluate};
use hcl::expr::{Expression, TemplateExpr};
use hcl::template::{Element, Template};
use serde_json::Value;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobspecError {
    /// Larger than [`JOBSPEC_MAX_BYTES`].
    TooLarge { file: String, len: usize },
    /// Refused by the pre-scan (too deep, too many operators, heredocs).
    Bounds { file: String, err: BoundsError },
    /// Not HCL.
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// HCL, but not a valid jobspec (unknown block, wrong type, unset variable, …), with the
    /// line and column of the argument or block named in the message when it can be found.
    Invalid {
        file: String,
        at: Option<(usize, usize)>,
        message: String,
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
                message,
            } => write!(f, "{file}:{line},{column}: {message}"),
            JobspecError::Invalid {
                file,
                at: None,
                message,
            } => write!(f, "{file}: {message}"),
        }
    }
}

impl std::error::Error for JobspecError {}

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
    let invalid = |message: String| JobspecError::Invalid {
        at: locate(input.text, &message),
        file: file.to_string(),
        message,
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
        return Err(invalid(format!(
            "Too many locals; a jobspec may define at most {MAX_LOCALS}"
        )));
    }
    for block in body.blocks().filter(|b| b.identifier() == "locals") {
        for attr in block.body().attributes() {
            let refs = budget::RefSizes {
                vars: &vars,
                locals: &locals,
            };
            charge(&mut spent, attr.expr(), &refs).map_err(&invalid)?;
            ctx.declare_var("local", hcl::Value::Object(locals.clone()));
            let v = attr
                .expr()
                .evaluate(&ctx)
                .map_err(|e| invalid(format!("local.{}: {e}", attr.key())))?;
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
        return Err(invalid(map::unsupported_argument(attr.key())));
    }
    for block in body.blocks() {
        match block.identifier() {
            "variable" | "locals" => {}
            "job" => jobs.push(block),
            other => return Err(invalid(map::unsupported_block(other))),
        }
    }
    let job = match jobs.as_slice() {
        [one] => *one,
        [] => {
            return Err(invalid(
                "Missing job block; A job block is required in a jobspec.".into(),
            ))
        }
        _ => {
            return Err(invalid(
                "Duplicate job block; Only one job block is allowed in a jobspec.".into(),
            ))
        }
    };
    let tree = evaluate_block(job, &ctx, &refs, &mut spent).map_err(invalid)?;
    map::job(&tree).map_err(invalid)
}

/// Where the argument or block a message names (`named "x"`, `type "x"`, `attribute "x"`)
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
            message: other.to_string(),
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
    let invalid = |message: String| JobspecError::Invalid {
        at: None,
        file: file.to_string(),
        message,
    };
    let empty = Context::new();
    let mut declared: Vec<(String, Declared)> = Vec::new();
    if body
        .blocks()
        .filter(|b| b.identifier() == "variable")
        .count()
        > MAX_VARIABLES
    {
        return Err(invalid(format!(
            "Too many variables; a jobspec may declare at most {MAX_VARIABLES}"
        )));
    }
    for block in body.blocks().filter(|b| b.identifier() == "variable") {
        let [label] = block.labels() else {
            return Err(invalid(
                "Missing name for variable; All variable blocks must have 1 label (name).".into(),
            ));
        };
        let name = label.as_str().to_string();
        if declared.iter().any(|(n, _)| *n == name) {
            return Err(invalid(format!(
                "Duplicate variable; A variable named {name:?} was already declared."
            )));
        }
        let mut decl = Declared {
            default: None,
            type_name: String::new(),
        };
        for attr in block.body().attributes() {
            match attr.key() {
                "default" => {
                    decl.default = Some(
                        attr.expr()
                            .evaluate(&empty)
                            .map_err(|e| invalid(format!("variable {name:?} default: {e}")))?,
                    )
                }
                "type" => decl.type_name = attr.expr().to_string(),
                "description" | "sensitive" | "nullable" => {}
                other => return Err(invalid(map::unsupported_argument(other))),
            }
        }
        if let Some(b) = block
            .body()
            .blocks()
            .find(|b| b.identifier() != "validation")
        {
            return Err(invalid(map::unsupported_block(b.identifier())));
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
                message: map::unsupported_block(b.identifier()),
            });
        }
        for attr in vf.attributes() {
            let name = attr.key();
            if !declared.iter().any(|(n, _)| n == name) {
                return Err(JobspecError::Invalid {
                    at: None,
                    file: vf_name.clone(),
                    message: format!(
                        "Undefined variable; A {name:?} variable was set but was not found in known variables. To declare variable {name:?}, place this block in your jobspec: variable {name:?} {{}}"
                    ),
                });
            }
            let v = attr
                .expr()
                .evaluate(&empty)
                .map_err(|e| JobspecError::Invalid {
                    at: None,
                    file: vf_name.clone(),
                    message: format!("{name}: {e}"),
                })?;
            values.insert(name.to_string(), v);
        }
    }
    for (name, raw) in &input.vars {
        let Some((_, decl)) = declared.iter().find(|(n, _)| n == name) else {
            return Err(invalid(format!(
                "Undefined -var variable; A {name:?} variable was passed in but was not found in known variables. To declare variable {name:?}, place this block in your jobspec: variable {name:?} {{}}"
            )));
        };
        let v = typed_value(file, name, raw, decl)?;
        values.insert(name.clone(), v);
    }
    for (name, _) in &declared {
        if !values.contains_key(name) {
            return Err(invalid(format!(
                "Unset variable {name:?}; A used variable must be set or have a default value; see https://developer.hashicorp.com/nomad/docs/job-specification/hcl2/variables for details."
            )));
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
    let invalid = |message: String| JobspecError::Invalid {
        at: None,
        file: file.to_string(),
        message,
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
            .ok_or_else(|| {
                invalid(format!(
                    "Invalid value for variable; variable {name:?}: a number is required"
                ))
            })?,
        "bool" => match raw.trim() {
            "true" => hcl::Value::Bool(true),
            "false" => hcl::Value::Bool(false),
            _ => {
                return Err(invalid(format!(
                    "Invalid value for variable; variable {name:?}: a bool is required"
                )))
            }
        },
        _ => {
            let text = format!("v = {raw}");
            let b = parse_body(&format!("<value for var.{name}>"), &text)?;
            let expr = b
                .attributes()
                .next()
                .map(|a| a.expr().clone())
                .unwrap_or(Expression::Null);
            expr.evaluate(&empty)
                .map_err(|e| invalid(format!("variable {name:?}: {e}")))?
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
fn charge(spent: &mut u64, expr: &Expression, refs: &budget::RefSizes) -> Result<(), String> {
    *spent = spent.saturating_add(budget::bound(expr, refs));
    if *spent > budget::MAX_EVALUATED_BYTES {
        return Err(format!(
            "Jobspec too large when evaluated; its values may add up to more than {} bytes",
            budget::MAX_EVALUATED_BYTES
        ));
    }
    Ok(())
}

fn evaluate_block(
    block: &hcl::Block,
    ctx: &Context,
    refs: &budget::RefSizes,
    spent: &mut u64,
) -> Result<Block, String> {
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
        let v = evaluate_expr(attr.expr(), ctx).map_err(|e| format!("{}: {e}", attr.key()))?;
        let v = serde_json::to_value(v).map_err(|e| format!("{}: {e}", attr.key()))?;
        out.attrs.push((attr.key().to_string(), v));
    }
    for b in block.body().blocks() {
        out.blocks.push(evaluate_block(b, ctx, refs, spent)?);
    }
    Ok(out)
}

/// Evaluate an expression; strings keep the interpolations the parser cannot resolve.
fn evaluate_expr(expr: &Expression, ctx: &Context) -> Result<hcl::Value, String> {
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
        other => other.evaluate(ctx).map_err(|e| e.to_string()),
    }
}

fn evaluate_template(t: &TemplateExpr, ctx: &Context) -> Result<hcl::Value, String> {
    let template = Template::from_expr(t).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for element in template.elements() {
        match element {
            Element::Literal(s) => out.push_str(s),
            Element::Interpolation(i) if runtime_only(&i.expr) => {
                out.push_str("${");
                out.push_str(&i.expr.to_string());
                out.push('}');
            }
            Element::Interpolation(i) => match i.expr.evaluate(ctx).map_err(|e| e.to_string())? {
                hcl::Value::String(s) => out.push_str(&s),
                hcl::Value::Null => {}
                v @ (hcl::Value::Bool(_) | hcl::Value::Number(_)) => out.push_str(&v.to_string()),
                _ => {
                    return Err(format!(
                        "Invalid template interpolation value; Cannot include the given value in a string template: string required (in ${{{}}})",
                        i.expr
                    ))
                }
            },
            Element::Directive(_) => {
                return Err("template directives (%{...}) are not supported".into())
            }
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
