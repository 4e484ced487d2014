//! The agent's settings: one table of command-line flags (Nomad's names), Nomad's agent config
//! files (HCL or JSON, files or directories; `file`), and the merged [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

mod file;
mod tls;

pub use tls::{MinVersion, TlsSettings};

/// One flag of `nomadlet agent`: the table feeds getopts, `-h` and the man-page check.
pub struct FlagSpec {
    pub name: &'static str,
    /// `None` for a switch; otherwise the value's placeholder.
    pub value: Option<&'static str>,
    pub repeatable: bool,
    pub help: &'static str,
}

/// Every flag `nomadlet agent` takes.
pub const AGENT_FLAGS: &[FlagSpec] = &[
    FlagSpec { name: "dev", value: None, repeatable: false, help: "Server and client in one process on 127.0.0.1:4646, temporary data dir, raw_exec enabled" },
    FlagSpec { name: "config", value: Some("FILE"), repeatable: true, help: "Agent config file (HCL or JSON) or a directory of *.hcl and *.json files; repeatable" },
    FlagSpec { name: "data-dir", value: Some("DIR"), repeatable: false, help: "Where state, alloc dirs and keys are kept" },
    FlagSpec { name: "bind", value: Some("ADDR"), repeatable: false, help: "Address the HTTP API listens on (default 0.0.0.0; 127.0.0.1 with -dev)" },
    FlagSpec { name: "http-port", value: Some("N"), repeatable: false, help: "HTTP API port (default 4646)" },
    FlagSpec { name: "node", value: Some("NAME"), repeatable: false, help: "Node name (default: the hostname)" },
    FlagSpec { name: "dc", value: Some("DC"), repeatable: false, help: "Datacenter (default dc1)" },
    FlagSpec { name: "region", value: Some("R"), repeatable: false, help: "Region (default global)" },
    FlagSpec { name: "meta", value: Some("KEY=VALUE"), repeatable: true, help: "Static node metadata; repeatable" },
    FlagSpec { name: "servers", value: Some("ADDR,..."), repeatable: false, help: "Known servers as ip:port, comma-separated" },
    FlagSpec { name: "log-level", value: Some("LEVEL"), repeatable: false, help: "TRACE, DEBUG, INFO, WARN or ERROR (default INFO)" },
    FlagSpec { name: "acl-enabled", value: None, repeatable: false, help: "Enforce ACLs on the HTTP API" },
    FlagSpec { name: "meta-batch-window", value: Some("DURATION"), repeatable: false, help: "Fixed window for batching metadata changes to the node record (default 5s plus up to 5s jitter, 1s with -dev)" },
];

/// A setting that could not be used, or a config file that could not be read or parsed.
#[derive(Debug)]
pub enum ConfigError {
    /// A value that cannot be used (the text names the setting and why).
    Invalid(String),
    /// A config file or directory could not be read: "cannot read config {what} {path}".
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A config file is not HCL or JSON: "{origin}:{line}:{column}: ...".
    Parse {
        origin: String,
        source: file::ParseError,
    },
    /// A `-servers` / `client.servers` address is not `ip:port`.
    Server(BadServerAddr),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid(why) => f.write_str(why),
            ConfigError::Read { what, path, source } => {
                write!(f, "cannot read config {what} {}: {source}", path.display())
            }
            ConfigError::Parse { origin, source } => write!(f, "{origin}:{source}"),
            ConfigError::Server(e) => write!(f, "invalid server: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Invalid(_) => None,
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Parse { source, .. } => Some(source),
            ConfigError::Server(e) => Some(e),
        }
    }
}

/// The merged settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub dev: bool,
    pub data_dir: PathBuf,
    /// The data dir was made for this run (`-dev` without `-data-dir`) and is removed at exit.
    pub data_dir_is_temp: bool,
    pub bind_addr: IpAddr,
    pub http_port: u16,
    pub node_name: String,
    pub datacenter: String,
    pub region: String,
    /// Static node metadata from `-meta` and `client.meta`.
    pub meta: BTreeMap<String, String>,
    /// Known servers (`ip:port`); empty means this agent's own server.
    pub servers: Vec<String>,
    pub log_level: String,
    pub acl_enabled: bool,
    /// `None`: Nomad's window (5 s plus up to 5 s jitter, 1 s in dev).
    pub meta_batch_window: Option<Duration>,
    /// Terminal allocations kept before the oldest are collected (`client.gc_max_allocs`).
    pub gc_max_allocs: usize,
    pub raw_exec_enabled: bool,
    /// Config keys that were read but are not acted on, to log once the logger runs.
    pub config_warnings: Vec<String>,
    /// Open HTTP connections allowed from one client IP (`limits.http_max_conns_per_client`,
    /// default 100); 0 turns the cap off.
    pub http_max_conns_per_client: usize,
    /// The agent's config came only from JSON files (advice names keys in JSON form).
    pub config_is_json: bool,
    /// The flags this config was made from: a reload (SIGHUP) reads the same files again.
    pub source: AgentFlags,
    /// Nomad's `tls { ... }` block, checked (certificate files are read by `tls::AgentTls`).
    pub tls: TlsSettings,
    /// `client.drain_on_shutdown`: when the agent leaves, stop its allocations first.
    pub drain_on_shutdown: Option<DrainOnShutdown>,
    /// `leave_on_interrupt`: SIGINT makes the agent leave (and drain, when configured).
    pub leave_on_interrupt: bool,
    /// `leave_on_terminate`: SIGTERM makes the agent leave (and drain, when configured).
    pub leave_on_terminate: bool,
}

