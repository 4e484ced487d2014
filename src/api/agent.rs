//! The Agent API: members, servers, self, join, force-leave and health (ref §2).

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::Method;
use crate::state::members::Member;
use crate::tls::client::Stream;

/// How a join dials peers over HTTPS: the client configuration and the server name to verify.
type PeerTls = (Arc<rustls::ClientConfig>, String);

use super::params::{check_common, parse_go_bool};
use super::{empty, json, ApiError, ApiReply, ApiResult, Ctx, IndexMeta};

/// How long one join request may take in all (every address, every byte).
const JOIN_DEADLINE: Duration = Duration::from_secs(5);
/// Addresses one join request may name.
const MAX_JOIN_ADDRESSES: usize = 16;
/// Longest member name accepted from a peer.
const MAX_MEMBER_NAME: usize = 256;
/// Largest `/v1/agent/self` reply read from a joining agent.
const JOIN_MAX_REPLY: usize = 1024 * 1024;
/// Port assumed for a join address without one (nomadlet joins over the HTTP API).
const JOIN_DEFAULT_PORT: u16 = 4646;

/// Serve `/v1/agent/*`.
pub fn route(ctx: &Ctx, path: &str) -> ApiResult {
    match path {
        "agent/members" => members(ctx),
        "agent/servers" => servers(ctx),
        "agent/self" => agent_self(ctx),
        "agent/join" => join(ctx),
        "agent/force-leave" => force_leave(ctx),
        "agent/health" => health(ctx),
        "agent/host" => super::agent_host::route(ctx),
        "agent/monitor" => super::monitor::route(ctx),
        _ => Err(ApiError::no_route()),
    }
}

fn members(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    check_common(ctx.req)?;
    ctx.identity.allow_node(false)?;
    let c = &ctx.agent.config;
    json(&json!({
        "ServerName": c.node_name,
        "ServerRegion": c.region,
        "ServerDC": c.datacenter,
        "Members": ctx.agent.membership.members(),
    }))
}

fn servers(ctx: &Ctx) -> ApiResult {
    match ctx.method() {
        Method::Get => {
            ctx.identity.allow_agent(false)?;
            json(&ctx.agent.membership.servers())
        }
        Method::Put | Method::Post => {
            let addrs: Vec<String> = ctx.req.query_all("address").map(str::to_string).collect();
            if addrs.is_empty() {
                return Err(ApiError::bad_request("missing server address"));
            }
            ctx.identity.allow_agent(true)?;
            for a in &addrs {
                crate::config::validate_server_addr(a)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
            ctx.agent
                .membership
                .set_servers(addrs)
                .map_err(|e| ApiError::internal(format!("failed to persist servers: {e}")))?;
            empty()
        }
        _ => Err(ApiError::invalid_method()),
    }
}

fn thread_count() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default()
}

/// The `config` object of `/v1/agent/self`, with Go's field names.
/// A configured file's path as Nomad shows it (empty when unset).
fn path_text(p: Option<&std::path::Path>) -> String {
    p.map(|p| p.display().to_string()).unwrap_or_default()
}

fn config_json(ctx: &Ctx) -> Value {
    let c = &ctx.agent.config;
    let data_dir = c.data_dir.display().to_string();
    let bind = c.bind_addr.to_string();
    json!({
        "Region": c.region,
        "Datacenter": c.datacenter,
        "NodeName": c.node_name,
        "DataDir": data_dir,
        "LogLevel": c.log_level,
        "BindAddr": bind,
        // `-dev` turns debug on, as in Nomad: it opens /v1/agent/host without ACLs.
        "EnableDebug": c.dev,
        "Ports": {"HTTP": c.http_port, "RPC": c.ports_rpc, "Serf": c.ports_serf},
        "Addresses": {"HTTP": bind, "RPC": bind, "Serf": bind},
        "AdvertiseAddrs": {
            "HTTP": c.advertise_http.clone()
                .unwrap_or_else(|| format!("{}:{}", c.advertise_ip(), c.http_port)),
            "RPC": c.rpc_addr(),
            "Serf": c.advertise_serf.clone()
                .unwrap_or_else(|| format!("{}:{}", c.advertise_ip(), c.ports_serf)),
        },
        "TLSConfig": {
            "EnableHTTP": c.tls.http,
            "EnableRPC": c.tls.rpc,
            "VerifyServerHostname": c.tls.verify_server_hostname,
            "VerifyHTTPSClient": c.tls.verify_https_client,
            "CAFile": path_text(c.tls.ca_file.as_deref()),
            "CertFile": path_text(c.tls.cert_file.as_deref()),
            "KeyFile": path_text(c.tls.key_file.as_deref()),
        },
        "Client": {
            "Enabled": c.client_enabled,
            "StateDir": format!("{data_dir}/client"),
            "AllocDir": format!("{data_dir}/alloc"),
            "Servers": ctx.agent.membership.servers(),
            "NodeClass": c.node_class,
            "NodePool": c.node_pool,
            "Meta": c.meta,
            "GCMaxAllocs": c.gc_max_allocs,
            "Options": {"driver.raw_exec.enable": if c.raw_exec_enabled { "1" } else { "0" }},
        },
        "Server": {"Enabled": c.server_enabled, "BootstrapExpect": c.bootstrap_expect},
        "ACL": {"Enabled": c.acl_enabled, "ReplicationToken": "<redacted>"},
        "UI": {"Enabled": false, "ShowCLIHints": false},
        "Version": {"Version": env!("CARGO_PKG_VERSION"), "Revision": "", "VersionPrerelease": "", "VersionMetadata": ""},
        "DevMode": c.dev,
    })
}

