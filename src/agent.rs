//! The `Agent`: owns every piece of state and every thread; starts them, waits for a signal,
//! and stops them in order.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::api::forward::Forwarding;
use crate::api::router::Router;
pub use crate::api::Agent;
use crate::client::link::{LinkError, ServerLink};
use crate::client::node::NodeState;
use crate::client::remote_link::{self, Dialer, RemoteLink};
use crate::client::stats::SAMPLE_INTERVAL;
use crate::client::tunnel::{TunnelSettings, Tunnels, TUNNEL_IDLE};
use crate::client::{Client, TaskApi};
use crate::config::Config;
use crate::fs::watch::SharedWatcher;
use crate::http::{Limits, Server};
use crate::meta_batcher::{Batcher, NodeUpdater};
use crate::server::heartbeat::{HeartbeatSettings, Heartbeats};
use crate::server::local_link::LocalLink;
use crate::server::rpc::{RpcRouter, RpcService};
use crate::server::tunnel::{ChangedNodes, Pusher, TunnelPool};
use crate::state::acl::AclState;
use crate::state::jobs::Workloads;
use crate::state::members::Membership;
use crate::state::store::StoreError;
use crate::state::IndexCounter;

/// Why the agent could not start.
#[derive(Debug)]
pub enum AgentError {
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    State(StoreError),
    Signals(std::io::Error),
    Tls(crate::tls::TlsError),
    /// The client could not register its node with the server.
    Register(LinkError),
    /// A service thread (tunnels) could not be started.
    Spawn(std::io::Error),
    /// The server's scheduler thread could not be started.
    Scheduler(std::io::Error),
    /// Gossip (the serf port) could not start.
    Gossip(crate::gossip::GossipError),
    /// Raft could not start.
    Raft(crate::raft::RaftError),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::DataDir { path, source } => {
                write!(f, "data dir {} is not usable: {source}", path.display())
            }
            AgentError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            AgentError::State(e) => write!(f, "cannot load state: {e}"),
            AgentError::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            AgentError::Tls(e) => write!(f, "{e}"),
            AgentError::Register(e) => write!(f, "cannot register this node: {e}"),
            AgentError::Spawn(e) => write!(f, "cannot start the tunnels: {e}"),
            AgentError::Scheduler(e) => write!(f, "cannot start the scheduler: {e}"),
            AgentError::Gossip(e) => write!(f, "{e}"),
            AgentError::Raft(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::DataDir { source, .. }
            | AgentError::Bind { source, .. }
            | AgentError::Signals(source)
            | AgentError::Spawn(source)
            | AgentError::Scheduler(source) => Some(source),
            AgentError::State(e) => Some(e),
            AgentError::Tls(e) => Some(e),
            AgentError::Register(e) => Some(e),
            AgentError::Gossip(e) => Some(e),
            AgentError::Raft(e) => Some(e),
        }
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::State(e)
    }
}

