//! [`AclState`]: the ACL part of the server state as the agent uses it: reads of the published
//! tables, and writes proposed as ACL commands to the command log (persisted, then published).
//! The records and rules themselves are `crate::acl`'s; its [`Error`] is what these return.

use std::path::Path;
use std::sync::Arc;

use crate::acl::capabilities::Acl;
use crate::acl::keys::LazyKeys;
use crate::acl::tokens::{AclPolicy, AclToken, OneTimeToken};
use crate::acl::{AclTables, Error, ANONYMOUS_POLICY, MAX_ONE_TIME_TOKENS};

use super::command::{Applied, ApplyError, Command};
use super::command_log::{CommandLog, LogError};

/// Tokens, policies and signing keys.
pub struct AclState {
    pub enabled: bool,
    pub keys: Arc<LazyKeys>,
    log: Arc<CommandLog>,
}

impl std::fmt::Debug for AclState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclState")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

fn persist_err(e: LogError) -> Error {
    log::error!("cannot store ACL state: {e}");
    Error::Persist(Box::new(e))
}

impl AclState {
    /// ACL state over the server state's command log; makes the signing key at first start.
    pub fn load(data_dir: &Path, enabled: bool, log: Arc<CommandLog>) -> AclState {
        AclState {
            enabled,
            keys: Arc::new(LazyKeys::new(data_dir)),
            log,
        }
    }

    fn snapshot(&self) -> Arc<AclTables> {
        self.log.state().acl.clone()
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

    /// Persist, then publish: the command is durable and applied before this returns; one
    /// that cannot be stored changes nothing visible (Nomad's 500).
    fn propose(&self, cmd: Command) -> Result<Result<Applied, ApplyError>, Error> {
        match self.log.propose(cmd) {
            Ok((applied, _)) => Ok(Ok(applied)),
            Err(LogError::Apply(e)) => Ok(Err(e)),
            Err(e) => Err(persist_err(e)),
        }
    }

    /// Create the initial management token, once.
    pub fn bootstrap(&self, index: u64, secret: Option<String>) -> Result<AclToken, Error> {
        if let Some(i) = self.snapshot().bootstrap_index {
            return Err(Error::AlreadyBootstrapped(i));
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
        let cmd = Command::AclBootstrap {
            token: Box::new(token.clone()),
            index,
        };
        match self.propose(cmd)? {
            Ok(_) => Ok(token),
            Err(ApplyError::AlreadyBootstrapped(i)) => Err(Error::AlreadyBootstrapped(i)),
            Err(e) => Err(Error::Rejected(e.to_string())),
        }
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
    pub fn upsert_token(&self, token: AclToken) -> Result<(), Error> {
        let cmd = Command::AclTokenUpsert {
            token: Box::new(token),
            must_exist: false,
        };
        self.propose(cmd)?
            .map(|_| ())
            .map_err(|e| Error::Rejected(e.to_string()))
    }

    /// Update an existing token; 404 `ACL token not found` when it is gone.
    pub fn update_token(
        &self,
        accessor: &str,
        f: impl FnOnce(&mut AclToken),
    ) -> Result<AclToken, Error> {
        let mut token = self.token(accessor).ok_or(Error::TokenNotFound)?;
        f(&mut token);
        token.rehash();
        let cmd = Command::AclTokenUpsert {
            token: Box::new(token.clone()),
            must_exist: true,
        };
        match self.propose(cmd)? {
            Ok(_) => Ok(token),
            Err(_) => Err(Error::TokenNotFound),
        }
    }

    /// Delete a token; Nomad's 400 when there is none.
    pub fn delete_token(&self, accessor: &str) -> Result<(), Error> {
        let cmd = Command::AclTokenDelete {
            accessor: accessor.to_string(),
        };
        self.propose(cmd)?
            .map(|_| ())
            .map_err(|_| Error::NonexistentToken(accessor.to_string()))
    }

    pub fn policies(&self) -> Vec<AclPolicy> {
        self.snapshot().policies.values().cloned().collect()
    }

    pub fn policy(&self, name: &str) -> Option<AclPolicy> {
        self.snapshot().policies.get(name).cloned()
    }

    /// Insert or replace a policy; keeps its `CreateIndex` when it existed.
    pub fn upsert_policy(&self, policy: AclPolicy) -> Result<(), Error> {
        let cmd = Command::AclPolicyUpsert {
            policy: Box::new(policy),
        };
        self.propose(cmd)?
            .map(|_| ())
            .map_err(|e| Error::InvalidPolicy(e.to_string()))
    }

    pub fn delete_policy(&self, name: &str) -> Result<bool, Error> {
        let cmd = Command::AclPolicyDelete {
            name: name.to_string(),
        };
        Ok(matches!(self.propose(cmd)?, Ok(Applied::Acl(true))))
    }

    /// Make a one-time token for the ACL token `accessor` (logged, then published).
    pub fn create_one_time_token(&self, accessor: &str, index: u64) -> Result<OneTimeToken, Error> {
        let ott = OneTimeToken::new(accessor, index);
        let cmd = Command::AclOneTimeTokenCreate {
            token: Box::new(ott.clone()),
            now: crate::time::unix_now_nanos(),
            max: MAX_ONE_TIME_TOKENS,
        };
        match self.propose(cmd)? {
            Ok(_) => Ok(ott),
            Err(ApplyError::TooManyOneTimeTokens) => Err(Error::TooManyOneTimeTokens),
            Err(e) => Err(Error::Rejected(e.to_string())),
        }
    }

    /// Exchange a one-time token's secret for its ACL token, once: the one-time token is
    /// removed durably before the ACL token is handed out. Unknown, used or expired secrets,
    /// and tokens whose ACL token is gone, are Nomad's 403 `Permission denied`.
    pub fn exchange_one_time_token(&self, secret: &str) -> Result<AclToken, Error> {
        let now = crate::time::unix_now_nanos();
        // Only a secret that is there now costs a logged command: anonymous guesses must not
        // become disk writes. Every entry is compared, so timing says nothing.
        let mut known = false;
        for o in &self.snapshot().one_time_tokens {
            known |= crate::encoding::constant_time_eq(o.secret_id.as_bytes(), secret.as_bytes())
                && !o.is_expired_at(now);
        }
        if !known {
            return Err(Error::PermissionDenied);
        }
        let cmd = Command::AclOneTimeTokenExchange {
            secret: secret.to_string(),
            now,
        };
        match self.propose(cmd)? {
            Ok(Applied::AclToken(token)) => Ok(*token),
            Ok(_) | Err(_) => Err(Error::PermissionDenied),
        }
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
