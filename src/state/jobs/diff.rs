//! Nomad's job diff (`JobDiff`, `TaskGroupDiff`, `TaskDiff`, `ObjectDiff`, `FieldDiff`): what
//! changed between two versions of a job, as `/v1/job/:id/versions?diffs=true` and the plan
//! endpoint show it. Computed on the jobs' JSON (the shape the API shows), with Nomad's
//! rules: a struct's primitive fields flattened (`Meta[key]`, `Env[key]`), nested structs
//! diffed as named objects, lists of objects diffed as sets (an edited element is one
//! `Deleted` and one `Added` object), groups and tasks matched by name, everything sorted
//! the way Nomad sorts it. The plan fills `Annotations` and a group's `Updates` itself.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::spec::Job;

/// Nomad's `DiffType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DiffType {
    None,
    Added,
    Deleted,
    Edited,
}

impl DiffType {
    /// Nomad's sort rank: `Edited` first, then `Added`, `Deleted`, `None`.
    fn rank(self) -> u8 {
        match self {
            DiffType::Edited => 0,
            DiffType::Added => 1,
            DiffType::Deleted => 2,
            DiffType::None => 3,
        }
    }
}

/// An empty list is Go's nil slice: `null`.
fn null_if_empty<T: Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        v.serialize(s)
    }
}

/// An empty map is Go's nil map: `null`.
fn null_if_empty_map<S: Serializer>(v: &BTreeMap<String, u64>, s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        v.serialize(s)
    }
}

/// One primitive field that changed (or, in a contextual object, did not).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FieldDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    pub old: String,
    pub new: String,
    #[serde(serialize_with = "null_if_empty")]
    pub annotations: Vec<String>,
}

/// A nested object (a restart policy, a constraint, a task's config) and what changed in it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ObjectDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    #[serde(serialize_with = "null_if_empty")]
    pub fields: Vec<FieldDiff>,
    #[serde(serialize_with = "null_if_empty")]
    pub objects: Vec<ObjectDiff>,
}

/// One task of a group.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    #[serde(serialize_with = "null_if_empty")]
    pub fields: Vec<FieldDiff>,
    #[serde(serialize_with = "null_if_empty")]
    pub objects: Vec<ObjectDiff>,
    #[serde(serialize_with = "null_if_empty")]
    pub annotations: Vec<String>,
}

/// One task group; `Updates` (what the scheduler would do: `create`, `destroy`, `in-place
/// update`, ... → count) is the plan's to fill.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskGroupDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    #[serde(serialize_with = "null_if_empty")]
    pub fields: Vec<FieldDiff>,
    #[serde(serialize_with = "null_if_empty")]
    pub objects: Vec<ObjectDiff>,
    #[serde(serialize_with = "null_if_empty")]
    pub tasks: Vec<TaskDiff>,
    #[serde(serialize_with = "null_if_empty_map")]
    pub updates: BTreeMap<String, u64>,
}

/// The diff of two jobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(serialize_with = "null_if_empty")]
    pub fields: Vec<FieldDiff>,
    #[serde(serialize_with = "null_if_empty")]
    pub objects: Vec<ObjectDiff>,
    #[serde(serialize_with = "null_if_empty")]
    pub task_groups: Vec<TaskGroupDiff>,
}

/// Two jobs that cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffError {
    /// Nomad's `can not diff jobs with different IDs: "a" and "b"`.
    DifferentIds(String, String),
}

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffError::DifferentIds(a, b) => {
                write!(f, "can not diff jobs with different IDs: {a:?} and {b:?}")
            }
        }
    }
}

impl std::error::Error for DiffError {}

/// The job fields that change with every version and are never part of a diff.
const JOB_FILTER: &[&str] = &[
    "ID",
    "Status",
    "StatusDescription",
    "Version",
    "Stable",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "Update",
    "SubmitTime",
    "NomadTokenID",
    "VaultToken",
];

