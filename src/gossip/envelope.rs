//! The gossip datagram envelope: a magic byte, the message kind and its payload, sealed whole
//! with AES-GCM (a fresh random nonce per datagram) when `server.encrypt` gives a key.
//!
//! ```text
//! plain:  [MAGIC_PLAIN] [kind] [payload ...]
//! sealed: [MAGIC_SEALED] [nonce: 12] [AES-GCM( [kind] [payload ...] ), tag: 16]
//! ```
//!
//! An agent with a key opens only sealed datagrams that authenticate under it; an agent
//! without one opens only plain ones. Anything else is refused (and counted by the caller).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use rand_core::RngCore;

/// First byte of a plain datagram.
const MAGIC_PLAIN: u8 = 0x6e;
/// First byte of a sealed datagram (also its associated data).
const MAGIC_SEALED: u8 = 0x6f;
/// AES-GCM nonce length.
const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Bytes an envelope adds to a payload at most (sealed: magic, nonce, kind, tag).
pub const OVERHEAD: usize = 1 + NONCE_LEN + 1 + TAG_LEN;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A foca (SWIM) packet.
    Foca = 1,
    /// "I am leaving": the sender's identity, sent to every live member before it goes.
    Leave = 2,
    /// `force-leave` of a failed member, passed on to every live member.
    ForceLeave = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Foca),
            2 => Some(Kind::Leave),
            3 => Some(Kind::ForceLeave),
            _ => None,
        }
    }
}

/// AES-GCM with the key size `server.encrypt` gave.
pub enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<AesGcm<Aes192, aes_gcm::aead::consts::U12>>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    /// A cipher for a 16, 24 or 32-byte key; `None` for any other length.
    pub fn new(key: &[u8]) -> Option<Cipher> {
        match key.len() {
            16 => Aes128Gcm::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes128(Box::new(c))),
            24 => AesGcm::<Aes192, aes_gcm::aead::consts::U12>::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes192(Box::new(c))),
            32 => Aes256Gcm::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes256(Box::new(c))),
            _ => None,
        }
    }

    fn seal(&self, nonce: &[u8; NONCE_LEN], msg: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::from_slice(nonce);
        let payload = Payload {
            msg,
            aad: &[MAGIC_SEALED],
        };
        match self {
            Cipher::Aes128(c) => c.encrypt(nonce, payload).ok(),
            Cipher::Aes192(c) => c.encrypt(nonce, payload).ok(),
            Cipher::Aes256(c) => c.encrypt(nonce, payload).ok(),
        }
    }

    fn open(&self, nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::from_slice(nonce);
        let payload = Payload {
            msg: sealed,
            aad: &[MAGIC_SEALED],
        };
        match self {
            Cipher::Aes128(c) => c.decrypt(nonce, payload).ok(),
            Cipher::Aes192(c) => c.decrypt(nonce, payload).ok(),
            Cipher::Aes256(c) => c.decrypt(nonce, payload).ok(),
        }
    }
}

/// Wrap `payload` of `kind` for the wire (sealed when there is a cipher).
pub fn seal(cipher: Option<&Cipher>, kind: Kind, payload: &[u8]) -> Option<Vec<u8>> {
    match cipher {
        None => {
            let mut out = Vec::with_capacity(2 + payload.len());
            out.push(MAGIC_PLAIN);
            out.push(kind as u8);
            out.extend_from_slice(payload);
            Some(out)
        }
        Some(c) => {
            let mut nonce = [0u8; NONCE_LEN];
            crate::encoding::OsRng.fill_bytes(&mut nonce);
            let mut msg = Vec::with_capacity(1 + payload.len());
            msg.push(kind as u8);
            msg.extend_from_slice(payload);
            let sealed = c.seal(&nonce, &msg)?;
            let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
            out.push(MAGIC_SEALED);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
            Some(out)
        }
    }
}

/// Unwrap a datagram: its kind and payload, or `None` when it is not ours (wrong magic, a
/// plain datagram while we have a key or a sealed one while we have none, a tag that does not
/// authenticate, an unknown kind).
pub fn open(cipher: Option<&Cipher>, data: &[u8]) -> Option<(Kind, Vec<u8>)> {
    let (&magic, rest) = data.split_first()?;
    let inner = match (magic, cipher) {
        (MAGIC_PLAIN, None) => rest.to_vec(),
        (MAGIC_SEALED, Some(c)) => {
            if rest.len() < NONCE_LEN + TAG_LEN + 1 {
                return None;
            }
            let (nonce, sealed) = rest.split_at(NONCE_LEN);
            c.open(nonce, sealed)?
        }
        _ => return None,
    };
    let (&kind, payload) = inner.split_first()?;
    Some((Kind::from_byte(kind)?, payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagrams_open_only_under_the_same_key() {
        let a = Cipher::new(&[7u8; 32]).expect("key");
        let b = Cipher::new(&[8u8; 32]).expect("key");
        let wire = seal(Some(&a), Kind::Foca, b"hello").expect("seal");
        assert_eq!(wire.len(), 5 + OVERHEAD);
        assert_eq!(open(Some(&a), &wire), Some((Kind::Foca, b"hello".to_vec())));
        assert_eq!(open(Some(&b), &wire), None, "another key");
        assert_eq!(open(None, &wire), None, "no key");
        let plain = seal(None, Kind::Leave, b"x").expect("plain");
        assert_eq!(open(None, &plain), Some((Kind::Leave, b"x".to_vec())));
        assert_eq!(
            open(Some(&a), &plain),
            None,
            "a keyed agent refuses plain text"
        );
        let mut flipped = wire.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(open(Some(&a), &flipped), None, "tampered");
        // Two seals of the same payload differ: the nonce is fresh each time.
        assert_ne!(seal(Some(&a), Kind::Foca, b"hello"), Some(wire));
    }

    #[test]
    fn every_key_size_serf_accepts_works_and_others_do_not() {
        for n in [16, 24, 32] {
            let c = Cipher::new(&vec![1u8; n]).expect("key size");
            let wire = seal(Some(&c), Kind::ForceLeave, b"p").expect("seal");
            assert_eq!(
                open(Some(&c), &wire),
                Some((Kind::ForceLeave, b"p".to_vec()))
            );
        }
        for n in [0, 8, 15, 17, 31, 33, 64] {
            assert!(Cipher::new(&vec![1u8; n]).is_none(), "{n} bytes");
        }
    }

    #[test]
    fn short_and_odd_datagrams_are_refused() {
        let c = Cipher::new(&[3u8; 16]).expect("key");
        for d in [
            &b""[..],
            &[MAGIC_SEALED],
            &[MAGIC_SEALED; 20],
            &[MAGIC_PLAIN],
            &[MAGIC_PLAIN, 9],
        ] {
            assert_eq!(open(Some(&c), d), None);
            assert_eq!(open(None, d), None);
        }
    }
}
