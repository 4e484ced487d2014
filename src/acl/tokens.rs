//! ACL token, one-time token and policy records (stored with Go field names), and how a new
//! token's secret, accessor and hash are made. Their API views are `api::acl_json`'s.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::policy::Policy;
use crate::encoding::base64_std;
use crate::time::rfc3339_nanos as rfc3339_nano;

/// A management or client token. `SecretID` is the bearer credential.
#[derive(Clone, Serialize, Deserialize)]
pub struct AclToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Policies")]
    pub policies: Option<Vec<String>>,
    #[serde(rename = "Global")]
    pub global: bool,
    #[serde(rename = "Hash")]
    pub hash: String,
    #[serde(rename = "CreateTime")]
    pub create_time: String,
    /// When the token stops working (unix nanoseconds); `None` never expires.
    #[serde(rename = "ExpirationUnixNanos", default)]
    pub expiration: Option<i64>,
    /// The TTL the token was created with, in nanoseconds (0 without one).
    #[serde(rename = "ExpirationTTL", default)]
    pub expiration_ttl: u64,
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

// Debug never shows the secret.
impl std::fmt::Debug for AclToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclToken")
            .field("accessor_id", &self.accessor_id)
            .field("name", &self.name)
            .field("type", &self.kind)
            .finish_non_exhaustive()
    }
}

impl AclToken {
    /// A fresh token with random accessor and secret (UUIDs, as Nomad's).
    pub fn new(
        name: String,
        kind: String,
        policies: Option<Vec<String>>,
        global: bool,
        index: u64,
    ) -> AclToken {
        let mut t = AclToken {
            accessor_id: uuid::Uuid::new_v4().to_string(),
            secret_id: uuid::Uuid::new_v4().to_string(),
            name,
            kind,
            policies,
            global,
            hash: String::new(),
            create_time: rfc3339_nano(SystemTime::now()),
            expiration: None,
            expiration_ttl: 0,
            create_index: index,
            modify_index: index,
        };
        t.rehash();
        t
    }

    /// Give the token a TTL counted from now.
    pub fn set_ttl(&mut self, ttl_ns: u64) {
        self.expiration_ttl = ttl_ns;
        self.expiration =
            Some(crate::time::unix_now_nanos().saturating_add(ttl_ns.min(i64::MAX as u64) as i64));
    }

    /// The token has an expiration time and it has passed.
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(crate::time::unix_now_nanos())
    }

    /// Expired at `now` (Unix nanoseconds): what a deterministic apply uses.
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.expiration.is_some_and(|e| now >= e)
    }

    pub fn is_management(&self) -> bool {
        self.kind == "management"
    }

    /// `Hash`: base64 of SHA-256 over the token's identifying fields.
    pub fn rehash(&mut self) {
        let mut h = Sha256::new();
        for part in [&self.name, &self.kind, &self.accessor_id, &self.secret_id] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for p in self.policies.iter().flatten() {
            h.update(p.as_bytes());
            h.update([0]);
        }
        h.update([u8::from(self.global)]);
        self.hash = base64_std(&h.finalize());
    }
}

/// How long a one-time token can be exchanged (Nomad's 10 minutes).
pub const ONE_TIME_TOKEN_TTL_NS: i64 = 10 * 60 * 1_000_000_000;

/// A one-time token: exchanged once, before it expires, for the ACL token that made it.
#[derive(Clone, Serialize, Deserialize)]
pub struct OneTimeToken {
    #[serde(rename = "OneTimeSecretID")]
    pub secret_id: String,
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    /// Unix nanoseconds.
    #[serde(rename = "ExpiresAtUnixNanos")]
    pub expires_at: i64,
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

// Debug never shows the secret.
impl std::fmt::Debug for OneTimeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneTimeToken")
            .field("accessor_id", &self.accessor_id)
            .finish_non_exhaustive()
    }
}