/// The Go map fields (flattened as `Name[key]`) among an object's members; every other
/// object member is a struct, diffed on its own or not at all.
const MAP_FIELDS: &[&str] = &["Meta", "Env"];

/// The diff from `old` to `new` (`None`: the job does not exist on that side). With
/// `contextual`, a changed object also lists its unchanged fields (type `None`), as Nomad's
/// versions and plan endpoints ask for.
pub fn job_diff(
    old: Option<&Job>,
    new: Option<&Job>,
    contextual: bool,
) -> Result<JobDiff, DiffError> {
    let to_value = |j: &Job| serde_json::to_value(j).unwrap_or(Value::Null);
    let (o, n) = (old.map(to_value), new.map(to_value));
    let mut diff = JobDiff {
        kind: DiffType::None,
        id: String::new(),
        fields: Vec::new(),
        objects: Vec::new(),
        task_groups: Vec::new(),
    };
    match (old, new) {
        (None, None) => return Ok(diff),
        (None, Some(n)) => {
            diff.kind = DiffType::Added;
            diff.id = n.id.clone();
        }
        (Some(o), None) => {
            diff.kind = DiffType::Deleted;
            diff.id = o.id.clone();
        }
        (Some(o), Some(n)) => {
            if o.id != n.id {
                return Err(DiffError::DifferentIds(o.id.clone(), n.id.clone()));
            }
            diff.id = n.id.clone();
        }
    }
    let (o, n) = (o.unwrap_or(Value::Null), n.unwrap_or(Value::Null));
    diff.fields = field_diffs(
        &flat_primitive(&o, JOB_FILTER),
        &flat_primitive(&n, JOB_FILTER),
        false,
    );
    if let Some(d) = string_set_diff(
        &strings(o.get("Datacenters")),
        &strings(n.get("Datacenters")),
        "Datacenters",
        contextual,
    )
    .filter(|d| d.kind != DiffType::None)
    {
        diff.objects.push(d);
    }
    diff.objects.extend(set_diff(
        o.get("Constraints"),
        n.get("Constraints"),
        &["str"],
        "Constraint",
        contextual,
    ));
    diff.objects.extend(set_diff(
        o.get("Affinities"),
        n.get("Affinities"),
        &["str"],
        "Affinity",
        contextual,
    ));
    diff.task_groups = named_diffs(o.get("TaskGroups"), n.get("TaskGroups"), |a, b| {
        group_diff(a, b, contextual)
    });
    for (name, key) in [
        ("Periodic", "Periodic"),
        ("ParameterizedJob", "ParameterizedJob"),
        ("Multiregion", "Multiregion"),
    ] {
        diff.objects.extend(primitive_object_diff(
            o.get(key),
            n.get(key),
            &[],
            name,
            contextual,
        ));
    }
    if diff.kind == DiffType::None
        && (diff.fields.iter().any(|f| f.kind != DiffType::None)
            || diff.objects.iter().any(|f| f.kind != DiffType::None)
            || diff.task_groups.iter().any(|f| f.kind != DiffType::None))
    {
        diff.kind = DiffType::Edited;
    }
    Ok(diff)
}

/// A value as Go's `flatmap` would print a primitive; `None` for nulls and composites.
fn primitive(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// An object's primitive members (and its map members as `Name[key]`), minus `filter`.
fn flat_primitive(v: &Value, filter: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(obj) = v.as_object() else {
        return out;
    };
    for (k, x) in obj {
        if filter.contains(&k.as_str()) {
            continue;
        }
        if let Some(s) = primitive(x) {
            out.insert(k.clone(), s);
        } else if let (Some(m), true) = (x.as_object(), MAP_FIELDS.contains(&k.as_str())) {
            for (mk, mv) in m {
                if let Some(s) = primitive(mv) {
                    out.insert(format!("{k}[{mk}]"), s);
                }
            }
        }
    }
    out
}

/// Everything in a free-form value (a task's `Config`): `key`, `key[i]`, `key[sub]`.
fn flat_all(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    let name = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}[{k}]")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flat_all(x, &name(k), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flat_all(x, &name(&i.to_string()), out);
            }
        }
        other => {
            if let Some(s) = primitive(other) {
                out.insert(prefix.to_string(), s);
            }
        }
    }
}

