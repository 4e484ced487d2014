//! The node operations of the server state (Nomad's `Node.UpdateDrain`, `UpdateEligibility`,
//! `Evaluate`, `Deregister` and the drainer's `AllocUpdateDesiredTransition` /
//! `BatchNodeUpdateDrain`): their commands' apply, and the read-only helpers their proposers
//! use to choose what a command carries (which jobs get an eval, which allocs migrate).
//! Apply stays deterministic: IDs, times and the set of jobs are in the command.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::{Applied, ApplyError, JobKey, ServerState};
use super::jobs::alloc::AllocRecord;
use super::jobs::eval::EvalRecord;
use super::node_table::{DrainStrategy, LastDrain, Node, NodeEvent, MAX_NODE_EVENTS};
use super::shared_str::SharedStr;
use super::status::{
    AllocClientStatus, AllocDesiredStatus, DrainStatus, EvalStatus, JobType, NodeEligibility,
};

/// `TriggeredBy` of the evals a node change makes.
pub const TRIGGER_NODE_UPDATE: &str = "node-update";
/// `TriggeredBy` of the evals the drainer makes.
pub const TRIGGER_NODE_DRAIN: &str = "node-drain";
/// `DesiredDescription` of an alloc the drainer stops itself (Nomad's `allocMigrating`).
pub const ALLOC_MIGRATING: &str = "alloc is being migrated";
/// `DesiredDescription` of an alloc whose node was purged (Nomad's `allocLost`).
pub const ALLOC_LOST: &str = "alloc is lost since its node is down";

/// One eval a command makes: for this job, with this ID (chosen by the proposer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEval {
    pub namespace: String,
    pub job_id: String,
    pub eval_id: String,
}

/// The answer to a node operation (Nomad's `NodeUpdateResponse` parts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeWrite {
    /// The node's new modify index (0 when the node was not changed).
    pub node_modify_index: u64,
    /// The evals made, in command order (jobs that no longer exist are skipped).
    pub eval_ids: Vec<String>,
    /// The index the evals were made at (0 when none).
    pub eval_create_index: u64,
}

/// The drain request a `NodeUpdateDrain` carries, as the API decoded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainUpdate {
    /// `None` disables the drain.
    pub strategy: Option<DrainStrategy>,
    pub mark_eligible: bool,
    pub meta: BTreeMap<String, String>,
    /// `token:<accessor>` of the caller, or empty.
    pub accessor: String,
}

fn push_events(n: &mut Node, events: impl IntoIterator<Item = NodeEvent>, index: u64) {
    for mut e in events {
        e.create_index = index;
        n.events.push(e);
    }
    let extra = n.events.len().saturating_sub(MAX_NODE_EVENTS);
    n.events.drain(..extra);
}

fn known(state: &ServerState, id: &str) -> Result<Node, ApplyError> {
    state
        .nodes
        .get(id)
        .map(|n| (**n).clone())
        .ok_or(ApplyError::UnknownNode)
}

/// Make a pending eval per job of `evals` that still exists, about `node` at `node_index`.
fn make_evals(
    state: &mut ServerState,
    evals: &[JobEval],
    trigger: &str,
    (node_id, node_index): (&str, u64),
    now: i64,
    index: u64,
) -> NodeWrite {
    let mut out = NodeWrite::default();
    for je in evals {
        let key: JobKey = (je.namespace.clone(), je.job_id.clone());
        let Some(job) = state.jobs.get(&key).cloned() else {
            continue;
        };
        let mut e = EvalRecord::new_at(&job, trigger, index, &je.eval_id, now);
        e.status = EvalStatus::Pending;
        e.node_id = node_id.to_string();
        e.node_modify_index = node_index;
        state.put_eval(e);
        out.eval_ids.push(je.eval_id.clone());
    }
    if !out.eval_ids.is_empty() {
        out.eval_create_index = index;
    }
    out
}

