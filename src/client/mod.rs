//! The client half of the agent: alloc runners (a thread per task), the raw_exec driver,
//! task cgroups (found once here, see `sys::cgroup`), alloc dirs, task env, rotating logs,
//! stats and garbage collection. It reaches server state only through [`link::ServerLink`]:
//! runners start and stop because a pull brought a changed allocation.

pub mod alloc_dir;
pub mod authz;
pub mod dirfd;
pub mod dispatch_payload;
pub mod exec;
pub mod host;
pub mod link;
pub mod logs;
pub mod node;
pub mod node_net;
pub mod raw_exec;
pub mod remote_link;
pub mod restarts;
pub mod shim;
pub mod stats;
pub mod task_env;
pub mod task_events;
pub mod task_hooks;
pub mod task_runner;
pub mod tunnel;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::config::{Config, DrainOnShutdown};
use crate::http::Server;
use crate::state::jobs::alloc::{AllocRecord, TaskEvent, TaskState};
use crate::state::status::{AllocClientStatus, AllocDesiredStatus, JobType, TaskStatus};
use crate::sys::cgroup::{Cgroups, Mode};

use self::alloc_dir::AllocDir;
use self::link::{
    AllocUpdate, AllocUpdates, HeartbeatReply, LinkError, NodeRegistration, PullAllocs, ServerLink,
};
use self::task_env::NodeFacts;
use self::task_runner::{TaskCmd, TaskRunner};

/// How long the alloc puller waits before it pulls again after a failed pull.
pub const PULL_RETRY: Duration = Duration::from_secs(1);

/// In push mode (the server tells this node when its allocs change, down a tunnel), the
/// longest the alloc puller waits without a push before it pulls anyway (a safety pull at
/// the heartbeat interval, in case a push was lost).
pub const SAFETY_PULL: Duration = link::DEFAULT_HEARTBEAT;

/// With the server in this process (`-dev`), how long the alloc puller goes on with no
/// change of this node's allocs before its thread ends; the next change starts it again
/// ([`Client::pull_on_demand`]). Its pulls park on the server this long at most.
pub const PULLER_IDLE_EXIT: Duration = Duration::from_secs(3);

/// Whether the server's state holds a change for this node after an index (an alloc of it
/// modified later, or the node gone): what starts an on-demand puller.
pub type ChangedSince = Box<dyn Fn(u64) -> bool + Send + Sync>;

/// The `client-allocs` thread. On demand, `running` changes only under the lock: a thread
/// that ends says so under it, after [`ChangedSince`] found nothing since its last pull.
#[derive(Default)]
struct PullerSlot {
    handle: Option<JoinHandle<()>>,
    running: bool,
    /// Set when the puller runs on demand.
    changed: Option<ChangedSince>,
}

/// "Your allocs changed": set by a push from the server, taken by the alloc puller.
#[derive(Default)]
struct PushWake {
    /// Pulls wait for pushes instead of parking on the server.
    enabled: AtomicBool,
    /// A push came since the puller last looked.
    pending: Mutex<bool>,
    cv: parking_lot::Condvar,
}

/// What the filesystem API needs to know about one allocation on this client.
#[derive(Clone, Debug)]
pub struct AllocFsView {
    pub namespace: String,
    /// `<data_dir>/alloc/<alloc_id>`.
    pub dir: PathBuf,
    /// The alloc dir was garbage-collected (the alloc is still known).
    pub collected: bool,
    pub tasks: Vec<TaskFsView>,
}

/// One task of an allocation, as the filesystem API sees it.
#[derive(Clone, Debug)]
pub struct TaskFsView {
    pub name: String,
    /// The task has started at least once (`StartedAt` set).
    pub started: bool,
    /// The task is dead and will not run again.
    pub dead: bool,
}

struct TaskHandle {
    name: String,
    /// Where `alloc exec` runs while the task runs.
    exec: exec::ExecSlot,
    cmds: Sender<TaskCmd>,
    join: Option<JoinHandle<()>>,
}

impl TaskHandle {
    fn finished(&self) -> bool {
        self.join.as_ref().map(|j| j.is_finished()).unwrap_or(true)
    }
}

