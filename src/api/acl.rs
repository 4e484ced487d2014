//! ACL endpoints: bootstrap, tokens, policies, and the JWKS document.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::params::{check_common, get_ci};
use super::{acl_json, auth::Identity, filter, ApiError, ApiReply, ApiResult, Ctx, IndexMeta};
use crate::acl::keys::{PublicJwk, JWKS_MAX_AGE_SECS};
use crate::acl::tokens::{is_uuid, AclPolicy, AclToken, JobAcl};
use crate::acl::{policy, ANONYMOUS_POLICY};
use crate::http::{Method, Reply, Status};

/// Longest token name Nomad accepts.
pub const MAX_TOKEN_NAME: usize = 256;
/// Longest policy description Nomad accepts.
pub const MAX_POLICY_DESCRIPTION: usize = 256;
/// Longest policy name.
pub const MAX_POLICY_NAME: usize = 128;

/// Serve `path` (the request path after `/v1/`).
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    let rest = path.strip_prefix("acl/").unwrap_or("");
    if !ctx.agent.acl.enabled {
        if is_known_path(rest) {
            return Err(ApiError::bad_request("ACL support disabled"));
        }
        return Err(ApiError::no_route());
    }
    match rest {
        "bootstrap" => bootstrap(ctx),
        "tokens" => list_tokens(ctx),
        "token" => {
            ctx.require_method(&[Method::Put, Method::Post])?;
            create_token(ctx)
        }
        "token/self" => token_self(ctx),
        "token/onetime" => create_one_time_token(ctx),
        "token/onetime/exchange" => exchange_one_time_token(ctx),
        "policies" => list_policies(ctx),
        "policy/self" => policy_self(ctx),
        _ => {
            if let Some(acc) = rest
                .strip_prefix("token/")
                .filter(|s| !s.is_empty() && !s.contains('/'))
            {
                token_by_accessor(ctx, acc)
            } else if let Some(name) = rest
                .strip_prefix("policy/")
                .filter(|s| !s.is_empty() && !s.contains('/'))
            {
                policy_by_name(ctx, name)
            } else {
                Err(ApiError::no_route())
            }
        }
    }
}

fn is_known_path(rest: &str) -> bool {
    matches!(
        rest,
        "bootstrap" | "tokens" | "token" | "policies" | "token/onetime" | "token/onetime/exchange"
    ) || rest
        .strip_prefix("token/")
        .is_some_and(|s| !s.is_empty() && !s.contains('/'))
        || rest
            .strip_prefix("policy/")
            .is_some_and(|s| !s.is_empty() && !s.contains('/'))
}

/// The request body as a JSON object (Go's decoder: case-insensitive keys).
fn body_object(ctx: &Ctx) -> Result<Map<String, Value>, ApiError> {
    if ctx.req.body.is_empty() {
        return Err(ApiError::empty_body());
    }
    match crate::parse_bounds::json_value(&ctx.req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "Request decode failed: body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Request decode failed: {e}"))),
    }
}

fn opt_string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match get_ci(m, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "Request decode failed: {key} must be a string"
        ))),
    }
}

