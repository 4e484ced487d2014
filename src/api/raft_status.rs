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
