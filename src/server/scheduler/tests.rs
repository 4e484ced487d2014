//! The scheduler on a `ServerState` with many nodes registered through `NodeRegister`
//! commands: placement, every constraint operator, failure metrics, blocked evals, system
//! jobs, reschedules, lost and migrating allocs, and the plan check at apply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::feasible::{self, Cache, Constraint};
use super::pipeline::{next_free_eval, planning_state, Flight};
use super::{next_eval, plan_for, MAX_PLAN_ATTEMPTS};
use crate::state::command::{apply, Applied, Command, ServerState};
use crate::state::jobs::alloc::{AllocRecord, ClientStatusUpdate};
use crate::state::jobs::spec::{Job, SECOND};
use crate::state::node_table::Node;
use crate::state::plan::PlanResult;
use crate::state::status::{
    AllocClientStatus, AllocDesiredStatus, EvalStatus, NodeEligibility, NodeStatus,
};

/// A time well after the epoch, in nanoseconds.
const T0: i64 = 1_000_000 * SECOND;

struct World {
    s: ServerState,
    index: u64,
    now: i64,
    seq: u64,
    /// Every command applied (the determinism check replays them).
    log: Vec<Command>,
}

fn node(id: &str, cpu: i64, mem: i64) -> Node {
    let mut n = super::bench::sim_node(0);
    n.id = id.to_string();
    n.name = id.into();
    n.datacenter = "dc1".into();
    *n.resources = json!({"Cpu": {"CpuShares": cpu}, "Memory": {"MemoryMB": mem},
        "Disk": {"DiskMB": 100_000}});
    n
}

fn job(v: Value) -> Job {
    let mut j = Job::from_json(v).unwrap();
    j.canonicalize("global");
    j
}

/// A job of one group `g` of `count` raw_exec tasks asking `cpu` MHz and `mem` MB.
fn simple(id: &str, ty: &str, count: i64, cpu: i64, mem: i64) -> Value {
    json!({"ID": id, "Type": ty, "TaskGroups": [{"Name": "g", "Count": count,
        "EphemeralDisk": {"SizeMB": 10},
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"},
            "Resources": {"CPU": cpu, "MemoryMB": mem}}]}]})
}

impl World {
    fn new() -> World {
        World {
            s: ServerState::default(),
            index: 10,
            now: T0,
            seq: 0,
            log: Vec::new(),
        }
    }

    fn cmd(&mut self, c: Command) -> Result<Applied, crate::state::command::ApplyError> {
        self.index += 1;
        self.log.push(c.clone());
        apply(&mut self.s, &c, self.index)
    }

    fn id(&mut self, p: &str) -> String {
        self.seq += 1;
        format!("{p}{}", self.seq)
    }

    fn add_node(&mut self, n: Node) {
        let now = self.now;
        self.cmd(Command::NodeRegister {
            node: Box::new(n),
            now,
        })
        .unwrap();
    }

    fn nodes(&mut self, count: usize, cpu: i64, mem: i64) -> Vec<String> {
        (0..count)
            .map(|i| {
                let id = format!("node-{i:03}");
                self.add_node(node(&id, cpu, mem));
                id
            })
            .collect()
    }

    fn submit(&mut self, j: Value) -> String {
        let eval_id = self.id("eval-");
        let now = self.now;
        self.cmd(Command::JobSubmit {
            job: Box::new(job(j)),
            eval_id: eval_id.clone(),
            now,
            submission: None,
        })
        .unwrap();
        eval_id
    }

    /// Run every due pending eval (the scheduler thread's loop, on this thread).
    fn run(&mut self) -> Vec<PlanResult> {
        let mut out = Vec::new();
        let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
        loop {
            let (Some(e), _) = next_eval(&self.s, self.now) else {
                return out;
            };
            let a = attempts.entry(e.id.clone()).or_default();
            *a += 1;
            let plan = plan_for(&self.s, &e, self.now, *a);
            match self.cmd(Command::PlanApply {
                plan: Box::new(plan),
            }) {
                Ok(Applied::Plan(r)) => out.push(r),
                other => panic!("plan for {} did not apply: {other:?}", e.id),
            }
            assert!(out.len() < 1000, "the queue does not drain");
        }
    }

    /// Run every due pending eval as the `scheduler` thread's pipeline does: up to `depth`
    /// plans made before the oldest is applied, each on the state plus the plans in flight
    /// (`overlay`: false plans on the bare state, as without the overlay). Returns what each
    /// apply did.
    fn run_pipelined(&mut self, depth: usize, overlay: bool) -> Vec<PlanResult> {
        let mut out = Vec::new();
        let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
        let mut flights: std::collections::VecDeque<(Flight, crate::state::plan::Plan)> =
            Default::default();
        loop {
            let state = Arc::new(self.s.clone());
            let fl: Vec<&Flight> = flights.iter().map(|(f, _)| f).collect();
            let (next, _) = next_free_eval(&state, self.now, &fl);
            drop(fl);
            let full = flights.len() >= depth;
            match next {
                Some(e) if !full => {
                    let a = attempts.entry(e.id.clone()).or_default();
                    *a += 1;
                    let spec = if overlay {
                        planning_state(&state, flights.iter().map(|(f, _)| f))
                    } else {
                        state.clone()
                    };
                    let plan = plan_for(&spec, &e, self.now, *a);
                    let f = Flight::of(&spec, state.index, &plan, *a);
                    flights.push_back((f, plan));
                }
                _ => {
                    let Some((f, plan)) = flights.pop_front() else {
                        return out;
                    };
                    match self.cmd(Command::PlanApply {
                        plan: Box::new(plan),
                    }) {
                        Ok(Applied::Plan(r)) => {
                            if !r.retry {
                                attempts.remove(&f.eval_id);
                            }
                            out.push(r);
                        }
                        other => panic!("plan for {} did not apply: {other:?}", f.eval_id),
                    }
                }
            }
            assert!(out.len() < 1000, "the queue does not drain");
        }
    }

    fn allocs(&self, job: &str) -> Vec<Arc<AllocRecord>> {
        let mut v: Vec<Arc<AllocRecord>> = self
            .s
            .allocs_of(&("default".into(), job.into()))
            .cloned()
            .collect();
        v.sort_by_key(|a| (a.create_index, a.name.clone()));
        v
    }

    fn live(&self, job: &str) -> Vec<Arc<AllocRecord>> {
        self.allocs(job)
            .into_iter()
            .filter(|a| a.desired_status == AllocDesiredStatus::Run)
            .collect()
    }

    fn eval(&self, id: &str) -> &crate::state::jobs::eval::EvalRecord {
        &self.s.evals[id]
    }

    fn client_status(&mut self, alloc: &str, status: AllocClientStatus) {
        let now = self.now;
        self.cmd(Command::AllocClientUpdate {
            alloc_id: alloc.into(),
            tasks: BTreeMap::new(),
            client_status: Some(ClientStatusUpdate {
                status,
                description: String::new(),
            }),
            collected: false,
            now,
        })
        .unwrap();
    }

