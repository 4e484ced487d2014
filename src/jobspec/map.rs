//! Nomad's jobspec blocks → the JSON `Job` (Go field names): one table per block kind naming
//! each argument's JSON key and type, and each sub-block's key and shape (one, repeated →
//! array, labelled → map). Unknown arguments and blocks are refused with Nomad's texts.

use serde_json::{Map, Value};

use super::{Block, SpecError};
use crate::config::parse_go_duration;

/// An argument a block does not take.
fn unsupported_argument(key: &str) -> SpecError {
    SpecError::UnsupportedArgument(key.to_string())
}

/// A block a block does not take.
fn unsupported_block(ident: &str) -> SpecError {
    SpecError::UnsupportedBlock(ident.to_string())
}

/// How an argument's value becomes JSON.
#[derive(Clone, Copy)]
enum K {
    Str,
    Int,
    Bool,
    /// A Go duration (`"30s"`) → nanoseconds.
    Dur,
    StrList,
    /// An object whose values become strings (`meta`, `env`).
    StrMap,
    /// Kept as written (driver `config`).
    Any,
}

/// A sub-block's place in the parent object.
#[derive(Clone, Copy)]
enum Shape {
    /// At most one; an object.
    One,
    /// Repeated; an array in the order written.
    Many,
    /// Labelled; an object keyed by label.
    ByLabel,
    /// A block of string attributes merged into a string map (`meta {}`, `env {}`).
    Attrs,
}

type Attr = (&'static str, &'static str, K);
type Conv = fn(&Block) -> Result<Value, SpecError>;
type Sub = (&'static str, &'static str, Shape, Conv);

/// The `job` block.
pub fn job(b: &Block) -> Result<Value, SpecError> {
    let [label] = b.labels.as_slice() else {
        return Err(SpecError::MissingJobName);
    };
    let mut out = Map::new();
    out.insert("ID".into(), Value::String(label.clone()));
    out.insert("Name".into(), Value::String(label.clone()));
    const ATTRS: &[Attr] = &[
        ("name", "Name", K::Str),
        ("region", "Region", K::Str),
        ("namespace", "Namespace", K::Str),
        ("type", "Type", K::Str),
        ("priority", "Priority", K::Int),
        ("all_at_once", "AllAtOnce", K::Bool),
        ("datacenters", "Datacenters", K::StrList),
        ("node_pool", "NodePool", K::Str),
        ("meta", "Meta", K::StrMap),
        ("consul_token", "ConsulToken", K::Str),
        ("vault_token", "VaultToken", K::Str),
    ];
    const SUBS: &[Sub] = &[
        ("constraint", "Constraints", Shape::Many, constraint),
        ("affinity", "Affinities", Shape::Many, affinity),
        ("spread", "Spreads", Shape::Many, spread),
        ("group", "TaskGroups", Shape::Many, group),
        ("update", "Update", Shape::One, update),
        ("migrate", "Migrate", Shape::One, migrate),
        ("reschedule", "Reschedule", Shape::One, reschedule),
        ("periodic", "Periodic", Shape::One, periodic),
        (
            "parameterized",
            "ParameterizedJob",
            Shape::One,
            parameterized,
        ),
        ("meta", "Meta", Shape::Attrs, none),
        ("vault", "Vault", Shape::One, generic),
        ("consul", "Consul", Shape::One, generic),
        ("multiregion", "Multiregion", Shape::One, generic),
    ];
    fill(&mut out, b, ATTRS, SUBS)?;
    Ok(Value::Object(out))
}

