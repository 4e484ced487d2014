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
    /// This agent runs the server (`server.enabled`, `-dev`, or no role given at all).
    pub server_enabled: bool,
    /// The server RPC port (`ports.rpc`, default 4647): the `port` tag of the gossip member.
    pub ports_rpc: u16,
    /// The gossip port (`ports.serf`, default 4648), UDP.
    pub ports_serf: u16,
    /// `server.encrypt`: the base64 gossip key, checked to be 16, 24 or 32 bytes.
    pub server_encrypt: Option<String>,
    /// `server_join.retry_join` (serf addresses, default port 4648), tried until one answers.
    pub server_retry_join: Vec<String>,
    /// `server_join.start_join`: joined once at start.
    pub start_join: Vec<String>,
    /// `server.bootstrap_expect` (0: unset): the `expect`/`bootstrap` gossip tags.
    pub bootstrap_expect: u32,
    /// `server_join.retry_interval` (default 30s).
    pub server_retry_interval: Duration,
    /// `server_join.retry_max` (0: retry until a join succeeds).
    pub server_retry_max: u32,
    /// `advertise.serf`: the gossip address other servers reach this one at.
    pub advertise_serf: Option<std::net::SocketAddr>,
    /// The server role was asked for (`server.enabled = true`): the serf port must bind. With
    /// `-dev` or no role, a serf port in use leaves gossip off with a warning.
    pub gossip_required: bool,
}

/// Nomad's default RPC port.
pub const DEFAULT_RPC_PORT: u16 = 4647;
/// Nomad's default Serf (gossip) port.
pub const DEFAULT_SERF_PORT: u16 = 4648;
/// Nomad's default `server_join.retry_interval`.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// Gossip key sizes Serf accepts (AES-128, AES-192, AES-256).
pub const GOSSIP_KEY_SIZES: [usize; 3] = [16, 24, 32];

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

/// The server and gossip settings of a config, checked.
struct GossipSettings {
    server_enabled: bool,
    required: bool,
    ports_rpc: u16,
    ports_serf: u16,
    encrypt: Option<String>,
    retry_join: Vec<String>,
    start_join: Vec<String>,
    retry_interval: Duration,
    retry_max: u32,
    bootstrap_expect: u32,
    advertise_serf: Option<std::net::SocketAddr>,
}

/// Check a gossip key: standard base64 of 16, 24 or 32 bytes, as Serf's keyring wants.
pub fn check_gossip_key(key: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = crate::encoding::base64_std_decode(key.trim()).ok_or_else(|| {
        ConfigError::Invalid(
            "invalid server.encrypt: the gossip key is not standard base64 (make one with `head -c 32 /dev/urandom | base64`)".into(),
        )
    })?;
    if !GOSSIP_KEY_SIZES.contains(&bytes.len()) {
        return Err(ConfigError::Invalid(format!(
            "invalid server.encrypt: the gossip key must be 16, 24 or 32 bytes, got {}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn port_or(value: Option<u16>, key: &str, default: u16) -> Result<u16, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::Invalid(format!("{key} must be 1-65535"))),
        Some(p) => Ok(p),
        None => Ok(default),
    }
}

fn gossip_settings(file: &file::FileConfig, dev: bool) -> Result<GossipSettings, ConfigError> {
    let srv = &file.server;
    let join = srv.server_join.clone().unwrap_or_default();
    let legacy = srv.retry_join.is_some()
        || srv.start_join.is_some()
        || srv.retry_interval.is_some()
        || srv.retry_max.is_some();
    if legacy && srv.server_join.is_some() {
        return Err(ConfigError::Invalid(
            "server_join and the legacy server.retry_join/start_join/retry_interval/retry_max cannot both be set".into(),
        ));
    }
    let retry_interval_text = join.retry_interval.clone().or(srv.retry_interval.clone());
    let retry_interval = match retry_interval_text {
        None => DEFAULT_RETRY_INTERVAL,
        Some(t) => parse_go_duration(&t)
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "invalid server_join.retry_interval {t:?}: a duration of at least 1s"
                ))
            })?,
    };
    let encrypt = match &srv.encrypt {
        Some(k) if !k.trim().is_empty() => {
            check_gossip_key(k)?;
            Some(k.trim().to_string())
        }
        _ => None,
    };
    let ports_serf = port_or(file.ports.serf, "ports.serf", DEFAULT_SERF_PORT)?;
    let advertise_serf = match &file.advertise.serf {
        None => None,
        Some(text) => Some(
            text.parse::<std::net::SocketAddr>()
                .or_else(|_| {
                    text.parse::<IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, ports_serf))
                })
                .map_err(|_| {
                    ConfigError::Invalid(format!(
                        "invalid advertise.serf {text:?}: an IP address, with or without a port"
                    ))
                })?,
        ),
    };
    Ok(GossipSettings {
        // No role given at all keeps today's shape: server and client in one agent.
        server_enabled: dev || srv.enabled.unwrap_or(true),
        required: srv.enabled == Some(true),
        ports_rpc: port_or(file.ports.rpc, "ports.rpc", DEFAULT_RPC_PORT)?,
        ports_serf,
        encrypt,
        retry_join: join
            .retry_join
            .or(srv.retry_join.clone())
            .unwrap_or_default(),
        start_join: join
            .start_join
            .or(srv.start_join.clone())
            .unwrap_or_default(),
        retry_interval,
        retry_max: join.retry_max.or(srv.retry_max).unwrap_or(0),
        bootstrap_expect: srv.bootstrap_expect.unwrap_or(0),
        advertise_serf,
    })
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
        let gossip = gossip_settings(&file, dev)?;
        let mut config_warnings = loaded.warnings;
        let ignored_server = file.server.other.keys().map(|k| format!("server.{k}"));
        let ignored_advertise = [
            ("advertise.http", &file.advertise.http),
            ("advertise.rpc", &file.advertise.rpc),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.to_string());
        for k in ignored_server.chain(ignored_advertise) {
            config_warnings.push(format!(
                "config key {k:?} is not supported by nomadlet and is ignored"
            ));
        }
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
            config_warnings,
            http_max_conns_per_client: file
                .limits
                .http_max_conns_per_client
                .unwrap_or(crate::http::limits::MAX_CONNS_PER_CLIENT),
            config_is_json: loaded.json_only,
            source: flags.clone(),
            tls,
            server_enabled: gossip.server_enabled,
            ports_rpc: gossip.ports_rpc,
            ports_serf: gossip.ports_serf,
            server_encrypt: gossip.encrypt,
            server_retry_join: gossip.retry_join,
            start_join: gossip.start_join,
            bootstrap_expect: gossip.bootstrap_expect,
            server_retry_interval: gossip.retry_interval,
            server_retry_max: gossip.retry_max,
            advertise_serf: gossip.advertise_serf,
            gossip_required: gossip.required,
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
        std::net::SocketAddr::new(self.advertise_ip(), self.ports_rpc).to_string()
    }

    /// The gossip address other servers reach this one at: `advertise.serf`, else the
    /// advertise IP with the serf port.
    pub fn serf_advertise(&self) -> std::net::SocketAddr {
        self.advertise_serf
            .unwrap_or_else(|| std::net::SocketAddr::new(self.advertise_ip(), self.ports_serf))
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