/// The end of a node write that may queue work: its event recorded, the node stored, and
/// its node-update evals made.
fn store_with_evals(
    state: &mut ServerState,
    mut n: Node,
    (event, evals): (&Option<NodeEvent>, &[JobEval]),
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let node_id = n.id.clone();
    push_events(&mut n, event.clone(), index);
    store_node(state, n, index);
    let mut w = make_evals(
        state,
        evals,
        TRIGGER_NODE_UPDATE,
        (&node_id, index),
        now,
        index,
    );
    w.node_modify_index = index;
    Ok(Applied::NodeOp(w))
}

fn store_node(state: &mut ServerState, mut n: Node, index: u64) {
    n.modify_index = index;
    state.nodes.insert(n.id.clone(), Arc::new(n));
}

/// `NodeUpdateDrain`: set, update or disable a node's drain. Setting one makes the node
/// ineligible; disabling one with `mark_eligible` makes it eligible again (and its evals).
pub(crate) fn update_drain(
    state: &mut ServerState,
    node_id: &str,
    update: &DrainUpdate,
    (event, evals): (&Option<NodeEvent>, &[JobEval]),
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let mut n = known(state, node_id)?;
    match &update.strategy {
        Some(strategy) => {
            let mut strategy = strategy.clone();
            if let Some(old) = &n.drain_strategy {
                strategy.started_at = old.started_at;
            }
            n.drain_strategy = Some(strategy);
            n.drain = true;
            n.scheduling_eligibility = NodeEligibility::Ineligible;
            match &mut n.last_drain {
                Some(last) if last.status == DrainStatus::Draining => {
                    last.updated_at = now;
                    last.meta = update.meta.clone();
                }
                _ => {
                    n.last_drain = Some(LastDrain {
                        started_at: now,
                        updated_at: now,
                        status: DrainStatus::Draining,
                        accessor_id: update.accessor.clone(),
                        meta: update.meta.clone(),
                    })
                }
            }
        }
        None => {
            if n.drain_strategy.take().is_some() {
                if let Some(last) = &mut n.last_drain {
                    last.status = DrainStatus::Canceled;
                    last.updated_at = now;
                }
            }
            n.drain = false;
            if update.mark_eligible {
                n.scheduling_eligibility = NodeEligibility::Eligible;
            }
        }
    }
    store_with_evals(state, n, (event, evals), now, index)
}

/// `NodeDrainComplete`: the drainer found the node drained (or its deadline passed).
pub(crate) fn drain_complete(
    state: &mut ServerState,
    node_id: &str,
    event: &NodeEvent,
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let mut n = known(state, node_id)?;
    if n.drain_strategy.take().is_none() {
        // Disabled (or completed) meanwhile: nothing to complete.
        return Ok(Applied::NodeOp(NodeWrite::default()));
    }
    n.drain = false;
    if let Some(last) = &mut n.last_drain {
        last.status = DrainStatus::Complete;
        last.updated_at = now;
    }
    push_events(&mut n, [event.clone()], index);
    store_node(state, n, index);
    Ok(Applied::NodeOp(NodeWrite {
        node_modify_index: index,
        ..NodeWrite::default()
    }))
}

/// `NodeSetEligibility`: a node's scheduling eligibility, refused for `eligible` while it
/// drains; made eligible, it gets its node-update evals.
pub(crate) fn set_eligibility(
    state: &mut ServerState,
    node_id: &str,
    eligibility: NodeEligibility,
    (event, evals): (&Option<NodeEvent>, &[JobEval]),
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let mut n = known(state, node_id)?;
    if eligibility == NodeEligibility::Eligible && n.drain_strategy.is_some() {
        return Err(ApplyError::NodeDraining);
    }
    n.scheduling_eligibility = eligibility;
    store_with_evals(state, n, (event, evals), now, index)
}

