//! The JSON views of ACL records as Nomad serves them: the full token (with its secret) and
//! its list stub, the one-time token, the full policy and its list stub.

use serde_json::{json, Map, Value};

use crate::acl::tokens::{AclPolicy, AclToken, OneTimeToken};

/// Unix nanoseconds as RFC 3339.
fn rfc3339_ns(ns: i64) -> String {
    crate::time::rfc3339_unix(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// The fields a token's full view and its stub share, in Nomad's order.
fn token_common(t: &AclToken) -> Map<String, Value> {
    let v = json!({
        "AccessorID": t.accessor_id,
        "Name": t.name,
        "Type": t.kind,
        "Policies": t.policies,
        "Roles": Value::Null,
        "Global": t.global,
        "Hash": t.hash,
        "CreateTime": t.create_time,
        "ExpirationTime": t.expiration.map(rfc3339_ns),
        "CreateIndex": t.create_index,
        "ModifyIndex": t.modify_index,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The full token, with its secret (bootstrap, create, read by an allowed caller).
pub fn token(t: &AclToken) -> Value {
    let mut m = Map::new();
    for (k, v) in token_common(t) {
        let accessor = k == "AccessorID";
        m.insert(k, v);
        if accessor {
            m.insert("SecretID".into(), Value::String(t.secret_id.clone()));
        }
    }
    m.insert("ExpirationTTL".into(), json!(t.expiration_ttl));
    Value::Object(m)
}

/// The list stub: no secret.
pub fn token_stub(t: &AclToken) -> Value {
    Value::Object(token_common(t))
}

/// Nomad's `OneTimeToken`.
pub fn one_time_token(o: &OneTimeToken) -> Value {
    json!({
        "OneTimeSecretID": o.secret_id,
        "AccessorID": o.accessor_id,
        "ExpiresAt": rfc3339_ns(o.expires_at),
        "CreateIndex": o.create_index,
        "ModifyIndex": o.modify_index,
    })
}

/// The full policy as `GET /v1/acl/policy/:name` serves it.
pub fn policy(p: &AclPolicy) -> Value {
    json!({
        "Name": p.name,
        "Description": p.description,
        "Rules": p.rules,
        "RulesJSON": p.parsed.rules_json(),
        "JobACL": p.job_acl,
        "Hash": p.hash,
        "CreateIndex": p.create_index,
        "ModifyIndex": p.modify_index,
    })
}

/// The policy list stub.
pub fn policy_stub(p: &AclPolicy) -> Value {
    json!({
        "Name": p.name,
        "Description": p.description,
        "JobACL": p.job_acl,
        "Hash": p.hash,
        "CreateIndex": p.create_index,
        "ModifyIndex": p.modify_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_shows_its_secret_only_in_full_form_right_after_its_accessor() {
        let t = AclToken::new(
            "n".into(),
            "client".into(),
            Some(vec!["p".into()]),
            false,
            7,
        );
        let full = token(&t);
        assert_eq!(full["SecretID"], t.secret_id.as_str());
        let keys: Vec<&String> = full.as_object().unwrap().keys().take(2).collect();
        assert_eq!(keys, ["AccessorID", "SecretID"]);
        assert!(token_stub(&t).get("SecretID").is_none());
    }
}