fn group(b: &Block) -> Result<Value, SpecError> {
    let mut out = labelled(b, "Name", "group")?;
    const ATTRS: &[Attr] = &[
        ("count", "Count", K::Int),
        ("shutdown_delay", "ShutdownDelay", K::Dur),
        (
            "stop_after_client_disconnect",
            "StopAfterClientDisconnect",
            K::Dur,
        ),
        ("max_client_disconnect", "MaxClientDisconnect", K::Dur),
        (
            "prevent_reschedule_on_lost",
            "PreventRescheduleOnLost",
            K::Bool,
        ),
        ("meta", "Meta", K::StrMap),
    ];
    const SUBS: &[Sub] = &[
        ("constraint", "Constraints", Shape::Many, constraint),
        ("affinity", "Affinities", Shape::Many, affinity),
        ("spread", "Spreads", Shape::Many, spread),
        ("task", "Tasks", Shape::Many, task),
        ("restart", "RestartPolicy", Shape::One, restart),
        ("reschedule", "ReschedulePolicy", Shape::One, reschedule),
        ("disconnect", "Disconnect", Shape::One, disconnect),
        ("network", "Networks", Shape::Many, network),
        (
            "ephemeral_disk",
            "EphemeralDisk",
            Shape::One,
            ephemeral_disk,
        ),
        ("update", "Update", Shape::One, update),
        ("migrate", "Migrate", Shape::One, migrate),
        ("meta", "Meta", Shape::Attrs, none),
        ("service", "Services", Shape::Many, generic),
        ("volume", "Volumes", Shape::ByLabel, generic),
        ("scaling", "Scaling", Shape::One, generic),
        ("consul", "Consul", Shape::One, generic),
    ];
    fill(&mut out, b, ATTRS, SUBS)?;
    Ok(Value::Object(out))
}

fn task(b: &Block) -> Result<Value, SpecError> {
    let mut out = labelled(b, "Name", "task")?;
    const ATTRS: &[Attr] = &[
        ("driver", "Driver", K::Str),
        ("user", "User", K::Str),
        ("config", "Config", K::Any),
        ("env", "Env", K::StrMap),
        ("meta", "Meta", K::StrMap),
        ("kill_timeout", "KillTimeout", K::Dur),
        ("kill_signal", "KillSignal", K::Str),
        ("leader", "Leader", K::Bool),
        ("shutdown_delay", "ShutdownDelay", K::Dur),
        ("kind", "Kind", K::Str),
    ];
    const SUBS: &[Sub] = &[
        ("constraint", "Constraints", Shape::Many, constraint),
        ("affinity", "Affinities", Shape::Many, affinity),
        ("config", "Config", Shape::One, raw_doc),
        ("env", "Env", Shape::Attrs, none),
        ("meta", "Meta", Shape::Attrs, none),
        ("resources", "Resources", Shape::One, resources),
        ("template", "Templates", Shape::Many, template),
        ("lifecycle", "Lifecycle", Shape::One, lifecycle),
        ("logs", "LogConfig", Shape::One, logs),
        ("restart", "RestartPolicy", Shape::One, restart),
        ("artifact", "Artifacts", Shape::Many, artifact),
        (
            "dispatch_payload",
            "DispatchPayload",
            Shape::One,
            dispatch_payload,
        ),
        ("volume_mount", "VolumeMounts", Shape::Many, volume_mount),
        ("service", "Services", Shape::Many, generic),
        ("vault", "Vault", Shape::One, generic),
        ("consul", "Consul", Shape::One, generic),
        ("scaling", "ScalingPolicies", Shape::Many, generic),
    ];
    // `identity` without a label is the default identity (`Identity`); named ones go to
    // `Identities`, as Nomad splits them.
    let mut rest = b.clone();
    rest.blocks.retain(|sb| sb.ident != "identity");
    fill(&mut out, &rest, ATTRS, SUBS)?;
    let mut named = Vec::new();
    for sb in b.blocks.iter().filter(|sb| sb.ident == "identity") {
        let mut v = identity(sb)?;
        match sb.labels.as_slice() {
            [] => {
                if out.contains_key("Identity") {
                    return Err(duplicate("identity"));
                }
                out.insert("Identity".into(), v);
            }
            [name] => {
                if let Value::Object(m) = &mut v {
                    m.insert("Name".into(), Value::String(name.clone()));
                }
                named.push(v);
            }
            _ => return Err(SpecError::ExtraneousIdentityLabel),
        }
    }
    if !named.is_empty() {
        out.insert("Identities".into(), Value::Array(named));
    }
    Ok(Value::Object(out))
}

fn identity(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("name", "Name", K::Str),
            ("aud", "Audience", K::StrList),
            ("env", "Env", K::Bool),
            ("file", "File", K::Bool),
            ("filepath", "Filepath", K::Str),
            ("change_mode", "ChangeMode", K::Str),
            ("change_signal", "ChangeSignal", K::Str),
            ("ttl", "TTL", K::Dur),
        ],
    )
}

