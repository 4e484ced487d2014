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
