//! `GET /v1/agent/host`: what the operator debug bundle collects about the host — `uname`,
//! network addresses, `/etc/resolv.conf`, `/etc/hosts`, the agent's environment with every
//! secret-looking value redacted, and disk usage per mounted filesystem — in Nomad's
//! `HostDataResponse` shape.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use crate::http::Method;

use super::auth::Identity;
use super::{json, ApiError, ApiResult, Ctx};

/// Most bytes read from one host file (`/etc/hosts`, `/etc/resolv.conf`, `/proc/mounts`).
const MAX_HOST_FILE: u64 = 256 * 1024;
/// What a redacted environment value reads as.
const REDACTED: &str = "<redacted>";
/// Words that make an environment variable's value secret when its name contains them
/// (Nomad redacts TOKEN and SECRET; nomadlet is stricter).
const SECRET_WORDS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASS",
    "KEY",
    "CREDENTIAL",
    "AUTH",
    "LICENSE",
    "COOKIE",
    "SESSION",
    "PRIVATE",
    "CERT",
    "SIGNATURE",
];
/// Filesystem types Nomad leaves out of the disk report.
const SKIPPED_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "cgroup",
    "cgroup2",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "fuse.lxcfs",
    "hugetlbfs",
    "mqueue",
    "proc",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "sysfs",
    "tmpfs",
    "vboxsf",
    "nsfs",
    "tracefs",
    "configfs",
    "bpf",
    "overlay",
    "squashfs",
];

fn slurp(path: &str) -> String {
    let mut out = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            if let Err(e) = f.take(MAX_HOST_FILE).read_to_end(&mut out) {
                return e.to_string();
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        Err(e) => e.to_string(),
    }
}

/// Whether an environment variable's value must not be shown.
pub fn is_secret_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| up.contains(w))
        || matches!(
            up.as_str(),
            "GOOGLE_APPLICATION_CREDENTIALS" | "AWS_ACCESS_KEY_ID"
        )
}

fn environment() -> BTreeMap<String, String> {
    std::env::vars_os()
        .map(|(k, v)| {
            let k = k.to_string_lossy().into_owned();
            let v = if is_secret_name(&k) {
                REDACTED.to_string()
            } else {
                v.to_string_lossy().into_owned()
            };
            (k, v)
        })
        .collect()
}

fn os_line() -> String {
    match crate::sys::host::uname() {
        Ok(f) => f.join(" "),
        Err(e) => e.to_string(),
    }
}

fn network() -> Vec<Value> {
    match crate::sys::host::interface_addrs() {
        Ok(addrs) => addrs
            .into_iter()
            .map(|a| {
                let kind = if a.addr.is_ipv4() { "IPv4" } else { "IPv6" };
                json!({
                    "name": a.interface,
                    "type": kind,
                    "address": a.addr.to_string(),
                    "string": format!("{}/{}", a.addr, a.prefix),
                    "mask_bits": a.prefix.to_string(),
                    "flags": format!("{:#x}", a.flags),
                })
            })
            .collect(),
        Err(e) => vec![json!({"error": e.to_string()})],
    }
}

/// Mount points worth reporting, from `/proc/mounts`.
fn mounted_paths() -> Vec<String> {
    let text = slurp("/proc/mounts");
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let _dev = f.next()?;
            let mount = f.next()?;
            let fs = f.next()?;
            (!SKIPPED_FS.contains(&fs)).then(|| mount.replace("\\040", " "))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn disks() -> BTreeMap<String, Value> {
    let mb = 1024 * 1024;
    mounted_paths()
        .into_iter()
        .filter_map(|p| {
            let (total, avail) = crate::sys::host::fs_space(Path::new(&p))?;
            Some((
                p,
                json!({"DiskMB": total / mb, "UsedMB": total.saturating_sub(avail) / mb}),
            ))
        })
        .collect()
}

/// Serve `GET /v1/agent/host`: `agent:read`; with ACLs disabled only in dev mode (Nomad asks
/// for `enable_debug`, which `-dev` turns on).
pub fn route(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    match ctx.identity {
        Identity::AclsDisabled if !ctx.agent.config.dev => {
            return Err(ApiError::permission_denied())
        }
        _ => ctx.identity.allow_agent(false)?,
    }
    let server_id = ctx.req.query("server_id").unwrap_or("");
    let node_id = ctx.req.query("node_id").unwrap_or("");
    if !server_id.is_empty() && !node_id.is_empty() {
        return Err(ApiError::bad_request(
            "Can only forward to either client node or server",
        ));
    }
    if !node_id.is_empty() && node_id != ctx.agent.node.id() {
        return Err(ApiError::internal(format!("node not found: {node_id}")));
    }
    let me = ctx.agent.membership.local().name.clone();
    if !server_id.is_empty() && server_id != "leader" && server_id != me {
        return Err(ApiError::internal(format!("unknown server: {server_id}")));
    }
    json(&json!({
        "AgentID": ctx.agent.node.id(),
        "HostData": {
            "OS": os_line(),
            "Network": network(),
            "ResolvConf": slurp("/etc/resolv.conf"),
            "Hosts": slurp("/etc/hosts"),
            "Environment": environment(),
            "Disk": disks(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_names_are_redacted() {
        for n in [
            "NOMAD_TOKEN",
            "vault_token",
            "AWS_SECRET_ACCESS_KEY",
            "DB_PASSWORD",
            "API_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["PATH", "HOME", "LANG", "NOMAD_ADDR"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }
}
