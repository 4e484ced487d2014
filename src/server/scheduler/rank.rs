//! Choosing a node for one placement (ref §4.7): the job's candidate nodes in a shuffled
//! order walked round-robin across placements, each checked for feasibility (cached per
//! group and node), `distinct_hosts`/`distinct_property` against the allocs planned so far,
//! resources against what the node's live allocs and this plan use, then scored (bin-pack,
//! job anti-affinity, reschedule penalty; the mean of the scores that apply) with Nomad's
//! candidate limit; and the `AllocMetric` of every attempt.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::feasible::{self, Cache, Constraint};
use crate::state::command::ServerState;
use crate::state::jobs::network::{self, AllocPorts, NodeNet, PortError, PortRng, UsedPorts};
use crate::state::jobs::spec::{Job, TaskGroup};
use crate::state::node_table::Node;
use crate::state::plan::{self, Usage};
use crate::state::status::JobType;

/// Nomad keeps the best this many nodes' scores in `ScoreMetaData`.
pub const SCORE_META_TOP: usize = 5;
/// Nodes with a final score ≤ 0 set aside (used only when nothing better appears).
pub const MAX_SKIPPED: usize = 3;
/// Batch jobs stop after this many scored nodes ("power of two choices").
pub const BATCH_LIMIT: usize = 2;
/// The least any service placement looks at.
pub const SERVICE_MIN_LIMIT: usize = 2;

/// Nomad's `AllocMetric` of one placement attempt.
#[derive(Clone, Debug, Default)]
pub struct Metric {
    pub nodes_evaluated: u64,
    pub nodes_filtered: u64,
    pub nodes_in_pool: u64,
    pub node_pool: String,
    pub nodes_available: BTreeMap<String, u64>,
    pub class_filtered: BTreeMap<String, u64>,
    pub constraint_filtered: BTreeMap<String, u64>,
    pub nodes_exhausted: u64,
    pub class_exhausted: BTreeMap<String, u64>,
    pub dimension_exhausted: BTreeMap<String, u64>,
    /// (node, scores by scorer, final score), best first.
    pub scores: Vec<(String, BTreeMap<&'static str, f64>, f64)>,
    pub allocation_time: u64,
    pub coalesced_failures: u64,
}

fn map_or_null(m: &BTreeMap<String, u64>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        json!(m)
    }
}

impl Metric {
    fn filter(&mut self, node: &Node, reason: String) {
        self.nodes_filtered += 1;
        *self.constraint_filtered.entry(reason).or_default() += 1;
        if !node.node_class.is_empty() {
            *self
                .class_filtered
                .entry(node.node_class.clone())
                .or_default() += 1;
        }
    }

    fn exhaust(&mut self, node: &Node, dimension: &str) {
        self.nodes_exhausted += 1;
        *self
            .dimension_exhausted
            .entry(dimension.to_string())
            .or_default() += 1;
        if !node.node_class.is_empty() {
            *self
                .class_exhausted
                .entry(node.node_class.clone())
                .or_default() += 1;
        }
    }

    /// Nomad's JSON (every key present, Go order).
    pub fn to_json(&self) -> Value {
        let meta: Vec<Value> = self
            .scores
            .iter()
            .map(|(n, s, norm)| json!({"NodeID": n, "Scores": s, "NormScore": norm}))
            .collect();
        json!({
            "NodesEvaluated": self.nodes_evaluated,
            "NodesFiltered": self.nodes_filtered,
            "NodesInPool": self.nodes_in_pool,
            "NodePool": self.node_pool,
            "NodesAvailable": self.nodes_available,
            "ClassFiltered": map_or_null(&self.class_filtered),
            "ConstraintFiltered": map_or_null(&self.constraint_filtered),
            "NodesExhausted": self.nodes_exhausted,
            "ClassExhausted": map_or_null(&self.class_exhausted),
            "DimensionExhausted": map_or_null(&self.dimension_exhausted),
            "QuotaExhausted": null,
            "ResourcesExhausted": null,
            "Scores": null,
            "ScoreMetaData": if meta.is_empty() { Value::Null } else { Value::Array(meta) },
            "AllocationTime": self.allocation_time,
            "CoalescedFailures": self.coalesced_failures,
        })
    }
}