fn field_diff(old: &str, new: &str, name: &str, contextual: bool) -> Option<FieldDiff> {
    let kind = if old == new {
        if !contextual {
            return None;
        }
        DiffType::None
    } else if old.is_empty() {
        DiffType::Added
    } else if new.is_empty() {
        DiffType::Deleted
    } else {
        DiffType::Edited
    };
    Some(FieldDiff {
        kind,
        name: name.to_string(),
        old: old.to_string(),
        new: new.to_string(),
        annotations: Vec::new(),
    })
}

/// The field diffs of two flattened objects, sorted by name (then old, new values).
fn field_diffs(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    contextual: bool,
) -> Vec<FieldDiff> {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    let empty = String::new();
    let mut out: Vec<FieldDiff> = names
        .into_iter()
        .filter_map(|k| {
            let o = old.get(k).unwrap_or(&empty);
            let n = new.get(k).unwrap_or(&empty);
            field_diff(o, n, k, contextual)
        })
        .collect();
    sort_fields(&mut out);
    out
}

fn sort_fields(f: &mut [FieldDiff]) {
    f.sort_by(|a, b| (&a.name, &a.old, &a.new).cmp(&(&b.name, &b.old, &b.new)));
}

/// Nomad's object order: by name, then type (edited first), then field and object counts.
fn sort_objects(o: &mut [ObjectDiff]) {
    o.sort_by(|a, b| {
        (&a.name, a.kind.rank(), a.fields.len(), a.objects.len()).cmp(&(
            &b.name,
            b.kind.rank(),
            b.fields.len(),
            b.objects.len(),
        ))
    });
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Two string sets (`Datacenters`): one field per value added or removed.
fn string_set_diff(
    old: &[String],
    new: &[String],
    name: &str,
    contextual: bool,
) -> Option<ObjectDiff> {
    let o: std::collections::BTreeSet<&String> = old.iter().collect();
    let n: std::collections::BTreeSet<&String> = new.iter().collect();
    if o == n && !contextual {
        return None;
    }
    let mut fields = Vec::new();
    let (mut added, mut removed) = (false, false);
    for k in &o {
        if !n.contains(k) {
            fields.extend(field_diff(k, "", name, contextual));
            removed = true;
        } else if contextual {
            fields.extend(field_diff(k, k, name, contextual));
        }
    }
    for k in &n {
        if !o.contains(k) {
            fields.extend(field_diff("", k, name, contextual));
            added = true;
        }
    }
    sort_fields(&mut fields);
    let kind = match (added, removed) {
        (true, true) => DiffType::Edited,
        (true, false) => DiffType::Added,
        (false, true) => DiffType::Deleted,
        (false, false) if fields.is_empty() => return None,
        (false, false) => DiffType::None,
    };
    Some(ObjectDiff {
        kind,
        name: name.to_string(),
        fields,
        objects: Vec::new(),
    })
}

/// A null member is an absent object.
fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|x| !x.is_null())
}

/// Nomad's `primitiveObjectDiff`: the object's primitive fields; its type from theirs;
/// `None` when nothing changed.
fn primitive_object_diff(
    old: Option<&Value>,
    new: Option<&Value>,
    filter: &[&str],
    name: &str,
    contextual: bool,
) -> Option<ObjectDiff> {
    let flat = |v: Option<&Value>| {
        present(v)
            .map(|v| flat_primitive(v, filter))
            .unwrap_or_default()
    };
    let fields = field_diffs(&flat(old), &flat(new), contextual);
    let (mut added, mut deleted, mut edited) = (false, false, false);
    for f in &fields {
        match f.kind {
            DiffType::Edited => edited = true,
            DiffType::Added => added = true,
            DiffType::Deleted => deleted = true,
            DiffType::None => {}
        }
    }
    let kind = if edited || (added && deleted) {
        DiffType::Edited
    } else if added {
        DiffType::Added
    } else if deleted {
        DiffType::Deleted
    } else {
        return None;
    };
    Some(ObjectDiff {
        kind,
        name: name.to_string(),
        fields,
        objects: Vec::new(),
    })
}

