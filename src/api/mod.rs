//! Nomad's HTTP API on top of `src/http`: the router, authentication, and one module per area.
//!
//! Handlers take a [`Ctx`] and return an [`ApiResult`]; the router turns it into Nomad's wire
//! format (Go field names, `?pretty`, plain-text errors without a trailing newline, index headers).

pub mod acl;
pub mod acl_json;
pub mod agent;
pub mod agent_host;
pub mod alloc_ports;
pub mod allocs;
pub mod auth;
pub mod client_alloc;
pub mod client_exec;
pub mod client_fs;
pub mod client_meta;
pub mod client_stats;
pub mod error;
pub mod events;
pub mod filter;
pub mod forward;
pub mod forward_exec;
pub mod job_dispatch;
pub mod job_plan;
pub mod job_versions;
pub mod jobs;
pub mod jobs_parse;
pub mod metrics;
pub mod monitor;
pub mod namespaces;
pub mod node_ops;
pub mod nodes;
pub mod operator_autopilot;
pub mod operator_snapshot;
pub mod params;
pub mod raft_status;
pub mod router;
pub mod scaling;
pub mod search;
pub mod services;
pub mod system;

use std::sync::Arc;

use crate::http::{Method, Reply, Request};

pub use error::ApiError;
pub use services::Agent;

/// What a handler produced.
pub enum ApiReply {
    /// A JSON document. `meta` says which index headers go with it.
    Json {
        value: serde_json::Value,
        meta: IndexMeta,
    },
    /// 200 with an empty body and no Content-Type (Nomad's "no object" replies).
    Empty { meta: IndexMeta },
    /// A fully formed reply (files, streams, odd content types); passed through untouched.
    Http(Reply),
}

/// Which of Nomad's index headers a reply carries.
#[derive(Clone, Copy, Debug)]
pub enum IndexMeta {
    /// No index headers (client-local and agent endpoints).
    None,
    /// A read: `X-Nomad-Index`, `X-Nomad-KnownLeader` and `X-Nomad-LastContact` (this server's
    /// view of leadership: `api::forward::query_meta`).
    Query(u64),
    /// A write: only `X-Nomad-Index`.
    Write(u64),
}

pub type ApiResult = Result<ApiReply, ApiError>;

/// Serialize a value as a JSON reply with no index headers.
pub fn json<T: serde::Serialize>(value: &T) -> ApiResult {
    json_meta(value, IndexMeta::None)
}

/// Serialize a value as a JSON reply with the given index headers.
pub fn json_meta<T: serde::Serialize>(value: &T, meta: IndexMeta) -> ApiResult {
    let value = serde_json::to_value(value)
        .map_err(|e| ApiError::internal(format!("failed to encode response: {e}")))?;
    Ok(ApiReply::Json { value, meta })
}

/// 200 with an empty body.
pub fn empty() -> ApiResult {
    Ok(ApiReply::Empty {
        meta: IndexMeta::None,
    })
}

/// Whether a JSON value is Go's zero value for `omitempty` purposes.
pub fn is_zero(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty() || o.values().all(is_zero),
    }
}

/// An object of the fields that are not zero, in the given order (Go's struct-wide
/// `omitempty`).
pub fn omit_zero(fields: Vec<(&str, serde_json::Value)>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in fields {
        if !is_zero(&v) {
            m.insert(k.to_string(), v);
        }
    }
    serde_json::Value::Object(m)
}

/// One request as a handler sees it.
pub struct Ctx<'a> {
    pub agent: &'a Arc<Agent>,
    pub req: &'a Request,
    /// Who is asking, resolved from the token before routing.
    pub identity: auth::Identity,
}

impl Ctx<'_> {
    pub fn method(&self) -> &Method {
        &self.req.method
    }

    /// Fails with Nomad's `405 Invalid method` unless the method is one of `allowed`.
    pub fn require_method(&self, allowed: &[Method]) -> Result<(), ApiError> {
        if allowed.contains(&self.req.method) {
            Ok(())
        } else {
            Err(ApiError::invalid_method())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zero_fields_are_omitted() {
        let v = omit_zero(vec![
            ("A", json!("")),
            ("B", json!(0)),
            ("C", json!("x")),
            ("D", json!({"M": null})),
        ]);
        assert_eq!(v, json!({"C": "x"}));
    }
}
