//! Agent config files as Nomad writes them: HCL or JSON, a file or a directory of `*.hcl` and
//! `*.json` (lexical order, merged as Nomad merges: later files win, maps merge), both JSON
//! forms of blocks (`{"plugin": {"raw_exec": ...}}` and `[{"raw_exec": [...]}]`), and an
//! unknown key is an error naming the file, the line and the key. Keys nomadlet does not act
//! on yet are accepted only when listed in [`IGNORED_KEYS`] (and README), with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ConfigError;
use crate::parse_bounds::{check_hcl, check_json_depth, HclLimits, JSON_MAX_DEPTH};

/// Bounds an HCL config file must keep before hcl-rs reads it: the policy limits, whose
/// worst case is proven to parse on a 256 KiB stack (agent configs need 3 levels, no operators).
const CONFIG_HCL_LIMITS: HclLimits = crate::parse_bounds::ACL_POLICY_LIMITS;

/// Keys of Nomad's agent config that nomadlet accepts and ignores, each with a warning in the
/// log (README lists them). Dotted paths; `plugin.*` means every plugin but `raw_exec`.
pub const IGNORED_KEYS: &[&str] = &[
    "consul",
    "vault",
    "telemetry",
    "ui",
    "audit",
    "addresses",
    "enable_syslog",
    "syslog_facility",
    "disable_update_check",
    "enable_debug",
    "log_json",
    "log_file",
    "plugin_dir",
    "client.options",
    "client.host_volume",
    "client.network_interface",
    "limits.https_handshake_timeout",
    "limits.rpc_handshake_timeout",
    "plugin.raw_exec.config.no_cgroups",
    "plugin.raw_exec.config.denied_host_uids",
    "plugin.raw_exec.config.denied_host_gids",
    "tls.rpc_upgrade_mode",
    "tls.tls_cipher_suites",
    "tls.tls_prefer_server_cipher_suites",
    "plugin.*",
];

/// Config files larger than this are refused before parsing.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Files one `-config` directory may hold.
const MAX_CONFIG_DIR_FILES: usize = 256;

/// The settings every config file may carry (all optional), after merging.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub bind_addr: Option<String>,
    pub name: Option<String>,
    pub datacenter: Option<String>,
    pub region: Option<String>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub ports: Ports,
    /// `advertise { http rpc serf }`: the addresses other agents reach this one at.
    #[serde(default)]
    pub advertise: Advertise,
    /// `server { ... }`: the server role and its cluster settings.
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub client: Client,
    #[serde(default)]
    pub acl: Acl,
    #[serde(default)]
    pub plugin: Plugins,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tls: Tls,
    /// `autopilot { ... }`: the cluster's autopilot configuration, stored by its first
    /// leader (later changes go through the API, as in Nomad).
    #[serde(default)]
    pub autopilot: Autopilot,
    /// On SIGINT: leave (on a client, drain first when `client.drain_on_shutdown` is set).
    pub leave_on_interrupt: Option<bool>,
    /// On SIGTERM: leave (as `leave_on_interrupt`).
    pub leave_on_terminate: Option<bool>,
}

/// `tls { ... }`: Nomad's names and meanings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// HTTPS only on the HTTP API (TCP; Task API sockets stay plain).
    pub http: Option<bool>,
    /// TLS for cluster RPC (read and checked; there is no RPC listener yet).
    pub rpc: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Outbound: the peer's certificate must name `server.<region>.nomad` (or `client.`).
    pub verify_server_hostname: Option<bool>,
    /// Inbound HTTPS: a client certificate signed by `ca_file` is required.
    pub verify_https_client: Option<bool>,
    /// `tls10`, `tls11`, `tls12` (all mean TLS 1.2 or later here) or `tls13`.
    pub tls_min_version: Option<String>,
}

/// `autopilot { ... }`: Nomad's names; durations are Go durations.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autopilot {
    pub cleanup_dead_servers: Option<bool>,
    pub last_contact_threshold: Option<String>,
    pub max_trailing_logs: Option<u64>,
    pub min_quorum: Option<u64>,
    pub server_stabilization_time: Option<String>,
    /// Enterprise features: stored and shown, not acted on.
    pub enable_redundancy_zones: Option<bool>,
    pub disable_upgrade_migration: Option<bool>,
    pub enable_custom_upgrades: Option<bool>,
}