/// Why a client operation failed.
#[derive(Debug)]
pub enum Error {
    /// No allocation with this ID on this client.
    UnknownAlloc,
    /// The allocation is not terminal: it cannot be collected.
    NotEligible,
    /// The allocation has no task of this name.
    UnknownTask(String),
    /// No task of the allocation is running.
    NotRunning,
    /// The server did not take the change.
    Link(LinkError),
    /// The alloc dir could not be removed.
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownAlloc => f.write_str("unknown allocation"),
            Error::NotEligible => f.write_str("allocation not eligible for GC"),
            Error::UnknownTask(t) => write!(f, "unknown task {t}"),
            Error::NotRunning => f.write_str("task not running"),
            Error::Link(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Link(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        Error::Link(e)
    }
}

/// What the agent's stop does to running tasks.
#[derive(Debug)]
enum TasksOnStop {
    /// Leave them running; the next agent re-attaches.
    Detach,
    /// Kill them (nothing could re-attach).
    Kill,
    /// Kill them, as `drain_on_shutdown` says.
    Drain(DrainOnShutdown),
}

/// The settings that decide [`TasksOnStop`].
struct OnStop {
    temp_data_dir: bool,
    drain: Option<DrainOnShutdown>,
    leave_on_interrupt: bool,
    leave_on_terminate: bool,
}

impl OnStop {
    fn tasks_stop(&self, signal: i32) -> TasksOnStop {
        if self.temp_data_dir {
            log::info!("stopping every task: the data dir is temporary, nothing could re-attach");
            return TasksOnStop::Kill;
        }
        let leave = (signal == libc::SIGINT && self.leave_on_interrupt)
            || (signal == libc::SIGTERM && self.leave_on_terminate);
        match &self.drain {
            Some(d) if leave => {
                log::info!("draining: stopping the allocations before the agent exits");
                TasksOnStop::Drain(d.clone())
            }
            _ => {
                log::info!("leaving tasks running for the next agent to re-attach");
                TasksOnStop::Detach
            }
        }
    }
}

/// What the Task API of a task needs from the agent: the HTTP server its `api.sock` is served
/// by (its workload identity is signed by the server, through the link).
pub struct TaskApi {
    pub server: Arc<Server>,
}

/// The client: every alloc runner on this node, and its view of this node's allocations.
pub struct Client {
    runners: Mutex<HashMap<String, Vec<TaskHandle>>>,
    pub stats: stats::Sampler,
    /// The cgroups tasks run in (mode `None`: process groups only).
    pub cgroups: Cgroups,
    data_dir: PathBuf,
    raw_exec_enabled: bool,
    gc_max_allocs: usize,
    /// Held by the one automatic GC pass running; others leave their request in `gc_wanted`.
    gc_pass: Mutex<()>,
    /// A GC pass was asked for since the running one took its snapshot.
    gc_wanted: AtomicBool,
    /// What happens to running tasks when the agent stops.
    on_stop: OnStop,
    node: NodeFacts,
    stopping: AtomicBool,
    link: Arc<dyn ServerLink>,
    /// Callers of a client-only agent, resolved through the link and cached.
    authz: authz::ClientAuthz,
    /// This node's allocations as last pulled from (or answered by) the server.
    allocs: RwLock<BTreeMap<String, Arc<AllocRecord>>>,
    /// The index of the last pull (the next pull asks for changes after it).
    pulled_index: Mutex<u64>,
    task_api: OnceLock<TaskApi>,
    puller: Mutex<PullerSlot>,
    /// What this node registered with: sent again when the server answers "unknown node"
    /// (the node was purged, or the server lost it).
    registration: Mutex<Option<NodeRegistration>>,
    /// Alloc updates the server has not taken yet (the link failed), merged per alloc: sent
    /// again with the next update and after every pull, so a server that was unreachable
    /// still learns what the tasks did (ref §3.2: a failed batch is re-queued).
    unsynced: Mutex<BTreeMap<String, AllocUpdate>>,
    stop_tx: Sender<()>,
    stop_rx: Receiver<()>,
    push: PushWake,
}

impl Client {
    /// A client for node `node_id`, talking to the server through `link` (nothing starts).
    pub fn new(config: &Config, node_id: &str, link: Arc<dyn ServerLink>) -> Arc<Client> {
        let cgroups = Cgroups::detect(config.cgroup_parent.as_deref());
        let cgroup_parent = cgroups.parent_name().unwrap_or_default();
        if cgroups.mode() == Mode::None {
            log::warn!(
                "cgroups: not used ({}); tasks are held by their process group only: a process \
                 that leaves it (setsid) escapes stop, and no memory or cpu limit is enforced",
                cgroups.reason()
            );
        } else {
            log::info!(
                "cgroups: mode {}, parents {:?}, memory limit {}, cpu weight {}",
                cgroups.mode().as_str(),
                cgroups.parents(),
                if cgroups.controls("memory") {
                    "enforced"
                } else {
                    "not enforced"
                },
                if cgroups.controls("cpu") {
                    "enforced"
                } else {
                    "not enforced"
                },
            );
        }
        let (stop_tx, stop_rx) = bounded(1);
        Arc::new(Client {
            runners: Mutex::new(HashMap::new()),
            stats: stats::Sampler::new(),
            cgroups,
            data_dir: config.data_dir.clone(),
            raw_exec_enabled: config.raw_exec_enabled,
            gc_max_allocs: config.gc_max_allocs,
            gc_pass: Mutex::new(()),
            gc_wanted: AtomicBool::new(false),
            on_stop: OnStop {
                temp_data_dir: config.data_dir_is_temp,
                drain: config.drain_on_shutdown.clone(),
                leave_on_interrupt: config.leave_on_interrupt,
                leave_on_terminate: config.leave_on_terminate,
            },
            node: NodeFacts {
                id: node_id.to_string(),
                name: config.node_name.clone(),
                datacenter: config.datacenter.clone(),
                region: config.region.clone(),
                meta: config.meta.clone(),
                cgroup_parent,
            },
            stopping: AtomicBool::new(false),
            authz: authz::ClientAuthz::new(
                link.clone(),
                node_id,
                config.acl_token_ttl,
                config.acl_policy_ttl,
            ),
            link,
            allocs: RwLock::new(BTreeMap::new()),
            pulled_index: Mutex::new(0),
            task_api: OnceLock::new(),
            puller: Mutex::new(PullerSlot::default()),
            registration: Mutex::new(None),
            unsynced: Mutex::new(BTreeMap::new()),
            stop_tx,
            stop_rx,
            push: PushWake::default(),
        })
    }

    /// Register this node with the server (at start, before `start`): its record as the
    /// client fingerprinted it, for the server's node table.
    pub fn register(&self, reg: &NodeRegistration) -> Result<HeartbeatReply, LinkError> {
        if reg.node_id != self.node.id {
            return Err(LinkError::UnknownNode(reg.node_id.clone()));
        }
        let reply = self.link.register_node(reg)?;
        *self.registration.lock() = Some(reg.clone());
        Ok(reply)
    }

