//! [`Rare`]: a field most records leave empty, kept behind one pointer (8 bytes) instead of
//! inline, and serialized exactly as the value itself.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A type with an empty value that lives for the whole program (what an unset [`Rare`]
/// reads as).
pub trait Empty: Default + 'static {
    fn empty() -> &'static Self;
    fn is_empty(&self) -> bool;
}

/// A rarely set value: `None` (no allocation) while empty, boxed once set. Reads through
/// `Deref` as the value (the empty one when unset); writes through `DerefMut` box it first.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Rare<T>(Option<Box<T>>);

impl<T: Empty> std::ops::Deref for Rare<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::empty())
    }
}

impl<T: Empty> std::ops::DerefMut for Rare<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: Empty> From<T> for Rare<T> {
    fn from(value: T) -> Rare<T> {
        Rare((!value.is_empty()).then(|| Box::new(value)))
    }
}

impl<T: Empty + fmt::Debug> fmt::Debug for Rare<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Empty + Serialize> Serialize for Rare<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Rare<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rare<T>, D::Error> {
        T::deserialize(d).map(Rare::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Marks(Vec<u32>);

    impl Empty for Marks {
        fn empty() -> &'static Marks {
            static EMPTY: Marks = Marks(Vec::new());
            &EMPTY
        }
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }

    #[test]
    fn unset_it_is_one_word_reads_empty_and_serializes_as_the_value() {
        assert_eq!(std::mem::size_of::<Rare<Marks>>(), 8);
        let mut r: Rare<Marks> = Rare::default();
        assert!(r.0.is_none() && r.is_empty());
        assert_eq!(serde_json::to_string(&r).unwrap(), "[]");
        let marks: &mut Marks = &mut r;
        marks.0.push(7);
        assert_eq!(serde_json::to_string(&r).unwrap(), "[7]");
        let back: Rare<Marks> = serde_json::from_str("[7]").unwrap();
        assert_eq!(back, r);
        let empty: Rare<Marks> = serde_json::from_str("[]").unwrap();
        assert!(empty.0.is_none(), "an empty value read back is not boxed");
        assert!(Rare::from(Marks::default()).0.is_none());
    }
}