fn opt_string_list(m: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "Request decode failed: {key} must be a list of strings"
        ))
    };
    match get_ci(m, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

fn write_reply(value: Value, index: u64) -> ApiResult {
    Ok(ApiReply::Json {
        value,
        meta: IndexMeta::Write(index),
    })
}

fn query_reply(value: Value, ctx: &Ctx) -> ApiResult {
    Ok(ApiReply::Json {
        value,
        meta: IndexMeta::Query(ctx.agent.acl.max_index().max(1)),
    })
}

// ---- bootstrap ----

fn bootstrap(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let secret = if ctx.req.body.is_empty() {
        None
    } else {
        let m = body_object(ctx)?;
        match opt_string(&m, "BootstrapSecret")? {
            Some(s) if !s.is_empty() => {
                if !is_uuid(&s) {
                    return Err(ApiError::bad_request("invalid acl token"));
                }
                Some(s)
            }
            _ => None,
        }
    };
    let index = ctx.agent.index.next();
    let token = ctx.agent.acl.bootstrap(index, secret)?;
    log::info!(
        "ACL bootstrap done: management token {} created",
        token.accessor_id
    );
    write_reply(acl_json::token(&token), index)
}

// ---- tokens ----

fn list_tokens(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    check_common(ctx.req)?;
    ctx.identity.allow_management()?;
    let prefix = ctx.req.query("prefix").unwrap_or("");
    // The filter sees the token stub: unlike Nomad, never the SecretID (a filter on it would
    // be an oracle for the secret).
    let expr = filter::from_query(ctx.req)?;
    let list: Vec<Value> = ctx
        .agent
        .acl
        .tokens()
        .iter()
        .filter(|t| t.accessor_id.starts_with(prefix))
        .map(acl_json::token_stub)
        .filter(|v| filter::keeps(expr.as_ref(), v))
        .collect();
    query_reply(Value::Array(list), ctx)
}

/// The checks Nomad's `ACLToken.Validate` makes.
fn validate_token(kind: &str, name: &str, policies: &Option<Vec<String>>) -> Result<(), ApiError> {
    let invalid = |m: &str| Err(ApiError::bad_request(format!("token 0 invalid: {m}")));
    if name.len() > MAX_TOKEN_NAME {
        return invalid("token name too long");
    }
    let has_policies = policies.as_ref().is_some_and(|p| !p.is_empty());
    match kind {
        "client" if !has_policies => invalid("client token missing policies or roles"),
        "management" if has_policies => {
            invalid("management token cannot be associated with policies or roles")
        }
        "client" | "management" => Ok(()),
        _ => invalid("token type must be client or management"),
    }
}

/// Shortest and longest token TTL (Nomad's `token_min_expiration_ttl`/`_max_` defaults).
const MIN_TOKEN_TTL_NS: u64 = 60 * 1_000_000_000;
const MAX_TOKEN_TTL_NS: u64 = 24 * 3600 * 1_000_000_000;

/// `ExpirationTTL`: nanoseconds (Go's JSON for a Duration) or Go duration text (`"1h"`).
fn expiration_ttl(m: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    let ttl = match get_ci(m, "ExpirationTTL") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            ApiError::bad_request(
                "Request decode failed: ExpirationTTL must be a non-negative duration",
            )
        })?,
        Some(Value::String(s)) => crate::config::parse_go_duration(s)
            .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Request decode failed: time: invalid duration {s:?}"
                ))
            })?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Request decode failed: ExpirationTTL must be a duration",
            ))
        }
    };
    if ttl == 0 {
        return Ok(None);
    }
    if get_ci(m, "ExpirationTime").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "token 0 invalid: cannot set both expiration time and TTL",
        ));
    }
    if ttl < MIN_TOKEN_TTL_NS {
        return Err(ApiError::bad_request(
            "token 0 invalid: expiration time cannot be less than 1m0s in the future",
        ));
    }
    if ttl > MAX_TOKEN_TTL_NS {
        return Err(ApiError::bad_request(
            "token 0 invalid: expiration time cannot be more than 24h0m0s in the future",
        ));
    }
    Ok(Some(ttl))
}

fn create_token(ctx: &Ctx) -> ApiResult {
    ctx.identity.allow_management()?;
    let m = body_object(ctx)?;
    if let Some(acc) = opt_string(&m, "AccessorID")? {
        if !acc.is_empty() {
            return update_token(ctx, &acc, m);
        }
    }
    let name = opt_string(&m, "Name")?.unwrap_or_default();
    let kind = opt_string(&m, "Type")?.unwrap_or_default();
    let policies = opt_string_list(&m, "Policies")?.filter(|p| !p.is_empty());
    let global = matches!(get_ci(&m, "Global"), Some(Value::Bool(true)));
    validate_token(&kind, &name, &policies)?;
    let ttl = expiration_ttl(&m)?;
    let index = ctx.agent.index.next();
    let mut token = AclToken::new(name, kind, policies, global, index);
    if let Some(ttl) = ttl {
        token.set_ttl(ttl);
    }
    ctx.agent.acl.upsert_token(token.clone())?;
    write_reply(acl_json::token(&token), index)
}

