//! [`Shared`]: a value behind an `Arc` that versions of a record share until one of them
//! changes it (copy on write). The bulky parts of a node (attributes, metadata, resources,
//! drivers) are such values: a status change makes a new version of the node and must not
//! copy them, and the events ring and the snapshot base keep older versions alive.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A value shared between versions of a record; written through `DerefMut`, which copies it
/// first when another version still holds it. Serialized exactly as the value itself.
#[derive(Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(value))
    }

    /// Whether both are the same allocation (then they are equal without a look inside).
    pub fn ptr_eq(a: &Shared<T>, b: &Shared<T>) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Shared<T> {
        Shared(self.0.clone())
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> std::ops::DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Shared<T> {
        Shared::new(value)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Shared<T>) -> bool {
        Shared::ptr_eq(self, other) || *self.0 == *other.0
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: PartialEq> Shared<T> {
    /// Take `old`'s allocation when it holds the same value (a record made again from a
    /// request, equal to the one stored, then costs nothing more).
    pub fn share_if_equal(&mut self, old: &Shared<T>) {
        if !Shared::ptr_eq(self, old) && *self.0 == *old.0 {
            self.0 = old.0.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_copies_only_a_value_another_version_holds() {
        let mut a: Shared<Vec<u32>> = vec![1, 2].into();
        let b = a.clone();
        assert!(Shared::ptr_eq(&a, &b));
        a.push(3);
        assert!(!Shared::ptr_eq(&a, &b));
        assert_eq!(*b, vec![1, 2]);
        assert_eq!(*a, vec![1, 2, 3]);
        let before = Arc::as_ptr(&a.0);
        a.push(4); // held by no one else: changed in place
        assert_eq!(Arc::as_ptr(&a.0), before);
    }

    #[test]
    fn it_serializes_as_the_value_and_equal_values_are_shared() {
        let a: Shared<std::collections::BTreeMap<String, String>> =
            [("k".to_string(), "v".to_string())]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
                .into();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"k":"v"}"#);
        let mut b: Shared<std::collections::BTreeMap<String, String>> =
            serde_json::from_str(r#"{"k":"v"}"#).unwrap();
        assert_eq!(a, b);
        assert!(!Shared::ptr_eq(&a, &b));
        b.share_if_equal(&a);
        assert!(Shared::ptr_eq(&a, &b));
    }
}
