//! Job validation with Nomad's messages, nested as Go's multierror prints them
//! (`1 error occurred:\n\t* ...`), plus the raw_exec driver's config checks.

use super::error::JobError;
use super::spec::{Job, Restart, Task, TaskGroup};
use crate::state::status::JobType;

/// The most allocations one job may ask for on this single-node agent.
pub const MAX_JOB_ALLOCS: i64 = 1000;

/// The most task processes one job may ask for (allocations × tasks per group).
pub const MAX_JOB_TASKS: i64 = 1000;

/// Drivers this agent runs.
pub const SUPPORTED_DRIVERS: &[&str] = &["raw_exec"];

/// Go's `multierror` list format.
pub fn multierror(errors: &[String]) -> String {
    let points: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
    if errors.len() == 1 {
        format!("1 error occurred:\n\t{}\n\n", points[0])
    } else {
        format!(
            "{} errors occurred:\n\t{}\n\n",
            errors.len(),
            points.join("\n\t")
        )
    }
}

/// Validate a canonicalized job; the error prints as the full multierror text.
pub fn validate_job(job: &Job) -> Result<(), JobError> {
    let mut errs = Vec::new();
    if job.region.is_empty() {
        errs.push("Missing job region".to_string());
    }
    if job.id.is_empty() {
        errs.push("Missing job ID".to_string());
    } else if job.id.contains(' ') {
        errs.push("Job ID contains a space".to_string());
    } else if job.id.contains('\0') {
        errs.push("Job ID contains a null character".to_string());
    }
    if job.name.is_empty() {
        errs.push("Missing job name".to_string());
    } else if job.name.contains('\0') {
        errs.push("Job Name contains a null character".to_string());
    }
    if job.namespace.is_empty() {
        errs.push("Job must be in a namespace".to_string());
    }
    let jt = job.job_type_word();
    if JobType::parse(jt).is_none() {
        errs.push(format!("Invalid job type: {jt:?}"));
    }
    let prio = job.priority.unwrap_or(50);
    if !(1..=100).contains(&prio) {
        errs.push("Job priority must be between [1, 100]".to_string());
    }
    match &job.datacenters {
        Some(dcs) if dcs.is_empty() => errs.push("Missing job datacenters".to_string()),
        Some(dcs) if dcs.iter().any(String::is_empty) => {
            errs.push("Job datacenter must be non-empty string".to_string())
        }
        _ => {}
    }
    if job.task_groups.is_empty() {
        errs.push("Missing job task groups".to_string());
    }
    let total: i64 = job
        .task_groups
        .iter()
        .map(|g| g.count().max(0))
        .fold(0, i64::saturating_add);
    if total > MAX_JOB_ALLOCS {
        errs.push(format!(
            "Job asks for {total} allocations; this agent places at most {MAX_JOB_ALLOCS} per job"
        ));
    }
    let tasks: i64 = job
        .task_groups
        .iter()
        .map(|g| g.count().max(0).saturating_mul(g.tasks.len() as i64))
        .fold(0, i64::saturating_add);
    if total <= MAX_JOB_ALLOCS && tasks > MAX_JOB_TASKS {
        errs.push(format!(
            "Job asks for {tasks} tasks; this agent runs at most {MAX_JOB_TASKS} per job"
        ));
    }
    for (i, tg) in job.task_groups.iter().enumerate() {
        if let Some(first) = job.task_groups[..i].iter().position(|o| o.name == tg.name) {
            errs.push(format!(
                "Job task group {} redefines '{}' from group {}",
                i + 1,
                tg.name,
                first + 1
            ));
        }
    }
    for tg in job.task_groups.iter() {
        let sub = validate_group(tg);
        if !sub.is_empty() {
            errs.push(format!(
                "Task group {} validation failed: {}",
                tg.name,
                multierror(&sub)
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(JobError::Invalid(errs))
    }
}

fn validate_group(tg: &TaskGroup) -> Vec<String> {
    let mut errs = Vec::new();
    if tg.name.is_empty() {
        errs.push("Missing task group name".to_string());
    } else if tg.name.contains('\0') {
        errs.push("Task group name contains null character".to_string());
    }
    if tg.count() < 0 {
        errs.push("Task group count can't be negative".to_string());
    }
    if tg.tasks.is_empty() {
        errs.push("Missing tasks for task group".to_string());
    }
    let Restart {
        attempts,
        interval,
        delay,
        mode,
    } = tg.restart();
    if attempts < 0 {
        errs.push(format!(
            "Restart policy attempts must be non-negative; got {attempts}"
        ));
    }
    if interval < 0 || delay < 0 {
        errs.push("Restart policy interval and delay must be non-negative".to_string());
    }
    if mode != "fail" && mode != "delay" {
        errs.push(format!("Unsupported restart mode: {mode:?}"));
    }
    errs.extend(super::network::validate_group(tg));
    let disk_mb = tg
        .ephemeral_disk
        .as_ref()
        .and_then(|d| d.size_mb)
        .unwrap_or(300);
    for (i, t) in tg.tasks.iter().enumerate() {
        if let Some(first) = tg.tasks[..i].iter().position(|o| o.name == t.name) {
            errs.push(format!(
                "Task {} redefines '{}' from task {}",
                i + 1,
                t.name,
                first + 1
            ));
        }
    }
    for t in &tg.tasks {
        let sub = validate_task(t, disk_mb);
        if !sub.is_empty() {
            errs.push(format!(
                "Task {} validation failed: {}",
                t.name,
                multierror(&sub)
            ));
        }
    }
    errs
}

fn validate_task(t: &Task, disk_mb: i64) -> Vec<String> {
    let mut errs = Vec::new();
    if t.name.is_empty() {
        errs.push("Missing task name".to_string());
    } else if t.name.contains('\0') {
        errs.push("Task name contains null character".to_string());
    } else if t.name.contains('/') {
        errs.push("Task name cannot include slashes".to_string());
    } else if t.name == "." || t.name == ".." || t.name == "alloc" {
        errs.push(format!("Task name {:?} is reserved", t.name));
    }
    // As Nomad's servers: a driver is the clients' business. A task for a driver no node has
    // is accepted and its placement fails with "missing drivers"; only the config of a driver
    // this agent runs is checked here.
    if t.driver.is_empty() {
        errs.push("Missing task driver".to_string());
    } else if SUPPORTED_DRIVERS.contains(&t.driver.as_str()) {
        errs.extend(validate_raw_exec(t));
    }
    if t.kill_timeout.unwrap_or(0) < 0 {
        errs.push("KillTimeout must be a positive value".to_string());
    }
    if !t.kill_signal.is_empty() && crate::signals::parse_signal(&t.kill_signal).is_none() {
        errs.push(format!("invalid kill_signal {:?}", t.kill_signal));
    }
    if let Some(r) = &t.resources {
        if let Some(cpu) = r.cpu {
            if cpu < 1 && r.cores == 0 {
                errs.push(format!("minimum CPU value is 1; got {cpu}"));
            }
        }
        if let Some(mem) = r.memory_mb {
            if mem < 10 {
                errs.push(format!("minimum MemoryMB value is 10; got {mem}"));
            }
        }
    }
    if let Some(lc) = &t.log_config {
        let files = lc.max_files.unwrap_or(10);
        let size = lc.max_file_size_mb.unwrap_or(10);
        if files < 1 {
            errs.push(format!("minimum number of files is 1; got {files}"));
        }
        if size < 1 {
            errs.push(format!("minimum file size is 1MB; got {size}"));
        }
        let usage = files.saturating_mul(size);
        if files >= 1 && size >= 1 && disk_mb <= usage {
            errs.push(format!(
                "log storage ({usage} MB) must be less than requested disk capacity ({disk_mb} MB)"
            ));
        }
    }
    errs
}

/// The raw_exec driver's config schema: `command` (string, required), `args` (list of
/// strings), `work_dir` (absolute path).
fn validate_raw_exec(t: &Task) -> Vec<String> {
    let mut errs = Vec::new();
    let cfg = t.config.clone().unwrap_or_default();
    match cfg.get("command") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => {}
        Some(serde_json::Value::String(_)) => errs.push("command must not be empty".to_string()),
        Some(_) => errs.push("Incorrect attribute value type: Inappropriate value for attribute \"command\": string required.".to_string()),
        None => errs.push(
            "Missing required argument: The argument \"command\" is required, but no definition was found."
                .to_string(),
        ),
    }
    if let Some(args) = cfg.get("args") {
        let ok = args
            .as_array()
            .map(|a| a.iter().all(|x| x.is_string()))
            .unwrap_or(false);
        if !ok {
            errs.push("Incorrect attribute value type: Inappropriate value for attribute \"args\": list of string required.".to_string());
        }
    }
    if let Some(wd) = cfg.get("work_dir") {
        match wd.as_str() {
            Some(s) if s.starts_with('/') || s.starts_with("${") => {}
            Some(s) => errs.push(format!("work_dir must be an absolute path: {s:?}")),
            None => errs.push("Incorrect attribute value type: Inappropriate value for attribute \"work_dir\": string required.".to_string()),
        }
    }
    for key in cfg.keys() {
        if !matches!(
            key.as_str(),
            "command"
                | "args"
                | "work_dir"
                | "oom_score_adj"
                | "cgroup_v1_override"
                | "cgroup_v2_override"
                | "denied_envvars"
        ) {
            errs.push(format!(
                "Unsupported argument: An argument named {key:?} is not expected here."
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(v: serde_json::Value) -> Job {
        let mut j = Job::from_json(v).unwrap();
        j.canonicalize("global");
        j
    }

    #[test]
    fn no_tasks_gives_nomads_nested_message() {
        let j = job(serde_json::json!({"ID": "x", "TaskGroups": [{"Name": "g", "Tasks": []}]}));
        let e = validate_job(&j).unwrap_err().to_string();
        assert_eq!(
            e,
            "1 error occurred:\n\t* Task group g validation failed: 1 error occurred:\n\t* Missing tasks for task group\n\n\n\n"
        );
    }

    #[test]
    fn driver_command_and_count_checks() {
        let j = job(
            serde_json::json!({"ID": "x", "TaskGroups": [{"Name": "g", "Count": -1, "Tasks": [
                {"Name": "a", "Driver": "docker"},
                {"Name": "b", "Driver": "raw_exec", "Config": {"args": ["x"]}},
                {"Name": "c", "Driver": "raw_exec", "Config": {"command": "/bin/true", "work_dir": "rel"}}
            ]}]}),
        );
        let e = validate_job(&j).unwrap_err().to_string();
        assert!(e.contains("Task group count can't be negative"), "{e}");
        // Another driver is accepted: placement, not validation, turns it away.
        assert!(!e.contains("Task a validation failed"), "{e}");
        assert!(e.contains("The argument \"command\" is required"), "{e}");
        assert!(
            e.contains("work_dir must be an absolute path: \"rel\""),
            "{e}"
        );
    }

    #[test]
    fn a_huge_count_is_refused_before_anything_is_placed() {
        let j = job(
            serde_json::json!({"ID": "x", "TaskGroups": [{"Name": "g", "Count": 9_000_000_000_000i64, "Tasks": [
            {"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}),
        );
        let e = validate_job(&j).unwrap_err().to_string();
        assert!(e.contains("this agent places at most 1000 per job"), "{e}");
    }

    #[test]
    fn valid_job_passes() {
        let j = job(
            serde_json::json!({"ID": "x", "TaskGroups": [{"Name": "g", "Tasks": [
            {"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}),
        );
        validate_job(&j).unwrap();
    }
}
