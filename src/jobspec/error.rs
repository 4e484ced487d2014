//! What is wrong inside a jobspec that parsed as HCL: one variant per kind of mistake, each
//! printing exactly Nomad's text (the API answers it as a 400 body, after `file:line,col: `),
//! and keeping the evaluation or conversion error it came from as `source()`.

use std::fmt;

/// Why a jobspec's blocks, variables or values do not make a job.
#[derive(Debug)]
pub enum SpecError {
    /// An argument a block does not take.
    UnsupportedArgument(String),
    /// A block a block does not take.
    UnsupportedBlock(String),
    /// `job` without exactly one label.
    MissingJobName,
    /// No `job` block.
    MissingJob,
    /// More than one `job` block.
    DuplicateJob,
    /// A block that may appear once appeared again (its identifier).
    DuplicateBlock(String),
    /// A labelled block without its one label (what it is: `group`, `task`, `port`, …).
    MissingName(String),
    /// A label on a block that takes none.
    ExtraneousLabel { ident: String, label: String },
    /// An `identity` block with more than one label.
    ExtraneousIdentityLabel,
    /// `meta`/`env` (or `config`) set both as an argument and as a block.
    SetTwice(String),
    /// A nested block whose name is also an argument of the same block: inside a driver
    /// `config` (`in_config`) or a block kept as written.
    ArgumentAndBlock { ident: String, in_config: bool },
    /// A value of the wrong type (`want`: Nomad's words for the type, e.g. `a bool is`).
    WrongType { key: String, want: &'static str },
    /// A duration string Go cannot parse.
    BadDuration { key: String, value: String },
    /// More locals than `MAX_LOCALS`.
    TooManyLocals,
    /// More `variable` blocks than `MAX_VARIABLES`.
    TooManyVariables,
    /// A `variable` block without its one label.
    MissingVariableName,
    /// Two `variable` blocks of one name.
    DuplicateVariable(String),
    /// A var file sets a variable the jobspec does not declare.
    UndeclaredInVarFile(String),
    /// `-var` sets a variable the jobspec does not declare.
    UndeclaredVarFlag(String),
    /// A declared variable with no default and no value given.
    UnsetVariable(String),
    /// A `number` variable given a text that is not one.
    NotANumber(String),
    /// A `bool` variable given a text that is not one.
    NotABool(String),
    /// The values evaluated add up to more than `budget::MAX_EVALUATED_BYTES`.
    EvaluatedTooLarge,
    /// Evaluating an expression failed; `what` says which (`local.x`, `variable "x"
    /// default`, …).
    Eval {
        what: String,
        source: hcl::eval::Error,
    },
    /// An expression (or a template inside a string) did not evaluate.
    Expr(hcl::eval::Error),
    /// A string template hcl-rs could not take apart.
    Template(hcl::Error),
    /// A template interpolated a value that is not a string, number or bool (the
    /// interpolation as written).
    TemplateValue(String),
    /// `%{...}` directives.
    TemplateDirective,
    /// Something HCL parsing refused that is not a syntax error.
    Hcl(hcl::Error),
    /// An evaluated value that is not JSON (non-finite numbers).
    Json {
        key: String,
        source: serde_json::Error,
    },
    /// A mistake inside the value of argument `key`.
    Argument { key: String, source: Box<SpecError> },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SpecError::*;
        match self {
            UnsupportedArgument(key) => write!(
                f,
                "Unsupported argument; An argument named {key:?} is not expected here."
            ),
            UnsupportedBlock(ident) => write!(
                f,
                "Unsupported block type; Blocks of type {ident:?} are not expected here."
            ),
            MissingJobName => f.write_str(
                "Missing job name; A job block needs exactly one label (the job ID).",
            ),
            MissingJob => f.write_str("Missing job block; A job block is required in a jobspec."),
            DuplicateJob => f.write_str(
                "Duplicate job block; Only one job block is allowed in a jobspec.",
            ),
            DuplicateBlock(ident) => write!(
                f,
                "Duplicate {ident} block; Only one {ident} block is allowed here."
            ),
            MissingName(what) => write!(
                f,
                "Missing name for {what}; All {what} blocks must have 1 label (the name)."
            ),
            ExtraneousLabel { ident, label } => write!(
                f,
                "Extraneous label for {ident}; No labels are expected for {ident} blocks (got {label:?})."
            ),
            ExtraneousIdentityLabel => {
                f.write_str("Extraneous label for identity; At most one label is expected.")
            }
            SetTwice(k) => write!(
                f,
                "Duplicate {k}; {k:?} is set both as an argument and as a block."
            ),
            ArgumentAndBlock { ident, in_config } => {
                if *in_config {
                    f.write_str("config: ")?;
                }
                write!(f, "{ident:?} is both an argument and a block")
            }
            WrongType { key, want } => write!(
                f,
                "Incorrect attribute value type; Inappropriate value for attribute {key:?}: {want} required."
            ),
            BadDuration { key, value } => write!(f, "{key}: time: invalid duration {value:?}"),
            TooManyLocals => write!(
                f,
                "Too many locals; a jobspec may define at most {}",
                super::MAX_LOCALS
            ),
            TooManyVariables => write!(
                f,
                "Too many variables; a jobspec may declare at most {}",
                super::MAX_VARIABLES
            ),
            MissingVariableName => f.write_str(
                "Missing name for variable; All variable blocks must have 1 label (name).",
            ),
            DuplicateVariable(name) => write!(
                f,
                "Duplicate variable; A variable named {name:?} was already declared."
            ),
            UndeclaredInVarFile(name) => write!(
                f,
                "Undefined variable; A {name:?} variable was set but was not found in known variables. To declare variable {name:?}, place this block in your jobspec: variable {name:?} {{}}"
            ),
            UndeclaredVarFlag(name) => write!(
                f,
                "Undefined -var variable; A {name:?} variable was passed in but was not found in known variables. To declare variable {name:?}, place this block in your jobspec: variable {name:?} {{}}"
            ),
            UnsetVariable(name) => write!(
                f,
                "Unset variable {name:?}; A used variable must be set or have a default value; see https://developer.hashicorp.com/nomad/docs/job-specification/hcl2/variables for details."
            ),
            NotANumber(name) => write!(
                f,
                "Invalid value for variable; variable {name:?}: a number is required"
            ),
            NotABool(name) => write!(
                f,
                "Invalid value for variable; variable {name:?}: a bool is required"
            ),
            EvaluatedTooLarge => write!(
                f,
                "Jobspec too large when evaluated; its values may add up to more than {} bytes",
                super::budget::MAX_EVALUATED_BYTES
            ),
            Eval { what, source } => write!(f, "{what}: {source}"),
            Expr(e) => write!(f, "{e}"),
            Template(e) | Hcl(e) => write!(f, "{e}"),
            TemplateValue(expr) => write!(
                f,
                "Invalid template interpolation value; Cannot include the given value in a string template: string required (in ${{{expr}}})"
            ),
            TemplateDirective => f.write_str("template directives (%{...}) are not supported"),
            Json { key, source } => write!(f, "{key}: {source}"),
            Argument { key, source } => write!(f, "{key}: {source}"),
        }
    }
}

impl std::error::Error for SpecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpecError::Eval { source, .. } => Some(source),
            SpecError::Expr(e) => Some(e),
            SpecError::Template(e) | SpecError::Hcl(e) => Some(e),
            SpecError::Json { source, .. } => Some(source),
            SpecError::Argument { source, .. } => Some(&**source),
            _ => None,
        }
    }
}
