//! The server's heartbeat timers (Nomad's `nomad/heartbeat.go`): each register or heartbeat
//! of a node re-arms its deadline and answers a TTL (ref §2.3: at least `min_heartbeat_ttl`,
//! scaled so all nodes together heartbeat about `max_heartbeats_per_second`, plus up to as
//! much again of jitter). ONE `heartbeat` thread holds every deadline (TTL + `heartbeat_grace`)
//! in a map ordered by time — no thread per node — and when a deadline passes it proposes
//! `NodeUpdateStatus`: `disconnected` when a non-terminal alloc of the node belongs to a group
//! with `disconnect { lost_after }` (or `max_client_disconnect`) whose window is still open,
//! else `down`, with Nomad's "Node heartbeat missed" event (ref §2.5). The consequences for the
//! node's allocs are the apply's (c-sched).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::config::Config;
use crate::state::command::Command;
use crate::state::jobs::spec::TaskGroup;
use crate::state::jobs::Workloads;
use crate::state::node_table::NodeEvent;
use crate::state::status::NodeStatus;
use crate::state::IndexCounter;

/// Longest the timer thread sleeps with no deadline due (it also wakes on every change that
/// brings the next deadline closer, and on stop).
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// Below this rate the rate-based TTL is not used (Nomad: 1/86400 per second).
const MIN_RATE: f64 = 1.0 / 86_400.0;

/// The TTL settings of the `server` block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeartbeatSettings {
    pub min_ttl: Duration,
    pub grace: Duration,
    pub max_per_second: f64,
    /// `failover_heartbeat_ttl`: the flat timer (no grace, no jitter) a new leader arms for
    /// every node that is not down (Nomad's `initializeHeartbeatTimers`).
    pub failover_ttl: Duration,
}

impl HeartbeatSettings {
    pub fn of(config: &Config) -> HeartbeatSettings {
        HeartbeatSettings {
            min_ttl: config.min_heartbeat_ttl,
            grace: config.heartbeat_grace,
            max_per_second: config.max_heartbeats_per_second,
            failover_ttl: config.failover_heartbeat_ttl,
        }
    }

    /// The TTL's base for `nodes` armed timers: `max(min_ttl, nodes / rate)` (ref §2.3).
    pub fn base_ttl(&self, nodes: usize) -> Duration {
        if self.max_per_second <= MIN_RATE {
            return self.min_ttl;
        }
        // Bounded: at most usize::MAX / rate seconds, well inside f64 and Duration.
        let rated = (nodes as f64 / self.max_per_second).min(86_400.0 * 365.0);
        self.min_ttl.max(Duration::from_secs_f64(rated))
    }
}

/// The timers: `deadline` per node and the same ordered by time.
#[derive(Default)]
struct Timers {
    by_node: HashMap<String, Instant>,
    by_time: BTreeSet<(Instant, String)>,
    stopping: bool,
    /// A replicated server that is not the leader keeps no timers (ref §6.6).
    follower: bool,
}

impl Timers {
    fn set(&mut self, node: &str, at: Instant) {
        if let Some(old) = self.by_node.insert(node.to_string(), at) {
            self.by_time.remove(&(old, node.to_string()));
        }
        self.by_time.insert((at, node.to_string()));
    }

    fn clear(&mut self, node: &str) {
        if let Some(old) = self.by_node.remove(node) {
            self.by_time.remove(&(old, node.to_string()));
        }
    }

    fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Take every timer due at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            if let Some((_, node)) = self.by_time.pop_first() {
                self.by_node.remove(&node);
                due.push(node);
            }
        }
        due
    }
}

