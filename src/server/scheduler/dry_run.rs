//! `nomad job plan`: the real scheduler run on a copy of the published state with the job
//! submitted into it, never proposed. The copy is O(1) (`imbl` tables) and apply is
//! deterministic, so the plan is exactly what the `scheduler` thread would make on this
//! snapshot; the outcome is summed per group as Nomad's `DesiredUpdates`.

use std::collections::BTreeMap;

use crate::state::command::{apply, Applied, Command, ServerState};
use crate::state::jobs::eval::EvalRecord;
use crate::state::jobs::spec::Job;
use crate::state::plan::{Plan, DESC_LOST};
use crate::state::status::{AllocDesiredStatus, EvalStatus};

use super::reconcile::{self, DESC_MIGRATING, DESC_RESCHEDULED};

/// Nomad's `DesiredUpdates` of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredUpdates {
    pub ignore: u64,
    pub place: u64,
    pub migrate: u64,
    pub stop: u64,
    pub in_place_update: u64,
    pub destructive_update: u64,
    pub reschedule_now: u64,
    pub reschedule_later: u64,
}

/// What the dry run found.
#[derive(Clone, Debug)]
pub struct DryRun {
    /// The plan the scheduler made.
    pub plan: Plan,
    /// Per group (of the job, and of allocs whose group it dropped).
    pub desired: BTreeMap<String, DesiredUpdates>,
    /// The evals the plan would make: its blocked eval, its delayed reschedules.
    pub created_evals: Vec<EvalRecord>,
}

/// Plan `job` (canonicalized, validated) on `state` at `now` (unix ns); `None` when apply
/// refuses the submission (it never does for a valid job).
pub fn dry_run(state: &ServerState, job: &Job, now: i64) -> Option<DryRun> {
    let mut s = state.clone();
    let index = s.index + 1;
    let eval_id = uuid::Uuid::new_v4().to_string();
    let cmd = Command::JobSubmit {
        job: Box::new(job.clone()),
        eval_id: eval_id.clone(),
        now,
        submission: None,
    };
    match apply(&mut s, &cmd, index) {
        Ok(Applied::Job(_)) => {}
        _ => return None,
    }
    let eval = s.evals.get(&eval_id).cloned()?;
    let mut new_id = || uuid::Uuid::new_v4().to_string();
    let plan = reconcile::schedule(&s, &eval, now, &mut new_id);
    let key = (job.namespace.clone(), job.id.clone());
    let stored = s.jobs.get(&key).cloned();
    let mut desired: BTreeMap<String, DesiredUpdates> = job
        .task_groups
        .iter()
        .map(|g| (g.name.clone(), DesiredUpdates::default()))
        .collect();
    let stop_of: BTreeMap<&str, &str> = plan
        .stops
        .iter()
        .map(|st| (st.alloc_id.as_str(), st.description.as_str()))
        .collect();
    let group_of = |id: &str| s.allocs.get(id).map(|a| a.task_group.clone());
    let mut replaced: BTreeMap<&str, ()> = BTreeMap::new();
    for p in &plan.placements {
        let d = desired.entry(p.task_group.clone()).or_default();
        match stop_of.get(p.previous_alloc.as_str()) {
            Some(&reconcile::DESC_JOB_UPDATE) => d.destructive_update += 1,
            Some(&DESC_MIGRATING) => d.migrate += 1,
            Some(&DESC_RESCHEDULED) => {
                d.place += 1;
                d.reschedule_now += 1;
            }
            _ => d.place += 1,
        }
        if stop_of.contains_key(p.previous_alloc.as_str()) {
            replaced.insert(p.previous_alloc.as_str(), ());
        }
    }
    for st in &plan.stops {
        if replaced.contains_key(st.alloc_id.as_str()) && st.description != DESC_LOST {
            continue;
        }
        if let Some(g) = group_of(&st.alloc_id) {
            desired.entry(g.to_string()).or_default().stop += 1;
        }
    }
    for (g, q) in &plan.queued {
        desired.entry(g.clone()).or_default().place += q;
    }
    for f in &plan.follow_ups {
        for id in &f.alloc_ids {
            if let Some(g) = group_of(id) {
                desired.entry(g.to_string()).or_default().reschedule_later += 1;
            }
        }
    }
    for a in s.allocs_of(&key) {
        if a.desired_status == AllocDesiredStatus::Run && !stop_of.contains_key(a.id.as_str()) {
            desired.entry(a.task_group.to_string()).or_default().ignore += 1;
        }
    }
    let mut created_evals = Vec::new();
    if let Some(job) = &stored {
        let mut done = (*eval).clone();
        done.status = EvalStatus::Complete;
        done.queued_allocations = plan.queued.clone();
        done.failed_tg_allocs = plan.failed_tg_allocs.clone();
        if !plan.blocked_eval_id.is_empty() {
            created_evals.push(EvalRecord::blocked_after(&done, job, &plan.blocked_eval_id));
        }
        for f in &plan.follow_ups {
            let mut e = EvalRecord::pending_at(
                job,
                crate::state::plan::TRIGGER_RESCHEDULE,
                0,
                &f.eval_id,
                now,
            );
            e.create_index = 0;
            e.modify_index = 0;
            e.wait_until = f.wait_until;
            e.previous_eval = eval.id.clone();
            created_evals.push(e);
        }
    }
    Some(DryRun {
        plan,
        desired,
        created_evals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::scheduler::{run_pending, test_node};
    use crate::state::jobs::Workloads;
    use crate::state::IndexCounter;
    use std::sync::Arc;

    fn job(count: i64, cmd: &str) -> Job {
        let mut j = Job::from_json(serde_json::json!({"ID": "web", "TaskGroups": [{"Name": "g",
            "Count": count, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": cmd}}]}]}))
        .unwrap();
        j.canonicalize("global");
        j
    }

    #[test]
    fn the_dry_run_counts_what_the_scheduler_would_do_and_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("nomadlet-dry-{}", uuid::Uuid::new_v4()));
        let w = Workloads::load(&dir, Arc::new(IndexCounter::default())).unwrap();
        w.register_node(test_node("n1")).unwrap();
        let now = crate::time::unix_now_nanos();
        let d = dry_run(&w.state(), &job(3, "/bin/true"), now).unwrap();
        assert_eq!(d.desired["g"].place, 3);
        assert!(w.state().jobs.is_empty(), "nothing was written");
        w.register(job(3, "/bin/true")).unwrap();
        run_pending(&w);
        let before = w.state().to_bytes().unwrap();
        let d = dry_run(&w.state(), &job(3, "/bin/true"), now).unwrap();
        assert_eq!(
            d.desired["g"],
            DesiredUpdates {
                ignore: 3,
                ..Default::default()
            }
        );
        let d = dry_run(&w.state(), &job(2, "/bin/false"), now).unwrap();
        assert_eq!(
            d.desired["g"],
            DesiredUpdates {
                destructive_update: 2,
                stop: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            w.state().to_bytes().unwrap(),
            before,
            "the published state is untouched"
        );
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
