//! Feasibility: whether a node can run a task group at all, as Nomad's feasibility checks
//! decide it (ref §4.5): constraints on `${attr.*}`, `${meta.*}`, `${node.*}` with every
//! operator, and the tasks' drivers present and healthy. `distinct_hosts` and
//! `distinct_property` depend on the plan being made and are checked by the ranker.

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

use crate::state::jobs::spec::{Job, TaskGroup};
use crate::state::node_table::Node;

/// Nomad's `ConstraintFiltered` key for a node without a task's driver.
pub const FILTER_MISSING_DRIVERS: &str = crate::state::jobs::eval::FILTER_MISSING_DRIVERS;
/// A `regexp` pattern longer than this is not compiled (it filters every node).
pub const MAX_REGEX_LEN: usize = 1024;
/// The compiled size a `regexp` constraint may take (bytes, regex's own measure).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One constraint (`structs.Constraint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub l_target: String,
    pub r_target: String,
    pub operand: String,
}

impl Constraint {
    /// How Nomad names it in `ConstraintFiltered`.
    pub fn reason(&self) -> String {
        format!("{} {} {}", self.l_target, self.operand, self.r_target)
    }

    pub fn is_distinct(&self) -> bool {
        self.operand == "distinct_hosts" || self.operand == "distinct_property"
    }
}

/// The constraints of a `Constraints` JSON list (a missing operand is `=`).
pub fn constraints_of(v: &Value) -> Vec<Constraint> {
    let s = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let op = s(c, "Operand");
                    Constraint {
                        l_target: s(c, "LTarget"),
                        r_target: s(c, "RTarget"),
                        operand: if op.is_empty() { "=".into() } else { op },
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every constraint that applies to a group: the job's, the group's, its tasks'.
pub fn group_constraints(job: &Job, tg: &TaskGroup) -> Vec<Constraint> {
    let mut out = constraints_of(&job.constraints);
    out.extend(constraints_of(&tg.constraints));
    for t in &tg.tasks {
        out.extend(constraints_of(&t.constraints));
    }
    out
}

/// The value a target names on `node` (ref §4.5); a target without `${` is itself.
pub fn resolve(target: &str, node: &Node) -> Option<String> {
    let Some(inner) = target.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else {
        return Some(target.to_string());
    };
    match inner {
        "node.unique.id" => Some(node.id.clone()),
        "node.unique.name" => Some(node.name.to_string()),
        "node.datacenter" => Some(node.datacenter.clone()),
        "node.class" => Some(node.node_class.clone()),
        "node.pool" => Some(node.node_pool.clone()),
        _ => {
            if let Some(k) = inner.strip_prefix("attr.") {
                node.attributes.get(k).cloned()
            } else if let Some(k) = inner.strip_prefix("meta.") {
                node.meta.get(k).cloned()
            } else {
                None
            }
        }
    }
}

/// Compiled patterns and parsed versions of one scheduling run.
#[derive(Default)]
pub struct Cache {
    regexes: HashMap<String, Option<Regex>>,
}

impl Cache {
    fn regex(&mut self, pattern: &str) -> Option<&Regex> {
        self.regexes
            .entry(pattern.to_string())
            .or_insert_with(|| {
                if pattern.len() > MAX_REGEX_LEN {
                    return None;
                }
                regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .ok()
            })
            .as_ref()
    }
}

/// Whether `c` holds on `node` (every operator of ref §4.5 but the distinct ones).
pub fn check(c: &Constraint, node: &Node, cache: &mut Cache) -> bool {
    let l = resolve(&c.l_target, node);
    let r = resolve(&c.r_target, node);
    match c.operand.as_str() {
        "=" | "==" | "is" => l.is_some() && l == r,
        "!=" | "not" => l.unwrap_or_default() != r.unwrap_or_default(),
        "<" | "<=" | ">" | ">=" => match (l, r) {
            (Some(l), Some(r)) => compare(&l, &r, &c.operand),
            _ => false,
        },
        "regexp" => match (l, r) {
            (Some(l), Some(r)) => cache.regex(&r).is_some_and(|re| re.is_match(&l)),
            _ => false,
        },
        "set_contains" | "set_contains_all" => match (l, r) {
            (Some(l), Some(r)) => {
                let have = set_of(&l);
                set_of(&r).iter().all(|x| have.contains(x))
            }
            _ => false,
        },
        "set_contains_any" => match (l, r) {
            (Some(l), Some(r)) => {
                let have = set_of(&l);
                set_of(&r).iter().any(|x| have.contains(x))
            }
            _ => false,
        },
        "version" => match (l, r) {
            (Some(l), Some(r)) => version_satisfies(&l, &r, false),
            _ => false,
        },
        "semver" => match (l, r) {
            (Some(l), Some(r)) => version_satisfies(&l, &r, true),
            _ => false,
        },
        "is_set" => l.is_some(),
        "is_not_set" => l.is_none(),
        // Checked against the plan by the ranker.
        "distinct_hosts" | "distinct_property" => true,
        _ => false,
    }
}

fn set_of(s: &str) -> Vec<&str> {
    s.split(',').map(str::trim).collect()
}

/// `<`, `<=`, `>`, `>=`: as integers when both parse, else as floats, else as text.
fn compare(l: &str, r: &str, op: &str) -> bool {
    use std::cmp::Ordering;
    let ord = match (l.parse::<i64>(), r.parse::<i64>()) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => match (l.parse::<f64>(), r.parse::<f64>()) {
            (Ok(a), Ok(b)) => match a.partial_cmp(&b) {
                Some(o) => o,
                None => return false,
            },
            _ => l.cmp(r),
        },
    };
    match op {
        "<" => ord == Ordering::Less,
        "<=" => ord != Ordering::Greater,
        ">" => ord == Ordering::Greater,
        _ => ord != Ordering::Less,
    }
}

/// A parsed version: numeric segments and a pre-release.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    segments: Vec<u64>,
    pre: String,
}