/// The heartbeat timers and the thread that fires them.
pub struct Heartbeats {
    settings: HeartbeatSettings,
    workloads: Arc<Workloads>,
    index: Arc<IndexCounter>,
    timers: Mutex<Timers>,
    wake: Condvar,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Heartbeats {
    pub fn new(
        settings: HeartbeatSettings,
        workloads: Arc<Workloads>,
        index: Arc<IndexCounter>,
    ) -> Arc<Heartbeats> {
        Arc::new(Heartbeats {
            settings,
            workloads,
            index,
            timers: Mutex::new(Timers::default()),
            wake: Condvar::new(),
            handle: Mutex::new(None),
        })
    }

    /// A TTL for a node now: the base for the timers held, plus jitter up to the base.
    pub fn ttl(&self) -> Duration {
        let n = self.timers.lock().by_node.len();
        let base = self.settings.base_ttl(n);
        base + crate::time::jitter(base)
    }

    /// Arm (or re-arm) `node`'s timer at TTL + grace from now; the TTL is the answer.
    pub fn reset(&self, node: &str) -> Duration {
        let ttl = self.ttl();
        self.arm(node, ttl + self.settings.grace);
        ttl
    }

    fn arm(&self, node: &str, after: Duration) {
        let at = Instant::now() + after;
        let mut t = self.timers.lock();
        if t.follower {
            return;
        }
        let sooner = t.next().is_none_or(|next| at < next);
        t.set(node, at);
        drop(t);
        if sooner {
            self.wake.notify_one();
        }
    }

    /// Forget `node`'s timer (purged).
    pub fn clear(&self, node: &str) {
        self.timers.lock().clear(node);
    }

    /// Timers armed now.
    pub fn armed(&self) -> usize {
        self.timers.lock().by_node.len()
    }

    /// Leadership changed (a replicated server): a new leader arms every known node that is
    /// not down with the flat `failover_heartbeat_ttl` (ref §2.3, §6.6: a leader change
    /// must not mark live nodes down while they find the new leader); a follower drops every
    /// timer and arms none.
    pub fn set_leader(&self, leader: bool) {
        {
            let mut t = self.timers.lock();
            t.follower = !leader;
            if !leader {
                t.by_node.clear();
                t.by_time.clear();
            }
        }
        if leader {
            for node in self.workloads.nodes() {
                if node.status != NodeStatus::Down {
                    self.arm(&node.id, self.settings.failover_ttl);
                }
            }
        }
        self.wake.notify_all();
    }

    fn arm_known(&self) {
        for node in self.workloads.nodes() {
            if node.status != NodeStatus::Down {
                let ttl = self.ttl();
                self.arm(&node.id, ttl + self.settings.grace);
            }
        }
    }

    /// Arm every known node that is not down (a server starting: a node that stays silent is
    /// marked down after a full TTL + grace), then start the `heartbeat` thread.
    pub fn start(self: &Arc<Self>) {
        self.arm_known();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || me.run());
        match spawned {
            Ok(h) => *self.handle.lock() = Some(h),
            Err(e) => log::error!("cannot start the heartbeat timer thread: {e}"),
        }
    }

    /// Stop the thread and join it.
    pub fn shutdown(&self) {
        self.timers.lock().stopping = true;
        self.wake.notify_all();
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }

    fn run(&self) {
        loop {
            let due = {
                let mut t = self.timers.lock();
                loop {
                    if t.stopping {
                        return;
                    }
                    let now = Instant::now();
                    let due = t.take_due(now);
                    if !due.is_empty() {
                        break due;
                    }
                    let until = t.next().unwrap_or(now + IDLE_WAIT).min(now + IDLE_WAIT);
                    self.wake.wait_until(&mut t, until);
                }
            };
            // No lock held while proposing (the log write is I/O).
            for node in due {
                self.expired(&node);
            }
        }
    }

