//! [`ClientAuthz`]: how a client-only agent (no ACL tables, no signing key) learns who its
//! callers are, through the `ServerLink`. A token's secret resolves to the token and its
//! policies' rules, the anonymous policy and a workload's attached policies likewise; each
//! answer (found or not) is cached for `acl.token_ttl` / `acl.policy_ttl` (Nomad's
//! `client/acl.go`), in bounded maps. Workload identity JWTs are verified here with the
//! server's public keys, fetched once and again only when a token names an unknown `kid` (at
//! most every [`KEYS_REFRESH_INTERVAL`]).
//!
//! When no server answers, an answer still within its TTL is used; past it the caller is
//! refused with the link's error (never allowed on a failure).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::acl::capabilities::Acl;
use crate::acl::jwt::{self, JwtError, WorkloadClaims};
use crate::acl::keys::{PublicJwk, PublicVerifier};
use crate::acl::tokens::AclToken;
use crate::client::link::{
    AclSubject, LinkError, PolicyRules, PublicKeysRequest, ResolveAcl, ServerLink,
};

/// Most tokens (found or not) one client keeps resolved; the oldest answer goes first.
pub const MAX_CACHED_TOKENS: usize = 1024;

/// Most workloads (namespace, job, group, task) whose attached policies are kept.
pub const MAX_CACHED_WORKLOADS: usize = 1024;

/// A token naming an unknown signing key refetches the server's public keys at most this
/// often (forged `kid`s cannot make every request a call to the server).
pub const KEYS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A token expiring within this long counts as expired on a client (Nomad's leeway for clocks
/// of client and server that differ a little).
pub const TOKEN_EXPIRY_LEEWAY: Duration = Duration::from_secs(2);

/// Most public keys kept from one answer of the server.
pub const MAX_PUBLIC_KEYS: usize = 16;

/// One answer and when it was fetched.
struct Cached<T> {
    at: Instant,
    value: T,
}

/// A map of answers that holds at most `max` entries: a full map drops an expired entry, or
/// else the oldest, before it takes a new one.
struct Bounded<K, T> {
    max: usize,
    entries: HashMap<K, Cached<T>>,
}

impl<K: Eq + Hash + Clone, T: Clone> Bounded<K, T> {
    fn new(max: usize) -> Self {
        Bounded {
            max,
            entries: HashMap::new(),
        }
    }

    /// The answer for `key` if it is younger than `ttl`.
    fn fresh(&self, key: &K, ttl: Duration) -> Option<T> {
        self.entries
            .get(key)
            .filter(|c| c.at.elapsed() <= ttl)
            .map(|c| c.value.clone())
    }

    fn insert(&mut self, key: K, value: T) {
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, c)| c.at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(
            key,
            Cached {
                at: Instant::now(),
                value,
            },
        );
    }
}

/// A resolved token and its merged rules.
#[derive(Clone)]
pub struct ResolvedToken {
    pub token: AclToken,
    pub acl: Arc<Acl>,
}

impl ResolvedToken {
    /// Expired, or expiring within [`TOKEN_EXPIRY_LEEWAY`].
    pub fn is_expired(&self) -> bool {
        let leeway = i64::try_from(TOKEN_EXPIRY_LEEWAY.as_nanos()).unwrap_or(i64::MAX);
        self.token
            .is_expired_at(crate::time::unix_now_nanos().saturating_add(leeway))
    }
}

/// The workload a set of attached policies belongs to.
#[derive(Clone, PartialEq, Eq, Hash)]
struct WorkloadKey {
    namespace: String,
    job_id: String,
    group: Option<String>,
    task: String,
}

/// The server's public keys as last fetched.
#[derive(Default)]
struct KeySet {
    verifiers: Arc<Vec<PublicVerifier>>,
    fetched: Option<Instant>,
}

/// Why a workload identity was not accepted.
#[derive(Debug)]
pub enum VerifyError {
    /// The token is not a valid identity signed by the server.
    Invalid(JwtError),
    /// The server's keys could not be fetched (and none are known).
    Unavailable(LinkError),
}

/// The client-only agent's view of its callers (see the module text).
pub struct ClientAuthz {
    link: Arc<dyn ServerLink>,
    node_id: String,
    token_ttl: Duration,
    policy_ttl: Duration,
    /// By secret; `None` records "no such token" (Nomad caches negative answers too).
    tokens: Mutex<Bounded<String, Option<ResolvedToken>>>,
    workloads: Mutex<Bounded<WorkloadKey, Arc<Acl>>>,
    anonymous: Mutex<Option<Cached<Arc<Acl>>>>,
    keys: Mutex<KeySet>,
}

