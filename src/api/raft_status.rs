//! The Raft configuration as the API shows it: `/v1/status/peers`,
//! `/v1/operator/raft/configuration`, `DELETE /v1/operator/raft/peer`,
//! `PUT /v1/operator/raft/transfer-leadership` (ref §5.4, §5.8).

use serde_json::{json, Value};

use crate::raft::Raft;

/// The RPC addresses of the servers in the Raft configuration, in its order (voters, then
/// non-voters); empty while this server is in none.
pub fn peer_addresses(raft: &Raft) -> Vec<String> {
    let s = raft.status();
    let peers = raft.peers();
    s.voters
        .iter()
        .chain(&s.learners)
        .filter_map(|id| peers.get(id).map(|p| p.rpc_addr.to_string()))
        .collect()
}

/// `stats.raft` of `/v1/agent/self` (hashicorp/raft's stats keys, as strings).
pub fn stats_json(raft: &Raft) -> Value {
    let s = raft.status();
    let state = if s.stopped {
        "Shutdown"
    } else if s.is_leader {
        "Leader"
    } else if s.leader_id != 0 || !s.initialized {
        "Follower"
    } else {
        "Candidate"
    };
    json!({
        "state": state,
        "term": s.term.to_string(),
        "applied_index": s.applied.to_string(),
        "commit_index": s.commit.to_string(),
        "last_log_index": s.last_index.to_string(),
        "num_peers": s.voters.len().saturating_sub(1).to_string(),
        "last_contact": match s.last_contact {
            _ if s.is_leader => "0".to_string(),
            Some(t) => format!("{}ms", t.elapsed().as_millis()),
            None => "never".to_string(),
        },
        "protocol_version": "3",
    })
}

/// `/v1/operator/raft/configuration` and `/v1/operator/raft/peer` (ref §5.8).
pub fn route_operator(ctx: &super::Ctx, rest: &str) -> super::ApiResult {
    match rest {
        "operator/raft/configuration" => configuration(ctx),
        "operator/raft/peer" => remove_peer(ctx),
        "operator/raft/transfer-leadership" => transfer_leadership(ctx),
        _ => Err(super::ApiError::no_route()),
    }
}

/// The Raft configuration: every server with its ID (UUID), Serf name, RPC address, whether
/// it leads and votes. Management only; any method but GET is 405 with an empty body.
fn configuration(ctx: &super::Ctx) -> super::ApiResult {
    use crate::http::{Method, Status};
    if ctx.req.method != Method::Get {
        return Err(super::ApiError::new(Status::METHOD_NOT_ALLOWED, ""));
    }
    ctx.identity.allow_management()?;
    let a = ctx.agent;
    let Some(raft) = a.raft.get() else {
        // A server without Raft: itself, leading.
        let member = a.gossip.get().and_then(|g| g.local());
        return super::json(&json!({
            "Servers": [{
                "ID": a.node.id(),
                "Node": member.map_or_else(|| format!("{}.{}", a.config.node_name, a.config.region), |m| m.name),
                "Address": a.config.rpc_addr(),
                "Leader": true,
                "Voter": true,
                "RaftProtocol": "3",
            }],
            "Index": a.index.current(),
        }));
    };
    let s = raft.status();
    let peers = raft.peers();
    let servers: Vec<Value> = s
        .voters
        .iter()
        .map(|id| (id, true))
        .chain(s.learners.iter().map(|id| (id, false)))
        .map(|(id, voter)| {
            let p = peers.get(id);
            json!({
                "ID": p.map_or_else(|| format!("{id:016x}"), |p| p.uuid.clone()),
                "Node": p.map_or_else(|| "(unknown)".to_string(), |p| p.name.clone()),
                "Address": p.map(|p| p.rpc_addr.to_string()).unwrap_or_default(),
                "Leader": *id == s.leader_id,
                "Voter": voter,
                "RaftProtocol": if p.is_some() { "3" } else { "unknown" },
            })
        })
        .collect();
    super::json(&json!({"Servers": servers, "Index": s.applied}))
}