    /// The server no longer knows this node (purged): register it again, with the same ID,
    /// as at start. `false` when there is nothing to register with or it failed.
    fn register_again(&self) -> bool {
        let Some(reg) = self.registration.lock().clone() else {
            return false;
        };
        match self.link.register_node(&reg) {
            Ok(_) => {
                log::info!("the server did not know this node any more: registered it again");
                true
            }
            Err(e) => {
                log::warn!("cannot register this node again: {e}");
                false
            }
        }
    }

    /// Pull this node's allocations (restoring their runners; the node registered first),
    /// then keep pulling on the `client-allocs` thread.
    pub fn start(self: &Arc<Self>, task_api: TaskApi) {
        let _ = self.task_api.set(task_api);
        if let Err(e) = self.pull(Duration::ZERO) {
            log::error!("cannot pull this node's allocations: {e}");
        }
        self.sync();
        let mut slot = self.puller.lock();
        if slot.running {
            // On demand, a publish during the first sync (its own alloc updates) started it.
            return;
        }
        if let Err(e) = self.spawn_puller(&mut slot) {
            log::error!("cannot start the alloc puller: {e}");
        }
    }

    /// The server runs in this process: the `client-allocs` thread runs only while this
    /// node's allocs change. `changed` tells whether the published state holds a change
    /// after an index; the agent calls [`Client::state_changed`] after every publish. Call
    /// before [`Client::start`].
    pub fn pull_on_demand(&self, changed: ChangedSince) {
        self.puller.lock().changed = Some(changed);
    }

    /// The server published a change (on-demand puller): start the puller if it does not
    /// run and this node's allocs changed after its last pull.
    pub fn state_changed(self: &Arc<Self>) {
        let mut slot = self.puller.lock();
        if slot.running || self.stopping.load(Ordering::SeqCst) || self.task_api.get().is_none() {
            // Running, it sees the change (its pull parks on the server); before `start`,
            // the first pull does.
            return;
        }
        let since = *self.pulled_index.lock();
        if !slot.changed.as_ref().is_some_and(|c| c(since)) {
            return;
        }
        if let Err(e) = self.spawn_puller(&mut slot) {
            log::error!("cannot start the alloc puller: {e}");
        }
    }

    fn spawn_puller(self: &Arc<Self>, slot: &mut PullerSlot) -> std::io::Result<()> {
        if let Some(old) = slot.handle.take() {
            // It said it ends (under this lock) and holds nothing: joined at once.
            let _ = old.join();
        }
        let me = self.clone();
        let h = std::thread::Builder::new()
            .name("client-allocs".into())
            .spawn(move || me.pull_loop())?;
        slot.handle = Some(h);
        slot.running = true;
        Ok(())
    }

    /// On demand, after a pull that brought nothing: the thread ends unless the state
    /// changed for this node since (decided under the lock, see [`Client::state_changed`]).
    fn puller_try_end(&self) -> bool {
        let mut slot = self.puller.lock();
        let Some(changed) = slot.changed.as_ref() else {
            return false;
        };
        if changed(*self.pulled_index.lock()) && !self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        slot.running = false;
        true
    }

    /// Pull without parking on the server from now on: the server pushes "your allocs
    /// changed" (see [`Client::allocs_changed`]); a safety pull runs every [`SAFETY_PULL`].
    pub fn enable_push(&self) {
        self.push.enabled.store(true, Ordering::SeqCst);
        self.allocs_changed(0);
    }

    /// The server says this node's allocs changed as of `index` (0: unknown): the puller
    /// pulls now unless it already has that index.
    pub fn allocs_changed(&self, index: u64) {
        if index != 0 && index <= *self.pulled_index.lock() {
            return;
        }
        *self.push.pending.lock() = true;
        self.push.cv.notify_all();
    }

    /// Push mode: wait for a push, shutdown, or the safety pull's time.
    fn wait_for_push(&self) {
        let deadline = std::time::Instant::now() + SAFETY_PULL;
        let mut pending = self.push.pending.lock();
        while !*pending && !self.stopping.load(Ordering::SeqCst) {
            if self.push.cv.wait_until(&mut pending, deadline).timed_out() {
                break;
            }
        }
        *pending = false;
    }

    /// The `client-allocs` thread: pull (blocking, or at once when the server pushes),
    /// bring the runners in line, again.
    fn pull_loop(self: Arc<Self>) {
        let on_demand = self.puller.lock().changed.is_some();
        while !self.stopping.load(Ordering::SeqCst) {
            let push = self.push.enabled.load(Ordering::SeqCst);
            let wait = if push {
                Duration::ZERO
            } else if on_demand {
                PULLER_IDLE_EXIT
            } else {
                link::MAX_PULL_WAIT
            };
            match self.pull(wait) {
                Ok(changed) => {
                    self.resend_unsynced();
                    self.sync();
                    if push {
                        self.wait_for_push();
                    } else if on_demand && !changed && self.puller_try_end() {
                        log::debug!("alloc puller: idle, the thread ends");
                        return;
                    }
                }
                Err(LinkError::Closed) => return,
                Err(LinkError::UnknownNode(_)) if self.register_again() => {}
                Err(e) => {
                    log::warn!("pulling this node's allocations failed: {e}");
                    // Wait before the next try; shutdown ends the wait.
                    if self.stop_rx.recv_timeout(PULL_RETRY).is_ok() {
                        return;
                    }
                }
            }
        }
    }