/// The merged rules of policies as the server sent them; rules that do not parse here are
/// left out (the server parsed them when they were written, so this is a version skew).
fn acl_of(policies: &[PolicyRules]) -> Acl {
    let parsed: Vec<crate::acl::policy::Policy> = policies
        .iter()
        .filter_map(|p| match crate::acl::policy::parse(&p.rules) {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                log::warn!(
                    "ACL policy {:?} from the server does not parse: {e}",
                    p.name
                );
                None
            }
        })
        .collect();
    Acl::from_policies(parsed.iter())
}

impl ClientAuthz {
    pub fn new(
        link: Arc<dyn ServerLink>,
        node_id: &str,
        token_ttl: Duration,
        policy_ttl: Duration,
    ) -> ClientAuthz {
        ClientAuthz {
            link,
            node_id: node_id.to_string(),
            token_ttl,
            policy_ttl,
            tokens: Mutex::new(Bounded::new(MAX_CACHED_TOKENS)),
            workloads: Mutex::new(Bounded::new(MAX_CACHED_WORKLOADS)),
            anonymous: Mutex::new(None),
            keys: Mutex::new(KeySet::default()),
        }
    }

    /// A token answer carries its policies too, so it is trusted for the shorter of the two.
    fn token_entry_ttl(&self) -> Duration {
        self.token_ttl.min(self.policy_ttl)
    }

    /// The token whose secret is `secret` and its rules; `Ok(None)` when the server knows no
    /// such token. A server that cannot be asked, with no answer within the TTL, is `Err`.
    pub fn token(&self, secret: &str) -> Result<Option<ResolvedToken>, LinkError> {
        let key = secret.to_string();
        if let Some(hit) = self.tokens.lock().fresh(&key, self.token_entry_ttl()) {
            return Ok(hit);
        }
        let reply = self.link.resolve_acl(&ResolveAcl {
            node_id: self.node_id.clone(),
            subject: AclSubject::Token {
                secret_id: key.clone(),
            },
        })?;
        let resolved = reply.token.and_then(|token| {
            // The server found it by this secret; a reply for another one is not trusted.
            if !crate::encoding::constant_time_eq(token.secret_id.as_bytes(), secret.as_bytes()) {
                return None;
            }
            let acl = if token.is_management() {
                Acl::management()
            } else {
                acl_of(&reply.policies)
            };
            Some(ResolvedToken {
                token,
                acl: Arc::new(acl),
            })
        });
        self.tokens.lock().insert(key, resolved.clone());
        Ok(resolved)
    }

    /// The rules of the `anonymous` policy (none when it does not exist).
    pub fn anonymous(&self) -> Result<Arc<Acl>, LinkError> {
        if let Some(c) = self.anonymous.lock().as_ref() {
            if c.at.elapsed() <= self.policy_ttl {
                return Ok(c.value.clone());
            }
        }
        let reply = self.link.resolve_acl(&ResolveAcl {
            node_id: self.node_id.clone(),
            subject: AclSubject::Anonymous,
        })?;
        let acl = Arc::new(acl_of(&reply.policies));
        *self.anonymous.lock() = Some(Cached {
            at: Instant::now(),
            value: acl.clone(),
        });
        Ok(acl)
    }

    /// The rules of the policies attached to a job, group or task.
    pub fn workload_acl(&self, claims: &WorkloadClaims) -> Result<Arc<Acl>, LinkError> {
        let key = WorkloadKey {
            namespace: claims.nomad_namespace.clone(),
            job_id: claims.nomad_job_id.clone(),
            group: claims.group().map(str::to_string),
            task: claims.nomad_task.clone(),
        };
        if let Some(hit) = self.workloads.lock().fresh(&key, self.policy_ttl) {
            return Ok(hit);
        }
        let reply = self.link.resolve_acl(&ResolveAcl {
            node_id: self.node_id.clone(),
            subject: AclSubject::Workload {
                namespace: key.namespace.clone(),
                job_id: key.job_id.clone(),
                group: key.group.clone(),
                task: key.task.clone(),
            },
        })?;
        let acl = Arc::new(acl_of(&reply.policies));
        self.workloads.lock().insert(key, acl.clone());
        Ok(acl)
    }

