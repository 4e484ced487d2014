//! Nomad's ACL policy language: parsing HCL and its JSON form into rules (namespace, node,
//! agent, operator, quota, ...), and how coarse namespace policies expand to capabilities.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{json, Map, Value};

use crate::parse_bounds::{check_hcl, check_json_depth, ACL_POLICY_LIMITS};

/// Deepest nesting accepted in a policy's JSON form (a policy needs 4: rules, block list,
/// block, capability list).
pub const POLICY_JSON_MAX_DEPTH: usize = 16;

/// A `policy = "..."` level for `node`, `agent` and `operator` rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Read,
    Write,
    Deny,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "read" => Some(Level::Read),
            "write" => Some(Level::Write),
            "deny" => Some(Level::Deny),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Deny => "deny",
        }
    }
    /// Two rules for the same resource: deny wins, else the wider one.
    pub(crate) fn merge(a: Option<Level>, b: Option<Level>) -> Option<Level> {
        match (a, b) {
            (Some(Level::Deny), _) | (_, Some(Level::Deny)) => Some(Level::Deny),
            (x, y) => x.max(y),
        }
    }
}

/// Every namespace capability Nomad knows.
pub const NAMESPACE_CAPABILITIES: &[&str] = &[
    "deny",
    "list-jobs",
    "parse-job",
    "read-job",
    "submit-job",
    "dispatch-job",
    "read-logs",
    "read-fs",
    "alloc-exec",
    "alloc-node-exec",
    "alloc-lifecycle",
    "csi-register-plugin",
    "csi-write-volume",
    "csi-read-volume",
    "csi-list-volume",
    "csi-mount-volume",
    "host-volume-create",
    "host-volume-register",
    "host-volume-read",
    "host-volume-write",
    "host-volume-delete",
    "list-scaling-policies",
    "read-scaling-policy",
    "read-job-scaling",
    "scale-job",
    "register-job",
    "revert-job",
    "deregister-job",
    "purge-job",
    "evaluate-job",
    "plan-job",
    "tag-job-version",
    "stable-job",
    "fail-deployment",
    "pause-deployment",
    "promote-deployment",
    "unblock-deployment",
    "cancel-deployment",
    "set-alloc-health-deployment",
    "gc-allocation",
    "pause-allocation",
    "force-periodic-job",
    "delete-service-registration",
    "sentinel-override",
    "submit-recommendation",
];

const NS_READ: &[&str] = &[
    "list-jobs",
    "parse-job",
    "read-job",
    "csi-list-volume",
    "csi-read-volume",
    "read-job-scaling",
    "list-scaling-policies",
    "read-scaling-policy",
    "host-volume-read",
];
const NS_WRITE_EXTRA: &[&str] = &[
    "scale-job",
    "submit-job",
    "dispatch-job",
    "read-logs",
    "read-fs",
    "alloc-exec",
    "alloc-lifecycle",
    "csi-mount-volume",
    "csi-write-volume",
    "submit-recommendation",
    "host-volume-create",
];
const NS_SCALE: &[&str] = &[
    "list-scaling-policies",
    "read-scaling-policy",
    "read-job-scaling",
    "scale-job",
    "read-job",
    "submit-recommendation",
];

/// One `namespace "<pattern>" { ... }` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRule {
    pub name: String,
    pub policy: Option<String>,
    pub capabilities: Vec<String>,
}

impl NamespaceRule {
    /// The coarse policy expanded, plus the explicit capabilities.
    pub(crate) fn expanded(&self) -> BTreeSet<String> {
        let mut caps: BTreeSet<String> = self.capabilities.iter().cloned().collect();
        let add = |caps: &mut BTreeSet<String>, list: &[&str]| {
            caps.extend(list.iter().map(|s| s.to_string()));
        };
        match self.policy.as_deref() {
            Some("read") => add(&mut caps, NS_READ),
            Some("write") => {
                add(&mut caps, NS_READ);
                add(&mut caps, NS_WRITE_EXTRA);
            }
            Some("scale") => add(&mut caps, NS_SCALE),
            Some("deny") => {
                caps.insert("deny".into());
            }
            _ => {}
        }
        caps
    }
}

