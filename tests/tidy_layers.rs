//! The layer check: every `crate::…` and `super::…` path in `src/` (grouped `use` lines
//! expanded, test modules left out) is resolved to the module it names, and a top-level
//! module may point only at the modules its row in [`ALLOWED`] lists. The rows are the
//! directions ARCHITECTURE.md writes down: `http` knows nothing of Nomad, only `agent` wires
//! the whole, the client reaches the server through `client::link` alone, and domain modules
//! never point up at `api`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A top-level module and what it may name outside itself. A target is a module path
/// prefix: `state::jobs::alloc` allows that module and everything in it, nothing beside.
/// Modules not listed (`main`, `lib`, `fuzzing`, `agent`: the roots) may name anything.
const ALLOWED: &[(&str, &[&str])] = &[
    // The HTTP API: the only place that knows JSON shapes and statuses.
    (
        "api",
        &[
            "acl",
            "client",
            "config",
            "encoding",
            "fs",
            "gossip",
            "http",
            "jobspec",
            "logtap",
            "meta_batcher",
            "parse_bounds",
            "raft",
            "server::drainer",
            "server::heartbeat",
            "server::periodic",
            "server::scheduler::dry_run",
            "signals",
            "state",
            "store",
            "server::tunnel",
            "sys",
            "time",
            "tls",
        ],
    ),
    // The server side of the client link, in process. Of the client it names only the
    // link's messages: the client's own node (`client::node`: identity, fingerprint,
    // metadata) reaches it only as a `NodeRegistration`.
    (
        "server",
        &[
            "acl",
            "client::link",
            "state",
            "store",
            "time",
            "config",
            "http",
            "encoding",
            "parse_bounds",
            "sys",
        ],
    ),
    // The client's node updater: it talks to the server only through the link.
    ("meta_batcher", &["client::link", "config", "time"]),
    // The client: server state only through `client::link`; of `state` only the record
    // types it receives (allocations, job specs, statuses, time formats), never tables or
    // the log (`state::store` is the old name of `store`).
    (
        "client",
        &[
            "acl::capabilities",
            "acl::jwt",
            "acl::keys",
            "acl::policy",
            "acl::tokens",
            "config",
            "encoding",
            "http",
            "signals",
            "state::jobs::alloc",
            "state::jobs::spec",
            "state::jobs::timefmt",
            "state::status",
            "state::store",
            "store",
            "sys",
            "time",
        ],
    ),
    // Server state: below the client, the API and the agent.
    (
        "state",
        &[
            "acl",
            "config",
            "encoding",
            "hcl_doc",
            "parse_bounds",
            "signals",
            "store",
            "sys",
            "time",
        ],
    ),
    // ACL records, rules and keys: returns `acl::Error`, never an API error.
    (
        "acl",
        &[
            "encoding",
            "hcl_doc",
            "parse_bounds",
            "state::store",
            "store",
            "sys",
            "time",
        ],
    ),
    ("fs", &["encoding", "http", "sys", "time"]),
    // HCL2 jobspecs → the JSON job (used by the API and the CLI).
    ("jobspec", &["config", "hcl_doc", "parse_bounds", "time"]),
    // The Nomad CLI subset: an HTTP client of the API, not a part of the agent.
    (
        "cli",
        &[
            "config",
            "encoding",
            "http::client",
            "jobspec",
            "parse_bounds",
            "time",
            "tls",
        ],
    ),
    // TLS for the HTTP server and the CLI: rustls configurations built from the settings
    // `config` owns; the SIGHUP step that reaches the agent lives in `reload`.
    ("tls", &["config", "http"]),
    (
        "config",
        &["encoding", "hcl_doc", "http::limits", "parse_bounds"],
    ),
    // Server membership: foca gossip on the serf port; below the API, beside the state.
    ("gossip", &["config", "encoding", "store"]),
    // Raft: replicates the command log; below the API, above the state, gossip and the RPC
    // port's inbox (`server::rpc`).
    ("raft", &["gossip", "http::client", "server::rpc", "state"]),
    // Our HTTP server: knows nothing of Nomad.
    ("http", &["sys", "time"]),
    ("sys", &[]),
    ("store", &[]),
    ("signals", &[]),
    ("time", &["sys"]),
    ("encoding", &[]),
    ("hcl_doc", &["parse_bounds"]),
    ("parse_bounds", &[]),
    ("logtap", &["time"]),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src/`: `client/mod.rs` → `[client]`,
/// `state/jobs/alloc.rs` → `[state, jobs, alloc]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// The code without comments and without test modules (`#[cfg(test)]` to the end: test
/// modules sit at the end of a file here).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path that starts at `start` (just after `crate::` or a `super::` chain), with
/// `{a, b::{c, self}}` groups expanded. Returns the paths and where parsing stopped.
fn paths_at(s: &[char], mut i: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut path = prefix;
    loop {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == '{' {
            i += 1;
            let mut out = Vec::new();
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == '}' {
                    return (out, i + 1);
                }
                let (inner, next) = paths_at(s, i, path.clone());
                out.extend(inner);
                i = next;
                // Skip an `as name` rename up to the next item.
                while i < s.len() && s[i] != ',' && s[i] != '}' {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        let seg: String = s[start..i].iter().collect();
        if seg.is_empty() {
            return (vec![path], i);
        }
        if seg != "self" {
            path.push(seg);
        }
        if i + 1 < s.len() && s[i] == ':' && s[i + 1] == ':' {
            i += 2;
        } else {
            return (vec![path], i);
        }
    }
}

/// Every absolute module path a file's code names: `crate::…` as written, `super::…`
/// resolved against the file's own module path.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let s: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !(is_ident(s[i - 1]) || s[i - 1] == ':');
        if boundary && s[i..].starts_with(&['c', 'r', 'a', 't', 'e', ':', ':']) {
            let (paths, next) = paths_at(&s, i + 7, Vec::new());
            out.extend(paths);
            i = next.max(i + 1);
            continue;
        }
        if boundary && s[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
            let mut base: Vec<String> = module.to_vec();
            let mut j = i;
            while s[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                base.pop();
                j += 7;
            }
            let (paths, next) = paths_at(&s, j, base);
            out.extend(paths);
            i = next.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// The paths a module names that its row does not allow: `(named path, rule)`.
fn violations(module: &[String], code: &str) -> Vec<String> {
    let Some(top) = module.first() else {
        return Vec::new();
    };
    let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| m == top) else {
        return Vec::new();
    };
    let mut bad = BTreeSet::new();
    for p in named_paths(module, code) {
        let Some(first) = p.first() else { continue };
        if first == top {
            continue;
        }
        // A path into a module's own items may stop at a type (`state::jobs::Workloads`):
        // it is allowed only when an allowed prefix covers it whole.
        let joined = p.join("::");
        let ok = allowed
            .iter()
            .any(|a| joined == *a || joined.starts_with(&format!("{a}::")));
        if !ok {
            bad.insert(joined);
        }
    }
    bad.into_iter().collect()
}

#[test]
fn every_module_points_only_where_its_layer_allows() {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut report = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        // Test modules kept in their own files may reach anything.
        if rel.file_name().is_some_and(|n| n == "tests.rs") || rel.iter().any(|c| c == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for v in violations(&module_of(rel), &code_of(&text)) {
            report.push(format!("{}: names crate::{v}", rel.display()));
        }
    }
    assert!(
        report.is_empty(),
        "layer directions broken (see ALLOWED in tests/tidy_layers.rs):\n{}",
        report.join("\n")
    );
}

#[test]
fn the_checker_expands_groups_resolves_super_and_catches_upward_paths() {
    let m = |s: &str| -> Vec<String> { s.split("::").map(String::from).collect() };
    let code = "use crate::{acl::Error, state::{self, jobs::Workloads as W}};\n\
                use super::super::agent::Agent;\nfn f() { crate::time::now(); }";
    let got: Vec<String> = named_paths(&m("client::x"), code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        got,
        [
            "acl::Error",
            "state",
            "state::jobs::Workloads",
            "agent::Agent",
            "time::now"
        ]
    );
    // The client may name alloc records but not the server's tables or the agent.
    let bad = violations(
        &m("client::x"),
        "use crate::state::jobs::alloc::AllocRecord;\nuse crate::state::jobs::Workloads;\n\
         use super::super::agent::Agent;",
    );
    assert_eq!(bad, ["agent::Agent", "state::jobs::Workloads"]);
    // Issue 9 item 2: the client's node data is the client's; neither the server nor its
    // state reach into it (they see what the client registers through the link).
    assert_eq!(
        violations(
            &m("server::local_link"),
            "use crate::client::node::NodeState;\nuse crate::client::link::NodeRegistration;"
        ),
        ["client::node::NodeState"]
    );
    assert_eq!(
        violations(&m("state::jobs"), "use crate::client::host::HostFacts;"),
        ["client::host::HostFacts"]
    );
    // http knows nothing of Nomad; acl never answers with API errors.
    assert_eq!(
        violations(&m("http::conn"), "use crate::api::ApiError;"),
        ["api::ApiError"]
    );
    assert_eq!(
        violations(&m("acl"), "fn f() -> crate::api::ApiError { todo!() }"),
        ["api::ApiError"]
    );
    // A module's own paths and comments are not edges.
    assert!(violations(&m("acl::keys"), "use super::Error;").is_empty());
    assert!(violations(
        &m("http"),
        &code_of("// crate::api::x\nuse crate::sys::poll;")
    )
    .is_empty());
}