impl OneTimeToken {
    /// A fresh one-time token for the ACL token `accessor_id`, expiring in 10 minutes.
    pub fn new(accessor_id: &str, index: u64) -> OneTimeToken {
        OneTimeToken {
            secret_id: uuid::Uuid::new_v4().to_string(),
            accessor_id: accessor_id.to_string(),
            expires_at: crate::time::unix_now_nanos().saturating_add(ONE_TIME_TOKEN_TTL_NS),
            create_index: index,
            modify_index: index,
        }
    }

    pub fn is_expired(&self) -> bool {
        self.is_expired_at(crate::time::unix_now_nanos())
    }

    /// Expired at `now` (Unix nanoseconds): what a deterministic apply uses.
    pub fn is_expired_at(&self, now: i64) -> bool {
        now >= self.expires_at
    }
}

/// Where a policy is attached for workload identities.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobAcl {
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    #[serde(rename = "JobID", default)]
    pub job_id: String,
    #[serde(rename = "Group", default)]
    pub group: String,
    #[serde(rename = "Task", default)]
    pub task: String,
}

impl JobAcl {
    /// Does this attachment cover the task? Empty fields match anything below them.
    pub fn covers(&self, namespace: &str, job: &str, group: Option<&str>, task: &str) -> bool {
        let ns = if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        };
        ns == namespace
            && (self.job_id.is_empty() || self.job_id == job)
            && (self.group.is_empty() || Some(self.group.as_str()) == group)
            && (self.task.is_empty() || self.task == task)
    }
}

/// A named policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AclPolicy {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Rules")]
    pub rules: String,
    #[serde(rename = "JobACL")]
    pub job_acl: Option<JobAcl>,
    #[serde(rename = "Hash")]
    pub hash: String,
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
    /// The parsed rules (not stored: parsed again at load).
    #[serde(skip)]
    pub parsed: Arc<Policy>,
}

impl AclPolicy {
    pub fn rehash(&mut self) {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update([0]);
        h.update(self.description.as_bytes());
        h.update([0]);
        h.update(self.rules.as_bytes());
        if let Some(j) = &self.job_acl {
            for part in [&j.namespace, &j.job_id, &j.group, &j.task] {
                h.update([0]);
                h.update(part.as_bytes());
            }
        }
        self.hash = base64_std(&h.finalize());
    }
}

/// Is `s` shaped like a UUID (an ACL secret rather than a JWT)?
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_told_from_jwts() {
        assert!(is_uuid("2b778dd9-f5f1-6f29-b4b4-9a5fa948757a"));
        assert!(!is_uuid("2b778dd9-f5f1-6f29-b4b4-9a5fa948757"));
        assert!(!is_uuid("2b778dd9xf5f1-6f29-b4b4-9a5fa948757a"));
        assert!(!is_uuid("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"));
    }

    #[test]
    fn job_acl_attachments_cover_what_is_below_them() {
        let ns_only = JobAcl {
            namespace: "default".into(),
            ..JobAcl::default()
        };
        assert!(ns_only.covers("default", "web", Some("g"), "t"));
        assert!(!ns_only.covers("prod", "web", Some("g"), "t"));
        let job = JobAcl {
            namespace: "default".into(),
            job_id: "web".into(),
            ..JobAcl::default()
        };
        assert!(job.covers("default", "web", Some("g"), "t"));
        assert!(!job.covers("default", "api", Some("g"), "t"));
        let task = JobAcl {
            namespace: "default".into(),
            job_id: "web".into(),
            group: "g".into(),
            task: "t".into(),
        };
        assert!(task.covers("default", "web", Some("g"), "t"));
        assert!(!task.covers("default", "web", Some("g"), "other"));
        assert!(!task.covers("default", "web", Some("h"), "t"));
    }

    #[test]
    fn debug_hides_the_secret_and_the_hash_is_base64_sha256() {
        let t = AclToken::new(
            "n".into(),
            "client".into(),
            Some(vec!["p".into()]),
            false,
            7,
        );
        assert!(
            !format!("{t:?}").contains(&t.secret_id),
            "Debug hides the secret"
        );
        assert_eq!(t.hash.len(), 44);
    }
}
