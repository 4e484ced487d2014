//! `nomadlet bench-scheduler [NODES] [ALLOCS]` (hidden): placements per second on one server.
//! Nodes are registered with `NodeRegister` commands, jobs submitted with `JobSubmit`; then
//! the scheduler places every alloc. Two runs: apply in memory (the scheduler and the plan
//! check alone), and through the durable command log with the `scheduler` thread (what an
//! agent does: every plan fsynced before it is published).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{next_eval, plan_for, Scheduler};
use crate::state::command::{apply, Command, ServerState};
use crate::state::jobs::spec::Job;
use crate::state::jobs::Workloads;
use crate::state::node_table::Node;
use crate::state::status::{NodeEligibility, NodeStatus};
use crate::state::IndexCounter;
use crate::store::StoreError;

/// Allocs per job in the bench (jobs = allocs / this).
pub const ALLOCS_PER_JOB: usize = 1000;
/// The durable run gives up after this long.
pub const DURABLE_DEADLINE: Duration = Duration::from_secs(600);

/// A simulated node: 4 cores of 2 GHz, 16 GiB, 100 GiB of disk, raw_exec.
pub fn sim_node(i: usize) -> Node {
    Node {
        id: format!("{:08x}-0000-4000-8000-{:012x}", i, i),
        name: format!("sim-{i}").into(),
        datacenter: format!("dc{}", i % 3 + 1),
        http_addr: "127.0.0.1:4646".into(),
        tls_enabled: false,
        node_pool: "default".into(),
        node_class: String::new(),
        version: "0".into(),
        attributes: [
            ("kernel.name".to_string(), "linux".to_string()),
            ("driver.raw_exec".to_string(), "1".to_string()),
        ]
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into(),
        meta: BTreeMap::new().into(),
        resources: json!({"Cpu": {"CpuShares": 8000}, "Memory": {"MemoryMB": 16384},
            "Disk": {"DiskMB": 102400}})
        .into(),
        drivers: json!({"raw_exec": {"Detected": true, "Healthy": true}}).into(),
        status: NodeStatus::Ready,
        status_description: String::new(),
        status_updated_at: 0,
        scheduling_eligibility: NodeEligibility::Eligible,
        drain: false,
        events: Vec::new(),
        create_index: 0,
        modify_index: 0,
        secret_id: String::new(),
        drain_strategy: None,
        last_drain: None,
    }
}

/// A service job of `count` small allocs (100 MHz, 64 MB, 10 MB disk).
pub fn sim_job(name: &str, count: usize) -> Job {
    let mut j = Job::from_json(json!({"ID": name, "Datacenters": ["dc*"], "TaskGroups": [{
        "Name": "g", "Count": count, "EphemeralDisk": {"SizeMB": 10},
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"},
            "Resources": {"CPU": 100, "MemoryMB": 64}}]}]}))
    .unwrap_or_default();
    j.canonicalize("global");
    j
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// In memory: schedule and apply every eval; returns (placements, scheduling time).
pub fn in_memory(nodes: usize, allocs: usize) -> (u64, Duration) {
    let mut s = ServerState::default();
    let mut index = 1;
    for i in 0..nodes {
        let cmd = Command::NodeRegister {
            node: Box::new(sim_node(i)),
            now: 1,
        };
        let _ = apply(&mut s, &cmd, index);
        index += 1;
    }
    let jobs = allocs.div_ceil(ALLOCS_PER_JOB);
    for j in 0..jobs {
        let count = ALLOCS_PER_JOB.min(allocs - j * ALLOCS_PER_JOB);
        let cmd = Command::JobSubmit {
            job: Box::new(sim_job(&format!("bench-{j}"), count)),
            eval_id: format!("eval-{j}"),
            now: 2,
            submission: None,
        };
        let _ = apply(&mut s, &cmd, index);
        index += 1;
    }
    let started = Instant::now();
    let mut placed = 0;
    let mut planning = Duration::ZERO;
    loop {
        let (Some(eval), _) = next_eval(&s, 3) else {
            break;
        };
        let t = Instant::now();
        let plan = plan_for(&s, &eval, 3, 1);
        planning += t.elapsed();
        placed += plan.placements.len() as u64;
        if apply(
            &mut s,
            &Command::PlanApply {
                plan: Box::new(plan),
            },
            index,
        )
        .is_err()
        {
            break;
        }
        index += 1;
    }
    let took = started.elapsed();
    println!(
        "  (planning {:.2} s, applying {:.2} s)",
        planning.as_secs_f64(),
        (took - planning).as_secs_f64()
    );
    (placed, took)
}

