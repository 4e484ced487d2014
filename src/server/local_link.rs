//! [`LocalLink`]: the client's [`ServerLink`] answered in the same process. Each call becomes
//! the server's own operation: alloc updates become `Workloads::update_alloc` (a command through
//! the log), metadata a node record update, a pull a wait on the index counter. Nothing here
//! reaches into the client.

use std::sync::Arc;

use super::heartbeat::Heartbeats;
use crate::client::link::{
    AllocUpdates, Heartbeat, HeartbeatReply, LinkError, MetaReply, NodeMeta, NodeRegistration,
    PublicKeys, PublicKeysRequest, PullAllocs, PulledAllocs, ResolveAcl, ResolvedAcl, ServerLink,
    SignIdentities, SignedIdentities, UpdatedAllocs, DEFAULT_HEARTBEAT,
};
use crate::state::acl::AclState;
use crate::state::jobs::Workloads;
use crate::state::node_table::Node;
use crate::state::status::NodeEligibility;
use crate::state::IndexCounter;

/// The server state a client in this process talks to.
pub struct LocalLink {
    workloads: Arc<Workloads>,
    /// The ID of the one node this process's client serves (all the server knows of it
    /// beyond what it registers).
    node_id: String,
    index: Arc<IndexCounter>,
    /// The server's heartbeat timers when they run (an agent with the server role chosen
    /// explicitly): this node's heartbeats re-arm its timer like a remote node's. `None`
    /// (`-dev`, no role): the fixed `DEFAULT_HEARTBEAT` and no timer.
    heartbeats: Option<Arc<Heartbeats>>,
    /// The server's ACL tables and signing keys (identities are signed with them).
    acl: Option<Arc<AclState>>,
}

impl LocalLink {
    pub fn new(workloads: Arc<Workloads>, node_id: String, index: Arc<IndexCounter>) -> Self {
        LocalLink {
            workloads,
            node_id,
            index,
            heartbeats: None,
            acl: None,
        }
    }

    /// Identities are signed (and callers resolved) with the server's ACL state `acl`.
    pub fn with_acl(mut self, acl: Arc<AclState>) -> Self {
        self.acl = Some(acl);
        self
    }

    fn acl(&self) -> Result<&AclState, LinkError> {
        self.acl
            .as_deref()
            .ok_or_else(|| LinkError::BadRequest("this server keeps no ACL state".into()))
    }

    /// Heartbeats re-arm `heartbeats`' timer for this node and answer its TTL.
    pub fn with_heartbeats(mut self, heartbeats: Arc<Heartbeats>) -> Self {
        self.heartbeats = Some(heartbeats);
        self
    }

    /// One process serves one node: the one it was made for.
    fn check_node(&self, node_id: &str) -> Result<(), LinkError> {
        if node_id == self.node_id {
            Ok(())
        } else {
            Err(LinkError::UnknownNode(node_id.to_string()))
        }
    }

    /// The node is in the server's node table (a purged node must register again).
    fn check_registered(&self, node_id: &str) -> Result<(), LinkError> {
        if self.workloads.state().nodes.contains_key(node_id) {
            Ok(())
        } else {
            Err(LinkError::UnknownNode(node_id.to_string()))
        }
    }

    fn heartbeat_reply(&self) -> HeartbeatReply {
        let ttl = match &self.heartbeats {
            Some(h) => h.reset(&self.node_id),
            None => DEFAULT_HEARTBEAT,
        };
        HeartbeatReply {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            index: self.index.current(),
            servers: Vec::new(),
        }
    }
}

/// The node record a registration proposes; what the server owns (indexes, events,
/// eligibility, drain, when the status changed) is left for `NodeRegister` to keep or set.
pub(crate) fn node_record(req: &NodeRegistration) -> Node {
    Node {
        id: req.node_id.clone(),
        name: req.name.as_str().into(),
        datacenter: req.datacenter.clone(),
        http_addr: req.http_addr.clone(),
        tls_enabled: req.tls_enabled,
        node_pool: req.node_pool.clone(),
        node_class: req.node_class.clone(),
        version: req.version.clone(),
        attributes: req.attributes.clone().into(),
        meta: req.meta.clone().into(),
        resources: req.resources.clone().into(),
        drivers: req.drivers.clone().into(),
        status: req.status,
        status_description: String::new(),
        status_updated_at: 0,
        scheduling_eligibility: NodeEligibility::Eligible,
        drain: false,
        drain_strategy: None,
        last_drain: None,
        events: Vec::new(),
        create_index: 0,
        modify_index: 0,
        secret_id: req.secret_id.clone(),
    }
}

