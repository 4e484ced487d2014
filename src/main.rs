//! `nomadlet`: the command line (getopts) → config → `agent::run`; errors become one line on
//! stderr and exit code 1. Everything else lives in the library (`src/lib.rs`).

#![deny(unsafe_code)]

use std::process::ExitCode;

use nomadlet::agent;
use nomadlet::config::{AgentFlags, Config, AGENT_FLAGS};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn usage() -> String {
    let mut s = String::from(
        "Usage: nomadlet <command> [options]\n\n\
         A small node agent that speaks HashiCorp Nomad's HTTP API.\n\n\
         Commands:\n    agent      Run the agent\n",
    );
    s.push_str(&nomadlet::cli::groups_help());
    s.push_str("    version    Print the version\n\nOptions for agent:\n");
    for f in AGENT_FLAGS {
        let flag = match f.value {
            Some(v) => format!("-{} {}", f.name, v),
            None => format!("-{}", f.name),
        };
        s.push_str(&format!("    {flag:<28} {}\n", f.help));
    }
    s
}

/// A command line `agent` cannot use.
#[derive(Debug)]
enum FlagsError {
    /// getopts refused it (unknown flag, missing value, ...).
    Getopts(getopts::Fail),
    /// A word that is not a flag.
    Unexpected(String),
}

impl std::fmt::Display for FlagsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlagsError::Getopts(e) => write!(f, "{e}"),
            FlagsError::Unexpected(word) => write!(f, "unexpected argument {word:?}"),
        }
    }
}

impl std::error::Error for FlagsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FlagsError::Getopts(e) => Some(e),
            FlagsError::Unexpected(_) => None,
        }
    }
}

fn parse_agent_flags(args: &[String]) -> Result<AgentFlags, FlagsError> {
    let mut opts = getopts::Options::new();
    opts.long_only(true);
    for f in AGENT_FLAGS {
        match (f.value, f.repeatable) {
            (None, _) => opts.optflag("", f.name, f.help),
            (Some(v), true) => opts.optmulti("", f.name, f.help, v),
            (Some(v), false) => opts.optopt("", f.name, f.help, v),
        };
    }
    let m = opts.parse(args).map_err(FlagsError::Getopts)?;
    if let Some(word) = m.free.first() {
        return Err(FlagsError::Unexpected(word.clone()));
    }
    Ok(AgentFlags {
        dev: m.opt_present("dev"),
        config_files: m.opt_strs("config").into_iter().map(Into::into).collect(),
        data_dir: m.opt_str("data-dir").map(Into::into),
        bind: m.opt_str("bind"),
        http_port: m.opt_str("http-port"),
        node: m.opt_str("node"),
        dc: m.opt_str("dc"),
        region: m.opt_str("region"),
        meta: m.opt_strs("meta"),
        servers: m.opt_str("servers"),
        server: m.opt_present("server"),
        client: m.opt_present("client"),
        bootstrap_expect: m.opt_str("bootstrap-expect"),
        retry_join: m.opt_strs("retry-join"),
        join: m.opt_strs("join"),
        encrypt: m.opt_str("encrypt"),
        log_level: m.opt_str("log-level"),
        acl_enabled: m.opt_present("acl-enabled"),
        meta_batch_window: m.opt_str("meta-batch-window"),
    })
}

fn init_logging(level: &str) {
    let filter = match level {
        "TRACE" => log::LevelFilter::Trace,
        "DEBUG" => log::LevelFilter::Debug,
        "WARN" => log::LevelFilter::Warn,
        "ERROR" => log::LevelFilter::Error,
        "OFF" => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    // The tap filters at the agent's level (a SIGHUP reload can change it); stderr's logger
    // passes everything the tap lets through.
    let inner = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .format_timestamp_millis()
        .build();
    nomadlet::logtap::install(inner, filter);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("-version") | Some("--version") | Some("-v") => {
            println!("nomadlet v{VERSION}");
            ExitCode::SUCCESS
        }
        Some("-h") | Some("-help") | Some("--help") | Some("help") | None => {
            print!("{}", usage());
            if args.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        // Hidden: the per-task shim the agent starts (not for operators).
        Some("task-shim") => ExitCode::from(nomadlet::task_shim(&args[1..]).clamp(0, 255) as u8),
        // Hidden: placements per second of the server's scheduler (`make bench`).
        Some("bench-scheduler") => {
            ExitCode::from(nomadlet::bench_scheduler(&args[1..]).clamp(0, 255) as u8)
        }
        Some("agent") => {
            if args[1..]
                .iter()
                .any(|a| a == "-h" || a == "-help" || a == "--help")
            {
                print!("{}", usage());
                return ExitCode::SUCCESS;
            }
            let flags = match parse_agent_flags(&args[1..]) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("nomadlet: {e}");
                    return ExitCode::from(1);
                }
            };
            let config = match Config::from_flags(&flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("nomadlet: {e}");
                    return ExitCode::from(1);
                }
            };
            init_logging(&config.log_level);
            for w in &config.config_warnings {
                log::warn!("{w}");
            }
            match agent::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nomadlet: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some(group) if nomadlet::cli::is_cli_group(group) => {
            ExitCode::from(u8::try_from(nomadlet::cli::run(&args)).unwrap_or(1))
        }
        Some(other) => {
            eprintln!("nomadlet: unknown command {other:?}; see nomadlet -h");
            ExitCode::from(1)
        }
    }
}
