//! Jobspec tests: Nomad's block layout, variables and functions, runtime interpolations kept,
//! errors, and the bounds' worst case on a connection-sized stack.

use super::*;
use serde_json::json;

fn p(text: &str) -> Result<Value, JobspecError> {
    parse(&Input {
        text,
        ..Input::default()
    })
}

#[test]
fn blocks_map_to_nomads_json_job() {
    let job = p(r#"
job "web" {
  datacenters = ["dc1"]
  type = "service"
  meta { team = "red" }
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  constraint { distinct_hosts = true }
  group "g" {
    count = 2
    restart {
      attempts = 1
      delay    = "5s"
      mode     = "delay"
    }
    network {
      port "http" { to = 8080 }
      port "admin" { static = 9000 }
    }
    ephemeral_disk { size = 100 }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo ${NOMAD_ALLOC_DIR}"]
      }
      env { A = 1 }
      resources {
        cpu        = 50
        memory     = 64
        memory_max = 128
      }
      kill_timeout = "10s"
      lifecycle { hook = "prestart" }
      identity { env = true }
      identity "vault" { aud = ["v"] }
    }
  }
}
"#)
    .unwrap();
    assert_eq!(job["ID"], "web");
    assert_eq!(job["Name"], "web");
    assert_eq!(job["Meta"], json!({"team": "red"}));
    assert_eq!(
        job["Constraints"],
        json!([{"LTarget": "${attr.kernel.name}", "RTarget": "linux"}, {"Operand": "distinct_hosts"}])
    );
    let g = &job["TaskGroups"][0];
    assert_eq!(g["Name"], "g");
    assert_eq!(g["Count"], 2);
    assert_eq!(
        g["RestartPolicy"],
        json!({"Attempts": 1, "Delay": 5_000_000_000i64, "Mode": "delay"})
    );
    assert_eq!(
        g["Networks"],
        json!([{"ReservedPorts": [{"Label": "admin", "Value": 9000}],
                "DynamicPorts": [{"Label": "http", "To": 8080}]}])
    );
    assert_eq!(g["EphemeralDisk"], json!({"SizeMB": 100}));
    let t = &g["Tasks"][0];
    assert_eq!(
        t["Config"]["args"],
        json!(["-c", "echo ${NOMAD_ALLOC_DIR}"])
    );
    assert_eq!(t["Env"], json!({"A": "1"}));
    assert_eq!(
        t["Resources"],
        json!({"CPU": 50, "MemoryMB": 64, "MemoryMaxMB": 128})
    );
    assert_eq!(t["KillTimeout"], 10_000_000_000i64);
    assert_eq!(t["Lifecycle"], json!({"Hook": "prestart"}));
    assert_eq!(t["Identity"], json!({"Env": true}));
    assert_eq!(
        t["Identities"],
        json!([{"Audience": ["v"], "Name": "vault"}])
    );
}

#[test]
fn variables_locals_and_functions() {
    let text = r#"
variable "dc" { default = "dc1" }
variable "count" { type = number }
variable "tags" {
  type    = list(string)
  default = ["a"]
}
locals { name = upper(var.dc) }
job "j" {
  datacenters = [var.dc]
  meta {
    n    = local.name
    tags = join(",", concat(var.tags, ["b"]))
    f    = format("%s-%d", var.dc, var.count * 2)
    l    = length(var.tags)
  }
  group "g" {
    count = var.count > 1 ? var.count : 1
  }
}
"#;
    let job = parse(&Input {
        text,
        var_files: vec![("v.hcl".into(), "dc = \"edge\"\n".into())],
        vars: vec![("count".into(), "3".into())],
        ..Input::default()
    })
    .unwrap();
    assert_eq!(job["Datacenters"], json!(["edge"]));
    assert_eq!(
        job["Meta"],
        json!({"n": "EDGE", "tags": "a,b", "f": "edge-6", "l": "1"})
    );
    assert_eq!(job["TaskGroups"][0]["Count"], 3);
    // NOMAD_VAR_ values set declared variables only, below var files and -var.
    let job = parse(&Input {
        text,
        env_vars: vec![
            ("dc".into(), "from-env".into()),
            ("count".into(), "4".into()),
            ("undeclared".into(), "x".into()),
        ],
        vars: vec![("count".into(), "5".into())],
        ..Input::default()
    })
    .unwrap();
    assert_eq!(job["Datacenters"], json!(["from-env"]));
    assert_eq!(job["TaskGroups"][0]["Count"], 5);
}