    /// One pull: take in what changed after the last pull. Returns whether something did.
    fn pull(&self, wait: Duration) -> Result<bool, LinkError> {
        let min_index = *self.pulled_index.lock();
        let reply = self.link.pull_allocs(&PullAllocs {
            node_id: self.node.id.clone(),
            min_index,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        })?;
        let changed = !reply.changed.is_empty();
        let present: HashSet<&String> = reply.alloc_ids.iter().collect();
        let mut reconnect = Vec::new();
        let mut reaped = Vec::new();
        {
            let mut allocs = self.allocs.write();
            allocs.retain(|id, a| {
                let keep = present.contains(id);
                if !keep && a.terminal() && !a.collected {
                    reaped.push(id.clone());
                }
                keep
            });
            for mut a in reply.changed {
                // The server marked it `unknown` while this node was away: the node tells it
                // what its tasks really did (sent with the next push, ref §3.5).
                let local = allocs.get(a.id.as_str()).cloned();
                if let Some(local) = local.filter(|l| {
                    a.client_status == AllocClientStatus::Unknown
                        && l.client_status != AllocClientStatus::Unknown
                }) {
                    reconnect.push(AllocUpdate {
                        alloc_id: a.id.to_string(),
                        tasks: local.task_states.clone(),
                        client_status: Some((
                            local.client_status,
                            local.client_description.to_string(),
                        )),
                        collected: local.collected,
                    });
                    a.task_states = local.task_states.clone();
                    a.client_status = local.client_status;
                    a.client_description = local.client_description.clone();
                }
                remember(&mut allocs, a);
            }
        }
        if !reconnect.is_empty() {
            let mut pending = self.unsynced.lock();
            for up in reconnect {
                merge_update(&mut pending, up, true);
            }
        }
        // The servers collected these finished allocs (`state::gc`): their dirs go too, as a
        // Nomad client destroys an alloc the servers garbage-collected. A runner still
        // finishing keeps its dir until the next client GC.
        for id in reaped {
            let busy = self
                .runners
                .lock()
                .get(&id)
                .is_some_and(|t| !t.iter().all(TaskHandle::finished));
            if busy {
                continue;
            }
            if let Err(e) = AllocDir::new(&self.data_dir, &id).destroy() {
                log::warn!("alloc {id} was collected by the servers; its dir stays: {e}");
            }
        }
        let mut pulled = self.pulled_index.lock();
        *pulled = (*pulled).max(reply.index);
        Ok(changed)
    }

    /// Stop the puller and every task runner and join them, the agent having caught
    /// `signal`. Running tasks are left running for the next agent (their shims keep them
    /// and their logs), except when nothing could re-attach (`-dev`'s temporary data dir) or
    /// the agent leaves with `drain_on_shutdown`: then they are killed (KillSignal, then
    /// SIGKILL after KillTimeout) and start again on the next run.
    pub fn shutdown(&self, signal: i32) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_tx.try_send(());
        {
            let _pending = self.push.pending.lock();
            self.push.cv.notify_all();
        }
        let puller = self.puller.lock().handle.take();
        if let Some(h) = puller {
            let _ = h.join();
        }
        let stop = self.on_stop.tasks_stop(signal);
        let drain_deadline = match &stop {
            TasksOnStop::Drain(d) => crate::client::restarts::later(d.deadline),
            _ => std::time::Instant::now(),
        };
        let runners: Vec<(String, Vec<TaskHandle>)> = self.runners.lock().drain().collect();
        for (alloc_id, tasks) in &runners {
            let cmd = match &stop {
                TasksOnStop::Detach => TaskCmd::Detach,
                TasksOnStop::Kill => TaskCmd::Shutdown(None),
                TasksOnStop::Drain(d) => {
                    let system = self
                        .alloc(alloc_id)
                        .is_some_and(|a| a.job.job_type() == JobType::System);
                    if d.ignore_system_jobs && system {
                        TaskCmd::Detach
                    } else {
                        TaskCmd::Shutdown(Some(drain_deadline))
                    }
                }
            };
            for t in tasks {
                let _ = t.cmds.send(cmd.clone());
            }
        }
        for (_, tasks) in runners {
            for mut t in tasks {
                if let Some(j) = t.join.take() {
                    let _ = j.join();
                }
            }
        }
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// What a task's environment says about this node.
    pub fn node_facts(&self) -> NodeFacts {
        self.node.clone()
    }

    /// The agent's data dir (alloc dirs live under `alloc/`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the raw_exec driver is enabled.
    pub fn raw_exec_enabled(&self) -> bool {
        self.raw_exec_enabled
    }

    /// How this client resolves its callers when it keeps no ACL state (client-only).
    pub fn authz(&self) -> &authz::ClientAuthz {
        &self.authz
    }

    /// Ask the server to sign a task's workload identities (the client holds no key).
    pub fn sign_identities(
        &self,
        req: &link::SignIdentities,
    ) -> Result<link::SignedIdentities, LinkError> {
        self.link.sign_identities(req)
    }

    /// The Task API host, once the client started.
    pub fn task_api(&self) -> Option<&TaskApi> {
        self.task_api.get()
    }

    /// One allocation of this node, as last pulled or pushed.
    pub fn alloc(&self, id: &str) -> Option<AllocRecord> {
        self.allocs.read().get(id).map(|a| (**a).clone())
    }

    /// This node's allocations, oldest first.
    fn allocs_oldest_first(&self) -> Vec<Arc<AllocRecord>> {
        let mut v: Vec<Arc<AllocRecord>> = self.allocs.read().values().cloned().collect();
        v.sort_by_key(|a| (a.create_index, a.create_time));
        v
    }

