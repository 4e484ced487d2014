//! Parent jobs and the children they launch: parameterized jobs (`POST /v1/job/:id/dispatch`
//! makes `<id>/dispatch-<unix>-<8 hex>`) and periodic jobs (the periodic dispatcher, or
//! `/periodic/force`, makes `<id>/periodic-<unix>`). A parent is never scheduled itself: it
//! has no eval and its status is `running` until stopped. A child is an ordinary job
//! registered through [`Command::JobLaunch`] (the parent must still exist and run), with a
//! `pending` eval for the scheduler.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::cron::{self, Cron};
use super::eval::EvalRecord;
use super::spec::Job;
use super::{Workloads, WriteResult};
use crate::state::command::{Applied, ApplyError, Command, JobKey, JobWrite, ServerState};
use crate::state::command_log::LogError;
use crate::state::store::StoreError;

/// Nomad's `DispatchPayloadSizeLimit`: the most bytes a dispatch payload may have (decoded).
pub const DISPATCH_PAYLOAD_SIZE_LIMIT: usize = 16 * 1024;
/// The most meta keys one dispatch may pass.
pub const MAX_DISPATCH_META: usize = 256;
/// Nomad's `DispatchLaunchSuffix`.
pub const DISPATCH_SUFFIX: &str = "/dispatch-";
/// Nomad's `PeriodicLaunchSuffix`.
pub const PERIODIC_SUFFIX: &str = "/periodic-";
/// The trigger of a periodic child's eval (Nomad's `EvalTriggerPeriodicJob`).
pub const TRIGGER_PERIODIC: &str = "periodic-job";
/// The trigger of a dispatched child's eval.
pub const TRIGGER_JOB_REGISTER: &str = "job-register";

/// `payload` values of a `parameterized` block.
pub const PAYLOAD_OPTIONAL: &str = "optional";
pub const PAYLOAD_REQUIRED: &str = "required";
pub const PAYLOAD_FORBIDDEN: &str = "forbidden";

/// A job has a `periodic` block (Nomad's `IsPeriodic`).
pub fn is_periodic(job: &Job) -> bool {
    !job.periodic.is_null()
}

/// A job is a parameterized parent (Nomad's `IsParameterized`: not a dispatched child).
pub fn is_parameterized(job: &Job) -> bool {
    !job.parameterized_job.is_null() && !job.dispatched
}

/// A parent the scheduler never places: periodic or parameterized.
pub fn is_parent(job: &Job) -> bool {
    is_periodic(job) || is_parameterized(job)
}

/// A periodic job the dispatcher launches (Nomad's `IsPeriodicActive`).
pub fn is_periodic_active(job: &Job) -> bool {
    is_periodic(job) && !job.stop && !is_parameterized(job) && periodic_enabled(job)
}

fn periodic_enabled(job: &Job) -> bool {
    job.periodic
        .get("Enabled")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Fill in Nomad's defaults of the `periodic` and `parameterized` blocks (part of the job's
/// canonicalization).
pub fn canonicalize(job: &mut Job) {
    if let Value::Object(p) = &mut job.periodic {
        p.entry("Enabled").or_insert(json!(true));
        p.entry("Spec").or_insert(json!(""));
        p.entry("Specs").or_insert(Value::Null);
        p.entry("SpecType").or_insert(json!("cron"));
        p.entry("ProhibitOverlap").or_insert(json!(false));
        let tz = p.get("TimeZone").and_then(Value::as_str).unwrap_or("");
        if tz.is_empty() {
            p.insert("TimeZone".into(), json!("UTC"));
        }
    }
    if let Value::Object(p) = &mut job.parameterized_job {
        let payload = p.get("Payload").and_then(Value::as_str).unwrap_or("");
        if payload.is_empty() {
            p.insert("Payload".into(), json!(PAYLOAD_OPTIONAL));
        }
        p.entry("MetaRequired").or_insert(Value::Null);
        p.entry("MetaOptional").or_insert(Value::Null);
    }
}

/// A job's periodic schedule, parsed.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub crons: Vec<Cron>,
    pub tz: jiff::tz::TimeZone,
    pub prohibit_overlap: bool,
}

