//! The agent's settings: one table of command-line flags (Nomad's names), Nomad's agent config
//! files (HCL or JSON, files or directories; `file`), and the merged [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

mod file;
pub mod network;
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
    FlagSpec { name: "server", value: None, repeatable: false, help: "Run the server role (with -client too: both; alone: no tasks)" },
    FlagSpec { name: "client", value: None, repeatable: false, help: "Run the client role (alone: talks to -servers over RPC, keeps no jobs)" },
    FlagSpec { name: "bootstrap-expect", value: Some("N"), repeatable: false, help: "Servers to wait for before bootstrapping (server.bootstrap_expect)" },
    FlagSpec { name: "retry-join", value: Some("ADDR"), repeatable: true, help: "Address to join, retried (server: serf address; client: server RPC address); repeatable" },
    FlagSpec { name: "join", value: Some("ADDR"), repeatable: true, help: "Serf address of a server to join at start; repeatable" },
    FlagSpec { name: "encrypt", value: Some("KEY"), repeatable: false, help: "Base64 gossip encryption key (server.encrypt)" },
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

/// The agent config's `autopilot {}` block, checked (durations parsed). Every key is
/// optional: an unset one keeps Nomad's default when the leader stores the configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutopilotSettings {
    pub cleanup_dead_servers: Option<bool>,
    pub last_contact_threshold: Option<Duration>,
    pub max_trailing_logs: Option<u64>,
    pub min_quorum: Option<u64>,
    pub server_stabilization_time: Option<Duration>,
    pub enable_redundancy_zones: Option<bool>,
    pub disable_upgrade_migration: Option<bool>,
    pub enable_custom_upgrades: Option<bool>,
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
    /// Known servers' RPC addresses (`ip:port`, from `-servers`, `client.servers` and a
    /// client's `retry_join`); empty means this agent's own server.
    pub client_servers: Vec<String>,
    /// This agent runs the server role (`-server`, `server.enabled`, `-dev`, or no role given).
    pub server_enabled: bool,
    /// This agent runs the client role (`-client`, `client.enabled`, `-dev`, or no role given).
    pub client_enabled: bool,
    /// A role was chosen explicitly (flag or `enabled` key): the agent listens on its RPC port
    /// when it is a server. Without one (and with `-dev`) the agent is as before roles existed.
    pub roles_explicit: bool,
    /// `ports.rpc` (default 4647).
    pub ports_rpc: u16,
    /// `ports.serf` (default 4648).
    pub ports_serf: u16,
    /// `ports.rpc` was configured (a role-less agent listens on RPC only then).
    pub ports_rpc_set: bool,
    /// `ports.serf` was configured (a role-less or `-dev` agent gossips only then).
    pub ports_serf_set: bool,
    /// `advertise.http`, `advertise.rpc`, `advertise.serf` as `ip:port` (port defaulted).
    pub advertise_http: Option<String>,
    pub advertise_rpc: Option<String>,
    pub advertise_serf: Option<String>,
    /// `server.encrypt` / `-encrypt`: the base64 gossip key.
    pub server_encrypt: Option<String>,
    /// `server.server_join.retry_join` / `-retry-join` on a server: serf addresses.
    pub server_retry_join: Vec<String>,
    /// `server_join.retry_interval` (default 30s).
    pub server_retry_interval: Duration,
    /// `server_join.retry_max` (default 0: retry forever).
    pub server_retry_max: u32,
    /// `-join` / `server_join.start_join`: serf addresses joined at start.
    pub start_join: Vec<String>,
    /// `server.heartbeat_grace` (default 10s): added to the server-side heartbeat timer.
    pub heartbeat_grace: Duration,
    /// `server.min_heartbeat_ttl` (default 10s): the floor of the TTL handed to clients.
    pub min_heartbeat_ttl: Duration,
    /// `server.max_heartbeats_per_second` (default 50): the target aggregate heartbeat rate.
    pub max_heartbeats_per_second: f64,
    /// `server.failover_heartbeat_ttl` (default 5m): the flat timer a new leader gives every
    /// node that is not down.
    pub failover_heartbeat_ttl: Duration,
    /// `server.job_gc_interval` (default 5m): how often the leader collects garbage.
    pub job_gc_interval: Duration,
    /// `server.job_gc_threshold` (default 4h): how long a finished job is kept.
    pub job_gc_threshold: Duration,
    /// `server.eval_gc_threshold` (default 1h): how long a finished eval is kept.
    pub eval_gc_threshold: Duration,
    /// `server.batch_eval_gc_threshold` (default 24h): ... a finished batch job's eval.
    pub batch_eval_gc_threshold: Duration,
    /// `server.bootstrap_expect` / `-bootstrap-expect` (default 0).
    pub bootstrap_expect: u32,
    /// The top-level `autopilot {}` block: what the cluster's first leader stores (each
    /// key unset keeps Nomad's default).
    pub autopilot: AutopilotSettings,
    /// `client.node_class` (default empty).
    pub node_class: String,
    /// `client.node_pool` (default `default`).
    pub node_pool: String,
    pub log_level: String,
    pub acl_enabled: bool,
    /// `acl.token_ttl` (default 30 s): how long a client-only agent caches a resolved token.
    pub acl_token_ttl: Duration,
    /// `acl.policy_ttl` (default 30 s): how long a client-only agent caches resolved policies.
    pub acl_policy_ttl: Duration,
    /// `None`: Nomad's window (5 s plus up to 5 s jitter, 1 s in dev).
    pub meta_batch_window: Option<Duration>,
    /// Terminal allocations kept before the oldest are collected (`client.gc_max_allocs`).
    pub gc_max_allocs: usize,
    /// `client.cgroup_parent`, relative to each cgroup mount (no leading `/`); `None`: the
    /// delegated cgroup the agent runs in, else the default layout (`sys::cgroup`).
    pub cgroup_parent: Option<String>,
    pub raw_exec_enabled: bool,
    /// Config keys that were read but are not acted on, to log once the logger runs.
    pub config_warnings: Vec<String>,
    /// Open HTTP connections allowed from one client IP (`limits.http_max_conns_per_client`,
    /// default 100); 0 turns the cap off.
    pub http_max_conns_per_client: usize,
    /// Open connections allowed from one client IP on the RPC port
    /// (`limits.rpc_max_conns_per_client`, default 100); 0 turns the cap off.
    pub rpc_max_conns_per_client: usize,
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
    /// The client's ports: dynamic range, reserved ports, host networks.
    pub client_network: network::ClientNetwork,
    /// `client.reserved { cpu memory disk }`: left to the host by the scheduler.
    pub client_reserved: ReservedResources,
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
    pub server: bool,
    pub client: bool,
    pub bootstrap_expect: Option<String>,
    pub retry_join: Vec<String>,
    pub join: Vec<String>,
    pub encrypt: Option<String>,
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