    /// No node runs more than it has.
    fn assert_no_overcommit(&self) {
        for n in self.s.nodes.values() {
            let used = crate::state::plan::node_used(&self.s, &n.id);
            let cap = crate::state::plan::node_capacity(n);
            assert!(
                used.exceeds(&Default::default(), &cap).is_none(),
                "node {} overcommitted: {used:?} of {cap:?}",
                n.id
            );
        }
    }
}

#[test]
fn a_service_job_spreads_over_equal_nodes_and_the_eval_completes() {
    let mut w = World::new();
    w.nodes(5, 4000, 8192);
    let e = w.submit(simple("web", "service", 5, 500, 256));
    assert_eq!(w.eval(&e).status, EvalStatus::Pending, "queued, not placed");
    assert!(w.live("web").is_empty());
    w.run();
    let live = w.live("web");
    assert_eq!(live.len(), 5);
    let nodes: BTreeSet<&str> = live.iter().map(|a| a.node_id.as_str()).collect();
    assert_eq!(
        nodes.len(),
        5,
        "job anti-affinity spreads equal nodes: {nodes:?}"
    );
    let names: BTreeSet<&str> = live.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains("web.g[0]") && names.contains("web.g[4]"));
    assert_eq!(w.eval(&e).status, EvalStatus::Complete);
    assert!(w.eval(&e).failed_tg_allocs.is_empty());
    assert_eq!(w.eval(&e).queued_allocations["g"], 0);
    assert!(live
        .iter()
        .all(|a| a.eval_id == e && a.node_name == a.node_id));
}

#[test]
fn bin_packing_prefers_the_fuller_node() {
    let mut w = World::new();
    w.add_node(node("empty", 4000, 4096));
    w.add_node(node("busy", 4000, 4096));
    // Fill "busy" halfway with another job pinned there.
    let mut pinned = simple("filler", "service", 1, 2000, 2048);
    pinned["Constraints"] =
        json!([{"LTarget": "${node.unique.id}", "RTarget": "busy", "Operand": "="}]);
    w.submit(pinned);
    w.run();
    assert_eq!(w.live("filler")[0].node_id, "busy");
    w.submit(simple("small", "batch", 1, 100, 100));
    w.run();
    assert_eq!(
        w.live("small")[0].node_id,
        "busy",
        "the fuller node scores higher"
    );
}

#[test]
fn every_constraint_operator_decides_as_nomad_does() {
    let mut n = node("n1", 1000, 1000);
    n.node_class = "gpu".into();
    n.attributes.insert("kernel.name".into(), "linux".into());
    n.attributes.insert("cpu.numcores".into(), "8".into());
    n.attributes.insert("cpu.frequency".into(), "2.5".into());
    n.attributes.insert("nomad.version".into(), "1.7.3".into());
    n.attributes.insert("os.version".into(), "22.04".into());
    n.attributes.insert("pre".into(), "1.2.0-beta.1".into());
    n.meta.insert("tags".into(), "a, b,c".into());
    n.meta.insert("rack".into(), "r-12".into());
    let c = |l: &str, op: &str, r: &str| Constraint {
        l_target: l.into(),
        r_target: r.into(),
        operand: op.into(),
    };
    let mut cache = Cache::default();
    let cases: Vec<(Constraint, bool)> = vec![
        (c("${attr.kernel.name}", "=", "linux"), true),
        (c("${attr.kernel.name}", "==", "windows"), false),
        (c("${attr.kernel.name}", "is", "linux"), true),
        (c("${attr.missing}", "=", ""), false),
        (c("${attr.kernel.name}", "!=", "windows"), true),
        (c("${attr.missing}", "!=", "x"), true),
        (c("${attr.kernel.name}", "not", "linux"), false),
        (c("${attr.cpu.numcores}", ">", "4"), true),
        (c("${attr.cpu.numcores}", ">=", "8"), true),
        (c("${attr.cpu.numcores}", "<", "10"), true),
        (c("${attr.cpu.numcores}", "<=", "7"), false),
        (c("${attr.cpu.frequency}", ">", "2.25"), true),
        (c("${attr.kernel.name}", "<", "mac"), true),
        (c("${attr.missing}", "<", "9"), false),
        (c("${meta.rack}", "regexp", "^r-[0-9]+$"), true),
        (c("${meta.rack}", "regexp", "^x"), false),
        (c("${meta.rack}", "regexp", "("), false),
        (c("${meta.tags}", "set_contains", "a,c"), true),
        (c("${meta.tags}", "set_contains_all", "a, d"), false),
        (c("${meta.tags}", "set_contains_any", "d,b"), true),
        (c("${meta.tags}", "set_contains_any", "d,e"), false),
        (c("${attr.nomad.version}", "version", ">= 1.7, < 2.0"), true),
        (c("${attr.nomad.version}", "version", "~> 1.6.0"), false),
        (c("${attr.nomad.version}", "version", "~> 1.7"), true),
        (c("${attr.os.version}", "version", "> 20.10"), true),
        (c("${attr.pre}", "version", ">= 1.0"), false),
        (c("${attr.pre}", "semver", ">= 1.2.0-alpha"), true),
        (c("${attr.pre}", "semver", ">= 1.2.0"), false),
        (c("${attr.os.version}", "semver", ">= 1.0.0"), false),
        (c("${attr.nomad.version}", "semver", "= 1.7.3"), true),
        (c("${meta.rack}", "is_set", ""), true),
        (c("${meta.nope}", "is_set", ""), false),
        (c("${meta.nope}", "is_not_set", ""), true),
        (c("${node.class}", "=", "gpu"), true),
        (c("${node.datacenter}", "=", "dc1"), true),
        (c("${node.pool}", "=", "default"), true),
        (c("${node.unique.name}", "=", "n1"), true),
        (c("${node.unique.id}", "=", "n1"), true),
        (c("${unknown.thing}", "is_set", ""), false),
        (c("${attr.kernel.name}", "bogus-op", "linux"), false),
    ];
    for (con, want) in cases {
        assert_eq!(
            feasible::check(&con, &n, &mut cache),
            want,
            "{} on the node",
            con.reason()
        );
    }
}