impl Schedule {
    /// The schedule of a periodic job (`None` when it has none or it does not parse:
    /// registration refuses those, so only an old stored job can lack one).
    pub fn of(job: &Job) -> Option<Schedule> {
        let p = &job.periodic;
        if !p.is_object() {
            return None;
        }
        let mut specs = str_list(p.get("Specs"));
        if let Some(s) = p
            .get("Spec")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            specs.push(s.to_string());
        }
        let crons: Result<Vec<Cron>, cron::CronError> =
            specs.iter().map(|s| Cron::parse(s)).collect();
        let tz = cron::zone(p.get("TimeZone").and_then(Value::as_str).unwrap_or("")).ok()?;
        Some(Schedule {
            crons: crons.ok()?,
            tz,
            prohibit_overlap: p
                .get("ProhibitOverlap")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The first launch strictly after `after` (Unix seconds), across every spec.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        self.crons
            .iter()
            .filter_map(|c| c.next_after(after, &self.tz))
            .min()
    }
}

/// Nomad's checks of the `periodic` and `parameterized` blocks (`Job.Validate`), as
/// messages for the job's multierror.
pub fn validate(job: &Job) -> Vec<String> {
    let mut errs = Vec::new();
    let batchy = matches!(job.job_type_word(), "batch" | "sysbatch");
    if is_periodic(job) && periodic_enabled(job) {
        if !batchy {
            errs.push("Periodic can only be used with \"batch\" or \"sysbatch\" scheduler".into());
        }
        let p = &job.periodic;
        let spec = p.get("Spec").and_then(Value::as_str).unwrap_or("");
        let specs = str_list(p.get("Specs"));
        if spec.is_empty() && specs.is_empty() {
            errs.push("Must specify a spec".into());
        }
        if !spec.is_empty() && !specs.is_empty() {
            errs.push("Only cron or crons may be used".into());
        }
        let tz = p.get("TimeZone").and_then(Value::as_str).unwrap_or("");
        if let Err(e) = cron::zone(tz) {
            errs.push(format!("Invalid time zone {tz:?}: {e}"));
        }
        match p.get("SpecType").and_then(Value::as_str).unwrap_or("cron") {
            "cron" => {
                for s in std::iter::once(spec)
                    .filter(|s| !s.is_empty())
                    .chain(specs.iter().map(String::as_str))
                {
                    if let Err(e) = Cron::parse(s) {
                        errs.push(format!("Invalid cron spec {s:?}: {e}"));
                    }
                }
            }
            other => errs.push(format!("Unknown periodic specification type {other:?}")),
        }
    }
    if is_parameterized(job) {
        if !batchy {
            errs.push(
                "Parameterized job can only be used with \"batch\" or \"sysbatch\" scheduler"
                    .into(),
            );
        }
        let p = &job.parameterized_job;
        let payload = p.get("Payload").and_then(Value::as_str).unwrap_or("");
        if ![PAYLOAD_OPTIONAL, PAYLOAD_REQUIRED, PAYLOAD_FORBIDDEN].contains(&payload) {
            errs.push(format!("Unknown payload requirement: {payload:?}"));
        }
        let required: BTreeSet<String> = str_list(p.get("MetaRequired")).into_iter().collect();
        let both: Vec<String> = str_list(p.get("MetaOptional"))
            .into_iter()
            .filter(|k| required.contains(k))
            .collect();
        if !both.is_empty() {
            errs.push(format!(
                "Required and optional meta keys should be disjoint. Following keys exist in both: [{}]",
                both.join(" ")
            ));
        }
    }
    for tg in job.task_groups.iter() {
        for t in &tg.tasks {
            let file = t
                .dispatch_payload
                .get("File")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !file.is_empty() && !payload_path_ok(file) {
                errs.push(format!(
                    "Task {:?} in group {:?}: dispatch payload file name {file:?} has invalid path",
                    t.name, tg.name
                ));
            }
        }
    }
    errs
}

/// A `dispatch_payload { file }` stays inside the task's `local/` dir: relative, no `..`,
/// no empty or `.` component, no NUL.
pub fn payload_path_ok(file: &str) -> bool {
    !file.is_empty()
        && !file.starts_with('/')
        && !file.contains('\0')
        && file.len() <= 1024
        && file
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Why a job update or a dispatch request was refused; the texts are Nomad's
/// (`validateJobUpdate`, `validateDispatchRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    /// A new job submitted with `Dispatched` set.
    SubmittedDispatched,
    /// An update that changes the job's type (old, new).
    TypeChanged(String, String),
    /// An update that drops the `periodic` block.
    PeriodicDropped,
    /// An update that adds a `periodic` block.
    PeriodicAdded,
    /// An update that drops the `parameterized` block.
    ParameterizedDropped,
    /// An update that adds a `parameterized` block.
    ParameterizedAdded,
    /// An update that changes `Dispatched`.
    DispatchedChanged,
    /// A dispatch without the payload its parent requires.
    PayloadRequired,
    /// A dispatch with a payload its parent forbids.
    PayloadForbidden,
    /// A payload larger than [`DISPATCH_PAYLOAD_SIZE_LIMIT`] (its size).
    PayloadTooLarge(usize),
    /// Meta keys the parent neither requires nor allows.
    UnpermittedMeta(Vec<String>),
    /// Required meta keys the dispatch did not give.
    MissingMeta(Vec<String>),
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::SubmittedDispatched => {
                f.write_str("job can't be submitted with 'Dispatched' set")
            }
            LaunchError::TypeChanged(old, new) => {
                write!(f, "cannot update job from type {old:?} to {new:?}")
            }
            LaunchError::PeriodicDropped => {
                f.write_str("cannot update periodic job to being non-periodic")
            }
            LaunchError::PeriodicAdded => {
                f.write_str("cannot update non-periodic job to being periodic")
            }
            LaunchError::ParameterizedDropped => {
                f.write_str("cannot update parameterized job to being non-parameterized")
            }
            LaunchError::ParameterizedAdded => {
                f.write_str("cannot update non-parameterized job to being parameterized")
            }
            LaunchError::DispatchedChanged => f.write_str("field 'Dispatched' is read-only"),
            LaunchError::PayloadRequired => {
                f.write_str("Payload is not provided but required by parameterized job")
            }
            LaunchError::PayloadForbidden => {
                f.write_str("Payload provided but forbidden by parameterized job")
            }
            LaunchError::PayloadTooLarge(len) => write!(
                f,
                "Payload exceeds maximum size; {len} > {DISPATCH_PAYLOAD_SIZE_LIMIT}"
            ),
            LaunchError::UnpermittedMeta(keys) => write!(
                f,
                "Dispatch request included unpermitted metadata keys: [{}]",
                keys.join(" ")
            ),
            LaunchError::MissingMeta(keys) => write!(
                f,
                "Dispatch did not provide required meta keys: [{}]",
                keys.join(" ")
            ),
        }
    }
}