    /// Change the client side of an allocation (task states, status, collection) and push
    /// it to the server: answered once it is durable there. `Ok(None)` when the alloc is
    /// unknown. `f` runs on this client's copy; what it changed becomes the update.
    pub fn update_alloc(
        &self,
        alloc_id: &str,
        f: impl FnOnce(&mut AllocRecord),
    ) -> Result<Option<AllocRecord>, Error> {
        let Some(old) = self.allocs.read().get(alloc_id).cloned() else {
            return Ok(None);
        };
        let mut a = (*old).clone();
        f(&mut a);
        let status_changed =
            a.client_status != old.client_status || a.client_description != old.client_description;
        let update = AllocUpdate {
            alloc_id: alloc_id.to_string(),
            tasks: a
                .task_states
                .into_iter()
                .filter(|(name, ts)| old.task_states.get(name) != Some(ts))
                .collect(),
            client_status: status_changed
                .then_some((a.client_status, a.client_description.to_string())),
            collected: a.collected && !old.collected,
        };
        // This client's view shows what its tasks did at once (the server has it once the
        // push is answered): the fs API never lags behind what the server shows.
        if let Some(cur) = self.allocs.write().get_mut(alloc_id) {
            let mut mine = (**cur).clone();
            mine.task_states.extend(update.tasks.clone());
            if let Some((status, description)) = &update.client_status {
                mine.client_status = *status;
                mine.client_description = description.as_str().into();
            }
            mine.collected |= update.collected;
            mine.refresh_client_status();
            *cur = Arc::new(mine);
        }
        let updates = {
            let mut pending = self.unsynced.lock();
            merge_update(&mut pending, update, true);
            std::mem::take(&mut *pending).into_values().collect()
        };
        let reply = self.push_updates(updates)?;
        let mut out = None;
        let mut allocs = self.allocs.write();
        for a in reply.allocs {
            if a.id == alloc_id {
                out = Some(a.clone());
            }
            remember(&mut allocs, a);
        }
        Ok(out)
    }

    /// Push `updates` in one call; on failure they wait in `unsynced` (under any newer ones).
    fn push_updates(&self, updates: Vec<AllocUpdate>) -> Result<link::UpdatedAllocs, LinkError> {
        let req = AllocUpdates {
            node_id: self.node.id.clone(),
            updates,
        };
        self.link.push_alloc_updates(&req).inspect_err(|_| {
            let mut pending = self.unsynced.lock();
            for up in req.updates {
                merge_update(&mut pending, up, false);
            }
        })
    }

    /// Send the updates a failed push left behind (after a pull: the server answers again).
    fn resend_unsynced(&self) {
        let updates: Vec<AllocUpdate> = std::mem::take(&mut *self.unsynced.lock())
            .into_values()
            .collect();
        if updates.is_empty() {
            return;
        }
        match self.push_updates(updates) {
            Ok(reply) => {
                let mut allocs = self.allocs.write();
                for a in reply.allocs {
                    remember(&mut allocs, a);
                }
            }
            Err(e) => log::warn!("alloc updates still not taken by the server: {e}"),
        }
    }

    /// Change one task's state of an allocation and push it.
    pub fn update_task(
        &self,
        alloc_id: &str,
        task: &str,
        f: impl FnOnce(&mut TaskState),
    ) -> Result<Option<AllocRecord>, Error> {
        self.update_alloc(alloc_id, |a| {
            let ts = a
                .task_states
                .entry(task.to_string())
                .or_insert_with(TaskState::pending);
            f(ts);
        })
    }

    /// Bring runners in line with the allocations: start runners for allocs that should
    /// run, stop those whose alloc was stopped or is gone, reap finished ones.
    pub fn sync(self: &Arc<Self>) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let allocs = self.allocs_oldest_first();
        let known: HashSet<&str> = allocs.iter().map(|a| a.id.as_str()).collect();
        let mut reaped = Vec::new();
        let mut never_started = Vec::new();
        {
            let mut runners = self.runners.lock();
            runners.retain(|_, tasks| {
                if tasks.iter().all(TaskHandle::finished) {
                    reaped.append(tasks);
                    false
                } else {
                    true
                }
            });
            for (id, tasks) in runners.iter() {
                if !known.contains(id.as_str()) {
                    for t in tasks {
                        let _ = t.cmds.send(TaskCmd::Stop);
                    }
                }
            }
            for a in &allocs {
                let has_runner = runners.contains_key(a.id.as_str());
                if a.is_live() && !has_runner {
                    let restored = !a.task_states.is_empty();
                    match self.spawn_runner(a, restored) {
                        Ok(tasks) => {
                            runners.insert(a.id.to_string(), tasks);
                        }
                        Err(e) => log::error!("cannot start runner for alloc {}: {e}", a.id),
                    }
                } else if a.desired_status != AllocDesiredStatus::Run {
                    if let Some(tasks) = runners.get(a.id.as_str()) {
                        for t in tasks {
                            let _ = t.cmds.send(TaskCmd::Stop);
                        }
                    } else if !a.terminal() {
                        never_started.push(a.id.clone());
                    }
                }
            }
        }
        for mut t in reaped {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
        for id in never_started {
            // A task a previous agent left running (stopped while no agent watched) goes
            // before it is recorded dead.
            if let Some(a) = self.alloc(&id) {
                for t in a
                    .job
                    .group(&a.task_group)
                    .map(|g| g.tasks.as_slice())
                    .unwrap_or(&[])
                {
                    task_runner::kill_orphan(self, &id, &t.name);
                }
            }
            let res = self.update_alloc(&id, |a| {
                let names: Vec<String> = a
                    .job
                    .group(&a.task_group)
                    .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
                    .unwrap_or_default();
                for n in names {
                    let ts = a.task_states.entry(n).or_default();
                    if ts.state != TaskStatus::Dead {
                        ts.state = TaskStatus::Dead;
                        ts.push_event(TaskEvent::new("Killed", "Task successfully killed"));
                    }
                }
                if a.task_states.is_empty() {
                    a.client_status = AllocClientStatus::Complete;
                }
            });
            if let Err(e) = res {
                log::error!("alloc {id}: cannot record its tasks as killed: {e}");
            }
        }
        self.auto_gc();
    }