#[test]
fn an_impossible_constraint_fails_with_nomads_metric_and_blocks() {
    let mut w = World::new();
    let mut a = node("a", 1000, 1000);
    a.node_class = "edge".into();
    w.add_node(a);
    w.nodes(2, 1000, 1000);
    let mut j = simple("win", "service", 3, 100, 100);
    j["Constraints"] =
        json!([{"LTarget": "${attr.kernel.name}", "RTarget": "windows", "Operand": "="}]);
    let e = w.submit(j);
    w.run();
    let ev = w.eval(&e).clone();
    assert_eq!(ev.status, EvalStatus::Complete);
    let m = &ev.failed_tg_allocs["g"];
    assert_eq!(m["NodesEvaluated"], 3, "{m}");
    assert_eq!(m["NodesFiltered"], 3);
    assert_eq!(m["NodesInPool"], 3);
    assert_eq!(m["NodePool"], "default");
    assert_eq!(m["NodesAvailable"]["dc1"], 3);
    assert_eq!(m["ConstraintFiltered"]["${attr.kernel.name} = windows"], 3);
    assert_eq!(m["ClassFiltered"]["edge"], 1);
    assert_eq!(m["NodesExhausted"], 0);
    assert_eq!(m["CoalescedFailures"], 2, "three placements, one metric");
    for key in [
        "ClassExhausted",
        "DimensionExhausted",
        "QuotaExhausted",
        "ScoreMetaData",
        "AllocationTime",
    ] {
        assert!(m.get(key).is_some(), "{key} present");
    }
    assert_eq!(ev.queued_allocations["g"], 3);
    let blocked = w.eval(&ev.blocked_eval).clone();
    assert_eq!(blocked.status, EvalStatus::Blocked);
    assert_eq!(blocked.previous_eval, e);
    assert_eq!(blocked.triggered_by, "queued-allocs");
    assert_eq!(blocked.failed_tg_allocs["g"], *m);
}

#[test]
fn exhausted_resources_name_the_dimension_and_capacity_unblocks_the_eval() {
    let mut w = World::new();
    w.nodes(3, 4000, 1024);
    w.submit(simple("hog", "service", 3, 100, 800));
    w.run();
    assert_eq!(w.live("hog").len(), 3);
    let e = w.submit(simple("late", "service", 1, 100, 500));
    w.run();
    let ev = w.eval(&e).clone();
    let m = &ev.failed_tg_allocs["g"];
    assert_eq!(m["NodesExhausted"], 3, "{m}");
    assert_eq!(m["DimensionExhausted"]["memory"], 3);
    assert_eq!(m["NodesFiltered"], 0);
    let blocked = ev.blocked_eval.clone();
    assert_eq!(w.eval(&blocked).status, EvalStatus::Blocked);
    // Nothing changed: the blocked eval stays blocked.
    assert!(w.run().is_empty());
    // One hog alloc ends: capacity appears, the blocked eval runs and places.
    let first = w.live("hog")[0].id.clone();
    w.client_status(&first, AllocClientStatus::Complete);
    w.run();
    assert_eq!(w.live("late").len(), 1);
    assert_eq!(w.eval(&blocked).status, EvalStatus::Complete);
    w.assert_no_overcommit();
}

#[test]
fn distinct_hosts_puts_one_alloc_per_node_and_reports_the_rest() {
    let mut w = World::new();
    w.nodes(3, 4000, 4096);
    let mut j = simple("dh", "service", 4, 100, 100);
    j["TaskGroups"][0]["Constraints"] = json!([{"Operand": "distinct_hosts", "RTarget": "true"}]);
    let e = w.submit(j);
    w.run();
    let live = w.live("dh");
    assert_eq!(live.len(), 3);
    let nodes: BTreeSet<&str> = live.iter().map(|a| a.node_id.as_str()).collect();
    assert_eq!(nodes.len(), 3);
    let m = &w.eval(&e).failed_tg_allocs["g"];
    assert_eq!(m["ConstraintFiltered"]["distinct_hosts"], 3, "{m}");
    assert_eq!(w.eval(&e).queued_allocations["g"], 1);
}

#[test]
fn distinct_property_limits_allocs_per_value() {
    let mut w = World::new();
    for (i, rack) in ["r1", "r1", "r2", "r2"].iter().enumerate() {
        let mut n = node(&format!("n{i}"), 4000, 4096);
        n.meta.insert("rack".into(), rack.to_string());
        w.add_node(n);
    }
    w.add_node(node("norack", 4000, 4096));
    let mut j = simple("dp", "service", 3, 100, 100);
    j["Constraints"] = json!([{"Operand": "distinct_property", "LTarget": "${meta.rack}"}]);
    let e = w.submit(j);
    w.run();
    let live = w.live("dp");
    assert_eq!(live.len(), 2, "one per rack");
    let racks: BTreeSet<String> = live
        .iter()
        .map(|a| w.s.nodes[a.node_id.as_str()].meta["rack"].clone())
        .collect();
    assert_eq!(racks.len(), 2);
    let m = &w.eval(&e).failed_tg_allocs["g"];
    let reasons: Vec<&String> = m["ConstraintFiltered"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("distinct_property: ${meta.rack}=r"))
            && reasons
                .iter()
                .any(|r| *r == "missing property \"${meta.rack}\""),
        "{m}"
    );
}

#[test]
fn a_missing_driver_is_filtered_and_a_node_that_gets_it_unblocks_the_placement() {
    let mut w = World::new();
    let mut n = node("n1", 4000, 4096);
    *n.drivers = json!({"raw_exec": {"Detected": false, "Healthy": false,
        "HealthDescription": "enable it with plugin \"raw_exec\""}});
    n.attributes.remove("driver.raw_exec");
    w.add_node(n.clone());
    let e = w.submit(simple("d", "service", 1, 100, 100));
    w.run();
    let ev = w.eval(&e).clone();
    assert_eq!(
        ev.failed_tg_allocs["g"]["ConstraintFiltered"]["missing drivers"],
        1
    );
    assert!(
        ev.status_description
            .contains("driver \"raw_exec\" is not available on this node: enable it"),
        "{}",
        ev.status_description
    );
    // The client registers again with the driver enabled: the blocked eval places it.
    *n.drivers = json!({"raw_exec": {"Detected": true, "Healthy": true}});
    w.add_node(n);
    w.run();
    assert_eq!(w.live("d").len(), 1);
    assert_eq!(w.eval(&ev.blocked_eval).status, EvalStatus::Complete);
}

#[test]
fn new_metadata_that_satisfies_a_constraint_unblocks_the_eval() {
    let mut w = World::new();
    w.nodes(2, 4000, 4096);
    let mut j = simple("gold", "service", 1, 100, 100);
    j["Constraints"] = json!([{"LTarget": "${meta.tier}", "RTarget": "gold", "Operand": "="}]);
    let e = w.submit(j);
    w.run();
    let blocked = w.eval(&e).blocked_eval.clone();
    assert_eq!(w.eval(&blocked).status, EvalStatus::Blocked);
    w.cmd(Command::NodeUpdateMeta {
        node_id: "node-001".into(),
        meta: [("tier".to_string(), "gold".to_string())].into(),
    })
    .unwrap();
    assert_eq!(w.eval(&blocked).status, EvalStatus::Pending, "woken");
    w.run();
    let live = w.live("gold");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].node_id, "node-001");
    assert_eq!(w.eval(&blocked).status, EvalStatus::Complete);
}