impl std::error::Error for LaunchError {}

/// Nomad's `validateJobUpdate`: what a re-registration may not change.
pub fn validate_update(old: Option<&Job>, new: &Job) -> Result<(), LaunchError> {
    let Some(old) = old else {
        if new.dispatched {
            return Err(LaunchError::SubmittedDispatched);
        }
        return Ok(());
    };
    if old.job_type_word() != new.job_type_word() {
        return Err(LaunchError::TypeChanged(
            old.job_type_word().to_string(),
            new.job_type_word().to_string(),
        ));
    }
    if is_periodic(old) && !is_periodic(new) {
        return Err(LaunchError::PeriodicDropped);
    }
    if is_periodic(new) && !is_periodic(old) {
        return Err(LaunchError::PeriodicAdded);
    }
    if is_parameterized(old) && !is_parameterized(new) {
        return Err(LaunchError::ParameterizedDropped);
    }
    if is_parameterized(new) && !is_parameterized(old) {
        return Err(LaunchError::ParameterizedAdded);
    }
    if old.dispatched != new.dispatched {
        return Err(LaunchError::DispatchedChanged);
    }
    Ok(())
}

/// Nomad's `validateDispatchRequest`: the payload and meta a dispatch passes, against the
/// parent's `parameterized` block. `payload_len` is the decoded payload's size.
pub fn validate_dispatch(
    parent: &Job,
    payload_len: usize,
    meta: &BTreeMap<String, String>,
) -> Result<(), LaunchError> {
    let p = &parent.parameterized_job;
    let rule = p
        .get("Payload")
        .and_then(Value::as_str)
        .unwrap_or(PAYLOAD_OPTIONAL);
    if rule == PAYLOAD_REQUIRED && payload_len == 0 {
        return Err(LaunchError::PayloadRequired);
    }
    if rule == PAYLOAD_FORBIDDEN && payload_len != 0 {
        return Err(LaunchError::PayloadForbidden);
    }
    if payload_len > DISPATCH_PAYLOAD_SIZE_LIMIT {
        return Err(LaunchError::PayloadTooLarge(payload_len));
    }
    let required = str_list(p.get("MetaRequired"));
    let optional = str_list(p.get("MetaOptional"));
    let unpermitted: Vec<&str> = meta
        .keys()
        .filter(|k| !required.contains(k) && !optional.contains(k))
        .map(String::as_str)
        .collect();
    if !unpermitted.is_empty() {
        return Err(LaunchError::UnpermittedMeta(
            unpermitted.iter().map(|k| k.to_string()).collect(),
        ));
    }
    let missing: Vec<&str> = required
        .iter()
        .filter(|k| !meta.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(LaunchError::MissingMeta(
            missing.iter().map(|k| k.to_string()).collect(),
        ));
    }
    Ok(())
}

