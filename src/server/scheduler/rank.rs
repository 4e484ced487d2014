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
    /// On this node.
    Placed(String),
    /// No node could take it.
    Failed(Metric),
}

/// The outcome of placing on one given node (system jobs).
#[derive(Debug)]
pub enum OnNode {
    Placed,
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
    /// Node index → `None` feasible / `Some(reason)`; absent: not checked yet.
    feasible: HashMap<usize, Option<String>>,
    distinct_hosts: bool,
    distinct_props: Vec<(String, u64)>,
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
    usage: HashMap<usize, (Usage, Usage)>,
    /// Allocs stopped by this plan (their resources are free).
    stopping: HashSet<String>,
    /// (group, node) → this job's live allocs there (existing kept + planned).
    group_on: HashMap<(String, String), u32>,
    /// node → this job's live allocs there.
    job_on: HashMap<String, u32>,
    /// (group or "" for job scope, property target, value) → allocs using it.
    property_use: HashMap<(String, String, String), u64>,
    job_distinct_hosts: bool,
    job_distinct_props: Vec<(String, u64)>,
    groups: HashMap<String, GroupCtx>,
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
        let mut p = Placer {
            state,
            job,
            nodes,
            index_of,
            cursor: 0,
            base,
            usage: HashMap::new(),
            stopping,
            group_on: HashMap::new(),
            job_on: HashMap::new(),
            property_use: HashMap::new(),
            job_distinct_hosts,
            job_distinct_props,
            groups: HashMap::new(),
            cache: Cache::default(),
        };
        let key = (job.namespace.clone(), job.id.clone());
        let live: Vec<(String, String)> = state
            .allocs_of(&key)
            .filter(|a| a.is_live() && !p.stopping.contains(&a.id))
            .map(|a| (a.task_group.clone(), a.node_id.clone()))
            .collect();
        for (g, n) in live {
            p.count_alloc(&g, &n);
        }
        p
    }

    /// Record a live alloc of this job (existing or planned) on a node.
    fn count_alloc(&mut self, group: &str, node_id: &str) {
        *self
            .group_on
            .entry((group.to_string(), node_id.to_string()))
            .or_default() += 1;
        *self.job_on.entry(node_id.to_string()).or_default() += 1;
        let Some(node) = self.state.nodes.get(node_id).cloned() else {
            return;
        };
        let mut props: Vec<(String, String)> = self
            .job_distinct_props
            .iter()
            .map(|(t, _)| (String::new(), t.clone()))
            .collect();
        if let Some(tg) = self.job.group(group) {
            let cs = feasible::constraints_of(&tg.constraints);
            for (t, _) in distinct_of(&cs).1 {
                props.push((group.to_string(), t));
            }
        }
        for (scope, target) in props {
            if let Some(v) = feasible::resolve(&target, &node) {
                *self.property_use.entry((scope, target, v)).or_default() += 1;
            }
        }
    }

    fn group_ctx(&mut self, tg: &TaskGroup) -> &mut GroupCtx {
        let job = self.job;
        self.groups.entry(tg.name.clone()).or_insert_with(|| {
            let job_cs = feasible::constraints_of(&job.constraints);
            let constraints = feasible::group_constraints(job, tg);
            let (hosts, props) = distinct_of(&feasible::constraints_of(&tg.constraints));
            GroupCtx {
                ask: plan::group_ask(tg),
                job_constraints: job_cs.len(),
                constraints,
                feasible: HashMap::new(),
                distinct_hosts: hosts,
                distinct_props: props,
            }
        })
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
        if let Some(u) = self.usage.get(&i) {
            return *u;
        }
        let node = &self.nodes[i];
        let cap = plan::node_capacity(node);
        let mut used = Usage::default();
        for a in self.state.allocs_on(&node.id) {
            if a.is_live() && !self.stopping.contains(&a.id) {
                used.add(&plan::alloc_ask(a));
            }
        }
        self.usage.insert(i, (cap, used));
        (cap, used)
    }

    /// Check node `i` for group `tg`: `Err` filtered/exhausted (recorded in `m`), else its
    /// scores.
    fn consider(
        &mut self,
        i: usize,
        tg: &TaskGroup,
        penalty: &[String],
        m: &mut Metric,
    ) -> Option<(BTreeMap<&'static str, f64>, f64)> {
        let node = self.nodes[i].clone();
        m.nodes_evaluated += 1;
        let mut cache = std::mem::take(&mut self.cache);
        let g = self.group_ctx(tg);
        let reason = match g.feasible.get(&i) {
            Some(r) => r.clone(),
            None => {
                let r = feasible::static_check(
                    &g.constraints,
                    g.job_constraints,
                    tg,
                    &node,
                    &mut cache,
                );
                g.feasible.insert(i, r.clone());
                r
            }
        };
        let group_hosts = g.distinct_hosts;
        let group_props = g.distinct_props.clone();
        let ask = g.ask;
        self.cache = cache;
        if let Some(r) = reason {
            m.filter(&node, r);
            return None;
        }
        let on_node = self
            .group_on
            .get(&(tg.name.clone(), node.id.clone()))
            .copied()
            .unwrap_or(0);
        let job_on_node = self.job_on.get(&node.id).copied().unwrap_or(0);
        if (self.job_distinct_hosts && job_on_node > 0) || (group_hosts && on_node > 0) {
            m.filter(&node, "distinct_hosts".into());
            return None;
        }
        let scoped = self
            .job_distinct_props
            .iter()
            .map(|(t, n)| (String::new(), t.clone(), *n))
            .chain(
                group_props
                    .iter()
                    .map(|(t, n)| (tg.name.clone(), t.clone(), *n)),
            )
            .collect::<Vec<_>>();
        for (scope, target, limit) in scoped {
            let Some(value) = feasible::resolve(&target, &node) else {
                m.filter(&node, format!("missing property {target:?}"));
                return None;
            };
            let used = self
                .property_use
                .get(&(scope, target.clone(), value.clone()))
                .copied()
                .unwrap_or(0);
            if used >= limit {
                m.filter(
                    &node,
                    format!("distinct_property: {target}={value} used by {used} allocs"),
                );
                return None;
            }
        }
        let (cap, used) = self.usage_of(i);
        if let Some(dim) = used.exceeds(&ask, &cap) {
            m.exhaust(&node, dim);
            return None;
        }
        let mut scores: BTreeMap<&'static str, f64> = BTreeMap::new();
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
        scores.insert("binpack", binpack);
        let mut sum = binpack;
        let mut n = 1.0;
        if on_node > 0 {
            let count = tg.count().max(1) as f64;
            let anti = -((on_node as f64) + 1.0) / count;
            scores.insert("job-anti-affinity", anti);
            sum += anti;
            n += 1.0;
        } else {
            scores.insert("job-anti-affinity", 0.0);
        }
        if penalty.iter().any(|p| *p == node.id) {
            scores.insert("node-reschedule-penalty", -1.0);
            sum -= 1.0;
            n += 1.0;
        } else {
            scores.insert("node-reschedule-penalty", 0.0);
        }
        Some((scores, sum / n))
    }

    /// Choose a node for one alloc of `tg` (`penalty`: nodes a rescheduled alloc failed on).
    pub fn select(&mut self, tg: &TaskGroup, penalty: &[String]) -> Choice {
        let started = Instant::now();
        let mut m = self.base.clone();
        let n = self.nodes.len();
        let limit = self.limit();
        let mut good: Vec<(usize, BTreeMap<&'static str, f64>, f64)> = Vec::new();
        let mut skipped: Vec<(usize, BTreeMap<&'static str, f64>, f64)> = Vec::new();
        let mut visited = 0;
        while visited < n && good.len() < limit {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            visited += 1;
            if let Some((scores, norm)) = self.consider(i, tg, penalty, &mut m) {
                if norm <= 0.0 && skipped.len() < MAX_SKIPPED {
                    skipped.push((i, scores, norm));
                } else {
                    good.push((i, scores, norm));
                }
            }
        }
        let pool = if good.is_empty() { skipped } else { good };
        let best = pool
            .iter()
            .enumerate()
            .fold(None::<(usize, f64)>, |best, (k, (_, _, s))| match best {
                Some((_, b)) if b >= *s => best,
                _ => Some((k, *s)),
            })
            .map(|(k, _)| k);
        if let Some(k) = best {
            let i = pool[k].0;
            self.commit(i, tg);
            return Choice::Placed(self.nodes[i].id.clone());
        }
        // Only a failure keeps its metric (the eval's `FailedTGAllocs`).
        let mut ranked: Vec<&(usize, BTreeMap<&'static str, f64>, f64)> = pool.iter().collect();
        ranked.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
        m.scores = ranked
            .iter()
            .take(SCORE_META_TOP)
            .map(|(i, s, norm)| (self.nodes[*i].id.clone(), s.clone(), *norm))
            .collect();
        m.allocation_time = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Choice::Failed(m)
    }

    /// Place one alloc of `tg` on exactly `node_id` (system jobs).
    pub fn select_on(&mut self, tg: &TaskGroup, node_id: &str) -> OnNode {
        let started = Instant::now();
        let mut m = self.base.clone();
        let Some(&i) = self.index_of.get(node_id) else {
            return OnNode::Filtered(m);
        };
        let r = self.consider(i, tg, &[], &mut m);
        m.allocation_time = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match r {
            Some(_) => {
                self.commit(i, tg);
                OnNode::Placed
            }
            None if m.nodes_exhausted > 0 => OnNode::Exhausted(m),
            None => OnNode::Filtered(m),
        }
    }

    /// The candidate set's metric with nothing tried (a group with no candidates at all).
    pub fn empty_metric(&self) -> Metric {
        self.base.clone()
    }

    fn commit(&mut self, i: usize, tg: &TaskGroup) {
        let ask = self.group_ctx(tg).ask;
        let (cap, mut used) = self.usage_of(i);
        used.add(&ask);
        self.usage.insert(i, (cap, used));
        let id = self.nodes[i].id.clone();
        self.count_alloc(&tg.name, &id);
    }
}
