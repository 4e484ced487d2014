//! The agent's settings: one table of command-line flags (Nomad's names), a JSON config file
//! with Nomad's agent config keys, and the merged [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

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
    FlagSpec { name: "config", value: Some("FILE"), repeatable: true, help: "JSON config file with Nomad's agent config keys" },
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

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

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
    /// Open HTTP connections allowed from one client IP (`limits.http_max_conns_per_client`,
    /// default 100); 0 turns the cap off.
    pub http_max_conns_per_client: usize,
}

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

/// Settings read from one JSON config file (every key optional).
#[derive(Debug, Default, Clone)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    bind_addr: Option<String>,
    http_port: Option<u16>,
    name: Option<String>,
    datacenter: Option<String>,
    region: Option<String>,
    meta: BTreeMap<String, String>,
    servers: Option<Vec<String>>,
    log_level: Option<String>,
    acl_enabled: Option<bool>,
    meta_batch_window: Option<String>,
    gc_max_allocs: Option<usize>,
    raw_exec_enabled: Option<bool>,
    http_max_conns_per_client: Option<usize>,
}

fn get_str(v: &Value, key: &str) -> Result<Option<String>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ConfigError(format!("config key {key:?} must be a string"))),
    }
}

fn get_obj<'a>(
    v: &'a Value,
    key: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ConfigError(format!("config key {key:?} must be an object"))),
    }
}

fn get_bool(v: &Value, key: &str) -> Result<Option<bool>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ConfigError(format!("config key {key:?} must be a boolean"))),
    }
}

impl FileConfig {
    fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError(format!("{origin}: invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(ConfigError(format!(
                "{origin}: the config must be a JSON object"
            )));
        }
        let wrap = |e: ConfigError| ConfigError(format!("{origin}: {}", e.0));
        let mut fc = FileConfig {
            data_dir: get_str(&v, "data_dir").map_err(wrap)?.map(PathBuf::from),
            bind_addr: get_str(&v, "bind_addr").map_err(wrap)?,
            name: get_str(&v, "name").map_err(wrap)?,
            datacenter: get_str(&v, "datacenter").map_err(wrap)?,
            region: get_str(&v, "region").map_err(wrap)?,
            log_level: get_str(&v, "log_level").map_err(wrap)?,
            ..FileConfig::default()
        };
        if let Some(ports) = get_obj(&v, "ports").map_err(wrap)? {
            match ports.get("http") {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => {
                    let port = n
                        .as_u64()
                        .filter(|p| (1..=65535).contains(p))
                        .ok_or_else(|| {
                            ConfigError(format!("{origin}: ports.http must be a port number"))
                        })?;
                    fc.http_port = Some(port as u16);
                }
                Some(_) => {
                    return Err(ConfigError(format!(
                        "{origin}: ports.http must be a port number"
                    )))
                }
            }
        }
        if let Some(client) = v.get("client") {
            if !client.is_object() {
                return Err(ConfigError(format!(
                    "{origin}: config key \"client\" must be an object"
                )));
            }
            if let Some(meta) = get_obj(client, "meta").map_err(wrap)? {
                for (k, val) in meta {
                    let s = val.as_str().ok_or_else(|| {
                        ConfigError(format!("{origin}: client.meta.{k} must be a string"))
                    })?;
                    fc.meta.insert(k.clone(), s.to_string());
                }
            }
            match client.get("servers") {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => {
                    let mut out = Vec::new();
                    for s in a {
                        out.push(s.as_str().map(str::to_string).ok_or_else(|| {
                            ConfigError(format!(
                                "{origin}: client.servers must be a list of strings"
                            ))
                        })?);
                    }
                    fc.servers = Some(out);
                }
                Some(_) => {
                    return Err(ConfigError(format!(
                        "{origin}: client.servers must be a list of strings"
                    )))
                }
            }
            match client.get("gc_max_allocs") {
                None | Some(Value::Null) => {}
                Some(n) => {
                    fc.gc_max_allocs = Some(n.as_u64().ok_or_else(|| {
                        ConfigError(format!(
                            "{origin}: client.gc_max_allocs must be a whole number"
                        ))
                    })? as usize)
                }
            }
            fc.meta_batch_window = get_str(client, "meta_batch_window").map_err(wrap)?;
        }
        if let Some(limits) = get_obj(&v, "limits").map_err(wrap)? {
            match limits.get("http_max_conns_per_client") {
                None | Some(Value::Null) => {}
                Some(n) => {
                    let n = n
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            ConfigError(format!(
                                "{origin}: limits.http_max_conns_per_client must be a whole number >= 0"
                            ))
                        })?;
                    fc.http_max_conns_per_client = Some(n);
                }
            }
        }
        if let Some(acl) = v.get("acl") {
            fc.acl_enabled = get_bool(acl, "enabled").map_err(wrap)?;
        }
        if let Some(enabled) = v
            .get("plugin")
            .and_then(|p| p.get("raw_exec"))
            .and_then(|r| r.get("config"))
            .and_then(|c| c.get("enabled"))
        {
            fc.raw_exec_enabled = Some(enabled.as_bool().ok_or_else(|| {
                ConfigError(format!(
                    "{origin}: plugin.raw_exec.config.enabled must be a boolean"
                ))
            })?);
        }
        Ok(fc)
    }
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

