//! Namespaces and node pools as nomadlet has them: the one `default` namespace, and Nomad's
//! two built-in node pools `all` and `default`. Neither can be created, changed or deleted
//! here, so only their reads exist; a job naming another namespace is refused at register.

use serde_json::{json, Value};

use crate::http::Method;

use super::params::check_common;
use super::{auth::Identity, json_meta, ApiError, ApiResult, Ctx, IndexMeta};

/// The only namespace nomadlet has.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Its description, as Nomad's built-in one reads.
const DEFAULT_NAMESPACE_DESCRIPTION: &str = "Default shared namespace";
/// Raft index at which Nomad's built-in objects exist (they come with the first state).
const BUILTIN_INDEX: u64 = 1;

/// The namespace capabilities that let a caller see a namespace (Nomad lists a namespace when
/// the caller has any capability in it).
const NAMESPACE_CAPABILITIES: &[&str] = &[
    "list-jobs",
    "parse-job",
    "read-job",
    "submit-job",
    "dispatch-job",
    "read-logs",
    "read-fs",
    "alloc-exec",
    "alloc-lifecycle",
    "alloc-node-exec",
    "csi-read-volume",
    "csi-list-volume",
    "list-scaling-policies",
    "read-scaling-policy",
    "read-job-scaling",
    "scale-job",
    "sentinel-override",
    "submit-recommendation",
    "host-volume-read",
];

/// Built-in node pools: `(name, description)`.
pub const NODE_POOLS: &[(&str, &str)] = &[
    ("all", "Node pool with all nodes in the cluster."),
    ("default", "Default node pool."),
];

/// Nomad's refusal of a job in a namespace that does not exist.
pub fn require_known(namespace: &str) -> Result<(), ApiError> {
    if namespace == DEFAULT_NAMESPACE {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "namespace {namespace:?} does not exist"
        )))
    }
}

/// Whether the caller holds any capability in `namespace` (Nomad's `AllowNamespace`).
pub fn may_see_namespace(identity: &Identity, namespace: &str) -> bool {
    NAMESPACE_CAPABILITIES
        .iter()
        .any(|c| identity.allow_namespace(namespace, c).is_ok())
}

/// The `default` namespace as Nomad serves it.
pub fn default_namespace_json() -> Value {
    json!({
        "Name": DEFAULT_NAMESPACE,
        "Description": DEFAULT_NAMESPACE_DESCRIPTION,
        "Quota": "",
        "Capabilities": Value::Null,
        "NodePoolConfiguration": Value::Null,
        "VaultConfiguration": Value::Null,
        "ConsulConfiguration": Value::Null,
        "Meta": Value::Null,
        "CreateIndex": BUILTIN_INDEX,
        "ModifyIndex": BUILTIN_INDEX,
    })
}

/// A built-in node pool as Nomad serves it.
pub fn node_pool_json(name: &str, description: &str) -> Value {
    json!({
        "Name": name,
        "Description": description,
        "Meta": Value::Null,
        "SchedulerConfiguration": Value::Null,
        "CreateIndex": BUILTIN_INDEX,
        "ModifyIndex": BUILTIN_INDEX,
    })
}

/// Whether the caller may read node pools (nomadlet's policies carry no `node_pool` rules;
/// `node:read` stands for them, and management may do anything).
pub fn may_read_node_pools(identity: &Identity) -> bool {
    identity.allow_node(false).is_ok()
}

/// Serve `/v1/namespaces` and `/v1/namespace/:name` (`path` is after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    if path == "namespaces" {
        ctx.require_method(&[Method::Get])?;
        check_common(ctx.req)?;
        let prefix = ctx.req.query("prefix").unwrap_or("");
        let mut out = Vec::new();
        if DEFAULT_NAMESPACE.starts_with(prefix) && may_see_namespace(&ctx.identity, "default") {
            out.push(default_namespace_json());
        }
        return json_meta(&out, IndexMeta::Query(BUILTIN_INDEX));
    }
    let Some(name) = path
        .strip_prefix("namespace/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return Err(ApiError::no_route());
    };
    // Namespaces cannot be written here: only reads exist.
    if *ctx.method() != Method::Get {
        return Err(ApiError::no_route());
    }
    check_common(ctx.req)?;
    if !may_see_namespace(&ctx.identity, name) {
        return Err(ApiError::permission_denied());
    }
    if name != DEFAULT_NAMESPACE {
        return Err(ApiError::not_found("Namespace not found"));
    }
    json_meta(&default_namespace_json(), IndexMeta::Query(BUILTIN_INDEX))
}

/// Serve `/v1/node/pools` and `/v1/node/pool/:name` (`path` is after `/v1/`).
pub fn route_node_pools(ctx: &Ctx, path: &str) -> ApiResult {
    if *ctx.method() != Method::Get {
        // Node pools cannot be written here.
        return Err(ApiError::no_route());
    }
    check_common(ctx.req)?;
    if path == "node/pools" {
        let prefix = ctx.req.query("prefix").unwrap_or("");
        let out: Vec<Value> = if may_read_node_pools(&ctx.identity) {
            NODE_POOLS
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(n, d)| node_pool_json(n, d))
                .collect()
        } else {
            Vec::new()
        };
        return json_meta(&out, IndexMeta::Query(BUILTIN_INDEX));
    }
    let name = path.strip_prefix("node/pool/").unwrap_or("");
    if name.is_empty() || name.contains('/') {
        return Err(ApiError::no_route());
    }
    if !may_read_node_pools(&ctx.identity) {
        return Err(ApiError::permission_denied());
    }
    let (n, d) = NODE_POOLS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::not_found("node pool not found"))?;
    json_meta(&node_pool_json(n, d), IndexMeta::Query(BUILTIN_INDEX))
}
