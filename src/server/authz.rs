//! The server's answers to a client's authentication calls, shared by the in-process
//! `LocalLink` and the RPC port: sign a task's workload identities with the server's key (the
//! claims come from the server's own alloc record, never from the request), resolve a caller
//! of a client-only agent (token + policy rules, the anonymous policy, a workload's attached
//! policies), and hand out the public keys identities are verified with. Signing keys and ACL
//! tables never leave the server.

use serde_json::Value;

use crate::acl::jwt::{self, WorkloadClaims, DEFAULT_AUDIENCE};
use crate::acl::keys::LazyKeys;
use crate::acl::tokens::AclPolicy;
use crate::acl::ANONYMOUS_POLICY;
use crate::client::link::{
    AclSubject, LinkError, PolicyRules, PublicKey, PublicKeys, ResolveAcl, ResolvedAcl,
    SignIdentities, SignedIdentities, SignedIdentity,
};
use crate::state::acl::AclState;
use crate::state::jobs::Workloads;

/// Most identities one sign call may ask for.
pub const MAX_IDENTITIES_PER_CALL: usize = 16;

/// Longest identity name or audience accepted.
pub const MAX_IDENTITY_FIELD: usize = 256;

/// Why a sign call was refused.
#[derive(Debug)]
pub enum SignError {
    /// The alloc is unknown or not on the calling node (403 `Permission denied`).
    NotYourAlloc,
    /// The alloc is stopped or finished: its identities are no longer valid.
    Terminal(String),
    /// The task is not in the alloc's group, or the request is malformed.
    BadRequest(String),
    /// The signing key could not be loaded or made.
    Keys(crate::acl::Error),
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::NotYourAlloc => f.write_str("Permission denied"),
            SignError::Terminal(id) => write!(f, "allocation {id} is terminal"),
            SignError::BadRequest(why) => f.write_str(why),
            SignError::Keys(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SignError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SignError::Keys(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SignError> for LinkError {
    fn from(e: SignError) -> LinkError {
        match e {
            SignError::NotYourAlloc => LinkError::PermissionDenied,
            SignError::Terminal(_) | SignError::BadRequest(_) => {
                LinkError::BadRequest(e.to_string())
            }
            SignError::Keys(_) => LinkError::Persist(e.to_string()),
        }
    }
}

/// Sign the identities of `req.task` of `req.alloc_id`, which must be placed on `node_id` (the
/// caller proved it is that node) and not terminal.
pub fn sign_identities(
    workloads: &Workloads,
    keys: &LazyKeys,
    node_id: &str,
    req: &SignIdentities,
) -> Result<SignedIdentities, SignError> {
    if req.identities.len() > MAX_IDENTITIES_PER_CALL {
        return Err(SignError::BadRequest(format!(
            "at most {MAX_IDENTITIES_PER_CALL} identities per call"
        )));
    }
    let alloc = workloads
        .alloc(&req.alloc_id)
        .filter(|a| a.node_id == node_id)
        .ok_or(SignError::NotYourAlloc)?;
    if !alloc.is_live() {
        return Err(SignError::Terminal(alloc.id.to_string()));
    }
    let in_group = alloc
        .job
        .group(&alloc.task_group)
        .is_some_and(|g| g.tasks.iter().any(|t| t.name == req.task));
    if !in_group {
        return Err(SignError::BadRequest(format!(
            "task {:?} is not in allocation {}",
            req.task, alloc.id
        )));
    }
    let keys = keys.get().map_err(SignError::Keys)?;
    let now = crate::time::unix_now_secs();
    let mut identities = Vec::with_capacity(req.identities.len());
    for want in &req.identities {
        let well_formed =
            |s: &str| !s.is_empty() && s.len() <= MAX_IDENTITY_FIELD && !s.contains(':');
        if !well_formed(&want.name) || want.audience.len() > MAX_IDENTITY_FIELD {
            return Err(SignError::BadRequest(
                "invalid identity name or audience".into(),
            ));
        }
        let audience = if want.audience.is_empty() {
            DEFAULT_AUDIENCE.to_string()
        } else {
            want.audience.clone()
        };
        let claims = WorkloadClaims {
            aud: Value::String(audience),
            iat: Some(now),
            nbf: Some(now),
            exp: None,
            jti: uuid::Uuid::new_v4().to_string(),
            sub: format!(
                "{}:{}:{}:{}:{}:{}",
                alloc.job.region,
                alloc.namespace,
                alloc.job_id,
                alloc.task_group,
                req.task,
                want.name
            ),
            nomad_namespace: alloc.namespace.to_string(),
            nomad_job_id: alloc.job_id.to_string(),
            nomad_allocation_id: alloc.id.to_string(),
            nomad_task: req.task.clone(),
        };
        identities.push(SignedIdentity {
            name: want.name.clone(),
            jwt: jwt::sign(keys, &claims),
        });
    }
    Ok(SignedIdentities { identities })
}

fn rules_of(policies: impl IntoIterator<Item = AclPolicy>) -> Vec<PolicyRules> {
    policies
        .into_iter()
        .map(|p| PolicyRules {
            name: p.name,
            rules: p.rules,
        })
        .collect()
}

/// The token and the policies behind `req.subject`, from the server's ACL tables.
pub fn resolve_acl(acl: &AclState, req: &ResolveAcl) -> ResolvedAcl {
    match &req.subject {
        AclSubject::Token { secret_id } => {
            let token = acl.token_by_secret(secret_id);
            let policies = match &token {
                Some(t) if !t.is_management() => rules_of(
                    t.policies
                        .iter()
                        .flatten()
                        .filter_map(|name| acl.policy(name)),
                ),
                _ => Vec::new(),
            };
            ResolvedAcl { token, policies }
        }
        AclSubject::Anonymous => ResolvedAcl {
            token: None,
            policies: rules_of(acl.policy(ANONYMOUS_POLICY)),
        },
        AclSubject::Workload {
            namespace,
            job_id,
            group,
            task,
        } => ResolvedAcl {
            token: None,
            policies: rules_of(acl.policies_for_workload(
                namespace,
                job_id,
                group.as_deref(),
                task,
            )),
        },
    }
}

/// The public keys of the server's signing key.
pub fn public_keys(keys: &LazyKeys) -> Result<PublicKeys, crate::acl::Error> {
    let k = keys.get()?.public_jwk();
    Ok(PublicKeys {
        keys: vec![PublicKey {
            kid: k.kid.clone(),
            n: k.n.clone(),
            e: k.e.clone(),
        }],
    })
}