fn update_token(ctx: &Ctx, accessor: &str, m: Map<String, Value>) -> ApiResult {
    if let Some(acc) = opt_string(&m, "AccessorID")? {
        if !acc.is_empty() && acc != accessor {
            return Err(ApiError::bad_request(
                "ACL token accessor does not match request path",
            ));
        }
    }
    let existing = ctx
        .agent
        .acl
        .token(accessor)
        .ok_or_else(|| ApiError::bad_request(format!("cannot find token {accessor}")))?;
    let name = opt_string(&m, "Name")?.unwrap_or_default();
    let kind = opt_string(&m, "Type")?.unwrap_or_else(|| existing.kind.clone());
    let policies = opt_string_list(&m, "Policies")?.filter(|p| !p.is_empty());
    validate_token(&kind, &name, &policies)?;
    if kind != existing.kind {
        return Err(ApiError::bad_request(
            "token 0 invalid: cannot change token type",
        ));
    }
    let index = ctx.agent.index.next();
    let token = ctx.agent.acl.update_token(accessor, |t| {
        t.name = name;
        t.policies = policies;
        t.modify_index = index;
    })?;
    write_reply(acl_json::token(&token), index)
}

fn token_self(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    match &ctx.identity {
        Identity::Token { token, .. } => query_reply(acl_json::token(token), ctx),
        Identity::Workload { .. } => Err(ApiError::internal("UUID must be 36 characters")),
        _ => Err(ApiError::not_found("ACL token not found")),
    }
}

fn token_by_accessor(ctx: &Ctx, accessor: &str) -> ApiResult {
    match ctx.method() {
        Method::Get => {
            check_common(ctx.req)?;
            let own = ctx
                .identity
                .token()
                .is_some_and(|t| t.accessor_id == accessor);
            if !own {
                ctx.identity.allow_management()?;
            }
            let token = ctx
                .agent
                .acl
                .token(accessor)
                .ok_or_else(|| ApiError::not_found("ACL token not found"))?;
            query_reply(acl_json::token(&token), ctx)
        }
        Method::Put | Method::Post => {
            ctx.identity.allow_management()?;
            let m = body_object(ctx)?;
            update_token(ctx, accessor, m)
        }
        Method::Delete => {
            ctx.identity.allow_management()?;
            let index = ctx.agent.index.next();
            ctx.agent.acl.delete_token(accessor)?;
            log::info!("ACL token {accessor} deleted");
            Ok(ApiReply::Empty {
                meta: IndexMeta::Write(index),
            })
        }
        _ => Err(ApiError::invalid_method()),
    }
}

// ---- one-time tokens ----

/// `PUT /v1/acl/token/onetime`: a one-time token for the caller's own ACL token (no
/// capability needed; anonymous callers and workload identities have no token to give).
fn create_one_time_token(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let Some(token) = ctx.identity.token() else {
        return Err(ApiError::permission_denied());
    };
    let index = ctx.agent.index.next();
    let ott = ctx
        .agent
        .acl
        .create_one_time_token(&token.accessor_id, index)?;
    log::info!("one-time token made for ACL token {}", token.accessor_id);
    write_reply(
        serde_json::json!({"OneTimeToken": acl_json::one_time_token(&ott), "Index": index}),
        index,
    )
}

/// `PUT /v1/acl/token/onetime/exchange`: the ACL token behind a one-time secret, once.
fn exchange_one_time_token(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let m = body_object(ctx)?;
    let secret = opt_string(&m, "OneTimeSecretID")?.unwrap_or_default();
    if !is_uuid(&secret) {
        return Err(ApiError::permission_denied());
    }
    let index = ctx.agent.index.next();
    let token = ctx.agent.acl.exchange_one_time_token(&secret)?;
    log::info!(
        "one-time token exchanged for ACL token {}",
        token.accessor_id
    );
    write_reply(
        serde_json::json!({"Token": acl_json::token(&token), "Index": index}),
        index,
    )
}

// ---- policies ----