impl Agent {
    /// Load every piece of state from the data dir (no threads are started).
    pub fn load(config: Config) -> Result<Arc<Agent>, AgentError> {
        crate::state::remove_leftover_temps(&config.data_dir)?;
        let tls = if config.tls.enabled() {
            let t = crate::tls::AgentTls::load(&config.tls, &config.region);
            Some(Arc::new(t.map_err(AgentError::Tls)?))
        } else {
            None
        };
        let index = Arc::new(IndexCounter::default());
        let node = Arc::new(NodeState::load(&config)?);
        let membership = Membership::load(&config, node.id())?;
        // A server with an RPC port (not `-dev`) replicates its state with Raft.
        let workloads = Arc::new(
            Workloads::load_with(&config.data_dir, index.clone(), replicates(&config))?
                .with_gc_policy(crate::state::gc::GcPolicy {
                    interval: config.job_gc_interval,
                    thresholds: crate::state::gc::GcThresholds {
                        job: config.job_gc_threshold,
                        eval: config.eval_gc_threshold,
                        batch_eval: config.batch_eval_gc_threshold,
                    },
                }),
        );
        index.observe(workloads.max_index());
        let acl = Arc::new(AclState::load(
            &config.data_dir,
            config.acl_enabled,
            workloads.command_log(),
        ));
        index.observe(acl.max_index());
        // The agent, for a link that must know who leads (set once the agent exists).
        let leader_cell: Arc<OnceLock<std::sync::Weak<Agent>>> = Arc::new(OnceLock::new());
        let heartbeats = Heartbeats::new(
            HeartbeatSettings::of(&config),
            workloads.clone(),
            index.clone(),
        );
        let link: Arc<dyn ServerLink> = if config.client_only() {
            // The servers are elsewhere: the node's calls go to their RPC ports.
            Arc::new(
                RemoteLink::new(
                    membership.server_list(),
                    node.secret_id().to_string(),
                    rpc_dialer(&config, tls.as_ref()),
                )
                .with_server_updates(membership.server_learner()),
            )
        } else {
            let mut local = LocalLink::new(workloads.clone(), node.id().to_string(), index.clone())
                .with_acl(acl.clone());
            if config.rpc_listener() {
                local = local.with_heartbeats(heartbeats.clone());
            }
            if config.rpc_listener() && config.client_enabled {
                // A server of a cluster that is a client too: its node's writes go to the
                // leader while this server is a follower.
                let remote = RemoteLink::new(
                    leader_rpc_list(leader_cell.clone()),
                    node.secret_id().to_string(),
                    rpc_dialer(&config, tls.as_ref()),
                );
                Arc::new(FollowerLink {
                    local: Arc::new(local),
                    remote,
                    agent: leader_cell.clone(),
                })
            } else {
                Arc::new(local)
            }
        };
        let client = Client::new(&config, node.id(), link.clone());
        if !config.client_only() && !config.rpc_listener() {
            // The server is in this process alone (`-dev`): the alloc puller runs only while
            // this node's allocs change, started by the publish that changes them.
            let (state_of, node_id) = (workloads.clone(), node.id().to_string());
            client.pull_on_demand(Box::new(move |since| {
                let state = state_of.state();
                if !state.nodes.contains_key(&node_id) {
                    // Purged: the puller registers the node again.
                    return true;
                }
                state
                    .allocs_by_node
                    .get(node_id.as_str())
                    .is_some_and(|ids| {
                        ids.iter()
                            .any(|id| state.allocs.get(id).is_some_and(|a| a.modify_index > since))
                    })
            }));
            let weak = Arc::downgrade(&client);
            index.on_notify(Box::new(move || {
                if let Some(c) = weak.upgrade() {
                    c.state_changed();
                }
            }));
        }
        let batcher = Batcher::new(&config);
        let drainer = crate::server::drainer::Drainer::new(
            workloads.clone(),
            index.clone(),
            config.server_enabled,
        );
        let periodic =
            crate::server::periodic::PeriodicDispatcher::new(workloads.clone(), index.clone());
        let agent = Arc::new(Agent {
            periodic,
            config,
            index,
            node,
            membership,
            workloads,
            link,
            client,
            acl,
            fs_watch: SharedWatcher::new(),
            batcher,
            heartbeats,
            drainer,
            http: OnceLock::new(),
            gossip: OnceLock::new(),
            tls,
            started_at: SystemTime::now(),
            forwarding: OnceLock::new(),
            leadership: OnceLock::new(),
            raft: OnceLock::new(),
        });
        let _ = leader_cell.set(Arc::downgrade(&agent));
        Ok(agent)
    }
}

/// The in-process link of a server that is a client too: node writes (register, heartbeat,
/// alloc updates, metadata, identity signing and the keys they are checked with) go to the
/// leader's RPC port while this server does not lead (as a client-only agent's would), and
/// through `LocalLink` otherwise; pulls and caller resolution read this server's own state.
struct FollowerLink {
    local: Arc<LocalLink>,
    /// To the leader: its server list is the leader's address, or none while none is known.
    remote: RemoteLink,
    agent: Arc<OnceLock<std::sync::Weak<Agent>>>,
}

impl FollowerLink {
    /// Where this call's writes go: here unless leadership says another server leads.
    fn writer(&self) -> &dyn ServerLink {
        let follower = self
            .agent
            .get()
            .and_then(std::sync::Weak::upgrade)
            .and_then(|a| a.leadership.get().map(|l| !l.view().is_leader))
            .unwrap_or(false);
        if follower {
            &self.remote
        } else {
            self.local.as_ref()
        }
    }
}

/// The leader's RPC address as a server list (empty while no leader is known).
fn leader_rpc_list(agent: Arc<OnceLock<std::sync::Weak<Agent>>>) -> remote_link::ServerList {
    Arc::new(move || {
        agent
            .get()
            .and_then(std::sync::Weak::upgrade)
            .and_then(|a| a.leadership.get().and_then(|l| l.view().leader_rpc_addr))
            .map(|a| vec![a.to_string()])
            .unwrap_or_default()
    })
}

impl ServerLink for FollowerLink {
    fn register_node(
        &self,
        req: &crate::client::link::NodeRegistration,
    ) -> Result<crate::client::link::HeartbeatReply, LinkError> {
        self.writer().register_node(req)
    }

    fn heartbeat(
        &self,
        req: &crate::client::link::Heartbeat,
    ) -> Result<crate::client::link::HeartbeatReply, LinkError> {
        self.writer().heartbeat(req)
    }

    fn pull_allocs(
        &self,
        req: &crate::client::link::PullAllocs,
    ) -> Result<crate::client::link::PulledAllocs, LinkError> {
        self.local.pull_allocs(req)
    }

    fn push_alloc_updates(
        &self,
        req: &crate::client::link::AllocUpdates,
    ) -> Result<crate::client::link::UpdatedAllocs, LinkError> {
        self.writer().push_alloc_updates(req)
    }

    fn push_meta(
        &self,
        req: &crate::client::link::NodeMeta,
    ) -> Result<crate::client::link::MetaReply, LinkError> {
        self.writer().push_meta(req)
    }

