//! The job specification as Nomad's JSON carries it (Go field names and order), with Nomad's
//! defaults (`canonicalize`). Fields nomadlet does not interpret are kept as raw JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::status::JobType;

/// Go's `time.Duration` in nanoseconds.
pub type DurationNs = i64;

pub const SECOND: DurationNs = 1_000_000_000;
pub const MINUTE: DurationNs = 60 * SECOND;
/// Nomad's client `max_kill_timeout` default: no task waits longer to be killed.
pub const MAX_KILL_TIMEOUT: DurationNs = 30 * SECOND;

/// A job (`structs.Job`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Job {
    pub stop: bool,
    pub region: String,
    pub namespace: String,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ParentID")]
    pub parent_id: String,
    pub name: String,
    /// `Type` as submitted: any word decodes, so `validate_job` can refuse an unknown one
    /// with Nomad's message; [`Job::job_type`] is the typed value.
    #[serde(rename = "Type")]
    pub job_type: Option<String>,
    pub priority: Option<i64>,
    pub all_at_once: bool,
    pub datacenters: Option<Vec<String>>,
    pub node_pool: Option<String>,
    pub constraints: Value,
    pub affinities: Value,
    pub spreads: Value,
    /// Shared between the versions of a job that differ only in their status or indexes (a
    /// status change stored a deep copy of every group: two copies of each job).
    pub task_groups: Arc<Vec<TaskGroup>>,
    pub update: Value,
    pub multiregion: Value,
    pub periodic: Value,
    pub parameterized_job: Value,
    pub dispatched: bool,
    pub dispatch_idempotency_token: String,
    pub payload: Value,
    pub meta: Option<BTreeMap<String, String>>,
    pub consul_token: String,
    pub consul_namespace: String,
    pub vault_token: String,
    pub vault_namespace: String,
    #[serde(rename = "NomadTokenID")]
    pub nomad_token_id: String,
    pub status: String,
    pub status_description: String,
    pub stable: bool,
    pub version: u64,
    pub submit_time: i64,
    pub create_index: u64,
    pub modify_index: u64,
    pub job_modify_index: u64,
}

/// A task group (`structs.TaskGroup`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroup {
    pub name: String,
    pub count: Option<i64>,
    pub update: Value,
    pub migrate: Value,
    pub constraints: Value,
    pub scaling: Value,
    pub restart_policy: Option<RestartPolicy>,
    pub disconnect: Value,
    pub tasks: Vec<Task>,
    pub ephemeral_disk: Option<EphemeralDisk>,
    pub meta: Option<BTreeMap<String, String>>,
    pub reschedule_policy: Value,
    pub affinities: Value,
    pub spreads: Value,
    pub networks: Value,
    pub consul: Value,
    pub services: Value,
    pub volumes: Value,
    pub shutdown_delay: Value,
    pub stop_after_client_disconnect: Value,
    pub max_client_disconnect: Value,
    pub prevent_reschedule_on_lost: bool,
}

/// `restart` block (`structs.RestartPolicy`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub attempts: Option<i64>,
    pub interval: Option<DurationNs>,
    pub delay: Option<DurationNs>,
    pub mode: Option<String>,
    pub render_templates: bool,
}

/// A group's restart policy as the client applies it (every default filled in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    /// Restarts allowed within `interval`.
    pub attempts: i64,
    pub interval: DurationNs,
    /// Wait before each restart.
    pub delay: DurationNs,
    /// What happens once the attempts are used up: `fail` or `delay`.
    pub mode: String,
}

/// Where a task gets its workload identity token: the environment and/or a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityFlags {
    /// `NOMAD_TOKEN` in the task's environment.
    pub env: bool,
    /// `secrets/nomad_token`.
    pub file: bool,
}

/// A task's log rotation with defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// Rotated files kept per stream (at least 1).
    pub max_files: u64,
    /// Size of one file in MiB (at least 1).
    pub max_file_size_mb: u64,
    /// No log files are written.
    pub disabled: bool,
}

/// `ephemeral_disk` block.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct EphemeralDisk {
    pub sticky: bool,
    #[serde(rename = "SizeMB")]
    pub size_mb: Option<i64>,
    pub migrate: bool,
}

