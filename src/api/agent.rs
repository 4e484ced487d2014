//! The Agent API: members, servers, self, join, force-leave and health (ref §2).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gossip::MemberInfo;
use crate::http::{Method, Status};
use crate::tls::client::Stream;

/// How a forwarded request dials a server over HTTPS: the client configuration and the
/// server name to verify.
type PeerTls = (Arc<rustls::ClientConfig>, String);

use super::params::{check_common, parse_go_bool};
use super::{empty, json, ApiError, ApiReply, ApiResult, Ctx};

/// How long one join request may take in all (every address).
const JOIN_DEADLINE: Duration = Duration::from_secs(5);
/// Addresses one join request may name.
const MAX_JOIN_ADDRESSES: usize = crate::gossip::MAX_JOIN_ADDRESSES;
/// Largest members reply read from a server when a client-only agent asks one.
const FORWARD_MAX_REPLY: usize = 1024 * 1024;
/// How long a client-only agent's members request may take at its server.
const FORWARD_DEADLINE: Duration = Duration::from_secs(5);
/// Serf's protocol numbers, as Nomad's members show them (ref §5.1).
const PROTOCOL: [u8; 6] = [1, 5, 2, 2, 5, 4];

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

/// One member in Nomad's `AgentMember` shape.
fn member_json(m: &MemberInfo) -> Value {
    let [pmin, pmax, pcur, dmin, dmax, dcur] = PROTOCOL;
    json!({
        "Name": m.name,
        "Addr": m.addr.to_string(),
        "Port": m.port,
        "Tags": m.tags,
        "Status": m.status.as_str(),
        "ProtocolMin": pmin,
        "ProtocolMax": pmax,
        "ProtocolCur": pcur,
        "DelegateMin": dmin,
        "DelegateMax": dmax,
        "DelegateCur": dcur,
    })
}

fn members(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    check_common(ctx.req)?;
    let c = &ctx.agent.config;
    if !c.server_enabled {
        // A client-only agent asks one of its servers (Nomad forwards it the same way).
        return forward_members(ctx);
    }
    ctx.identity.allow_node(false)?;
    let members: Vec<Value> = match ctx.agent.gossip.get() {
        Some(g) => g.members().iter().map(member_json).collect(),
        // A `-dev` or role-less server without `ports.serf` does not gossip: this agent alone.
        None => vec![serde_json::to_value(ctx.agent.membership.local()).unwrap_or(Value::Null)],
    };
    json(&json!({
        "ServerName": c.node_name,
        "ServerRegion": c.region,
        "ServerDC": c.datacenter,
        "Members": members,
    }))
}

/// `GET /v1/agent/members` on a client-only agent: answered by the first of its servers that
/// answers (their RPC port serves the API too), with the caller's token; `no servers` (500)
/// when it knows none.
fn forward_members(ctx: &Ctx) -> ApiResult {
    let servers = ctx.agent.membership.servers();
    if servers.is_empty() {
        return Err(ApiError::internal("no servers"));
    }
    let deadline = Instant::now() + FORWARD_DEADLINE;
    let tls = peer_tls(ctx)?;
    let mut headers = String::new();
    for name in ["X-Nomad-Token", "Authorization"] {
        if let Some(v) = ctx.req.header(name) {
            if !v.contains(['\r', '\n']) {
                headers.push_str(&format!("{name}: {v}\r\n"));
            }
        }
    }
    let mut last = String::from("no servers");
    for server in servers {
        let Ok(sock) = server.parse::<SocketAddr>() else {
            continue;
        };
        match get_from(&sock, "/v1/agent/members", &headers, deadline, tls.as_ref()) {
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body)
                    .map_err(|_| ApiError::internal("rpc error: bad members reply"))?;
                return json(&v);
            }
            Ok((403, _)) => return Err(ApiError::permission_denied()),
            Ok((code, body)) => {
                let text = String::from_utf8_lossy(&body)
                    .chars()
                    .take(512)
                    .collect::<String>();
                return Err(ApiError::new(
                    Status::from_code(code),
                    format!("rpc error: {text}"),
                ));
            }
            Err(e) => last = format!("rpc error: {e}"),
        }
    }
    Err(ApiError::internal(last))
}

