//! Who leads the servers, as this server sees it: the one interface between consensus (Raft,
//! `src/raft/`) and what depends on leadership (forwarding writes and consistent reads, query
//! meta headers, leader duties). A server without Raft (`-dev`, or the plain command log) is
//! its own leader: [`SoleServer`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// This server's view of leadership at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// This server is the leader and has applied every entry of earlier terms (its reads are
    /// consistent; it may run the leader duties).
    pub is_leader: bool,
    /// The leader's RPC address (`X-Nomad-KnownLeader` is whether this is known); `None`
    /// while no leader is known (an election is on, or no quorum).
    pub leader_rpc_addr: Option<SocketAddr>,
    /// The leader's Raft ID (hex in the API), when known.
    pub leader_id: Option<u64>,
    /// Time since this server last heard from the leader (`X-Nomad-LastContact`): zero on the
    /// leader, `None` when it never heard from one.
    pub last_contact: Option<Duration>,
    /// The current Raft term (0 without Raft).
    pub term: u64,
}

/// Leadership as this server sees it.
pub trait Leadership: Send + Sync {
    /// The view now.
    fn view(&self) -> LeaderView;

    /// Wait until a leader is known (by this server, or this server itself) or `deadline`
    /// passes; returns the view then. Never spins: implementations wait on a condvar.
    fn wait_for_leader(&self, deadline: Instant) -> LeaderView;
}

/// A single server without Raft: always the leader, at `rpc_addr` when it has an RPC port.
#[derive(Debug, Clone)]
pub struct SoleServer {
    pub rpc_addr: Option<SocketAddr>,
}

impl Leadership for SoleServer {
    fn view(&self) -> LeaderView {
        LeaderView {
            is_leader: true,
            leader_rpc_addr: self.rpc_addr,
            leader_id: None,
            last_contact: Some(Duration::ZERO),
            term: 0,
        }
    }

    fn wait_for_leader(&self, _deadline: Instant) -> LeaderView {
        self.view()
    }
}
