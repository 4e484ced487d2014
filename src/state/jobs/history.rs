//! A job's life beyond its current spec: the versions Nomad keeps (`/versions`, `revert`,
//! `stable`), the source each version was submitted with (`/submission`), the job's
//! `Status` kept on the job itself (so a status change moves its `ModifyIndex` and wakes a
//! blocking query on it), and the apply side of `scale` and `evaluate`. Every change here
//! runs inside `state::command::apply`: deterministic, IDs and times from the command.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::alloc::AllocRecord;
use super::eval::EvalRecord;
use super::spec::Job;
use crate::state::command::{ApplyError, Command, JobKey, JobWrite, ServerState};
use crate::state::status::AllocClientStatus;

/// How many versions of a job are kept (Nomad's `JobTrackedVersions`); older ones are
/// dropped as new ones come.
pub const JOB_TRACKED_VERSIONS: u64 = 6;

/// The largest job source kept with a version (Nomad's `job_max_source_size`, 1 MB): a
/// larger submission registers the job but its source is not kept.
pub const MAX_SUBMISSION_SOURCE: usize = 1024 * 1024;

/// Nomad's `TriggeredBy` of a scale's evaluation.
pub const TRIGGER_SCALING: &str = "job-scaling";

/// The original source a job was submitted with (`JobSubmission`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobSubmission {
    pub source: String,
    pub format: String,
    pub variable_flags: std::collections::BTreeMap<String, String>,
    pub variables: String,
}

/// One kept version of a job: the job as it was (shared with the current job while it is
/// the current version) and its submission, if one came with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobVersion {
    pub job: Arc<Job>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<JobSubmission>,
}

/// The key of a kept version: `(namespace, job ID, version)`.
pub type VersionKey = (String, String, u64);

fn version_key(job: &Job) -> VersionKey {
    (job.namespace.clone(), job.id.clone(), job.version)
}

/// The kept versions of a job, oldest first.
pub fn versions<'a>(
    state: &'a ServerState,
    key: &JobKey,
) -> impl Iterator<Item = &'a Arc<JobVersion>> + 'a {
    let lo = (key.0.clone(), key.1.clone(), 0);
    let hi = (key.0.clone(), key.1.clone(), u64::MAX);
    state.job_versions.range(lo..=hi).map(|(_, v)| v)
}

/// The versions a reader sees, newest first: the kept ones with the current job standing
/// for its own version (its status and indexes move after the version was kept). A job
/// stored before versions were kept shows its current version alone.
pub fn versions_newest_first(state: &ServerState, key: &JobKey) -> Vec<Arc<Job>> {
    let Some(current) = state.jobs.get(key) else {
        return Vec::new();
    };
    let mut out: Vec<Arc<Job>> = versions(state, key)
        .filter(|v| v.job.version != current.version)
        .map(|v| v.job.clone())
        .collect();
    out.push(current.clone());
    out.sort_by_key(|j| std::cmp::Reverse(j.version));
    out
}

/// One kept version of a job (the current job for the current version).
pub fn version_of(state: &ServerState, key: &JobKey, version: u64) -> Option<Arc<Job>> {
    let current = state.jobs.get(key)?;
    if current.version == version {
        return Some(current.clone());
    }
    state
        .job_versions
        .get(&(key.0.clone(), key.1.clone(), version))
        .map(|v| v.job.clone())
}

/// The submission kept with a version.
pub fn submission_of(state: &ServerState, key: &JobKey, version: u64) -> Option<JobSubmission> {
    state
        .job_versions
        .get(&(key.0.clone(), key.1.clone(), version))
        .and_then(|v| v.submission.clone())
}

/// Keep `job` (just stored as a new version) with its submission, and drop the versions
/// beyond [`JOB_TRACKED_VERSIONS`] (the oldest first; a stable one is kept over an older
/// unstable one, as Nomad does, only while another can go).
pub(crate) fn record_version(
    state: &mut ServerState,
    job: &Arc<Job>,
    submission: Option<&JobSubmission>,
) {
    let submission = submission
        .filter(|s| s.source.len() <= MAX_SUBMISSION_SOURCE)
        .cloned();
    state.job_versions.insert(
        version_key(job),
        Arc::new(JobVersion {
            job: job.clone(),
            submission,
        }),
    );
    let key: JobKey = (job.namespace.clone(), job.id.clone());
    let kept: Vec<(u64, bool)> = versions(state, &key)
        .map(|v| (v.job.version, v.job.stable))
        .collect();
    let extra = kept.len().saturating_sub(JOB_TRACKED_VERSIONS as usize);
    if extra == 0 {
        return;
    }
    // Drop the oldest unstable versions first, then the oldest of the rest; never the newest.
    let newest = kept.iter().map(|(v, _)| *v).max().unwrap_or(0);
    let mut order: Vec<(bool, u64)> = kept
        .iter()
        .filter(|(v, _)| *v != newest)
        .map(|(v, stable)| (*stable, *v))
        .collect();
    order.sort();
    for (_, v) in order.into_iter().take(extra) {
        state
            .job_versions
            .remove(&(key.0.clone(), key.1.clone(), v));
    }
}