/// A task (`structs.Task`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    pub name: String,
    pub driver: String,
    pub user: String,
    pub config: Option<serde_json::Map<String, Value>>,
    pub env: Option<BTreeMap<String, String>>,
    pub services: Value,
    pub vault: Value,
    pub consul: Value,
    pub templates: Value,
    pub constraints: Value,
    pub affinities: Value,
    pub resources: Option<Resources>,
    pub restart_policy: Value,
    pub dispatch_payload: Value,
    pub lifecycle: Value,
    pub meta: Option<BTreeMap<String, String>>,
    pub kill_timeout: Option<DurationNs>,
    pub log_config: Option<LogConfig>,
    pub artifacts: Value,
    pub leader: bool,
    pub shutdown_delay: DurationNs,
    pub volume_mounts: Value,
    pub scaling_policies: Value,
    pub kill_signal: String,
    pub kind: String,
    #[serde(rename = "CSIPluginConfig")]
    pub csi_plugin_config: Value,
    pub identity: Option<TaskIdentity>,
    pub identities: Option<Vec<TaskIdentity>>,
    pub actions: Value,
    pub schedule: Value,
}

/// `identity` block (`structs.WorkloadIdentity`): how the task gets its token.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskIdentity {
    pub name: String,
    pub audience: Option<Vec<String>>,
    pub change_mode: String,
    pub change_signal: String,
    pub env: bool,
    pub file: bool,
    pub filepath: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "TTL")]
    pub ttl: DurationNs,
}

/// `resources` block (`structs.Resources`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Resources {
    #[serde(rename = "CPU")]
    pub cpu: Option<i64>,
    pub cores: i64,
    #[serde(rename = "MemoryMB")]
    pub memory_mb: Option<i64>,
    #[serde(rename = "MemoryMaxMB")]
    pub memory_max_mb: i64,
    #[serde(rename = "DiskMB")]
    pub disk_mb: i64,
    #[serde(rename = "IOPS")]
    pub iops: i64,
    pub networks: Value,
    pub devices: Value,
    #[serde(rename = "NUMA")]
    pub numa: Value,
    #[serde(rename = "SecretsMB")]
    pub secrets_mb: i64,
}

/// `logs` block (`structs.LogConfig`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    pub max_files: Option<i64>,
    #[serde(rename = "MaxFileSizeMB")]
    pub max_file_size_mb: Option<i64>,
    pub disabled: Option<bool>,
}