#[test]
fn a_system_job_runs_on_every_eligible_node_and_on_one_that_joins_later() {
    let mut w = World::new();
    w.nodes(3, 4000, 4096);
    let mut off = node("ineligible", 4000, 4096);
    off.scheduling_eligibility = NodeEligibility::Ineligible;
    w.add_node(off);
    let mut other_dc = node("far", 4000, 4096);
    other_dc.datacenter = "eu-1".into();
    w.add_node(other_dc);
    let mut windows = node("win", 4000, 4096);
    windows
        .attributes
        .insert("kernel.name".into(), "windows".into());
    w.add_node(windows);
    let mut j = simple("agentd", "system", 1, 100, 100);
    j["Datacenters"] = json!(["dc*"]);
    j["Constraints"] =
        json!([{"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="}]);
    let e = w.submit(j);
    w.run();
    let on: BTreeSet<String> = w
        .live("agentd")
        .iter()
        .map(|a| a.node_id.to_string())
        .collect();
    let want: BTreeSet<String> = ["node-000", "node-001", "node-002"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(on, want, "not the ineligible, other-dc or filtered node");
    assert!(
        w.eval(&e).failed_tg_allocs.is_empty(),
        "filtered nodes are skipped silently"
    );
    // A fourth node joins: a node-update eval places one more.
    w.add_node(node("node-003", 4000, 4096));
    let evals: Vec<_> =
        w.s.evals
            .values()
            .filter(|e| e.triggered_by == "node-update" && e.node_id == "node-003")
            .cloned()
            .collect();
    assert_eq!(evals.len(), 1);
    w.run();
    assert_eq!(w.live("agentd").len(), 4);
    assert!(w.live("agentd").iter().any(|a| a.node_id == "node-003"));
    // Running the evals again changes nothing.
    w.submit(simple("noop", "service", 0, 1, 1));
    w.run();
    assert_eq!(w.live("agentd").len(), 4);
}

#[test]
fn a_failed_service_alloc_is_rescheduled_after_its_delay_on_another_node() {
    let mut w = World::new();
    w.nodes(3, 4000, 4096);
    w.submit(simple("svc", "service", 1, 100, 100));
    w.run();
    let first = w.live("svc")[0].clone();
    w.client_status(&first.id, AllocClientStatus::Failed);
    // The failure queues an alloc-failure eval; the default policy waits 30 s.
    assert!(w
        .s
        .evals
        .values()
        .any(|e| e.triggered_by == "alloc-failure"));
    w.run();
    let a = w.s.allocs[first.id.as_str()].clone();
    assert_eq!(a.desired_status, AllocDesiredStatus::Run, "not yet");
    assert!(!a.followup_eval_id.is_empty());
    let follow = w.eval(&a.followup_eval_id).clone();
    assert_eq!(follow.triggered_by, "alloc-reschedule");
    assert!(
        follow.wait_until >= w.now + 30 * SECOND,
        "{}",
        follow.wait_until
    );
    assert!(w.run().is_empty(), "the follow-up waits");
    w.now = follow.wait_until;
    w.run();
    let old = w.s.allocs[first.id.as_str()].clone();
    assert_eq!(old.desired_status, AllocDesiredStatus::Stop);
    assert_eq!(
        old.desired_description,
        "alloc was rescheduled because it failed"
    );
    let new = w.live("svc");
    let new = new.iter().find(|x| x.id != first.id).unwrap();
    assert_eq!(old.next_allocation, new.id);
    assert_eq!(new.previous_allocation, first.id);
    assert_eq!(new.name, first.name);
    assert_eq!(new.reschedule_events.len(), 1);
    assert_eq!(new.reschedule_events[0].prev_node_id, first.node_id);
    assert_eq!(new.reschedule_events[0].delay, 30 * SECOND);
    assert_ne!(new.node_id, first.node_id, "the failed node is penalized");
}

#[test]
fn a_batch_alloc_is_rescheduled_once_per_policy_then_left_failed() {
    let mut w = World::new();
    w.nodes(2, 4000, 4096);
    let mut j = simple("b", "batch", 1, 100, 100);
    j["TaskGroups"][0]["ReschedulePolicy"] = json!({"Attempts": 1, "Interval": 3600 * SECOND,
        "Delay": 0, "DelayFunction": "constant", "Unlimited": false});
    w.submit(j);
    w.run();
    let first = w.live("b")[0].id.clone();
    w.client_status(&first, AllocClientStatus::Failed);
    w.run();
    let second = w.live("b");
    let second = second.iter().find(|a| a.id != first).unwrap().id.clone();
    w.client_status(&second, AllocClientStatus::Failed);
    w.run();
    assert_eq!(w.allocs("b").len(), 2, "the one attempt is used up");
    assert_eq!(
        w.s.allocs[second.as_str()].client_status,
        AllocClientStatus::Failed
    );
    // A successful batch alloc is never run again.
    w.submit(simple("ok", "batch", 1, 100, 100));
    w.run();
    let ok = w.live("ok")[0].id.clone();
    w.client_status(&ok, AllocClientStatus::Complete);
    w.submit(simple("ok", "batch", 1, 100, 100));
    w.run();
    assert_eq!(w.allocs("ok").len(), 1);
}

#[test]
fn a_down_node_loses_its_allocs_and_they_are_replaced_at_once() {
    let mut w = World::new();
    w.nodes(3, 4000, 4096);
    w.submit(simple("web", "service", 3, 100, 100));
    w.run();
    let victim = w.live("web")[0].clone();
    let now = w.now;
    w.cmd(Command::NodeUpdateStatus {
        node_id: victim.node_id.to_string(),
        status: NodeStatus::Down,
        description: "missed heartbeats".into(),
        event: None,
        now,
    })
    .unwrap();
    let lost = w.s.allocs[victim.id.as_str()].clone();
    assert_eq!(lost.client_status, AllocClientStatus::Lost);
    assert_eq!(lost.desired_status, AllocDesiredStatus::Stop);
    assert_eq!(
        lost.desired_description,
        "alloc is lost since its node is down"
    );
    assert!(w.s.evals.values().any(|e| e.triggered_by == "node-update"
        && e.node_id == victim.node_id
        && e.status == EvalStatus::Pending));
    w.run();
    let live = w.live("web");
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|a| a.node_id != victim.node_id));
    let repl = live
        .iter()
        .find(|a| a.previous_allocation == victim.id)
        .unwrap();
    assert_eq!(repl.name, victim.name);
    assert!(repl.reschedule_events.is_empty(), "not a reschedule");
}

