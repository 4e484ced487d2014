//! Tests of the pre-scans: each attack is refused just over its limit, and the worst cases
//! just under every limit go through the real parsers on a 256 KiB stack without overflow.

use super::*;
use crate::acl::policy;

/// The smallest thread stack the bounds are proven for (connection threads use Rust's
/// default 2 MiB today; a later change may lower them to this).
const PROOF_STACK: usize = 256 * 1024;

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(PROOF_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn nest(open: &str, inner: &str, close: &str, n: usize) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

/// Rules text for nesting `n` levels of one construct inside `x = ...`, where `n` counts
/// depth units of the pre-scan.
fn attack(kind: &str, n: usize) -> String {
    match kind {
        "[" => format!("x = {}", nest("[", "1", "]", n)),
        "(" => format!("x = {}", nest("(", "1", ")", n)),
        "f(" => format!("x = {}", nest("f(", "1", ")", n)),
        "{a=" => format!("x = {}", nest("{a=", "1", "}", n)),
        // `"${` is two levels: the string and the interpolation.
        "${" => format!("x = {}", nest("\"${", "1", "}\"", n / 2)),
        "block" => nest("a {\n", "policy = \"read\"\n", "}\n", n),
        "-" => format!("x = {}1", "-".repeat(n)),
        "!" => format!("x = {}a", "!".repeat(n)),
        "+" => format!("x = 1{}", "+1".repeat(n)),
        "?:" => format!("x = {}1{}", "a ? ".repeat(n / 2), " : 2".repeat(n / 2)),
        _ => unreachable!(),
    }
}

const DEPTH_KINDS: &[&str] = &["[", "(", "f(", "{a=", "${", "block"];
const OPERATOR_KINDS: &[&str] = &["-", "!", "+", "?:"];

#[test]
fn the_attacks_from_the_issue_are_refused() {
    for (kind, n) in [
        ("[", 400),
        ("${", 600),
        ("{a=", 500),
        ("f(", 500),
        ("(", 1000),
        ("?:", 2000),
        ("+", 1000),
        ("-", 5000),
        ("!", 5000),
    ] {
        let text = attack(kind, n);
        let e = check_hcl(&text, ACL_POLICY_LIMITS).unwrap_err();
        assert!(
            e.reason.contains("deeper than") || e.reason.contains("operators"),
            "{kind}: {e}"
        );
        let e = policy::parse(&text).unwrap_err();
        assert!(e.0.starts_with("At 1:"), "{kind}: {e}");
    }
}

#[test]
fn limits_are_exact() {
    // The `x = ` attribute and its string/interp framing add no depth units of their own
    // except as counted by `attack`.
    for kind in DEPTH_KINDS {
        let over = attack(kind, HCL_MAX_DEPTH + 2);
        assert!(
            check_hcl(&over, ACL_POLICY_LIMITS).is_err(),
            "{kind} over the limit passed"
        );
        let under = attack(kind, HCL_MAX_DEPTH - 2);
        check_hcl(&under, ACL_POLICY_LIMITS)
            .unwrap_or_else(|e| panic!("{kind} under the limit: {e}"));
    }
    for kind in OPERATOR_KINDS {
        let over = attack(kind, HCL_MAX_OPERATORS + 2);
        assert!(
            check_hcl(&over, ACL_POLICY_LIMITS).is_err(),
            "{kind} over the limit passed"
        );
        let under = attack(kind, HCL_MAX_OPERATORS - 2);
        check_hcl(&under, ACL_POLICY_LIMITS)
            .unwrap_or_else(|e| panic!("{kind} under the limit: {e}"));
    }
}

#[test]
fn worst_cases_fit_a_small_stack() {
    let mut cases: Vec<String> = Vec::new();
    for kind in DEPTH_KINDS {
        cases.push(attack(kind, HCL_MAX_DEPTH));
        cases.push(attack(kind, HCL_MAX_DEPTH - 1));
    }
    for kind in OPERATOR_KINDS {
        cases.push(attack(kind, HCL_MAX_OPERATORS));
    }
    // Depth and operators both at their limits, in the most recursive combinations.
    let d = HCL_MAX_DEPTH - 2;
    let ops = HCL_MAX_OPERATORS;
    cases.push(format!(
        "x = {}{}1{}",
        "(".repeat(d),
        "-".repeat(ops),
        ")".repeat(d)
    ));
    cases.push(format!(
        "x = {}{}a{}",
        "f(".repeat(d),
        "!".repeat(ops),
        ")".repeat(d)
    ));
    cases.push(format!(
        "x = {}1{}{}",
        "[".repeat(d),
        "+1".repeat(ops),
        "]".repeat(d)
    ));
    cases.push(format!(
        "x = {}1{}",
        "(a ? ".repeat(ops / 2),
        " : 2)".repeat(ops / 2)
    ));
    cases.push(format!(
        "x = {}{}1{}",
        "\"${".repeat(d / 2),
        "-".repeat(ops),
        "}\"".repeat(d / 2)
    ));
    cases.push(nest(
        "a {\n",
        &format!("x = {}1\n", "-".repeat(ops)),
        "}\n",
        d,
    ));
    // Long chains the scan does not bound must not recurse: traversals, lists, objects.
    cases.push(format!("x = a{}", "[0]".repeat(2000)));
    cases.push(format!("x = a{}", ".b".repeat(2000)));
    cases.push(format!("x = [{}]", "1,".repeat(5000)));
    cases.push(format!("x = {{{}}}", "a = 1\n".repeat(2000)));
    cases.push(format!("x = \"{}\"", "${a}".repeat(2000)));
    cases.push("namespace \"a\" { policy = \"read\" }\n".repeat(2000));
    for text in cases {
        let shown: String = text.chars().take(60).collect();
        let scanned = check_hcl(&text, ACL_POLICY_LIMITS);
        // Whether accepted or not, parsing on the small stack must return.
        let parsed = on_small_stack(move || {
            let r = policy::parse(&text);
            r.is_ok()
        });
        if scanned.is_err() {
            assert!(!parsed, "{shown}: beyond the bounds yet parsed");
        }
    }
}

#[test]
fn strings_and_comments_do_not_count_as_code() {
    let text = r#"
# a comment with ((((((((((((((((((((((((((((((((((((((((((((((((((((((((
// another ----------------------------------------------------------------------
/* block [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ */
namespace "default-(((((((((((((((((((((((((((((((((((((((((((((((" {
  policy       = "read"
  capabilities = ["list-jobs", "read-logs", "alloc-node-exec"]
}
node-pool-x = "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u-v-w-x-y-z-a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r"
escaped = "\"(((((((((((((((((((((((((((((((((((((((((((((((((((( $${ %%{ "
multi = "a string
  over ((((((((((((((((((((((((((((((((((((((((( lines ----------------------------------"
"#;
    check_hcl(text, ACL_POLICY_LIMITS).unwrap();
}

#[test]
fn heredocs_and_unicode_are_never_mistaken_for_text() {
    // hcl-edit tries a heredoc's first line as template text before as its end marker: what
    // looks like the end could hide code from a scan, so heredocs are refused.
    for text in [
        "x = <<EOT\nEOT\n",
        "x = <<EOT\nEOT \"\nEOT\ny = [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]",
        "x = <<-é\n\"\né\n",
    ] {
        let e = check_hcl(text, ACL_POLICY_LIMITS).unwrap_err();
        assert_eq!(e.reason, "heredocs are not allowed here", "{text}");
    }
    // `<<` in a string or comment is text.
    check_hcl("x = \"<<EOT\" # <<EOT\n", ACL_POLICY_LIMITS).unwrap();
    // A non-ASCII character never starts or continues an identifier, so minus signs after
    // it count as operators whatever hcl-edit thinks of the character.
    let e = check_hcl("x = \u{a0}-----1", ACL_POLICY_LIMITS).unwrap_err();
    assert!(e.reason.contains("operators"), "{e}");
    let e = check_hcl("x = a\u{e9}-----1", ACL_POLICY_LIMITS).unwrap_err();
    assert!(e.reason.contains("operators"), "{e}");
}

/// Found by the `hcl_policy` fuzz target (minimised): it overflowed a 256 KiB stack because
/// hcl-edit keeps parsing a `%{if}` body past the closing quote, nesting every later `%{if`.
const FUZZ_DIRECTIVES: &str = "x=\"%{ifW}\"%{ifb}#%{ifW}%{ifb}%{ifb}%{ifW}%{ifW}%{ifb}%{ifb}\
    %{ifb}%{ifb}%{ifb}%{ifb}%{ifW}%{ifb}%{ifb}%{ifb}%{ifW}%{ifW}%{ifW}%{if\"%{ifb}%{ifb}%{if\"\
    %{ifb}%{if-----------------}";

#[test]
fn template_directives_are_refused_even_where_a_scan_would_see_text() {
    let e = check_hcl(FUZZ_DIRECTIVES, ACL_POLICY_LIMITS).unwrap_err();
    assert_eq!(e.reason, "template directives are not allowed here");
    assert!(on_small_stack(|| policy::parse(FUZZ_DIRECTIVES).is_err()));
    let e = check_hcl("x = \"%{ if a }b%{ endif }\"", ACL_POLICY_LIMITS).unwrap_err();
    assert_eq!((e.line, e.column), (1, 6));
    // The escaped forms are text.
    check_hcl("x = \"%%{ if a } $${b}\"", ACL_POLICY_LIMITS).unwrap();
}

#[test]
fn unbalanced_closers_are_refused() {
    for text in ["x = )", "x = [1)", "x = \"${a]\"", "}", "x = {a = (1}"] {
        assert!(check_hcl(text, ACL_POLICY_LIMITS).is_err(), "{text}");
    }
    assert!(check_hcl("x = /* never closed", ACL_POLICY_LIMITS).is_err());
}

#[test]
fn json_depth() {
    let ok = format!(
        "{}{}",
        "[".repeat(JSON_MAX_DEPTH),
        "]".repeat(JSON_MAX_DEPTH)
    );
    check_json_depth(ok.as_bytes(), JSON_MAX_DEPTH).unwrap();
    let deep = "[".repeat(100_000);
    let e = check_json_depth(deep.as_bytes(), JSON_MAX_DEPTH).unwrap_err();
    assert_eq!((e.line, e.column), (1, JSON_MAX_DEPTH + 1));
    let in_string = format!("[\"{}\\\"{}\"]", "[".repeat(500), "{".repeat(500));
    check_json_depth(in_string.as_bytes(), JSON_MAX_DEPTH).unwrap();
    assert!(matches!(
        json_value(deep.as_bytes()),
        Err(JsonBodyError::TooDeep(_))
    ));
    // The deepest body the pre-scan lets through, decoded, cloned, encoded and dropped, fits
    // the small stack even in a debug build (serde_json's own limit, 128, is never reached).
    let n = JSON_MAX_DEPTH;
    let text = format!("{}1{}", "[{\"a\":".repeat(n / 2), "}]".repeat(n / 2));
    let ok = on_small_stack(move || {
        let v = json_value(text.as_bytes()).unwrap();
        let again = v.clone();
        serde_json::to_string(&again).is_ok()
    });
    assert!(ok);
}

/// Prints the smallest stack each 30-deep / 64-operator construct needs in hcl-rs itself
/// (`MODE=hcl cargo test [--release] --lib measure_stack -- --ignored --nocapture`): the
/// per-level costs quoted on [`HclLimits`]. Without `MODE=hcl` it measures `policy::parse`,
/// which refuses these at the pre-scan.
#[test]
#[ignore]
fn measure_stack() {
    let d = 30;
    let ops = 64;
    let cases = vec![
        ("[", format!("x = {}1{}", "[".repeat(d), "]".repeat(d))),
        ("(", format!("x = {}1{}", "(".repeat(d), ")".repeat(d))),
        ("f(", format!("x = {}1{}", "f(".repeat(d), ")".repeat(d))),
        ("{a=", format!("x = {}1{}", "{a=".repeat(d), "}".repeat(d))),
        ("+", format!("x = 1{}", "+1".repeat(ops))),
        ("-", format!("x = {}1", "-".repeat(ops))),
        ("!", format!("x = {}a", "!".repeat(ops))),
        (
            "?:",
            format!("x = {}1{}", "a ? ".repeat(ops / 2), " : 2".repeat(ops / 2)),
        ),
        (
            "${",
            format!("x = {}1{}", "\"${".repeat(d / 2), "}\"".repeat(d / 2)),
        ),
        (
            "%{",
            format!(
                "x = \"{}x{}\"",
                "%{if a}".repeat(ops / 2),
                "%{endif}".repeat(ops / 2)
            ),
        ),
        ("block", nest("a {\n", "policy = \"read\"\n", "}\n", d)),
    ];
    for (name, text) in cases {
        let mut lo = 16 * 1024;
        let mut hi = 16 * 1024 * 1024;
        while hi - lo > 4096 {
            let mid = (lo + hi) / 2;
            let t = text.clone();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "parse_bounds::tests::probe",
                    "--ignored",
                    "--nocapture",
                ])
                .env("PROBE_TEXT", &t)
                .env("PROBE_STACK", mid.to_string())
                .env("PROBE_MODE", std::env::var("MODE").unwrap_or_default())
                .output()
                .unwrap();
            if out.status.success() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        eprintln!("MEASURE {name}: {} KiB", hi / 1024);
    }
}

/// One measurement of `measure_stack`, in a child process (an overflow aborts it).
#[test]
#[ignore]
fn probe() {
    let Ok(text) = std::env::var("PROBE_TEXT") else {
        return;
    };
    let stack: usize = std::env::var("PROBE_STACK").unwrap().parse().unwrap();
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            if std::env::var("PROBE_MODE").as_deref() == Ok("hcl") {
                let _ = hcl::parse(&text);
            } else {
                let _ = policy::parse(&text);
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