/// `ports { http rpc serf }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub http: Option<u16>,
    pub rpc: Option<u16>,
    pub serf: Option<u16>,
}

/// `advertise { http rpc serf }`: `ip` or `ip:port` each.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advertise {
    pub http: Option<String>,
    pub rpc: Option<String>,
    pub serf: Option<String>,
}

/// `server_join { retry_join retry_interval retry_max start_join }` (servers and clients).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerJoin {
    #[serde(default)]
    pub retry_join: Vec<String>,
    /// Go duration, default `30s`.
    pub retry_interval: Option<String>,
    pub retry_max: Option<u32>,
    #[serde(default)]
    pub start_join: Vec<String>,
}

/// `server { ... }`. Nomad's server block has many tuning keys nomadlet does not act on; they
/// are collected in `other` and each logged as ignored (the keys below are acted on).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Server {
    pub enabled: Option<bool>,
    pub bootstrap_expect: Option<u32>,
    /// Go duration, default `10s`.
    pub heartbeat_grace: Option<String>,
    /// Go duration, default `10s`.
    pub min_heartbeat_ttl: Option<String>,
    pub max_heartbeats_per_second: Option<f64>,
    /// Go duration, default `5m`.
    pub failover_heartbeat_ttl: Option<String>,
    /// Go durations: how often the leader collects garbage, and how old finished jobs,
    /// evals and batch evals must be (defaults 5m, 4h, 1h, 24h).
    pub job_gc_interval: Option<String>,
    pub job_gc_threshold: Option<String>,
    pub eval_gc_threshold: Option<String>,
    pub batch_eval_gc_threshold: Option<String>,
    /// Base64 gossip key.
    pub encrypt: Option<String>,
    pub server_join: Option<ServerJoin>,
    /// Every other key of the block: accepted, ignored, named in a warning.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `client { ... }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub enabled: Option<bool>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub servers: Option<Vec<String>>,
    /// For a client, `retry_join` entries are server RPC addresses added to `servers`.
    pub server_join: Option<ServerJoin>,
    pub node_class: Option<String>,
    pub node_pool: Option<String>,
    pub gc_max_allocs: Option<usize>,
    /// The cgroup task cgroups are made under, relative to each hierarchy's mount.
    pub cgroup_parent: Option<String>,
    /// nomadlet's own: a fixed metadata batch window (Go duration).
    pub meta_batch_window: Option<String>,
    /// `drain_on_shutdown { deadline force ignore_system_jobs }`.
    pub drain_on_shutdown: Option<DrainOnShutdown>,
    /// The dynamic port range (Nomad's defaults 20000–32000).
    pub min_dynamic_port: Option<i64>,
    pub max_dynamic_port: Option<i64>,
    /// `host_network "<name>" { cidr interface reserved_ports }`.
    pub host_network: Option<BTreeMap<String, super::network::HostNetworkBlock>>,
    /// `reserved { cpu memory disk reserved_ports }`: what the node keeps for itself.
    pub reserved: Option<Reserved>,
}

/// `client.reserved`: resources the scheduler must leave to the host.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserved {
    /// MHz.
    pub cpu: Option<i64>,
    /// MB.
    pub memory: Option<i64>,
    /// MB.
    pub disk: Option<i64>,
    /// "22,80,8000-8100": on every address of the node.
    pub reserved_ports: Option<String>,
}

/// `client.drain_on_shutdown`: when the agent leaves (`leave_on_*`), stop its allocations
/// before it exits instead of leaving them running.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainOnShutdown {
    /// Go duration, default `1h`.
    pub deadline: Option<String>,
    pub force: Option<bool>,
    pub ignore_system_jobs: Option<bool>,
}

/// `acl { ... }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    pub enabled: Option<bool>,
    /// Go duration: how long a client-only agent trusts a resolved token (default `30s`).
    pub token_ttl: Option<String>,
    /// Go duration: how long a client-only agent trusts resolved policies (default `30s`).
    pub policy_ttl: Option<String>,
}

/// `limits { ... }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open HTTP connections from one client IP; 0 turns the cap off.
    pub http_max_conns_per_client: Option<usize>,
    /// Open connections to the RPC port from one client IP; 0 turns the cap off.
    pub rpc_max_conns_per_client: Option<usize>,
}