#[test]
fn a_disconnected_node_with_lost_after_leaves_its_allocs_unknown() {
    let mut w = World::new();
    w.nodes(2, 4000, 4096);
    let mut j = simple("patient", "service", 2, 100, 100);
    j["TaskGroups"][0]["Disconnect"] = json!({"LostAfter": 3600 * SECOND});
    w.submit(j);
    w.run();
    for a in w.live("patient") {
        w.client_status(&a.id, AllocClientStatus::Running);
    }
    let on = w.live("patient")[0].node_id.clone();
    let now = w.now;
    w.cmd(Command::NodeUpdateStatus {
        node_id: on.to_string(),
        status: NodeStatus::Disconnected,
        description: String::new(),
        event: None,
        now,
    })
    .unwrap();
    let unknown: Vec<_> = w
        .live("patient")
        .into_iter()
        .filter(|a| a.node_id == on)
        .collect();
    assert!(!unknown.is_empty());
    assert!(unknown
        .iter()
        .all(|a| a.client_status == AllocClientStatus::Unknown));
    w.run();
    assert_eq!(
        w.live("patient").len(),
        2,
        "unknown allocs keep their place: no duplicate after the reconnect"
    );
}

#[test]
fn a_migrating_alloc_is_replaced_elsewhere_and_stopped_in_the_same_plan() {
    let mut w = World::new();
    w.nodes(2, 4000, 4096);
    w.submit(simple("m", "service", 1, 100, 100));
    w.run();
    let a = w.live("m")[0].clone();
    // What c-nodeops' drainer does: the transition, a node-drain eval, the node ineligible.
    let mut moved = (*a).clone();
    moved.desired_transition.migrate = Some(true);
    w.s.allocs.insert(a.id.as_str().into(), Arc::new(moved));
    let job = w.s.jobs[&("default".to_string(), "m".to_string())].clone();
    let eval =
        crate::state::jobs::eval::EvalRecord::pending_at(&job, "node-drain", 99, "drain-1", w.now);
    w.s.put_eval(eval);
    let mut n = (*w.s.nodes[a.node_id.as_str()]).clone();
    n.scheduling_eligibility = NodeEligibility::Ineligible;
    w.s.nodes.insert(n.id.clone(), Arc::new(n));
    let plans = w.run();
    assert_eq!(plans[0].placed, 1);
    assert_eq!(plans[0].stopped, 1, "stop and replacement in one plan");
    let old = w.s.allocs[a.id.as_str()].clone();
    assert_eq!(old.desired_description, "alloc is being migrated");
    let live = w.live("m");
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].node_id, a.node_id);
    assert_eq!(live[0].previous_allocation, a.id);
}

#[test]
fn the_plan_check_refuses_what_no_longer_fits_so_two_plans_never_overcommit() {
    let mut w = World::new();
    w.add_node(node("only", 4000, 1000));
    let ex = w.submit(simple("x", "service", 1, 100, 600));
    let ey = w.submit(simple("y", "service", 1, 100, 600));
    // Both plans made on the same snapshot: each fits alone.
    let snap = w.s.clone();
    let px = plan_for(&snap, &snap.evals[&ex], w.now, 1);
    let py = plan_for(&snap, &snap.evals[&ey], w.now, 1);
    assert_eq!((px.placements.len(), py.placements.len()), (1, 1));
    let rx = w.cmd(Command::PlanApply { plan: Box::new(px) }).unwrap();
    let ry = w
        .cmd(Command::PlanApply {
            plan: Box::new(py.clone()),
        })
        .unwrap();
    let (Applied::Plan(rx), Applied::Plan(ry)) = (rx, ry) else {
        panic!("plans")
    };
    assert_eq!((rx.placed, rx.refused), (1, 0));
    assert_eq!((ry.placed, ry.refused, ry.retry), (0, 1, true));
    assert_eq!(
        w.eval(&ey).status,
        EvalStatus::Pending,
        "left for another try"
    );
    w.assert_no_overcommit();
    // The same refused plan on its final attempt blocks the eval.
    let mut last = py;
    last.final_attempt = true;
    w.cmd(Command::PlanApply {
        plan: Box::new(last),
    })
    .unwrap();
    let ev = w.eval(&ey).clone();
    assert_eq!(ev.status, EvalStatus::Complete);
    assert_eq!(ev.queued_allocations["g"], 1);
    assert_eq!(w.eval(&ev.blocked_eval).status, EvalStatus::Blocked);
    w.assert_no_overcommit();
    // A plan for an eval that is done is refused whole.
    let stale = plan_for(&snap, &snap.evals[&ex], w.now, MAX_PLAN_ATTEMPTS);
    assert!(w
        .cmd(Command::PlanApply {
            plan: Box::new(stale)
        })
        .is_err());
}

#[test]
fn a_job_update_replaces_allocs_a_scale_down_stops_the_highest_and_a_stop_stops_all() {
    let mut w = World::new();
    w.nodes(3, 4000, 4096);
    w.submit(simple("u", "service", 3, 100, 100));
    w.run();
    let v0: Vec<String> = w.live("u").iter().map(|a| a.id.to_string()).collect();
    w.submit(simple("u", "service", 3, 100, 200));
    w.run();
    let live = w.live("u");
    assert_eq!(live.len(), 3);
    assert!(live
        .iter()
        .all(|a| !v0.iter().any(|v| *v == a.id) && a.job.version == 1));
    assert!(v0
        .iter()
        .all(|id| w.s.allocs[id.as_str()].desired_description
            == "alloc not needed due to job update"));
    w.submit(simple("u", "service", 1, 100, 200));
    w.run();
    let live = w.live("u");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].name, "u.g[0]");
    let now = w.now;
    let stop_eval = w.id("stop-");
    w.cmd(Command::JobStop {
        namespace: "default".into(),
        job_id: "u".into(),
        purge: false,
        eval_id: stop_eval.clone(),
        now,
    })
    .unwrap();
    assert!(w.live("u").is_empty(), "stopped in the write itself");
    assert_eq!(w.eval(&stop_eval).status, EvalStatus::Pending);
    w.run();
    assert_eq!(w.eval(&stop_eval).status, EvalStatus::Complete);
}

#[test]
fn replaying_the_commands_gives_byte_identical_state() {
    let mut w = World::new();
    w.nodes(4, 4000, 2048);
    w.submit(simple("a", "service", 5, 100, 300));
    w.submit(simple("s", "system", 1, 100, 100));
    w.run();
    let victim = w.live("a")[0].clone();
    w.client_status(&victim.id, AllocClientStatus::Failed);
    let now = w.now;
    w.cmd(Command::NodeUpdateStatus {
        node_id: "node-002".into(),
        status: NodeStatus::Down,
        description: String::new(),
        event: None,
        now,
    })
    .unwrap();
    w.now += 3600 * SECOND;
    w.run();
    let wire: Vec<Command> = serde_json::from_slice(&serde_json::to_vec(&w.log).unwrap()).unwrap();
    let mut again = ServerState::default();
    for (i, c) in wire.iter().enumerate() {
        let _ = apply(&mut again, c, 11 + i as u64);
    }
    assert_eq!(again.to_bytes().unwrap(), w.s.to_bytes().unwrap());
    let back = ServerState::from_bytes(&w.s.to_bytes().unwrap()).unwrap();
    assert_eq!(
        back.allocs_by_node, w.s.allocs_by_node,
        "derived index rebuilt"
    );
    assert_eq!(back.blocked_evals, w.s.blocked_evals);
    w.assert_no_overcommit();
}