    fn spawn_runner(
        self: &Arc<Self>,
        a: &AllocRecord,
        restored: bool,
    ) -> std::io::Result<Vec<TaskHandle>> {
        let Some(tg) = a.job.group(&a.task_group) else {
            return Ok(Vec::new());
        };
        let mut handles = Vec::new();
        for task in &tg.tasks {
            let (tx, rx) = unbounded();
            let exec_slot = exec::ExecSlot::default();
            let runner = TaskRunner {
                exec: exec_slot.clone(),
                client: self.clone(),
                alloc_id: a.id.to_string(),
                task_name: task.name.clone(),
                restored,
                cmds: rx,
            };
            let short: String = a.id.chars().take(8).collect();
            let client = self.clone();
            let join = std::thread::Builder::new()
                .name(format!("task-{short}-{}", task.name))
                .spawn(move || {
                    let alloc_id = runner.alloc_id.clone();
                    let task = runner.task_name.clone();
                    runner.run();
                    let failed = client
                        .alloc(&alloc_id)
                        .and_then(|a| a.task_states.get(&task).map(|t| t.failed))
                        .unwrap_or(false);
                    if failed {
                        let _ = client.command(&alloc_id, None, TaskCmd::SiblingFailed(task));
                    }
                    client.auto_gc();
                })?;
            handles.push(TaskHandle {
                name: task.name.clone(),
                exec: exec_slot,
                cmds: tx,
                join: Some(join),
            });
        }
        Ok(handles)
    }

    /// Send a lifecycle command to one task (`None`: every running task).
    pub fn command(&self, alloc_id: &str, task: Option<&str>, cmd: TaskCmd) -> Result<(), Error> {
        let runners = self.runners.lock();
        let Some(tasks) = runners.get(alloc_id) else {
            return Err(Error::NotRunning);
        };
        let mut sent = false;
        for t in tasks {
            if task.map(|n| n == t.name).unwrap_or(true) && !t.finished() {
                sent |= t.cmds.send(cmd.clone()).is_ok();
            }
        }
        if let Some(n) = task {
            if !tasks.iter().any(|t| t.name == n) {
                return Err(Error::UnknownTask(n.to_string()));
            }
        }
        if sent {
            Ok(())
        } else {
            Err(Error::NotRunning)
        }
    }

    /// Where an `alloc exec` in a running task runs.
    pub fn exec_target(
        &self,
        alloc_id: &str,
        task: &str,
    ) -> Result<exec::ExecTarget, exec::ExecError> {
        let runners = self.runners.lock();
        let t = runners
            .get(alloc_id)
            .and_then(|tasks| tasks.iter().find(|t| t.name == task))
            .ok_or_else(|| exec::ExecError::UnknownTask(task.to_string()))?;
        let target = t.exec.lock().clone();
        target.ok_or_else(|| exec::ExecError::NotRunning(task.to_string()))
    }