fn agent_self(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    ctx.identity.allow_agent(false)?;
    let a = ctx.agent;
    let uptime = a.started_at.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    let facts = a.node.facts();
    let servers = a.membership.servers();
    json(&json!({
        "config": config_json(ctx),
        "member": a.membership.local(),
        "stats": {
            "runtime": {
                "arch": facts.arch,
                "version": "rust",
                "kernel.name": facts.kernel_name,
                "cpu_count": facts.cpu_cores.to_string(),
                "max_procs": facts.cpu_cores.to_string(),
                "goroutines": thread_count(),
            },
            "client": {
                "node_id": a.node.id(),
                "known_servers": servers.join(","),
                "num_allocations": a.workloads.alloc_count().to_string(),
                "last_heartbeat": "0",
                "heartbeat_ttl": "0",
                "cgroup_mode": a.client.cgroups.mode().as_str(),
            },
            "nomad": {
                "server": "true",
                "leader": "true",
                "leader_addr": a.config.rpc_addr(),
                "bootstrap": "true",
                "known_regions": "1",
                "uptime": uptime.to_string(),
            },
        },
    }))
}

/// Ask the agent at `addr` who it is, over its HTTP API, before `deadline`. Only a reply that
/// is a whole nomadlet member consistent with the address dialed is accepted; nothing the peer
/// sent is ever echoed back (a join must not be a way to read other services).
fn probe_member(
    addr: &str,
    deadline: Instant,
    region: &str,
    tls: Option<&PeerTls>,
) -> Result<Member, String> {
    let with_port = if addr.parse::<SocketAddr>().is_ok()
        || addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(']') && !h.contains(':') && p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:{JOIN_DEFAULT_PORT}")
    };
    let sock = with_port
        .to_socket_addrs()
        .map_err(|e| format!("lookup {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("lookup {with_port}: no addresses"))?;
    if remaining(deadline).is_none() {
        return Err(format!("dial tcp {sock}: i/o timeout"));
    }
    let tls = tls.map(|(config, name)| (config.clone(), name.as_str()));
    let mut s = crate::tls::client::dial(&sock, tls, deadline).map_err(|e| match e {
        crate::tls::TlsError::Io(e) => format!("dial tcp {sock}: connect: {}", io_reason(&e)),
        other => format!("dial tcp {sock}: {other}"),
    })?;
    let io_err = |e: std::io::Error| format!("read from {sock}: {}", io_reason(&e));
    s.tcp()
        .set_write_timeout(remaining(deadline))
        .map_err(io_err)?;
    s.write_all(
        format!("GET /v1/agent/self HTTP/1.1\r\nHost: {sock}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| format!("write to {sock}: {}", io_reason(&e)))?;
    let reply = read_until_deadline(&mut s, deadline).map_err(io_err)?;
    let not_ours = || format!("{sock} is not a nomadlet agent");
    let (head, body) = split_reply(&reply).ok_or_else(not_ours)?;
    let status_ok = head.starts_with(b"HTTP/1.1 200 ") || head.starts_with(b"HTTP/1.0 200 ");
    if !status_ok {
        return Err(not_ours());
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| not_ours())?;
    let member = serde_json::from_value::<Member>(v.get("member").cloned().unwrap_or(Value::Null))
        .map_err(|_| not_ours())?;
    if !is_peer_at(&member, &sock, region) {
        return Err(not_ours());
    }
    Ok(member)
}

/// A member answer is a peer's only if it describes the agent dialed: a nomadlet of our
/// region whose advertised address and HTTP port are the ones we reached, with a node ID.
fn is_peer_at(m: &Member, sock: &SocketAddr, region: &str) -> bool {
    let tag = |k: &str| m.tags.get(k).map(String::as_str);
    let addr_ok = m
        .addr
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip == sock.ip() || (ip.is_unspecified() && sock.ip().is_loopback()));
    addr_ok
        && tag("role") == Some("nomad")
        && tag("region") == Some(region)
        && tag("http_port") == Some(sock.port().to_string().as_str())
        && tag("id").is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
        && m.name.len() <= MAX_MEMBER_NAME
        && m.name.ends_with(&format!(".{region}"))
        && m.status == "alive"
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Read a whole `Connection: close` reply, at most `JOIN_MAX_REPLY` bytes, before `deadline`
/// (each read gets only the time that is left, so a peer trickling bytes cannot stretch it).
fn read_until_deadline(s: &mut Stream, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let Some(left) = remaining(deadline) else {
            return Err(std::io::ErrorKind::TimedOut.into());
        };
        s.tcp().set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > JOIN_MAX_REPLY {
                    return Err(std::io::Error::other("reply too large"));
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Split a raw reply at the end of its head.
fn split_reply(reply: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&reply[..at], &reply[at + 4..]))
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

fn join(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let addrs: Vec<&str> = ctx.req.query_all("address").collect();
    if addrs.is_empty() {
        return Err(ApiError::bad_request("missing address to join"));
    }
    // Joining makes this agent dial out: only an operator with agent:write may ask.
    ctx.identity.allow_agent(true)?;
    if addrs.len() > MAX_JOIN_ADDRESSES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_JOIN_ADDRESSES} addresses may be joined at once"
        )));
    }
    // One deadline for the whole join, however many addresses and however slow each peer.
    let deadline = Instant::now() + JOIN_DEADLINE;
    let region = ctx.agent.config.region.clone();
    // With tls.http every agent's API is HTTPS: dial peers over TLS, verified against ca_file.
    let tls = match ctx.agent.tls.as_ref().filter(|t| t.http()) {
        Some(t) => Some((
            t.client_config()
                .map_err(|e| ApiError::internal(format!("cannot join over HTTPS: {e}")))?,
            t.peer_server_name(),
        )),
        None => None,
    };
    let mut joined = 0;
    let mut errors = Vec::new();
    for a in addrs {
        match probe_member(a, deadline, &region, tls.as_ref()) {
            Ok(m) => {
                ctx.agent.membership.add(m);
                joined += 1;
            }
            Err(e) => errors.push(format!("Failed to join {a}: {e}")),
        }
    }
    let error = if errors.is_empty() {
        String::new()
    } else {
        let mut s = format!(
            "{} error{} occurred:\n",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
        for e in &errors {
            s.push_str(&format!("\t* {e}\n"));
        }
        s.push('\n');
        s
    };
    json(&json!({"num_joined": joined, "error": error, "warning": ""}))
}

