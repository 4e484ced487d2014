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

/// `text` with comments, string literals (plain, raw, byte) and char literals blanked out, so
/// only code tokens remain; line breaks are kept, so line numbers stay. Lifetimes (`'a`) are
/// kept as code.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // The line breaks inside the skipped span `from..to`.
    let breaks = |from: usize, to: usize| {
        "\n".repeat(
            c[from..to.min(c.len())]
                .iter()
                .filter(|&&x| x == '\n')
                .count(),
        )
    };
    while i < c.len() {
        let rest = |k: usize| c.get(i + k).copied();
        if c[i] == '/' && rest(1) == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && rest(1) == Some('*') {
            let start = i;
            let mut depth = 0;
            while i < c.len() {
                let next = c.get(i + 1).copied();
                if c[i] == '/' && next == Some('*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && next == Some('/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            out.push_str(&breaks(start, i));
        } else if c[i] == 'r'
            && matches!(rest(1), Some('"') | Some('#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string r#"..."#: count the hashes, find the quote followed by as many.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|h| c.get(j + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            out.push_str(&breaks(i, j));
            i = j;
        } else if c[i] == '"' {
            let start = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
            out.push_str(&breaks(start, i));
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{75}') or a lifetime ('a).
            if rest(1) == Some('\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if rest(2) == Some('\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Lines (1-based) where the identifier `word` stands on its own (not `word_x`, not `xword`).
fn word_lines(text: &str, word: &str) -> Vec<usize> {
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find(word) {
            let start = from + at;
            let end = start + word.len();
            let before = line[..start].chars().next_back();
            let after = line[end..].chars().next();
            if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
                found.push(n + 1);
                break;
            }
            from = end;
        }
    }
    found
}

/// The one keyword this check is about, built at run time so this file holds it only in text.
fn keyword() -> String {
    ["un", "safe"].concat()
}

/// Issue 9: raw system calls live in `src/sys/` only. Outside it no Rust file of the crate,
/// its tests or its fuzz targets holds the keyword as a code token, and no line of `src/`
/// outside `src/sys/` holds it at all (not even in a comment or a string), so a plain grep
/// finds every such block. The crate roots also deny it to the compiler.
#[test]
fn the_keyword_for_raw_system_calls_appears_only_in_src_sys() {
    let kw = keyword();
    let sys = root().join("src").join("sys");
    let mut bad = Vec::new();
    for dir in ["src", "tests", "fuzz"] {
        let mut files = Vec::new();
        files_with(&root().join(dir), &[".rs"], &mut files);
        for f in files {
            if f.starts_with(&sys) {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let lines = if dir == "src" {
                word_lines(&text, &kw)
            } else {
                word_lines(&code_only(&text), &kw)
            };
            for n in lines {
                bad.push(format!("{}:{n}", f.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "`{kw}` outside src/sys (move the call into a safe function there):\n{}",
        bad.join("\n")
    );
    let deny = format!("#![deny({kw}_code)]");
    for root_file in ["src/lib.rs", "src/main.rs"] {
        let text = std::fs::read_to_string(root().join(root_file)).unwrap();
        assert!(text.contains(&deny), "{root_file} must carry {deny}");
    }
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let allowed: Vec<&str> = lib
        .lines()
        .filter(|l| l.contains(&format!("allow({kw}_code)")))
        .collect();
    assert_eq!(allowed.len(), 1, "only `mod sys` may allow it: {allowed:?}");
    assert!(
        lib.contains(&format!("#[allow({kw}_code)]\nmod sys;")),
        "the one allow must stand on `mod sys`"
    );
}

/// Every such block in src/sys explains itself: a `// SAFETY:` comment on its line or in the
/// comment lines right above it.
#[test]
fn every_block_in_src_sys_has_a_safety_comment() {
    let kw = keyword();
    let mut files = Vec::new();
    files_with(&root().join("src/sys"), &[".rs"], &mut files);
    let mut bad = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let code = code_only(&text);
        let lines: Vec<&str> = text.lines().collect();
        for n in word_lines(&code, &kw) {
            let above = lines[..n - 1]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"));
            let explained = lines[n - 1].contains("SAFETY:")
                || above.into_iter().any(|l| l.contains("SAFETY:"));
            if !explained {
                bad.push(format!("{}:{n}", f.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "blocks without `// SAFETY:`:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_keyword_scan_sees_code_and_skips_literals_and_comments() {
    let kw = keyword();
    let code = format!("fn f() {{ {kw} {{ g() }} }}\nlet s = \"{kw}-inline\";\n// {kw}\n");
    assert_eq!(word_lines(&code_only(&code), &kw), [1]);
    let raw =
        format!("let s = r#\"a \" {kw} \"#; let c = '\"'; let l: &'a str = x; {kw} fn h() {{}}");
    assert_eq!(word_lines(&code_only(&raw), &kw), [1]);
    let not_it = format!("#![deny({kw}_code)] let not_{kw} = 1; let {kw}r = 2;");
    assert!(word_lines(&not_it, &kw).is_empty());
    let nested = format!("/* a /* {kw} */ still comment {kw} */ x");
    assert!(word_lines(&code_only(&nested), &kw).is_empty());
    assert_eq!(word_lines(&format!("a\nx {kw} y"), &kw), [2]);
    let spans = format!("/* a\nb */ \"c\nd\" r\"e\nf\"\n{kw}");
    assert_eq!(
        word_lines(&code_only(&spans), &kw),
        [5],
        "line numbers survive"
    );
}

/// Files of `src/` that may still spell `Result<_, String>`, each with the reason. Issue 9:
/// domain modules return domain errors (one type per module, carrying their cause) and only
/// `src/api/` turns them into statuses and texts; a bare `String` error carries no cause and
/// no kind a caller could match on. Keep this list short and shrinking.
const STRING_ERRORS_ALLOWED: &[(&str, &str)] = &[
    // src/api is the layer that makes Nomad's texts: these private helpers return the text
    // (a Go-style dial/read error, a bexpr parse message) that becomes the reply body.
    (
        "src/api/agent.rs",
        "get_from: Go's dial/read text for a peer server",
    ),
    (
        "src/api/filter.rs",
        "bexpr tokenizer/parser messages, wrapped in FilterError",
    ),
    (
        "src/api/forward.rs",
        "relay: the text of `rpc error: ...` replies",
    ),
];

/// `(line, the Result type as written)` for every `Result<T, String>` in `code` (comments and
/// literals already blanked by [`code_only`]); generics nest, `->` inside is not a bracket,
/// and the type may span lines.
fn string_error_results(code: &str) -> Vec<(usize, String)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 6 < c.len() {
        let starts = c[i..].starts_with(&['R', 'e', 's', 'u', 'l', 't'])
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 6;
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        if c.get(j) != Some(&'<') {
            i += 1;
            continue;
        }
        let (mut depth, mut k, mut commas) = (1, j + 1, Vec::new());
        while k < c.len() && depth > 0 {
            match c[k] {
                '<' | '(' | '[' => depth += 1,
                '>' if c[k - 1] == '-' => {}
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 1 => commas.push(k),
                _ => {}
            }
            k += 1;
        }
        // A trailing comma (`Result<\n T,\n E,\n>`) ends no argument.
        let mut end = k - 1;
        if let [.., before, last] = commas[..] {
            if c[last + 1..k - 1].iter().all(|x| x.is_whitespace()) {
                commas = vec![before];
                end = last;
            }
        }
        if let Some(&comma) = commas.last() {
            let err: String = c[comma + 1..end].iter().collect();
            let err: String = err.split_whitespace().collect();
            if matches!(
                err.as_str(),
                "String" | "std::string::String" | "alloc::string::String"
            ) {
                let line = c[..i].iter().filter(|&&x| x == '\n').count() + 1;
                let text: String = c[i..k].iter().collect();
                out.push((line, text.split_whitespace().collect::<Vec<_>>().join(" ")));
            }
        }
        i = k.max(i + 1);
    }
    out
}

/// Issue 9 item 3: no function, field or alias in `src/` has a `String` as its error type,
/// outside [`STRING_ERRORS_ALLOWED`] and test code; and every entry there still needs to be
/// there.
#[test]
fn no_string_errors_in_src() {
    let mut files = Vec::new();
    files_with(&root().join("src"), &[".rs"], &mut files);
    let mut bad = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for f in files {
        let rel = f
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // Test code is not an interface: `tests.rs` modules and a trailing test module.
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = code_only(&text);
        let code = code.split("#[cfg(test)]\nmod ").next().unwrap_or(&code);
        let hits = string_error_results(code);
        if hits.is_empty() {
            continue;
        }
        if STRING_ERRORS_ALLOWED.iter().any(|(p, _)| *p == rel) {
            used.insert(rel);
            continue;
        }
        for (line, ty) in hits {
            bad.push(format!("{rel}:{line}: {ty}"));
        }
    }
    assert!(
        bad.is_empty(),
        "`Result<_, String>` in src/ (give the module an error enum whose Display is the \
         text, with source() for its cause):\n{}",
        bad.join("\n")
    );
    let stale: Vec<&str> = STRING_ERRORS_ALLOWED
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !used.contains(*p))
        .collect();
    assert!(
        stale.is_empty(),
        "allowed but free of String errors now; take them off STRING_ERRORS_ALLOWED: {stale:?}"
    );
}

#[test]
fn the_string_error_scan_sees_nested_and_split_types_only() {
    let code = "fn a() -> Result<Vec<String>, String> {}\n\
                fn b() -> Result<String, Error> {}\n\
                fn c() -> Result<\n    (u16, Vec<u8>),\n    String,\n> {}\n\
                type F = Result<fn(u8) -> u8, std::string::String>;\n\
                fn d() -> io::Result<String> {}\n\
                let e: Result<(), MyString> = x; struct NotResult<T, String>;";
    let hits = string_error_results(&code_only(code));
    let lines: Vec<usize> = hits.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [1, 3, 7], "{hits:?}");
    assert_eq!(hits[0].1, "Result<Vec<String>, String>");
    let in_text = "let s = \"Result<(), String>\"; // Result<u8, String>\n";
    assert!(string_error_results(&code_only(in_text)).is_empty());
}
