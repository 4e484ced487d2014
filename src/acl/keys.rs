//! The workload identity signing key: an RSA 2048 key made at first start, kept in the data dir
//! (PKCS#8 PEM, mode 0600); its public part ([`PublicJwk`]) is what `api` publishes as the JWKS
//! document.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use crate::encoding::{base64url, OsRng};
use crate::store::{self, StoreError};

/// Size of the RSA modulus in bits.
pub const RSA_BITS: usize = 2048;
/// Seconds a JWKS document may be cached by its readers.
pub const JWKS_MAX_AGE_SECS: u64 = 3600;
/// The key file under `<data_dir>/server`.
pub const KEY_FILE: &str = "workload-identity-key.pem";

/// The public part of the signing key as a JWK names it (RSA, RS256, for signatures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicJwk {
    /// The key ID (`kid`).
    pub kid: String,
    /// The modulus, base64url without padding (`n`).
    pub n: String,
    /// The public exponent, base64url without padding (`e`).
    pub e: String,
}

/// The signing keys, loaded or made on first use. Generating an RSA key takes a noticeable
/// time, so it is kept off the start-up path: a background thread warms the cell right after
/// start, and the first user that gets there before it waits for it.
pub struct LazyKeys {
    data_dir: PathBuf,
    cell: std::sync::OnceLock<Result<SigningKeys, Arc<StoreError>>>,
}

impl std::fmt::Debug for LazyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyKeys").finish_non_exhaustive()
    }
}

impl LazyKeys {
    pub fn new(data_dir: &Path) -> LazyKeys {
        LazyKeys {
            data_dir: data_dir.to_path_buf(),
            cell: std::sync::OnceLock::new(),
        }
    }

    /// The keys, loading or generating them (once) if needed.
    pub fn get(&self) -> Result<&SigningKeys, super::Error> {
        self.cell
            .get_or_init(|| {
                SigningKeys::load_or_create(&self.data_dir).map_err(|e| {
                    log::error!("workload identity signing key unavailable: {e}");
                    Arc::new(e)
                })
            })
            .as_ref()
            .map_err(|e| super::Error::Keys(e.clone()))
    }
}

pub struct SigningKeys {
    kid: String,
    signing: SigningKey<Sha256>,
    verifying: VerifyingKey<Sha256>,
    public: PublicJwk,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn key_error(path: &Path, op: &'static str, cause: impl Into<store::Cause>) -> StoreError {
    StoreError::new(path, op, cause)
}

impl SigningKeys {
    /// Load the key from `<data_dir>/server`, or make one and store it durably.
    pub fn load_or_create(data_dir: &Path) -> Result<SigningKeys, StoreError> {
        let path: PathBuf = data_dir.join("server").join(KEY_FILE);
        let key = match fs::read_to_string(&path) {
            Ok(pem) => {
                RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| key_error(&path, "decode", e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = RsaPrivateKey::new(&mut OsRng, RSA_BITS)
                    .map_err(|e| key_error(&path, "generate", e))?;
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| key_error(&path, "encode", e))?;
                store::write_bytes(&path, pem.as_bytes())?;
                log::info!("created the workload identity signing key");
                key
            }
            Err(e) => return Err(StoreError::io(&path, "read", e)),
        };
        Ok(SigningKeys::from_key(key))
    }

    /// Wrap a key (tests make their own).
    pub fn from_key(key: RsaPrivateKey) -> SigningKeys {
        let public = key.to_public_key();
        let n = public.n().to_bytes_be();
        let e = public.e().to_bytes_be();
        let mut h = Sha256::new();
        h.update(&n);
        h.update(&e);
        let d = h.finalize();
        let kid = uuid::Builder::from_random_bytes(d[..16].try_into().unwrap_or([0; 16]))
            .into_uuid()
            .to_string();
        let jwk = PublicJwk {
            kid: kid.clone(),
            n: base64url(&n),
            e: base64url(&e),
        };
        SigningKeys {
            kid,
            verifying: VerifyingKey::new(public),
            signing: SigningKey::new(key),
            public: jwk,
        }
    }

    /// The key ID (`kid`) put in every JWT header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as served (by `api`) at `/.well-known/jwks.json`.
    pub fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.signing.sign(msg).to_vec()
    }

    /// Check an RS256 signature.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        check_signature(&self.verifying, msg, sig)
    }
}

fn check_signature(key: &VerifyingKey<Sha256>, msg: &[u8], sig: &[u8]) -> bool {
    match Signature::try_from(sig) {
        Ok(s) => key.verify(msg, &s).is_ok(),
        Err(_) => false,
    }
}

/// Largest RSA modulus accepted from a public JWK, in bytes (4096 bits).
pub const MAX_PUBLIC_MODULUS_BYTES: usize = 512;

/// A public key only (what a client-only agent holds): checks signatures, never makes them.
pub struct PublicVerifier {
    kid: String,
    verifying: VerifyingKey<Sha256>,
}

impl std::fmt::Debug for PublicVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicVerifier")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PublicVerifier {
    /// The key a JWK describes; `None` when it is not a usable RSA public key.
    pub fn from_jwk(jwk: &PublicJwk) -> Option<PublicVerifier> {
        let n = crate::encoding::base64url_decode(&jwk.n)?;
        let e = crate::encoding::base64url_decode(&jwk.e)?;
        if n.len() > MAX_PUBLIC_MODULUS_BYTES || e.len() > 8 {
            return None;
        }
        let key = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&n),
            rsa::BigUint::from_bytes_be(&e),
        )
        .ok()?;
        Some(PublicVerifier {
            kid: jwk.kid.clone(),
            verifying: VerifyingKey::new(key),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Check an RS256 signature.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        check_signature(&self.verifying, msg, sig)
    }
}
