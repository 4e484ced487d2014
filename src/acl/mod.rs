//! ACL state: tokens, policies and the bootstrap marker (kept durably in
//! `<data_dir>/server/acl.json`), plus the workload identity signing key.
//!
//! Submodules: [`policy`] (the policy language), [`capabilities`] (merged rules and checks),
//! [`tokens`] (token and policy records), [`jwt`] (workload identity tokens), [`keys`] (the
//! signing key and JWKS), [`encoding`] (base64, RFC 3339, constant-time comparison).

pub mod capabilities;
pub mod jwt;
pub mod keys;
pub mod policy;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::state::store::{self, StoreError};
use capabilities::Acl;
use keys::LazyKeys;
use tokens::{AclPolicy, AclToken, OneTimeToken};

/// One-time tokens kept at once (expired ones are dropped first).
pub const MAX_ONE_TIME_TOKENS: usize = 1024;

/// The ACL state file under `<data_dir>/server`.
pub const STATE_FILE: &str = "acl.json";
/// The policy anonymous requests get when ACLs are enabled.
pub const ANONYMOUS_POLICY: &str = "anonymous";

/// Everything stored in [`STATE_FILE`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Tables {
    #[serde(rename = "BootstrapIndex", default)]
    bootstrap_index: Option<u64>,
    #[serde(rename = "Tokens", default)]
    tokens: Vec<AclToken>,
    #[serde(rename = "Policies", default)]
    policies: BTreeMap<String, AclPolicy>,
    #[serde(rename = "OneTimeTokens", default)]
    one_time_tokens: Vec<OneTimeToken>,
}

/// Tokens, policies and signing keys.
pub struct AclState {
    pub enabled: bool,
    pub keys: LazyKeys,
    path: PathBuf,
    tables: RwLock<Arc<Tables>>,
    /// Serialises writers: a change is made on a copy, written to disk, then swapped in, so the
    /// table lock is never held across the write.
    writer: Mutex<()>,
}