/// The outcome of choosing a node for one placement.
#[derive(Debug)]
pub enum Choice {
    /// On this node, with the ports assigned there.
    Placed(String, AllocPorts),
    /// No node could take it.
    Failed(Metric),
}

/// The outcome of placing on one given node (system jobs).
#[derive(Debug)]
pub enum OnNode {
    /// With the ports assigned there.
    Placed(AllocPorts),
    /// Infeasible there (constraints, drivers): skipped silently.
    Filtered(Metric),
    /// Feasible but full.
    Exhausted(Metric),
}

/// Per task group: its ask, constraints and the cached static feasibility per node.
struct GroupCtx {
    ask: Usage,
    constraints: Vec<Constraint>,
    job_constraints: usize,
    /// Node index → `None`: not checked yet; `Some(None)` feasible; `Some(Some(reason))`.
    feasible: Vec<Option<Option<String>>>,
    distinct_hosts: bool,
    distinct_props: Vec<(String, u64)>,
    /// The group (or one of its tasks) asks for ports.
    wants_ports: bool,
}

/// The scores of one node for one placement.
#[derive(Clone, Copy, Debug)]
struct Scores {
    binpack: f64,
    anti_affinity: f64,
    penalty: f64,
    norm: f64,
}

impl Scores {
    fn to_map(self) -> BTreeMap<&'static str, f64> {
        [
            ("binpack", self.binpack),
            ("job-anti-affinity", self.anti_affinity),
            ("node-reschedule-penalty", self.penalty),
        ]
        .into_iter()
        .collect()
    }
}

/// The placer of one scheduling run for one job.
pub struct Placer<'a> {
    state: &'a ServerState,
    job: &'a Job,
    pub nodes: Vec<Arc<Node>>,
    index_of: HashMap<String, usize>,
    cursor: usize,
    base: Metric,
    /// Node index → (capacity, used incl. this plan), filled on first use.
    usage: Vec<Option<(Usage, Usage)>>,
    /// Node index → its host networks and the ports in use incl. this plan, on first use.
    ports: Vec<Option<(NodeNet, UsedPorts)>>,
    /// The ports offered on each node considered for the current placement.
    offers: HashMap<usize, AllocPorts>,
    /// Seeds the dynamic port picks (eval ID and state index, as the shuffle).
    port_seed: u64,
    /// Placements committed so far (varies the port picks between placements).
    placed: u64,
    /// Allocs stopped by this plan (their resources are free).
    stopping: HashSet<String>,
    /// (group index, node index) → this job's live allocs there (existing kept + planned).
    group_on: HashMap<(usize, usize), u32>,
    /// Node index → this job's live allocs there.
    job_on: Vec<u32>,
    /// (group or "" for job scope, property target, value) → allocs using it.
    property_use: HashMap<(String, String, String), u64>,
    job_distinct_hosts: bool,
    job_distinct_props: Vec<(String, u64)>,
    groups: Vec<Option<GroupCtx>>,
    cache: Cache,
}

fn distinct_of(cs: &[Constraint]) -> (bool, Vec<(String, u64)>) {
    let hosts = cs
        .iter()
        .any(|c| c.operand == "distinct_hosts" && !c.r_target.eq_ignore_ascii_case("false"));
    let props = cs
        .iter()
        .filter(|c| c.operand == "distinct_property")
        .map(|c| {
            (
                c.l_target.clone(),
                c.r_target.parse::<u64>().unwrap_or(1).max(1),
            )
        })
        .collect();
    (hosts, props)
}

/// A small seeded generator (splitmix64) for the candidate shuffle.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl PortRng for Rng {
    fn next_u64(&mut self) -> u64 {
        self.next()
    }
}