/// A purged job's versions go with it.
pub(crate) fn remove_versions(state: &mut ServerState, key: &JobKey) {
    let gone: Vec<VersionKey> = versions(state, key).map(|v| version_key(&v.job)).collect();
    for k in gone {
        state.job_versions.remove(&k);
    }
}

/// Whether an alloc belongs to this incarnation of its job (the same `CreateIndex`): a
/// purged job's allocs never count for a job registered later under the same ID.
pub fn of_incarnation(job: &Job, a: &AllocRecord) -> bool {
    a.job.create_index == job.create_index || a.job.create_index == 0
}

/// The jobs whose allocs `cmd` (just applied) may have changed.
fn touched_jobs(state: &ServerState, cmd: &Command) -> BTreeSet<JobKey> {
    let of_alloc = |id: &str| {
        state
            .allocs
            .get(id)
            .map(|a| (a.namespace.to_string(), a.job_id.to_string()))
    };
    let on_node = |id: &str| -> BTreeSet<JobKey> {
        state
            .allocs_on(id)
            .map(|a| (a.namespace.to_string(), a.job_id.to_string()))
            .collect()
    };
    let job =
        |ns: &str, id: &str| -> BTreeSet<JobKey> { [(ns.to_string(), id.to_string())].into() };
    match cmd {
        Command::JobRegister { job: j, .. }
        | Command::JobSubmit { job: j, .. }
        | Command::JobLaunch { job: j, .. } => job(&j.namespace, &j.id),
        Command::JobDeregister {
            namespace, job_id, ..
        }
        | Command::JobStop {
            namespace, job_id, ..
        }
        | Command::JobScale {
            namespace, job_id, ..
        }
        | Command::JobEvaluate {
            namespace, job_id, ..
        } => job(namespace, job_id),
        Command::PlanApply { plan } => job(&plan.namespace, &plan.job_id),
        Command::AllocStop { alloc_id, .. }
        | Command::AllocStopQueued { alloc_id, .. }
        | Command::AllocClientUpdate { alloc_id, .. } => of_alloc(alloc_id).into_iter().collect(),
        Command::AllocMigrate { alloc_ids, .. } => {
            alloc_ids.iter().filter_map(|id| of_alloc(id)).collect()
        }
        Command::NodeRegister { node, .. } => on_node(&node.id),
        Command::NodeUpdateStatus { node_id, .. } => on_node(node_id),
        Command::NodeDeregister { node_id, evals, .. } => {
            let mut keys = on_node(node_id);
            keys.extend(
                evals
                    .iter()
                    .map(|e| (e.namespace.clone(), e.job_id.clone())),
            );
            keys
        }
        Command::NodeUpdateDrain { evals, .. }
        | Command::NodeSetEligibility { evals, .. }
        | Command::NodeEvaluate { evals, .. } => evals
            .iter()
            .map(|e| (e.namespace.clone(), e.job_id.clone()))
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// After every command, for each job it touched: a purged job's versions go; a version not
/// kept yet (a register, stop, scale, revert made it) is kept, with the submission the
/// command carried; and the job's `Status` is kept on the job: when it changed (an alloc
/// started, ended, was lost), the job is stored again with the new status and
/// `ModifyIndex` = `index`, so a blocking query on the job wakes and its `ModifyIndex` says
/// when it changed.
pub(crate) fn after_apply(state: &mut ServerState, cmd: &Command, index: u64) {
    let submission = match cmd {
        Command::JobSubmit { submission, .. } => submission.as_deref(),
        _ => None,
    };
    for key in touched_jobs(state, cmd) {
        let Some(job) = state.jobs.get(&key).cloned() else {
            remove_versions(state, &key);
            state.scaling_events.remove(&key);
            continue;
        };
        if !state.job_versions.contains_key(&version_key(&job)) {
            let made_now = job.job_modify_index == index;
            record_version(state, &job, submission.filter(|_| made_now));
        }
        let status = super::job_status_in(state, &job);
        if job.status == status.as_str() {
            continue;
        }
        let mut j = (*job).clone();
        j.status = status.as_str().to_string();
        j.modify_index = index;
        state.jobs.insert(key, Arc::new(j));
    }
}

/// `POST /v1/job/:id/stable`: mark one kept version stable (or not). The current job
/// follows when it is that version. Unknown job or version: refused, nothing changes.
pub(crate) fn set_stable(
    state: &mut ServerState,
    key: &JobKey,
    version: u64,
    stable: bool,
    index: u64,
) -> Result<(), ApplyError> {
    let current = state.jobs.get(key).cloned().ok_or(ApplyError::UnknownJob)?;
    let vkey = (key.0.clone(), key.1.clone(), version);
    let kept = state.job_versions.get(&vkey).cloned();
    if kept.is_none() && current.version != version {
        return Err(ApplyError::UnknownJob);
    }
    if current.version == version && current.stable != stable {
        let mut j = (*current).clone();
        j.stable = stable;
        j.modify_index = index;
        let j = Arc::new(j);
        state.jobs.insert(key.clone(), j.clone());
        let submission = kept.as_ref().and_then(|k| k.submission.clone());
        state
            .job_versions
            .insert(vkey, Arc::new(JobVersion { job: j, submission }));
    } else if let Some(k) = kept.filter(|k| k.job.stable != stable) {
        let mut j = (*k.job).clone();
        j.stable = stable;
        j.modify_index = index;
        state.job_versions.insert(
            vkey,
            Arc::new(JobVersion {
                job: Arc::new(j),
                submission: k.submission.clone(),
            }),
        );
    }
    Ok(())
}

/// `PUT /v1/job/:id/scale`: with a count, the group's count set (a new version, submitted
/// now) and a `pending` `job-scaling` eval, when the job is still at `job_modify_index`;
/// either way the event is recorded on the group (the last [`MAX_SCALING_EVENTS`]).
pub(crate) fn scale(
    state: &mut ServerState,
    key: &JobKey,
    (group, count): (&str, Option<i64>),
    (job_modify_index, eval_id): (u64, &str),
    event: &ScalingEvent,
    now: i64,
    index: u64,
) -> Result<JobWrite, ApplyError> {
    let current = state.jobs.get(key).cloned().ok_or(ApplyError::UnknownJob)?;
    if current.job_modify_index != job_modify_index {
        return Err(ApplyError::UnknownJob);
    }
    let mut job = (*current).clone();
    let Some(tg) = Arc::make_mut(&mut job.task_groups)
        .iter_mut()
        .find(|g| g.name == group)
    else {
        return Err(ApplyError::UnknownJob);
    };
    let mut event = event.clone();
    event.previous_count = tg.count();
    event.time = now;
    event.create_index = index;
    let Some(count) = count else {
        record_scaling_event(state, key, group, event);
        return Ok(JobWrite {
            eval_id: String::new(),
            eval_create_index: 0,
            job_modify_index: current.modify_index,
        });
    };
    tg.count = Some(count);
    event.count = Some(count);
    let (key, job, _) = crate::state::command::store_job_version(state, &job, now, index);
    crate::state::command::cancel_blocked_evals(state, &key, eval_id, now, index);
    let mut write = JobWrite {
        eval_id: String::new(),
        eval_create_index: 0,
        job_modify_index: job.job_modify_index,
    };
    if job.periodic.is_null() && job.parameterized_job.is_null() {
        let eval = EvalRecord::pending_at(&job, TRIGGER_SCALING, index, eval_id, now);
        state.put_eval(eval);
        write.eval_id = eval_id.to_string();
        write.eval_create_index = index;
        event.eval_id = Some(eval_id.to_string());
    }
    record_scaling_event(state, &key, group, event);
    Ok(write)
}

/// How many scaling events are kept per group (Nomad's `JobTrackedScalingEvents`).
pub const MAX_SCALING_EVENTS: usize = 20;

/// One scaling action or report on a group (`ScalingEvent`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ScalingEvent {
    pub time: i64,
    pub count: Option<i64>,
    pub previous_count: i64,
    pub message: String,
    pub error: bool,
    pub meta: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "EvalID")]
    pub eval_id: Option<String>,
    pub create_index: u64,
}