    /// Collect one terminal allocation: remove its alloc dir; the alloc stays listed.
    pub fn gc_alloc(&self, alloc_id: &str) -> Result<(), Error> {
        let Some(a) = self.alloc(alloc_id) else {
            return Err(Error::UnknownAlloc);
        };
        if !a.terminal() {
            return Err(Error::NotEligible);
        }
        // Every task of a terminal alloc is dead; its threads are done or about to be.
        let finished = {
            let mut runners = self.runners.lock();
            let done = runners
                .get(alloc_id)
                .map(|t| t.iter().all(TaskHandle::finished))
                .unwrap_or(false);
            if done {
                runners.remove(alloc_id)
            } else {
                None
            }
        };
        for mut t in finished.into_iter().flatten() {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
        // Persist, then act: the alloc is durably collected before its dir goes (a retry
        // destroys what a failed destroy left).
        if !a.collected {
            self.update_alloc(alloc_id, |a| a.collected = true)?;
        }
        AllocDir::new(&self.data_dir, alloc_id)
            .destroy()
            .map_err(Error::Io)?;
        Ok(())
    }

    /// Collect every terminal allocation.
    pub fn gc_all(&self) {
        for a in self.allocs_oldest_first() {
            if a.terminal() && !a.collected {
                let _ = self.gc_alloc(&a.id);
            }
        }
    }

    /// Keep at most `gc_max_allocs` terminal, uncollected allocations. Runners ending together
    /// all ask at once: one pass runs at a time (each choosing from a fresh view), and a request
    /// made while a pass runs makes it run once more, so nothing is collected twice over and no
    /// request is lost. No caller waits for another's pass.
    pub fn auto_gc(&self) {
        self.gc_wanted.store(true, Ordering::SeqCst);
        while let Some(pass) = self.gc_pass.try_lock() {
            while self.gc_wanted.swap(false, Ordering::SeqCst) {
                self.auto_gc_pass();
            }
            drop(pass);
            // A request that came after the last swap but before the unlock is ours to run.
            if !self.gc_wanted.load(Ordering::SeqCst) {
                break;
            }
        }
    }

    fn auto_gc_pass(&self) {
        let mut terminal: Vec<Arc<AllocRecord>> = self
            .allocs_oldest_first()
            .into_iter()
            .filter(|a| a.terminal() && !a.collected)
            .collect();
        if terminal.len() <= self.gc_max_allocs {
            return;
        }
        terminal.sort_by_key(|a| a.modify_time);
        let extra = terminal.len() - self.gc_max_allocs;
        for a in terminal.into_iter().take(extra) {
            if let Err(e) = self.gc_alloc(&a.id) {
                log::debug!("auto gc of alloc {} skipped: {e}", a.id);
            }
        }
    }

    /// The filesystem view of an allocation known to this client.
    pub fn alloc_fs_view(&self, alloc_id: &str) -> Option<AllocFsView> {
        let a = self.alloc(alloc_id)?;
        let names: Vec<String> = a
            .job
            .group(&a.task_group)
            .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default();
        let tasks = names
            .into_iter()
            .map(|n| {
                let ts = a.task_states.get(&n);
                TaskFsView {
                    started: ts.map(|t| t.started_at.is_some()).unwrap_or(false),
                    dead: ts.is_some_and(|t| t.state == TaskStatus::Dead) || a.terminal(),
                    name: n,
                }
            })
            .collect();
        Some(AllocFsView {
            dir: AllocDir::new(&self.data_dir, &a.id).root,
            namespace: a.namespace.to_string(),
            collected: a.collected,
            tasks,
        })
    }
}

/// Keep the newer of the cached and the answered record of an allocation (answers to
/// concurrent pushes and pulls can arrive out of order). A record of the same index is not
/// newer: the cached one may already show this client's own change being pushed.
/// Merge `up` into the pending update of its alloc: `newer` wins over what is pending (a
/// later change), else it only fills in what is not pending (an older batch put back).
fn merge_update(pending: &mut BTreeMap<String, AllocUpdate>, up: AllocUpdate, newer: bool) {
    let Some(cur) = pending.get_mut(&up.alloc_id) else {
        pending.insert(up.alloc_id.clone(), up);
        return;
    };
    for (name, ts) in up.tasks {
        if newer || !cur.tasks.contains_key(&name) {
            cur.tasks.insert(name, ts);
        }
    }
    if up.client_status.is_some() && (newer || cur.client_status.is_none()) {
        cur.client_status = up.client_status;
    }
    cur.collected |= up.collected;
}

fn remember(allocs: &mut BTreeMap<String, Arc<AllocRecord>>, a: AllocRecord) {
    let newer = allocs
        .get(a.id.as_str())
        .map(|old| a.modify_index > old.modify_index)
        .unwrap_or(true);
    if newer {
        allocs.insert(a.id.to_string(), Arc::new(a));
    }
}

#[cfg(test)]
mod tests {
    use super::link::{
        Heartbeat, HeartbeatReply, MetaReply, NodeMeta, PulledAllocs, UpdatedAllocs,
    };
    use super::*;
    use crate::state::jobs::spec::Job;
    use crate::state::jobs::NodeInfo;

    #[test]
    fn updates_put_back_after_a_failed_push_never_hide_newer_ones() {
        let ts = |state| {
            let mut t = TaskState::pending();
            t.state = state;
            t
        };
        let up = |state, status: Option<AllocClientStatus>| AllocUpdate {
            alloc_id: "a".into(),
            tasks: [("t".to_string(), ts(state))].into_iter().collect(),
            client_status: status.map(|s| (s, String::new())),
            collected: false,
        };
        let mut pending = BTreeMap::new();
        merge_update(
            &mut pending,
            up(TaskStatus::Dead, Some(AllocClientStatus::Complete)),
            true,
        );
        // An older batch put back fills in nothing the newer one set.
        merge_update(
            &mut pending,
            up(TaskStatus::Running, Some(AllocClientStatus::Running)),
            false,
        );
        assert_eq!(pending["a"].tasks["t"].state, TaskStatus::Dead);
        assert_eq!(
            pending["a"].client_status.as_ref().map(|c| c.0),
            Some(AllocClientStatus::Complete)
        );
        // A newer change wins.
        merge_update(&mut pending, up(TaskStatus::Running, None), true);
        assert_eq!(pending["a"].tasks["t"].state, TaskStatus::Running);
        assert_eq!(
            pending["a"].client_status.as_ref().map(|c| c.0),
            Some(AllocClientStatus::Complete)
        );
    }

    /// A server that answers from a list and records what the client pushed.
    #[derive(Default)]
    struct FakeServer {
        allocs: Mutex<Vec<AllocRecord>>,
        pushed: Mutex<Vec<AllocUpdate>>,
    }

    impl ServerLink for FakeServer {
        fn register_node(&self, _: &NodeRegistration) -> Result<HeartbeatReply, LinkError> {
            Ok(HeartbeatReply {
                ttl_ms: 1,
                index: 0,
                servers: Vec::new(),
            })
        }
        fn heartbeat(&self, _: &Heartbeat) -> Result<HeartbeatReply, LinkError> {
            Err(LinkError::Closed)
        }
        fn pull_allocs(&self, req: &PullAllocs) -> Result<PulledAllocs, LinkError> {
            let allocs = self.allocs.lock();
            Ok(PulledAllocs {
                index: allocs.iter().map(|a| a.modify_index).max().unwrap_or(0),
                alloc_ids: allocs.iter().map(|a| a.id.to_string()).collect(),
                changed: allocs
                    .iter()
                    .filter(|a| a.modify_index > req.min_index)
                    .cloned()
                    .collect(),
            })
        }
        fn push_alloc_updates(&self, req: &AllocUpdates) -> Result<UpdatedAllocs, LinkError> {
            let mut allocs = self.allocs.lock();
            let mut out = Vec::new();
            for up in &req.updates {
                self.pushed.lock().push(up.clone());
                if let Some(a) = allocs.iter_mut().find(|a| a.id == up.alloc_id) {
                    a.task_states.extend(up.tasks.clone());
                    a.modify_index += 1;
                    out.push(a.clone());
                }
            }
            Ok(UpdatedAllocs { allocs: out })
        }
        fn push_meta(&self, _: &NodeMeta) -> Result<MetaReply, LinkError> {
            Ok(MetaReply { index: 0 })
        }
    }