/// `DELETE /v1/operator/raft/peer?id=<server ID>`: remove a server from the configuration
/// (on the leader). Management only.
fn remove_peer(ctx: &super::Ctx) -> super::ApiResult {
    use crate::http::Method;
    if ctx.req.method != Method::Delete {
        return Err(super::ApiError::not_found("Invalid method"));
    }
    ctx.identity.allow_management()?;
    if ctx.req.query("address").is_some_and(|a| !a.is_empty()) {
        return Err(super::ApiError::bad_request(
            "Removing a peer by address is not supported in the current raft protocol version",
        ));
    }
    let id = ctx.req.query("id").unwrap_or("");
    if id.is_empty() {
        return Err(super::ApiError::bad_request(
            "Must specify the peer's ID to remove",
        ));
    }
    let Some(raft) = ctx.agent.raft.get() else {
        return Err(super::ApiError::internal(format!(
            "id {id:?} was not found in the Raft configuration"
        )));
    };
    let s = raft.status();
    let target = crate::raft::raft_id(id)
        .filter(|rid| s.voters.contains(rid) || s.learners.contains(rid))
        .ok_or_else(|| {
            super::ApiError::internal(format!("id {id:?} was not found in the Raft configuration"))
        })?;
    raft.remove_server(target)
        .map_err(|e| super::ApiError::internal(e.to_string()))?;
    log::info!("raft: server {id} removed from the configuration by the operator");
    super::empty()
}

/// `PUT|POST /v1/operator/raft/transfer-leadership?id=|address=` (management): hand
/// leadership to that voter (raft-rs `transfer_leader`) and answer once it took over, in
/// Nomad's `LeadershipTransferResponse` shape. A follower passes the request to the leader
/// like any write; naming the leader itself is a no-op.
fn transfer_leadership(ctx: &super::Ctx) -> super::ApiResult {
    use crate::http::{Method, Status};
    use crate::raft::TransferError;
    if !matches!(ctx.req.method, Method::Put | Method::Post) {
        return Err(super::ApiError::new(
            Status::METHOD_NOT_ALLOWED,
            "Invalid method",
        ));
    }
    let ids: Vec<&str> = ctx.req.query_all("id").collect();
    let addrs: Vec<&str> = ctx.req.query_all("address").collect();
    let bad = |m: &str| Err(super::ApiError::bad_request(m));
    match (ids.as_slice(), addrs.as_slice()) {
        ([], []) => return bad("must specify id or address"),
        ([_, ..], [_, ..]) => return bad("must specify either id or address"),
        ([""], _) => return bad("id must be non-empty"),
        ([_, _, ..], _) => return bad("must specify only one id"),
        (_, [""]) => return bad("address must be non-empty"),
        (_, [_, _, ..]) => return bad("must specify only one address"),
        _ => {}
    }
    ctx.identity.allow_management()?;
    let Some(raft) = ctx.agent.raft.get() else {
        // The only server leads already.
        let me = json!({"Address": ctx.agent.config.rpc_addr(), "ID": ctx.agent.node.id()});
        return super::json(&json!({"From": me, "To": me, "Noop": true, "Err": null}));
    };
    let s = raft.status();
    let peers = raft.peers();
    let ident = |id: u64| {
        let p = peers.get(&id);
        json!({
            "Address": p.map(|p| p.rpc_addr.to_string()).unwrap_or_default(),
            "ID": p.map_or_else(|| format!("{id:016x}"), |p| p.uuid.clone()),
        })
    };
    if !s.is_leader {
        return Err(super::ApiError::internal(crate::state::leader::NO_LEADER));
    }
    let in_config = |id: &u64| s.voters.contains(id) || s.learners.contains(id);
    let (kind, value, target) = match (ids.first(), addrs.first()) {
        (Some(id), _) => (
            "id",
            *id,
            crate::raft::raft_id(id)
                .filter(in_config)
                .filter(|rid| peers.get(rid).is_some_and(|p| p.uuid == *id)),
        ),
        (_, Some(addr)) => (
            "address",
            *addr,
            peers
                .iter()
                .find(|(rid, p)| in_config(rid) && p.rpc_addr.to_string() == *addr)
                .map(|(rid, _)| *rid),
        ),
        _ => return bad("must specify id or address"),
    };
    let Some(target) = target else {
        return Err(super::ApiError::bad_request(format!(
            "{kind} {value:?} was not found in the Raft configuration"
        )));
    };
    let from = ident(raft.id());
    if target == raft.id() {
        return super::json(&json!({"From": from, "To": from, "Noop": true, "Err": null}));
    }
    match raft.transfer_leadership(Some(target)) {
        Ok(now) => {
            log::info!("raft: leadership transferred to {now:x} by the operator");
            super::json(&json!({"From": from, "To": ident(target), "Noop": false, "Err": null}))
        }
        Err(TransferError::NotLeader) => {
            Err(super::ApiError::internal(crate::state::leader::NO_LEADER))
        }
        Err(TransferError::NotVoter) => Err(super::ApiError::bad_request(format!(
            "{kind} {value:?} is not a voter of the Raft configuration"
        ))),
        Err(e) => Err(super::ApiError::internal(e.to_string())),
    }
}
