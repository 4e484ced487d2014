//! Style checks run as ordinary tests: module doc lines, no `unwrap()` in the layers that face
//! untrusted input, every crate explained in README, every CLI flag in the man page.

use std::path::{Path, PathBuf};

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

fn without_tests(src: &str) -> &str {
    src.split("#[cfg(test)]").next().unwrap_or(src)
}

#[test]
fn every_source_file_opens_with_a_module_doc_line() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must open with a //! doc comment",
            f.display()
        );
    }
}

#[test]
fn no_unwrap_in_the_layers_facing_untrusted_input() {
    for dir in ["src/http", "src/fs"] {
        let mut files = Vec::new();
        if !root().join(dir).exists() {
            continue;
        }
        rust_files(&root().join(dir), &mut files);
        for f in files {
            // Test modules kept in their own files may unwrap.
            if f.file_name().is_some_and(|n| n == "tests.rs")
                || f.components().any(|c| c.as_os_str() == "tests")
            {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let code = without_tests(&text);
            for (i, line) in code.lines().enumerate() {
                let l = line.trim_start();
                if l.starts_with("//") {
                    continue;
                }
                assert!(
                    !line.contains(".unwrap()"),
                    "{}:{}: unwrap() in {dir}",
                    f.display(),
                    i + 1
                );
            }
        }
    }
}

#[test]
fn every_dependency_is_in_the_readme_table() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let deps = cargo
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    for line in deps.lines() {
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README's dependency table lacks `{name}`"
        );
    }
}

#[test]
fn every_agent_flag_is_in_the_man_page_and_help() {
    let man = std::fs::read_to_string(root().join("man/nomadlet.1")).unwrap();
    let config = std::fs::read_to_string(root().join("src/config.rs")).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_nomadlet"))
        .arg("-h")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut n = 0;
    for part in config.split("FlagSpec { name: \"").skip(1) {
        let name = part.split('"').next().unwrap();
        n += 1;
        assert!(
            man.contains(&format!("\\-{}", name.replace('-', "\\-"))),
            "man page lacks -{name}"
        );
        assert!(help.contains(&format!("-{name}")), "-h lacks -{name}");
    }
    assert!(n >= 10, "found only {n} flags");
}

/// Every file of these kinds under `dir`, recursively (no `target/`, no hidden dirs).
fn files_with(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" || name == "build" || name == "corpus" {
            continue;
        }
        if p.is_dir() {
            files_with(&p, exts, out);
        } else if exts.iter().any(|x| name.ends_with(x)) {
            out.push(p);
        }
    }
}

/// IPv4 literals in `line` outside loopback (127.0.0.0/8) and the unspecified 0.0.0.0.
fn non_loopback_ipv4(line: &str) -> Vec<String> {
    let bytes = line.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if !boundary || !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let rest = &line[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let cand = rest[..end].trim_end_matches('.');
        let parts: Vec<&str> = cand.split('.').collect();
        let after = rest[cand.len()..].chars().next();
        let versionish = after.is_some_and(|c| c.is_ascii_alphabetic() || c == '-');
        if parts.len() == 4
            && !versionish
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u16>().is_ok_and(|n| n <= 255))
            && parts[0] != "127"
            && cand != "0.0.0.0"
        {
            found.push(cand.to_string());
        }
        i += end.max(1);
    }
    found
}

/// Docs, tests, benches and examples reach loopback only (issue 8, case 12): an example
/// pointing at a private or public address is one a reader might run against a real host.
#[test]
fn docs_tests_and_examples_use_loopback_addresses_only() {
    let mut files = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for dir in ["src", "tests", "bench", "examples", "man", "dist", "fuzz"] {
        files_with(
            &root().join(dir),
            &[
                ".rs", ".md", ".py", ".sh", ".go", ".json", ".hcl", ".1", ".service", ".toml",
            ],
            &mut files,
        );
    }
    let mut bad = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for ip in non_loopback_ipv4(line) {
                bad.push(format!("{}:{}: {ip}", f.display(), n + 1));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "non-loopback addresses:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_address_check_finds_private_and_public_literals() {
    // Built at run time, so this file itself holds no such literal.
    let private = format!("{}.0.0.5", 10);
    let home = format!("{}.168.1.1", 192);
    assert_eq!(
        non_loopback_ipv4(&format!("curl {private}:4647")),
        [private]
    );
    assert_eq!(non_loopback_ipv4(&format!("x=\"{home}\"")), [home]);
    assert!(non_loopback_ipv4("127.0.0.1:4646 and 0.0.0.0").is_empty());
    let version = format!("version {}.2.3.4-beta", 1);
    assert!(non_loopback_ipv4(&version).is_empty());
    assert!(non_loopback_ipv4("a1.2.3.4 v1.2.3.4").is_empty());
}

/// Every config key nomadlet accepts but ignores is listed in README (issue 9: such keys are
/// accepted only if documented).
#[test]
fn every_ignored_config_key_is_listed_in_readme() {
    let src = std::fs::read_to_string(root().join("src/config/file.rs")).unwrap();
    let start = src.find("pub const IGNORED_KEYS").expect("IGNORED_KEYS");
    let end = start + src[start..].find("];").expect("end of IGNORED_KEYS");
    let keys: Vec<&str> = src[start..end]
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix("\","))
        .collect();
    assert!(keys.len() > 10, "{keys:?}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for k in keys {
        assert!(
            readme.contains(&format!("`{k}`")),
            "README must list the ignored config key `{k}`"
        );
    }
}