#[test]
fn three_hundred_nodes_filled_exactly_by_three_thousand_allocs_without_overcommit() {
    let mut w = World::new();
    w.nodes(300, 1000, 1024);
    for j in 0..3 {
        w.submit(simple(&format!("j{j}"), "service", 1000, 100, 100));
    }
    w.run();
    let total: usize = (0..3).map(|j| w.live(&format!("j{j}")).len()).sum();
    assert_eq!(total, 3_000);
    w.assert_no_overcommit();
    let busiest = w.s.allocs_by_node.values().map(|s| s.len()).max().unwrap();
    assert!(busiest <= 10, "cpu allows 10 per node, got {busiest}");
}

/// The names allocs repeat are one string each: an alloc's ID is the table's key, and the
/// allocs of one job, one plan and one node share its job ID, namespace, group, eval ID and
/// node ID and name, after the plans applied and after a snapshot load alike.
#[test]
fn allocs_share_one_copy_of_their_job_plan_group_and_node_names() {
    use crate::state::shared::Shared;
    use crate::state::shared_str::SharedStr;
    fn check(s: &ServerState) {
        let all: Vec<_> = s.allocs.values().cloned().collect();
        assert_eq!(all.len(), 8);
        for x in &all {
            let (key, _) = s.allocs.get_key_value(x.id.as_str()).unwrap();
            assert!(SharedStr::ptr_eq(key, &x.id), "{}: a copy of its key", x.id);
            for y in &all {
                let same = |f: fn(&AllocRecord) -> &SharedStr| SharedStr::ptr_eq(f(x), f(y));
                if x.job_id == y.job_id {
                    assert!(same(|a| &a.job_id) && same(|a| &a.namespace));
                    assert!(same(|a| &a.task_group));
                }
                if x.eval_id == y.eval_id {
                    assert!(same(|a| &a.eval_id));
                }
                if x.node_id == y.node_id {
                    assert!(same(|a| &a.node_id) && same(|a| &a.node_name));
                }
            }
        }
    }
    let mut w = World::new();
    w.nodes(2, 4000, 4096);
    w.submit(simple("a", "service", 4, 100, 100));
    w.submit(simple("b", "service", 4, 100, 100));
    w.run();
    // Two jobs on two nodes: each node's allocs come from both jobs' plans.
    for n in ["node-000", "node-001"] {
        let jobs: BTreeSet<String> = w.s.allocs_on(n).map(|a| a.job_id.to_string()).collect();
        assert_eq!(jobs.len(), 2, "{n} runs allocs of both jobs");
    }
    check(&w.s);
    let back = ServerState::from_bytes(&w.s.to_bytes().unwrap()).unwrap();
    check(&back);
    // The nodes report the same resources and drivers: one copy of each, registered or loaded.
    for s in [&w.s, &back] {
        let (a, b) = (&s.nodes["node-000"], &s.nodes["node-001"]);
        assert!(Shared::ptr_eq(&a.resources, &b.resources));
        assert!(Shared::ptr_eq(&a.drivers, &b.drivers));
        assert!(!Shared::ptr_eq(&a.attributes, &b.attributes) || a.attributes == b.attributes);
    }
}

/// A node with the default host network on 127.0.0.1 and dynamic ports `min..=max`.
fn port_node(id: &str, min: u16, max: u16) -> Node {
    let mut n = node(id, 100_000, 100_000);
    n.resources["NodeNetworks"] = json!([{"Mode": "host", "Device": "lo", "Addresses": [
        {"Family": "ipv4", "Alias": "default", "Address": "127.0.0.1", "ReservedPorts": "22"}]}]);
    n.resources["Networks"] =
        json!([{"Mode": "host", "Device": "lo", "CIDR": "127.0.0.1/32", "IP": "127.0.0.1"}]);
    n.resources["MinDynamicPort"] = json!(min);
    n.resources["MaxDynamicPort"] = json!(max);
    n
}

/// `simple` with a group network.
fn with_ports(id: &str, count: i64, network: Value) -> Value {
    let mut j = simple(id, "service", count, 10, 10);
    j["TaskGroups"][0]["Networks"] = json!([network]);
    j
}

fn ports_of(w: &World) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> =
        w.s.allocs
            .values()
            .filter(|a| a.is_live())
            .flat_map(|a| a.ports.all().map(|p| (p.host_ip.clone(), p.value)))
            .collect();
    out.sort();
    out
}

#[test]
fn two_plans_racing_for_one_static_port_one_wins_and_the_other_reports_the_collision() {
    let mut w = World::new();
    w.add_node(port_node("only", 20000, 32000));
    let static_net = json!({"ReservedPorts": [{"Label": "http", "Value": 8080}]});
    let ex = w.submit(with_ports("x", 1, static_net.clone()));
    let ey = w.submit(with_ports("y", 1, static_net));
    let snap = w.s.clone();
    let px = plan_for(&snap, &snap.evals[&ex], w.now, 1);
    let py = plan_for(&snap, &snap.evals[&ey], w.now, 1);
    assert_eq!(px.placements[0].ports.group[0].value, 8080);
    assert_eq!(py.placements[0].ports.group[0].value, 8080);
    let Applied::Plan(rx) = w.cmd(Command::PlanApply { plan: Box::new(px) }).unwrap() else {
        panic!("plan")
    };
    let Applied::Plan(ry) = w.cmd(Command::PlanApply { plan: Box::new(py) }).unwrap() else {
        panic!("plan")
    };
    assert_eq!((rx.placed, ry.placed, ry.refused), (1, 0, 1));
    // The retry sees the port taken: Nomad's metric, and a blocked eval.
    w.run();
    let ev = w.eval(&ey).clone();
    let m = &ev.failed_tg_allocs["g"];
    assert_eq!(
        m["DimensionExhausted"]["network: reserved port collision http=8080"], 1,
        "{m}"
    );
    assert_eq!(w.eval(&ev.blocked_eval).status, EvalStatus::Blocked);
    assert_eq!(ports_of(&w), [("127.0.0.1".to_string(), 8080)]);
    // A node-reserved port is never given out.
    let ez = w.submit(with_ports(
        "z",
        1,
        json!({"ReservedPorts": [{"Label": "ssh", "Value": 22}]}),
    ));
    w.run();
    let m = &w.eval(&ez).failed_tg_allocs["g"];
    assert_eq!(
        m["DimensionExhausted"]["network: reserved port collision ssh=22"],
        1
    );
}

