//! Entry points for the cargo-fuzz targets in `fuzz/` (hidden from docs, not an API): each
//! feeds arbitrary bytes to one parser that faces requests and asserts cheap invariants. The
//! recursive parsers run on a thread with [`SMALL_STACK`] bytes of stack, so a nesting bound
//! that does not hold shows up as a crash, not as luck with a big main-thread stack.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::acl::jwt;
use crate::acl::keys::SigningKeys;
use crate::fs::safe_path::AllocDir;
use crate::http::budget::{BodyBudget, Pool};
use crate::http::limits::{MAX_HEADERS, MAX_HEAD_BYTES};
use crate::http::wire::{Sock, Wire};
use crate::parse_bounds;

/// The stack the recursive parsers are fuzzed on: the size the nesting bounds are proven for.
pub const SMALL_STACK: usize = 256 * 1024;

/// Largest chunked body fed through a socket pair (below the socket buffer, so one write).
const MAX_CHUNKED_INPUT: usize = 64 * 1024;

/// With `NOMADLET_FUZZ_LAST=<file>`, each input is written there before it runs. A stack
/// overflow kills a libFuzzer process with no crash artifact (its SIGSEGV handler has no
/// alternate stack to run on), so this is how such an input is caught.
fn remember(data: &[u8]) {
    if let Some(path) = std::env::var_os("NOMADLET_FUZZ_LAST") {
        let _ = std::fs::write(path, data);
    }
}

/// Run `f` on a fresh thread with [`SMALL_STACK`] bytes of stack; a panic is re-raised here.
pub fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = std::thread::Builder::new()
        .name("fuzz-small-stack".into())
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn fuzz thread");
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The request head parser.
pub fn http_head(data: &[u8]) {
    if let Ok(Some((head, n))) = crate::http::head::parse_head(data, MAX_HEAD_BYTES, MAX_HEADERS) {
        assert!(
            n <= data.len() && n <= MAX_HEAD_BYTES,
            "head longer than input"
        );
        assert!(head.headers.len() <= MAX_HEADERS);
        for (_, v) in &head.headers {
            assert!(!v.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n'));
        }
        if head.framing == crate::http::head::Framing::Chunked {
            assert_eq!(head.minor, 1, "chunked on HTTP/1.0");
        }
    }
}

/// The chunked body decoder, fed through a Unix socket pair.
pub fn chunked_body(data: &[u8]) {
    let data = &data[..data.len().min(MAX_CHUNKED_INPUT)];
    let (mut tx, rx) = UnixStream::pair().expect("socketpair");
    // Limit and budget from the first byte, so both refusals are reachable.
    let limit = data.first().map_or(1024, |&b| 16 + usize::from(b) * 64);
    tx.write_all(data).expect("write to socketpair");
    drop(tx);
    let sock = Sock::Unix(rx);
    let mut wire = Wire::new(&sock);
    let (server_pool, client_pool) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut budget = BodyBudget::new(
        Pool {
            held: &server_pool,
            max: limit * 2,
        },
        Pool {
            held: &client_pool,
            max: limit * 2,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    if let Ok(body) =
        crate::http::chunked::read_chunked(&mut wire, limit, &mut budget, 1024, deadline)
    {
        assert!(body.len() <= limit, "body over its limit");
        assert!(body.len() <= data.len(), "body longer than its encoding");
    }
}

/// A `?filter=` expression, parsed and evaluated against a job-like document.
pub fn filter(data: &[u8]) {
    remember(data);
    let text = String::from_utf8_lossy(data).into_owned();
    on_small_stack(move || {
        let parsed = crate::api::filter::parse(&text);
        if text.len() > crate::api::filter::MAX_FILTER_LEN {
            assert!(parsed.is_err(), "over-long filter accepted");
        }
        if let Ok(expr) = parsed {
            let doc = serde_json::json!({
                "ID": "web", "Name": "web", "Status": "running", "Priority": 50,
                "Datacenters": ["dc1", "dc2"], "Stop": false,
                "Meta": {"example": "Hello World!", "a.b": "x", "": ""},
                "TaskGroups": [{"Name": "g", "Count": 1}],
                "JobSummary": {"Summary": {"g": {"Running": 1}}}
            });
            let _ = expr.matches(&doc);
        }
    });
}

/// An ACL policy (HCL or JSON) through the depth pre-scan and the policy parser.
pub fn hcl_policy(data: &[u8]) {
    remember(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.to_string();
    on_small_stack(move || {
        let scanned = parse_bounds::check_hcl(&text, parse_bounds::ACL_POLICY_LIMITS);
        let parsed = crate::acl::policy::parse(&text);
        if scanned.is_err() && !text.trim_start().starts_with('{') {
            assert!(parsed.is_err(), "policy beyond the bounds accepted");
        }
    });
}

/// A job registration body: bounded JSON decode, canonicalisation and validation.
pub fn job_json(data: &[u8]) {
    remember(data);
    let data = data.to_vec();
    on_small_stack(move || {
        let deep = parse_bounds::check_json_depth(&data, parse_bounds::JSON_MAX_DEPTH).is_err();
        match crate::api::jobs::decode_register(&data) {
            Ok((_, mut job)) => {
                assert!(!deep, "JSON beyond the depth bound accepted");
                job.canonicalize("global");
                let _ = crate::state::jobs::validate::validate_job(&job);
                let _ = serde_json::to_vec(&job);
            }
            Err(e) => assert_eq!(e.status, crate::http::Status::BAD_REQUEST),
        }
    });
}

/// Gossip datagrams (the serf port): the envelope, AES-GCM opening and foca's decoder.
pub fn gossip_datagram(data: &[u8]) {
    remember(data);
    crate::gossip::fuzz_datagram(data);
}

/// Go durations (`?wait=`, `-meta-batch-window`, config).
pub fn go_duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(d) = crate::config::parse_go_duration(text) {
        // Whatever parses must be non-empty text.
        assert!(!text.is_empty(), "empty duration {d:?} accepted");
    }
}

/// RSA modulus of the fuzzing key: the verification code is the same for any size, and a
/// small key signs fast enough to reach claim decoding thousands of times a second.
const FUZZ_RSA_BITS: usize = 512;

fn jwt_keys() -> &'static SigningKeys {
    static KEYS: OnceLock<SigningKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut crate::encoding::OsRng, FUZZ_RSA_BITS)
            .expect("fuzz signing key");
        SigningKeys::from_key(key)
    })
}