/// Nomad's `client.drain_on_shutdown` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOnShutdown {
    /// How long the drain may take (default 1h): tasks still running then are left running.
    pub deadline: Duration,
    /// Kill at once, without each task's kill_timeout.
    pub force: bool,
    /// Leave system jobs' tasks running.
    pub ignore_system_jobs: bool,
}

/// Nomad's default `drain_on_shutdown.deadline`.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(3600);

/// Flags as parsed, before merging with config files.
#[derive(Debug, Default, Clone)]
pub struct AgentFlags {
    pub dev: bool,
    pub config_files: Vec<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub http_port: Option<String>,
    pub node: Option<String>,
    pub dc: Option<String>,
    pub region: Option<String>,
    pub meta: Vec<String>,
    pub servers: Option<String>,
    pub log_level: Option<String>,
    pub acl_enabled: bool,
    pub meta_batch_window: Option<String>,
}

/// Parse a Go-style duration: `1s`, `500ms`, `1m30s`, `2h`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// A server address that is not `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadServerAddr {
    pub addr: String,
    pub source: std::net::AddrParseError,
}

impl fmt::Display for BadServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "address {}: missing port in address or not an ip:port",
            self.addr
        )
    }
}

impl std::error::Error for BadServerAddr {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Check a server address: `ip:port` (or `[v6]:port`) with a port.
pub fn validate_server_addr(addr: &str) -> Result<(), BadServerAddr> {
    addr.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|source| BadServerAddr {
            addr: addr.to_string(),
            source,
        })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nomadlet".to_string())
}

/// The `tls` block as settings, checked as Nomad checks it at start.
fn tls_settings(t: &file::Tls) -> Result<TlsSettings, ConfigError> {
    let min_version = match &t.tls_min_version {
        None => MinVersion::default(),
        Some(v) => MinVersion::parse(v).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "tls.tls_min_version {v:?}: use tls10, tls11, tls12 or tls13"
            ))
        })?,
    };
    let settings = TlsSettings {
        http: t.http.unwrap_or(false),
        rpc: t.rpc.unwrap_or(false),
        ca_file: t.ca_file.clone(),
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        verify_server_hostname: t.verify_server_hostname.unwrap_or(false),
        verify_https_client: t.verify_https_client.unwrap_or(false),
        min_version,
    };
    settings.validate()?;
    Ok(settings)
}

const LOG_LEVELS: &[&str] = &["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF"];

