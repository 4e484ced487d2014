//! The common HCL2 functions a jobspec may call (a subset of Nomad's cty standard library):
//! strings (`upper`, `lower`, `trimspace`, `join`, `split`, `replace`, `format`, `substr`),
//! collections (`length`, `concat`, `contains`, `keys`, `values`, `lookup`, `merge`,
//! `coalesce`, `element`), numbers (`abs`, `ceil`, `floor`, `min`, `max`) and conversions
//! (`tostring`, `tonumber`, `tobool`, `jsonencode`).

use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use hcl::{Number, Value};

/// Longest string a function may build (`format`, `join`, `replace`), so a small jobspec
/// cannot make a huge value.
pub const MAX_FUNC_RESULT_BYTES: usize = 64 * 1024;

/// Why `format` (or a result-size check) failed. hcl-rs's `Func` type wants its callbacks to
/// return `Result<Value, String>`, so the declared closures turn this into its text there, at
/// the library's boundary (hcl-rs then wraps it in its own `eval::Error`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum FuncError {
    /// A built string longer than [`MAX_FUNC_RESULT_BYTES`].
    TooLong,
    /// `format`'s spec ends in a lone `%`.
    SpecEndsInPercent,
    /// `format` ran out of arguments at this verb.
    TooFewArguments(char),
    /// `format` met a verb it does not know.
    UnsupportedVerb(char),
}

impl std::fmt::Display for FuncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FuncError::TooLong => write!(f, "result longer than {MAX_FUNC_RESULT_BYTES} bytes"),
            FuncError::SpecEndsInPercent => f.write_str("format: the spec ends in %"),
            FuncError::TooFewArguments(verb) => {
                write!(f, "format: too few arguments for %{verb}")
            }
            FuncError::UnsupportedVerb(verb) => write!(f, "format: unsupported verb %{verb}"),
        }
    }
}

impl std::error::Error for FuncError {}

fn too_big(s: String) -> Result<Value, FuncError> {
    if s.len() > MAX_FUNC_RESULT_BYTES {
        Err(FuncError::TooLong)
    } else {
        Ok(Value::String(s))
    }
}