/// Dial TLS for a server when the agent's RPC uses TLS.
fn peer_tls(ctx: &Ctx) -> Result<Option<PeerTls>, ApiError> {
    match ctx.agent.tls.as_ref().filter(|t| t.settings().rpc) {
        Some(t) => Ok(Some((
            t.client_config()
                .map_err(|e| ApiError::internal(format!("cannot reach a server over TLS: {e}")))?,
            t.peer_server_name(),
        ))),
        None => Ok(None),
    }
}

/// One `GET` to a server before `deadline`: its status and body.
fn get_from(
    sock: &SocketAddr,
    path: &str,
    headers: &str,
    deadline: Instant,
    tls: Option<&PeerTls>,
) -> Result<(u16, Vec<u8>), String> {
    let tls = tls.map(|(config, name)| (config.clone(), name.as_str()));
    let mut s = crate::tls::client::dial(sock, tls, deadline).map_err(|e| match e {
        crate::tls::TlsError::Io(e) => format!("dial tcp {sock}: connect: {}", io_reason(&e)),
        other => format!("dial tcp {sock}: {other}"),
    })?;
    let io_err = |e: std::io::Error| format!("read from {sock}: {}", io_reason(&e));
    s.tcp()
        .set_write_timeout(remaining(deadline))
        .map_err(io_err)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {sock}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| format!("write to {sock}: {}", io_reason(&e)))?;
    let reply = read_until_deadline(&mut s, deadline).map_err(io_err)?;
    let (head, body) = split_reply(&reply).ok_or_else(|| format!("{sock}: no HTTP reply"))?;
    let code = std::str::from_utf8(head)
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{sock}: no HTTP reply"))?;
    Ok((code, body.to_vec()))
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
            "Serf": c.serf_advertise().to_string(),
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
    let mut doc = json!({
        "config": config_json(ctx),
        "member": match a.gossip.get().and_then(|g| g.local()) {
            Some(m) => member_json(&m),
            None => serde_json::to_value(a.membership.local()).unwrap_or(Value::Null),
        },
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
    });
    // Raft's stats section and the leader, on a server that replicates.
    if let Some(raft) = a.raft.get() {
        doc["stats"]["raft"] = super::raft_status::stats_json(raft);
        let view = crate::state::leader::Leadership::view(&**raft);
        doc["stats"]["nomad"]["leader"] = json!(view.is_leader.to_string());
        doc["stats"]["nomad"]["leader_addr"] = json!(view
            .leader_rpc_addr
            .map(|a| a.to_string())
            .unwrap_or_default());
    }
    // Serf's stats section, on a server that gossips.
    if let Some(g) = a.gossip.get() {
        let members = g.members();
        let count = |s: crate::gossip::MemberStatus| {
            members.iter().filter(|m| m.status == s).count().to_string()
        };
        doc["stats"]["serf"] = json!({
            "members": members.len().to_string(),
            "failed": count(crate::gossip::MemberStatus::Failed),
            "left": count(crate::gossip::MemberStatus::Left),
            "encrypted": a.config.server_encrypt.is_some().to_string(),
        });
    }
    json(&doc)
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Read a whole `Connection: close` reply, at most `FORWARD_MAX_REPLY` bytes, before `deadline`
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
                if out.len() + n > FORWARD_MAX_REPLY {
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

/// Join and force-leave are server endpoints: on a client-only agent Nomad answers 501.
fn gossip_of(ctx: &Ctx) -> Result<Option<Arc<crate::gossip::Gossip>>, ApiError> {
    if !ctx.agent.config.server_enabled {
        return Err(ApiError::new(Status::from_code(501), "Invalid method"));
    }
    Ok(ctx.agent.gossip.get().cloned())
}

fn join(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let gossip = gossip_of(ctx)?;
    let addrs: Vec<String> = ctx.req.query_all("address").map(str::to_string).collect();
    if addrs.is_empty() {
        return Err(ApiError::bad_request("missing address to join"));
    }
    // Joining makes this agent send datagrams to the addresses: agent:write only.
    ctx.identity.allow_agent(true)?;
    if addrs.len() > MAX_JOIN_ADDRESSES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_JOIN_ADDRESSES} addresses may be joined at once"
        )));
    }
    // One deadline for the whole join, however many addresses.
    let deadline = Instant::now() + JOIN_DEADLINE;
    let outcome = match gossip {
        Some(g) => g.join(&addrs, deadline),
        None => crate::gossip::JoinOutcome {
            joined: 0,
            errors: addrs
                .iter()
                .map(|a| format!("Failed to join {a}: this agent does not gossip (a -dev or role-less server gossips once ports.serf is set)"))
                .collect(),
        },
    };
    let error = if outcome.errors.is_empty() {
        String::new()
    } else {
        let n = outcome.errors.len();
        let mut s = format!("{n} error{} occurred:\n", if n == 1 { "" } else { "s" });
        for e in &outcome.errors {
            s.push_str(&format!("\t* {e}\n"));
        }
        s.push('\n');
        s
    };
    json(&json!({"num_joined": outcome.joined, "error": error, "warning": ""}))
}

