//! The `nomad`-style command line in the same binary: `nomadlet job|alloc|node|server|operator
//! ...`, with `NOMAD_ADDR`, `NOMAD_TOKEN`, `NOMAD_REGION`, `NOMAD_NAMESPACE` (and the TLS
//! variables, kept for a TLS connector) and `-address`/`-token`/`-region`/`-namespace`. Every
//! command is one blocking HTTP exchange (or a few) over `http::Client`; output follows the
//! `nomad` CLI's layout.

mod alloc;
mod exec_ws;
mod format;
mod http;
mod job;
mod job_history;
mod node;
mod operator;

use std::fmt;

use serde_json::Value;

pub use http::{Client, Connector, Endpoint, HttpError, Stream};

/// `NOMAD_ADDR` when unset.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:4646";

/// Exit code of a failed command.
pub const EXIT_ERROR: i32 = 1;

/// Exit code of `job run` when the evaluation could not place every allocation.
pub const EXIT_PLACEMENT_FAILURE: i32 = 2;

/// A flag a command takes: `-name` or `-name VALUE` (repeatable when `multi`).
pub struct Flag {
    pub name: &'static str,
    pub value: Option<&'static str>,
    pub multi: bool,
    pub help: &'static str,
}

const fn flag(name: &'static str, help: &'static str) -> Flag {
    Flag {
        name,
        value: None,
        multi: false,
        help,
    }
}

const fn opt(name: &'static str, value: &'static str, help: &'static str) -> Flag {
    Flag {
        name,
        value: Some(value),
        multi: false,
        help,
    }
}

const fn multi(name: &'static str, value: &'static str, help: &'static str) -> Flag {
    Flag {
        name,
        value: Some(value),
        multi: true,
        help,
    }
}

/// Flags every command takes (Nomad's "General Options").
pub const COMMON_FLAGS: &[Flag] = &[
    opt(
        "address",
        "ADDR",
        "The agent's HTTP address (NOMAD_ADDR; default http://127.0.0.1:4646)",
    ),
    opt("token", "TOKEN", "The ACL token's secret ID (NOMAD_TOKEN)"),
    opt(
        "region",
        "REGION",
        "The region to send the request to (NOMAD_REGION)",
    ),
    opt("namespace", "NS", "The target namespace (NOMAD_NAMESPACE)"),
    opt(
        "ca-cert",
        "FILE",
        "CA certificate to verify the agent with (NOMAD_CACERT)",
    ),
    opt(
        "client-cert",
        "FILE",
        "Client certificate for mutual TLS (NOMAD_CLIENT_CERT)",
    ),
    opt(
        "client-key",
        "FILE",
        "Client key for mutual TLS (NOMAD_CLIENT_KEY)",
    ),
    opt(
        "tls-server-name",
        "NAME",
        "Server name to verify (NOMAD_TLS_SERVER_NAME)",
    ),
    flag(
        "tls-skip-verify",
        "Do not verify the agent's certificate (NOMAD_SKIP_VERIFY)",
    ),
];

/// One command: its group and name, synopsis, usage line, own flags and code.
pub struct Command {
    pub group: &'static str,
    pub name: &'static str,
    pub synopsis: &'static str,
    pub usage: &'static str,
    pub flags: &'static [Flag],
    run: fn(&Ctx, &getopts::Matches) -> Result<i32, CliError>,
}

/// Every CLI command.
pub const COMMANDS: &[Command] = &[
    job::RUN,
    job::STATUS,
    job::STOP,
    job_history::HISTORY,
    job_history::REVERT,
    job_history::SCALE,
    alloc::STATUS,
    alloc::LOGS,
    alloc::EXEC,
    node::STATUS,
    node::DRAIN,
    node::ELIGIBILITY,
    node::MEMBERS,
    operator::API,
    operator::SNAPSHOT,
];

/// The command groups, in `-h` order.
pub const GROUPS: &[(&str, &str)] = &[
    ("job", "Interact with jobs"),
    ("alloc", "Interact with allocations"),
    ("node", "Interact with nodes"),
    ("server", "Interact with servers"),
    (
        "operator",
        "Provides cluster-level tools for Nomad operators",
    ),
];

/// TLS settings from the environment and flags, for a connector that speaks TLS.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub server_name: Option<String>,
    pub skip_verify: bool,
}

/// What a command runs with.
pub struct Ctx {
    pub client: Client,
    pub tls: TlsSettings,
}