/// `NodeEvaluate`: node-update evals for the node's jobs; the node is not changed.
pub(crate) fn evaluate(
    state: &mut ServerState,
    node_id: &str,
    evals: &[JobEval],
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let n = known(state, node_id)?;
    let w = make_evals(
        state,
        evals,
        TRIGGER_NODE_UPDATE,
        (node_id, n.modify_index),
        now,
        index,
    );
    Ok(Applied::NodeOp(w))
}

/// `NodeDeregister` (purge): the node is removed; its allocs that were not done are lost
/// (desired stop, client status `lost`), and its jobs get node-update evals.
pub(crate) fn deregister(
    state: &mut ServerState,
    node_id: &str,
    evals: &[JobEval],
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let n = known(state, node_id)?;
    state.nodes.remove(node_id);
    let lost: Vec<String> = state
        .allocs_on(node_id)
        .filter(|a| !a.terminal())
        .map(|a| a.id.to_string())
        .collect();
    for id in lost {
        state.update_alloc(&id, |a| {
            if a.desired_status == AllocDesiredStatus::Run {
                a.desired_status = AllocDesiredStatus::Stop;
                a.desired_description = SharedStr::common(ALLOC_LOST);
            }
            a.client_status = AllocClientStatus::Lost;
            a.modify_index = index;
            a.alloc_modify_index = index;
            a.modify_time = now;
        });
    }
    let w = make_evals(
        state,
        evals,
        TRIGGER_NODE_UPDATE,
        (node_id, n.modify_index),
        now,
        index,
    );
    Ok(Applied::NodeOp(w))
}

/// `AllocMigrate`: the drainer marks allocs `DesiredTransition.Migrate` and makes a pending
/// `node-drain` eval per job. With `stop` (no scheduler stops them, or no other node could
/// take them) the allocs are also stopped as the scheduler would ("alloc is being migrated").
/// Allocs unknown or already done are skipped.
pub(crate) fn migrate(
    state: &mut ServerState,
    alloc_ids: &[String],
    evals: &[JobEval],
    stop: bool,
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let mut node_id = String::new();
    for id in alloc_ids {
        if state.allocs.get(id.as_str()).is_none_or(|a| a.terminal()) {
            continue;
        }
        state.update_alloc(id, |a| {
            a.desired_transition.migrate = Some(true);
            if stop && a.desired_status == AllocDesiredStatus::Run {
                a.desired_status = AllocDesiredStatus::Stop;
                a.desired_description = SharedStr::common(ALLOC_MIGRATING);
            }
            a.modify_index = index;
            a.alloc_modify_index = index;
            a.modify_time = now;
            if node_id.is_empty() {
                node_id = a.node_id.to_string();
            }
        });
    }
    let node_index = state.nodes.get(&node_id).map_or(0, |n| n.modify_index);
    let w = make_evals(
        state,
        evals,
        TRIGGER_NODE_DRAIN,
        (&node_id, node_index),
        now,
        index,
    );
    Ok(Applied::NodeOp(w))
}

/// Whether a datacenter pattern of a job (`*` globs) matches `dc`.
pub fn dc_matches(pattern: &str, dc: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == dc,
        Some((head, tail)) => {
            dc.len() >= head.len()
                && dc.starts_with(head)
                && dc_tail_matches(tail, &dc[head.len()..])
        }
    }
}

fn dc_tail_matches(pattern: &str, rest: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    (0..=rest.len())
        .filter(|i| rest.is_char_boundary(*i))
        .any(|i| dc_matches(pattern, &rest[i..]))
}

