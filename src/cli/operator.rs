//! `operator api PATH`: a curl-like request with the CLI's address, token, region and
//! namespace; `-X` method, `-H` headers, the body from stdin when stdin is not a terminal
//! (then the method defaults to POST), the response body copied to stdout as it arrives.
//! `operator snapshot save|restore FILE`: the servers' state to a file (written to a temp
//! file, checked against the `Digest` header, synced, renamed) and back.

use std::io::{IsTerminal, Read, Write};

use super::{api, flag, http, multi, opt, positional, CliError, Command, Ctx, Endpoint};

/// Largest request body read from stdin.
pub const MAX_STDIN_BODY: usize = 16 * 1024 * 1024;

pub const API: Command = Command {
    group: "operator",
    name: "api",
    synopsis: "Query Nomad's HTTP API like curl, with the CLI's address and token",
    usage: "nomadlet operator api [options] <path>",
    flags: &[
        opt(
            "X",
            "METHOD",
            "HTTP method (default GET, or POST when stdin has a body)",
        ),
        multi(
            "H",
            "HEADER",
            "An extra header 'Key: Value' (repeatable; wins over X-Nomad-Token)",
        ),
        opt("filter", "EXPR", "A filter expression, sent as ?filter="),
        flag("verbose", "Print the request and response heads on stderr"),
    ],
    run,
};

fn run(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 1, 1, "exactly one argument: a path or URL")?;
    let verbose = m.opt_present("verbose");
    let mut body = Vec::new();
    let mut method = m.opt_str("X").map(|x| x.to_uppercase());
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        if verbose {
            eprintln!("* Reading request body from stdin.");
        }
        stdin
            .lock()
            .take(MAX_STDIN_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| CliError::Other(format!("Error reading stdin: {e}")))?;
        if body.len() > MAX_STDIN_BODY {
            return Err(CliError::Other(format!(
                "Error reading stdin: larger than {MAX_STDIN_BODY} bytes"
            )));
        }
        if !body.is_empty() && method.is_none() {
            method = Some("POST".into());
        }
    }
    let method = method.unwrap_or_else(|| "GET".into());
    // A path, or a URL naming another agent.
    let (client, mut path) = split_target(ctx, &args[0])?;
    if let Some(f) = m.opt_str("filter") {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&format!("filter={}", http::escape(&f)));
    }
    let mut headers = Vec::new();
    for h in m.opt_strs("H") {
        let (k, v) = h.split_once(':').ok_or_else(|| {
            CliError::Usage(format!(
                "Error parsing flags: Headers must be in the form 'Key: Value' but found: {h:?}"
            ))
        })?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    if verbose {
        eprintln!("> {method} {}{path}", client.endpoint.url());
        for (k, v) in &headers {
            eprintln!("> {k}: {v}");
        }
    }
    let resp = client
        .send(&method, &path, &headers, &body)
        .map_err(api("performing request"))?;
    if verbose {
        eprintln!("< HTTP/1.1 {}", resp.status);
        for (k, v) in &resp.headers {
            eprintln!("< {k}: {v}");
        }
    }
    let mut reader = resp.into_reader();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0usize;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                total += k;
                if out.write_all(&buf[..k]).and_then(|_| out.flush()).is_err() {
                    return Ok(0);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(CliError::Other(format!(
                    "Error reading response after {total} bytes: {e}"
                )))
            }
        }
    }
    Ok(0)
}

/// The client and request path for `target`: `/v1/...` goes to the configured agent;
/// `host:port/v1/...` or `http://host:port/v1/...` to that agent.
fn split_target(ctx: &Ctx, target: &str) -> Result<(super::Client, String), CliError> {
    if target.starts_with('/') {
        return Ok((ctx.client.clone(), target.to_string()));
    }
    let (with_scheme, rest) = match target.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (format!("{}://", ctx.client.endpoint.scheme), target),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let endpoint = Endpoint::parse(&format!("{with_scheme}{host}"))
        .map_err(|e| CliError::Other(format!("Error turning path into URL: {e}")))?;
    let mut client = ctx.client.clone();
    client.endpoint = endpoint;
    Ok((client, path))
}