impl Config {
    /// Merge flags over config files over defaults, and validate.
    pub fn from_flags(flags: &AgentFlags) -> Result<Config, ConfigError> {
        let loaded = file::load(&flags.config_files)?;
        let file = loaded.config;
        let dev = flags.dev;
        let (data_dir, data_dir_is_temp) = match flags.data_dir.clone().or(file.data_dir.clone()) {
            Some(d) => (d, false),
            // Short on purpose: `<dir>/alloc/<uuid>/<task>/secrets/api.sock` must fit in the
            // 108-byte sun_path of every task's Task API socket.
            None if dev => (
                std::env::temp_dir().join(format!(
                    "nomadlet-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )),
                true,
            ),
            None => {
                return Err(ConfigError::Invalid(
                    "Must specify data directory (-data-dir) or use -dev".into(),
                ))
            }
        };
        let bind_text = flags
            .bind
            .clone()
            .or(file.bind_addr.clone())
            .unwrap_or_else(|| {
                if dev {
                    "127.0.0.1".into()
                } else {
                    "0.0.0.0".into()
                }
            });
        let bind_addr: IpAddr = bind_text.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "invalid bind address {bind_text:?}: not an IP address"
            ))
        })?;
        let http_port = match &flags.http_port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ConfigError::Invalid(format!("invalid -http-port {p:?}: must be 1-65535"))
            })?,
            None => match file.ports.http {
                Some(0) => return Err(ConfigError::Invalid("ports.http must be 1-65535".into())),
                Some(p) => p,
                None => 4646,
            },
        };
        let mut meta = file.client.meta.clone();
        for kv in &flags.meta {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("invalid -meta {kv:?}: expected KEY=VALUE"))
            })?;
            if k.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "invalid -meta {kv:?}: empty key"
                )));
            }
            meta.insert(k.to_string(), v.to_string());
        }
        let servers = match &flags.servers {
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            None => file.client.servers.clone().unwrap_or_default(),
        };
        for s in &servers {
            validate_server_addr(s).map_err(ConfigError::Server)?;
        }
        let log_level = flags
            .log_level
            .clone()
            .or(file.log_level.clone())
            .unwrap_or_else(|| "INFO".into())
            .to_uppercase();
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "invalid log level {log_level:?}: use TRACE, DEBUG, INFO, WARN, ERROR or OFF"
            )));
        }
        let meta_batch_window = match flags
            .meta_batch_window
            .clone()
            .or(file.client.meta_batch_window.clone())
        {
            Some(w) => Some(
                parse_go_duration(&w)
                    .filter(|d| *d <= Duration::from_secs(10))
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "invalid meta batch window {w:?}: a duration up to 10s"
                        ))
                    })?,
            ),
            None => None,
        };
        let tls = tls_settings(&file.tls)?;
        let drain_on_shutdown = match &file.client.drain_on_shutdown {
            None => None,
            Some(d) => Some(DrainOnShutdown {
                deadline: match &d.deadline {
                    None => DEFAULT_DRAIN_DEADLINE,
                    Some(text) => parse_go_duration(text).ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "invalid client.drain_on_shutdown.deadline {text:?}: a duration"
                        ))
                    })?,
                },
                force: d.force.unwrap_or(false),
                ignore_system_jobs: d.ignore_system_jobs.unwrap_or(false),
            }),
        };
        Ok(Config {
            dev,
            drain_on_shutdown,
            leave_on_interrupt: file.leave_on_interrupt.unwrap_or(false),
            leave_on_terminate: file.leave_on_terminate.unwrap_or(false),
            data_dir,
            data_dir_is_temp,
            bind_addr,
            http_port,
            node_name: flags
                .node
                .clone()
                .or(file.name.clone())
                .unwrap_or_else(hostname),
            datacenter: flags
                .dc
                .clone()
                .or(file.datacenter.clone())
                .unwrap_or_else(|| "dc1".into()),
            region: flags
                .region
                .clone()
                .or(file.region.clone())
                .unwrap_or_else(|| "global".into()),
            meta,
            servers,
            log_level,
            acl_enabled: flags.acl_enabled || file.acl.enabled.unwrap_or(false),
            meta_batch_window,
            gc_max_allocs: file.client.gc_max_allocs.unwrap_or(50),
            raw_exec_enabled: file
                .plugin
                .raw_exec
                .as_ref()
                .and_then(|r| r.config.enabled)
                .unwrap_or(dev),
            config_warnings: loaded.warnings,
            http_max_conns_per_client: file
                .limits
                .http_max_conns_per_client
                .unwrap_or(crate::http::limits::MAX_CONNS_PER_CLIENT),
            config_is_json: loaded.json_only,
            source: flags.clone(),
            tls,
        })
    }

    /// How to enable the raw_exec driver, in the format the operator's config files use.
    pub fn raw_exec_advice(&self) -> String {
        let key = if self.config_is_json {
            r#"{"plugin": {"raw_exec": {"config": {"enabled": true}}}}"#
        } else {
            r#"plugin "raw_exec" { config { enabled = true } }"#
        };
        format!("the raw_exec driver is disabled in the agent config: enable it with {key} and restart the agent (or run with -dev)")
    }

    /// The address this agent's own server advertises for RPC (`ip:4647`).
    pub fn rpc_addr(&self) -> String {
        std::net::SocketAddr::new(self.advertise_ip(), 4647).to_string()
    }

    /// The IP other agents reach this one at: the bind address, or loopback when bound to all.
    pub fn advertise_ip(&self) -> IpAddr {
        if self.bind_addr.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            self.bind_addr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration("5"), None);
    }

    #[test]
    fn server_addresses_need_a_port() {
        assert!(validate_server_addr("127.0.0.1:4647").is_ok());
        assert!(validate_server_addr("127.0.0.1").is_err());
        assert!(validate_server_addr("[::1]:4647").is_ok());
    }
}