fn resources(b: &Block) -> Result<Value, SpecError> {
    let mut out = unlabelled(b)?;
    const ATTRS: &[Attr] = &[
        ("cpu", "CPU", K::Int),
        ("cores", "Cores", K::Int),
        ("memory", "MemoryMB", K::Int),
        ("memory_max", "MemoryMaxMB", K::Int),
        ("disk", "DiskMB", K::Int),
        ("secrets", "SecretsMB", K::Int),
    ];
    const SUBS: &[Sub] = &[
        ("network", "Networks", Shape::Many, network),
        ("device", "Devices", Shape::Many, generic),
        ("numa", "NUMA", Shape::One, generic),
    ];
    fill(&mut out, b, ATTRS, SUBS)?;
    Ok(Value::Object(out))
}

fn restart(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("attempts", "Attempts", K::Int),
            ("interval", "Interval", K::Dur),
            ("delay", "Delay", K::Dur),
            ("mode", "Mode", K::Str),
            ("render_templates", "RenderTemplates", K::Bool),
        ],
    )
}

fn reschedule(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("attempts", "Attempts", K::Int),
            ("interval", "Interval", K::Dur),
            ("delay", "Delay", K::Dur),
            ("delay_function", "DelayFunction", K::Str),
            ("max_delay", "MaxDelay", K::Dur),
            ("unlimited", "Unlimited", K::Bool),
        ],
    )
}

fn disconnect(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("lost_after", "LostAfter", K::Dur),
            ("replace", "Replace", K::Bool),
            ("reconcile", "Reconcile", K::Str),
            ("stop_on_client_after", "StopOnClientAfter", K::Dur),
        ],
    )
}

fn ephemeral_disk(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("sticky", "Sticky", K::Bool),
            ("migrate", "Migrate", K::Bool),
            ("size", "SizeMB", K::Int),
        ],
    )
}

fn update(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("stagger", "Stagger", K::Dur),
            ("max_parallel", "MaxParallel", K::Int),
            ("health_check", "HealthCheck", K::Str),
            ("min_healthy_time", "MinHealthyTime", K::Dur),
            ("healthy_deadline", "HealthyDeadline", K::Dur),
            ("progress_deadline", "ProgressDeadline", K::Dur),
            ("auto_revert", "AutoRevert", K::Bool),
            ("auto_promote", "AutoPromote", K::Bool),
            ("canary", "Canary", K::Int),
        ],
    )
}

fn migrate(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("max_parallel", "MaxParallel", K::Int),
            ("health_check", "HealthCheck", K::Str),
            ("min_healthy_time", "MinHealthyTime", K::Dur),
            ("healthy_deadline", "HealthyDeadline", K::Dur),
        ],
    )
}

fn periodic(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("cron", "Spec", K::Str),
            ("crons", "Specs", K::StrList),
            ("prohibit_overlap", "ProhibitOverlap", K::Bool),
            ("time_zone", "TimeZone", K::Str),
            ("enabled", "Enabled", K::Bool),
        ],
    )
}

fn parameterized(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("payload", "Payload", K::Str),
            ("meta_required", "MetaRequired", K::StrList),
            ("meta_optional", "MetaOptional", K::StrList),
        ],
    )
}

fn lifecycle(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[("hook", "Hook", K::Str), ("sidecar", "Sidecar", K::Bool)],
    )
}

fn logs(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("max_files", "MaxFiles", K::Int),
            ("max_file_size", "MaxFileSizeMB", K::Int),
            ("disabled", "Disabled", K::Bool),
        ],
    )
}

fn dispatch_payload(b: &Block) -> Result<Value, SpecError> {
    simple(b, &[("file", "File", K::Str)])
}

fn volume_mount(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("volume", "Volume", K::Str),
            ("destination", "Destination", K::Str),
            ("read_only", "ReadOnly", K::Bool),
            ("propagation_mode", "PropagationMode", K::Str),
        ],
    )
}