fn str_arg(args: &FuncArgs, i: usize) -> String {
    args[i].as_str().unwrap_or_default().to_string()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Number(Number::from(f as i64))
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// A value as a template would print it.
fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Declare every function in `ctx`.
pub fn declare(ctx: &mut Context) {
    use ParamType::{Any, Number as N, String as S};
    let list_of_any = || ParamType::array_of(Any);
    let f1 = |p: ParamType, f: hcl::eval::Func| FuncDef::builder().param(p).build(f);
    ctx.declare_func(
        "upper",
        f1(S, |a| Ok(Value::String(str_arg(&a, 0).to_uppercase()))),
    );
    ctx.declare_func(
        "lower",
        f1(S, |a| Ok(Value::String(str_arg(&a, 0).to_lowercase()))),
    );
    ctx.declare_func(
        "trimspace",
        f1(S, |a| Ok(Value::String(str_arg(&a, 0).trim().to_string()))),
    );
    ctx.declare_func(
        "join",
        FuncDef::builder().param(S).param(list_of_any()).build(|a| {
            let sep = str_arg(&a, 0);
            let parts: Vec<String> = a[1]
                .as_array()
                .map(|v| v.iter().map(to_text).collect())
                .unwrap_or_default();
            too_big(parts.join(&sep)).map_err(|e| e.to_string())
        }),
    );
    ctx.declare_func(
        "split",
        FuncDef::builder().param(S).param(S).build(|a| {
            let sep = str_arg(&a, 0);
            let s = str_arg(&a, 1);
            if sep.is_empty() {
                return Err("separator must not be empty".into());
            }
            Ok(Value::Array(
                s.split(sep.as_str())
                    .map(|p| Value::String(p.into()))
                    .collect(),
            ))
        }),
    );
    ctx.declare_func(
        "replace",
        FuncDef::builder().param(S).param(S).param(S).build(|a| {
            let (s, from, to) = (str_arg(&a, 0), str_arg(&a, 1), str_arg(&a, 2));
            if from.is_empty() {
                return Ok(Value::String(s));
            }
            let grows = to.len().saturating_sub(from.len());
            if s.matches(from.as_str()).count().saturating_mul(grows) > MAX_FUNC_RESULT_BYTES {
                return Err(FuncError::TooLong.to_string());
            }
            too_big(s.replace(from.as_str(), &to)).map_err(|e| e.to_string())
        }),
    );
    ctx.declare_func(
        "substr",
        FuncDef::builder().param(S).param(N).param(N).build(|a| {
            let s: Vec<char> = str_arg(&a, 0).chars().collect();
            let off = num(&a[1]).max(0.0) as usize;
            let len = num(&a[2]);
            let end = if len < 0.0 {
                s.len()
            } else {
                (off + len as usize).min(s.len())
            };
            Ok(Value::String(
                s.get(off.min(s.len())..end)
                    .unwrap_or_default()
                    .iter()
                    .collect(),
            ))
        }),
    );
    ctx.declare_func(
        "format",
        FuncDef::builder()
            .param(S)
            .variadic_param(Any)
            .build(|a| format(a).map_err(|e| e.to_string())),
    );
    ctx.declare_func(
        "length",
        f1(Any, |a| match &a[0] {
            Value::String(s) => Ok(number(s.chars().count() as f64)),
            Value::Array(v) => Ok(number(v.len() as f64)),
            Value::Object(m) => Ok(number(m.len() as f64)),
            other => Err(format!(
                "length: a collection or string is required, got {other}"
            )),
        }),
    );
    ctx.declare_func(
        "concat",
        FuncDef::builder().variadic_param(list_of_any()).build(|a| {
            let mut out = Vec::new();
            for v in a.variadic_args() {
                out.extend(v.as_array().cloned().unwrap_or_default());
            }
            Ok(Value::Array(out))
        }),
    );
    ctx.declare_func(
        "contains",
        FuncDef::builder()
            .param(list_of_any())
            .param(Any)
            .build(|a| {
                Ok(Value::Bool(
                    a[0].as_array().is_some_and(|v| v.contains(&a[1])),
                ))
            }),
    );
    ctx.declare_func(
        "element",
        FuncDef::builder().param(list_of_any()).param(N).build(|a| {
            let v = a[0].as_array().cloned().unwrap_or_default();
            if v.is_empty() {
                return Err("cannot use element function with an empty list".into());
            }
            let i = num(&a[1]).max(0.0) as usize % v.len();
            Ok(v[i].clone())
        }),
    );
    ctx.declare_func(
        "keys",
        f1(ParamType::object_of(Any), |a| {
            Ok(Value::Array(
                a[0].as_object()
                    .map(|m| m.keys().map(|k| Value::String(k.clone())).collect())
                    .unwrap_or_default(),
            ))
        }),
    );
    ctx.declare_func(
        "values",
        f1(ParamType::object_of(Any), |a| {
            Ok(Value::Array(
                a[0].as_object()
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
            ))
        }),
    );
    ctx.declare_func(
        "lookup",
        FuncDef::builder()
            .param(ParamType::object_of(Any))
            .param(S)
            .variadic_param(Any)
            .build(|a| {
                let key = str_arg(&a, 1);
                if let Some(v) = a[0].as_object().and_then(|m| m.get(&key)) {
                    return Ok(v.clone());
                }
                a.variadic_args()
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("lookup failed to find key {key:?}"))
            }),
    );
    ctx.declare_func(
        "merge",
        FuncDef::builder()
            .variadic_param(ParamType::object_of(Any))
            .build(|a| {
                let mut out = hcl::Map::new();
                for m in a.variadic_args().filter_map(Value::as_object) {
                    for (k, v) in m {
                        out.insert(k.clone(), v.clone());
                    }
                }
                Ok(Value::Object(out))
            }),
    );
    ctx.declare_func(
        "coalesce",
        FuncDef::builder().variadic_param(Any).build(|a| {
            a.variadic_args()
                .find(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
                .cloned()
                .ok_or_else(|| "no non-null, non-empty-string arguments".to_string())
        }),
    );
    ctx.declare_func("abs", f1(N, |a| Ok(number(num(&a[0]).abs()))));
    ctx.declare_func("ceil", f1(N, |a| Ok(number(num(&a[0]).ceil()))));
    ctx.declare_func("floor", f1(N, |a| Ok(number(num(&a[0]).floor()))));
    ctx.declare_func(
        "min",
        FuncDef::builder().param(N).variadic_param(N).build(|a| {
            Ok(number(
                a.variadic_args().map(num).fold(num(&a[0]), f64::min),
            ))
        }),
    );
    ctx.declare_func(
        "max",
        FuncDef::builder().param(N).variadic_param(N).build(|a| {
            Ok(number(
                a.variadic_args().map(num).fold(num(&a[0]), f64::max),
            ))
        }),
    );
    ctx.declare_func("tostring", f1(Any, |a| Ok(Value::String(to_text(&a[0])))));
    ctx.declare_func(
        "tonumber",
        f1(Any, |a| match &a[0] {
            Value::Number(n) => Ok(Value::Number(*n)),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map(number)
                .map_err(|_| format!("cannot convert {s:?} to number")),
            other => Err(format!("cannot convert {other} to number")),
        }),
    );
    ctx.declare_func(
        "tobool",
        f1(Any, |a| match &a[0] {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::String(s) if s == "true" => Ok(Value::Bool(true)),
            Value::String(s) if s == "false" => Ok(Value::Bool(false)),
            other => Err(format!("cannot convert {other} to bool")),
        }),
    );
    ctx.declare_func(
        "jsonencode",
        f1(Any, |a| {
            serde_json::to_string(&a[0])
                .map_err(|e| e.to_string())
                .and_then(|s| too_big(s).map_err(|e| e.to_string()))
        }),
    );
}

/// `format(spec, args...)`: `%s`, `%d`, `%v`, `%q`, `%f` and `%%`, as far as jobspecs use them.
fn format(a: FuncArgs) -> Result<Value, FuncError> {
    let spec = str_arg(&a, 0);
    let mut args = a.variadic_args();
    let mut out = String::new();
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = chars.next().ok_or(FuncError::SpecEndsInPercent)?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let v = args.next().ok_or(FuncError::TooFewArguments(verb))?;
        match verb {
            's' | 'v' => out.push_str(&to_text(v)),
            'd' => out.push_str(&format!("{}", num(v).trunc() as i64)),
            'f' => out.push_str(&format!("{:.6}", num(v))),
            'q' => out.push_str(&format!("{:?}", to_text(v))),
            other => return Err(FuncError::UnsupportedVerb(other)),
        }
        if out.len() > MAX_FUNC_RESULT_BYTES {
            return Err(FuncError::TooLong);
        }
    }
    Ok(Value::String(out))
}
