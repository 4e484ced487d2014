//! Workload identity JWTs: Nomad's claims, RS256 signing, and strict verification (signature,
//! `kid`, `alg`, `exp`, `nbf`).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{PublicVerifier, SigningKeys};
use crate::encoding::{base64url, base64url_decode};

/// A longer candidate token is refused before any decoding.
pub const MAX_JWT_BYTES: usize = 8 * 1024;
/// Clock leeway for `exp` and `nbf`, as go-jose's default (so a clock stepped back a little
/// does not invalidate freshly issued identities).
pub const LEEWAY_SECS: u64 = 60;
/// The default identity's audience.
pub const DEFAULT_AUDIENCE: &str = "nomadproject.io";

/// The claims of a workload identity, as Nomad writes them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkloadClaims {
    pub aud: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    pub jti: String,
    pub sub: String,
    pub nomad_namespace: String,
    pub nomad_job_id: String,
    pub nomad_allocation_id: String,
    pub nomad_task: String,
}

impl WorkloadClaims {
    /// The task group, taken from `sub` (`<region>:<ns>:<job>:<group>:<task>:<identity>`).
    pub fn group(&self) -> Option<&str> {
        let mut it = self.sub.rsplit(':');
        let _identity = it.next()?;
        let _task = it.next()?;
        it.next()
    }
}

/// Why a token is not a valid workload identity. Never carries the token itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JwtError::Malformed => "malformed token",
            JwtError::Algorithm => "unsupported signing algorithm",
            JwtError::UnknownKey => "unknown signing key",
            JwtError::Signature => "invalid signature",
            JwtError::Expired => "token is expired",
            JwtError::NotYetValid => "token is not valid yet",
        })
    }
}

