//! Who is asking: the token from `X-Nomad-Token` or `Authorization: Bearer`, resolved to an
//! identity (ACL token, workload identity, anonymous), and the capability checks every
//! endpoint makes.
//!
//! On a task's Unix socket every request needs a credential, even with ACLs disabled: none is
//! 401 `Unauthorized`; one that is neither a known ACL token nor a valid workload identity of a
//! live allocation is 403 `Forbidden`. Tokens never reach a log line or an error body.
//!
//! A client-only agent keeps no ACL tables and no signing key: it resolves tokens, the
//! anonymous policy and a workload's policies through `client::authz` (the link, cached for
//! `acl.token_ttl`/`policy_ttl`), verifies identities with the server's public keys, and takes
//! alloc facts from the client's own view. A server it cannot ask, with nothing cached within
//! the TTL, refuses the request (500 with the link's error), never allows it.

use std::sync::Arc;

use crate::acl::capabilities::Acl;
use crate::acl::jwt::{self, WorkloadClaims};
use crate::acl::tokens::{is_uuid, AclToken};
use crate::api::Agent;
use crate::client::authz::VerifyError;
use crate::client::link::LinkError;
use crate::http::{Origin, Request, Status};

use super::ApiError;

/// The caller of one request.
#[derive(Clone, Debug)]
pub enum Identity {
    /// ACLs are disabled: everything is allowed (on a task socket, only after a credential
    /// was verified).
    AclsDisabled,
    /// No token, ACLs enabled: the `anonymous` policy (TCP only).
    Anonymous { acl: Arc<Acl> },
    /// An ACL token (management or client).
    Token { token: Box<AclToken>, acl: Arc<Acl> },
    /// A task's workload identity: the policies attached to its job, group or task.
    Workload {
        claims: Box<WorkloadClaims>,
        acl: Arc<Acl>,
    },
}

/// Nomad's token extraction (ref §1.3): `X-Nomad-Token` wins; else `Authorization: Bearer <t>`
/// (scheme case-insensitive, first word of the value). Empty means anonymous.
pub fn token_from_request(req: &Request) -> Option<String> {
    if let Some(t) = req.header("X-Nomad-Token") {
        let t = t.trim();
        if !t.is_empty() {
            return Some(t.to_string());
        }
    }
    let auth = req.header("Authorization")?;
    let (scheme, rest) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    rest.split_whitespace().next().map(str::to_string)
}

/// Why a credential was refused (for debug logs; never contains the credential).
enum Rejected {
    UnknownToken,
    Expired,
    Jwt(jwt::JwtError),
    AllocGone,
    AllocMismatch,
    /// No server could be asked and nothing was cached within the TTL (client-only agent).
    Unavailable(LinkError),
}

/// Nomad's answer when a client cannot reach a server to resolve a caller: a 500 with the RPC
/// error (`no servers` when the client knows none).
fn unavailable(e: &LinkError) -> ApiError {
    let text = match e {
        LinkError::Unreachable(why) if why == "no servers" => "no servers".to_string(),
        other => format!("rpc error: {other}"),
    };
    ApiError::internal(text)
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::UnknownToken => f.write_str("unknown ACL token"),
            Rejected::Expired => f.write_str("expired ACL token"),
            Rejected::Jwt(e) => write!(f, "invalid workload identity: {e}"),
            Rejected::AllocGone => {
                f.write_str("workload identity of an unknown or terminal allocation")
            }
            Rejected::AllocMismatch => {
                f.write_str("workload identity does not match its allocation")
            }
            Rejected::Unavailable(e) => write!(f, "cannot resolve the caller: {e}"),
        }
    }
}

/// Resolve the caller. Requests on a task's Unix socket always need a token.
pub fn authenticate(agent: &Agent, req: &Request) -> Result<Identity, ApiError> {
    authenticate_token(agent, token_from_request(req), &req.origin)
}

/// Resolve a caller from its credential as it arrived on `origin` (also how a long stream
/// checks again, after an ACL change, that its caller still exists).
pub fn authenticate_token(
    agent: &Agent,
    token: Option<String>,
    origin: &Origin,
) -> Result<Identity, ApiError> {
    match origin {
        Origin::Unix { tag } => {
            let Some(t) = token else {
                return Err(ApiError::new(Status::UNAUTHORIZED, "Unauthorized"));
            };
            resolve(agent, &t).map_err(|why| {
                log::debug!("task API request on {tag} refused: {why}");
                match why {
                    Rejected::Unavailable(e) => unavailable(&e),
                    _ => ApiError::new(Status::FORBIDDEN, "Forbidden"),
                }
            })
        }
        Origin::Tcp { .. } => {
            if !agent.acl.enabled {
                return Ok(Identity::AclsDisabled);
            }
            let Some(t) = token else {
                let acl = if agent.config.client_only() {
                    agent
                        .client
                        .authz()
                        .anonymous()
                        .map_err(|e| unavailable(&e))?
                } else {
                    Arc::new(agent.acl.anonymous_acl())
                };
                return Ok(Identity::Anonymous { acl });
            };
            resolve(agent, &t).map_err(|why| {
                log::debug!("request refused: {why}");
                match why {
                    Rejected::UnknownToken => {
                        ApiError::new(Status::FORBIDDEN, "ACL token not found")
                    }
                    Rejected::Expired => ApiError::new(Status::FORBIDDEN, "ACL token expired"),
                    Rejected::Unavailable(e) => unavailable(&e),
                    _ => ApiError::permission_denied(),
                }
            })
        }
    }
}