/// The jobs a node change evaluates again (Nomad's `createNodeEvals`): service jobs with an
/// alloc on the node that is not both server- and client-terminal, batch jobs with an alloc
/// not client-terminal (no sysbatch), and every running system job whose datacenters and
/// node pool match the node. Sorted, without duplicates.
pub fn node_update_jobs(state: &ServerState, node: &Node) -> Vec<JobKey> {
    let mut jobs: std::collections::BTreeSet<JobKey> = std::collections::BTreeSet::new();
    for a in state.allocs.values().filter(|a| a.node_id == node.id) {
        let relevant = match a.job.job_type() {
            JobType::Service => !(a.terminal() && a.desired_status != AllocDesiredStatus::Run),
            JobType::Batch => !a.terminal(),
            JobType::System => true,
            JobType::Sysbatch => false,
        };
        if relevant {
            jobs.insert((a.namespace.to_string(), a.job_id.to_string()));
        }
    }
    for j in state.jobs.values() {
        if j.job_type() != JobType::System || j.stop {
            continue;
        }
        let pool = j.node_pool.as_deref().unwrap_or("default");
        let dcs = j.datacenters.clone().unwrap_or_else(|| vec!["*".into()]);
        if (pool == "all" || pool == node.node_pool)
            && dcs.iter().any(|p| dc_matches(p, &node.datacenter))
        {
            jobs.insert((j.namespace.clone(), j.id.clone()));
        }
    }
    jobs.into_iter().collect()
}

/// One fresh eval per job (IDs chosen here, by the proposer).
pub fn evals_for(jobs: &[JobKey]) -> Vec<JobEval> {
    jobs.iter()
        .map(|(ns, id)| JobEval {
            namespace: ns.clone(),
            job_id: id.clone(),
            eval_id: uuid::Uuid::new_v4().to_string(),
        })
        .collect()
}