#[test]
fn errors_read_like_nomads() {
    let e = p("variable \"x\" {}\njob \"j\" {}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("Unset variable \"x\""), "{e}");
    let e = p("job \"j\" {\n  bogus = 1\n}").unwrap_err().to_string();
    assert_eq!(
        e,
        "input.hcl:2,3: Unsupported argument; An argument named \"bogus\" is not expected here."
    );
    let e = p("job \"j\" {\n group \"g\" {\n tusk \"t\" {}\n }\n}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Blocks of type \"tusk\" are not expected here"),
        "{e}"
    );
    let e = p("job \"j\" {\n  type = = 1\n}").unwrap_err().to_string();
    assert!(e.starts_with("input.hcl:2,"), "{e}");
    let e = p("job \"j\" {\n group \"g\" {\n count = \"many\"\n }\n}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Inappropriate value for attribute \"count\""),
        "{e}"
    );
    let e = p("").unwrap_err().to_string();
    assert!(e.contains("Missing job block"), "{e}");
    let e = parse(&Input {
        text: "job \"j\" {}",
        vars: vec![("nope".into(), "1".into())],
        ..Input::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("Undefined -var variable"), "{e}");
}

#[test]
fn hostile_text_is_refused_before_parsing() {
    let deep = format!(
        "job \"j\" {{ meta = {{ a = {}1{} }} }}",
        "[".repeat(500),
        "]".repeat(500)
    );
    let e = p(&deep).unwrap_err();
    assert!(matches!(e, JobspecError::Bounds { .. }), "{e}");
    let big = format!(
        "job \"j\" {{\n meta {{\n a = \"{}\"\n }}\n}}",
        "x".repeat(JOBSPEC_MAX_BYTES)
    );
    assert!(matches!(p(&big), Err(JobspecError::TooLarge { .. })));
    let huge = "variable \"s\" { default = \"xxxxxxxxxxxxxxxx\" }\njob \"j\" {\n meta {\n a = format(\"%s%s%s%s\", var.s, var.s, var.s, var.s)\n }\n}";
    assert!(p(huge).is_ok());
}

#[test]
fn template_heredocs_become_embedded_templates() {
    let job = p("variable \"port\" {\n  default = 8080\n}\njob \"t\" {\n  group \"g\" {\n    task \"t\" {\n      template {\n        destination = \"local/app.conf\"\n        data        = <<-EOH\n          port = ${var.port}\n          dir  = \"${NOMAD_TASK_DIR}\"\n          {{ key \"x\" }}\n        EOH\n      }\n      bogus = 1\n    }\n  }\n}\n");
    let e = job.unwrap_err().to_string();
    // The line numbers after the heredoc are those of the file.
    assert!(e.starts_with("input.hcl:15,7: Unsupported argument"), "{e}");
    let job = p("job \"t\" {\n  group \"g\" {\n    task \"t\" {\n      template {\n        data = <<EOH\nport = 1\nEOH\n      }\n    }\n  }\n}\n").unwrap();
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Templates"],
        json!([{"EmbeddedTmpl": "port = 1\n"}])
    );
    let job = p("variable \"port\" {\n  default = 8080\n}\njob \"t\" {\n  group \"g\" {\n    task \"t\" {\n      template {\n        data = <<-EOH\n          port = ${var.port}\n          dir  = \"${NOMAD_TASK_DIR}\"\n        EOH\n      }\n    }\n  }\n}\n").unwrap();
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Templates"][0]["EmbeddedTmpl"],
        "port = 8080\ndir  = \"${NOMAD_TASK_DIR}\"\n"
    );
}

/// A small jobspec naming a large variable many times (directly, in lists, through functions
/// and for-expressions) is refused before the copies are made.
#[test]
fn references_cannot_amplify_memory() {
    let big = "x".repeat(100 * 1024);
    let refs = "var.s, ".repeat(2000);
    for attack in [
        format!("a = [{refs}]"),
        format!("a = concat([{refs}])"),
        format!("a = join(\"\", [{refs}])"),
        "a = [for i in var.l : var.s]".to_string(),
        format!("a = \"{}\"", "${var.s}".repeat(1000)),
    ] {
        let text = format!(
            "variable \"s\" {{\n default = \"{big}\"\n}}\nvariable \"l\" {{\n default = [{}]\n}}\njob \"j\" {{\n meta {{\n {attack}\n }}\n}}\n",
            "1,".repeat(1000)
        );
        let e = p(&text).unwrap_err().to_string();
        assert!(e.contains("too large when evaluated"), "{attack:.40}: {e}");
    }
    // Ordinary use of the same variable is fine.
    let text = format!(
        "variable \"s\" {{\n default = \"{big}\"\n}}\njob \"j\" {{\n meta {{\n a = var.s\n b = upper(var.s)\n }}\n}}\n"
    );
    assert!(p(&text).is_ok());
}