/// The scaling events of one job, newest first per group (`JobScalingEvents`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ScalingEvents {
    pub namespace: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub scaling_events: std::collections::BTreeMap<String, Vec<ScalingEvent>>,
}

fn record_scaling_event(state: &mut ServerState, key: &JobKey, group: &str, event: ScalingEvent) {
    let mut all = state
        .scaling_events
        .get(key)
        .map(|e| (**e).clone())
        .unwrap_or_else(|| ScalingEvents {
            namespace: key.0.clone(),
            job_id: key.1.clone(),
            ..ScalingEvents::default()
        });
    let list = all.scaling_events.entry(group.to_string()).or_default();
    list.insert(0, event);
    list.truncate(MAX_SCALING_EVENTS);
    state.scaling_events.insert(key.clone(), Arc::new(all));
}

/// A group's scaling events, newest first.
pub fn scaling_events_of(state: &ServerState, key: &JobKey, group: &str) -> Vec<ScalingEvent> {
    state
        .scaling_events
        .get(key)
        .and_then(|e| e.scaling_events.get(group).cloned())
        .unwrap_or_default()
}

/// `PUT /v1/job/:id/evaluate`: a `pending` `job-register` eval; with `force_reschedule`,
/// the job's failed allocs not yet replaced are marked to be rescheduled now (their
/// group's reschedule policy permitting).
pub(crate) fn evaluate(
    state: &mut ServerState,
    key: &JobKey,
    force_reschedule: bool,
    eval_id: &str,
    now: i64,
    index: u64,
) -> Result<JobWrite, ApplyError> {
    let job = state.jobs.get(key).cloned().ok_or(ApplyError::UnknownJob)?;
    if force_reschedule {
        let ids: Vec<String> = state
            .allocs_of(key)
            .filter(|a| {
                of_incarnation(&job, a)
                    && a.next_allocation.is_empty()
                    && a.client_status == AllocClientStatus::Failed
                    && a.desired_transition.force_reschedule != Some(true)
                    && job.group(&a.task_group).is_some_and(reschedule_enabled)
            })
            .map(|a| a.id.to_string())
            .collect();
        for id in ids {
            state.update_alloc(&id, |a| {
                a.desired_transition.force_reschedule = Some(true);
                a.modify_index = index;
                a.modify_time = now;
            });
        }
    }
    state.put_eval(EvalRecord::pending_at(
        &job,
        "job-register",
        index,
        eval_id,
        now,
    ));
    Ok(JobWrite {
        eval_id: eval_id.to_string(),
        eval_create_index: index,
        job_modify_index: job.modify_index,
    })
}

