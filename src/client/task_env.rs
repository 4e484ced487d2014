//! The task environment of Nomad (`NOMAD_*`, `NOMAD_META_*`, the host environment minus
//! Nomad's deny-list) and `${...}` interpolation in args and env values.

use std::collections::BTreeMap;

use crate::state::jobs::alloc::AllocRecord;
use crate::state::jobs::spec::Task;

use super::alloc_dir::{AllocDir, TaskDir};

/// Host variables never passed to tasks (Nomad's default deny-list).
pub const DENIED_ENV: &[&str] = &[
    "CONSUL_TOKEN",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "NOMAD_TOKEN",
    "VAULT_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_METADATA_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
];

/// systemd's notify and watchdog variables: they name the agent's own notify socket, which a
/// task must not inherit (only the agent speaks for the service).
pub const AGENT_ONLY_ENV: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Whether a host variable is on the deny-list.
pub fn denied(key: &str) -> bool {
    DENIED_ENV.contains(&key)
        || AGENT_ONLY_ENV.contains(&key)
        || key.ends_with("_LICENSE")
        || key.ends_with("_LICENSE_PATH")
}

/// Facts about this node that interpolation may use.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub region: String,
    pub meta: BTreeMap<String, String>,
    /// `NOMAD_PARENT_CGROUP`: the cgroup task cgroups are made in (empty: no cgroups).
    pub cgroup_parent: String,
}

