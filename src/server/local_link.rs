//! [`LocalLink`]: the client's [`ServerLink`] answered in the same process. Each call becomes
//! the server's own operation: alloc updates become `Workloads::update_alloc` (a command through
//! the log), metadata a node record update, a pull a wait on the index counter. Nothing here
//! reaches into the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::link::{
    AllocUpdates, Heartbeat, HeartbeatReply, LinkError, MetaReply, NodeMeta, NodeRegistration,
    PullAllocs, PulledAllocs, ServerLink, UpdatedAllocs, DEFAULT_HEARTBEAT, MAX_PULL_WAIT,
};
use crate::state::jobs::Workloads;
use crate::state::node::NodeState;
use crate::state::IndexCounter;

/// The server state a client in this process talks to.
pub struct LocalLink {
    workloads: Arc<Workloads>,
    node: Arc<NodeState>,
    index: Arc<IndexCounter>,
}

impl LocalLink {
    pub fn new(workloads: Arc<Workloads>, node: Arc<NodeState>, index: Arc<IndexCounter>) -> Self {
        LocalLink {
            workloads,
            node,
            index,
        }
    }

    /// One process serves one node: the one whose state it loaded.
    fn check_node(&self, node_id: &str) -> Result<(), LinkError> {
        if node_id == self.node.id() {
            Ok(())
        } else {
            Err(LinkError::UnknownNode(node_id.to_string()))
        }
    }

    fn heartbeat_reply(&self) -> HeartbeatReply {
        HeartbeatReply {
            ttl_ms: u64::try_from(DEFAULT_HEARTBEAT.as_millis()).unwrap_or(u64::MAX),
            index: self.index.current(),
        }
    }
}

impl ServerLink for LocalLink {
    fn register_node(&self, req: &NodeRegistration) -> Result<HeartbeatReply, LinkError> {
        // The node record is made from the same node state at load; registering checks that
        // the client is that node.
        self.check_node(&req.node_id)?;
        Ok(self.heartbeat_reply())
    }

    fn heartbeat(&self, req: &Heartbeat) -> Result<HeartbeatReply, LinkError> {
        self.check_node(&req.node_id)?;
        Ok(self.heartbeat_reply())
    }

    fn pull_allocs(&self, req: &PullAllocs) -> Result<PulledAllocs, LinkError> {
        self.check_node(&req.node_id)?;
        let deadline = Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_PULL_WAIT);
        loop {
            // The generation first: a change published after this read wakes the wait below.
            let generation = self.index.generation();
            let state = self.workloads.state();
            let answer = Instant::now() >= deadline || state.index > req.min_index;
            if answer {
                let mut reply = PulledAllocs {
                    index: state.index,
                    alloc_ids: Vec::new(),
                    changed: Vec::new(),
                };
                for a in state.allocs.values().filter(|a| a.node_id == req.node_id) {
                    reply.alloc_ids.push(a.id.clone());
                    if a.modify_index > req.min_index {
                        reply.changed.push((**a).clone());
                    }
                }
                return Ok(reply);
            }
            if self.index.is_closed() {
                return Err(LinkError::Closed);
            }
            self.index.wait_for_change(generation, deadline);
        }
    }

    fn push_alloc_updates(&self, req: &AllocUpdates) -> Result<UpdatedAllocs, LinkError> {
        self.check_node(&req.node_id)?;
        let mut allocs = Vec::new();
        for up in &req.updates {
            let updated = self
                .workloads
                .update_alloc(&self.index, &up.alloc_id, |a| {
                    if a.node_id != req.node_id {
                        return;
                    }
                    for (name, ts) in &up.tasks {
                        a.task_states.insert(name.clone(), ts.clone());
                    }
                    if let Some((status, description)) = &up.client_status {
                        a.client_status = status.clone();
                        a.client_description = description.clone();
                    }
                    a.collected |= up.collected;
                })
                .map_err(|e| LinkError::Persist(e.to_string()))?;
            allocs.extend(updated);
        }
        Ok(UpdatedAllocs { allocs })
    }

    fn push_meta(&self, req: &NodeMeta) -> Result<MetaReply, LinkError> {
        self.check_node(&req.node_id)?;
        let index = self.index.next();
        // In one process the node record is built from the same node state whose metadata
        // the client changed: publishing reads that same merged map.
        self.node.publish_meta(index);
        self.index.notify();
        log::debug!("node metadata published to the node record at index {index}");
        Ok(MetaReply { index })
    }
}
