//! `/v1/search` (prefix search over IDs) and `/v1/search/fuzzy` (substring search over names),
//! in Nomad's shapes: `Matches` and `Truncations` keyed by context, at most
//! [`MAX_MATCHES`] per context, only contexts the caller may read.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::http::Method;

use super::namespaces::{may_read_node_pools, may_see_namespace, DEFAULT_NAMESPACE, NODE_POOLS};
use super::params::get_ci;
use super::{json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// Matches returned per context (Nomad's `truncateLimit`).
pub const MAX_MATCHES: usize = 20;
/// Shortest fuzzy search text (Nomad's default `min_term_length`).
pub const MIN_FUZZY_TERM: usize = 2;
/// Longest prefix or text accepted.
pub const MAX_SEARCH_TEXT: usize = 1024;

/// Prefix search contexts, in Nomad's names. Contexts nomadlet has no objects of (deployments,
/// plugins, volumes) are searched too: they always match nothing.
const PREFIX_CONTEXTS: &[&str] = &[
    "allocs",
    "deployment",
    "evals",
    "jobs",
    "namespaces",
    "node_pools",
    "nodes",
    "plugins",
    "volumes",
];

/// Fuzzy search contexts (`jobs` also yields `groups` and `tasks`).
const FUZZY_CONTEXTS: &[&str] = &[
    "allocs",
    "jobs",
    "namespaces",
    "node_pools",
    "nodes",
    "plugins",
];

/// Serve `/v1/search` and `/v1/search/fuzzy` (`path` is after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    match path {
        "search" => {
            ctx.require_method(&[Method::Put, Method::Post])?;
            prefix_search(ctx)
        }
        "search/fuzzy" => {
            ctx.require_method(&[Method::Put, Method::Post])?;
            fuzzy_search(ctx)
        }
        _ => Err(ApiError::no_route()),
    }
}

fn body(ctx: &Ctx) -> Result<Map<String, Value>, ApiError> {
    if ctx.req.body.is_empty() {
        return Err(ApiError::empty_body());
    }
    match serde_json::from_slice::<Value>(&ctx.req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "Failed to decode body: expected a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Failed to decode body: {e}"))),
    }
}

fn string_field(m: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match get_ci(m, key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) if s.len() <= MAX_SEARCH_TEXT => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!(
            "{key} longer than {MAX_SEARCH_TEXT} bytes"
        ))),
        Some(_) => Err(ApiError::bad_request(format!(
            "Failed to decode body: {key} must be a string"
        ))),
    }
}