fn artifact(b: &Block) -> Result<Value, SpecError> {
    let mut out = unlabelled(b)?;
    const ATTRS: &[Attr] = &[
        ("source", "GetterSource", K::Str),
        ("destination", "RelativeDest", K::Str),
        ("mode", "GetterMode", K::Str),
        ("options", "GetterOptions", K::StrMap),
        ("headers", "GetterHeaders", K::StrMap),
        ("chown", "Chown", K::Bool),
    ];
    const SUBS: &[Sub] = &[
        ("options", "GetterOptions", Shape::Attrs, none),
        ("headers", "GetterHeaders", Shape::Attrs, none),
    ];
    fill(&mut out, b, ATTRS, SUBS)?;
    Ok(Value::Object(out))
}

fn template(b: &Block) -> Result<Value, SpecError> {
    let mut out = unlabelled(b)?;
    const ATTRS: &[Attr] = &[
        ("source", "SourcePath", K::Str),
        ("destination", "DestPath", K::Str),
        ("data", "EmbeddedTmpl", K::Str),
        ("change_mode", "ChangeMode", K::Str),
        ("change_signal", "ChangeSignal", K::Str),
        ("splay", "Splay", K::Dur),
        ("perms", "Perms", K::Str),
        ("uid", "Uid", K::Int),
        ("gid", "Gid", K::Int),
        ("left_delimiter", "LeftDelim", K::Str),
        ("right_delimiter", "RightDelim", K::Str),
        ("env", "Envvars", K::Bool),
        ("vault_grace", "VaultGrace", K::Dur),
        ("error_on_missing_key", "ErrMissingKey", K::Bool),
    ];
    const SUBS: &[Sub] = &[
        ("wait", "Wait", Shape::One, generic),
        ("change_script", "ChangeScript", Shape::One, generic),
    ];
    fill(&mut out, b, ATTRS, SUBS)?;
    Ok(Value::Object(out))
}

fn network(b: &Block) -> Result<Value, SpecError> {
    let mut out = unlabelled(b)?;
    const ATTRS: &[Attr] = &[
        ("mode", "Mode", K::Str),
        ("hostname", "Hostname", K::Str),
        ("mbits", "MBits", K::Int),
    ];
    const SUBS: &[Sub] = &[("dns", "DNS", Shape::One, dns)];
    let mut rest = b.clone();
    rest.blocks.retain(|sb| sb.ident != "port");
    fill(&mut out, &rest, ATTRS, SUBS)?;
    // A port with `static` is reserved, any other dynamic (Nomad's split).
    let (mut reserved, mut dynamic) = (Vec::new(), Vec::new());
    for sb in b.blocks.iter().filter(|sb| sb.ident == "port") {
        let mut p = labelled(sb, "Label", "port")?;
        let fields = simple(
            sb,
            &[
                ("static", "Value", K::Int),
                ("to", "To", K::Int),
                ("host_network", "HostNetwork", K::Str),
            ],
        )?;
        let is_static = fields.get("Value").is_some();
        if let Value::Object(m) = fields {
            p.extend(m);
        }
        if is_static {
            reserved.push(Value::Object(p));
        } else {
            dynamic.push(Value::Object(p));
        }
    }
    if !reserved.is_empty() {
        out.insert("ReservedPorts".into(), Value::Array(reserved));
    }
    if !dynamic.is_empty() {
        out.insert("DynamicPorts".into(), Value::Array(dynamic));
    }
    Ok(Value::Object(out))
}

fn dns(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("servers", "Servers", K::StrList),
            ("searches", "Searches", K::StrList),
            ("options", "Options", K::StrList),
        ],
    )
}

fn constraint(b: &Block) -> Result<Value, SpecError> {
    let mut out = unlabelled(b)?;
    for (k, v) in &b.attrs {
        match k.as_str() {
            "attribute" => {
                out.insert("LTarget".into(), convert(k, v, K::Str)?);
            }
            "value" => {
                out.insert("RTarget".into(), convert(k, v, K::Str)?);
            }
            "operator" => {
                out.insert("Operand".into(), convert(k, v, K::Str)?);
            }
            // The shorthand operators: `distinct_hosts = true`, `version = ">= 1.2"`, ….
            "distinct_hosts" => {
                if convert(k, v, K::Bool)? == Value::Bool(true) {
                    out.insert("Operand".into(), Value::String("distinct_hosts".into()));
                }
            }
            "distinct_property" => {
                out.insert("Operand".into(), Value::String(k.clone()));
                out.insert("LTarget".into(), convert(k, v, K::Str)?);
            }
            "version" | "semver" | "regexp" | "set_contains" | "set_contains_any"
            | "set_contains_all" => {
                out.insert("Operand".into(), Value::String(k.clone()));
                out.insert("RTarget".into(), convert(k, v, K::Str)?);
            }
            other => return Err(unsupported_argument(other)),
        }
    }
    if let Some(sb) = b.blocks.first() {
        return Err(unsupported_block(&sb.ident));
    }
    Ok(Value::Object(out))
}