fn parse_version(s: &str, strict: bool) -> Option<Version> {
    let s = s.trim();
    let s = if strict {
        s
    } else {
        s.strip_prefix('v').unwrap_or(s)
    };
    let s = s.split('+').next().unwrap_or(s);
    let (core, pre) = match s.split_once('-') {
        Some((c, p)) => (c, p.to_string()),
        None => (s, String::new()),
    };
    let segments: Option<Vec<u64>> = core.split('.').map(|x| x.parse().ok()).collect();
    let segments = segments?;
    if segments.is_empty() || (strict && segments.len() != 3) || segments.len() > 8 {
        return None;
    }
    Some(Version { segments, pre })
}

fn cmp_pre(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let (ai, bi): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for (x, y) in ai.iter().zip(bi.iter()) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(p), Ok(q)) => p.cmp(&q),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ai.len().cmp(&bi.len())
}

fn cmp_version(a: &Version, b: &Version) -> std::cmp::Ordering {
    let n = a.segments.len().max(b.segments.len());
    for i in 0..n {
        let (x, y) = (
            a.segments.get(i).copied().unwrap_or(0),
            b.segments.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x.cmp(&y);
        }
    }
    cmp_pre(&a.pre, &b.pre)
}

/// Whether `version` satisfies every comma-separated `op version` of `constraint`
/// (operators `=`, `!=`, `>`, `>=`, `<`, `<=`, `~>`). `strict`: SemVer 2.0 (exactly three
/// segments, no `v`); otherwise HashiCorp go-version, where a pre-release only satisfies a
/// constraint naming a pre-release of the same segments.
pub fn version_satisfies(version: &str, constraint: &str, strict: bool) -> bool {
    use std::cmp::Ordering;
    let Some(v) = parse_version(version, strict) else {
        return false;
    };
    for part in constraint.split(',') {
        let part = part.trim();
        let (op, rest) = ["~>", ">=", "<=", "!=", ">", "<", "="]
            .iter()
            .find_map(|op| part.strip_prefix(op).map(|r| (*op, r)))
            .unwrap_or(("=", part));
        let Some(c) = parse_version(rest, strict) else {
            return false;
        };
        if !strict && !v.pre.is_empty() && (c.pre.is_empty() || c.segments != v.segments) {
            return false;
        }
        let o = cmp_version(&v, &c);
        let ok = match op {
            "=" => o == Ordering::Equal,
            "!=" => o != Ordering::Equal,
            ">" => o == Ordering::Greater,
            ">=" => o != Ordering::Less,
            "<" => o == Ordering::Less,
            "<=" => o != Ordering::Greater,
            _ => {
                // `~> 1.2.3`: >= 1.2.3 and < 1.3; `~> 1.2`: >= 1.2 and < 2.
                let upper = Version {
                    segments: if c.segments.len() == 1 {
                        vec![c.segments[0] + 1]
                    } else {
                        let mut u = c.segments[..c.segments.len() - 1].to_vec();
                        if let Some(l) = u.last_mut() {
                            *l += 1;
                        }
                        u
                    },
                    pre: String::new(),
                };
                o != Ordering::Less && cmp_version(&v, &upper) == Ordering::Less
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether every task's driver is on the node, detected and healthy (or, for a node that
/// reports no driver entry, its `driver.<name>` attribute is true).
pub fn drivers_ok(tg: &TaskGroup, node: &Node) -> bool {
    tg.tasks.iter().all(|t| driver_ok(&t.driver, node))
}

fn driver_ok(name: &str, node: &Node) -> bool {
    match node.drivers.get(name) {
        Some(d) => {
            d.get("Detected").and_then(Value::as_bool).unwrap_or(false)
                && d.get("Healthy").and_then(Value::as_bool).unwrap_or(false)
        }
        None => node
            .attributes
            .get(&format!("driver.{name}"))
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE" | "t")),
    }
}

/// Why a node lacks a group's driver, when it says so (`HealthDescription` of a disabled
/// driver: how to enable it).
pub fn driver_advice(tg: &TaskGroup, node: &Node) -> Option<(String, String)> {
    tg.tasks.iter().find_map(|t| {
        let d = node.drivers.get(&t.driver)?;
        let desc = d.get("HealthDescription").and_then(Value::as_str)?;
        (!driver_ok(&t.driver, node) && !desc.is_empty())
            .then(|| (t.driver.clone(), desc.to_string()))
    })
}

/// The static feasibility of a group on a node, in Nomad's order (the job's constraints,
/// the drivers, the group's and tasks' constraints): `None` when feasible, else the
/// `ConstraintFiltered` reason. `job_count`: how many of `constraints` are the job's.
pub fn static_check(
    constraints: &[Constraint],
    job_count: usize,
    tg: &TaskGroup,
    node: &Node,
    cache: &mut Cache,
) -> Option<String> {
    let failing = |cs: &[Constraint], cache: &mut Cache| {
        cs.iter()
            .filter(|c| !c.is_distinct())
            .find(|c| !check(c, node, cache))
            .map(Constraint::reason)
    };
    let (job_cs, group_cs) = constraints.split_at(job_count.min(constraints.len()));
    if let Some(r) = failing(job_cs, cache) {
        return Some(r);
    }
    if !drivers_ok(tg, node) {
        return Some(FILTER_MISSING_DRIVERS.to_string());
    }
    failing(group_cs, cache)
}