/// Check a server address: `ip:port` (or `[v6]:port`) with a port.
pub fn validate_server_addr(addr: &str) -> Result<(), String> {
    addr.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("address {addr}: missing port in address or not an ip:port"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nomadlet".to_string())
}

const LOG_LEVELS: &[&str] = &["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF"];

impl Config {
    /// Merge flags over config files over defaults, and validate.
    pub fn from_flags(flags: &AgentFlags) -> Result<Config, ConfigError> {
        let mut file = FileConfig::default();
        for path in &flags.config_files {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            let fc = FileConfig::parse(&text, &path.display().to_string())?;
            file = merge(file, fc);
        }
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
                return Err(ConfigError(
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
            ConfigError(format!(
                "invalid bind address {bind_text:?}: not an IP address"
            ))
        })?;
        let http_port =
            match &flags.http_port {
                Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    ConfigError(format!("invalid -http-port {p:?}: must be 1-65535"))
                })?,
                None => file.http_port.unwrap_or(4646),
            };
        let mut meta = file.meta.clone();
        for kv in &flags.meta {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("invalid -meta {kv:?}: expected KEY=VALUE")))?;
            if k.is_empty() {
                return Err(ConfigError(format!("invalid -meta {kv:?}: empty key")));
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
            None => file.servers.clone().unwrap_or_default(),
        };
        for s in &servers {
            validate_server_addr(s).map_err(|e| ConfigError(format!("invalid server: {e}")))?;
        }
        let log_level = flags
            .log_level
            .clone()
            .or(file.log_level.clone())
            .unwrap_or_else(|| "INFO".into())
            .to_uppercase();
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            return Err(ConfigError(format!(
                "invalid log level {log_level:?}: use TRACE, DEBUG, INFO, WARN, ERROR or OFF"
            )));
        }
        let meta_batch_window = match flags
            .meta_batch_window
            .clone()
            .or(file.meta_batch_window.clone())
        {
            Some(w) => Some(
                parse_go_duration(&w)
                    .filter(|d| *d <= Duration::from_secs(10))
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "invalid meta batch window {w:?}: a duration up to 10s"
                        ))
                    })?,
            ),
            None => None,
        };
        Ok(Config {
            dev,
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
            acl_enabled: flags.acl_enabled || file.acl_enabled.unwrap_or(false),
            meta_batch_window,
            gc_max_allocs: file.gc_max_allocs.unwrap_or(50),
            raw_exec_enabled: file.raw_exec_enabled.unwrap_or(dev),
            http_max_conns_per_client: file
                .http_max_conns_per_client
                .unwrap_or(crate::http::limits::MAX_CONNS_PER_CLIENT),
        })
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

fn merge(mut a: FileConfig, b: FileConfig) -> FileConfig {
    a.data_dir = b.data_dir.or(a.data_dir);
    a.bind_addr = b.bind_addr.or(a.bind_addr);
    a.http_port = b.http_port.or(a.http_port);
    a.name = b.name.or(a.name);
    a.datacenter = b.datacenter.or(a.datacenter);
    a.region = b.region.or(a.region);
    a.meta.extend(b.meta);
    a.servers = b.servers.or(a.servers);
    a.log_level = b.log_level.or(a.log_level);
    a.acl_enabled = b.acl_enabled.or(a.acl_enabled);
    a.meta_batch_window = b.meta_batch_window.or(a.meta_batch_window);
    a.gc_max_allocs = b.gc_max_allocs.or(a.gc_max_allocs);
    a.raw_exec_enabled = b.raw_exec_enabled.or(a.raw_exec_enabled);
    a.http_max_conns_per_client = b.http_max_conns_per_client.or(a.http_max_conns_per_client);
    a
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
    fn file_config_reads_nomad_keys() {
        let fc = FileConfig::parse(
            r#"{"data_dir":"/d","ports":{"http":5656},"client":{"meta":{"a":"b"},"servers":["1.2.3.4:4647"]},"acl":{"enabled":true}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(fc.http_port, Some(5656));
        assert_eq!(fc.meta.get("a").map(String::as_str), Some("b"));
        assert_eq!(fc.acl_enabled, Some(true));
        assert!(FileConfig::parse(r#"{"ports":{"http":"x"}}"#, "t").is_err());
    }

    #[test]
    fn the_per_client_connection_cap_is_read_from_limits() {
        let fc = FileConfig::parse(r#"{"limits":{"http_max_conns_per_client":0}}"#, "t").unwrap();
        assert_eq!(fc.http_max_conns_per_client, Some(0));
        let fc = FileConfig::parse(r#"{"limits":{"http_max_conns_per_client":7}}"#, "t").unwrap();
        assert_eq!(fc.http_max_conns_per_client, Some(7));
        for bad in [r#"-1"#, r#""7""#, r#"1.5"#] {
            let text = format!(r#"{{"limits":{{"http_max_conns_per_client":{bad}}}}}"#);
            assert!(FileConfig::parse(&text, "t").is_err(), "{bad}");
        }
        assert!(FileConfig::parse(r#"{"limits":3}"#, "t").is_err());
        assert_eq!(FileConfig::default().http_max_conns_per_client, None);
    }

    #[test]
    fn server_addresses_need_a_port() {
        assert!(validate_server_addr("127.0.0.1:4647").is_ok());
        assert!(validate_server_addr("127.0.0.1").is_err());
        assert!(validate_server_addr("[::1]:4647").is_ok());
    }
}