/// Nomad's default RPC port.
pub const DEFAULT_RPC_PORT: u16 = 4647;
/// Nomad's default Serf (gossip) port.
pub const DEFAULT_SERF_PORT: u16 = 4648;
/// Nomad's default `acl.token_ttl` and `acl.policy_ttl`.
pub const DEFAULT_ACL_CACHE_TTL: Duration = Duration::from_secs(30);
/// `client.reserved`: the node's resources the scheduler must not hand out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReservedResources {
    pub cpu_mhz: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

/// Nomad's `server.job_gc_interval` default.
pub const DEFAULT_JOB_GC_INTERVAL: Duration = Duration::from_secs(300);
/// Nomad's `server.job_gc_threshold` default.
pub const DEFAULT_JOB_GC_THRESHOLD: Duration = Duration::from_secs(4 * 3600);
/// Nomad's `server.eval_gc_threshold` default.
pub const DEFAULT_EVAL_GC_THRESHOLD: Duration = Duration::from_secs(3600);
/// Nomad's `server.batch_eval_gc_threshold` default.
pub const DEFAULT_BATCH_EVAL_GC_THRESHOLD: Duration = Duration::from_secs(24 * 3600);

/// Nomad's `server.heartbeat_grace` default.
pub const DEFAULT_HEARTBEAT_GRACE: Duration = Duration::from_secs(10);
/// Nomad's `server.min_heartbeat_ttl` default.
pub const DEFAULT_MIN_HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// Nomad's `server.failover_heartbeat_ttl` default.
pub const DEFAULT_FAILOVER_HEARTBEAT_TTL: Duration = Duration::from_secs(300);
/// Nomad's `server.max_heartbeats_per_second` default.
pub const DEFAULT_MAX_HEARTBEATS_PER_SECOND: f64 = 50.0;
/// Nomad's `server_join.retry_interval` default.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Gossip key sizes Serf accepts (AES-128, AES-192, AES-256).
pub const GOSSIP_KEY_SIZES: [usize; 3] = [16, 24, 32];

