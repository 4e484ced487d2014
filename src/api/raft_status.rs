//! The Raft configuration as the API shows it: `/v1/status/peers`,
//! `/v1/operator/raft/configuration`, `DELETE /v1/operator/raft/peer` (ref §5.4, §5.8).

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
        .map_err(super::ApiError::internal)?;
    log::info!("raft: server {id} removed from the configuration by the operator");
    super::empty()
}