fn affinity(b: &Block) -> Result<Value, SpecError> {
    simple(
        b,
        &[
            ("attribute", "LTarget", K::Str),
            ("value", "RTarget", K::Str),
            ("operator", "Operand", K::Str),
            ("weight", "Weight", K::Int),
        ],
    )
}

fn spread(b: &Block) -> Result<Value, SpecError> {
    let mut out = unlabelled(b)?;
    const ATTRS: &[Attr] = &[
        ("attribute", "Attribute", K::Str),
        ("weight", "Weight", K::Int),
    ];
    const SUBS: &[Sub] = &[("target", "SpreadTarget", Shape::Many, spread_target)];
    fill(&mut out, b, ATTRS, SUBS)?;
    Ok(Value::Object(out))
}

fn spread_target(b: &Block) -> Result<Value, SpecError> {
    let mut out = labelled(b, "Value", "target")?;
    if let Value::Object(m) = simple(b, &[("percent", "Percent", K::Int)])? {
        out.extend(m);
    }
    Ok(Value::Object(out))
}

/// Driver `config` (and other free-form blocks): attributes as written, nested blocks as
/// arrays of objects, labels nesting as objects (the agent config's document shape).
fn raw_doc(b: &Block) -> Result<Value, SpecError> {
    let mut out = Map::new();
    for (k, v) in &b.attrs {
        out.insert(k.clone(), v.clone());
    }
    for sb in &b.blocks {
        let mut inner = raw_doc(sb)?;
        for label in sb.labels.iter().rev() {
            let mut m = Map::new();
            m.insert(label.clone(), inner);
            inner = Value::Object(m);
        }
        match out
            .entry(sb.ident.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(list) => list.push(inner),
            _ => {
                return Err(SpecError::ArgumentAndBlock {
                    ident: sb.ident.clone(),
                    in_config: true,
                })
            }
        }
    }
    Ok(Value::Object(out))
}

/// Blocks nomadlet does not interpret (`service`, `volume`, `vault`, …): snake_case keys
/// become Go's CamelCase, nested blocks arrays; durations stay as written.
fn generic(b: &Block) -> Result<Value, SpecError> {
    let mut out = Map::new();
    for (k, v) in &b.attrs {
        out.insert(camel(k), v.clone());
    }
    for sb in &b.blocks {
        let v = generic(sb)?;
        match out
            .entry(camel(&sb.ident))
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(list) => list.push(v),
            _ => {
                return Err(SpecError::ArgumentAndBlock {
                    ident: sb.ident.clone(),
                    in_config: false,
                })
            }
        }
    }
    if let [label] = b.labels.as_slice() {
        out.insert("Name".into(), Value::String(label.clone()));
    }
    Ok(Value::Object(out))
}