/// A parsed policy document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub namespaces: Vec<NamespaceRule>,
    pub node: Option<Level>,
    pub agent: Option<Level>,
    pub operator: Option<Level>,
    pub quota: Option<Level>,
}

/// Why a policy's text was refused. The message names the line when the text does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

fn perr(msg: impl Into<String>) -> PolicyError {
    PolicyError(msg.into())
}

/// Parse a policy in HCL or in its JSON form.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let doc = if text.trim_start().starts_with('{') {
        check_json_depth(text.as_bytes(), POLICY_JSON_MAX_DEPTH)
            .map_err(|e| perr(e.to_string()))?;
        serde_json::from_str::<Value>(text).map_err(|e| {
            perr(format!(
                "At {}:{}: {}",
                e.line(),
                e.column(),
                json_error_text(&e)
            ))
        })?
    } else {
        // hcl-rs recurses per nesting level and per operator: bound both before it looks.
        check_hcl(text, ACL_POLICY_LIMITS).map_err(|e| perr(e.to_string()))?;
        crate::hcl_doc::parse(text).map_err(|e| {
            perr(if e.line == 0 {
                e.message
            } else {
                e.to_string()
            })
        })?
    };
    interpret(&doc)
}

fn json_error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// An object or a list of objects, as a list of objects.
fn objects<'a>(v: &'a Value, what: &str) -> Result<Vec<&'a Map<String, Value>>, PolicyError> {
    match v {
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_object()
                    .ok_or_else(|| perr(format!("{what}: expected a block")))
            })
            .collect(),
        _ => Err(perr(format!("{what}: expected a block"))),
    }
}

/// `{label: body}` entries of a labelled block, in order.
fn labelled<'a>(v: &'a Value, what: &str) -> Result<Vec<(&'a str, &'a Value)>, PolicyError> {
    let mut out = Vec::new();
    for m in objects(v, what)? {
        for (k, body) in m {
            out.push((k.as_str(), body));
        }
    }
    Ok(out)
}

fn string_attr(
    body: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<String>, PolicyError> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(perr(format!("{what}: {key} must be a string"))),
    }
}

fn string_list(
    body: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Vec<String>, PolicyError> {
    match body.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| perr(format!("{what}: {key} must be a list of strings")))
            })
            .collect(),
        Some(_) => Err(perr(format!("{what}: {key} must be a list of strings"))),
    }
}

fn check_keys(body: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), PolicyError> {
    for k in body.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(perr(format!("{what}: invalid key {k:?}")));
        }
    }
    Ok(())
}

fn level_block(v: &Value, name: &str, extra_levels: &[&str]) -> Result<Option<Level>, PolicyError> {
    let mut level = None;
    for body in objects(v, name)? {
        check_keys(body, &["policy"], name)?;
        let Some(p) = string_attr(body, "policy", name)? else {
            continue;
        };
        let parsed = match Level::parse(&p) {
            Some(l) => l,
            None if extra_levels.contains(&p.as_str()) => Level::Read,
            None => return Err(perr(format!("Invalid {name} policy: {p:?}"))),
        };
        level = Level::merge(level, Some(parsed));
    }
    Ok(level)
}

