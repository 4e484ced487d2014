//! Dynamic node metadata: `GET|POST /v1/client/metadata` with Nomad's validation, merge and
//! tombstone rules (ref §3.1–3.2). The change is durable before the reply; the batcher carries
//! it to the node record.

use serde_json::Value;

use crate::client::node::DynamicMeta;

use crate::http::{Method, Reply, Status};

use super::params::{get_ci, wants_pretty};
use super::{json, ApiError, ApiReply, ApiResult, Ctx};

/// Serve `client/metadata`.
pub fn route(ctx: &Ctx, _path: &str) -> ApiResult {
    match ctx.method() {
        Method::Get => read(ctx),
        Method::Post => apply(ctx),
        _ => Err(ApiError::invalid_method()),
    }
}

/// A `node_id` that is not this node.
fn check_node(ctx: &Ctx, node_id: &str) -> Result<(), ApiError> {
    if node_id.is_empty() || node_id == ctx.agent.node.id() {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("Unknown node {node_id:?}")))
    }
}

fn read(ctx: &Ctx) -> ApiResult {
    ctx.identity.allow_node(false)?;
    check_node(ctx, ctx.req.query("node_id").unwrap_or(""))?;
    if wants_pretty(ctx.req) {
        return json(&ctx.agent.node.meta_view());
    }
    // The compact JSON was made when the metadata last changed; a read only copies it.
    let body = ctx.agent.node.meta_view_json();
    Ok(ApiReply::Http(Reply::bytes(
        Status::OK,
        "application/json",
        body.as_ref().clone(),
    )))
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A decoded `NodeMetaApplyRequest`.
#[derive(Debug)]
struct MetaApply {
    /// `NodeID` of the body (empty when absent).
    node_id: String,
    /// The changes: a key set to `None` is removed.
    meta: DynamicMeta,
}

/// Decode `NodeMetaApplyRequest` the way Go's decoder would, with its error texts.
fn decode(body: &[u8]) -> Result<MetaApply, ApiError> {
    if body.is_empty() {
        return Err(ApiError::empty_body());
    }
    crate::parse_bounds::check_json_depth(body, crate::parse_bounds::JSON_MAX_DEPTH).map_err(
        |e| {
            ApiError::bad_request(format!(
                "invalid JSON: {} at line {} column {}",
                e.reason, e.line, e.column
            ))
        },
    )?;
    let v: Value = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .ok_or_else(|| ApiError::bad_request("EOF"))?
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let obj = match &v {
        Value::Object(o) => o,
        Value::Null => {
            return Ok(MetaApply {
                node_id: String::new(),
                meta: DynamicMeta::new(),
            })
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go value of type structs.NodeMetaApplyRequest",
                go_type(other)
            )))
        }
    };
    let node_id = match get_ci(obj, "NodeID") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go struct field NodeMetaApplyRequest.NodeID of type string",
                go_type(other)
            )))
        }
    };
    let mut meta = DynamicMeta::new();
    match get_ci(obj, "Meta") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, val) in m {
                match val {
                    Value::Null => meta.insert(k.clone(), None),
                    Value::String(s) => meta.insert(k.clone(), Some(s.clone())),
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "json: cannot unmarshal {} into Go struct field NodeMetaApplyRequest.Meta of type string",
                            go_type(other)
                        )))
                    }
                };
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go struct field NodeMetaApplyRequest.Meta of type map[string]*string",
                go_type(other)
            )))
        }
    }
    Ok(MetaApply { node_id, meta })
}

/// One segment of a dotted key: an HCL identifier, `(ID_Start | '_') (ID_Continue | '-')*`.
fn is_hcl_identifier(seg: &str) -> bool {
    let mut chars = seg.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// Nomad's validation of the requested keys.
fn validate(meta: &DynamicMeta) -> Result<(), ApiError> {
    if meta.is_empty() {
        return Err(ApiError::bad_request("missing required Meta object"));
    }
    for k in meta.keys() {
        if k.is_empty() {
            return Err(ApiError::bad_request("metadata keys must not be empty"));
        }
        if !k.split('.').all(is_hcl_identifier) {
            return Err(ApiError::bad_request(format!(
                "{k:?} is invalid; metadata keys must be valid dotted hcl identifiers"
            )));
        }
    }
    Ok(())
}

fn apply(ctx: &Ctx) -> ApiResult {
    let MetaApply {
        node_id: body_node,
        meta,
    } = decode(&ctx.req.body)?;
    let node_id = match ctx.req.query("node_id") {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => body_node,
    };
    ctx.identity.allow_node(true)?;
    check_node(ctx, &node_id)?;
    validate(&meta)?;
    let view = ctx
        .agent
        .node
        .apply_dynamic(&meta)
        .map_err(|e| ApiError::internal(format!("failed to persist dynamic metadata: {e}")))?;
    ctx.agent.batcher.meta_changed();
    json(&view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_identifiers() {
        for ok in ["a", "connect.log_level", "a-b.c_d", "_x", "é.ü"] {
            assert!(ok.split('.').all(is_hcl_identifier), "{ok}");
        }
        for bad in ["some/path", "a..b", ".a", "a.", "1abc", "a b", "-a"] {
            assert!(!bad.split('.').all(is_hcl_identifier), "{bad}");
        }
    }

    #[test]
    fn decode_errors_use_go_texts() {
        assert_eq!(decode(b"").unwrap_err().message, "Request body is empty");
        assert_eq!(
            decode(br#"{"Meta":{"a":1}}"#).unwrap_err().message,
            "json: cannot unmarshal number into Go struct field NodeMetaApplyRequest.Meta of type string"
        );
        assert_eq!(
            decode(br#"{"Meta":"x"}"#).unwrap_err().status,
            Status::BAD_REQUEST
        );
        let m = decode(br#"{"meta":{"a":null,"b":"c"}}"#).unwrap().meta;
        assert_eq!(m.get("a"), Some(&None));
        assert_eq!(
            validate(&DynamicMeta::new()).unwrap_err().message,
            "missing required Meta object"
        );
    }
}