/// The deepest and most operator-heavy jobspec the bounds let through parses and evaluates
/// on a thread with the connection threads' stack.
#[test]
fn worst_case_fits_the_connection_stack() {
    const CONN_STACK: usize = 512 * 1024;
    let depth = JOBSPEC_MAX_DEPTH - 4;
    let ops = JOBSPEC_MAX_OPERATORS;
    let text = format!(
        "job \"j\" {{\n group \"g\" {{\n  task \"t\" {{\n   config {{\n x = {}1{}\n y = 1{}\n }}\n}}\n}}\n}}\n",
        "[".repeat(depth),
        "]".repeat(depth),
        "+1".repeat(ops)
    );
    assert!(
        check_hcl(&text, JOBSPEC_LIMITS).is_ok(),
        "the case must be within the limits"
    );
    let ok = std::thread::Builder::new()
        .stack_size(CONN_STACK / 2)
        .spawn(move || p(&text).map(|_| ()))
        .unwrap()
        .join()
        .unwrap();
    assert!(ok.is_ok(), "{ok:?}");
}

/// Every `examples/*.nomad.hcl` has its JSON twin beside it (and every JSON example its HCL
/// twin), and both describe the same job once Nomad's defaults are applied.
#[test]
fn every_example_parses_to_the_json_beside_it() {
    use crate::state::jobs::spec::Job;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (hcl_path, json_path) = if let Some(stem) = name.strip_suffix(".nomad.hcl") {
            (path.clone(), dir.join(format!("{stem}.json")))
        } else if let Some(stem) = name.strip_suffix(".json") {
            (dir.join(format!("{stem}.nomad.hcl")), path.clone())
        } else {
            panic!("{name}: examples hold only .nomad.hcl and .json twins");
        };
        let text = std::fs::read_to_string(&hcl_path)
            .unwrap_or_else(|e| panic!("{}: {e}", hcl_path.display()));
        let json_text = std::fs::read_to_string(&json_path)
            .unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
        let parsed = parse(&Input {
            text: &text,
            file: &name,
            ..Input::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let want: Value = serde_json::from_str(&json_text).unwrap();
        let canon = |v: Value| {
            let mut j = Job::from_json(v).unwrap();
            j.canonicalize("global");
            serde_json::to_value(j).unwrap()
        };
        assert_eq!(canon(parsed), canon(want["Job"].clone()), "{name}");
        seen += 1;
    }
    assert!(seen >= 4, "expected the examples, saw {seen} files");
}

/// Mutated examples (bytes flipped, cut, or HCL's nesting and heredoc tokens inserted) never
/// panic or overflow a 256 KiB stack: each is either a job or an error.
#[test]
fn mutated_jobspecs_never_panic_on_a_small_stack() {
    let base = [
        include_str!("../../examples/hello.nomad.hcl"),
        include_str!("../../examples/taskapi-example.nomad.hcl"),
    ];
    let ok = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let tokens: &[&str] = &[
                "[",
                "]",
                "{",
                "}",
                "${",
                "\"",
                "<<EOF\n",
                "\nEOF\n",
                "%{",
                "(",
                "-",
                "?",
                ":",
                "var.",
                "local.",
                "upper(",
                "\n",
                "=",
                "#",
                "/*",
                "\\",
                "job \"x\" {\n",
            ];
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut parsed = 0;
            for round in 0..20000 {
                let mut text = base[round % base.len()].as_bytes().to_vec();
                for _ in 0..(1 + next() % 6) {
                    let at = (next() as usize) % (text.len() + 1);
                    match next() % 3 {
                        0 => {
                            let t = tokens[(next() as usize) % tokens.len()];
                            for _ in 0..(1 + next() % 20) {
                                text.splice(at..at, t.bytes());
                            }
                        }
                        1 if at < text.len() => text[at] = (next() % 128) as u8,
                        _ => text.truncate(at),
                    }
                }
                let text = String::from_utf8_lossy(&text).into_owned();
                if p(&text).is_ok() {
                    parsed += 1;
                }
            }
            parsed
        })
        .unwrap()
        .join();
    let parsed = ok.expect("a mutated jobspec panicked");
    // Enough mutants stay valid for the evaluator and the block mapping to be exercised too.
    assert!(parsed > 200, "only {parsed} of 20000 mutants parsed");
}