    fn sign_identities(
        &self,
        req: &crate::client::link::SignIdentities,
    ) -> Result<crate::client::link::SignedIdentities, LinkError> {
        self.writer().sign_identities(req)
    }

    fn resolve_acl(
        &self,
        req: &crate::client::link::ResolveAcl,
    ) -> Result<crate::client::link::ResolvedAcl, LinkError> {
        self.local.resolve_acl(req)
    }

    fn public_keys(
        &self,
        req: &crate::client::link::PublicKeysRequest,
    ) -> Result<crate::client::link::PublicKeys, LinkError> {
        self.writer().public_keys(req)
    }

    fn close(&self) {
        self.local.close();
        self.remote.close();
    }
}

/// Whether this agent's server state is replicated with Raft: a server with an RPC port
/// that is not `-dev` (a `-dev` agent keeps the plain command log).
pub fn replicates(config: &Config) -> bool {
    config.rpc_listener() && !config.dev
}

/// How long start-up waits for a lone server to elect itself (it campaigns at once).
const LONE_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Start Raft on the replicated command log and make it this server's leadership.
fn start_raft(agent: &Arc<Agent>) -> Result<(), AgentError> {
    let c = &agent.config;
    let Some(machine) = agent.workloads.command_log().take_state_machine() else {
        return Ok(());
    };
    let rpc_addr = c
        .rpc_addr()
        .parse()
        .unwrap_or_else(|_| SocketAddr::new(c.advertise_ip(), c.ports_rpc));
    let settings = crate::raft::Settings {
        uuid: agent.node.id().to_string(),
        name: format!("{}.{}", c.node_name, c.region),
        region: c.region.clone(),
        rpc_addr,
        bootstrap_expect: c.bootstrap_expect,
        autopilot: {
            let workloads = agent.workloads.clone();
            Arc::new(move || {
                workloads
                    .state()
                    .autopilot
                    .as_deref()
                    .cloned()
                    .unwrap_or_default()
            })
        },
        dial: rpc_dialer(c, agent.tls.as_ref()),
        gossip: agent.gossip.get().cloned(),
        raft_dir: Some(c.data_dir.join("server").join("raft")),
    };
    let raft = crate::raft::Raft::start(settings, machine).map_err(AgentError::Raft)?;
    agent
        .workloads
        .command_log()
        .set_replicator(Arc::new(crate::raft::RaftProposer(raft.clone())));
    let _ = agent.raft.set(raft.clone());
    let _ = agent.leadership.set(raft.clone());
    if c.bootstrap_expect == 1 {
        // A lone voter elects itself at once: wait for it, so the node registration and
        // the first requests find a leader.
        let view = crate::state::leader::Leadership::wait_for_leader(
            &*raft,
            std::time::Instant::now() + LONE_LEADER_WAIT,
        );
        if !view.is_leader {
            log::warn!("raft: this server is not the leader yet");
        }
    }
    Ok(())
}

/// How a client-only agent dials its servers' RPC ports: TLS with the agent's certificates
/// when `tls.rpc` is on, plain TCP otherwise.
fn rpc_dialer(config: &Config, tls: Option<&Arc<crate::tls::AgentTls>>) -> Dialer {
    let Some(tls) = tls.filter(|_| config.tls.rpc).cloned() else {
        return remote_link::plain_dialer();
    };
    Arc::new(move |addr: &SocketAddr, deadline: std::time::Instant| {
        let config = tls.client_config().map_err(std::io::Error::other)?;
        let name = tls.peer_server_name();
        let stream = crate::tls::client::dial(addr, Some((config, &name)), deadline)
            .map_err(std::io::Error::other)?;
        let tcp = stream.tcp().try_clone()?;
        Ok((
            Box::new(stream) as Box<dyn crate::http::client::Stream>,
            tcp,
        ))
    })
}

/// The data dir: traversable by task users, listable by nobody but the agent.
const DATA_DIR_MODE: u32 = 0o711;
/// `server/` and `client/` under the data dir: the agent's alone.
const PRIVATE_DIR_MODE: u32 = 0o700;

fn set_mode(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Give the data dir `DATA_DIR_MODE`, unless it is a shared sticky directory such as `/tmp`
/// (then only `server/` and `client/` are made private, and a warning says so).
fn tighten_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o1000 != 0 {
        log::warn!(
            "data dir {} is a shared sticky directory; its mode is left as it is",
            dir.display()
        );
        return Ok(());
    }
    set_mode(dir, DATA_DIR_MODE)
}