fn force_leave(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Put, Method::Post])?;
    let gossip = gossip_of(ctx)?;
    ctx.identity.allow_agent(true)?;
    let node = ctx.req.query("node").unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request("missing node to force leave"));
    }
    let prune = match ctx.req.query("prune") {
        None | Some("") => false,
        Some(v) => parse_go_bool(v).ok_or_else(|| ApiError::bad_request("invalid prune value"))?,
    };
    match gossip {
        Some(g) => g
            .force_leave(node, prune)
            .map_err(|e| ApiError::internal(e.to_string()))?,
        None if node == ctx.agent.membership.local().name => {
            return Err(ApiError::internal("cannot force-leave the local agent"))
        }
        None => {}
    }
    empty()
}

/// One part of the health reply (`api.HealthResponseAgent`).
#[derive(serde::Serialize)]
struct HealthPart {
    ok: bool,
    message: &'static str,
}

impl HealthPart {
    const OK: HealthPart = HealthPart {
        ok: true,
        message: "ok",
    };

    fn failed(message: &'static str) -> HealthPart {
        HealthPart { ok: false, message }
    }
}

/// `GET /v1/agent/health`'s document (`api.HealthResponse`).
#[derive(serde::Serialize)]
struct Health {
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<HealthPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<HealthPart>,
}

fn health(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    let config = &ctx.agent.config;
    let types: Vec<&str> = ctx.req.query_all("type").collect();
    // Without `type`, the parts this agent runs; with it, the parts named (one the agent does
    // not run reports that).
    let (check_client, check_server) = if types.is_empty() {
        (config.client_enabled, config.server_enabled)
    } else {
        (types.contains(&"client"), types.contains(&"server"))
    };
    let client = check_client.then(|| {
        if !config.client_enabled {
            HealthPart::failed("client not enabled")
        } else if !ctx.agent.membership.has_servers() {
            HealthPart::failed("no known servers")
        } else {
            HealthPart::OK
        }
    });
    let server = check_server.then(|| {
        if !config.server_enabled {
            return HealthPart::failed("server not enabled");
        }
        match ctx.agent.raft.get() {
            Some(raft)
                if crate::state::leader::Leadership::view(&**raft)
                    .leader_rpc_addr
                    .is_none() =>
            {
                HealthPart::failed("no leader")
            }
            // A single server without Raft leads itself.
            _ => HealthPart::OK,
        }
    });
    let ok = [&client, &server]
        .iter()
        .all(|p| p.as_ref().is_none_or(|p| p.ok));
    let doc = Health { client, server };
    if ok && super::params::wants_pretty(ctx.req) {
        return json(&doc);
    }
    // Written straight from the struct: load balancers and supervisors poll this endpoint.
    let body = serde_json::to_vec(&doc)
        .map_err(|e| ApiError::internal(format!("failed to encode response: {e}")))?;
    if ok {
        Ok(ApiReply::Http(crate::http::Reply::bytes(
            Status::OK,
            "application/json",
            body,
        )))
    } else {
        // Nomad's 500 carries the same document as its text.
        Err(ApiError::internal(
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
}
