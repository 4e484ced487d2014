//! ACL records and rules: tokens, policies and the bootstrap marker (the tables are part of
//! the server state, changed only through ACL commands: `state::acl::AclState` proposes
//! them), the workload identity signing key, and [`Error`], what ACL operations fail with.
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
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::{self, StoreError};
use tokens::{AclPolicy, AclToken, OneTimeToken};

/// One-time tokens kept at once (expired ones are dropped first).
pub const MAX_ONE_TIME_TOKENS: usize = 1024;

/// The ACL state file of earlier versions under `<data_dir>/server` (imported once).
pub const STATE_FILE: &str = "acl.json";
/// The policy anonymous requests get when ACLs are enabled.
pub const ANONYMOUS_POLICY: &str = "anonymous";

/// The ACL part of the server state (also the form of the old [`STATE_FILE`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AclTables {
    #[serde(rename = "BootstrapIndex", default)]
    pub bootstrap_index: Option<u64>,
    #[serde(rename = "Tokens", default)]
    pub tokens: Vec<AclToken>,
    #[serde(rename = "Policies", default)]
    pub policies: BTreeMap<String, AclPolicy>,
    #[serde(rename = "OneTimeTokens", default)]
    pub one_time_tokens: Vec<OneTimeToken>,
}

impl AclTables {
    /// Parse every policy's rules (they are not stored parsed); drop those that no longer
    /// parse, with a warning.
    pub fn parse_policies(&mut self) {
        self.policies
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
    }

    /// The old [`STATE_FILE`] under `server`, for the one-time import (empty when none).
    pub fn read_old_file(server: &Path) -> Result<AclTables, StoreError> {
        let mut t: AclTables = store::read_json(&server.join(STATE_FILE))?.unwrap_or_default();
        t.parse_policies();
        Ok(t)
    }
}

/// Why an ACL operation failed. The API maps each to Nomad's status and text.
#[derive(Debug)]
pub enum Error {
    /// Bootstrap was done already, at this index.
    AlreadyBootstrapped(u64),
    /// No token with this accessor (an update of a token that is gone).
    TokenNotFound,
    /// A delete of a token that is not there.
    NonexistentToken(String),
    /// Policy rules the state refused (the text says why).
    InvalidPolicy(String),
    /// [`MAX_ONE_TIME_TOKENS`] are outstanding.
    TooManyOneTimeTokens,
    /// A one-time token secret that is unknown, used or expired, or whose token is gone.
    PermissionDenied,
    /// The state refused the change for another reason (the text says why).
    Rejected(String),
    /// The change could not be made durable; nothing of it is visible.
    Persist(Box<dyn std::error::Error + Send + Sync>),
    /// The workload identity signing keys could not be loaded or made.
    Keys(Arc<StoreError>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::AlreadyBootstrapped(i) => {
                write!(f, "ACL bootstrap already done (reset index: {i})")
            }
            Error::TokenNotFound => f.write_str("ACL token not found"),
            Error::NonexistentToken(a) => write!(f, "Cannot delete nonexistent tokens: {a}"),
            Error::InvalidPolicy(e) | Error::Rejected(e) => f.write_str(e),
            Error::TooManyOneTimeTokens => write!(
                f,
                "too many one-time tokens (at most {MAX_ONE_TIME_TOKENS} at once)"
            ),
            Error::PermissionDenied => f.write_str("Permission denied"),
            Error::Persist(e) => write!(f, "failed to persist ACL state: {e}"),
            Error::Keys(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Persist(e) => Some(&**e),
            Error::Keys(e) => Some(&**e),
            _ => None,
        }
    }
}