/// Policies the caller may read (Nomad's `GetPolicy`): all for management, the `anonymous`
/// policy for anyone, and a client token's own policies.
fn may_read_policy(identity: &Identity, name: &str) -> bool {
    if identity.allow_management().is_ok() || name == ANONYMOUS_POLICY {
        return true;
    }
    match identity {
        Identity::Anonymous { .. } => false,
        _ => identity
            .token()
            .and_then(|t| t.policies.as_ref())
            .is_some_and(|p| p.iter().any(|n| n == name)),
    }
}

/// Nomad looks the caller's ACL token up for policy reads; a workload identity has none.
fn require_token_or_anonymous(identity: &Identity) -> Result<(), ApiError> {
    match identity {
        Identity::Workload { .. } => Err(ApiError::new(Status::FORBIDDEN, "ACL token not found")),
        _ => Ok(()),
    }
}

fn list_policies(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    check_common(ctx.req)?;
    require_token_or_anonymous(&ctx.identity)?;
    let prefix = ctx.req.query("prefix").unwrap_or("");
    // Like Nomad, the filter sees the full policy (with its rules), not the list stub.
    let expr = filter::from_query(ctx.req)?;
    let anonymous = matches!(ctx.identity, Identity::Anonymous { .. });
    let list: Vec<Value> = ctx
        .agent
        .acl
        .policies()
        .iter()
        .filter(|p| p.name.starts_with(prefix))
        .filter(|p| {
            // Nomad lists the caller token's own policies; the anonymous token holds `anonymous`.
            ctx.identity.allow_management().is_ok()
                || (anonymous && p.name == ANONYMOUS_POLICY)
                || ctx
                    .identity
                    .token()
                    .and_then(|t| t.policies.as_ref())
                    .is_some_and(|ps| ps.contains(&p.name))
        })
        .filter(|p| expr.is_none() || filter::keeps(expr.as_ref(), &acl_json::policy(p)))
        .map(acl_json::policy_stub)
        .collect();
    query_reply(Value::Array(list), ctx)
}

/// `GET /v1/acl/policy/self`: the policies that apply to the caller.
fn policy_self(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    let acl = &ctx.agent.acl;
    let list: Vec<AclPolicy> = if let Some(c) = ctx.identity.workload() {
        acl.policies_for_workload(
            &c.nomad_namespace,
            &c.nomad_job_id,
            c.group(),
            &c.nomad_task,
        )
    } else if let Some(t) = ctx.identity.token() {
        if t.is_management() {
            acl.policies()
        } else {
            t.policies
                .iter()
                .flatten()
                .filter_map(|n| acl.policy(n))
                .collect()
        }
    } else {
        return Err(ApiError::permission_denied());
    };
    query_reply(
        Value::Array(list.iter().map(acl_json::policy).collect()),
        ctx,
    )
}

fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POLICY_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn policy_by_name(ctx: &Ctx, name: &str) -> ApiResult {
    match ctx.method() {
        Method::Get => {
            check_common(ctx.req)?;
            require_token_or_anonymous(&ctx.identity)?;
            if !may_read_policy(&ctx.identity, name) {
                return Err(ApiError::permission_denied());
            }
            let p = ctx
                .agent
                .acl
                .policy(name)
                .ok_or_else(|| ApiError::not_found("ACL policy not found"))?;
            query_reply(acl_json::policy(&p), ctx)
        }
        Method::Put | Method::Post => upsert_policy(ctx, name),
        Method::Delete => {
            ctx.identity.allow_management()?;
            let index = ctx.agent.index.next();
            ctx.agent.acl.delete_policy(name)?;
            Ok(ApiReply::Empty {
                meta: IndexMeta::Write(index),
            })
        }
        _ => Err(ApiError::invalid_method()),
    }
}