/// The contexts a request names (`all` or empty: every one), or Nomad's refusal.
fn contexts<'a>(want: &str, known: &'a [&'a str]) -> Result<Vec<&'a str>, ApiError> {
    if want.is_empty() || want == "all" {
        return Ok(known.to_vec());
    }
    match known.iter().find(|c| **c == want) {
        Some(c) => Ok(vec![c]),
        None => Err(ApiError::bad_request(format!(
            "context must be one of {known:?} or 'all' for all contexts; got {want:?}"
        ))),
    }
}

/// Whether the caller may search `context` in `namespace`.
fn may_search(ctx: &Ctx, namespace: &str, context: &str) -> bool {
    let id = &ctx.identity;
    match context {
        "nodes" => id.allow_node(false).is_ok(),
        "node_pools" => may_read_node_pools(id),
        "namespaces" => may_see_namespace(id, namespace),
        _ => id.allow_namespace(namespace, "read-job").is_ok(),
    }
}

/// Nomad rounds an odd-length UUID prefix (hyphens not counted) down to an even one.
fn round_uuid_prefix(prefix: &str) -> &str {
    let digits = prefix.chars().filter(|c| *c != '-').count();
    if digits % 2 == 0 {
        prefix
    } else {
        let cut = prefix.char_indices().last().map(|(i, _)| i).unwrap_or(0);
        &prefix[..cut]
    }
}

/// Sorted, de-duplicated candidates of one context, cut to [`MAX_MATCHES`].
fn finish(mut items: Vec<String>) -> (Vec<String>, bool) {
    items.sort();
    items.dedup();
    let truncated = items.len() > MAX_MATCHES;
    items.truncate(MAX_MATCHES);
    (items, truncated)
}

fn request_namespace(ctx: &Ctx) -> String {
    super::jobs::namespace(ctx)
}

fn ns_ok(want: &str, ns: &str) -> bool {
    want == "*" || want == ns
}

fn prefix_search(ctx: &Ctx) -> ApiResult {
    let m = body(ctx)?;
    let prefix = string_field(&m, "Prefix")?;
    let context = string_field(&m, "Context")?;
    let ns = request_namespace(ctx);
    let wanted = contexts(&context, PREFIX_CONTEXTS)?;
    let allowed: Vec<&str> = wanted
        .into_iter()
        .filter(|c| may_search(ctx, &ns, c))
        .collect();
    if allowed.is_empty() {
        return Err(ApiError::permission_denied());
    }
    let w = &ctx.agent.workloads;
    let uuid_prefix = round_uuid_prefix(&prefix);
    let mut matches = BTreeMap::new();
    let mut truncations = BTreeMap::new();
    for c in allowed {
        let items: Vec<String> = match c {
            "jobs" => w
                .jobs()
                .into_iter()
                .filter(|j| ns_ok(&ns, &j.namespace) && j.id.starts_with(&prefix))
                .map(|j| j.id)
                .collect(),
            "evals" => w
                .evals()
                .into_iter()
                .filter(|e| ns_ok(&ns, &e.namespace) && e.id.starts_with(uuid_prefix))
                .map(|e| e.id)
                .collect(),
            "allocs" => w
                .allocs()
                .into_iter()
                .filter(|a| ns_ok(&ns, &a.namespace) && a.id.starts_with(uuid_prefix))
                .map(|a| a.id.to_string())
                .collect(),
            "nodes" => std::iter::once(ctx.agent.node.id().to_string())
                .filter(|id| id.starts_with(uuid_prefix))
                .collect(),
            "namespaces" => std::iter::once(DEFAULT_NAMESPACE.to_string())
                .filter(|n| n.starts_with(&prefix))
                .collect(),
            "node_pools" => NODE_POOLS
                .iter()
                .map(|(n, _)| n.to_string())
                .filter(|n| n.starts_with(&prefix))
                .collect(),
            // No deployments, plugins or volumes exist here.
            _ => Vec::new(),
        };
        let (items, truncated) = finish(items);
        matches.insert(c.to_string(), json!(items));
        truncations.insert(c.to_string(), json!(truncated));
    }
    let index = ctx.agent.index.current();
    let (known_leader, last_contact) = super::forward::query_meta(ctx.agent);
    json_meta(
        &json!({
            "Matches": matches,
            "Truncations": truncations,
            "Index": index,
            "KnownLeader": known_leader,
            "LastContact": last_contact,
        }),
        IndexMeta::Query(index),
    )
}

/// One fuzzy match: the name found and where it lives (`Scope`, outermost first).
struct Fuzzy {
    id: String,
    scope: Vec<String>,
    /// Where the text was found in the name (earlier ranks first).
    at: usize,
}

impl Fuzzy {
    /// A match of `name` for the lowercased search text, in `scope`; `None` if it does not match.
    fn of(name: &str, text_lower: &str, scope: Vec<String>) -> Option<Fuzzy> {
        fuzzy_at(name, text_lower).map(|at| Fuzzy {
            id: name.to_string(),
            scope,
            at,
        })
    }
}

fn fuzzy_at(name: &str, text_lower: &str) -> Option<usize> {
    name.to_lowercase().find(text_lower)
}

fn finish_fuzzy(mut items: Vec<Fuzzy>) -> (Vec<Value>, bool) {
    items.sort_by(|a, b| (a.at, &a.id, &a.scope).cmp(&(b.at, &b.id, &b.scope)));
    let truncated = items.len() > MAX_MATCHES;
    items.truncate(MAX_MATCHES);
    // `Scope` is left out when empty, as Nomad's `omitempty` does.
    let out = items
        .into_iter()
        .map(|f| {
            if f.scope.is_empty() {
                json!({ "ID": f.id })
            } else {
                json!({"ID": f.id, "Scope": f.scope})
            }
        })
        .collect();
    (out, truncated)
}

fn fuzzy_search(ctx: &Ctx) -> ApiResult {
    let m = body(ctx)?;
    let text = string_field(&m, "Text")?;
    let context = string_field(&m, "Context")?;
    let ns = request_namespace(ctx);
    let wanted = contexts(&context, FUZZY_CONTEXTS)?;
    if text.chars().count() < MIN_FUZZY_TERM {
        return Err(ApiError::bad_request(format!(
            "fuzzy search query must be at least {MIN_FUZZY_TERM} characters, got {}",
            text.chars().count()
        )));
    }
    let allowed: Vec<&str> = wanted
        .into_iter()
        .filter(|c| may_search(ctx, &ns, c))
        .collect();
    if allowed.is_empty() {
        return Err(ApiError::permission_denied());
    }
    let needle = text.to_lowercase();
    let w = &ctx.agent.workloads;
    let mut matches: BTreeMap<String, Value> = BTreeMap::new();
    let mut truncations: BTreeMap<String, Value> = BTreeMap::new();
    let mut put = |name: &str, items: Vec<Fuzzy>| {
        let (items, truncated) = finish_fuzzy(items);
        if !items.is_empty() {
            matches.insert(name.to_string(), Value::Array(items));
        }
        truncations.insert(name.to_string(), json!(truncated));
    };
    for c in allowed {
        match c {
            "jobs" => {
                let (mut jobs, mut groups, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
                for j in w.jobs().into_iter().filter(|j| ns_ok(&ns, &j.namespace)) {
                    jobs.extend(Fuzzy::of(
                        &j.name,
                        &needle,
                        vec![j.namespace.clone(), j.id.clone()],
                    ));
                    for g in j.task_groups.iter() {
                        groups.extend(Fuzzy::of(
                            &g.name,
                            &needle,
                            vec![j.namespace.clone(), j.id.clone()],
                        ));
                        for t in &g.tasks {
                            tasks.extend(Fuzzy::of(
                                &t.name,
                                &needle,
                                vec![j.namespace.clone(), j.id.clone(), g.name.clone()],
                            ));
                        }
                    }
                }
                put("jobs", jobs);
                put("groups", groups);
                put("tasks", tasks);
            }
            "allocs" => {
                let items = w
                    .allocs()
                    .into_iter()
                    .filter(|a| ns_ok(&ns, &a.namespace))
                    .filter_map(|a| {
                        Fuzzy::of(
                            &a.name,
                            &needle,
                            vec![a.namespace.to_string(), a.id.to_string()],
                        )
                    })
                    .collect();
                put("allocs", items);
            }
            "nodes" => {
                let name = &ctx.agent.config.node_name;
                let items = Fuzzy::of(name, &needle, vec![ctx.agent.node.id().to_string()])
                    .into_iter()
                    .collect();
                put("nodes", items);
            }
            "namespaces" => {
                let items = Fuzzy::of(DEFAULT_NAMESPACE, &needle, Vec::new())
                    .into_iter()
                    .collect();
                put("namespaces", items);
            }
            "node_pools" => {
                let items = NODE_POOLS
                    .iter()
                    .filter_map(|(n, _)| Fuzzy::of(n, &needle, Vec::new()))
                    .collect();
                put("node_pools", items);
            }
            // No CSI plugins exist here.
            _ => put(c, Vec::new()),
        }
    }
    let index = ctx.agent.index.current();
    let (known_leader, last_contact) = super::forward::query_meta(ctx.agent);
    json_meta(
        &json!({
            "Matches": matches,
            "Truncations": truncations,
            "Index": index,
            "KnownLeader": known_leader,
            "LastContact": last_contact,
        }),
        IndexMeta::Query(index),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_uuid_prefixes_round_down() {
        assert_eq!(round_uuid_prefix("abc"), "ab");
        assert_eq!(round_uuid_prefix("ab"), "ab");
        assert_eq!(round_uuid_prefix("e3671fa4-2"), "e3671fa4-");
        assert_eq!(round_uuid_prefix(""), "");
    }

    #[test]
    fn unknown_contexts_are_refused() {
        assert!(contexts("bogus", PREFIX_CONTEXTS).is_err());
        assert_eq!(contexts("jobs", PREFIX_CONTEXTS).unwrap(), vec!["jobs"]);
        assert_eq!(
            contexts("all", FUZZY_CONTEXTS).unwrap().len(),
            FUZZY_CONTEXTS.len()
        );
    }
}