fn force_leave(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    ctx.identity.allow_agent(true)?;
    let node = ctx.req.query("node").unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request("missing node to force leave"));
    }
    let prune = match ctx.req.query("prune") {
        None | Some("") => false,
        Some(v) => parse_go_bool(v).ok_or_else(|| ApiError::bad_request("invalid prune value"))?,
    };
    if node == ctx.agent.membership.local().name {
        return Err(ApiError::internal("cannot force-leave the local agent"));
    }
    ctx.agent.membership.force_leave(node, prune);
    empty()
}

fn health(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    let types: Vec<&str> = ctx.req.query_all("type").collect();
    let check_client = types.is_empty() || types.contains(&"client");
    let check_server = types.is_empty() || types.contains(&"server");
    let mut doc = serde_json::Map::new();
    let mut ok = true;
    if check_client {
        let known = !ctx.agent.membership.servers().is_empty();
        ok &= known;
        doc.insert(
            "client".into(),
            json!({"ok": known, "message": if known { "ok" } else { "no known servers" }}),
        );
    }
    if check_server {
        doc.insert("server".into(), json!({"ok": true, "message": "ok"}));
    }
    let value = Value::Object(doc);
    if ok {
        Ok(ApiReply::Json {
            value,
            meta: IndexMeta::None,
        })
    } else {
        Err(ApiError::internal(value.to_string()))
    }
}