fn parse_job_acl(m: &Map<String, Value>) -> Result<Option<JobAcl>, ApiError> {
    let Some(v) = get_ci(m, "JobACL") else {
        return Ok(None);
    };
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => {
            return Err(ApiError::bad_request(
                "Request decode failed: JobACL must be an object",
            ))
        }
    };
    let j = JobAcl {
        namespace: opt_string(obj, "Namespace")?.unwrap_or_default(),
        job_id: opt_string(obj, "JobID")?.unwrap_or_default(),
        group: opt_string(obj, "Group")?.unwrap_or_default(),
        task: opt_string(obj, "Task")?.unwrap_or_default(),
    };
    let invalid = |msg: &str| Err(ApiError::bad_request(format!("policy 0 invalid: {msg}")));
    if !j.job_id.is_empty() && j.namespace.is_empty() {
        return invalid("namespace must be set to set job ID");
    }
    if !j.group.is_empty() && j.job_id.is_empty() {
        return invalid("job ID must be set to set group");
    }
    if !j.task.is_empty() && j.group.is_empty() {
        return invalid("group must be set to set task");
    }
    Ok(Some(j))
}

fn upsert_policy(ctx: &Ctx, name: &str) -> ApiResult {
    ctx.identity.allow_management()?;
    let m = body_object(ctx)?;
    let body_name = opt_string(&m, "Name")?.unwrap_or_default();
    if body_name != name {
        return Err(ApiError::bad_request(
            "ACL policy name does not match request path",
        ));
    }
    if !valid_policy_name(name) {
        return Err(ApiError::bad_request(format!(
            "policy 0 invalid: invalid name '{name}'"
        )));
    }
    let description = opt_string(&m, "Description")?.unwrap_or_default();
    if description.len() > MAX_POLICY_DESCRIPTION {
        return Err(ApiError::bad_request(format!(
            "policy 0 invalid: description longer than {MAX_POLICY_DESCRIPTION}"
        )));
    }
    let rules = opt_string(&m, "Rules")?.unwrap_or_default();
    let parsed = policy::parse(&rules).map_err(|e| {
        ApiError::bad_request(format!("policy 0 invalid: failed to parse rules: {e}"))
    })?;
    let job_acl = parse_job_acl(&m)?;
    let index = ctx.agent.index.next();
    ctx.agent.acl.upsert_policy(AclPolicy {
        name: name.to_string(),
        description,
        rules,
        job_acl,
        hash: String::new(),
        create_index: index,
        modify_index: index,
        parsed: Arc::new(parsed),
    })?;
    Ok(ApiReply::Empty {
        meta: IndexMeta::Write(index),
    })
}

/// The JWKS document (`{"keys": [...]}`) publishing the workload identity key.
fn jwks(key: &PublicJwk) -> Value {
    json!({ "keys": [{
        "use": "sig",
        "kty": "RSA",
        "kid": key.kid,
        "alg": "RS256",
        "n": key.n,
        "e": key.e,
    }] })
}

/// The workload identity key's public part: the agent's own, or on a client-only agent (which
/// holds no signing key) the server's, through the link.
fn public_jwk(ctx: &Ctx) -> Result<PublicJwk, ApiError> {
    if !ctx.agent.config.client_only() {
        return Ok(ctx.agent.acl.keys.get()?.public_jwk().clone());
    }
    let reply = ctx
        .agent
        .link
        .public_keys(&crate::client::link::PublicKeysRequest {
            node_id: ctx.agent.node.id().to_string(),
        })
        .map_err(|e| ApiError::internal(format!("rpc error: {e}")))?;
    let k = reply
        .keys
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    Ok(PublicJwk {
        kid: k.kid,
        n: k.n,
        e: k.e,
    })
}

/// Serve `/.well-known/<rest>` (the JWKS document and OIDC discovery).
pub fn well_known(ctx: &Ctx, rest: &str) -> ApiResult {
    match rest {
        "jwks.json" => {
            ctx.require_method(&[Method::Get])?;
            let body = serde_json::to_vec(&jwks(&public_jwk(ctx)?))
                .map_err(|e| ApiError::internal(format!("failed to encode response: {e}")))?;
            Ok(ApiReply::Http(
                Reply::bytes(Status::OK, "application/json", body)
                    .with_header("Cache-Control", format!("max-age={JWKS_MAX_AGE_SECS}")),
            ))
        }
        "openid-configuration" => Err(ApiError::not_found("OIDC Discovery endpoint disabled")),
        _ => Err(ApiError::no_route()),
    }
}