    /// Verify a workload identity's signature and time window with the server's public keys
    /// (fetched when none are known or the token names a key not known yet).
    pub fn verify_identity(&self, token: &str) -> Result<WorkloadClaims, VerifyError> {
        let now = crate::time::unix_now_secs();
        let known = self.keys.lock().verifiers.clone();
        match jwt::verify_public(&known, token, now) {
            Err(JwtError::UnknownKey) => {}
            other => return other.map_err(VerifyError::Invalid),
        }
        // A kid not known yet: the server may have a key this client has not seen.
        let refreshed = self.refresh_keys();
        let keys = match refreshed {
            Ok(Some(keys)) => keys,
            Ok(None) => return Err(VerifyError::Invalid(JwtError::UnknownKey)),
            Err(e) if known.is_empty() => return Err(VerifyError::Unavailable(e)),
            Err(_) => return Err(VerifyError::Invalid(JwtError::UnknownKey)),
        };
        jwt::verify_public(&keys, token, now).map_err(VerifyError::Invalid)
    }

    /// Fetch the server's public keys, unless they were fetched less than
    /// [`KEYS_REFRESH_INTERVAL`] ago (`Ok(None)`).
    fn refresh_keys(&self) -> Result<Option<Arc<Vec<PublicVerifier>>>, LinkError> {
        {
            let mut k = self.keys.lock();
            if k.fetched
                .is_some_and(|at| at.elapsed() < KEYS_REFRESH_INTERVAL)
            {
                return Ok(None);
            }
            // Claimed before the call (the lock is not held across it): concurrent unknown
            // kids make one fetch, not one each.
            k.fetched = Some(Instant::now());
        }
        let reply = self.link.public_keys(&PublicKeysRequest {
            node_id: self.node_id.clone(),
        });
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                // A failed fetch may be retried at once by the next request.
                self.keys.lock().fetched = None;
                return Err(e);
            }
        };
        let verifiers: Vec<PublicVerifier> = reply
            .keys
            .iter()
            .take(MAX_PUBLIC_KEYS)
            .filter_map(|k| {
                PublicVerifier::from_jwk(&PublicJwk {
                    kid: k.kid.clone(),
                    n: k.n.clone(),
                    e: k.e.clone(),
                })
            })
            .collect();
        let verifiers = Arc::new(verifiers);
        self.keys.lock().verifiers = verifiers.clone();
        Ok(Some(verifiers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::link::{
        AllocUpdates, Heartbeat, HeartbeatReply, MetaReply, NodeMeta, NodeRegistration, PublicKey,
        PublicKeys, PullAllocs, PulledAllocs, ResolvedAcl, UpdatedAllocs,
    };
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A server that knows one token and counts the calls; `down` makes every call fail.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
        key_calls: AtomicUsize,
        down: AtomicBool,
        secret: String,
        keys: Vec<PublicKey>,
    }

    impl ServerLink for Fake {
        fn register_node(&self, _: &NodeRegistration) -> Result<HeartbeatReply, LinkError> {
            Err(LinkError::Closed)
        }
        fn heartbeat(&self, _: &Heartbeat) -> Result<HeartbeatReply, LinkError> {
            Err(LinkError::Closed)
        }
        fn pull_allocs(&self, _: &PullAllocs) -> Result<PulledAllocs, LinkError> {
            Err(LinkError::Closed)
        }
        fn push_alloc_updates(&self, _: &AllocUpdates) -> Result<UpdatedAllocs, LinkError> {
            Err(LinkError::Closed)
        }
        fn push_meta(&self, _: &NodeMeta) -> Result<MetaReply, LinkError> {
            Err(LinkError::Closed)
        }
        fn resolve_acl(&self, req: &ResolveAcl) -> Result<ResolvedAcl, LinkError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(LinkError::Unreachable("down".into()));
            }
            let token = match &req.subject {
                AclSubject::Token { secret_id } if *secret_id == self.secret => {
                    let mut t = AclToken::new(
                        "t".into(),
                        "client".into(),
                        Some(vec!["p".into()]),
                        false,
                        1,
                    );
                    t.secret_id = self.secret.clone();
                    Some(t)
                }
                _ => None,
            };
            Ok(ResolvedAcl {
                token,
                policies: vec![PolicyRules {
                    name: "p".into(),
                    rules: "node { policy = \"read\" }".into(),
                }],
            })
        }
        fn public_keys(&self, _: &PublicKeysRequest) -> Result<PublicKeys, LinkError> {
            self.key_calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(LinkError::Unreachable("down".into()));
            }
            Ok(PublicKeys {
                keys: self.keys.clone(),
            })
        }
    }

    const SECRET: &str = "6f1c1d6e-5f5e-4f1a-9a7e-2d1b0c0e0a01";

    fn authz(fake: Arc<Fake>, ttl: Duration) -> ClientAuthz {
        ClientAuthz::new(fake, "n", ttl, ttl)
    }

    #[test]
    fn answers_are_cached_for_the_ttl_and_refused_after_it_when_no_server_answers() {
        let fake = Arc::new(Fake {
            secret: SECRET.into(),
            ..Fake::default()
        });
        let a = authz(fake.clone(), Duration::from_millis(300));
        let t = a.token(SECRET).unwrap().expect("known token");
        assert!(t.acl.allow_node(false) && !t.acl.allow_node(true));
        assert!(a.token(SECRET).unwrap().is_some());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "second answer cached");
        // Unknown secrets are cached as unknown too.
        let other = "00000000-0000-4000-8000-000000000000";
        assert!(a.token(other).unwrap().is_none());
        assert!(a.token(other).unwrap().is_none());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        // The server goes away: within the TTL the cached answer stands ...
        fake.down.store(true, Ordering::SeqCst);
        assert!(a.token(SECRET).unwrap().is_some());
        // ... past it the caller is refused with the link's error, never allowed.
        let start = Instant::now();
        while start.elapsed() <= Duration::from_millis(300) {
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert!(matches!(a.token(SECRET), Err(LinkError::Unreachable(_))));
        assert!(matches!(a.anonymous(), Err(LinkError::Unreachable(_))));
    }

    #[test]
    fn the_token_cache_is_bounded() {
        let fake = Arc::new(Fake::default());
        let a = authz(fake.clone(), Duration::from_secs(60));
        for i in 0..MAX_CACHED_TOKENS + 10 {
            let s = format!("00000000-0000-4000-8000-{i:012}");
            assert!(a.token(&s).unwrap().is_none());
        }
        assert_eq!(a.tokens.lock().entries.len(), MAX_CACHED_TOKENS);
    }

    #[test]
    fn identities_verify_with_fetched_public_keys_and_unknown_kids_refetch_rate_limited() {
        use crate::encoding::OsRng;
        let signing = crate::acl::keys::SigningKeys::from_key(
            rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap(),
        );
        let other = crate::acl::keys::SigningKeys::from_key(
            rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap(),
        );
        let jwk = signing.public_jwk();
        let fake = Arc::new(Fake {
            keys: vec![PublicKey {
                kid: jwk.kid.clone(),
                n: jwk.n.clone(),
                e: jwk.e.clone(),
            }],
            ..Fake::default()
        });
        let a = authz(fake.clone(), Duration::from_secs(60));
        let now = crate::time::unix_now_secs();
        let claims = WorkloadClaims {
            aud: serde_json::Value::String("nomadproject.io".into()),
            iat: Some(now),
            nbf: Some(now),
            exp: None,
            jti: "j".into(),
            sub: "global:default:j:g:t:default".into(),
            nomad_namespace: "default".into(),
            nomad_job_id: "j".into(),
            nomad_allocation_id: "a".into(),
            nomad_task: "t".into(),
        };
        let good = jwt::sign(&signing, &claims);
        assert_eq!(a.verify_identity(&good).unwrap(), claims);
        assert_eq!(a.verify_identity(&good).unwrap(), claims);
        assert_eq!(
            fake.key_calls.load(Ordering::SeqCst),
            1,
            "keys fetched once"
        );
        // Another key's token: refused; the refetch it causes is rate limited.
        let forged = jwt::sign(&other, &claims);
        for _ in 0..5 {
            assert!(matches!(
                a.verify_identity(&forged),
                Err(VerifyError::Invalid(JwtError::UnknownKey))
            ));
        }
        assert!(fake.key_calls.load(Ordering::SeqCst) <= 2);
        // A tampered token with the right kid fails on its signature.
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[2] = parts[2].chars().rev().collect();
        assert!(matches!(
            a.verify_identity(&parts.join(".")),
            Err(VerifyError::Invalid(_))
        ));
    }
}
