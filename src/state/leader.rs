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

    /// A read barrier (Raft's ReadIndex): return once a quorum confirmed, after this call,
    /// that this server still leads, and this server applied everything committed when it
    /// asked; a consistent read answered from local state after `Ok` is linearizable. Fails
    /// when this server does not lead, loses leadership meanwhile, or `deadline` passes.
    /// Without Raft this server is the only one: `Ok` at once.
    fn read_barrier(&self, deadline: Instant) -> Result<(), BarrierError> {
        let _ = deadline;
        Ok(())
    }
}

/// Why a read barrier failed (the read is answered like a leader loss: `No cluster leader`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BarrierError {
    /// This server does not lead (or has not yet applied an entry of its term).
    NotLeader,
    /// This server stepped down (a newer term) before a quorum confirmed it.
    LostLeadership,
    /// No quorum confirmed it, or the state did not catch up, by the deadline.
    Timeout,
    /// Raft stopped (shutdown, or a store failure).
    Stopped,
}

impl std::fmt::Display for BarrierError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BarrierError::NotLeader => "this server is not the leader",
            BarrierError::LostLeadership => "leadership lost before a quorum confirmed it",
            BarrierError::Timeout => "no quorum confirmed leadership in time",
            BarrierError::Stopped => "raft is not running",
        })
    }
}

impl std::error::Error for BarrierError {}

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

/// Set on a request a server passed to the leader (an API request, a node's RPC call): the
/// receiver answers it itself or fails, and never passes it on again. Its value is the
/// sending server's RPC address (for logs).
pub const LEADER_HOP_HEADER: &str = "X-Nomadlet-Forwarded-By";

/// Nomad's text when no leader is known in time (ref §5.7): a 500 callers retry.
pub const NO_LEADER: &str = "No cluster leader";

/// How often a server that leads but is still establishing its leadership (`leader_rpc_addr`
/// is its own, `is_leader` not yet) looks again whether it is ready, while a request waits.
pub const ESTABLISH_POLL: Duration = Duration::from_millis(20);

/// Where a request only the leader answers (a write, a consistent read, a node's write call)
/// goes from this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This server is the ready leader: answer here.
    Here,
    /// Pass it to the leader at this RPC address.
    Leader(SocketAddr),
    /// No leader known by the deadline, or the request was already passed on once and this
    /// server is not the leader (it is never passed on twice).
    NoLeader,
    /// This server leads but did not finish establishing its leadership by the deadline.
    NotReady,
}

/// Decide where a leader-only request goes: here when this server is the ready leader, else
/// to the known leader; waiting until `deadline` for a leader to be known (on the
/// implementation's condvar) or for this server, when it won, to become ready (polled every
/// [`ESTABLISH_POLL`]). `own` is this server's RPC address; `passed_on`: another server
/// already sent the request here; `stop()` ends the wait early (shutdown).
pub fn route(
    leadership: &dyn Leadership,
    own: Option<SocketAddr>,
    passed_on: bool,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Route {
    let mut view = leadership.view();
    loop {
        if view.is_leader {
            return Route::Here;
        }
        let establishing = view.leader_rpc_addr.is_some() && view.leader_rpc_addr == own;
        if let Some(addr) = view.leader_rpc_addr.filter(|_| !establishing) {
            return if passed_on {
                Route::NoLeader
            } else {
                Route::Leader(addr)
            };
        }
        let now = Instant::now();
        if now >= deadline || stop() {
            return if establishing {
                Route::NotReady
            } else {
                Route::NoLeader
            };
        }
        view = if establishing {
            std::thread::sleep(ESTABLISH_POLL.min(deadline - now));
            leadership.view()
        } else {
            leadership.wait_for_leader(deadline)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A follower whose view changes after a number of looks.
    struct Scripted {
        views: Vec<LeaderView>,
        looks: AtomicUsize,
    }

    impl Leadership for Scripted {
        fn view(&self) -> LeaderView {
            let i = self.looks.fetch_add(1, Ordering::SeqCst);
            self.views[i.min(self.views.len() - 1)].clone()
        }
        fn wait_for_leader(&self, _deadline: Instant) -> LeaderView {
            self.view()
        }
    }

    fn view(is_leader: bool, leader: Option<&str>) -> LeaderView {
        LeaderView {
            is_leader,
            leader_rpc_addr: leader.and_then(|a| a.parse().ok()),
            leader_id: None,
            last_contact: None,
            term: 1,
        }
    }

    fn scripted(views: Vec<LeaderView>) -> Scripted {
        Scripted {
            views,
            looks: AtomicUsize::new(0),
        }
    }

    #[test]
    fn routes_follow_the_view() {
        let soon = Instant::now() + Duration::from_secs(2);
        let own: Option<SocketAddr> = "127.0.0.1:1".parse().ok();
        let never = || false;
        let sole = SoleServer { rpc_addr: own };
        assert_eq!(route(&sole, own, false, soon, &never), Route::Here);
        assert_eq!(route(&sole, own, true, soon, &never), Route::Here);
        // The only server needs no quorum to confirm it.
        assert_eq!(sole.read_barrier(Instant::now()), Ok(()));
        let other = "127.0.0.1:2";
        let f = scripted(vec![view(false, Some(other))]);
        assert_eq!(
            route(&f, own, false, soon, &never),
            Route::Leader(other.parse().unwrap())
        );
        // Passed on once already: never again.
        assert_eq!(route(&f, own, true, soon, &never), Route::NoLeader);
        // An election, then a leader.
        let f = scripted(vec![view(false, None), view(false, Some(other))]);
        assert_eq!(
            route(&f, own, false, soon, &never),
            Route::Leader(other.parse().unwrap())
        );
        // Won, establishing, then ready.
        let f = scripted(vec![
            view(false, Some("127.0.0.1:1")),
            view(true, own.map(|a| a.to_string()).as_deref()),
        ]);
        assert_eq!(route(&f, own, false, soon, &never), Route::Here);
        // Nobody by the deadline.
        let f = scripted(vec![view(false, None)]);
        assert_eq!(
            route(&f, own, false, Instant::now(), &never),
            Route::NoLeader
        );
        let f = scripted(vec![view(false, Some("127.0.0.1:1"))]);
        assert_eq!(
            route(&f, own, false, Instant::now(), &never),
            Route::NotReady
        );
    }
}