/// Why a command failed; printed as one `Error …` paragraph on stderr.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags or arguments; the usage follows.
    Usage(String),
    /// An API call failed; `context` says what was being done ("querying job").
    Api { context: String, source: HttpError },
    /// A local file could not be read.
    File {
        path: String,
        source: std::io::Error,
    },
    /// Any other failure with its full text.
    Other(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Other(m) => f.write_str(m),
            CliError::Api { context, source } => write!(f, "Error {context}: {source}"),
            CliError::File { path, source } => write!(f, "Error reading {path:?}: {source}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Api { source, .. } => Some(source),
            CliError::File { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `map_err` helper: an API failure while `context`.
pub fn api(context: &str) -> impl Fn(HttpError) -> CliError + '_ {
    move |source| CliError::Api {
        context: context.to_string(),
        source,
    }
}

/// Whether `args[0]` names a CLI group (so `main` hands the command line over).
pub fn is_cli_group(name: &str) -> bool {
    GROUPS.iter().any(|(g, _)| *g == name)
}

/// The groups as `-h` lists them.
pub fn groups_help() -> String {
    GROUPS
        .iter()
        .map(|(g, h)| format!("    {g:<10} {h}\n"))
        .collect()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn usage_of(cmd: &Command) -> String {
    let mut s = format!(
        "Usage: {}\n\n  {}\n\nGeneral Options:\n\n",
        cmd.usage, cmd.synopsis
    );
    let line = |f: &Flag| match f.value {
        Some(v) => format!("  -{} <{}>\n    {}\n", f.name, v, f.help),
        None => format!("  -{}\n    {}\n", f.name, f.help),
    };
    for f in COMMON_FLAGS {
        s.push_str(&line(f));
    }
    if !cmd.flags.is_empty() {
        s.push_str("\nCommand Options:\n\n");
        for f in cmd.flags {
            s.push_str(&line(f));
        }
    }
    s
}

fn group_usage(group: &str) -> String {
    let mut s = format!("Usage: nomadlet {group} <subcommand> [options] [args]\n\nSubcommands:\n");
    for c in COMMANDS.iter().filter(|c| c.group == group) {
        s.push_str(&format!("    {:<10} {}\n", c.name, c.synopsis));
    }
    s
}

/// The connector for an endpoint: `None` keeps the built-in one (TCP for `http`, Unix
/// sockets); `https` dials through `tls::client` (rustls), verifying the agent as `tls`
/// (NOMAD_CACERT & co) says. Nothing else in the CLI knows about TLS.
fn connector_for(endpoint: &Endpoint, tls: &TlsSettings) -> Option<Connector> {
    if endpoint.scheme != "https" {
        return None;
    }
    let tls = crate::tls::client::CliTls {
        ca_cert: tls.ca_cert.clone().map(Into::into),
        client_cert: tls.client_cert.clone().map(Into::into),
        client_key: tls.client_key.clone().map(Into::into),
        server_name: tls.server_name.clone(),
        skip_verify: tls.skip_verify,
    };
    Some(std::sync::Arc::new(move |e: &Endpoint| {
        let s = tls
            .dial(
                &e.host,
                e.port,
                http::CONNECT_TIMEOUT,
                Some(http::IO_TIMEOUT),
            )
            .map_err(std::io::Error::other)?;
        Ok(Box::new(s) as Box<dyn http::Stream>)
    }))
}

/// Run `nomadlet <group> <command> …` (`args` starts at the group); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let Some(group) = args.first() else {
        return EXIT_ERROR;
    };
    let sub = args.get(1).map(String::as_str);
    let Some(cmd) = COMMANDS
        .iter()
        .find(|c| c.group == group && Some(c.name) == sub)
    else {
        let help = matches!(sub, Some("-h" | "-help" | "--help"));
        if help {
            print!("{}", group_usage(group));
            return 0;
        }
        if let Some(other) = sub {
            eprintln!("Unknown command: nomadlet {group} {other}\n");
        }
        eprint!("{}", group_usage(group));
        return EXIT_ERROR;
    };
    let rest = &args[2..];
    if rest
        .iter()
        .any(|a| a == "-h" || a == "-help" || a == "--help")
    {
        print!("{}", usage_of(cmd));
        return 0;
    }
    let mut opts = getopts::Options::new();
    opts.long_only(true);
    if cmd.group == "alloc" && cmd.name == "exec" {
        // The remote command's own flags (`sh -c …`) are not ours.
        opts.parsing_style(getopts::ParsingStyle::StopAtFirstFree);
    }
    for f in COMMON_FLAGS.iter().chain(cmd.flags) {
        // Single-letter flags (`-X`, `-H`, `-f`) are getopts short options.
        let (short, long) = if f.name.len() == 1 {
            (f.name, "")
        } else {
            ("", f.name)
        };
        match (f.value, f.multi) {
            (None, _) => opts.optflag(short, long, f.help),
            (Some(v), true) => opts.optmulti(short, long, f.help, v),
            (Some(v), false) => opts.optopt(short, long, f.help, v),
        };
    }
    let m = match opts.parse(rest) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("Error parsing flags: {e}\n");
            eprint!("{}", usage_of(cmd));
            return EXIT_ERROR;
        }
    };
    let address = m
        .opt_str("address")
        .or_else(|| env("NOMAD_ADDR"))
        .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
    let endpoint = match Endpoint::parse(&address) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("Error initializing client: {e}");
            return EXIT_ERROR;
        }
    };
    let mut client = Client::new(endpoint);
    client.token = m.opt_str("token").or_else(|| env("NOMAD_TOKEN"));
    client.region = m.opt_str("region").or_else(|| env("NOMAD_REGION"));
    client.namespace = m.opt_str("namespace").or_else(|| env("NOMAD_NAMESPACE"));
    let tls = TlsSettings {
        ca_cert: m.opt_str("ca-cert").or_else(|| env("NOMAD_CACERT")),
        client_cert: m
            .opt_str("client-cert")
            .or_else(|| env("NOMAD_CLIENT_CERT")),
        client_key: m.opt_str("client-key").or_else(|| env("NOMAD_CLIENT_KEY")),
        server_name: m
            .opt_str("tls-server-name")
            .or_else(|| env("NOMAD_TLS_SERVER_NAME")),
        skip_verify: m.opt_present("tls-skip-verify")
            || env("NOMAD_SKIP_VERIFY").is_some_and(|v| v == "1" || v == "true"),
    };
    if let Some(c) = connector_for(&client.endpoint, &tls) {
        client = client.with_connector(c);
    }
    let ctx = Ctx { client, tls };
    match (cmd.run)(&ctx, &m) {
        Ok(code) => code,
        Err(CliError::Usage(msg)) => {
            eprintln!("{msg}\n");
            eprint!("{}", usage_of(cmd));
            EXIT_ERROR
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_ERROR
        }
    }
}