impl ServerLink for LocalLink {
    fn register_node(&self, req: &NodeRegistration) -> Result<HeartbeatReply, LinkError> {
        self.check_node(&req.node_id)?;
        // A command through the log like every change of server state: durable, applied and
        // published before the answer.
        let index = self
            .workloads
            .register_node(node_record(req))
            .map_err(|e| LinkError::Persist(e.to_string()))?;
        log::debug!("node {} registered at index {index}", req.node_id);
        Ok(self.heartbeat_reply())
    }

    fn heartbeat(&self, req: &Heartbeat) -> Result<HeartbeatReply, LinkError> {
        self.check_node(&req.node_id)?;
        self.check_registered(&req.node_id)?;
        if self.heartbeats.is_some() {
            // Timers run: this node can be marked down like any other, and comes back the same way.
            let node = self
                .workloads
                .node(&req.node_id)
                .ok_or_else(|| LinkError::UnknownNode(req.node_id.clone()))?;
            super::rpc::bring_up(&self.workloads, &self.index, &node)
                .map_err(|e| LinkError::Persist(e.to_string()))?;
        }
        Ok(self.heartbeat_reply())
    }

    fn pull_allocs(&self, req: &PullAllocs) -> Result<PulledAllocs, LinkError> {
        self.check_node(&req.node_id)?;
        super::rpc::pull_node_allocs(&self.workloads, &self.index, req, &|| false)
    }

    fn push_alloc_updates(&self, req: &AllocUpdates) -> Result<UpdatedAllocs, LinkError> {
        self.check_node(&req.node_id)?;
        super::rpc::apply_alloc_updates(&self.workloads, req)
            .map_err(|e| LinkError::Persist(e.to_string()))
    }

    fn push_meta(&self, req: &NodeMeta) -> Result<MetaReply, LinkError> {
        self.check_node(&req.node_id)?;
        // A command like every other change of server state: durable, applied, published and
        // notified by the committer before it returns.
        let index = match self
            .workloads
            .update_node_meta(&req.node_id, req.meta.clone())
        {
            Ok(Some(index)) => index,
            Ok(None) => return Err(LinkError::UnknownNode(req.node_id.clone())),
            Err(e) => return Err(LinkError::Persist(e.to_string())),
        };
        log::debug!("node metadata published to the node record at index {index}");
        Ok(MetaReply { index })
    }

    fn sign_identities(&self, req: &SignIdentities) -> Result<SignedIdentities, LinkError> {
        self.check_node(&req.node_id)?;
        let acl = self.acl()?;
        Ok(super::authz::sign_identities(
            &self.workloads,
            &acl.keys,
            &req.node_id,
            req,
        )?)
    }

    fn resolve_acl(&self, req: &ResolveAcl) -> Result<ResolvedAcl, LinkError> {
        self.check_node(&req.node_id)?;
        Ok(super::authz::resolve_acl(self.acl()?, req))
    }

