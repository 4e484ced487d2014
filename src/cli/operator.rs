//! `operator api PATH`: a curl-like request with the CLI's address, token, region and
//! namespace; `-X` method, `-H` headers, the body from stdin when stdin is not a terminal
//! (then the method defaults to POST), the response body copied to stdout as it arrives.

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