/// What a prefix lookup found.
pub enum Found {
    One(Value),
    /// No match: Nomad's "No … with prefix or id" text.
    None,
    /// Several matches and none exact: the stubs, for the "Prefix matched multiple" table.
    Many(Vec<Value>),
}

/// Look an ID (or unique prefix) up in a list endpoint (`/v1/allocations`, `/v1/nodes`,
/// `/v1/jobs`). UUID prefixes are cut to an even length, as Nomad's CLI does, so the server
/// can match them as bytes.
pub fn lookup(ctx: &Ctx, list: &str, id: &str, uuid: bool, what: &str) -> Result<Found, CliError> {
    let mut prefix = id.to_string();
    if uuid && prefix.len() > 1 && prefix.len() % 2 == 1 && !prefix.contains('-') {
        prefix.pop();
    }
    let path = format!("{list}?prefix={}", http::escape(&prefix));
    let v = ctx
        .client
        .get(&path)
        .map_err(api(&format!("querying {what}")))?;
    let items: Vec<Value> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| format::s(x, "ID").starts_with(id))
        .collect();
    if let Some(exact) = items.iter().find(|x| format::s(x, "ID") == id) {
        return Ok(Found::One(exact.clone()));
    }
    Ok(match items.len() {
        0 => Found::None,
        1 => Found::One(items.into_iter().next().unwrap_or_default()),
        _ => Found::Many(items),
    })
}

/// The positional arguments, checked against the count a command takes.
pub fn positional(
    m: &getopts::Matches,
    min: usize,
    max: usize,
    what: &str,
) -> Result<Vec<String>, CliError> {
    if m.free.len() < min || m.free.len() > max {
        return Err(CliError::Usage(format!("This command takes {what}")));
    }
    Ok(m.free.clone())
}
