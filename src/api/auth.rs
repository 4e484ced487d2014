//! Who is asking: the token from `X-Nomad-Token` or `Authorization: Bearer`, resolved to an
//! identity, and the capability checks every endpoint makes.

use crate::agent::Agent;
use crate::http::{Origin, Request};

use super::ApiError;

/// The caller of one request.
#[derive(Clone, Debug)]
pub enum Identity {
    /// ACLs are disabled (TCP API): everything is allowed.
    AclsDisabled,
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

/// Resolve the caller. Requests on a task's Unix socket always need a token.
pub fn authenticate(_agent: &Agent, req: &Request) -> Result<Identity, ApiError> {
    let token = token_from_request(req);
    if let Origin::Unix { .. } = req.origin {
        if token.is_none() {
            return Err(ApiError::new(401, "Unauthorized"));
        }
    }
    Ok(Identity::AclsDisabled)
}

impl Identity {
    /// `agent` read (`write == false`) or write.
    pub fn allow_agent(&self, _write: bool) -> Result<(), ApiError> {
        Ok(())
    }
    /// `node` read or write.
    pub fn allow_node(&self, _write: bool) -> Result<(), ApiError> {
        Ok(())
    }
    /// A namespace capability such as `read-job`, `submit-job`, `read-fs`.
    pub fn allow_namespace(&self, _namespace: &str, _capability: &str) -> Result<(), ApiError> {
        Ok(())
    }
    /// Management (or ACLs disabled).
    pub fn allow_management(&self) -> Result<(), ApiError> {
        Ok(())
    }
}