/// Through the command log in a temp dir with the `scheduler` thread: from the first job
/// submitted until every alloc is placed.
pub fn durable(nodes: usize, allocs: usize) -> Result<(u64, Duration), DurableError> {
    let dir = std::env::temp_dir().join(format!("nomadlet-bench-sched-{}", uuid::Uuid::new_v4()));
    let counter = Arc::new(IndexCounter::default());
    let w = Arc::new(Workloads::load(&dir, counter.clone())?);
    for i in 0..nodes {
        w.register_node(sim_node(i))?;
    }
    let sched = Scheduler::start(w.clone(), counter.clone()).map_err(DurableError::Start)?;
    let started = Instant::now();
    let jobs = allocs.div_ceil(ALLOCS_PER_JOB);
    for j in 0..jobs {
        let count = ALLOCS_PER_JOB.min(allocs - j * ALLOCS_PER_JOB);
        w.register(sim_job(&format!("bench-{j}"), count))?;
    }
    let deadline = Instant::now() + DURABLE_DEADLINE;
    loop {
        let generation = counter.generation();
        if w.state().allocs.len() >= allocs {
            break;
        }
        if Instant::now() >= deadline {
            return Err(DurableError::Deadline);
        }
        counter.wait_for_change(generation, Instant::now() + Duration::from_secs(1));
    }
    let took = started.elapsed();
    let placed = w.state().allocs.len() as u64;
    let refused = sched
        .stats
        .refused
        .load(std::sync::atomic::Ordering::Relaxed);
    if refused > 0 {
        println!("({refused} placements refused at apply and planned again)");
    }
    sched.shutdown();
    w.shutdown();
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((placed, took))
}

/// Why the durable run stopped short.
#[derive(Debug)]
pub enum DurableError {
    /// The state store refused a write (or to open).
    Store(StoreError),
    /// The scheduler thread did not start.
    Start(std::io::Error),
    /// Not every alloc was placed by [`DURABLE_DEADLINE`].
    Deadline,
}

impl From<StoreError> for DurableError {
    fn from(e: StoreError) -> Self {
        DurableError::Store(e)
    }
}

impl std::fmt::Display for DurableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurableError::Store(e) => write!(f, "{e}"),
            DurableError::Start(e) => write!(f, "{e}"),
            DurableError::Deadline => f.write_str("durable run did not place every alloc in time"),
        }
    }
}

impl std::error::Error for DurableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DurableError::Store(e) => Some(e),
            DurableError::Start(e) => Some(e),
            DurableError::Deadline => None,
        }
    }
}

/// The subcommand: prints both figures. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let nodes = args.first().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let allocs = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let (placed, took) = in_memory(nodes, allocs);
    println!(
        "scheduler in memory: {placed} placements over {nodes} nodes in {:.2} s = {:.0} placements/s",
        took.as_secs_f64(),
        rate(placed, took)
    );
    match durable(nodes, allocs) {
        Ok((placed, took)) => {
            println!(
                "scheduler through the command log: {placed} placements over {nodes} nodes in {:.2} s = {:.0} placements/s",
                took.as_secs_f64(),
                rate(placed, took)
            );
            0
        }
        Err(e) => {
            eprintln!("bench-scheduler: {e}");
            1
        }
    }
}