/// An ACL secret (UUID-shaped) or else a workload identity JWT.
fn resolve(agent: &Agent, secret: &str) -> Result<Identity, Rejected> {
    if agent.config.client_only() {
        return resolve_through_server(agent, secret);
    }
    if is_uuid(secret) {
        let token = agent
            .acl
            .token_by_secret(secret)
            .ok_or(Rejected::UnknownToken)?;
        if token.is_expired() {
            return Err(Rejected::Expired);
        }
        if !agent.acl.enabled {
            return Ok(Identity::AclsDisabled);
        }
        let acl = if token.is_management() {
            Acl::management()
        } else {
            agent
                .acl
                .acl_for_policies(token.policies.as_deref().unwrap_or(&[]))
        };
        return Ok(Identity::Token {
            token: Box::new(token),
            acl: Arc::new(acl),
        });
    }
    let claims = verify_workload_identity(agent, secret)?;
    if !agent.acl.enabled {
        return Ok(Identity::AclsDisabled);
    }
    let acl = agent.acl.acl_for_workload(
        &claims.nomad_namespace,
        &claims.nomad_job_id,
        claims.group(),
        &claims.nomad_task,
    );
    Ok(Identity::Workload {
        claims: Box::new(claims),
        acl: Arc::new(acl),
    })
}

/// A valid signature from our key, in its time window, for an allocation that is known and
/// not terminal, whose job and namespace match the claims.
fn verify_workload_identity(agent: &Agent, token: &str) -> Result<WorkloadClaims, Rejected> {
    let keys = agent
        .acl
        .keys
        .get()
        .map_err(|_| Rejected::Jwt(jwt::JwtError::UnknownKey))?;
    let claims = jwt::verify(keys, token, crate::time::unix_now_secs()).map_err(Rejected::Jwt)?;
    let crate::state::jobs::AllocFacts {
        job_id: job,
        namespace,
        terminal,
    } = agent
        .workloads
        .alloc_status(&claims.nomad_allocation_id)
        .ok_or(Rejected::AllocGone)?;
    if terminal {
        return Err(Rejected::AllocGone);
    }
    if job != claims.nomad_job_id || namespace != claims.nomad_namespace {
        return Err(Rejected::AllocMismatch);
    }
    Ok(claims)
}

/// [`resolve`] on a client-only agent: the same rules, with the token, the policies and the
/// public keys from the server (cached), and alloc facts from this client's allocs.
fn resolve_through_server(agent: &Agent, secret: &str) -> Result<Identity, Rejected> {
    let authz = agent.client.authz();
    if is_uuid(secret) {
        let resolved = authz
            .token(secret)
            .map_err(Rejected::Unavailable)?
            .ok_or(Rejected::UnknownToken)?;
        if resolved.is_expired() {
            return Err(Rejected::Expired);
        }
        if !agent.acl.enabled {
            return Ok(Identity::AclsDisabled);
        }
        return Ok(Identity::Token {
            token: Box::new(resolved.token),
            acl: resolved.acl,
        });
    }
    let claims = authz.verify_identity(secret).map_err(|e| match e {
        VerifyError::Invalid(e) => Rejected::Jwt(e),
        VerifyError::Unavailable(e) => Rejected::Unavailable(e),
    })?;
    let alloc = agent
        .client
        .alloc(&claims.nomad_allocation_id)
        .ok_or(Rejected::AllocGone)?;
    if !alloc.is_live() {
        return Err(Rejected::AllocGone);
    }
    if alloc.job_id != claims.nomad_job_id || alloc.namespace != claims.nomad_namespace {
        return Err(Rejected::AllocMismatch);
    }
    if !agent.acl.enabled {
        return Ok(Identity::AclsDisabled);
    }
    let acl = authz.workload_acl(&claims).map_err(Rejected::Unavailable)?;
    Ok(Identity::Workload {
        claims: Box::new(claims),
        acl,
    })
}

fn check(allowed: bool) -> Result<(), ApiError> {
    if allowed {
        Ok(())
    } else {
        Err(ApiError::permission_denied())
    }
}

impl Identity {
    /// The merged rules, or `None` when ACLs are disabled.
    fn acl(&self) -> Option<&Acl> {
        match self {
            Identity::AclsDisabled => None,
            Identity::Anonymous { acl }
            | Identity::Token { acl, .. }
            | Identity::Workload { acl, .. } => Some(acl),
        }
    }

    /// `agent` read (`write == false`) or write.
    pub fn allow_agent(&self, write: bool) -> Result<(), ApiError> {
        check(self.acl().is_none_or(|a| a.allow_agent(write)))
    }
    /// `operator` read or write.
    pub fn allow_operator(&self, write: bool) -> Result<(), ApiError> {
        check(self.acl().is_none_or(|a| a.allow_operator(write)))
    }
    /// `node` read or write.
    pub fn allow_node(&self, write: bool) -> Result<(), ApiError> {
        check(self.acl().is_none_or(|a| a.allow_node(write)))
    }
    /// A namespace capability such as `read-job`, `submit-job`, `read-fs`.
    pub fn allow_namespace(&self, namespace: &str, capability: &str) -> Result<(), ApiError> {
        check(
            self.acl()
                .is_none_or(|a| a.allow_namespace(namespace, capability)),
        )
    }
    /// Management (or ACLs disabled).
    pub fn allow_management(&self) -> Result<(), ApiError> {
        check(self.acl().is_none_or(|a| a.is_management()))
    }

    /// The workload identity behind this request, if any.
    pub fn workload(&self) -> Option<&WorkloadClaims> {
        match self {
            Identity::Workload { claims, .. } => Some(claims),
            _ => None,
        }
    }

    /// The ACL token behind this request, if any.
    pub fn token(&self) -> Option<&AclToken> {
        match self {
            Identity::Token { token, .. } => Some(token),
            _ => None,
        }
    }
}