#[test]
fn dynamic_ports_never_collide_on_a_node_and_run_out_as_port_exhaustion() {
    let mut w = World::new();
    w.add_node(port_node("only", 20000, 20009));
    // 2 dynamic ports + one static in the range per alloc: 10 ports hold 3 allocs (9).
    let net = json!({"ReservedPorts": [{"Label": "s", "Value": 20005}],
        "DynamicPorts": [{"Label": "a"}, {"Label": "b", "To": -1}]});
    w.submit(with_ports("d", 1, net.clone()));
    w.run();
    let one = ports_of(&w);
    assert_eq!(one.len(), 3);
    let e = w.submit(with_ports(
        "e",
        4,
        json!({"DynamicPorts": [{"Label": "a"}, {"Label": "b"}]}),
    ));
    w.run();
    let all = ports_of(&w);
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(all, dedup, "no port given twice: {all:?}");
    assert_eq!(all.len(), 9, "{all:?}");
    assert!(all.iter().all(|(_, p)| (20000..=20009).contains(p)));
    let m = &w.eval(&e).failed_tg_allocs["g"];
    assert_eq!(
        m["DimensionExhausted"]["network: dynamic port selection failed"], 1,
        "{m}"
    );
    assert_eq!(m["CoalescedFailures"], 0);
    assert_eq!(w.eval(&e).queued_allocations["g"], 1);
    // `to = -1` maps to the host port.
    let d = &w.live("d")[0];
    let b = d.ports.group.iter().find(|p| p.label == "b").unwrap();
    assert_eq!(b.to, i64::from(b.value));
    // A job without networks still places (no addresses needed).
    w.submit(simple("plain", "service", 1, 10, 10));
    w.run();
    assert_eq!(w.live("plain").len(), 1);
}

#[test]
fn a_job_update_hands_its_static_port_to_the_replacement_and_replays_identically() {
    let mut w = World::new();
    w.add_node(port_node("only", 20000, 20100));
    let net = json!({"ReservedPorts": [{"Label": "http", "Value": 8080}],
        "DynamicPorts": [{"Label": "x"}]});
    w.submit(with_ports("u", 1, net.clone()));
    w.run();
    let v0 = w.live("u")[0].clone();
    // A new version: the old alloc stops in the same plan, so 8080 is free for its successor.
    let mut next = with_ports("u", 1, net);
    next["TaskGroups"][0]["Tasks"][0]["Resources"]["CPU"] = json!(20);
    let e = w.submit(next);
    w.run();
    assert!(w.eval(&e).failed_tg_allocs.is_empty(), "{:?}", w.eval(&e));
    let v1 = w.live("u")[0].clone();
    assert_ne!(v0.id, v1.id);
    assert_eq!(v1.previous_allocation, v0.id);
    assert_eq!(v1.ports.group[0].value, 8080);
    assert_eq!(ports_of(&w).len(), 2);
    let wire: Vec<Command> = serde_json::from_slice(&serde_json::to_vec(&w.log).unwrap()).unwrap();
    let mut again = ServerState::default();
    for (i, c) in wire.iter().enumerate() {
        let _ = apply(&mut again, c, 11 + i as u64);
    }
    assert_eq!(again.to_bytes().unwrap(), w.s.to_bytes().unwrap());
}

/// The plan check as it was before the state kept node usage and ported allocs (a walk
/// over every alloc, the plan's stops left out): the IDs of the placements that fit.
fn reference_accepted(s: &ServerState, plan: &crate::state::plan::Plan) -> BTreeSet<String> {
    use crate::state::jobs::network::{NodeNet, UsedPorts};
    use crate::state::plan::{alloc_ask, group_ask, node_capacity, node_schedulable, Usage};
    let mut out = BTreeSet::new();
    let job = s.jobs.get(&(plan.namespace.clone(), plan.job_id.clone()));
    if job.map_or(0, |j| j.job_modify_index) != plan.job_modify_index {
        return out;
    }
    let stopped: BTreeSet<&str> = plan.stops.iter().map(|st| st.alloc_id.as_str()).collect();
    let mut by_node: BTreeMap<&str, Vec<&crate::state::plan::Placement>> = BTreeMap::new();
    for p in &plan.placements {
        by_node.entry(p.node_id.as_str()).or_default().push(p);
    }
    for (node_id, ps) in by_node {
        let Some(n) = s.nodes.get(node_id).filter(|n| node_schedulable(n)) else {
            continue;
        };
        let live: Vec<&Arc<AllocRecord>> = s
            .allocs
            .values()
            .filter(|a| a.node_id == node_id && a.is_live() && !stopped.contains(a.id.as_str()))
            .collect();
        let cap = node_capacity(n);
        let mut used = Usage::default();
        let mut ports = UsedPorts::of_node(&NodeNet::of(n));
        for a in &live {
            used.add(&alloc_ask(a));
            ports.add_existing(&a.id, &a.ports);
        }
        for p in ps {
            let Some(ask) = job.and_then(|j| j.group(&p.task_group)).map(group_ask) else {
                continue;
            };
            if used.exceeds(&ask, &cap).is_none()
                && (p.ports.is_empty() || ports.try_add(&p.ports).is_ok())
            {
                used.add(&ask);
                out.insert(p.id.clone());
            }
        }
    }
    out
}

#[test]
fn the_plan_check_through_the_kept_indexes_accepts_exactly_what_a_walk_over_the_allocs_did() {
    let (mut compared, mut refused) = (0, 0);
    for seed in 1..=6u64 {
        let mut r = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut below = move |n: u64| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r % n
        };
        let mut w = World::new();
        // Small nodes, so racing plans fill them and apply refuses some placements.
        for i in 0..3 {
            let mut n = port_node(&format!("p{i}"), 20000, 20005);
            n.resources["Cpu"]["CpuShares"] = json!(600);
            w.add_node(n);
        }
        w.nodes(2, 500, 700);
        for round in 0..10 {
            for j in 0..4 {
                let id = format!("j{}", below(6));
                let count = 1 + below(4) as i64;
                let mut spec = simple(&id, "service", count, 50 + 50 * below(4) as i64, 100);
                let net = match below(3) {
                    0 => Some(json!({"ReservedPorts": [{"Label": "s", "Value": 20001}]})),
                    1 => Some(json!({"DynamicPorts": [{"Label": "d"}]})),
                    _ => None,
                };
                if let Some(net) = net {
                    spec["TaskGroups"][0]["Networks"] = json!([net]);
                }
                if round > 0 && j == 0 && below(4) == 0 {
                    let ns = ("default".to_string(), id.clone());
                    if w.s.jobs.contains_key(&ns) {
                        let now = w.now;
                        let _ = w.cmd(Command::JobDeregister {
                            namespace: "default".into(),
                            job_id: id,
                            purge: false,
                            eval_id: format!("stop-{seed}-{round}"),
                            now,
                        });
                        continue;
                    }
                }
                w.submit(spec);
            }
            // Plans made on one snapshot race each other; some allocs end meanwhile.
            let snap = w.s.clone();
            let plans: Vec<_> = snap
                .pending_evals()
                .map(|e| plan_for(&snap, e, w.now, 1))
                .collect();
            let live: Vec<String> =
                w.s.allocs
                    .values()
                    .filter(|a| a.is_live())
                    .map(|a| a.id.to_string())
                    .collect();
            for id in live {
                if below(5) == 0 {
                    w.client_status(&id, AllocClientStatus::Complete);
                }
            }
            for plan in plans {
                let expect = reference_accepted(&w.s, &plan);
                let ids: Vec<String> = plan.placements.iter().map(|p| p.id.clone()).collect();
                let n = ids.len();
                if w.cmd(Command::PlanApply {
                    plan: Box::new(plan),
                })
                .is_err()
                {
                    continue;
                }
                let placed: BTreeSet<String> = ids
                    .into_iter()
                    .filter(|id| w.s.allocs.contains_key(id.as_str()))
                    .collect();
                assert_eq!(placed, expect, "seed {seed} round {round}");
                compared += 1;
                refused += n - placed.len();
            }
            w.run();
            w.assert_no_overcommit();
        }
    }
    assert!(compared > 50, "only {compared} plans compared");
    assert!(refused > 10, "only {refused} placements refused");
}