fn check_data_dir(config: &Config) -> Result<(), AgentError> {
    let bad = |source: std::io::Error| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(bad)?;
    // The agent's own state (ACL tokens, the signing key, node secrets) lives where no task
    // can name it: the data dir can be passed through (tasks running as another user reach
    // their alloc dirs) but not listed, and `server/` and `client/` are the agent's alone.
    tighten_data_dir(&config.data_dir).map_err(bad)?;
    for private in ["server", "client"] {
        let dir = config.data_dir.join(private);
        std::fs::create_dir_all(&dir).map_err(bad)?;
        set_mode(&dir, PRIVATE_DIR_MODE).map_err(bad)?;
    }
    let probe = config
        .data_dir
        .join(format!(".probe-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&probe, b"").map_err(bad)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Block SIGINT, SIGTERM and SIGHUP (reload) in this thread (and so in every thread spawned
/// after), so the main thread can take them with `sigtimedwait`. Child processes get an empty mask from std.
fn block_stop_signals() -> Result<crate::sys::signal::SignalSet, AgentError> {
    let set = crate::sys::signal::SignalSet::of(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .map_err(AgentError::Signals)?;
    set.block().map_err(AgentError::Signals)?;
    Ok(set)
}

/// Allocator arenas (glibc's default is 8 per core): measured with 200 log followers, 2
/// arenas hold 1 MiB less than 16 and cost no requests per second on the 2-core bench host.
pub const MALLOC_ARENAS: i32 = 2;

/// Allocations of this size and more get mappings of their own, returned when freed (glibc's
/// default starts at 128 KiB but rises to 32 MiB once such blocks are freed; then a server's
/// large transient buffers, such as a 1 000-placement plan's JSON, come from the heap and
/// leave holes in it).
pub const MALLOC_MMAP_THRESHOLD: i32 = 128 * 1024;

/// Free heap memory (glibc `mallinfo2().fordblks`) grown by this much over its lowest since
/// the last trim makes a main-loop sample give it back to the system (`malloc_trim`): after a
/// burst of placements a server held ~60 MiB of freed memory inside its heaps, which glibc
/// returns only from a heap's top on its own. (A trim releases pages, not the free count.)
pub const MALLOC_TRIM_FREE: usize = 32 * 1024 * 1024;

/// Run the agent until SIGINT or SIGTERM; then stop every thread and return.
pub fn run(config: Config) -> Result<(), AgentError> {
    // Before any thread starts: fewer allocator arenas, less memory held per thread.
    if !crate::sys::malloc::limit_arenas(MALLOC_ARENAS) {
        log::debug!("the allocator kept its default arena count");
    }
    if !crate::sys::malloc::fix_mmap_threshold(MALLOC_MMAP_THRESHOLD) {
        log::debug!("the allocator kept its sliding mmap threshold");
    }
    let signals = block_stop_signals()?;
    check_data_dir(&config)?;
    // `-dev` without `-data-dir`: the temp data dir goes when this function returns, whether
    // the agent stopped or failed to start.
    let _temp_dir = config
        .data_dir_is_temp
        .then(|| TempDataDir(config.data_dir.clone()));
    let addr = SocketAddr::new(config.bind_addr, config.http_port);
    let listener = TcpListener::bind(addr).map_err(|source| AgentError::Bind { addr, source })?;
    let rpc_listener = if config.rpc_listener() {
        let addr = config.rpc_bind();
        Some(TcpListener::bind(addr).map_err(|source| AgentError::Bind { addr, source })?)
    } else {
        None
    };
    let agent = Agent::load(config)?;
    // Tunnels (client-opened connections the server sends requests down): a server parks
    // its clients' in a pool and pushes alloc changes down them; a client-only agent keeps
    // its own open and sends what it cannot answer to its servers.
    // With `tls.rpc` every connection to another agent's RPC port (forwarding, tunnels, calls
    // passed to the leader) is mutual TLS, as Raft's and the client link's are.
    let rpc_connect = crate::tls::rpc_connector(agent.tls.clone().filter(|_| agent.config.tls.rpc));
    let tunnel_pool = match rpc_listener {
        Some(_) => Some(TunnelPool::start().map_err(AgentError::Spawn)?),
        None => None,
    };
    let client_tunnels = agent.config.client_only();
    // Members, join and force-leave find gossip running; Raft finds its peers there.
    start_gossip(&agent)?;
    if replicates(&agent.config) {
        start_raft(&agent)?;
    }
    if agent.config.server_enabled {
        // Without Raft this server is its own leader (with Raft the leadership is set).
        let rpc_addr = rpc_listener
            .as_ref()
            .and_then(|_| agent.config.rpc_addr().parse().ok());
        let _ = agent
            .leadership
            .set(Arc::new(crate::state::leader::SoleServer { rpc_addr }));
    }
    let _ = agent.forwarding.set(Forwarding {
        tunnels: tunnel_pool.clone(),
        servers: client_tunnels.then(|| agent.membership.server_list()),
        peers: tunnel_pool.as_ref().map(|_| live_servers(&agent)),
        last_server: Default::default(),
    });
    let mut pusher = match &tunnel_pool {
        Some(pool) => Some(
            Pusher::start(pool.clone(), agent.index.clone(), alloc_changes(&agent))
                .map_err(AgentError::Spawn)?,
        ),
        None => None,
    };
    if client_tunnels {
        // The server pushes alloc changes down this node's tunnels: no pull parks there.
        agent.client.enable_push();
    }
    if rpc_listener.is_some() {
        // Every known node not down gets a full TTL + grace to heartbeat this server.
        agent.heartbeats.start();
    }
    let mut first_ttl = None;
    if agent.config.client_enabled {
        // The client registers its node (again) through the link before anything is placed
        // or served: the server's node table knows this node before the first request is read.
        // A server elsewhere may not answer yet: the node updater then registers until it does.
        let registration = agent.node.registration();
        match agent.client.register(&registration) {
            Ok(reply) => first_ttl = Some(std::time::Duration::from_millis(reply.ttl_ms)),
            Err(e) if agent.config.client_only() || agent.config.bootstrap_expect != 1 => {
                log::warn!("cannot register this node yet (retrying): {e}");
            }
            Err(e) => return Err(AgentError::Register(e)),
        }
    }
    // The scheduler (server role only) places what the queue holds (pending evals, blocked
    // ones the node's registration woke) from here on; the clients run what it places. A
    // replicated server runs it (and the heartbeat timers and the drainer) only while it
    // leads.
    let duties = match agent.raft.get() {
        Some(raft) => {
            let raft = raft.clone();
            let parts = crate::server::duties::Parts {
                workloads: agent.workloads.clone(),
                index: agent.index.clone(),
                heartbeats: agent.heartbeats.clone(),
                drainer: agent.drainer.clone(),
                periodic: agent.periodic.clone(),
                autopilot: autopilot_config(&agent.config.autopilot),
            };
            let wait = Box::new(move |was, deadline| raft.wait_leadership(was, deadline));
            Some(
                crate::server::duties::LeaderDuties::start(parts, wait)
                    .map_err(AgentError::Scheduler)?,
            )
        }
        None => None,
    };
    let scheduler = if agent.config.server_enabled && duties.is_none() {
        Some(
            crate::server::scheduler::Scheduler::start(
                agent.workloads.clone(),
                agent.index.clone(),
            )
            .map_err(AgentError::Scheduler)?,
        )
    } else {
        None
    };
    // Periodic jobs launch their children from here on: a leader duty (a replicated server
    // starts and stops it with leadership, in `duties`).
    if agent.config.server_enabled && duties.is_none() {
        agent.periodic.start();
    }
    // A drain the last run left unfinished goes on (the thread runs only while one does).
    agent.drainer.kick();
    if agent.config.client_enabled {
        agent.batcher.start(NodeUpdater {
            link: agent.link.clone(),
            node_id: agent.node.id().to_string(),
            meta: {
                let node = agent.node.clone();
                Box::new(move || node.meta_view().meta)
            },
            registration: {
                let node = agent.node.clone();
                Box::new(move || node.registration())
            },
            first_ttl,
        });
    }

    let limits = Limits {
        max_conns_per_client: agent.config.http_max_conns_per_client,
        ..Limits::default()
    }
    .with_env();
    let router = Arc::new(Router::new(agent.clone()));
    let server = Arc::new(Server::new(router.clone(), limits.clone()));
    let _ = agent.http.set(server.clone());
    if agent.config.client_enabled {
        // Before the TCP listener: the tasks it restores get their Task API sockets on this
        // server.
        agent.client.start(TaskApi {
            server: server.clone(),
        });
    }
    let served = match agent.tls.clone().filter(|t| t.http()) {
        Some(tls) => server.serve_tcp_tls(listener, tls),
        None => server.serve_tcp(listener),
    };
    served.map_err(|source| AgentError::Bind { addr, source })?;
    // The RPC port: the cluster calls of clients elsewhere, and the whole API beside them.
    let rpc_server = match rpc_listener {
        Some(l) => {
            let rpc_addr = agent.config.rpc_bind();
            let service = Arc::new(
                RpcService::new(
                    agent.workloads.clone(),
                    agent.index.clone(),
                    agent.heartbeats.clone(),
                )
                .with_acl(agent.acl.clone())
                .with_servers(live_servers(&agent)),
            );
            let rpc_limits = Limits {
                max_conns_per_client: agent.config.rpc_max_conns_per_client,
                ..limits.clone()
            };
            let mut rpc_router =
                RpcRouter::new(service, router.clone()).with_connector(rpc_connect.clone());
            if let Some(l) = agent.leadership.get() {
                // A follower passes node writes to the leader.
                rpc_router =
                    rpc_router.with_leadership(l.clone(), agent.config.rpc_addr().parse().ok());
            }
            if let Some(raft) = agent.raft.get() {
                rpc_router = rpc_router.with_raft(raft.clone());
            }
            if let Some(pool) = &tunnel_pool {
                rpc_router = rpc_router.with_tunnels(pool.clone());
            }
            let rpc = Arc::new(Server::new(Arc::new(rpc_router), rpc_limits));
            let served = match agent.tls.clone().filter(|t| t.settings().rpc) {
                Some(tls) => rpc.serve_tcp_tls(l, Arc::new(crate::tls::RpcTls(tls))),
                None => rpc.serve_tcp(l),
            };
            served.map_err(|source| AgentError::Bind {
                addr: rpc_addr,
                source,
            })?;
            log::info!("RPC listening on {rpc_addr}");
            Some(rpc)
        }
        None => None,
    };
    let mut tunnels = if client_tunnels {
        let settings = TunnelSettings {
            servers: agent.membership.server_list(),
            node_id: agent.node.id().to_string(),
            node_secret: agent.node.secret_id().to_string(),
            limits,
            connect: rpc_connect.clone(),
        };
        let client = agent.client.clone();
        let on_push = Arc::new(move |index| client.allocs_changed(index));
        Some(
            Tunnels::start(settings, router.clone(), on_push, TUNNEL_IDLE)
                .map_err(AgentError::Spawn)?,
        )
    } else {
        None
    };
    // Load or make the workload identity key off the start-up path (joined at shutdown). A
    // client-only agent holds no signing key: its server signs.
    let warm_keys = if agent.config.client_only() {
        None
    } else {
        let agent = agent.clone();
        std::thread::Builder::new()
            .name("acl-keys-warmup".into())
            .spawn(move || {
                let _ = agent.acl.keys.get();
            })
            .ok()
    };
    // Start-up ran much code that an idle agent never runs again: from here on, only the
    // code that runs stays resident.
    if let Err(e) = crate::sys::mem::trim_code_pages() {
        log::debug!("cannot trim resident code pages: {e}");
    }
    log::info!(
        "nomadlet agent started: http={addr} server={} client={} node={} ({}) data_dir={}",
        agent.config.server_enabled,
        agent.config.client_enabled,
        agent.node.id(),
        agent.config.node_name,
        agent.config.data_dir.display()
    );
    if let Some(t) = agent.tls.as_ref().filter(|t| t.http()) {
        log::info!(
            "the HTTP API serves HTTPS only (client certificates required: {})",
            t.settings().verify_https_client
        );
    }

    // systemd (Type=notify): ready once the API answers; then the watchdog pings.
    let notifier = crate::sd_notify::Notifier::from_env();
    let watchdog = notifier
        .as_ref()
        .and_then(|_| crate::sd_notify::watchdog_interval());
    notify(&notifier, "READY=1");
    // The scheduler's thread runs only while it has work; its timers (the GC, evals whose
    // wait is over) start it from the main loop's ticks.
    let tick = || {
        if let Some(s) = &scheduler {
            s.tick();
        }
    };
    let sig = main_loop(&agent, &signals, &notifier, watchdog, &tick);
    log::info!("caught signal {sig}, shutting down");
    notify(&notifier, "STOPPING=1");
    // Blocking queries return at once from here on, so their connections can finish.
    agent.index.close();
    // Ends at the closed counter; joined while the committer still takes its last write.
    agent.drainer.shutdown();
    if let Some(g) = agent.gossip.get() {
        // A server leaves the gossip pool only when told to (`leave_on_*`), as in Nomad;
        // otherwise the others see it fail.
        let leave = (sig == libc::SIGINT && agent.config.leave_on_interrupt)
            || (sig == libc::SIGTERM && agent.config.leave_on_terminate);
        if leave {
            if let Some(raft) = agent.raft.get() {
                // A leaving leader takes itself out of the configuration first (the quorum
                // shrinks safely); a follower is removed by the leader once gossip says left.
                raft.leave();
            }
        }
        g.shutdown(leave);
    }
    agent.link.close();
    agent.heartbeats.shutdown();
    if let Some(t) = tunnels.as_mut() {
        t.shutdown();
    }
    if let Some(p) = pusher.as_mut() {
        p.shutdown();
    }
    if let Some(rpc) = &rpc_server {
        rpc.shutdown();
    }
    if let Some(pool) = &tunnel_pool {
        pool.shutdown();
    }
    server.shutdown();
    // Before the tasks stop: no new launch or placement is proposed from here on.
    agent.periodic.shutdown();
    if let Some(s) = &scheduler {
        s.shutdown();
    }
    if let Some(d) = &duties {
        d.shutdown();
    }
    agent.client.shutdown(sig);
    // After the tasks: their last state updates are committed before the store closes.
    agent.workloads.shutdown();
    agent.batcher.shutdown();
    agent.fs_watch.shutdown();
    if let Some(h) = warm_keys {
        let _ = h.join();
    }
    log::info!("nomadlet agent stopped");
    Ok(())
}

/// Which nodes' allocs the server changed after an index (placements, stops, job updates:
/// `AllocModifyIndex`, not the clients' own reports), for `tunnel-push`. This agent's own
/// node is left out: its client pulls in process.
fn alloc_changes(agent: &Arc<Agent>) -> ChangedNodes {
    let workloads = agent.workloads.clone();
    let own = agent
        .config
        .client_enabled
        .then(|| agent.node.id().to_string());
    Box::new(move |since| {
        let state = workloads.state();
        if since == u64::MAX {
            return (state.index, Vec::new());
        }
        // Through the state's index of allocs by AllocModifyIndex: the allocs changed
        // after `since` only, not every alloc (this runs after every index change).
        let nodes = state
            .nodes_with_allocs_modified_after(since)
            .into_iter()
            .filter(|n| own.as_deref() != Some(*n))
            .map(str::to_string)
            .collect();
        (state.index, nodes)
    })
}

/// The RPC addresses of this region's live servers, for clients' server lists (ref §5.2):
/// every gossip member that is a Nomad server of this region and alive (this server at its
/// advertised RPC address), sorted; this server alone when it does not gossip.
fn live_servers(agent: &Arc<Agent>) -> crate::server::rpc::ServerAddrs {
    let weak = Arc::downgrade(agent);
    Arc::new(move || {
        let Some(agent) = weak.upgrade() else {
            return Vec::new();
        };
        let own = agent.config.rpc_addr();
        let Some(gossip) = agent.gossip.get() else {
            return vec![own];
        };
        let local = gossip.local().map(|m| m.name);
        let mut out: Vec<String> = gossip
            .members()
            .into_iter()
            .filter(|m| {
                m.status == crate::gossip::MemberStatus::Alive
                    && m.tags.get("role").map(String::as_str) == Some("nomad")
                    && m.tags.get("region") == Some(&agent.config.region)
            })
            .filter_map(|m| {
                if Some(&m.name) == local.as_ref() {
                    return Some(own.clone());
                }
                let ip = match m.tags.get("rpc_addr") {
                    Some(a) => a.parse().ok()?,
                    None => m.addr,
                };
                let port: u16 = m.tags.get("port")?.parse().ok()?;
                Some(SocketAddr::new(ip, port).to_string())
            })
            .collect();
        if out.is_empty() {
            out.push(own);
        }
        out.sort();
        out.dedup();
        out
    })
}

/// The gossip tags of this server (Serf's tags for a Nomad server).
fn gossip_tags(agent: &Agent) -> std::collections::BTreeMap<String, String> {
    let c = &agent.config;
    // -dev (or no role at all) bootstraps alone, as Nomad's dev mode does.
    let expect = match c.bootstrap_expect {
        0 if !(c.roles_explicit && c.server_enabled) => 1,
        n => n,
    };
    let mut tags = std::collections::BTreeMap::new();
    for (k, v) in [
        ("role", "nomad".to_string()),
        ("region", c.region.clone()),
        ("dc", c.datacenter.clone()),
        ("build", env!("CARGO_PKG_VERSION").to_string()),
        ("vsn", "1".to_string()),
        ("raft_vsn", "3".to_string()),
        ("mvn", "1".to_string()),
        ("id", agent.node.id().to_string()),
        ("rpc_addr", c.advertise_ip().to_string()),
        ("port", c.ports_rpc.to_string()),
    ] {
        tags.insert(k.to_string(), v);
    }
    if expect != 0 {
        tags.insert("expect".into(), expect.to_string());
    }
    if expect == 1 {
        tags.insert("bootstrap".into(), "1".into());
    }
    tags
}

/// Start gossip on the serf port when this agent gossips (`Config::gossips`); a serf port that
/// does not bind stops start-up.
fn start_gossip(agent: &Agent) -> Result<(), AgentError> {
    let c = &agent.config;
    if !c.gossips() {
        return Ok(());
    }
    let key = match &c.server_encrypt {
        // Checked when the config loaded; a key that still does not decode is refused here.
        Some(k) => Some(
            crate::encoding::base64_std_decode(k.trim())
                .ok_or(AgentError::Gossip(crate::gossip::GossipError::Key(0)))?,
        ),
        None => None,
    };
    let settings = crate::gossip::Settings {
        name: format!("{}.{}", c.node_name, c.region),
        bind: SocketAddr::new(c.bind_addr, c.ports_serf),
        advertise: c.serf_advertise(),
        tags: gossip_tags(agent),
        key,
        retry_join: c.server_retry_join.clone(),
        start_join: c.start_join.clone(),
        retry_interval: c.server_retry_interval,
        retry_max: c.server_retry_max,
        state_path: c.data_dir.join("server").join("gossip.json"),
    };
    let bind = settings.bind;
    match crate::gossip::Gossip::start(settings) {
        Ok(g) => {
            log::info!(
                "gossip on udp {bind} (advertised {}), encrypted: {}",
                c.serf_advertise(),
                c.server_encrypt.is_some()
            );
            let _ = agent.gossip.set(g);
            Ok(())
        }
        Err(e) => Err(AgentError::Gossip(e)),
    }
}

/// Removes a data dir made for this run (`-dev`) when dropped.
struct TempDataDir(std::path::PathBuf);

impl Drop for TempDataDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            log::warn!("cannot remove the dev data dir {}: {e}", self.0.display());
        }
    }
}

fn notify(notifier: &Option<crate::sd_notify::Notifier>, state: &str) {
    if let Some(n) = notifier {
        n.notify(state);
    }
}

/// Threads of an agent with nothing to do: main, the HTTP acceptor, the metadata batcher.
const IDLE_THREADS: usize = 3;

/// The threads of an idle agent of this role: [`IDLE_THREADS`], and on a client-only agent
/// its allocations pull and its idle tunnels, which live as long as it does.
fn idle_threads(config: &crate::config::Config) -> usize {
    if config.client_only() {
        IDLE_THREADS + 1 + crate::client::tunnel::TUNNEL_IDLE
    } else {
        IDLE_THREADS
    }
}

/// Idle main-loop samples after which resident code is trimmed once more: what ran after
/// the first trim of an idle spell (a client's registration, its tunnels' first exchanges)
/// is dropped too.
const RETRIM_AFTER_SAMPLES: u32 = 10;

/// How many threads this process runs now (`None` without `/proc`).
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// The main thread's loop until SIGINT/SIGTERM (returned): it takes signals with a deadline,
/// samples task and host stats every `SAMPLE_INTERVAL` (and runs `tick`: the scheduler's
/// timers), pings systemd's watchdog every
/// `watchdog` when asked to, and reloads on SIGHUP (`reload::RELOAD_STEPS`) between
/// `RELOADING=1` and `READY=1`.
fn main_loop(
    agent: &Agent,
    signals: &crate::sys::signal::SignalSet,
    notifier: &Option<crate::sd_notify::Notifier>,
    watchdog: Option<std::time::Duration>,
    tick: &dyn Fn(),
) -> i32 {
    use std::time::Instant;
    let mut next_sample = Instant::now() + SAMPLE_INTERVAL;
    // Start-up trimmed the code pages already.
    // Samples in a row the agent was idle (it starts trimmed: counted as idle).
    let mut idle_for: u32 = 1;
    // The least free heap memory seen since the last trim (see `MALLOC_TRIM_FREE`).
    let mut free_low = crate::sys::malloc::free_heap_bytes();
    let idle_threads = idle_threads(&agent.config);
    let mut next_ping = watchdog.map(|w| Instant::now() + w);
    if watchdog.is_some() {
        notify(notifier, "WATCHDOG=1");
    }
    loop {
        let now = Instant::now();
        let until = next_ping.map_or(next_sample, |p| p.min(next_sample));
        match crate::sys::signal::wait_timeout(signals, until.saturating_duration_since(now)) {
            Some(libc::SIGHUP) => {
                notify(
                    notifier,
                    &format!(
                        "RELOADING=1\nMONOTONIC_USEC={}",
                        crate::sd_notify::monotonic_usec()
                    ),
                );
                crate::reload::reload(agent);
                notify(notifier, "READY=1");
            }
            Some(sig) => return sig,
            None => {}
        }
        let now = Instant::now();
        if now >= next_sample {
            agent.client.stats.sample();
            tick();
            // On-demand workers (scheduler, committer, alloc puller, runners) ran code that
            // an idle agent no longer runs: once they have all ended, drop it from RSS again.
            let idle = thread_count().is_some_and(|n| n <= idle_threads);
            idle_for = if idle { idle_for.saturating_add(1) } else { 0 };
            if idle_for == 1 || idle_for == RETRIM_AFTER_SAMPLES {
                if let Err(e) = crate::sys::mem::trim_code_pages() {
                    log::debug!("cannot trim resident code pages: {e}");
                }
            }
            // Idle or not: memory freed beyond the bound goes back (a look is cheap; a trim
            // runs only after a burst freed that much).
            let free = crate::sys::malloc::free_heap_bytes();
            free_low = free_low.min(free);
            if free - free_low > MALLOC_TRIM_FREE {
                crate::sys::malloc::trim();
                free_low = free;
            }
            next_sample = now + SAMPLE_INTERVAL;
        }
        if let (Some(p), Some(w)) = (next_ping, watchdog) {
            if now >= p {
                notify(notifier, "WATCHDOG=1");
                next_ping = Some(now + w);
            }
        }
    }
}

/// Autopilot's configuration from the agent config's `autopilot {}` block: every key set
/// there over Nomad's default.
fn autopilot_config(
    block: &crate::config::AutopilotSettings,
) -> crate::state::autopilot::AutopilotConfig {
    let d = crate::state::autopilot::AutopilotConfig::default();
    let nanos = |t: Option<std::time::Duration>, or: u64| {
        t.map_or(or, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
    };
    crate::state::autopilot::AutopilotConfig {
        cleanup_dead_servers: block.cleanup_dead_servers.unwrap_or(d.cleanup_dead_servers),
        last_contact_threshold_ns: nanos(block.last_contact_threshold, d.last_contact_threshold_ns),
        max_trailing_logs: block.max_trailing_logs.unwrap_or(d.max_trailing_logs),
        min_quorum: block.min_quorum.unwrap_or(d.min_quorum),
        server_stabilization_time_ns: nanos(
            block.server_stabilization_time,
            d.server_stabilization_time_ns,
        ),
        enable_redundancy_zones: block
            .enable_redundancy_zones
            .unwrap_or(d.enable_redundancy_zones),
        disable_upgrade_migration: block
            .disable_upgrade_migration
            .unwrap_or(d.disable_upgrade_migration),
        enable_custom_upgrades: block
            .enable_custom_upgrades
            .unwrap_or(d.enable_custom_upgrades),
        ..d
    }
}