/// A group's reschedule policy allows rescheduling (Nomad's `ReschedulePolicy.Enabled`):
/// attempts or unlimited.
fn reschedule_enabled(tg: &super::spec::TaskGroup) -> bool {
    let p = &tg.reschedule_policy;
    if p.is_null() {
        return true;
    }
    let attempts = p
        .get("Attempts")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let unlimited = p
        .get("Unlimited")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    attempts > 0 || unlimited
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::apply;

    fn job(id: &str, meta: &str) -> Job {
        let mut j = Job::from_json(serde_json::json!({"ID": id, "Type": "batch",
            "Meta": {"m": meta}, "TaskGroups": [{"Name": "g", "Count": 1,
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        j.canonicalize("global");
        j
    }

    fn submit(s: &mut ServerState, j: Job, eval: &str, index: u64, source: Option<&str>) {
        let cmd = Command::JobSubmit {
            job: Box::new(j),
            eval_id: eval.into(),
            now: index as i64,
            submission: source.map(|src| {
                Box::new(JobSubmission {
                    source: src.into(),
                    format: "hcl2".into(),
                    ..JobSubmission::default()
                })
            }),
        };
        apply(s, &cmd, index).unwrap();
    }

    #[test]
    fn a_submitted_job_is_pending_while_its_eval_waits_and_keeps_its_versions_and_source() {
        let mut s = ServerState::default();
        let key: JobKey = ("default".into(), "j".into());
        submit(&mut s, job("j", "0"), "e0", 10, Some("src0"));
        assert_eq!(s.jobs[&key].status, "pending");
        for i in 1..8u64 {
            submit(
                &mut s,
                job("j", &i.to_string()),
                &format!("e{i}"),
                10 + i,
                None,
            );
        }
        let kept: Vec<u64> = versions(&s, &key).map(|v| v.job.version).collect();
        assert_eq!(kept, [2, 3, 4, 5, 6, 7]);
        assert_eq!(versions_newest_first(&s, &key)[0].version, 7);
        // Stable versions outlive older unstable ones.
        apply(
            &mut s,
            &Command::JobSetStable {
                namespace: "default".into(),
                job_id: "j".into(),
                version: 2,
                stable: true,
            },
            30,
        )
        .unwrap();
        submit(&mut s, job("j", "8"), "e8", 31, None);
        let kept: Vec<u64> = versions(&s, &key).map(|v| v.job.version).collect();
        assert_eq!(kept, [2, 4, 5, 6, 7, 8]);
        assert!(version_of(&s, &key, 2).unwrap().stable);
        // The same state through its serialized form.
        let back = ServerState::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back.to_bytes().unwrap(), s.to_bytes().unwrap());
        assert_eq!(back.job_versions.len(), 6);
    }
}
