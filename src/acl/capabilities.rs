//! Capability checks: the rules of every policy that applies to a caller merged into one
//! [`Acl`] (capabilities unioned, `deny` wins), and Nomad's namespace glob matching.

use std::collections::{BTreeMap, BTreeSet};

use super::policy::{Level, Policy};

/// The merged rules of every policy that applies to one caller.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    management: bool,
    /// Namespace pattern → capabilities (coarse policies expanded).
    namespaces: BTreeMap<String, BTreeSet<String>>,
    node: Option<Level>,
    agent: Option<Level>,
    operator: Option<Level>,
}

impl Acl {
    /// Everything allowed (management tokens).
    pub fn management() -> Acl {
        Acl {
            management: true,
            ..Acl::default()
        }
    }

    /// Merge policies: capabilities are unioned, `deny` wins.
    pub fn from_policies<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Acl {
        let mut acl = Acl::default();
        for p in policies {
            for ns in &p.namespaces {
                acl.namespaces
                    .entry(ns.name.clone())
                    .or_default()
                    .extend(ns.expanded());
            }
            acl.node = Level::merge(acl.node, p.node);
            acl.agent = Level::merge(acl.agent, p.agent);
            acl.operator = Level::merge(acl.operator, p.operator);
        }
        acl
    }

    pub fn is_management(&self) -> bool {
        self.management
    }

    fn level_allows(level: Option<Level>, write: bool) -> bool {
        match level {
            Some(Level::Write) => true,
            Some(Level::Read) => !write,
            _ => false,
        }
    }

    pub fn allow_node(&self, write: bool) -> bool {
        self.management || Acl::level_allows(self.node, write)
    }

    pub fn allow_agent(&self, write: bool) -> bool {
        self.management || Acl::level_allows(self.agent, write)
    }

    pub fn allow_operator(&self, write: bool) -> bool {
        self.management || Acl::level_allows(self.operator, write)
    }

    /// A namespace capability, matched against the exact namespace rule or else the glob that
    /// matches the most characters.
    pub fn allow_namespace(&self, namespace: &str, capability: &str) -> bool {
        if self.management {
            return true;
        }
        let caps = match self.namespaces.get(namespace) {
            Some(c) => Some(c),
            None => self
                .namespaces
                .iter()
                .filter(|(pat, _)| pat.contains('*') && glob_match(pat, namespace))
                .max_by_key(|(pat, _)| pat.chars().filter(|c| *c != '*').count())
                .map(|(_, c)| c),
        };
        match caps {
            Some(c) => !c.contains("deny") && c.contains(capability),
            None => false,
        }
    }
}

/// `*` matches any run of characters; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.len() >= part.len() && rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(idx) => rest = &rest[idx + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::policy::parse;

    const HCL: &str = r#"
namespace "default" {
  policy       = "read"
  capabilities = ["submit-job", "read-logs"]
}
namespace "prod-*" { policy = "write" }
namespace "secret" { policy = "deny" }
node  { policy = "write" }
agent { policy = "read" }
"#;

    #[test]
    fn capabilities_expand_and_merge() {
        let acl = Acl::from_policies([&parse(HCL).unwrap()]);
        assert!(acl.allow_namespace("default", "read-job"));
        assert!(acl.allow_namespace("default", "submit-job"));
        assert!(!acl.allow_namespace("default", "alloc-exec"));
        assert!(acl.allow_namespace("prod-eu", "read-fs"));
        assert!(!acl.allow_namespace("secret", "read-job"));
        assert!(!acl.allow_namespace("other", "read-job"));
        assert!(acl.allow_node(true));
        assert!(acl.allow_agent(false));
        assert!(!acl.allow_agent(true));
        let deny = parse(r#"node { policy = "deny" }"#).unwrap();
        let merged = Acl::from_policies([&parse(HCL).unwrap(), &deny]);
        assert!(!merged.allow_node(false), "deny wins");
    }

    #[test]
    fn exact_namespace_wins_then_longest_glob() {
        let p = parse(
            r#"
namespace "*" { policy = "write" }
namespace "prod-*" { policy = "deny" }
namespace "prod-api" { policy = "read" }
"#,
        )
        .unwrap();
        let acl = Acl::from_policies([&p]);
        assert!(acl.allow_namespace("dev", "submit-job"));
        assert!(!acl.allow_namespace("prod-db", "read-job"));
        assert!(acl.allow_namespace("prod-api", "read-job"));
        assert!(!acl.allow_namespace("prod-api", "submit-job"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("prod-*", "prod-"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c", "ab"));
        assert!(!glob_match("prod", "prod-x"));
    }
}