/// `plugin "raw_exec" { config { ... } }`; any other plugin is ignored (with a warning).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    pub raw_exec: Option<RawExecPlugin>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecPlugin {
    #[serde(default)]
    pub config: RawExecConfig,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecConfig {
    pub enabled: Option<bool>,
}

/// What loading the config files gave: the merged settings and the warnings to log once the
/// logger runs.
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: FileConfig,
    pub warnings: Vec<String>,
    /// Every file read was JSON (so advice about config keys is given in JSON form).
    pub json_only: bool,
}

/// Read every `-config` path (files, or directories of `*.hcl` / `*.json`), in order.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ConfigError> {
    let mut files = Vec::new();
    for p in paths {
        files.extend(expand(p)?);
    }
    let mut merged = Value::Object(Map::new());
    let mut warnings = Vec::new();
    for f in &files {
        let (doc, mut w) = read_one(f)?;
        warnings.append(&mut w);
        deep_merge(&mut merged, doc);
    }
    let config = serde_path_to_error::deserialize::<_, FileConfig>(&merged)
        .map_err(|e| ConfigError::Invalid(format!("config: {}: {}", e.path(), e.inner())))?;
    let json_only = !files.is_empty()
        && files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "json"));
    Ok(Loaded {
        config,
        warnings,
        json_only,
    })
}

/// A file, or the `*.hcl` and `*.json` files of a directory in lexical order.
fn expand(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        what: "file",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|source| ConfigError::Read {
        what: "dir",
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| ConfigError::Read {
            what: "dir",
            path: path.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = (name.ends_with(".hcl") || name.ends_with(".json")) && !name.starts_with('.');
        if wanted && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    if out.len() > MAX_CONFIG_DIR_FILES {
        return Err(ConfigError::Invalid(format!(
            "config dir {}: more than {MAX_CONFIG_DIR_FILES} files",
            path.display()
        )));
    }
    out.sort();
    Ok(out)
}

/// Parse and check one file on its own, so every error names the file (and line) it is in.
fn read_one(path: &Path) -> Result<(Value, Vec<String>), ConfigError> {
    let origin = path.display().to_string();
    let size = std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| ConfigError::Read {
            what: "file",
            path: path.to_path_buf(),
            source,
        })?;
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid(format!(
            "{origin}: larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what: "file",
        path: path.to_path_buf(),
        source,
    })?;
    let json = path.extension().is_some_and(|x| x == "json")
        || (path.extension().is_none() && text.trim_start().starts_with('{'));
    let raw = parse_text(&text, json).map_err(|source| ConfigError::Parse {
        origin: origin.clone(),
        source,
    })?;
    let mut doc = normalize(raw);
    let ignored = strip_ignored(&mut doc);
    if let Err(e) = serde_path_to_error::deserialize::<_, FileConfig>(&doc) {
        let path_text = e.path().to_string();
        let segments: Vec<&str> = path_text.split('.').filter(|s| !s.is_empty()).collect();
        let line = locate(&text, &segments)
            .map(|l| format!("{l}:"))
            .unwrap_or_default();
        let inner = e.into_inner().to_string();
        let what = if inner.starts_with("unknown field") {
            format!("unknown config key {path_text:?}")
        } else {
            format!("{path_text}: {inner}")
        };
        return Err(ConfigError::Invalid(format!("{origin}:{line} {what}")));
    }
    let warnings = ignored
        .into_iter()
        .map(|k| format!("{origin}: config key {k:?} is not supported by nomadlet and is ignored"))
        .collect();
    Ok((doc, warnings))
}

/// Why a config file's text is not a document. Prints as `" line:column: message"` (or
/// `" message"`), to follow the file name.
#[derive(Debug)]
pub enum ParseError {
    /// Nested deeper (or more operators) than a config may be, found before parsing.
    Bounds {
        format: &'static str,
        source: crate::parse_bounds::BoundsError,
    },
    /// Not JSON.
    Json(serde_json::Error),
    /// JSON, but not an object.
    NotObject,
    /// Not HCL.
    Hcl(crate::hcl_doc::HclError),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Bounds { format, source } => write!(f, " invalid {format}: {source}"),
            ParseError::Json(e) => {
                let s = e.to_string();
                let msg = s.split(" at line ").next().unwrap_or(&s);
                write!(f, "{}:{}: invalid JSON: {msg}", e.line(), e.column())
            }
            ParseError::NotObject => f.write_str(" the config must be a JSON object"),
            ParseError::Hcl(e) => write!(f, "{}:{}: invalid HCL: {}", e.line, e.column, e.message),
        }
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParseError::Bounds { source, .. } => Some(source),
            ParseError::Json(e) => Some(e),
            ParseError::NotObject | ParseError::Hcl(_) => None,
        }
    }
}