/// What a child inherits and what it gets of its own.
fn child_of(parent: &Job, id: String) -> Job {
    let mut j = parent.clone();
    j.parent_id = parent.id.clone();
    j.name = id.clone();
    j.id = id;
    j.status.clear();
    j.status_description.clear();
    j.stable = false;
    j.version = 0;
    j.create_index = 0;
    j.modify_index = 0;
    j.job_modify_index = 0;
    j
}

/// The child a dispatch makes (Nomad's `DispatchedID` and `Job.Dispatch`): `<id>/dispatch-
/// <unix>[-<prefix>]-<8 hex>` with the dispatch's meta merged over the parent's and the
/// payload (base64, as the API shows it).
pub fn dispatch_child(
    parent: &Job,
    now_secs: i64,
    id_prefix: &str,
    meta: &BTreeMap<String, String>,
    payload: &[u8],
    idempotency_token: &str,
) -> Job {
    let rand8: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let id = if id_prefix.is_empty() {
        format!("{}{DISPATCH_SUFFIX}{now_secs}-{rand8}", parent.id)
    } else {
        format!(
            "{}{DISPATCH_SUFFIX}{id_prefix}-{now_secs}-{rand8}",
            parent.id
        )
    };
    let mut j = child_of(parent, id);
    j.dispatched = true;
    j.dispatch_idempotency_token = idempotency_token.to_string();
    if !meta.is_empty() {
        let m = j.meta.get_or_insert_with(BTreeMap::new);
        for (k, v) in meta {
            m.insert(k.clone(), v.clone());
        }
    }
    j.payload = if payload.is_empty() {
        Value::Null
    } else {
        Value::String(crate::encoding::base64_std(payload))
    };
    j
}

/// The child a periodic launch at `launch` (Unix seconds) makes (Nomad's `deriveJob`).
pub fn periodic_child(parent: &Job, launch: i64) -> Job {
    let mut j = child_of(parent, format!("{}{PERIODIC_SUFFIX}{launch}", parent.id));
    j.periodic = Value::Null;
    j
}

/// The launch time a periodic child's ID carries.
pub fn launch_time_of(parent_id: &str, child_id: &str) -> Option<i64> {
    child_id
        .strip_prefix(parent_id)?
        .strip_prefix(PERIODIC_SUFFIX)?
        .parse()
        .ok()
}