/// Check a gossip key (`server.encrypt`, `-encrypt`): standard base64 of 16, 24 or 32 bytes,
/// as Serf's keyring wants. Returns the key's bytes.
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

/// Which roles the agent runs.
struct Roles {
    server: bool,
    client: bool,
    explicit: bool,
}

impl Roles {
    /// `-dev`: both. `-server`/`-client` flags or `enabled` keys: what they say. Neither: both,
    /// as the agent always was.
    fn of(flags: &AgentFlags, file: &file::FileConfig) -> Roles {
        let server = flags.server || file.server.enabled.unwrap_or(false);
        let client = flags.client || file.client.enabled.unwrap_or(false);
        if flags.dev || !(server || client) {
            return Roles {
                server: true,
                client: true,
                explicit: !flags.dev && (server || client),
            };
        }
        Roles {
            server,
            client,
            explicit: true,
        }
    }
}

/// `addr` with `port` appended when it has none (`ip` → `ip:port`, `[v6]` or bare v6 too).
fn with_default_port(addr: &str, port: u16) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_string();
    }
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => addr.to_string(),
    }
}

/// Longest `client.cgroup_parent` accepted.
pub const MAX_CGROUP_PARENT: usize = 256;

/// `client.cgroup_parent` as a path relative to each cgroup mount (Nomad writes `/nomad` or
/// `nomad.slice`; a leading `/` is dropped). Empty, over [`MAX_CGROUP_PARENT`], NUL, or with
/// empty, `.` or `..` parts is refused.
fn cgroup_parent(raw: &str) -> Result<String, ConfigError> {
    let rel = raw.trim_start_matches('/').trim_end_matches('/');
    let bad = rel.is_empty()
        || raw.len() > MAX_CGROUP_PARENT
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(ConfigError::Invalid(format!(
            "client.cgroup_parent {raw:?}: must name a cgroup path without empty, . or .. parts \
             (at most {MAX_CGROUP_PARENT} bytes)"
        )));
    }
    Ok(rel.to_string())
}

fn duration_setting(key: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(text)
        .ok_or_else(|| ConfigError::Invalid(format!("invalid {key} {text:?}: a duration")))
}

fn port_setting(name: &str, value: Option<u16>, default: u16) -> Result<u16, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::Invalid(format!(
            "ports.{name} must be 1-65535"
        ))),
        Some(p) => Ok(p),
        None => Ok(default),
    }
}