fn interpret(doc: &Value) -> Result<Policy, PolicyError> {
    let top = doc
        .as_object()
        .ok_or_else(|| perr("policy must be an object of rules"))?;
    let mut policy = Policy::default();
    for (key, v) in top {
        match key.as_str() {
            "namespace" => {
                for (name, body) in labelled(v, "namespace")? {
                    for body in objects(body, "namespace")? {
                        policy.namespaces.push(namespace_rule(name, body)?);
                    }
                }
            }
            "node" => policy.node = level_block(v, "node", &[])?,
            "agent" => policy.agent = level_block(v, "agent", &[])?,
            "operator" => policy.operator = level_block(v, "operator", &[])?,
            "quota" => policy.quota = level_block(v, "quota", &[])?,
            "plugin" => {
                level_block(v, "plugin", &["list"])?;
            }
            "host_volume" | "node_pool" => {
                for (label, body) in labelled(v, key)? {
                    for body in objects(body, key)? {
                        let what = format!("{key} {label:?}");
                        check_keys(body, &["policy", "capabilities"], &what)?;
                        if let Some(p) = string_attr(body, "policy", &what)? {
                            if !["deny", "read", "write"].contains(&p.as_str()) {
                                return Err(perr(format!("Invalid {key} policy: {p:?}")));
                            }
                        }
                        string_list(body, "capabilities", &what)?;
                    }
                }
            }
            other => return Err(perr(format!("invalid key {other:?}"))),
        }
    }
    Ok(policy)
}

fn namespace_rule(name: &str, body: &Map<String, Value>) -> Result<NamespaceRule, PolicyError> {
    let what = format!("namespace {name:?}");
    check_keys(body, &["policy", "capabilities", "variables"], &what)?;
    let policy = string_attr(body, "policy", &what)?;
    if let Some(p) = &policy {
        if !["deny", "read", "write", "scale"].contains(&p.as_str()) {
            return Err(perr(format!("Invalid namespace policy: {p:?}")));
        }
    }
    let capabilities = string_list(body, "capabilities", &what)?;
    for c in &capabilities {
        if !NAMESPACE_CAPABILITIES.contains(&c.as_str()) {
            return Err(perr(format!("Invalid namespace capability '{c}'")));
        }
    }
    Ok(NamespaceRule {
        name: name.to_string(),
        policy,
        capabilities,
    })
}

impl Policy {
    /// The parsed rules in Nomad's `RulesJSON` shape.
    pub fn rules_json(&self) -> Value {
        let level = |l: Option<Level>| l.map(|l| json!({ "Policy": l.as_str() }));
        json!({
            "Namespaces": self.namespaces.iter().map(|n| json!({
                "Name": n.name,
                "Policy": n.policy.clone().unwrap_or_default(),
                "Capabilities": n.capabilities,
            })).collect::<Vec<_>>(),
            "Node": level(self.node),
            "Agent": level(self.agent),
            "Operator": level(self.operator),
            "Quota": level(self.quota),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HCL: &str = r#"
namespace "default" {
  policy       = "read"
  capabilities = ["submit-job", "read-logs"]
  variables {
    path "project/*" { capabilities = ["read", "write"] }
  }
}
namespace "prod-*" { policy = "write" }
namespace "secret" { policy = "deny" }
node  { policy = "write" }
agent { policy = "read" }
"#;

    #[test]
    fn hcl_and_json_forms_parse_to_the_same_rules() {
        let a = parse(HCL).unwrap();
        let json_text = r#"{
          "namespace": [
            {"default": {"policy": "read", "capabilities": ["submit-job", "read-logs"],
                         "variables": [{"path": [{"project/*": {"capabilities": ["read", "write"]}}]}]}},
            {"prod-*": {"policy": "write"}},
            {"secret": {"policy": "deny"}}
          ],
          "node": {"policy": "write"},
          "agent": [{"policy": "read"}]
        }"#;
        let b = parse(json_text).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.node, Some(Level::Write));
        assert_eq!(a.namespaces.len(), 3);
    }

    #[test]
    fn bad_policies_are_refused_and_syntax_errors_name_the_line() {
        let e = parse("node {\n  policy = \"write\"\n  oops oops\n}\n").unwrap_err();
        assert!(e.0.starts_with("At 3:"), "{e}");
        let e = parse("{\n \"node\": {\"policy\": \"write\",,}\n}").unwrap_err();
        assert!(e.0.starts_with("At 2:"), "{e}");
        assert!(parse(r#"node { policy = "admin" }"#).is_err());
        assert!(parse(r#"namespace "x" { capabilities = ["fly"] }"#).is_err());
        assert!(parse(r#"bogus { policy = "read" }"#).is_err());
        assert!(parse(r#"node { polcy = "read" }"#).is_err());
    }
}