/// A struct diffed whole (Nomad's `Resources.Diff`, `idDiff`, ...): `None` when equal, else
/// added, deleted or edited by presence, with its primitive fields.
fn struct_diff(
    old: Option<&Value>,
    new: Option<&Value>,
    filter: &[&str],
    name: &str,
    contextual: bool,
) -> Option<ObjectDiff> {
    let (old, new) = (present(old), present(new));
    if canonical_eq(old, new) {
        return None;
    }
    let kind = match (old, new) {
        (None, _) => DiffType::Added,
        (_, None) => DiffType::Deleted,
        _ => DiffType::Edited,
    };
    let flat = |v: Option<&Value>| v.map(|v| flat_primitive(v, filter)).unwrap_or_default();
    Some(ObjectDiff {
        kind,
        name: name.to_string(),
        fields: field_diffs(&flat(old), &flat(new), contextual),
        objects: Vec::new(),
    })
}

/// A value as text with every object's keys sorted: equal values, equal text.
fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            x => x.clone(),
        }
    }
    sorted(v).to_string()
}

fn canonical_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => canonical(a) == canonical(b),
        _ => false,
    }
}

/// Nomad's `primitiveObjectSetDiff`: a list of objects as a set; an element only in the old
/// list is `Deleted`, only in the new one `Added` (an edited element is both).
fn set_diff(
    old: Option<&Value>,
    new: Option<&Value>,
    filter: &[&str],
    name: &str,
    contextual: bool,
) -> Vec<ObjectDiff> {
    let set = |v: Option<&Value>| -> BTreeMap<String, Value> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().map(|x| (canonical(x), x.clone())).collect())
            .unwrap_or_default()
    };
    let (o, n) = (set(old), set(new));
    let mut out = Vec::new();
    for (k, v) in &o {
        if !n.contains_key(k) {
            out.extend(primitive_object_diff(
                Some(v),
                None,
                filter,
                name,
                contextual,
            ));
        }
    }
    for (k, v) in &n {
        if !o.contains_key(k) {
            out.extend(primitive_object_diff(
                None,
                Some(v),
                filter,
                name,
                contextual,
            ));
        }
    }
    sort_objects(&mut out);
    out
}

/// Structs diffed whole, as a set (networks, services, templates, volumes).
fn struct_set_diff(
    old: Option<&Value>,
    new: Option<&Value>,
    filter: &[&str],
    name: &str,
    contextual: bool,
) -> Vec<ObjectDiff> {
    let set = |v: Option<&Value>| -> BTreeMap<String, Value> {
        let items: Vec<Value> = match v {
            Some(Value::Array(a)) => a.clone(),
            // Volumes are a map of name → request.
            Some(Value::Object(m)) => m.values().cloned().collect(),
            _ => Vec::new(),
        };
        items.into_iter().map(|x| (canonical(&x), x)).collect()
    };
    let (o, n) = (set(old), set(new));
    let mut out = Vec::new();
    for (k, v) in &o {
        if !n.contains_key(k) {
            out.extend(struct_diff(Some(v), None, filter, name, contextual));
        }
    }
    for (k, v) in &n {
        if !o.contains_key(k) {
            out.extend(struct_diff(None, Some(v), filter, name, contextual));
        }
    }
    sort_objects(&mut out);
    out
}