/// Four jobs filling twenty nodes exactly, planned four ahead of apply: each plan counts the
/// room of the plans in flight, so apply refuses nothing, no node is overcommitted and no
/// job gets more than its count. Planned on the bare state instead, the same plans collide
/// (the overlay is what keeps them apart).
#[test]
fn pipelined_plans_count_the_room_of_the_plans_in_flight_so_apply_refuses_nothing() {
    let fill = |w: &mut World| {
        w.nodes(20, 1000, 1024);
        for j in 0..4 {
            w.submit(simple(&format!("j{j}"), "service", 50, 100, 100));
        }
    };
    let mut w = World::new();
    fill(&mut w);
    let results = w.run_pipelined(4, true);
    let refused: usize = results.iter().map(|r| r.refused).sum();
    assert_eq!(refused, 0, "no plan counted on room another took");
    assert_eq!(results.len(), 4, "one plan per eval");
    for j in 0..4 {
        assert_eq!(w.live(&format!("j{j}")).len(), 50, "job j{j}");
    }
    w.assert_no_overcommit();

    let mut bare = World::new();
    fill(&mut bare);
    let results = bare.run_pipelined(4, false);
    let refused: usize = results.iter().map(|r| r.refused).sum();
    assert!(refused > 0, "without the overlay the plans collide");
    // Apply stays the authority either way.
    bare.assert_no_overcommit();
    for j in 0..4 {
        assert!(
            bare.live(&format!("j{j}")).len() <= 50,
            "job j{j} placed twice"
        );
    }
}

/// A plan in flight whose placements apply refuses (its node drained meanwhile) leaves its
/// eval pending; the pipeline plans it again and places the rest elsewhere, once.
#[test]
fn refused_placements_of_a_pipelined_plan_are_retried_and_placed_once() {
    let mut w = World::new();
    w.nodes(4, 1000, 1024);
    let ea = w.submit(simple("a", "service", 8, 100, 100));
    let eb = w.submit(simple("b", "service", 8, 100, 100));
    let state = Arc::new(w.s.clone());
    let pa = plan_for(&state, &state.evals[&ea], w.now, 1);
    let fa = Flight::of(&state, state.index, &pa, 1);
    let spec = planning_state(&state, [&fa]);
    let pb = plan_for(&spec, &spec.evals[&eb], w.now, 1);
    // A node of plan a becomes ineligible before it applies.
    let gone = pa.placements[0].node_id.clone();
    w.cmd(Command::NodeUpdateEligibility {
        node_id: gone.clone(),
        eligibility: NodeEligibility::Ineligible,
        event: None,
    })
    .unwrap();
    let Applied::Plan(ra) = w.cmd(Command::PlanApply { plan: Box::new(pa) }).unwrap() else {
        panic!("plan a")
    };
    let Applied::Plan(rb) = w.cmd(Command::PlanApply { plan: Box::new(pb) }).unwrap() else {
        panic!("plan b")
    };
    assert!(ra.refused > 0 && ra.retry, "refused on {gone}: {ra:?}");
    assert_eq!(
        w.eval(&ea).status,
        EvalStatus::Pending,
        "left for another try"
    );
    assert_eq!(rb.placed + rb.refused, 8, "plan b: {rb:?}");
    w.run_pipelined(4, true);
    for job in ["a", "b"] {
        let live = w.live(job);
        assert_eq!(live.len(), 8, "job {job} placed exactly its count");
    }
    assert!(
        w.live("a").iter().all(|x| x.node_id != gone),
        "nothing new on the ineligible node"
    );
    assert_eq!(w.eval(&ea).status, EvalStatus::Complete);
    w.assert_no_overcommit();
}

/// While a plan of job x is in flight neither its eval nor another eval of job x is
/// planned (the reconciler would not see the first plan's allocs and place them all again),
/// while another job's eval is; once the plan shows in the state, the overlay adds nothing.
#[test]
fn an_eval_or_job_with_a_plan_in_flight_waits_and_an_applied_plan_adds_no_usage() {
    let mut w = World::new();
    w.nodes(3, 4000, 4096);
    let ex = w.submit(simple("x", "service", 5, 100, 100));
    let now = w.now;
    let ex2 = w.id("eval-");
    w.cmd(Command::JobEvaluate {
        namespace: "default".into(),
        job_id: "x".into(),
        force_reschedule: false,
        eval_id: ex2.clone(),
        now,
    })
    .unwrap();
    let ey = w.submit(simple("y", "service", 2, 100, 100));
    let state = Arc::new(w.s.clone());
    let (first, _) = next_free_eval(&state, w.now, &[]);
    assert_eq!(first.unwrap().id, ex, "the oldest eval first");
    let px = plan_for(&state, &state.evals[&ex], w.now, 1);
    let fx = Flight::of(&state, state.index, &px, 1);
    let (next, _) = next_free_eval(&state, w.now, &[&fx]);
    assert_eq!(next.unwrap().id, ey, "job x's evals wait for its plan");
    // What planning the second eval of x now would do: place all five again.
    let spec = planning_state(&state, [&fx]);
    let again = plan_for(&spec, &spec.evals[&ex2], w.now, 1);
    assert_eq!(again.placements.len(), 5, "so it must wait");
    // The overlay holds plan x's usage until the state shows it applied.
    let used = |s: &ServerState| -> i64 { s.node_usage.values().map(|u| u.cpu).sum() };
    assert_eq!(used(&spec), used(&state) + 500);
    w.cmd(Command::PlanApply { plan: Box::new(px) }).unwrap();
    let after = Arc::new(w.s.clone());
    assert_eq!(used(&after), 500);
    let spec = planning_state(&after, [&fx]);
    assert!(Arc::ptr_eq(&spec, &after), "an applied plan adds nothing");
    let (next, _) = next_free_eval(&after, w.now, &[]);
    assert_eq!(next.unwrap().id, ex2, "free again once answered");
}