/// The children of a parent, by key: their IDs start with `<parent>/` (a range of the
/// ordered jobs table, not a walk over every job).
pub fn children<'a>(
    state: &'a ServerState,
    parent: &'a Job,
) -> impl Iterator<Item = (&'a JobKey, &'a std::sync::Arc<Job>)> + 'a {
    let from = (parent.namespace.clone(), format!("{}/", parent.id));
    // '0' is the byte after '/': the end of every ID with that prefix.
    let to = (parent.namespace.clone(), format!("{}0", parent.id));
    state
        .jobs
        .range(from..to)
        .filter(move |(_, j)| j.parent_id == parent.id)
}

/// The IDs of a parent's children that have an eval not yet done (a range of the evals by
/// job, as [`children`]).
fn waiting_children(state: &ServerState, parent: &Job) -> std::collections::HashSet<String> {
    let from = (parent.namespace.clone(), format!("{}/", parent.id));
    let to = (parent.namespace.clone(), format!("{}0", parent.id));
    state
        .evals_by_job
        .range(from..to)
        .filter(|(key, _)| state.evals_of(key).any(|e| e.status.is_open()))
        .map(|(key, _)| key.1.clone())
        .collect()
}

/// Whether a child still runs (Nomad's status other than `dead`): not stopped and with an
/// alloc that is not terminal or an eval not yet done (`waiting`: [`waiting_children`]).
fn child_active(
    state: &ServerState,
    key: &JobKey,
    job: &Job,
    waiting: &std::collections::HashSet<String>,
) -> bool {
    if job.stop {
        return false;
    }
    waiting.contains(&key.1)
        || state.allocs_of(key).any(|a| {
            !a.terminal() && a.desired_status == crate::state::status::AllocDesiredStatus::Run
        })
}

/// A parent's `JobSummary.Children`: its children counted as `[pending, running, dead]`
/// (running: an alloc runs; pending: an alloc or eval waits; dead: neither).
pub fn children_summary(state: &ServerState, parent: &Job) -> [u64; 3] {
    let mut c = [0u64; 3];
    if !is_parent(parent) {
        return c;
    }
    let waiting = waiting_children(state, parent);
    for (key, job) in children(state, parent) {
        let running = !job.stop
            && state.allocs_of(key).any(|a| {
                a.is_live() && a.client_status == crate::state::status::AllocClientStatus::Running
            });
        let slot = if running {
            1
        } else if child_active(state, key, job, &waiting) {
            0
        } else {
            2
        };
        c[slot] += 1;
    }
    c
}

/// Nomad's `RunningChildren`: some child of `parent` still runs.
pub fn running_children(state: &ServerState, parent: &Job) -> bool {
    let waiting = waiting_children(state, parent);
    children(state, parent).any(|(k, j)| child_active(state, k, j, &waiting))
}

/// The last launch of a periodic parent: its newest child's launch time, or when it was
/// (re)submitted if that is later (Nomad's periodic launch table, derived from state).
pub fn last_launch(state: &ServerState, parent: &Job) -> i64 {
    let submitted = parent.submit_time.div_euclid(1_000_000_000);
    children(state, parent)
        .filter_map(|((_, id), _)| launch_time_of(&parent.id, id))
        .fold(submitted, i64::max)
}

/// Apply [`Command::JobLaunch`]: the parent (`parent_id` in the child's namespace) must
/// exist and not be stopped; the child is stored (a new version if it existed and changed)
/// with a `pending` eval unless it is periodic itself.
pub(crate) fn apply_launch(
    state: &mut ServerState,
    job: &Job,
    eval_id: &str,
    triggered_by: &str,
    now: i64,
    index: u64,
) -> Result<Applied, ApplyError> {
    let parent_key: JobKey = (job.namespace.clone(), job.parent_id.clone());
    match state.jobs.get(&parent_key) {
        Some(p) if !p.stop => {}
        _ => return Err(ApplyError::UnknownJob),
    }
    let (_, job, _) = crate::state::command::store_job_version(state, job, now, index);
    let (eval_id, eval_index) = if is_periodic(&job) || eval_id.is_empty() {
        (String::new(), 0)
    } else {
        let e = EvalRecord::pending_at(&job, triggered_by, index, eval_id, now);
        state.put_eval(e);
        (eval_id.to_string(), index)
    };
    Ok(Applied::Job(JobWrite {
        eval_id,
        eval_create_index: eval_index,
        job_modify_index: job.job_modify_index,
    }))
}

