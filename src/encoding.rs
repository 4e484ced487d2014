//! The byte encodings and primitives nomadlet needs, each from a maintained crate: base64
//! (`base64ct`: standard padded, and URL-safe unpadded), constant-time comparison (`subtle`),
//! and the kernel's randomness (`rand_core`'s `OsRng`, for key generation).

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use subtle::ConstantTimeEq;

pub use rand_core::OsRng;

/// Standard base64 with padding (Go's `base64.StdEncoding`: Nomad's `Hash` fields and stream
/// frames' `Data`).
pub fn base64_std(bytes: &[u8]) -> String {
    Base64::encode_string(bytes)
}

/// Decode standard padded base64 (Go's `base64.StdEncoding`: the gossip key); `None` on any
/// character outside the alphabet, missing padding, or a non-canonical encoding.
pub fn base64_std_decode(text: &str) -> Option<Vec<u8>> {
    Base64::decode_vec(text).ok()
}

/// Unpadded base64url (JWS segments and JWK members).
pub fn base64url(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// Decode unpadded base64url; `None` on any character outside the alphabet, on padding, or on
/// a non-canonical encoding.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    Base64UrlUnpadded::decode_vec(text).ok()
}

/// Compare two byte strings without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64_std(b""), "");
        assert_eq!(base64_std(b"f"), "Zg==");
        assert_eq!(base64_std(b"fo"), "Zm8=");
        assert_eq!(base64_std(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_std(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
        assert_eq!(base64_std_decode("Zm9vYmFy"), Some(b"foobar".to_vec()));
        assert_eq!(base64_std_decode("Zg=="), Some(b"f".to_vec()));
        assert_eq!(base64_std_decode("Zg"), None, "padding is required");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_decode("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(base64url_decode("Zm9vYmFy"), Some(b"foobar".to_vec()));
        assert_eq!(base64url_decode("Zg=="), None);
        assert_eq!(base64url_decode("Z"), None);
        assert_eq!(base64url_decode("Zh"), None, "non-canonical trailing bits");
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