/// `advertise.<name>`: an IP (the port is added) or `ip:port`.
fn advertise_setting(
    name: &str,
    value: &Option<String>,
    port: u16,
) -> Result<Option<String>, ConfigError> {
    let Some(text) = value else {
        return Ok(None);
    };
    let addr = with_default_port(text.trim(), port);
    validate_server_addr(&addr).map_err(|_| {
        ConfigError::Invalid(format!(
            "invalid advertise.{name} {text:?}: an IP address or ip:port"
        ))
    })?;
    Ok(Some(addr))
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
        let roles = Roles::of(flags, &file);
        let mut servers: Vec<String> = match &flags.servers {
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            None => file.client.servers.clone().unwrap_or_default(),
        };
        let client_join = file.client.server_join.clone().unwrap_or_default();
        let server_join = file.server.server_join.clone().unwrap_or_default();
        // A client's retry_join names servers' RPC addresses: joining is just knowing them.
        let mut client_retry = client_join.retry_join.clone();
        if roles.client && !roles.server {
            client_retry.extend(flags.retry_join.iter().cloned());
        }
        for a in client_retry {
            let a = with_default_port(&a, DEFAULT_RPC_PORT);
            if !servers.contains(&a) {
                servers.push(a);
            }
        }
        for s in &servers {
            validate_server_addr(s).map_err(ConfigError::Server)?;
        }
        let mut server_retry_join = server_join.retry_join.clone();
        if roles.server {
            server_retry_join.extend(flags.retry_join.iter().cloned());
        }
        let mut start_join = server_join.start_join.clone();
        start_join.extend(flags.join.iter().cloned());
        let server_retry_interval = match server_join
            .retry_interval
            .as_ref()
            .or(client_join.retry_interval.as_ref())
        {
            None => DEFAULT_RETRY_INTERVAL,
            Some(t) => duration_setting("server_join.retry_interval", t)?,
        };
        let acl_token_ttl = match &file.acl.token_ttl {
            None => DEFAULT_ACL_CACHE_TTL,
            Some(t) => duration_setting("acl.token_ttl", t)?,
        };
        let acl_policy_ttl = match &file.acl.policy_ttl {
            None => DEFAULT_ACL_CACHE_TTL,
            Some(t) => duration_setting("acl.policy_ttl", t)?,
        };
        let heartbeat_grace = match &file.server.heartbeat_grace {
            None => DEFAULT_HEARTBEAT_GRACE,
            Some(t) => duration_setting("server.heartbeat_grace", t)?,
        };
        let gc_setting = |key: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => duration_setting(key, t),
        };
        let job_gc_interval = gc_setting(
            "server.job_gc_interval",
            &file.server.job_gc_interval,
            DEFAULT_JOB_GC_INTERVAL,
        )?;
        let job_gc_threshold = gc_setting(
            "server.job_gc_threshold",
            &file.server.job_gc_threshold,
            DEFAULT_JOB_GC_THRESHOLD,
        )?;
        let eval_gc_threshold = gc_setting(
            "server.eval_gc_threshold",
            &file.server.eval_gc_threshold,
            DEFAULT_EVAL_GC_THRESHOLD,
        )?;
        let batch_eval_gc_threshold = gc_setting(
            "server.batch_eval_gc_threshold",
            &file.server.batch_eval_gc_threshold,
            DEFAULT_BATCH_EVAL_GC_THRESHOLD,
        )?;
        let ap = &file.autopilot;
        let optional_duration = |key: &str, v: &Option<String>| match v {
            None => Ok(None),
            Some(t) => duration_setting(key, t).map(Some),
        };
        let autopilot = AutopilotSettings {
            cleanup_dead_servers: ap.cleanup_dead_servers,
            last_contact_threshold: optional_duration(
                "autopilot.last_contact_threshold",
                &ap.last_contact_threshold,
            )?,
            max_trailing_logs: ap.max_trailing_logs,
            min_quorum: ap.min_quorum,
            server_stabilization_time: optional_duration(
                "autopilot.server_stabilization_time",
                &ap.server_stabilization_time,
            )?,
            enable_redundancy_zones: ap.enable_redundancy_zones,
            disable_upgrade_migration: ap.disable_upgrade_migration,
            enable_custom_upgrades: ap.enable_custom_upgrades,
        };
        let min_heartbeat_ttl = match &file.server.min_heartbeat_ttl {
            None => DEFAULT_MIN_HEARTBEAT_TTL,
            Some(t) => duration_setting("server.min_heartbeat_ttl", t)?,
        };
        let failover_heartbeat_ttl = match &file.server.failover_heartbeat_ttl {
            None => DEFAULT_FAILOVER_HEARTBEAT_TTL,
            Some(t) => duration_setting("server.failover_heartbeat_ttl", t)?,
        };
        let max_heartbeats_per_second = match file.server.max_heartbeats_per_second {
            None => DEFAULT_MAX_HEARTBEATS_PER_SECOND,
            Some(r) if r.is_finite() && r > 0.0 => r,
            Some(r) => {
                return Err(ConfigError::Invalid(format!(
                    "invalid server.max_heartbeats_per_second {r}: must be above 0"
                )))
            }
        };
        let bootstrap_expect = match &flags.bootstrap_expect {
            Some(t) => t.parse::<u32>().map_err(|_| {
                ConfigError::Invalid(format!("invalid -bootstrap-expect {t:?}: a number"))
            })?,
            None => file
                .server
                .bootstrap_expect
                .unwrap_or(if roles.explicit { 0 } else { 1 }),
        };
        let ports_rpc = port_setting("rpc", file.ports.rpc, DEFAULT_RPC_PORT)?;
        let ports_serf = port_setting("serf", file.ports.serf, DEFAULT_SERF_PORT)?;
        let advertise_http = advertise_setting("http", &file.advertise.http, http_port)?;
        let advertise_rpc = advertise_setting("rpc", &file.advertise.rpc, ports_rpc)?;
        let advertise_serf = advertise_setting("serf", &file.advertise.serf, ports_serf)?;
        let server_encrypt = match flags.encrypt.clone().or(file.server.encrypt.clone()) {
            Some(k) if !k.trim().is_empty() => {
                check_gossip_key(&k)?;
                Some(k.trim().to_string())
            }
            _ => None,
        };
        let mut config_warnings = loaded.warnings;
        for k in file.server.other.keys() {
            config_warnings.push(format!(
                "config key \"server.{k}\" is not supported by nomadlet and is ignored"
            ));
        }
        let node_pool = file
            .client
            .node_pool
            .clone()
            .unwrap_or_else(|| "default".into());
        if node_pool == "all" {
            return Err(ConfigError::Invalid(
                "client.node_pool: node is not allowed to register in node pool \"all\"".into(),
            ));
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
        let reserved = file.client.reserved.clone().unwrap_or_default();
        let client_network = network::from_file(
            file.client.min_dynamic_port,
            file.client.max_dynamic_port,
            reserved.reserved_ports.as_deref(),
            file.client.host_network.as_ref(),
        )?;
        let reserve = |key: &str, v: Option<i64>| -> Result<u64, ConfigError> {
            match v {
                None => Ok(0),
                Some(n) => u64::try_from(n).map_err(|_| {
                    ConfigError::Invalid(format!("client.reserved.{key} must not be negative"))
                }),
            }
        };
        let client_reserved = ReservedResources {
            cpu_mhz: reserve("cpu", reserved.cpu)?,
            memory_mb: reserve("memory", reserved.memory)?,
            disk_mb: reserve("disk", reserved.disk)?,
        };
        Ok(Config {
            client_network,
            client_reserved,
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
            client_servers: servers,
            server_enabled: roles.server,
            client_enabled: roles.client,
            roles_explicit: roles.explicit,
            ports_rpc,
            ports_serf,
            ports_rpc_set: file.ports.rpc.is_some(),
            ports_serf_set: file.ports.serf.is_some(),
            advertise_http,
            advertise_rpc,
            advertise_serf,
            server_encrypt,
            server_retry_join,
            server_retry_interval,
            server_retry_max: server_join.retry_max.or(client_join.retry_max).unwrap_or(0),
            start_join,
            heartbeat_grace,
            job_gc_interval,
            job_gc_threshold,
            eval_gc_threshold,
            batch_eval_gc_threshold,
            min_heartbeat_ttl,
            max_heartbeats_per_second,
            failover_heartbeat_ttl,
            bootstrap_expect,
            autopilot,
            node_class: file.client.node_class.clone().unwrap_or_default(),
            node_pool,
            log_level,
            acl_enabled: flags.acl_enabled || file.acl.enabled.unwrap_or(false),
            acl_token_ttl,
            acl_policy_ttl,
            meta_batch_window,
            gc_max_allocs: file.client.gc_max_allocs.unwrap_or(50),
            cgroup_parent: file
                .client
                .cgroup_parent
                .as_deref()
                .map(cgroup_parent)
                .transpose()?,
            raw_exec_enabled: file
                .plugin
                .raw_exec
                .as_ref()
                .and_then(|r| r.config.enabled)
                .unwrap_or(dev),
            config_warnings,
            rpc_max_conns_per_client: file
                .limits
                .rpc_max_conns_per_client
                .unwrap_or(crate::http::limits::MAX_CONNS_PER_CLIENT),
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

    /// The address this agent's own server advertises for RPC (`advertise.rpc`, else
    /// `ip:ports.rpc`).
    pub fn rpc_addr(&self) -> String {
        self.advertise_rpc.clone().unwrap_or_else(|| {
            std::net::SocketAddr::new(self.advertise_ip(), self.ports_rpc).to_string()
        })
    }

    /// The address this agent's RPC listener binds (`bind_addr:ports.rpc`).
    pub fn rpc_bind(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.bind_addr, self.ports_rpc)
    }

    /// The agent listens on its RPC port: a server chosen explicitly (`-server`,
    /// `server.enabled`), or any server whose `ports.rpc` is configured. `-dev` and role-less
    /// agents do not, so many can run side by side as before.
    pub fn rpc_listener(&self) -> bool {
        self.server_enabled && (self.roles_explicit || self.ports_rpc_set)
    }

    /// A client-only agent: its server is elsewhere, reached over RPC.
    pub fn client_only(&self) -> bool {
        self.client_enabled && !self.server_enabled
    }

    /// The agent gossips on its serf port: a server chosen explicitly (`-server`,
    /// `server.enabled`), or any server whose `ports.serf` is configured. `-dev` and role-less
    /// agents otherwise stay as before roles existed (a member list of themselves, no socket).
    pub fn gossips(&self) -> bool {
        self.server_enabled && (self.roles_explicit || self.ports_serf_set)
    }

    /// The gossip address other servers reach this one at: `advertise.serf`, else the
    /// advertise IP with the serf port.
    pub fn serf_advertise(&self) -> std::net::SocketAddr {
        self.advertise_serf
            .as_deref()
            .and_then(|a| a.parse().ok())
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
    fn cgroup_parent_is_a_relative_path_without_dot_parts() {
        assert_eq!(cgroup_parent("/nomad").unwrap(), "nomad");
        assert_eq!(cgroup_parent("a/b.slice/").unwrap(), "a/b.slice");
        for bad in ["", "/", "a/../b", "./a", "a//b", "a\0b"] {
            assert!(cgroup_parent(bad).is_err(), "{bad:?}");
        }
        assert!(cgroup_parent(&"a".repeat(MAX_CGROUP_PARENT + 1)).is_err());
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration("5"), None);
    }

    fn config_with(text: &str, flags: AgentFlags) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("nomadlet-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.hcl");
        std::fs::write(&file, text).unwrap();
        let flags = AgentFlags {
            config_files: vec![file],
            data_dir: Some(dir.join("data")),
            ..flags
        };
        let c = Config::from_flags(&flags);
        std::fs::remove_dir_all(&dir).unwrap();
        c
    }

    #[test]
    fn roles_ports_and_heartbeat_settings_follow_nomad() {
        // No role: server and client in one process, as before, with Nomad's defaults.
        let c = config_with("", AgentFlags::default()).unwrap();
        assert!(c.server_enabled && c.client_enabled && !c.rpc_listener());
        assert_eq!((c.ports_rpc, c.ports_serf), (4647, 4648));
        assert_eq!(c.heartbeat_grace, Duration::from_secs(10));
        assert_eq!(c.min_heartbeat_ttl, Duration::from_secs(10));
        assert_eq!(c.max_heartbeats_per_second, 50.0);
        assert_eq!(c.failover_heartbeat_ttl, Duration::from_secs(300));
        assert_eq!(c.rpc_max_conns_per_client, 100);
        let server = r#"
limits { rpc_max_conns_per_client = 0 }
bind_addr = "127.0.0.1"
ports {
  rpc = 5647
  serf = 5648
}
advertise { rpc = "127.0.0.2" }
server {
  enabled = true
  bootstrap_expect = 3
  heartbeat_grace = "2s"
  min_heartbeat_ttl = "3s"
  max_heartbeats_per_second = 10
  failover_heartbeat_ttl = "90s"
  encrypt = "c2VjcmV0LWtleS0xNi1ieQ=="
  server_join {
    retry_join = ["127.0.0.3:5648"]
    retry_interval = "5s"
  }
  num_schedulers = 2
}
"#;
        let c = config_with(server, AgentFlags::default()).unwrap();
        assert!(c.server_enabled && !c.client_enabled && c.rpc_listener());
        assert_eq!(c.rpc_bind().to_string(), "127.0.0.1:5647");
        assert_eq!(c.rpc_addr(), "127.0.0.2:5647");
        assert_eq!(c.ports_serf, 5648);
        assert_eq!(c.bootstrap_expect, 3);
        assert_eq!(c.heartbeat_grace, Duration::from_secs(2));
        assert_eq!(c.min_heartbeat_ttl, Duration::from_secs(3));
        assert_eq!(c.max_heartbeats_per_second, 10.0);
        assert_eq!(c.failover_heartbeat_ttl, Duration::from_secs(90));
        assert_eq!(
            c.server_encrypt.as_deref(),
            Some("c2VjcmV0LWtleS0xNi1ieQ==")
        );
        // A gossip key Serf would not take (3 bytes) is refused at load.
        let short = server.replace("c2VjcmV0LWtleS0xNi1ieQ==", "a2V5");
        let e = config_with(&short, AgentFlags::default()).unwrap_err();
        assert!(
            e.to_string().contains("must be 16, 24 or 32 bytes, got 3"),
            "{e}"
        );
        assert_eq!(c.server_retry_join, ["127.0.0.3:5648"]);
        assert_eq!(c.server_retry_interval, Duration::from_secs(5));
        assert_eq!(c.rpc_max_conns_per_client, 0, "the cap turned off");
        assert!(c
            .config_warnings
            .iter()
            .any(|w| w.contains("server.num_schedulers")));
        // A client: its retry_join entries are servers (port defaulted), plus -servers.
        let client = "client {\n  enabled = true\n  node_class = \"edge\"\n  server_join { retry_join = [\"127.0.0.4\"] }\n}\n";
        let flags = AgentFlags {
            servers: Some("127.0.0.5:4647".into()),
            ..AgentFlags::default()
        };
        let c = config_with(client, flags).unwrap();
        assert!(!c.server_enabled && c.client_enabled && c.client_only());
        assert_eq!(c.client_servers, ["127.0.0.5:4647", "127.0.0.4:4647"]);
        assert_eq!(c.node_class, "edge");
        // Flags: -server with -client is both; -dev is both with no RPC listener.
        let flags = AgentFlags {
            server: true,
            client: true,
            bootstrap_expect: Some("1".into()),
            join: vec!["127.0.0.6:4648".into()],
            encrypt: Some("b3RoZXIta2V5LTE2LWJ5dA==".into()),
            ..AgentFlags::default()
        };
        let c = config_with("", flags).unwrap();
        assert!(c.server_enabled && c.client_enabled && c.rpc_listener());
        assert_eq!(c.start_join, ["127.0.0.6:4648"]);
        assert_eq!(
            c.server_encrypt.as_deref(),
            Some("b3RoZXIta2V5LTE2LWJ5dA==")
        );
        // Bad values are refused with the key's name.
        for (bad, key) in [
            (
                "server {\n  heartbeat_grace = \"soon\"\n}\n",
                "server.heartbeat_grace",
            ),
            (
                "server {\n  max_heartbeats_per_second = 0\n}\n",
                "max_heartbeats_per_second",
            ),
            ("ports { rpc = 0 }\n", "ports.rpc"),
            ("advertise { rpc = \"nowhere\" }\n", "advertise.rpc"),
            ("client {\n  node_pool = \"all\"\n}\n", "node pool"),
        ] {
            let e = config_with(bad, AgentFlags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn server_addresses_need_a_port() {
        assert!(validate_server_addr("127.0.0.1:4647").is_ok());
        assert!(validate_server_addr("127.0.0.1").is_err());
        assert!(validate_server_addr("[::1]:4647").is_ok());
    }
}