fn camel(key: &str) -> String {
    key.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// A converter for `Shape::Attrs` blocks, which `fill` reads itself.
fn none(_: &Block) -> Result<Value, SpecError> {
    Ok(Value::Null)
}

fn duplicate(ident: &str) -> SpecError {
    SpecError::DuplicateBlock(ident.to_string())
}

fn unlabelled(b: &Block) -> Result<Map<String, Value>, SpecError> {
    if let Some(l) = b.labels.first() {
        return Err(SpecError::ExtraneousLabel {
            ident: b.ident.clone(),
            label: l.clone(),
        });
    }
    Ok(Map::new())
}

fn labelled(b: &Block, key: &str, what: &str) -> Result<Map<String, Value>, SpecError> {
    let [label] = b.labels.as_slice() else {
        return Err(SpecError::MissingName(what.to_string()));
    };
    let mut out = Map::new();
    out.insert(key.into(), Value::String(label.clone()));
    Ok(out)
}

/// A block of arguments only, without labels.
fn simple(b: &Block, attrs: &[Attr]) -> Result<Value, SpecError> {
    if b.ident != "port" && b.ident != "target" && b.ident != "identity" {
        unlabelled(b)?;
    }
    let mut out = Map::new();
    fill(&mut out, b, attrs, &[])?;
    Ok(Value::Object(out))
}

fn fill(
    out: &mut Map<String, Value>,
    b: &Block,
    attrs: &[Attr],
    subs: &[Sub],
) -> Result<(), SpecError> {
    for (k, v) in &b.attrs {
        let Some((_, json_key, kind)) = attrs.iter().find(|(h, _, _)| h == k) else {
            return Err(unsupported_argument(k));
        };
        if out.contains_key(*json_key) && matches!(kind, K::StrMap | K::Any) {
            return Err(SpecError::SetTwice(k.clone()));
        }
        out.insert((*json_key).to_string(), convert(k, v, *kind)?);
    }
    for sb in &b.blocks {
        let Some((_, json_key, shape, conv)) = subs.iter().find(|(h, ..)| *h == sb.ident) else {
            return Err(unsupported_block(&sb.ident));
        };
        let key = (*json_key).to_string();
        match shape {
            Shape::One => {
                if out.contains_key(&key) {
                    return Err(duplicate(&sb.ident));
                }
                out.insert(key, conv(sb)?);
            }
            Shape::Many => {
                let v = conv(sb)?;
                match out.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                    Value::Array(list) => list.push(v),
                    _ => return Err(duplicate(&sb.ident)),
                }
            }
            Shape::ByLabel => {
                let [label] = sb.labels.as_slice() else {
                    return Err(SpecError::MissingName(sb.ident.clone()));
                };
                let v = conv(sb)?;
                match out.entry(key).or_insert_with(|| Value::Object(Map::new())) {
                    Value::Object(m) => {
                        m.insert(label.clone(), v);
                    }
                    _ => return Err(duplicate(&sb.ident)),
                }
            }
            Shape::Attrs => {
                unlabelled(sb)?;
                if let Some(inner) = sb.blocks.first() {
                    return Err(unsupported_block(&inner.ident));
                }
                let mut m = Map::new();
                for (k, v) in &sb.attrs {
                    m.insert(k.clone(), convert(k, v, K::Str)?);
                }
                match out.entry(key).or_insert_with(|| Value::Object(Map::new())) {
                    Value::Object(existing) => existing.extend(m),
                    _ => return Err(duplicate(&sb.ident)),
                }
            }
        }
    }
    Ok(())
}

fn wrong_type(key: &str, want: &'static str) -> SpecError {
    SpecError::WrongType {
        key: key.to_string(),
        want,
    }
}

fn convert(key: &str, v: &Value, kind: K) -> Result<Value, SpecError> {
    match kind {
        K::Any => Ok(v.clone()),
        K::Str => match v {
            Value::String(_) => Ok(v.clone()),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => Err(wrong_type(key, "string")),
        },
        K::Int => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(v.clone()),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => Ok(Value::from(f as i64)),
                _ => Err(wrong_type(key, "a whole number is")),
            },
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| wrong_type(key, "a number is")),
            _ => Err(wrong_type(key, "a number is")),
        },
        K::Bool => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            _ => Err(wrong_type(key, "a bool is")),
        },
        K::Dur => match v {
            Value::String(s) => parse_go_duration(s)
                .and_then(|d| i64::try_from(d.as_nanos()).ok())
                .map(Value::from)
                .ok_or_else(|| SpecError::BadDuration {
                    key: key.to_string(),
                    value: s.clone(),
                }),
            Value::Number(n) if n.is_i64() => Ok(v.clone()),
            _ => Err(wrong_type(key, "a duration string is")),
        },
        K::StrList => match v {
            Value::Array(items) => items
                .iter()
                .map(|i| convert(key, i, K::Str))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            _ => Err(wrong_type(key, "list of string")),
        },
        K::StrMap => match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, x) in m {
                    out.insert(k.clone(), convert(k, x, K::Str)?);
                }
                Ok(Value::Object(out))
            }
            _ => Err(wrong_type(key, "map of string")),
        },
    }
}