impl std::fmt::Debug for AclState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclState")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl AclState {
    /// Load from `<data_dir>/server`; makes the signing key at first start.
    pub fn load(data_dir: &Path, enabled: bool) -> Result<AclState, StoreError> {
        let path = data_dir.join("server").join(STATE_FILE);
        let mut tables: Tables = store::read_json(&path)?.unwrap_or_default();
        tables
            .policies
            .retain(|name, p| match policy::parse(&p.rules) {
                Ok(parsed) => {
                    p.parsed = Arc::new(parsed);
                    true
                }
                Err(e) => {
                    log::warn!(
                        "dropping stored ACL policy {name:?}: its rules no longer parse: {e}"
                    );
                    false
                }
            });
        let keys = LazyKeys::new(data_dir);
        Ok(AclState {
            enabled,
            keys,
            path,
            tables: RwLock::new(Arc::new(tables)),
            writer: Mutex::new(()),
        })
    }

    fn snapshot(&self) -> Arc<Tables> {
        self.tables.read().clone()
    }

    /// The largest index stored, so the agent's counter stays above it.
    pub fn max_index(&self) -> u64 {
        let t = self.snapshot();
        let tok = t.tokens.iter().map(|t| t.modify_index).max().unwrap_or(0);
        let pol = t
            .policies
            .values()
            .map(|p| p.modify_index)
            .max()
            .unwrap_or(0);
        tok.max(pol).max(t.bootstrap_index.unwrap_or(0))
    }

    /// Persist, then publish: apply `change` to a copy, store it durably, and only then swap
    /// it in. A change that cannot be stored changes nothing visible (Nomad's 500).
    fn mutate<R>(
        &self,
        change: impl FnOnce(&mut Tables) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let _w = self.writer.lock();
        let mut copy = (*self.snapshot()).clone();
        let r = change(&mut copy)?;
        store::write_json(&self.path, &copy).map_err(|e| {
            log::error!("cannot store ACL state: {e}");
            ApiError::internal(format!("failed to persist ACL state: {e}"))
        })?;
        *self.tables.write() = Arc::new(copy);
        Ok(r)
    }

    /// Create the initial management token, once.
    pub fn bootstrap(&self, index: u64, secret: Option<String>) -> Result<AclToken, ApiError> {
        self.mutate(|t| {
            if let Some(i) = t.bootstrap_index {
                return Err(ApiError::bad_request(format!(
                    "ACL bootstrap already done (reset index: {i})"
                )));
            }
            let mut token = AclToken::new(
                "Bootstrap Token".into(),
                "management".into(),
                None,
                true,
                index,
            );
            if let Some(s) = secret {
                token.secret_id = s;
                token.rehash();
            }
            t.bootstrap_index = Some(index);
            t.tokens.push(token.clone());
            Ok(token)
        })
    }

    /// Find a token by its secret, comparing every stored secret in constant time.
    pub fn token_by_secret(&self, secret: &str) -> Option<AclToken> {
        let t = self.snapshot();
        let mut found = None;
        for tok in &t.tokens {
            if crate::encoding::constant_time_eq(tok.secret_id.as_bytes(), secret.as_bytes()) {
                found = Some(tok.clone());
            }
        }
        found
    }

    pub fn token(&self, accessor: &str) -> Option<AclToken> {
        self.snapshot()
            .tokens
            .iter()
            .find(|t| t.accessor_id == accessor)
            .cloned()
    }

    pub fn tokens(&self) -> Vec<AclToken> {
        self.snapshot().tokens.clone()
    }

    /// Insert or replace a token (by accessor).
    pub fn upsert_token(&self, token: AclToken) -> Result<(), ApiError> {
        self.mutate(|t| {
            match t
                .tokens
                .iter_mut()
                .find(|x| x.accessor_id == token.accessor_id)
            {
                Some(slot) => *slot = token,
                None => t.tokens.push(token),
            }
            Ok(())
        })
    }

    /// Update an existing token in place; 404 `ACL token not found` when it is gone.
    pub fn update_token(
        &self,
        accessor: &str,
        f: impl FnOnce(&mut AclToken),
    ) -> Result<AclToken, ApiError> {
        self.mutate(|t| {
            let slot = t
                .tokens
                .iter_mut()
                .find(|x| x.accessor_id == accessor)
                .ok_or_else(|| ApiError::not_found("ACL token not found"))?;
            f(slot);
            slot.rehash();
            Ok(slot.clone())
        })
    }

    /// Delete a token; Nomad's 400 when there is none.
    pub fn delete_token(&self, accessor: &str) -> Result<(), ApiError> {
        self.mutate(|t| {
            let before = t.tokens.len();
            t.tokens.retain(|x| x.accessor_id != accessor);
            if t.tokens.len() == before {
                return Err(ApiError::bad_request(format!(
                    "Cannot delete nonexistent tokens: {accessor}"
                )));
            }
            // A deleted token's one-time tokens go with it.
            t.one_time_tokens.retain(|o| o.accessor_id != accessor);
            Ok(())
        })
    }

    pub fn policies(&self) -> Vec<AclPolicy> {
        self.snapshot().policies.values().cloned().collect()
    }

    pub fn policy(&self, name: &str) -> Option<AclPolicy> {
        self.snapshot().policies.get(name).cloned()
    }

    /// Insert or replace a policy; keeps its `CreateIndex` when it existed.
    pub fn upsert_policy(&self, mut policy: AclPolicy) -> Result<(), ApiError> {
        self.mutate(|t| {
            if let Some(old) = t.policies.get(&policy.name) {
                policy.create_index = old.create_index;
            }
            policy.rehash();
            t.policies.insert(policy.name.clone(), policy);
            Ok(())
        })
    }

    pub fn delete_policy(&self, name: &str) -> Result<bool, ApiError> {
        self.mutate(|t| Ok(t.policies.remove(name).is_some()))
    }

    /// Make a one-time token for the ACL token `accessor` (persisted, then published).
    pub fn create_one_time_token(
        &self,
        accessor: &str,
        index: u64,
    ) -> Result<OneTimeToken, ApiError> {
        self.mutate(|t| {
            t.one_time_tokens.retain(|o| !o.is_expired());
            if t.one_time_tokens.len() >= MAX_ONE_TIME_TOKENS {
                return Err(ApiError::new(
                    429,
                    format!("too many one-time tokens (at most {MAX_ONE_TIME_TOKENS} at once)"),
                ));
            }
            let ott = OneTimeToken::new(accessor, index);
            t.one_time_tokens.push(ott.clone());
            Ok(ott)
        })
    }

    /// Exchange a one-time token's secret for its ACL token, once: the one-time token is
    /// removed durably before the ACL token is handed out. Unknown, used or expired secrets,
    /// and tokens whose ACL token is gone, are Nomad's 403 `Permission denied`.
    pub fn exchange_one_time_token(&self, secret: &str) -> Result<AclToken, ApiError> {
        self.mutate(|t| {
            let mut found = None;
            for (i, o) in t.one_time_tokens.iter().enumerate() {
                if crate::encoding::constant_time_eq(o.secret_id.as_bytes(), secret.as_bytes()) {
                    found = Some(i);
                }
            }
            let ott = match found {
                Some(i) if !t.one_time_tokens[i].is_expired() => t.one_time_tokens.remove(i),
                _ => return Err(ApiError::permission_denied()),
            };
            t.one_time_tokens.retain(|o| !o.is_expired());
            t.tokens
                .iter()
                .find(|x| x.accessor_id == ott.accessor_id && !x.is_expired())
                .cloned()
                .ok_or_else(ApiError::permission_denied)
        })
    }

    /// The merged rules of the named policies (missing names are skipped).
    pub fn acl_for_policies(&self, names: &[String]) -> Acl {
        let t = self.snapshot();
        Acl::from_policies(
            names
                .iter()
                .filter_map(|n| t.policies.get(n))
                .map(|p| &*p.parsed),
        )
    }

    /// The rules of the `anonymous` policy, or nothing.
    pub fn anonymous_acl(&self) -> Acl {
        self.acl_for_policies(&[ANONYMOUS_POLICY.to_string()])
    }

    /// The policies attached to a job, group or task: a workload identity's rights.
    pub fn acl_for_workload(
        &self,
        namespace: &str,
        job: &str,
        group: Option<&str>,
        task: &str,
    ) -> Acl {
        let attached = self.policies_for_workload(namespace, job, group, task);
        Acl::from_policies(attached.iter().map(|p| &*p.parsed))
    }

    /// The policies attached to a job, group or task.
    pub fn policies_for_workload(
        &self,
        namespace: &str,
        job: &str,
        group: Option<&str>,
        task: &str,
    ) -> Vec<AclPolicy> {
        let t = self.snapshot();
        t.policies
            .values()
            .filter(|p| {
                p.job_acl
                    .as_ref()
                    .is_some_and(|j| j.covers(namespace, job, group, task))
            })
            .cloned()
            .collect()
    }
}
