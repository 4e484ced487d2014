//! [`SharedStr`]: an immutable string behind an `Arc`, cloned by reference count, serialized
//! and compared exactly as a `String`. The alloc records name their job, plan, group and node
//! with it, so a plan's thousands of allocs hold one copy of each name, not one each.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A shared immutable string (two words; a clone is a reference count, not a copy). Its JSON
/// (and every serde form) is the string's; equality, order and hash are the text's.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedStr(Arc<str>);

/// The one empty string every empty [`SharedStr`] shares (no allocation per empty field).
fn empty() -> &'static Arc<str> {
    static EMPTY: OnceLock<Arc<str>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::from(""))
}

/// At most this many distinct texts are kept by [`SharedStr::common`] (what a client or an
/// operator can make it hold; past it, texts are allocated each time as any other).
pub const MAX_COMMON_TEXTS: usize = 256;

/// Only texts up to this many bytes are kept by [`SharedStr::common`].
pub const MAX_COMMON_TEXT_LEN: usize = 128;

impl SharedStr {
    /// The shared copy of a text that recurs across records (an alloc's desired or client
    /// description: a handful of fixed phrases), kept process-wide up to [`MAX_COMMON_TEXTS`].
    pub fn common(s: &str) -> SharedStr {
        if s.is_empty() || s.len() > MAX_COMMON_TEXT_LEN {
            return SharedStr::from(s);
        }
        static COMMON: OnceLock<Mutex<HashSet<SharedStr>>> = OnceLock::new();
        let mut texts = COMMON.get_or_init(Mutex::default).lock();
        if let Some(kept) = texts.get(s) {
            return kept.clone();
        }
        let new = SharedStr::from(s);
        if texts.len() < MAX_COMMON_TEXTS {
            texts.insert(new.clone());
        }
        new
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both hold the same allocation (a shared copy, not an equal one).
    pub fn ptr_eq(a: &SharedStr, b: &SharedStr) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// How many holders share this allocation.
    pub fn strong_count(s: &SharedStr) -> usize {
        Arc::strong_count(&s.0)
    }

    /// Take `other`'s allocation when it holds the same text.
    pub fn share_if_equal(&mut self, other: &SharedStr) {
        if !SharedStr::ptr_eq(self, other) && self.0 == other.0 {
            self.0 = other.0.clone();
        }
    }
}

impl Default for SharedStr {
    fn default() -> SharedStr {
        SharedStr(empty().clone())
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> SharedStr {
        if s.is_empty() {
            SharedStr::default()
        } else {
            SharedStr(Arc::from(s))
        }
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> SharedStr {
        SharedStr::from(s.as_str())
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> SharedStr {
        SharedStr::from(s.as_str())
    }
}

impl From<&SharedStr> for SharedStr {
    fn from(s: &SharedStr) -> SharedStr {
        s.clone()
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> String {
        s.0.to_string()
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        self == &*other.0
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedStr, D::Error> {
        d.deserialize_str(Visitor)
    }
}

/// Makes the `Arc<str>` straight from the decoder's text (no `String` in between).
struct Visitor;

impl serde::de::Visitor<'_> for Visitor {
    type Value = SharedStr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SharedStr, E> {
        Ok(SharedStr::from(v))
    }
}

/// Hands out one [`SharedStr`] per distinct text (what a snapshot load uses to share the
/// names its allocs repeat). Lives as long as one load, not longer.
#[derive(Default)]
pub struct Interner(HashSet<SharedStr>);

impl Interner {
    /// Replace `s` by the interner's copy of its text (keeping `s` as that copy if new).
    pub fn intern(&mut self, s: &mut SharedStr) {
        match self.0.get(s.as_str()) {
            Some(kept) => *s = kept.clone(),
            None => {
                self.0.insert(s.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_serializes_compares_and_hashes_as_the_string() {
        let s = SharedStr::from("web-1");
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""web-1""#);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            serde_json::to_string("web-1").unwrap()
        );
        let back: SharedStr = serde_json::from_str(r#""web-\"1\"""#).unwrap();
        assert_eq!(back, "web-\"1\"");
        assert_eq!(s, "web-1".to_string());
        let next = SharedStr::from("web-2");
        assert!(s < next);
        let set: HashSet<SharedStr> = [s.clone()].into_iter().collect();
        assert!(set.contains("web-1"));
        assert_eq!(format!("{s} {s:?}"), r#"web-1 "web-1""#);
    }

    #[test]
    fn empty_strings_share_one_allocation_and_interning_shares_equal_texts() {
        let a = SharedStr::from(String::new());
        let b: SharedStr = serde_json::from_str(r#""""#).unwrap();
        assert!(SharedStr::ptr_eq(&a, &b));
        assert!(SharedStr::ptr_eq(&a, &SharedStr::default()));
        let mut interner = Interner::default();
        let mut x = SharedStr::from("job");
        let mut y = SharedStr::from("job");
        assert!(!SharedStr::ptr_eq(&x, &y));
        interner.intern(&mut x);
        interner.intern(&mut y);
        assert!(SharedStr::ptr_eq(&x, &y));
        let mut z = SharedStr::from("other");
        z.share_if_equal(&x);
        assert!(!SharedStr::ptr_eq(&z, &x));
        let mut w = SharedStr::from("job");
        w.share_if_equal(&x);
        assert!(SharedStr::ptr_eq(&w, &x));
        let d = SharedStr::common("Tasks are running");
        assert!(SharedStr::ptr_eq(
            &d,
            &SharedStr::common("Tasks are running")
        ));
        let long = "x".repeat(MAX_COMMON_TEXT_LEN + 1);
        assert!(!SharedStr::ptr_eq(
            &SharedStr::common(&long),
            &SharedStr::common(&long)
        ));
    }
}