/// Replace characters that cannot appear in an env var name with `_`.
pub fn clean_env_key(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Build the environment of one task.
pub fn build(
    alloc: &AllocRecord,
    task: &Task,
    dirs: (&AllocDir, &TaskDir),
    node: &NodeFacts,
    host_env: impl Iterator<Item = (String, String)>,
    hook_env: &[(String, String)],
) -> BTreeMap<String, String> {
    let (alloc_dir, task_dir) = dirs;
    let job = &alloc.job;
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("NOMAD_ALLOC_DIR", alloc_dir.shared().display().to_string());
    set("NOMAD_TASK_DIR", task_dir.local.display().to_string());
    set("NOMAD_SECRETS_DIR", task_dir.secrets.display().to_string());
    set("NOMAD_ALLOC_ID", alloc.id.to_string());
    set("NOMAD_SHORT_ALLOC_ID", alloc.id.chars().take(8).collect());
    set("NOMAD_ALLOC_NAME", alloc.name.clone());
    set("NOMAD_ALLOC_INDEX", alloc.alloc_index.to_string());
    set("NOMAD_GROUP_NAME", alloc.task_group.to_string());
    set("NOMAD_TASK_NAME", task.name.clone());
    set("NOMAD_JOB_ID", job.id.clone());
    set("NOMAD_JOB_NAME", job.name.clone());
    if !job.parent_id.is_empty() {
        set("NOMAD_JOB_PARENT_ID", job.parent_id.clone());
    }
    set("NOMAD_NAMESPACE", alloc.namespace.to_string());
    set("NOMAD_REGION", job.region.clone());
    set("NOMAD_DC", node.datacenter.clone());
    if !node.cgroup_parent.is_empty() {
        set("NOMAD_PARENT_CGROUP", node.cgroup_parent.clone());
    }
    if let Some(r) = &task.resources {
        if let Some(cpu) = r.cpu.filter(|c| *c > 0) {
            set("NOMAD_CPU_LIMIT", cpu.to_string());
        }
        if r.cores > 0 {
            set("NOMAD_CPU_CORES", r.cores.to_string());
        }
        if let Some(mem) = r.memory_mb.filter(|m| *m > 0) {
            set("NOMAD_MEMORY_LIMIT", mem.to_string());
        }
        if r.memory_max_mb > 0 {
            set("NOMAD_MEMORY_MAX_LIMIT", r.memory_max_mb.to_string());
        }
    }
    port_env(alloc, &task.name, &mut set);
    let mut meta = BTreeMap::new();
    let group_meta = job.group(&alloc.task_group).and_then(|g| g.meta.clone());
    for m in [job.meta.clone(), group_meta, task.meta.clone()]
        .into_iter()
        .flatten()
    {
        meta.extend(m);
    }
    for (k, v) in &meta {
        let clean = clean_env_key(k);
        set(
            &format!("NOMAD_META_{}", clean.to_ascii_uppercase()),
            v.clone(),
        );
        set(&format!("NOMAD_META_{clean}"), v.clone());
    }
    for (k, v) in host_env {
        if !denied(&k) {
            env.entry(k).or_insert(v);
        }
    }
    if let Some(task_env) = &task.env {
        let snapshot = env.clone();
        for (k, v) in task_env {
            env.insert(k.clone(), interpolate(v, &snapshot, node));
        }
    }
    for (k, v) in hook_env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// `host:port`, with brackets around an IPv6 host (Go's `net.JoinHostPort`).
fn join_host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Nomad cleans the names of these variables (a port label may hold any character).
const CLEANED_PORT_PREFIXES: &[&str] = &[
    "NOMAD_ADDR_",
    "NOMAD_IP_",
    "NOMAD_PORT_",
    "NOMAD_HOST_PORT_",
];

/// The port variables of a task in host networking, as Nomad's env builder sets them: its own
/// legacy task network's ports, the other tasks' (`NOMAD_ADDR_<task>_<label>`), then the
/// group network's allocated ports (`NOMAD_PORT_`, `NOMAD_ALLOC_PORT_` are `to` when set).
fn port_env(alloc: &AllocRecord, task: &str, set: &mut impl FnMut(&str, String)) {
    let mut put = |k: String, v: String| {
        if CLEANED_PORT_PREFIXES.iter().any(|p| k.starts_with(p)) {
            set(&clean_env_key(&k), v);
        } else {
            set(&k, v);
        }
    };
    if let Some(ports) = alloc.ports.tasks.get(task) {
        for p in ports {
            let (ip, l) = (&p.host_ip, &p.label);
            let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
            put(format!("NOMAD_IP_{l}"), ip.clone());
            put(format!("NOMAD_{family}_{l}"), ip.clone());
            put(format!("NOMAD_HOST_PORT_{l}"), p.value.to_string());
            put(format!("NOMAD_ADDR_{l}"), join_host_port(ip, p.value));
            put(format!("NOMAD_PORT_{l}"), p.value.to_string());
        }
    }
    for (other, ports) in alloc.ports.tasks.iter().filter(|(t, _)| *t != task) {
        for p in ports {
            let l = &p.label;
            put(
                format!("NOMAD_ADDR_{other}_{l}"),
                join_host_port(&p.host_ip, p.value),
            );
            put(format!("NOMAD_IP_{other}_{l}"), p.host_ip.clone());
            put(format!("NOMAD_PORT_{other}_{l}"), p.value.to_string());
        }
    }
    for p in &alloc.ports.group {
        let (ip, l) = (&p.host_ip, &p.label);
        let addr = join_host_port(ip, p.value);
        put(format!("NOMAD_ADDR_{l}"), addr.clone());
        put(format!("NOMAD_HOST_ADDR_{l}"), addr);
        put(format!("NOMAD_IP_{l}"), ip.clone());
        put(format!("NOMAD_HOST_IP_{l}"), ip.clone());
        let inside = if p.to > 0 {
            p.to.to_string()
        } else {
            p.value.to_string()
        };
        put(format!("NOMAD_PORT_{l}"), inside.clone());
        put(format!("NOMAD_ALLOC_PORT_{l}"), inside);
        put(format!("NOMAD_HOST_PORT_{l}"), p.value.to_string());
    }
}

/// Replace `${NOMAD_X}`, `${env.X}`, `${node.unique.id}`, `${node.unique.name}`,
/// `${node.datacenter}`, `${node.region}` and `${meta.X}`; anything else is left as written.
pub fn interpolate(s: &str, env: &BTreeMap<String, String>, node: &NodeFacts) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = &after[..end];
        let value = match key {
            "node.unique.id" => Some(node.id.clone()),
            "node.unique.name" => Some(node.name.clone()),
            "node.datacenter" => Some(node.datacenter.clone()),
            "node.region" => Some(node.region.clone()),
            _ => {
                if let Some(k) = key.strip_prefix("env.") {
                    Some(env.get(k).cloned().unwrap_or_default())
                } else if let Some(k) = key.strip_prefix("meta.") {
                    node.meta.get(k).cloned()
                } else if key.starts_with("NOMAD_") {
                    env.get(key).cloned()
                } else {
                    None
                }
            }
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation() {
        let mut env = BTreeMap::new();
        env.insert("NOMAD_TASK_NAME".to_string(), "web".to_string());
        env.insert("HOME".to_string(), "/root".to_string());
        let node = NodeFacts {
            id: "n1".into(),
            ..NodeFacts::default()
        };
        assert_eq!(
            interpolate(
                "${NOMAD_TASK_NAME}-${env.HOME}-${node.unique.id}-${attr.x}-${",
                &env,
                &node
            ),
            "web-/root-n1-${attr.x}-${"
        );
    }

    #[test]
    fn deny_list() {
        assert!(denied("VAULT_TOKEN"));
        assert!(denied("NOMAD_LICENSE"));
        assert!(!denied("PATH"));
    }
}