/// JWT verification: odd first byte → the rest is a whole token; even → the rest is a claims
/// payload, signed with the real key so claim decoding and time checks are reached.
pub fn jwt(data: &[u8]) {
    let keys = jwt_keys();
    let now = 1_800_000_000;
    match data.split_first() {
        Some((b, rest)) if b % 2 == 1 => {
            let token = String::from_utf8_lossy(rest);
            let _ = jwt::verify(keys, &token, now);
        }
        Some((_, rest)) => {
            let header = serde_json::json!({"alg": "RS256", "kid": keys.kid(), "typ": "JWT"});
            let input = format!(
                "{}.{}",
                crate::encoding::base64url(header.to_string().as_bytes()),
                crate::encoding::base64url(rest)
            );
            let sig = keys.sign(input.as_bytes());
            let token = format!("{input}.{}", crate::encoding::base64url(&sig));
            let _ = jwt::verify(keys, &token, now);
        }
        None => {
            let _ = jwt::verify(keys, "", now);
        }
    }
}

/// A temp alloc dir with links that stay inside, links that escape, a loop, and a file
/// outside; made once per process.
fn path_tree() -> &'static (PathBuf, AllocDir) {
    static TREE: OnceLock<(PathBuf, AllocDir)> = OnceLock::new();
    TREE.get_or_init(|| {
        use std::os::unix::fs::symlink;
        let base = std::env::temp_dir().join(format!("nomadlet-fuzz-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("alloc-root");
        for d in [
            "alloc/logs",
            "alloc/data",
            "t/local/sub",
            "t/secrets",
            "t/private",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(base.join("outside.txt"), b"outside").expect("write");
        std::fs::write(root.join("alloc/logs/t.stdout.0"), b"log").expect("write");
        std::fs::write(root.join("t/secrets/nomad_token"), b"secret").expect("write");
        std::fs::write(root.join("t/local/file"), b"file").expect("write");
        let links: [(&str, PathBuf); 9] = [
            ("t/local/up", "../../..".into()),
            ("t/local/etc", "/etc".into()),
            ("t/local/loop", "loop".into()),
            ("t/local/data", "../../alloc/data".into()),
            ("t/local/abs", root.join("alloc/logs")),
            ("t/local/sec", "../secrets".into()),
            ("t/local/out", "../../../outside.txt".into()),
            ("t/local/sub/back", "../..".into()),
            ("alloc/data/root", "/".into()),
        ];
        for (at, target) in links {
            symlink(&target, root.join(at)).expect("symlink");
        }
        let canon = std::fs::canonicalize(&root).expect("canonicalize");
        let dir = AllocDir::open(&root).expect("open alloc dir");
        (canon, dir)
    })
}

fn same_inode(a: &crate::sys::fd::Stat, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == a.st_dev && m.ino() == a.st_ino)
}

/// Path resolution in an alloc dir: whatever resolves must be an object inside the tree.
pub fn safe_path(data: &[u8]) {
    let Ok(req) = std::str::from_utf8(data) else {
        return;
    };
    let (canon, dir) = path_tree();
    if let Ok(r) = dir.resolve(req) {
        assert!(
            r.components
                .iter()
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "resolved components {:?}",
            r.components
        );
        let mut inside = canon.clone();
        for c in &r.components {
            inside.push(c);
        }
        assert!(
            same_inode(r.stat(), &inside),
            "{req:?} resolved to something that is not {inside:?}"
        );
    }
}