    fn alloc(id: &str, index: u64) -> AllocRecord {
        let mut job = Job::from_json(serde_json::json!({"ID": "j", "TaskGroups": [{"Name": "g",
            "Count": 1, "Tasks": [{"Name": "a", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}, {"Name": "b", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        job.canonicalize("global");
        let node = NodeInfo {
            id: "n1".into(),
            name: "n".into(),
            unplaceable: None,
        };
        let mut a = AllocRecord::new_at(
            &std::sync::Arc::new(job),
            "g",
            0,
            "e",
            &node,
            crate::state::jobs::alloc::AllocStamp { index, id, now: 1 },
        );
        a.modify_index = index;
        a
    }

    fn client(server: Arc<FakeServer>) -> Arc<Client> {
        let config = Config::from_flags(&crate::config::AgentFlags {
            dev: true,
            ..Default::default()
        })
        .unwrap();
        Client::new(&config, "n1", server)
    }

    fn on_stop(temp: bool, drain: bool, int: bool, term: bool) -> OnStop {
        OnStop {
            temp_data_dir: temp,
            drain: drain.then(|| DrainOnShutdown {
                deadline: std::time::Duration::from_secs(60),
                force: false,
                ignore_system_jobs: false,
            }),
            leave_on_interrupt: int,
            leave_on_terminate: term,
        }
    }

    #[test]
    fn tasks_stay_unless_nothing_could_reattach_or_the_agent_leaves_with_a_drain() {
        let is = |o: OnStop, sig: i32| format!("{:?}", o.tasks_stop(sig));
        assert_eq!(
            is(on_stop(false, false, true, true), libc::SIGTERM),
            "Detach"
        );
        assert_eq!(
            is(on_stop(true, false, false, false), libc::SIGTERM),
            "Kill"
        );
        assert!(is(on_stop(false, true, false, true), libc::SIGTERM).starts_with("Drain"));
        assert_eq!(
            is(on_stop(false, true, false, true), libc::SIGINT),
            "Detach"
        );
        assert!(is(on_stop(false, true, true, false), libc::SIGINT).starts_with("Drain"));
        // leave_on_* without drain_on_shutdown: nothing to drain.
        assert_eq!(
            is(on_stop(false, false, true, true), libc::SIGINT),
            "Detach"
        );
    }

    #[test]
    fn a_task_update_pushes_only_that_task_and_the_view_follows_the_answer() {
        let server = Arc::new(FakeServer::default());
        server.allocs.lock().push(alloc("a1", 5));
        let c = client(server.clone());
        c.pull(Duration::ZERO).unwrap();
        assert!(c.alloc("a1").is_some(), "pulled");
        c.update_task("a1", "a", |ts| ts.state = TaskStatus::Running)
            .unwrap()
            .unwrap();
        let pushed = server.pushed.lock().clone();
        assert_eq!(pushed.len(), 1);
        assert_eq!(
            pushed[0].tasks.keys().collect::<Vec<_>>(),
            ["a"],
            "only the changed task"
        );
        assert!(pushed[0].client_status.is_none() && !pushed[0].collected);
        let view = c.alloc("a1").unwrap();
        assert_eq!(view.task_states["a"].state, TaskStatus::Running);
        assert_eq!(view.modify_index, 6, "the server's answer");
        // An older record from a pull does not undo it.
        server.allocs.lock()[0].modify_index = 4;
        *c.pulled_index.lock() = 0;
        c.pull(Duration::ZERO).unwrap();
        assert_eq!(c.alloc("a1").unwrap().modify_index, 6);
        // An alloc the server no longer has leaves the view; unknown allocs are no error.
        server.allocs.lock().clear();
        c.pull(Duration::ZERO).unwrap();
        assert!(c.alloc("a1").is_none());
        assert!(c.update_task("a1", "a", |_| {}).unwrap().is_none());
        assert!(matches!(c.gc_alloc("a1"), Err(Error::UnknownAlloc)));
    }

    #[test]
    fn an_alloc_the_server_marked_unknown_gets_the_nodes_real_state_back() {
        let server = Arc::new(FakeServer::default());
        let mut running = alloc("a1", 5);
        let mut ts = TaskState::pending();
        ts.state = TaskStatus::Running;
        running.task_states.insert("a".into(), ts);
        running.client_status = AllocClientStatus::Running;
        server.allocs.lock().push(running);
        let c = client(server.clone());
        c.pull(Duration::ZERO).unwrap();
        // The node was away: the server marked the alloc unknown.
        {
            let mut allocs = server.allocs.lock();
            allocs[0].client_status = AllocClientStatus::Unknown;
            allocs[0].modify_index = 9;
        }
        c.pull(Duration::ZERO).unwrap();
        let view = c.alloc("a1").unwrap();
        assert_eq!(
            view.client_status,
            AllocClientStatus::Running,
            "the view keeps the truth"
        );
        assert_eq!(view.modify_index, 9);
        c.resend_unsynced();
        let pushed = server.pushed.lock().clone();
        assert_eq!(pushed.len(), 1, "{pushed:?}");
        assert_eq!(
            pushed[0].client_status.as_ref().map(|s| s.0),
            Some(AllocClientStatus::Running)
        );
        assert!(pushed[0].tasks.contains_key("a"));
        // Nothing left to send.
        c.resend_unsynced();
        assert_eq!(server.pushed.lock().len(), 1);
    }
}