fn seed_of(text: &str, index: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ index
}

impl<'a> Placer<'a> {
    /// The candidates of `job` in `state` (ready, eligible, not draining, in its
    /// datacenters and pool), shuffled by `seed` (the eval ID and state index).
    pub fn new(
        state: &'a ServerState,
        job: &'a Job,
        seed: &str,
        stopping: HashSet<String>,
    ) -> Placer<'a> {
        let pool = job.node_pool.clone().unwrap_or_else(|| "default".into());
        let mut base = Metric {
            node_pool: pool,
            ..Metric::default()
        };
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for n in state.nodes.values() {
            if plan::node_schedulable(n) && plan::job_targets_node(job, n) {
                *base
                    .nodes_available
                    .entry(n.datacenter.clone())
                    .or_default() += 1;
                nodes.push(n.clone());
            }
        }
        if nodes.is_empty() {
            for dc in job
                .datacenters
                .iter()
                .flatten()
                .filter(|d| !d.contains('*'))
            {
                base.nodes_available.insert(dc.clone(), 0);
            }
        }
        base.nodes_in_pool = nodes.len() as u64;
        let mut rng = Rng(seed_of(seed, state.index));
        for i in (1..nodes.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            nodes.swap(i, j);
        }
        let index_of = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let job_cs = feasible::constraints_of(&job.constraints);
        let (job_distinct_hosts, job_distinct_props) = distinct_of(&job_cs);
        let n = nodes.len();
        let mut p = Placer {
            state,
            job,
            nodes,
            index_of,
            cursor: 0,
            base,
            usage: vec![None; n],
            ports: vec![None; n],
            offers: HashMap::new(),
            port_seed: seed_of(seed, state.index).rotate_left(17),
            placed: 0,
            stopping,
            group_on: HashMap::new(),
            job_on: vec![0; n],
            property_use: HashMap::new(),
            job_distinct_hosts,
            job_distinct_props,
            groups: job.task_groups.iter().map(|_| None).collect(),
            cache: Cache::default(),
        };
        let key = (job.namespace.clone(), job.id.clone());
        let live: Vec<(String, String)> = state
            .allocs_of(&key)
            .filter(|a| a.is_live() && !p.stopping.contains(a.id.as_str()))
            .map(|a| (a.task_group.to_string(), a.node_id.to_string()))
            .collect();
        for (g, node) in live {
            let gi = job.task_groups.iter().position(|t| t.name == g);
            let ni = p.index_of.get(&node).copied();
            p.count_alloc(gi, ni, &node);
        }
        p
    }

    /// Record a live alloc of this job (existing or planned) of group `gi` on a node
    /// (`ni`: its candidate index, when it is a candidate).
    fn count_alloc(&mut self, gi: Option<usize>, ni: Option<usize>, node_id: &str) {
        if let Some(ni) = ni {
            self.job_on[ni] += 1;
            if let Some(gi) = gi {
                *self.group_on.entry((gi, ni)).or_default() += 1;
            }
        }
        let group_props = gi
            .and_then(|gi| self.job.task_groups.get(gi))
            .map(|tg| distinct_of(&feasible::constraints_of(&tg.constraints)).1)
            .unwrap_or_default();
        if self.job_distinct_props.is_empty() && group_props.is_empty() {
            return;
        }
        let Some(node) = self.state.nodes.get(node_id).cloned() else {
            return;
        };
        let group_name = gi
            .and_then(|gi| self.job.task_groups.get(gi))
            .map(|tg| tg.name.clone())
            .unwrap_or_default();
        let props = self
            .job_distinct_props
            .iter()
            .map(|(t, _)| (String::new(), t.clone()))
            .chain(
                group_props
                    .into_iter()
                    .map(|(t, _)| (group_name.clone(), t)),
            );
        for (scope, target) in props.collect::<Vec<_>>() {
            if let Some(v) = feasible::resolve(&target, &node) {
                *self.property_use.entry((scope, target, v)).or_default() += 1;
            }
        }
    }

    /// The index of `tg` in the job and its context (made on first use).
    fn group(&mut self, tg: &TaskGroup) -> usize {
        let job = self.job;
        let gi = job
            .task_groups
            .iter()
            .position(|t| t.name == tg.name)
            .unwrap_or(0);
        if self.groups.get(gi).is_some_and(Option::is_none) {
            let job_cs = feasible::constraints_of(&job.constraints);
            let constraints = feasible::group_constraints(job, tg);
            let (hosts, props) = distinct_of(&feasible::constraints_of(&tg.constraints));
            self.groups[gi] = Some(GroupCtx {
                ask: plan::group_ask(tg),
                job_constraints: job_cs.len(),
                constraints,
                feasible: vec![None; self.nodes.len()],
                distinct_hosts: hosts,
                distinct_props: props,
                wants_ports: network::group_wants_ports(tg),
            });
        }
        gi
    }

    /// How many scored nodes a placement looks at (ref §4.7).
    fn limit(&self) -> usize {
        match self.job.job_type() {
            JobType::Batch | JobType::Sysbatch => BATCH_LIMIT,
            _ => {
                let n = self.nodes.len().max(1) as f64;
                (n.log2().ceil() as usize).max(SERVICE_MIN_LIMIT)
            }
        }
    }

    fn usage_of(&mut self, i: usize) -> (Usage, Usage) {
        if let Some(u) = self.usage[i] {
            return u;
        }
        let node = &self.nodes[i];
        let cap = plan::node_capacity(node);
        // The state's derived usage (kept exact as allocs change; the plan check at apply
        // reads the same), minus what this plan stops there.
        let mut used = self
            .state
            .node_usage
            .get(node.id.as_str())
            .copied()
            .unwrap_or_default();
        if !self.stopping.is_empty() {
            for a in self.state.allocs_on(&node.id) {
                if a.is_live() && self.stopping.contains(a.id.as_str()) {
                    let ask = plan::alloc_ask(a);
                    used.cpu -= ask.cpu;
                    used.memory_mb -= ask.memory_mb;
                    used.disk_mb -= ask.disk_mb;
                }
            }
        }
        self.usage[i] = Some((cap, used));
        (cap, used)
    }

    /// The ports group `gi` would get on node `i` (Nomad's network checks of the bin-packer:
    /// allocs already colliding, then the assignment), or the `DimensionExhausted` reason.
    fn port_offer(&mut self, i: usize, gi: usize) -> Result<AllocPorts, NetworkExhausted> {
        if self.ports[i].is_none() {
            let node = &self.nodes[i];
            let net = NodeNet::of(node);
            let mut used = UsedPorts::of_node(&net);
            for a in self.state.allocs_on(&node.id) {
                if a.is_live() && !self.stopping.contains(a.id.as_str()) {
                    used.add_existing(&a.id, &a.ports);
                }
            }
            self.ports[i] = Some((net, used));
        }
        let Some((net, used)) = self.ports[i].as_ref() else {
            return Err(NetworkExhausted::InvalidNode);
        };
        if used.collision.is_some() {
            return Err(NetworkExhausted::Collision);
        }
        let mut rng = Rng(self.port_seed
            ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ self.placed.wrapping_mul(0xbf58_476d_1ce4_e5b9));
        used.assign(net, &self.job.task_groups[gi], &mut rng)
            .map_err(NetworkExhausted::Ports)
    }

    /// Check node `i` for group `gi`: `None` filtered or exhausted (recorded in `m`), else
    /// its scores.
    fn consider(
        &mut self,
        i: usize,
        gi: usize,
        penalty: &[String],
        m: &mut Metric,
    ) -> Option<Scores> {
        m.nodes_evaluated += 1;
        let mut cache = std::mem::take(&mut self.cache);
        let Some(g) = self.groups.get_mut(gi).and_then(Option::as_mut) else {
            self.cache = cache;
            return None;
        };
        let tg = &self.job.task_groups[gi];
        let node = &self.nodes[i];
        if g.feasible[i].is_none() {
            g.feasible[i] = Some(feasible::static_check(
                &g.constraints,
                g.job_constraints,
                tg,
                node,
                &mut cache,
            ));
        }
        self.cache = cache;
        let (ask, group_hosts, wants_ports) = (g.ask, g.distinct_hosts, g.wants_ports);
        if let Some(Some(reason)) = &g.feasible[i] {
            let reason = reason.clone();
            m.filter(node, reason);
            return None;
        }
        let on_node = self.group_on.get(&(gi, i)).copied().unwrap_or(0);
        if (self.job_distinct_hosts && self.job_on[i] > 0) || (group_hosts && on_node > 0) {
            m.filter(node, "distinct_hosts".into());
            return None;
        }
        if !self.job_distinct_props.is_empty() || !g.distinct_props.is_empty() {
            let scoped: Vec<(String, String, u64)> = self
                .job_distinct_props
                .iter()
                .map(|(t, n)| (String::new(), t.clone(), *n))
                .chain(
                    g.distinct_props
                        .iter()
                        .map(|(t, n)| (tg.name.clone(), t.clone(), *n)),
                )
                .collect();
            for (scope, target, limit) in scoped {
                let Some(value) = feasible::resolve(&target, node) else {
                    m.filter(node, format!("missing property {target:?}"));
                    return None;
                };
                let used = self
                    .property_use
                    .get(&(scope, target.clone(), value.clone()))
                    .copied()
                    .unwrap_or(0);
                if used >= limit {
                    m.filter(
                        node,
                        format!("distinct_property: {target}={value} used by {used} allocs"),
                    );
                    return None;
                }
            }
        }
        if wants_ports {
            match self.port_offer(i, gi) {
                Ok(offer) => {
                    self.offers.insert(i, offer);
                }
                Err(dim) => {
                    m.exhaust(&self.nodes[i], &dim.to_string());
                    return None;
                }
            }
        }
        let (cap, used) = self.usage_of(i);
        if let Some(dim) = used.exceeds(&ask, &cap) {
            let node = &self.nodes[i];
            m.exhaust(node, dim);
            return None;
        }
        let free = |u: i64, c: i64| {
            if c <= 0 {
                0.0
            } else {
                1.0 - (u as f64 / c as f64)
            }
        };
        let total = 10f64.powf(free(used.cpu + ask.cpu, cap.cpu))
            + 10f64.powf(free(used.memory_mb + ask.memory_mb, cap.memory_mb));
        let binpack = (20.0 - total).clamp(0.0, 18.0) / 18.0;
        let mut s = Scores {
            binpack,
            anti_affinity: 0.0,
            penalty: 0.0,
            norm: 0.0,
        };
        let mut sum = binpack;
        let mut n = 1.0;
        if on_node > 0 {
            let count = self.job.task_groups[gi].count().max(1) as f64;
            s.anti_affinity = -((on_node as f64) + 1.0) / count;
            sum += s.anti_affinity;
            n += 1.0;
        }
        let id = &self.nodes[i].id;
        if penalty.iter().any(|p| p == id) {
            s.penalty = -1.0;
            sum -= 1.0;
            n += 1.0;
        }
        s.norm = sum / n;
        Some(s)
    }

    /// Choose a node for one alloc of `tg` (`penalty`: nodes a rescheduled alloc failed on).
    pub fn select(&mut self, tg: &TaskGroup, penalty: &[String]) -> Choice {
        let started = Instant::now();
        let gi = self.group(tg);
        self.offers.clear();
        let mut m = Metric::default();
        let n = self.nodes.len();
        let limit = self.limit();
        let mut good: Vec<(usize, Scores)> = Vec::new();
        let mut skipped: Vec<(usize, Scores)> = Vec::new();
        let mut visited = 0;
        while visited < n && good.len() < limit {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            visited += 1;
            if let Some(s) = self.consider(i, gi, penalty, &mut m) {
                if s.norm <= 0.0 && skipped.len() < MAX_SKIPPED {
                    skipped.push((i, s));
                } else {
                    good.push((i, s));
                }
            }
        }
        let pool = if good.is_empty() { skipped } else { good };
        let best = pool
            .iter()
            .enumerate()
            .fold(None::<(usize, f64)>, |best, (k, (_, s))| match best {
                Some((_, b)) if b >= s.norm => best,
                _ => Some((k, s.norm)),
            })
            .map(|(k, _)| k);
        if let Some(k) = best {
            let i = pool[k].0;
            let ports = self.commit(i, gi);
            return Choice::Placed(self.nodes[i].id.clone(), ports);
        }
        // Only a failure keeps its metric (the eval's `FailedTGAllocs`).
        let mut ranked = pool;
        ranked.sort_by(|a, b| {
            b.1.norm
                .partial_cmp(&a.1.norm)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        m.scores = ranked
            .iter()
            .take(SCORE_META_TOP)
            .map(|(i, s)| (self.nodes[*i].id.clone(), s.to_map(), s.norm))
            .collect();
        Choice::Failed(self.finish(m, started))
    }

    /// A failure's metric with the candidate set's counts and the time it took.
    fn finish(&self, mut m: Metric, started: Instant) -> Metric {
        m.nodes_in_pool = self.base.nodes_in_pool;
        m.node_pool = self.base.node_pool.clone();
        m.nodes_available = self.base.nodes_available.clone();
        m.allocation_time = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        m
    }

    /// Place one alloc of `tg` on exactly `node_id` (system jobs).
    pub fn select_on(&mut self, tg: &TaskGroup, node_id: &str) -> OnNode {
        let started = Instant::now();
        let gi = self.group(tg);
        self.offers.clear();
        let mut m = Metric::default();
        let Some(&i) = self.index_of.get(node_id) else {
            return OnNode::Filtered(self.finish(m, started));
        };
        match self.consider(i, gi, &[], &mut m) {
            Some(_) => OnNode::Placed(self.commit(i, gi)),
            None if m.nodes_exhausted > 0 => OnNode::Exhausted(self.finish(m, started)),
            None => OnNode::Filtered(self.finish(m, started)),
        }
    }

    /// The candidate set's metric with nothing tried (a group with no candidates at all).
    pub fn empty_metric(&self) -> Metric {
        self.base.clone()
    }

    /// Count a placement on node `i` and take the ports offered there.
    fn commit(&mut self, i: usize, gi: usize) -> AllocPorts {
        let ask = self
            .groups
            .get(gi)
            .and_then(Option::as_ref)
            .map(|g| g.ask)
            .unwrap_or_default();
        let (cap, mut used) = self.usage_of(i);
        used.add(&ask);
        self.usage[i] = Some((cap, used));
        let id = self.nodes[i].id.clone();
        self.count_alloc(Some(gi), Some(i), &id);
        self.placed += 1;
        let ports = self.offers.remove(&i).unwrap_or_default();
        if let Some((_, used)) = self.ports[i].as_mut() {
            // The offer was made against this set: it cannot collide.
            let _ = used.add(&ports);
        }
        self.offers.clear();
        ports
    }
}

/// Why a node offers a group no ports: the `DimensionExhausted` reason, Nomad's text.
#[derive(Debug)]
enum NetworkExhausted {
    /// The node's network state was not built.
    InvalidNode,
    /// The allocs already on the node collide with each other.
    Collision,
    /// The assignment failed.
    Ports(PortError),
}

impl std::fmt::Display for NetworkExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkExhausted::InvalidNode => f.write_str("network: invalid node"),
            NetworkExhausted::Collision => f.write_str("network: port collision"),
            NetworkExhausted::Ports(e) => write!(f, "network: {e}"),
        }
    }
}
