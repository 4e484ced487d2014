//! The server side of the agent as clients see it: the in-process [`local_link::LocalLink`]
//! that answers the client's [`crate::client::link::ServerLink`] calls from the server state,
//! the RPC port ([`rpc::RpcRouter`]: the same calls over HTTP for clients elsewhere) and the
//! heartbeat timers ([`heartbeat::Heartbeats`]), the client-opened tunnels ([`tunnel`]),
//! and the scheduler thread ([`scheduler::Scheduler`]: pending evals → plans), started and
//! stopped with leadership on a replicated server ([`duties::LeaderDuties`]).

pub mod authz;
pub mod drainer;
pub mod duties;
pub mod heartbeat;
pub mod local_link;
pub mod rpc;
pub mod scheduler;
pub mod tunnel;