/// Lists of named members (groups, tasks) matched by `Name`, diffed pairwise, by name.
fn named_diffs<'a, T>(
    old: Option<&'a Value>,
    new: Option<&'a Value>,
    diff: impl Fn(Option<&Value>, Option<&Value>) -> T,
) -> Vec<T> {
    fn by_name(v: Option<&Value>) -> BTreeMap<String, &Value> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| {
                        let name = x.get("Name").and_then(Value::as_str).unwrap_or("");
                        (name.to_string(), x)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    let (o, n) = (by_name(old), by_name(new));
    let mut names: Vec<&String> = o.keys().chain(n.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|k| diff(o.get(k).copied(), n.get(k).copied()))
        .collect()
}

fn name_of(old: Option<&Value>, new: Option<&Value>) -> String {
    new.or(old)
        .and_then(|v| v.get("Name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn kind_of(old: Option<&Value>, new: Option<&Value>) -> DiffType {
    match (old, new) {
        (None, _) => DiffType::Added,
        (_, None) => DiffType::Deleted,
        (Some(a), Some(b)) if canonical(a) == canonical(b) => DiffType::None,
        _ => DiffType::Edited,
    }
}

fn group_diff(old: Option<&Value>, new: Option<&Value>, contextual: bool) -> TaskGroupDiff {
    let flat = |v: Option<&Value>| v.map(|v| flat_primitive(v, &["Name"])).unwrap_or_default();
    let (o, n) = (old.unwrap_or(&Value::Null), new.unwrap_or(&Value::Null));
    let mut objects = Vec::new();
    objects.extend(set_diff(
        o.get("Constraints"),
        n.get("Constraints"),
        &["str"],
        "Constraint",
        contextual,
    ));
    objects.extend(set_diff(
        o.get("Affinities"),
        n.get("Affinities"),
        &["str"],
        "Affinity",
        contextual,
    ));
    for name in [
        "RestartPolicy",
        "ReschedulePolicy",
        "EphemeralDisk",
        "Consul",
    ] {
        objects.extend(primitive_object_diff(
            o.get(name),
            n.get(name),
            &[],
            name,
            contextual,
        ));
    }
    objects.extend(primitive_object_diff(
        o.get("Update"),
        n.get("Update"),
        &["Stagger"],
        "Update",
        contextual,
    ));
    objects.extend(struct_set_diff(
        o.get("Networks"),
        n.get("Networks"),
        &[],
        "Network",
        contextual,
    ));
    objects.extend(struct_diff(
        o.get("Scaling"),
        n.get("Scaling"),
        &["ID", "Type", "CreateIndex", "ModifyIndex"],
        "Scaling",
        contextual,
    ));
    objects.extend(struct_set_diff(
        o.get("Services"),
        n.get("Services"),
        &[],
        "Service",
        contextual,
    ));
    objects.extend(struct_set_diff(
        o.get("Volumes"),
        n.get("Volumes"),
        &[],
        "Volume",
        contextual,
    ));
    TaskGroupDiff {
        kind: kind_of(old, new),
        name: name_of(old, new),
        fields: field_diffs(&flat(old), &flat(new), false),
        objects,
        tasks: named_diffs(o.get("Tasks"), n.get("Tasks"), |a, b| {
            task_diff(a, b, contextual)
        }),
        updates: BTreeMap::new(),
    }
}

fn task_diff(old: Option<&Value>, new: Option<&Value>, contextual: bool) -> TaskDiff {
    let flat = |v: Option<&Value>| {
        v.map(|v| flat_primitive(v, &["Name", "Config"]))
            .unwrap_or_default()
    };
    let (o, n) = (old.unwrap_or(&Value::Null), new.unwrap_or(&Value::Null));
    let mut objects = Vec::new();
    objects.extend(set_diff(
        o.get("Constraints"),
        n.get("Constraints"),
        &["str"],
        "Constraint",
        contextual,
    ));
    objects.extend(set_diff(
        o.get("Affinities"),
        n.get("Affinities"),
        &["str"],
        "Affinity",
        contextual,
    ));
    objects.extend(config_diff(o.get("Config"), n.get("Config"), contextual));
    if let Some(mut r) = struct_diff(
        o.get("Resources"),
        n.get("Resources"),
        &[],
        "Resources",
        contextual,
    ) {
        let nets = |v: &Value| v.get("Resources").and_then(|r| r.get("Networks")).cloned();
        r.objects = struct_set_diff(
            nets(o).as_ref(),
            nets(n).as_ref(),
            &[],
            "Network",
            contextual,
        );
        objects.push(r);
    }
    for name in ["LogConfig", "DispatchPayload"] {
        objects.extend(primitive_object_diff(
            o.get(name),
            n.get(name),
            &[],
            name,
            contextual,
        ));
    }
    objects.extend(set_diff(
        o.get("Artifacts"),
        n.get("Artifacts"),
        &[],
        "Artifact",
        contextual,
    ));
    objects.extend(struct_set_diff(
        o.get("Services"),
        n.get("Services"),
        &[],
        "Service",
        contextual,
    ));
    objects.extend(struct_diff(
        o.get("Vault"),
        n.get("Vault"),
        &[],
        "Vault",
        contextual,
    ));
    objects.extend(struct_set_diff(
        o.get("Templates"),
        n.get("Templates"),
        &[],
        "Template",
        contextual,
    ));
    objects.extend(struct_diff(
        o.get("Identity"),
        n.get("Identity"),
        &[],
        "Identity",
        contextual,
    ));
    TaskDiff {
        kind: kind_of(old, new),
        name: name_of(old, new),
        fields: field_diffs(&flat(old), &flat(new), false),
        objects,
        annotations: Vec::new(),
    }
}

/// A task's free-form `Config`, every value flattened.
fn config_diff(old: Option<&Value>, new: Option<&Value>, contextual: bool) -> Option<ObjectDiff> {
    let empty = |v: Option<&Value>| {
        present(v)
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
    };
    if canonical_eq(present(old), present(new)) || (empty(old) && empty(new)) {
        return None;
    }
    let kind = if empty(old) {
        DiffType::Added
    } else if empty(new) {
        DiffType::Deleted
    } else {
        DiffType::Edited
    };
    let flat = |v: Option<&Value>| {
        let mut m = BTreeMap::new();
        if let Some(v) = present(v) {
            flat_all(v, "", &mut m);
        }
        m
    };
    Some(ObjectDiff {
        kind,
        name: "Config".into(),
        fields: field_diffs(&flat(old), &flat(new), contextual),
        objects: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(v: Value) -> Job {
        let mut j = Job::from_json(v).unwrap();
        j.canonicalize("global");
        j
    }

    fn web(count: i64, cmd: &str, meta: Value) -> Job {
        job(json!({"ID": "web", "Meta": meta, "Datacenters": ["dc1"],
            "TaskGroups": [{"Name": "g", "Count": count,
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": cmd, "args": ["-c", "x"]}}]}]}))
    }

    #[test]
    fn equal_jobs_differ_in_nothing_but_still_name_their_groups_and_tasks() {
        let a = web(1, "/bin/sh", json!({"k": "v"}));
        let mut b = a.clone();
        b.version = 3;
        b.modify_index = 99;
        let d = job_diff(Some(&a), Some(&b), true).unwrap();
        assert_eq!(d.kind, DiffType::None);
        assert!(d.fields.is_empty() && d.objects.is_empty());
        assert_eq!(d.task_groups.len(), 1);
        assert_eq!(d.task_groups[0].kind, DiffType::None);
        assert_eq!(d.task_groups[0].tasks[0].kind, DiffType::None);
        let text = serde_json::to_string(&d).unwrap();
        assert!(
            text.starts_with(r#"{"Type":"None","ID":"web","Fields":null,"Objects":null,"TaskGroups":[{"Type":"None","Name":"g","Fields":null,"Objects":null,"Tasks":[{"Type":"None","Name":"t","Fields":null,"Objects":null,"Annotations":null}],"Updates":null}]}"#),
            "{text}"
        );
    }

    #[test]
    fn count_meta_datacenters_and_config_changes_are_named_like_nomad() {
        let a = web(1, "/bin/sh", json!({"k": "v", "gone": "x"}));
        let mut b = web(3, "/bin/bash", json!({"k": "w", "new": "y"}));
        b.datacenters = Some(vec!["dc1".into(), "dc2".into()]);
        let d = job_diff(Some(&a), Some(&b), true).unwrap();
        assert_eq!(d.kind, DiffType::Edited);
        let f: Vec<(DiffType, &str, &str, &str)> = d
            .fields
            .iter()
            .map(|f| (f.kind, f.name.as_str(), f.old.as_str(), f.new.as_str()))
            .collect();
        assert_eq!(
            f,
            [
                (DiffType::Deleted, "Meta[gone]", "x", ""),
                (DiffType::Edited, "Meta[k]", "v", "w"),
                (DiffType::Added, "Meta[new]", "", "y"),
            ]
        );
        assert_eq!(d.objects[0].name, "Datacenters");
        assert_eq!(d.objects[0].kind, DiffType::Added);
        // Contextual: the kept value is listed too.
        let dcs: Vec<(DiffType, &str, &str)> = d.objects[0]
            .fields
            .iter()
            .map(|f| (f.kind, f.old.as_str(), f.new.as_str()))
            .collect();
        assert_eq!(
            dcs,
            [(DiffType::Added, "", "dc2"), (DiffType::None, "dc1", "dc1")]
        );
        let g = &d.task_groups[0];
        assert_eq!(g.kind, DiffType::Edited);
        assert_eq!(
            (
                g.fields[0].name.as_str(),
                g.fields[0].old.as_str(),
                g.fields[0].new.as_str()
            ),
            ("Count", "1", "3")
        );
        let t = &g.tasks[0];
        assert_eq!(t.kind, DiffType::Edited);
        let cfg = &t.objects[0];
        assert_eq!((cfg.name.as_str(), cfg.kind), ("Config", DiffType::Edited));
        let names: Vec<(&str, DiffType)> = cfg
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("args[0]", DiffType::None),
                ("args[1]", DiffType::None),
                ("command", DiffType::Edited)
            ]
        );
    }

    #[test]
    fn added_and_deleted_groups_tasks_and_constraints_and_different_ids() {
        let a = web(1, "/bin/sh", Value::Null);
        let mut b = a.clone();
        let mut g2 = b.task_groups[0].clone();
        g2.name = "g2".into();
        std::sync::Arc::make_mut(&mut b.task_groups).push(g2);
        b.constraints =
            json!([{"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="}]);
        let d = job_diff(Some(&a), Some(&b), false).unwrap();
        assert_eq!(d.kind, DiffType::Edited);
        assert_eq!(d.objects[0].name, "Constraint");
        assert_eq!(d.objects[0].kind, DiffType::Added);
        assert_eq!(d.task_groups[1].name, "g2");
        assert_eq!(d.task_groups[1].kind, DiffType::Added);
        assert!(d.task_groups[1]
            .fields
            .iter()
            .any(|f| f.name == "Count" && f.new == "1"));
        let back = job_diff(Some(&b), Some(&a), false).unwrap();
        assert_eq!(back.task_groups[1].kind, DiffType::Deleted);
        assert_eq!(back.objects[0].kind, DiffType::Deleted);
        let created = job_diff(None, Some(&a), false).unwrap();
        assert_eq!(created.kind, DiffType::Added);
        let mut other = a.clone();
        other.id = "api".into();
        assert_eq!(
            job_diff(Some(&a), Some(&other), false)
                .unwrap_err()
                .to_string(),
            r#"can not diff jobs with different IDs: "web" and "api""#
        );
    }
}