/// The text as a document.
fn parse_text(text: &str, json: bool) -> Result<Value, ParseError> {
    // Config files are the operator's, but a parser still never recurses unbounded.
    if json {
        check_json_depth(text.as_bytes(), JSON_MAX_DEPTH).map_err(|source| ParseError::Bounds {
            format: "JSON",
            source,
        })?;
        let v: Value = serde_json::from_str(text).map_err(ParseError::Json)?;
        if !v.is_object() {
            return Err(ParseError::NotObject);
        }
        Ok(v)
    } else {
        check_hcl(text, CONFIG_HCL_LIMITS).map_err(|source| ParseError::Bounds {
            format: "HCL",
            source,
        })?;
        crate::hcl_doc::parse(text).map_err(ParseError::Hcl)
    }
}

/// Blocks given as lists of objects (HCL, and Nomad's list-form JSON) become one object,
/// merged in order.
fn normalize(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let mut out = Value::Object(Map::new());
            for item in items {
                deep_merge(&mut out, normalize(item));
            }
            out
        }
        other => other,
    }
}

/// Merge `b` into `a`: objects key by key, anything else replaced.
fn deep_merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(am), Value::Object(bm)) => {
            for (k, v) in bm {
                match am.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        am.insert(k, v);
                    }
                }
            }
        }
        (slot, b) => *slot = b,
    }
}

/// Take the ignored keys out of `doc` (so the typed read sees only keys nomadlet acts on) and
/// name the ones it had.
fn strip_ignored(doc: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in IGNORED_KEYS {
        let (parent, last) = match key.rsplit_once('.') {
            Some((p, l)) => (get_path_mut(doc, p), l),
            None => (Some(&mut *doc), *key),
        };
        let Some(Value::Object(m)) = parent else {
            continue;
        };
        if last == "*" {
            let names: Vec<String> = m.keys().filter(|n| *n != "raw_exec").cloned().collect();
            for name in names {
                m.remove(&name);
                out.push(format!("{}.{name}", key.trim_end_matches(".*")));
            }
        } else if m.remove(last).is_some() {
            out.push((*key).to_string());
        }
    }
    out
}

fn get_path_mut<'a>(doc: &'a mut Value, dotted: &str) -> Option<&'a mut Value> {
    dotted.split('.').try_fold(doc, |v, k| v.get_mut(k))
}

/// The 1-based line where the key at `segments` is written: each segment is looked for as a
/// key (`name =`, `name {`, `name "label"`, `"name":`) from where its parent was found.
fn locate(text: &str, segments: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for seg in segments {
        let at = (from..lines.len()).find(|&i| is_key_line(lines[i], seg))?;
        found = Some(at + 1);
        from = at;
    }
    found
}