/// Remove every `null` member so absent and null fields both take serde's defaults.
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            for x in m.values_mut() {
                strip_nulls(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

impl Job {
    /// Decode a job from the `Job` member of a register request.
    pub fn from_json(mut v: Value) -> Result<Job, super::error::JobError> {
        strip_nulls(&mut v);
        serde_json::from_value(v).map_err(super::error::JobError::Decode)
    }

    /// The type as submitted (`service` when none was given).
    pub fn job_type_word(&self) -> &str {
        self.job_type
            .as_deref()
            .unwrap_or(JobType::Service.as_str())
    }

    /// The job's type. `validate_job` refuses any word that is not a type before a job is
    /// stored, so only an unvalidated job can fall back to `service` here.
    pub fn job_type(&self) -> JobType {
        JobType::parse(self.job_type_word()).unwrap_or(JobType::Service)
    }

    /// Batch-like jobs run to completion.
    pub fn is_batch(&self) -> bool {
        self.job_type().is_batch()
    }

    /// Apply Nomad's defaults (the Go api's `Canonicalize` plus the server's).
    pub fn canonicalize(&mut self, agent_region: &str) {
        if self.name.is_empty() {
            self.name = self.id.clone();
        }
        if self.namespace.is_empty() {
            self.namespace = "default".into();
        }
        if self.region.is_empty() {
            self.region = if agent_region.is_empty() {
                "global".into()
            } else {
                agent_region.into()
            };
        }
        self.job_type
            .get_or_insert_with(|| JobType::Service.as_str().into());
        self.priority.get_or_insert(50);
        self.datacenters.get_or_insert_with(|| vec!["*".into()]);
        self.node_pool.get_or_insert_with(|| "default".into());
        let batch = self.is_batch();
        for tg in Arc::make_mut(&mut self.task_groups).iter_mut() {
            tg.canonicalize(batch);
        }
        super::launch::canonicalize(self);
    }

    /// Whether the spec differs from `other`, ignoring what the server sets.
    pub fn spec_changed(&self, other: &Job) -> bool {
        let strip = |j: &Job| {
            let mut j = j.clone();
            j.status.clear();
            j.status_description.clear();
            j.stable = false;
            j.version = 0;
            j.submit_time = 0;
            j.create_index = 0;
            j.modify_index = 0;
            j.job_modify_index = 0;
            j
        };
        strip(self) != strip(other)
    }

    pub fn group(&self, name: &str) -> Option<&TaskGroup> {
        self.task_groups.iter().find(|g| g.name == name)
    }
}

impl TaskGroup {
    fn canonicalize(&mut self, batch: bool) {
        self.count.get_or_insert(1);
        let (attempts, interval) = if batch {
            (3, 24 * 60 * MINUTE)
        } else {
            (2, 30 * MINUTE)
        };
        let rp = self
            .restart_policy
            .get_or_insert_with(RestartPolicy::default);
        rp.attempts.get_or_insert(attempts);
        rp.interval.get_or_insert(interval);
        rp.delay.get_or_insert(15 * SECOND);
        rp.mode.get_or_insert_with(|| "fail".into());
        let disk = self
            .ephemeral_disk
            .get_or_insert_with(EphemeralDisk::default);
        disk.size_mb.get_or_insert(300);
        super::network::canonicalize(&mut self.networks);
        for t in &mut self.tasks {
            t.canonicalize();
        }
    }

    pub fn count(&self) -> i64 {
        self.count.unwrap_or(1)
    }

    /// The group's restart policy with Nomad's defaults filled in.
    pub fn restart(&self) -> Restart {
        let rp = self.restart_policy.clone().unwrap_or_default();
        Restart {
            attempts: rp.attempts.unwrap_or(2),
            interval: rp.interval.unwrap_or(30 * MINUTE),
            delay: rp.delay.unwrap_or(15 * SECOND),
            mode: rp.mode.unwrap_or_else(|| "fail".into()),
        }
    }
}

impl Task {
    fn canonicalize(&mut self) {
        self.kill_timeout.get_or_insert(5 * SECOND);
        let lc = self.log_config.get_or_insert_with(LogConfig::default);
        lc.max_files.get_or_insert(10);
        lc.max_file_size_mb.get_or_insert(10);
        lc.disabled.get_or_insert(false);
        let r = self.resources.get_or_insert_with(Resources::default);
        r.cpu.get_or_insert(100);
        r.memory_mb.get_or_insert(300);
        super::network::canonicalize(&mut r.networks);
    }

    /// A string member of the driver config.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.as_ref()?.get(key)?.as_str()
    }

    /// The driver config's `args`, when it is a list of strings.
    pub fn config_args(&self) -> Vec<String> {
        self.config
            .as_ref()
            .and_then(|c| c.get("args"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where the token goes, from `Identity` and a default entry of `Identities`.
    pub fn identity_flags(&self) -> IdentityFlags {
        let mut flags = IdentityFlags::default();
        let default = self.identity.iter();
        let named = self
            .identities
            .iter()
            .flatten()
            .filter(|i| i.name.is_empty() || i.name == "default");
        for i in default.chain(named) {
            flags.env |= i.env;
            flags.file |= i.file;
        }
        flags
    }

    pub fn log_limits(&self) -> LogLimits {
        let lc = self.log_config.clone().unwrap_or_default();
        LogLimits {
            max_files: lc.max_files.unwrap_or(10).max(1) as u64,
            max_file_size_mb: lc.max_file_size_mb.unwrap_or(10).max(1) as u64,
            disabled: lc.disabled.unwrap_or(false),
        }
    }

    /// `KillTimeout`, capped by the client's `max_kill_timeout` as Nomad does.
    pub fn kill_timeout(&self) -> DurationNs {
        self.kill_timeout
            .unwrap_or(5 * SECOND)
            .clamp(0, MAX_KILL_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_nomad() {
        let mut job = Job::from_json(serde_json::json!({
            "ID": "hello", "Type": "batch", "Datacenters": null,
            "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/true"}}]}]
        }))
        .unwrap();
        job.canonicalize("global");
        assert_eq!(job.name, "hello");
        assert_eq!(job.priority, Some(50));
        assert_eq!(job.datacenters, Some(vec!["*".to_string()]));
        let tg = &job.task_groups[0];
        assert_eq!(tg.count, Some(1));
        assert_eq!(
            tg.restart(),
            Restart {
                attempts: 3,
                interval: 24 * 60 * MINUTE,
                delay: 15 * SECOND,
                mode: "fail".to_string()
            }
        );
        assert_eq!(job.job_type(), JobType::Batch);
        assert_eq!(tg.tasks[0].kill_timeout, Some(5 * SECOND));
        assert_eq!(
            tg.tasks[0].log_limits(),
            LogLimits {
                max_files: 10,
                max_file_size_mb: 10,
                disabled: false
            }
        );
        let v = serde_json::to_value(&job).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().take(4).cloned().collect();
        assert_eq!(keys, ["Stop", "Region", "Namespace", "ID"]);
    }

    #[test]
    fn unchanged_spec_is_detected() {
        let mut a = Job::from_json(serde_json::json!({"ID": "x", "TaskGroups": []})).unwrap();
        a.canonicalize("global");
        let mut b = a.clone();
        b.version = 3;
        b.modify_index = 9;
        assert!(!a.spec_changed(&b));
        b.priority = Some(70);
        assert!(a.spec_changed(&b));
    }
}