    /// `node` missed its deadline: down or disconnected (ref §2.5).
    fn expired(&self, node_id: &str) {
        let Some(node) = self.workloads.node(node_id) else {
            return;
        };
        let now_ns = crate::time::unix_now_nanos();
        let status = match node.status {
            NodeStatus::Down => return,
            NodeStatus::Initializing => NodeStatus::Down,
            NodeStatus::Ready | NodeStatus::Disconnected => {
                let window = self.reconnect_window(node_id);
                let changed = u64::try_from(node.status_updated_at).unwrap_or(0);
                let since =
                    Duration::from_secs(crate::time::unix_now_secs().saturating_sub(changed));
                match window {
                    Some(w) if node.status == NodeStatus::Ready || since < w => {
                        NodeStatus::Disconnected
                    }
                    _ => NodeStatus::Down,
                }
            }
        };
        if status == node.status {
            // Still disconnected within its window: look again after another TTL.
            let ttl = self.ttl();
            self.arm(node_id, ttl + self.settings.grace);
            return;
        }
        let cmd = Command::NodeUpdateStatus {
            node_id: node_id.to_string(),
            status,
            description: String::new(),
            event: Some(NodeEvent {
                message: "Node heartbeat missed".into(),
                subsystem: "Cluster".into(),
                details: None,
                timestamp: now_ns,
                create_index: 0,
            }),
            now: now_ns,
        };
        match self.workloads.propose_node(cmd) {
            Ok(_) => {
                self.index.notify();
                log::warn!("node {node_id} missed its heartbeat: {status}");
            }
            Err(e) => {
                log::error!("cannot mark node {node_id} {status}: {e}");
                // Try again after another TTL rather than never.
                let ttl = self.ttl();
                self.arm(node_id, ttl);
                return;
            }
        }
        if status == NodeStatus::Disconnected {
            let ttl = self.ttl();
            self.arm(node_id, ttl + self.settings.grace);
        }
    }

    /// The longest `lost_after` among the node's non-terminal allocs' groups, if any has one.
    fn reconnect_window(&self, node_id: &str) -> Option<Duration> {
        let state = self.workloads.state();
        state
            .allocs
            .values()
            .filter(|a| a.node_id == node_id && !a.terminal())
            .filter_map(|a| a.job.group(&a.task_group).and_then(group_lost_after))
            .max()
    }
}

/// A group's `disconnect.lost_after` (or the older `max_client_disconnect`), when set above 0.
pub fn group_lost_after(g: &TaskGroup) -> Option<Duration> {
    let value = g
        .disconnect
        .get("LostAfter")
        .filter(|v| !v.is_null())
        .unwrap_or(&g.max_client_disconnect);
    let d = match value {
        serde_json::Value::Number(n) => Duration::from_nanos(n.as_u64()?),
        serde_json::Value::String(s) => crate::config::parse_go_duration(s)?,
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: u64, rate: f64) -> HeartbeatSettings {
        HeartbeatSettings {
            min_ttl: Duration::from_secs(min),
            grace: Duration::from_secs(10),
            max_per_second: rate,
            failover_ttl: Duration::from_secs(300),
        }
    }

    #[test]
    fn the_ttl_follows_nomads_table() {
        let s = settings(10, 50.0);
        assert_eq!(s.base_ttl(0), Duration::from_secs(10));
        assert_eq!(s.base_ttl(500), Duration::from_secs(10));
        assert_eq!(s.base_ttl(1_000), Duration::from_secs(20));
        assert_eq!(s.base_ttl(5_000), Duration::from_secs(100));
        assert_eq!(settings(10, 0.0).base_ttl(5_000), Duration::from_secs(10));
    }

    #[test]
    fn timers_fire_in_order_and_a_reset_moves_one() {
        let mut t = Timers::default();
        let now = Instant::now();
        t.set("a", now + Duration::from_secs(2));
        t.set("b", now + Duration::from_secs(1));
        t.set("a", now + Duration::from_secs(5));
        assert_eq!(t.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(t.take_due(now + Duration::from_secs(3)), ["b"]);
        assert_eq!(t.by_time.len(), 1, "the moved timer left no old entry");
        t.clear("a");
        assert!(t.next().is_none() && t.by_node.is_empty());
    }

    #[test]
    fn a_groups_reconnect_window_comes_from_disconnect_or_the_old_field() {
        let mut g = TaskGroup::default();
        assert_eq!(group_lost_after(&g), None);
        g.max_client_disconnect = serde_json::json!(3_000_000_000u64);
        assert_eq!(group_lost_after(&g), Some(Duration::from_secs(3)));
        g.disconnect = serde_json::json!({"LostAfter": 60_000_000_000u64});
        assert_eq!(group_lost_after(&g), Some(Duration::from_secs(60)));
        g.disconnect = serde_json::json!({"LostAfter": 0});
        assert_eq!(group_lost_after(&g), None);
    }
}