impl Workloads {
    /// Register a child job of a running parent with a `pending` eval triggered by
    /// `triggered_by`. `None` when the parent is gone or stopped (nothing changed).
    pub fn launch(&self, job: Job, triggered_by: &str) -> Result<Option<WriteResult>, StoreError> {
        let cmd = Command::JobLaunch {
            job: Box::new(job),
            eval_id: uuid::Uuid::new_v4().to_string(),
            triggered_by: triggered_by.to_string(),
            now: crate::time::unix_now_nanos(),
        };
        Ok(match self.propose(cmd)? {
            Some((Applied::Job(w), index)) => Some(WriteResult {
                eval_id: w.eval_id,
                eval_create_index: w.eval_create_index,
                job_modify_index: w.job_modify_index,
                index,
            }),
            Some(_) => {
                return Err(StoreError::other(
                    &self.path,
                    "write",
                    LogError::Closed("launch applied to something else"),
                ))
            }
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(v: Value) -> Job {
        let mut j = Job::from_json(v).unwrap();
        j.canonicalize("global");
        j
    }

    #[test]
    fn dispatch_rules_follow_nomad() {
        let p = job(json!({"ID": "p", "Type": "batch", "TaskGroups": [],
            "ParameterizedJob": {"Payload": "required", "MetaRequired": ["a"], "MetaOptional": ["b"]}}));
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            validate_dispatch(&p, 0, &m(&[("a", "1")]))
                .unwrap_err()
                .to_string(),
            "Payload is not provided but required by parameterized job"
        );
        assert_eq!(
            validate_dispatch(&p, 3, &m(&[("a", "1"), ("z", "2")]))
                .unwrap_err()
                .to_string(),
            "Dispatch request included unpermitted metadata keys: [z]"
        );
        assert_eq!(
            validate_dispatch(&p, 3, &m(&[("b", "1")]))
                .unwrap_err()
                .to_string(),
            "Dispatch did not provide required meta keys: [a]"
        );
        assert_eq!(
            validate_dispatch(&p, DISPATCH_PAYLOAD_SIZE_LIMIT + 1, &m(&[("a", "1")]))
                .unwrap_err()
                .to_string(),
            "Payload exceeds maximum size; 16385 > 16384"
        );
        assert!(validate_dispatch(&p, 3, &m(&[("a", "1"), ("b", "2")])).is_ok());
        let c = dispatch_child(&p, 1700000000, "", &m(&[("a", "1")]), b"hi", "");
        assert!(
            c.id.starts_with("p/dispatch-1700000000-")
                && c.id.len() == "p/dispatch-1700000000-".len() + 8
        );
        assert!(c.dispatched && c.parent_id == "p" && c.name == c.id);
        assert_eq!(c.payload, json!("aGk="));
        assert!(!is_parameterized(&c) && is_parameterized(&p) && is_parent(&p));
    }

    #[test]
    fn periodic_validation_and_children() {
        let p = job(json!({"ID": "cron", "Type": "service", "TaskGroups": [],
            "Periodic": {"Spec": "nope", "TimeZone": "../x"}}));
        let errs = validate(&p);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("Periodic can only be used")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("Invalid cron spec \"nope\"")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("Invalid time zone \"../x\"")),
            "{errs:?}"
        );
        let p = job(json!({"ID": "cron", "Type": "batch", "TaskGroups": [],
            "Periodic": {"Specs": ["*/5 * * * *"]}}));
        assert!(validate(&p).is_empty());
        assert_eq!(p.periodic["TimeZone"], "UTC");
        assert!(is_periodic_active(&p));
        let c = periodic_child(&p, 1700000100);
        assert_eq!(c.id, "cron/periodic-1700000100");
        assert_eq!(launch_time_of("cron", &c.id), Some(1700000100));
        assert!(!is_periodic(&c));
        let s = Schedule::of(&p).unwrap();
        assert_eq!(s.next_after(1700000100), Some(1700000400));
        assert!(
            !payload_path_ok("../x") && !payload_path_ok("/abs") && payload_path_ok("in/put.json")
        );
    }
}