/// Largest snapshot file `operator snapshot save` takes from the server or `restore` reads.
pub const MAX_SNAPSHOT_FILE: usize = 64 * 1024 * 1024;

pub const SNAPSHOT: Command = Command {
    group: "operator",
    name: "snapshot",
    synopsis: "Save the servers' state to a file, or restore it from one",
    usage: "nomadlet operator snapshot <save|restore> [options] <file>",
    flags: &[flag(
        "stale",
        "save: let any server answer from its own state (not only the leader)",
    )],
    run: run_snapshot,
};

fn run_snapshot(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 2, 2, "two arguments: save or restore, and a file")?;
    let file = std::path::Path::new(&args[1]);
    match args[0].as_str() {
        "save" => snapshot_save(ctx, file, m.opt_present("stale")),
        "restore" => snapshot_restore(ctx, file),
        other => Err(CliError::Usage(format!(
            "Unknown snapshot subcommand {other:?}: use save or restore"
        ))),
    }
}

fn sha256_b64(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::encoding::base64_std(&sha2::Sha256::digest(bytes))
}

fn snapshot_save(ctx: &Ctx, file: &std::path::Path, stale: bool) -> Result<i32, CliError> {
    let path = if stale {
        "/v1/operator/snapshot?stale=true"
    } else {
        "/v1/operator/snapshot"
    };
    let resp = ctx
        .client
        .send("GET", path, &[], b"")
        .map_err(api("saving snapshot"))?;
    let (status, digest) = (resp.status, resp.header("Digest").map(str::to_string));
    let body = resp
        .bytes_limited(MAX_SNAPSHOT_FILE)
        .map_err(|e| CliError::Other(format!("Error saving snapshot: {e}")))?;
    if status != 200 {
        return Err(CliError::Api {
            context: "saving snapshot".into(),
            source: http::HttpError::Status {
                code: status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            },
        });
    }
    if body.len() > MAX_SNAPSHOT_FILE {
        return Err(CliError::Other(format!(
            "Error saving snapshot: larger than {MAX_SNAPSHOT_FILE} bytes"
        )));
    }
    if let Some(d) = digest.as_deref().and_then(|d| d.strip_prefix("sha-256=")) {
        if d != sha256_b64(&body) {
            return Err(CliError::Other(
                "Error saving snapshot: the archive does not match its Digest header".into(),
            ));
        }
    }
    write_file(file, &body)
        .map_err(|e| CliError::Other(format!("Error writing snapshot to {file:?}: {e}")))?;
    println!("State file written to {}", file.display());
    Ok(0)
}

/// Write `data` to `file` whole or not at all: a temp file beside it, synced, renamed.
fn write_file(file: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn snapshot_restore(ctx: &Ctx, file: &std::path::Path) -> Result<i32, CliError> {
    let mut data = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_SNAPSHOT_FILE as u64 + 1).read_to_end(&mut data))
        .map_err(|source| CliError::File {
            path: file.display().to_string(),
            source,
        })?;
    if data.len() > MAX_SNAPSHOT_FILE {
        return Err(CliError::Other(format!(
            "Error reading {file:?}: larger than {MAX_SNAPSHOT_FILE} bytes"
        )));
    }
    let digest = vec![(
        "Digest".to_string(),
        format!("sha-256={}", sha256_b64(&data)),
    )];
    let resp = ctx
        .client
        .send("PUT", "/v1/operator/snapshot", &digest, &data)
        .map_err(api("restoring snapshot"))?;
    let status = resp.status;
    let body = resp.bytes_limited(64 * 1024).unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(CliError::Api {
            context: "restoring snapshot".into(),
            source: http::HttpError::Status {
                code: status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            },
        });
    }
    println!("Snapshot Restored");
    Ok(0)
}