impl std::error::Error for JwtError {}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Sign claims as a compact JWS with `{"alg":"RS256","kid":...,"typ":"JWT"}`.
pub fn sign(keys: &SigningKeys, claims: &WorkloadClaims) -> String {
    let header = serde_json::json!({"alg": "RS256", "kid": keys.kid(), "typ": "JWT"});
    let h = base64url(header.to_string().as_bytes());
    let p = base64url(&serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{p}");
    let sig = keys.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", base64url(&sig))
}

/// Verify a compact JWS and return its claims. `now` is seconds since the epoch.
pub fn verify(keys: &SigningKeys, token: &str, now: u64) -> Result<WorkloadClaims, JwtError> {
    verify_by(token, now, &|kid, msg, sig| {
        if kid != Some(keys.kid()) {
            return Err(JwtError::UnknownKey);
        }
        Ok(keys.verify(msg, sig))
    })
}

/// Verify a compact JWS against public keys only (a client-only agent's): the header's `kid`
/// picks the key; none matching is [`JwtError::UnknownKey`].
pub fn verify_public(
    keys: &[PublicVerifier],
    token: &str,
    now: u64,
) -> Result<WorkloadClaims, JwtError> {
    verify_by(token, now, &|kid, msg, sig| {
        let key = keys
            .iter()
            .find(|k| Some(k.kid()) == kid)
            .ok_or(JwtError::UnknownKey)?;
        Ok(key.verify(msg, sig))
    })
}

/// What checks a signature: `(kid, signing input, signature)` → valid, or why no key applies.
type CheckSignature<'a> = dyn Fn(Option<&str>, &[u8], &[u8]) -> Result<bool, JwtError> + 'a;

fn verify_by(token: &str, now: u64, check: &CheckSignature) -> Result<WorkloadClaims, JwtError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = base64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if header.alg != "RS256" {
        return Err(JwtError::Algorithm);
    }
    let sig = base64url_decode(s).ok_or(JwtError::Malformed)?;
    let signing_input_len = h.len() + 1 + p.len();
    if !check(
        header.kid.as_deref(),
        &token.as_bytes()[..signing_input_len],
        &sig,
    )? {
        return Err(JwtError::Signature);
    }
    let claims: WorkloadClaims = base64url_decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if let Some(exp) = claims.exp {
        if now >= exp.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = claims.nbf {
        if nbf > now.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::OsRng;
    use std::sync::OnceLock;

    fn keys() -> &'static SigningKeys {
        static K: OnceLock<SigningKeys> = OnceLock::new();
        K.get_or_init(|| SigningKeys::from_key(rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap()))
    }

    fn other_keys() -> &'static SigningKeys {
        static K: OnceLock<SigningKeys> = OnceLock::new();
        K.get_or_init(|| SigningKeys::from_key(rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap()))
    }

    fn claims(now: u64) -> WorkloadClaims {
        WorkloadClaims {
            aud: Value::String(DEFAULT_AUDIENCE.into()),
            iat: Some(now),
            nbf: Some(now),
            exp: None,
            jti: "j".into(),
            sub: "global:default:example:cache:redis:default".into(),
            nomad_namespace: "default".into(),
            nomad_job_id: "example".into(),
            nomad_allocation_id: "a".into(),
            nomad_task: "redis".into(),
        }
    }

    fn forge(header: &str, payload: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            base64url(header.as_bytes()),
            base64url(payload.as_bytes()),
            base64url(sig)
        )
    }

    #[test]
    fn signed_token_verifies_and_carries_claims() {
        let c = claims(1000);
        let t = sign(keys(), &c);
        assert!(t.starts_with("eyJ"));
        let back = verify(keys(), &t, 1000).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.group(), Some("cache"));
    }

    #[test]
    fn tampered_payload_or_signature_is_rejected() {
        let t = sign(keys(), &claims(1000));
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(1000);
        c.nomad_allocation_id = "other".into();
        let p2 = base64url(&serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], p2, parts[2]);
        assert_eq!(verify(keys(), &tampered, 1000), Err(JwtError::Signature));
        let mut sig = base64url_decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], base64url(&sig));
        assert_eq!(verify(keys(), &bad_sig, 1000), Err(JwtError::Signature));
        let truncated = &t[..t.len() - 5];
        assert!(verify(keys(), truncated, 1000).is_err());
        assert_eq!(verify(keys(), "garbage", 1000), Err(JwtError::Malformed));
        assert_eq!(verify(keys(), "a.b.c.d", 1000), Err(JwtError::Malformed));
        assert_eq!(
            verify(keys(), &"x".repeat(MAX_JWT_BYTES + 1), 1000),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn wrong_algorithms_are_rejected() {
        let payload = serde_json::to_string(&claims(1000)).unwrap();
        let kid = keys().kid();
        let none = forge(&format!(r#"{{"alg":"none","kid":"{kid}"}}"#), &payload, b"");
        assert_eq!(verify(keys(), &none, 1000), Err(JwtError::Algorithm));
        let hs = forge(
            &format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
            &payload,
            b"mac",
        );
        assert_eq!(verify(keys(), &hs, 1000), Err(JwtError::Algorithm));
        let no_kid = forge(r#"{"alg":"RS256"}"#, &payload, b"sig");
        assert_eq!(verify(keys(), &no_kid, 1000), Err(JwtError::UnknownKey));
    }

    #[test]
    fn expired_and_future_tokens_are_rejected() {
        let mut c = claims(1000);
        c.exp = Some(1500);
        let t = sign(keys(), &c);
        assert!(verify(keys(), &t, 1500 + LEEWAY_SECS - 1).is_ok());
        assert_eq!(
            verify(keys(), &t, 1500 + LEEWAY_SECS),
            Err(JwtError::Expired)
        );
        assert!(verify(keys(), &t, 1000 - LEEWAY_SECS).is_ok());
        assert_eq!(
            verify(keys(), &t, 999 - LEEWAY_SECS),
            Err(JwtError::NotYetValid)
        );
        // Claims without time bounds are valid at any time.
        let mut c = claims(1000);
        c.nbf = None;
        c.iat = None;
        assert!(verify(keys(), &sign(keys(), &c), 0).is_ok());
    }

    #[test]
    fn token_from_another_key_is_rejected() {
        let t = sign(other_keys(), &claims(1000));
        assert_eq!(verify(keys(), &t, 1000), Err(JwtError::UnknownKey));
        // Same kid but the other key's signature.
        let parts: Vec<&str> = t.split('.').collect();
        let h = base64url(
            format!(r#"{{"alg":"RS256","kid":"{}","typ":"JWT"}}"#, keys().kid()).as_bytes(),
        );
        let input = format!("{h}.{}", parts[1]);
        let sig = other_keys().sign(input.as_bytes());
        let forged = format!("{input}.{}", base64url(&sig));
        assert_eq!(verify(keys(), &forged, 1000), Err(JwtError::Signature));
    }

    #[test]
    fn jwks_publishes_the_public_key() {
        let k = keys().public_jwk();
        assert_eq!(k.e, "AQAB");
        assert_eq!(k.kid, keys().kid());
        // 2048 bits, base64url without padding.
        assert_eq!(k.n.len(), 342);
    }
}
