//! Unit tests of safe path resolution against alloc-dir-shaped temp trees.

use super::*;
use std::io::Read;
use std::os::unix::fs::symlink;

fn tree() -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("nomadlet-safe-{}", uuid::Uuid::new_v4()));
    let root = base.join("alloc").join("a1");
    let other = base.join("alloc").join("a2");
    for d in [
        "alloc/logs",
        "alloc/data",
        "web/local",
        "web/secrets",
        "web/private",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), b"other alloc").unwrap();
    std::fs::write(root.join("web/local/hello.txt"), b"hello").unwrap();
    std::fs::write(root.join("web/secrets/nomad_token"), b"tok").unwrap();
    std::fs::write(root.join("web/private/p"), b"p").unwrap();
    symlink("/etc/passwd", root.join("web/local/passwd")).unwrap();
    symlink("/etc", root.join("web/local/etc")).unwrap();
    symlink(other.join("secret.txt"), root.join("web/local/other")).unwrap();
    symlink("../../../a2/secret.txt", root.join("web/local/other_rel")).unwrap();
    symlink("../secrets/nomad_token", root.join("web/local/tok")).unwrap();
    symlink("../secrets", root.join("web/local/secdir")).unwrap();
    symlink(
        root.join("web/local/hello.txt"),
        root.join("web/local/abs_ok"),
    )
    .unwrap();
    symlink("hello.txt", root.join("web/local/rel_ok")).unwrap();
    symlink("loop", root.join("web/local/loop")).unwrap();
    symlink("local", root.join("web/loc")).unwrap();
    (base, root)
}

fn read_all(r: &Resolved) -> String {
    let mut s = String::new();
    r.open_file().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn clean_refuses_climbing() {
    assert_eq!(
        clean_components("/a/./b/../c"),
        Some(vec!["a".to_string(), "c".to_string()])
    );
    assert_eq!(clean_components(".."), None);
    assert_eq!(clean_components("a/../../b"), None);
    assert_eq!(clean_components("/"), Some(vec![]));
}

#[test]
fn plain_and_internal_links_resolve() {
    let (base, root) = tree();
    let d = AllocDir::open(&root).unwrap();
    assert_eq!(
        read_all(&d.resolve("/web/local/hello.txt").unwrap()),
        "hello"
    );
    assert_eq!(read_all(&d.resolve("web/local/rel_ok").unwrap()), "hello");
    assert_eq!(read_all(&d.resolve("web/local/abs_ok").unwrap()), "hello");
    assert_eq!(read_all(&d.resolve("web/loc/hello.txt").unwrap()), "hello");
    let r = d.resolve("web/loc/hello.txt").unwrap();
    assert_eq!(r.components, vec!["web", "local", "hello.txt"]);
    assert!(d.resolve("/").unwrap().is_dir());
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn escapes_are_refused() {
    let (base, root) = tree();
    let d = AllocDir::open(&root).unwrap();
    for p in [
        "..",
        "../a2/secret.txt",
        "/../../etc/passwd",
        "web/../../a2",
        "web/local/passwd",
        "web/local/etc/passwd",
        "web/local/etc",
        "web/local/other",
        "web/local/other_rel",
    ] {
        assert!(
            matches!(d.resolve(p), Err(PathError::Escapes)),
            "{p} must escape"
        );
    }
    assert!(matches!(
        d.resolve("web/local/loop"),
        Err(PathError::Os { .. })
    ));
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn secrets_checked_on_resolved_path() {
    let (base, root) = tree();
    let d = AllocDir::open(&root).unwrap();
    assert_eq!(
        d.resolve("web/secrets/nomad_token").unwrap().protected(),
        Some(Protected::Secrets)
    );
    assert_eq!(
        d.resolve("web/local/tok").unwrap().protected(),
        Some(Protected::Secrets)
    );
    assert_eq!(
        d.resolve("web/local/secdir/nomad_token")
            .unwrap()
            .protected(),
        Some(Protected::Secrets)
    );
    assert_eq!(
        d.resolve("web/private/p").unwrap().protected(),
        Some(Protected::Private)
    );
    assert_eq!(d.resolve("web/local/hello.txt").unwrap().protected(), None);
    assert_eq!(d.resolve("alloc/logs").unwrap().protected(), None);
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn swapped_dir_after_resolve_is_not_followed() {
    let (base, root) = tree();
    let d = AllocDir::open(&root).unwrap();
    let r = d.resolve("web/local/hello.txt").unwrap();
    // Swap the directory for a symlink to /etc after the check: the read still uses the
    // pinned parent fd and sees the original file (or fails), never /etc.
    std::fs::rename(root.join("web/local"), root.join("web/moved")).unwrap();
    symlink("/etc", root.join("web/local")).unwrap();
    assert_eq!(read_all(&r), "hello");
    assert!(matches!(
        d.resolve("web/local/passwd"),
        Err(PathError::Escapes)
    ));
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn listing_uses_lstat() {
    let (base, root) = tree();
    let d = AllocDir::open(&root).unwrap();
    let dir = d.resolve("web/local").unwrap().open_dir().unwrap();
    let names: Vec<String> = dir.entries().unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"passwd".to_string()));
    assert!(names.windows(2).all(|w| w[0] <= w[1]));
    assert!(
        dir.open_file("passwd").is_err(),
        "links are never followed by name"
    );
    assert!(dir.open_file("../secrets/nomad_token").is_err());
    assert!(dir.open_file("hello.txt").is_ok());
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn missing_reports_lexical_host_path() {
    let (base, root) = tree();
    let d = AllocDir::open(&root).unwrap();
    match d.resolve("/web/nope") {
        Err(PathError::Os { abs, err }) => {
            assert_eq!(abs, root.join("web/nope"));
            assert_eq!(os_text(&err), "no such file or directory");
        }
        _ => panic!("expected ENOENT"),
    }
    std::fs::remove_dir_all(base).unwrap();
}