    fn public_keys(&self, req: &PublicKeysRequest) -> Result<PublicKeys, LinkError> {
        self.check_node(&req.node_id)?;
        super::authz::public_keys(&self.acl()?.keys).map_err(|e| LinkError::Persist(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::client::link::{AllocUpdate, Heartbeat};
    use crate::state::jobs::alloc::TaskState;
    use crate::state::jobs::spec::Job;
    use crate::state::jobs::NodeInfo;
    use std::time::{Duration, Instant};

    /// What a client registers for the node record `node` (the fields the client knows): the
    /// inverse of [`node_record`], for tests.
    fn registration_of(node: &Node) -> NodeRegistration {
        NodeRegistration {
            node_id: node.id.clone(),
            name: node.name.to_string(),
            datacenter: node.datacenter.clone(),
            http_addr: node.http_addr.clone(),
            tls_enabled: node.tls_enabled,
            node_pool: node.node_pool.clone(),
            node_class: node.node_class.clone(),
            version: node.version.clone(),
            attributes: (*node.attributes).clone(),
            meta: (*node.meta).clone(),
            resources: (*node.resources).clone(),
            drivers: (*node.drivers).clone(),
            status: node.status,
            secret_id: node.secret_id.clone(),
        }
    }

    struct Fixture {
        dir: std::path::PathBuf,
        link: LocalLink,
        workloads: Arc<Workloads>,
        index: Arc<IndexCounter>,
        node: NodeInfo,
        /// The client's own node (what it registers).
        node_state: Arc<crate::client::node::NodeState>,
    }

    fn fixture() -> Fixture {
        let dir = std::env::temp_dir().join(format!("nomadlet-link-{}", uuid::Uuid::new_v4()));
        let config = crate::config::Config::from_flags(&crate::config::AgentFlags {
            dev: true,
            data_dir: Some(dir.clone()),
            ..Default::default()
        })
        .unwrap();
        let index = Arc::new(IndexCounter::default());
        let node = Arc::new(crate::client::node::NodeState::load(&config).unwrap());
        let workloads = Arc::new(Workloads::load(&dir, index.clone()).unwrap());
        let info = NodeInfo {
            id: node.id().to_string(),
            name: "n".into(),
            unplaceable: None,
        };
        Fixture {
            link: LocalLink::new(workloads.clone(), node.id().to_string(), index.clone()),
            node_state: node,
            dir,
            workloads,
            index,
            node: info,
        }
    }

    /// A fixture whose node registered (pulls and heartbeats need a known node).
    fn registered_fixture() -> Fixture {
        let f = fixture();
        let reg = f.node_state.registration();
        f.link.register_node(&reg).unwrap();
        f
    }

    fn job(id: &str) -> Job {
        let mut j = Job::from_json(serde_json::json!({"ID": id, "TaskGroups": [{"Name": "g",
            "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        j.canonicalize("global");
        j
    }

    /// Register this node (once) and `j`, and let the scheduler place it.
    fn place(f: &Fixture, j: Job) {
        if f.workloads.node(&f.node.id).is_none() {
            let reg = f.node_state.registration();
            f.link.register_node(&reg).unwrap();
        }
        f.workloads.register(j).unwrap();
        crate::server::scheduler::run_pending(&f.workloads);
    }

    fn pull(f: &Fixture, min_index: u64, wait_ms: u64) -> Result<PulledAllocs, LinkError> {
        f.link.pull_allocs(&PullAllocs {
            node_id: f.node.id.clone(),
            min_index,
            wait_ms,
        })
    }

    #[test]
    fn a_registration_through_the_link_becomes_the_node_record_and_keeps_what_the_server_owns() {
        let f = fixture();
        assert!(
            f.workloads.node(&f.node.id).is_none(),
            "nothing registered at load"
        );
        let mut reg = f.node_state.registration();
        assert_eq!(reg.status, crate::state::status::NodeStatus::Ready);
        let before = f.index.current();
        f.link.register_node(&reg).unwrap();
        let n = f.workloads.node(&f.node.id).unwrap();
        assert_eq!(
            registration_of(&n),
            reg,
            "the record holds what was registered"
        );
        assert!(n.create_index > before);
        assert_eq!(n.events.len(), 1, "a new node gets its registered event");
        // Again (a restart) with a changed fingerprint: the record follows it, the server keeps
        // its create index and events.
        reg.attributes.insert("unique.test".into(), "x".into());
        f.link.register_node(&reg).unwrap();
        let again = f.workloads.node(&f.node.id).unwrap();
        assert_eq!(again.attributes["unique.test"], "x");
        assert_eq!(again.create_index, n.create_index);
        assert!(again.modify_index > n.modify_index);
        assert_eq!(again.events, n.events);
        // Another node is refused and changes nothing.
        let mut other = reg.clone();
        other.node_id = "other".into();
        assert_eq!(
            f.link.register_node(&other),
            Err(LinkError::UnknownNode("other".into()))
        );
        assert!(f.workloads.node("other").is_none());
        // The request travels as JSON unchanged.
        let text = serde_json::to_string(&reg).unwrap();
        assert_eq!(
            serde_json::from_str::<NodeRegistration>(&text).unwrap(),
            reg
        );
    }

    #[test]
    fn a_pull_blocks_until_the_nodes_allocs_change_and_answers_only_what_changed() {
        let f = fixture();
        place(&f, job("a"));
        let first = pull(&f, 0, 0).unwrap();
        assert_eq!(first.changed.len(), 1);
        assert_eq!(first.alloc_ids.len(), 1);
        // Nothing new: the pull waits its whole wait and answers nothing changed.
        let started = Instant::now();
        let idle = pull(&f, first.index, 150).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(idle.changed.is_empty());
        // A write while it waits wakes it; the pulls after it see just the new alloc (the
        // register and the placement are two writes).
        let mut index = first.index;
        let mut changed: Vec<String> = Vec::new();
        let waiter = std::thread::scope(|s| {
            let h = s.spawn(|| pull(&f, first.index, 5_000));
            place(&f, job("b"));
            h.join().unwrap()
        })
        .unwrap();
        assert!(waiter.index > first.index, "the write woke the pull");
        let mut last = waiter;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            changed.extend(last.changed.iter().map(|a| a.job_id.to_string()));
            index = index.max(last.index);
            if last.alloc_ids.len() == 2 || Instant::now() > deadline {
                break;
            }
            last = pull(&f, index, 1_000).unwrap();
        }
        assert_eq!(last.alloc_ids.len(), 2);
        assert_eq!(changed, ["b"]);
        std::fs::remove_dir_all(&f.dir).unwrap();
    }

    #[test]
    fn identities_are_signed_for_this_nodes_live_allocs_only_with_claims_from_the_server() {
        use crate::client::link::{AclSubject, IdentityRequest, ResolveAcl, SignIdentities};
        // Registered: a pull for a node the server does not know answers "unknown node".
        let f = registered_fixture();
        let acl = Arc::new(crate::state::acl::AclState::load(
            &f.dir,
            true,
            f.workloads.command_log(),
        ));
        let link = LocalLink::new(f.workloads.clone(), f.node.id.clone(), f.index.clone())
            .with_acl(acl.clone());
        place(&f, job("a"));
        let alloc = pull(&f, 0, 0).unwrap().changed[0].clone();
        let req = |alloc_id: &str, task: &str| SignIdentities {
            node_id: f.node.id.clone(),
            alloc_id: alloc_id.into(),
            task: task.into(),
            identities: vec![IdentityRequest {
                name: "default".into(),
                audience: "nomadproject.io".into(),
            }],
        };
        let signed = link.sign_identities(&req(&alloc.id, "t")).unwrap();
        let keys = acl.keys.get().unwrap();
        let claims = crate::acl::jwt::verify(
            keys,
            &signed.identities[0].jwt,
            crate::time::unix_now_secs(),
        )
        .unwrap();
        assert_eq!(claims.nomad_allocation_id, alloc.id);
        assert_eq!(claims.nomad_job_id, "a");
        assert_eq!(claims.group(), Some("g"));
        assert_eq!(claims.sub, format!("global:default:a:g:t:default"));
        // Not its task, not an alloc of this node, another node's call: refused.
        assert!(matches!(
            link.sign_identities(&req(&alloc.id, "nope")),
            Err(LinkError::BadRequest(_))
        ));
        assert_eq!(
            link.sign_identities(&req("no-such-alloc", "t")),
            Err(LinkError::PermissionDenied)
        );
        let mut other = req(&alloc.id, "t");
        other.node_id = "other".into();
        assert!(matches!(
            link.sign_identities(&other),
            Err(LinkError::UnknownNode(_))
        ));
        // A finished alloc gets no new identity.
        f.workloads
            .update_alloc(&alloc.id, |a| {
                a.client_status = crate::state::status::AllocClientStatus::Complete
            })
            .unwrap();
        assert!(!f.workloads.alloc(&alloc.id).unwrap().is_live());
        assert!(matches!(
            link.sign_identities(&req(&alloc.id, "t")),
            Err(LinkError::BadRequest(_))
        ));
        // Resolving an unknown secret finds nothing.
        let r = link
            .resolve_acl(&ResolveAcl {
                node_id: f.node.id.clone(),
                subject: AclSubject::Token {
                    secret_id: uuid::Uuid::new_v4().to_string(),
                },
            })
            .unwrap();
        assert!(r.token.is_none() && r.policies.is_empty());
        std::fs::remove_dir_all(&f.dir).unwrap();
    }

    #[test]
    fn pushed_updates_are_durable_server_state_and_other_nodes_are_refused() {
        let f = fixture();
        place(&f, job("a"));
        let id = pull(&f, 0, 0).unwrap().changed[0].id.clone();
        let mut ts = TaskState::pending();
        ts.state = crate::state::status::TaskStatus::Running;
        let reply = f
            .link
            .push_alloc_updates(&AllocUpdates {
                node_id: f.node.id.clone(),
                updates: vec![AllocUpdate {
                    alloc_id: id.to_string(),
                    tasks: [("t".to_string(), ts.clone())].into_iter().collect(),
                    ..AllocUpdate::default()
                }],
            })
            .unwrap();
        assert_eq!(
            reply.allocs[0].client_status,
            crate::state::status::AllocClientStatus::Running
        );
        assert_eq!(f.workloads.alloc(&id).unwrap().task_states["t"], ts);
        let other = Heartbeat {
            node_id: "someone-else".into(),
        };
        assert_eq!(
            f.link.heartbeat(&other),
            Err(LinkError::UnknownNode("someone-else".into()))
        );
        f.index.close();
        assert_eq!(pull(&f, u64::MAX, 5_000).unwrap_err(), LinkError::Closed);
        std::fs::remove_dir_all(&f.dir).unwrap();
    }
}