fn is_key_line(line: &str, key: &str) -> bool {
    let t = line.trim_start();
    let quoted = format!("\"{key}\"");
    if let Some(rest) = t.strip_prefix(&quoted) {
        return rest.trim_start().starts_with(':') || rest.trim_start().starts_with('{');
    }
    if line.contains(&format!("{quoted}:")) || line.contains(&format!("{quoted} :")) {
        return true;
    }
    t.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '=', '{', '"']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str, json: bool) -> Result<FileConfig, String> {
        let mut v = normalize(parse_text(text, json).map_err(|e| e.to_string())?);
        strip_ignored(&mut v);
        serde_path_to_error::deserialize::<_, FileConfig>(&v).map_err(|e| e.to_string())
    }

    #[test]
    fn hcl_and_both_json_forms_read_the_same() {
        let hcl = r#"
data_dir = "/d"
ports { http = 5656 }
client {
  meta { a = "b" }
  servers = ["127.0.0.9:4647"]
}
acl { enabled = true }
plugin "raw_exec" {
  config { enabled = true }
}
"#;
        let obj = r#"{"data_dir":"/d","ports":{"http":5656},"client":{"meta":{"a":"b"},"servers":["127.0.0.9:4647"]},"acl":{"enabled":true},"plugin":{"raw_exec":{"config":{"enabled":true}}}}"#;
        let list = r#"{"data_dir":"/d","ports":[{"http":5656}],"client":[{"meta":[{"a":"b"}],"servers":["127.0.0.9:4647"]}],"acl":[{"enabled":true}],"plugin":[{"raw_exec":[{"config":[{"enabled":true}]}]}]}"#;
        for (text, json) in [(hcl, false), (obj, true), (list, true)] {
            let c = doc(text, json).unwrap();
            assert_eq!(c.ports.http, Some(5656), "{text}");
            assert_eq!(c.client.meta.get("a").map(String::as_str), Some("b"));
            assert_eq!(c.acl.enabled, Some(true));
            assert_eq!(c.plugin.raw_exec.unwrap().config.enabled, Some(true));
        }
    }

    #[test]
    fn unknown_keys_are_found_with_their_line() {
        let text = "ports {\n  http = 1\n  htp = 2\n}\n";
        let segs = ["ports", "htp"];
        assert!(doc(text, false).is_err());
        assert_eq!(locate(text, &segs), Some(3));
        let json = "{\n \"ports\": {\n  \"http\": 1,\n  \"htp\": 2\n }\n}";
        assert_eq!(locate(json, &segs), Some(4));
        assert_eq!(locate("log_levle = \"x\"\n", &["log_levle"]), Some(1));
    }

    #[test]
    fn ignored_keys_are_reported() {
        let mut v = normalize(
            parse_text(
                "consul { address = \"x\" }\nplugin \"docker\" {}\nplugin \"raw_exec\" {}\n",
                false,
            )
            .unwrap(),
        );
        assert_eq!(strip_ignored(&mut v), ["consul", "plugin.docker"]);
        assert_eq!(v, serde_json::json!({"plugin": {"raw_exec": {}}}));
    }

    #[test]
    fn the_per_client_connection_cap_is_read_from_limits() {
        for (text, want) in [
            ("limits { http_max_conns_per_client = 0 }", Some(0)),
            ("limits { http_max_conns_per_client = 7 }", Some(7)),
            ("name = \"x\"", None),
        ] {
            assert_eq!(
                doc(text, false).unwrap().limits.http_max_conns_per_client,
                want
            );
        }
        for bad in ["-1", "\"7\"", "1.5"] {
            let text = format!(r#"{{"limits":{{"http_max_conns_per_client":{bad}}}}}"#);
            assert!(doc(&text, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tls_block_is_read_and_its_unsupported_keys_ignored() {
        let text = r#"
tls {
  http = true
  rpc = true
  ca_file = "/etc/nomad.d/ca.pem"
  cert_file = "/etc/nomad.d/server.pem"
  key_file = "/etc/nomad.d/server-key.pem"
  verify_server_hostname = true
  verify_https_client = false
  tls_min_version = "tls13"
  rpc_upgrade_mode = false
}
"#;
        let mut v = normalize(parse_text(text, false).unwrap());
        assert_eq!(strip_ignored(&mut v), ["tls.rpc_upgrade_mode"]);
        let c: FileConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.tls.http, Some(true));
        assert_eq!(c.tls.rpc, Some(true));
        assert_eq!(
            c.tls.key_file.as_deref(),
            Some(Path::new("/etc/nomad.d/server-key.pem"))
        );
        assert_eq!(c.tls.verify_server_hostname, Some(true));
        assert_eq!(c.tls.verify_https_client, Some(false));
        assert_eq!(c.tls.tls_min_version.as_deref(), Some("tls13"));
        assert!(doc("tls { htp = true }", false).is_err());
    }

    #[test]
    fn later_files_win_and_maps_merge() {
        let mut a = normalize(serde_json::json!({"name": "a", "client": [{"meta": {"x": "1"}}]}));
        deep_merge(
            &mut a,
            normalize(serde_json::json!({"name": "b", "client": {"meta": {"y": "2"}}})),
        );
        assert_eq!(
            a,
            serde_json::json!({"name": "b", "client": {"meta": {"x": "1", "y": "2"}}})
        );
    }
}