/// The allocs of a node, in creation order.
pub fn allocs_on_node<'a>(state: &'a ServerState, node_id: &str) -> Vec<&'a Arc<AllocRecord>> {
    let mut v: Vec<&Arc<AllocRecord>> = state
        .allocs
        .values()
        .filter(|a| a.node_id == node_id)
        .collect();
    v.sort_by_key(|a| (a.create_index, a.id.clone()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::{apply, Command};
    use crate::state::jobs::spec::Job;
    use crate::state::jobs::NodeInfo;

    fn node(id: &str) -> Node {
        let text = serde_json::json!({"id": id, "name": id, "datacenter": "dc1",
            "http_addr": "", "node_pool": "default", "node_class": "", "version": "0",
            "attributes": {}, "meta": {}, "resources": null, "drivers": {},
            "status": "ready", "status_description": "", "status_updated_at": 0,
            "scheduling_eligibility": "eligible", "drain": false, "events": [],
            "create_index": 0, "modify_index": 0});
        serde_json::from_value(text).expect("a node row of the old form still loads")
    }

    fn je(job: &str, eval: &str) -> JobEval {
        JobEval {
            namespace: "default".into(),
            job_id: job.into(),
            eval_id: eval.into(),
        }
    }

    fn commands() -> Vec<Command> {
        let mut j = Job::from_json(serde_json::json!({"ID": "web", "TaskGroups": [{"Name": "g",
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        j.canonicalize("global");
        let strategy = DrainStrategy {
            deadline_ns: 10,
            force_deadline: 110,
            ignore_system_jobs: false,
            started_at: 100,
        };
        let drain = |strategy: Option<DrainStrategy>, at: i64| Command::NodeUpdateDrain {
            node_id: "n1".into(),
            update: Box::new(DrainUpdate {
                strategy,
                mark_eligible: true,
                meta: [("m".to_string(), "v".to_string())].into(),
                accessor: "token:x".into(),
            }),
            event: None,
            evals: vec![je("web", &format!("d{at}")), je("gone", "g1")],
            now: at,
        };
        vec![
            Command::NodeRegister {
                node: Box::new(node("n1")),
                now: 1,
            },
            Command::JobRegister {
                job: Box::new(j),
                node: NodeInfo {
                    id: "n1".into(),
                    name: "n1".into(),
                    unplaceable: None,
                },
                eval_id: "e1".into(),
                blocked_eval_id: String::new(),
                alloc_ids: vec!["a1".into()],
                now: 2,
            },
            drain(Some(strategy.clone()), 100),
            // A client registering again keeps the drain.
            Command::NodeRegister {
                node: Box::new(node("n1")),
                now: 101,
            },
            Command::NodeSetEligibility {
                node_id: "n1".into(),
                eligibility: NodeEligibility::Eligible,
                event: None,
                evals: Vec::new(),
                now: 102,
            },
            drain(
                Some(DrainStrategy {
                    started_at: 103,
                    ..strategy
                }),
                103,
            ),
            Command::AllocMigrate {
                alloc_ids: vec!["a1".into(), "nope".into()],
                evals: vec![je("web", "m1")],
                stop: false,
                now: 104,
            },
            drain(None, 105),
            Command::NodeEvaluate {
                node_id: "n1".into(),
                evals: vec![je("web", "v1")],
                now: 106,
            },
            Command::NodeDeregister {
                node_id: "n1".into(),
                evals: vec![je("web", "p1")],
                now: 107,
            },
            Command::NodeDeregister {
                node_id: "n1".into(),
                evals: vec![je("web", "p2")],
                now: 108,
            },
        ]
    }

    #[test]
    fn node_operations_apply_deterministically_and_do_what_nomad_does() {
        let run = |cmds: &[Command]| {
            let mut s = ServerState::default();
            let oks: Vec<bool> = cmds
                .iter()
                .enumerate()
                .map(|(i, c)| apply(&mut s, c, 10 + i as u64).is_ok())
                .collect();
            (s, oks)
        };
        let cmds = commands();
        // Stop before the purge to look at the drained node.
        let (s, oks) = run(&cmds[..8]);
        assert_eq!(oks, [true, true, true, true, false, true, true, true]);
        let n = &s.nodes["n1"];
        assert!(n.drain_strategy.is_none() && !n.drain);
        assert_eq!(n.scheduling_eligibility, NodeEligibility::Eligible);
        let last = n.last_drain.as_ref().unwrap();
        assert_eq!(last.status, DrainStatus::Canceled);
        assert_eq!((last.started_at, last.updated_at), (100, 105));
        let a = &s.allocs["a1"];
        assert!(a.desired_transition.should_migrate());
        assert_eq!(a.desired_status, AllocDesiredStatus::Run, "no stop asked");
        assert_eq!(s.evals["m1"].triggered_by, TRIGGER_NODE_DRAIN);
        assert_eq!(s.evals["d105"].status, EvalStatus::Pending);
        assert!(
            !s.evals.contains_key("g1"),
            "no eval for a job that is gone"
        );

        let (s, oks) = run(&cmds);
        assert_eq!(&oks[8..], [true, true, false]);
        assert!(!s.nodes.contains_key("n1"));
        let a = &s.allocs["a1"];
        assert_eq!(a.client_status, AllocClientStatus::Lost);
        assert_eq!(a.desired_description, ALLOC_LOST);
        assert_eq!(s.evals["p1"].node_id, "n1");
        assert_eq!(s.evals["v1"].triggered_by, TRIGGER_NODE_UPDATE);
        let wire: Vec<Command> =
            serde_json::from_slice(&serde_json::to_vec(&cmds).unwrap()).unwrap();
        assert_eq!(
            run(&wire).0.to_bytes().unwrap(),
            s.to_bytes().unwrap(),
            "replay through JSON gives the same state"
        );
        let back = ServerState::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back.to_bytes().unwrap(), s.to_bytes().unwrap());
    }

    #[test]
    fn datacenter_globs_match_as_nomads() {
        assert!(dc_matches("*", "dc1"));
        assert!(dc_matches("dc*", "dc1"));
        assert!(dc_matches("d*1", "dc1"));
        assert!(dc_matches("dc1", "dc1"));
        assert!(!dc_matches("dc2", "dc1"));
        assert!(!dc_matches("e*", "dc1"));
        assert!(dc_matches("*c*", "dc1"));
    }
}
