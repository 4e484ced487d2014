//! Jobs, evaluations and allocations as the server side keeps them: locked maps, one durable
//! JSON file per object under `<data_dir>/server`, and nomadlet's synchronous scheduler
//! (one node: `Count` allocations per group, replaced when the job spec changes).

pub mod alloc;
pub mod eval;
pub mod spec;
pub mod timefmt;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use self::alloc::{AllocRecord, TaskState};
use self::eval::EvalRecord;
use self::spec::Job;
use super::store::{self, StoreError};
use super::IndexCounter;

type JobKey = (String, String);

#[derive(Default)]
struct Tables {
    jobs: BTreeMap<JobKey, Job>,
    evals: BTreeMap<String, EvalRecord>,
    allocs: BTreeMap<String, AllocRecord>,
}

/// The new versions of the objects one write changes (`None`: removed), computed from the
/// published tables without touching them. Written durably first, then published.
#[derive(Default)]
struct Staged {
    jobs: BTreeMap<JobKey, Option<Job>>,
    evals: BTreeMap<String, Option<EvalRecord>>,
    allocs: BTreeMap<String, Option<AllocRecord>>,
}

impl Staged {
    /// The files to write: allocs, then evals, then jobs (a job on disk never names a new
    /// version whose allocs are not on disk yet).
    fn files(&self) -> Vec<FileChange<'_>> {
        let allocs = self
            .allocs
            .iter()
            .map(|(id, a)| FileChange::Alloc(id, a.as_ref()));
        let evals = self
            .evals
            .iter()
            .map(|(id, e)| FileChange::Eval(id, e.as_ref()));
        let jobs = self
            .jobs
            .iter()
            .map(|(k, j)| FileChange::Job(k, j.as_ref()));
        allocs.chain(evals).chain(jobs).collect()
    }
}

/// One state file of a staged write: where it lives and what it becomes (`None`: removed).
enum FileChange<'a> {
    Job(&'a JobKey, Option<&'a Job>),
    Eval(&'a str, Option<&'a EvalRecord>),
    Alloc(&'a str, Option<&'a AllocRecord>),
}

impl FileChange<'_> {
    fn is_removal(&self) -> bool {
        matches!(
            self,
            FileChange::Job(_, None) | FileChange::Eval(_, None) | FileChange::Alloc(_, None)
        )
    }
}

/// The server-side job, evaluation and allocation tables.
pub struct Workloads {
    dir: PathBuf,
    tables: RwLock<Tables>,
    /// The write gate: held for the whole of every write (compute, save, publish), so writes
    /// are serialised, each is computed from the tables as the last write left them, and the
    /// last version of a file on disk is the last one published. Taken before `tables` (never
    /// the other way round); `tables` itself is never held across I/O.
    persist: Mutex<()>,
    max_index: u64,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads").field("dir", &self.dir).finish()
    }
}

/// Where the allocs of a write are placed.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
}

/// The answer to a register or deregister.
#[derive(Clone, Debug)]
pub struct WriteResult {
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub index: u64,
}

fn job_file_name(key: &JobKey) -> String {
    let mut h = Sha256::new();
    h.update(key.0.as_bytes());
    h.update([0u8]);
    h.update(key.1.as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

fn load_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(StoreError {
                path: dir.to_path_buf(),
                op: "list",
                detail: e.to_string(),
            })
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_json = path.extension().map(|e| e == "json").unwrap_or(false);
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !is_json || hidden {
            continue;
        }
        match store::read_json::<T>(&path) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(e) => log::warn!("skipping unreadable state file: {e}"),
        }
    }
    Ok(out)
}

impl Workloads {
    /// Load from `<data_dir>/server`.
    pub fn load(data_dir: &Path) -> Result<Workloads, StoreError> {
        let dir = data_dir.join("server");
        let mut t = Tables::default();
        let mut max_index = 0;
        for job in load_dir::<Job>(&dir.join("jobs"))? {
            max_index = max_index.max(job.modify_index);
            t.jobs.insert((job.namespace.clone(), job.id.clone()), job);
        }
        for ev in load_dir::<EvalRecord>(&dir.join("evals"))? {
            max_index = max_index.max(ev.modify_index);
            t.evals.insert(ev.id.clone(), ev);
        }
        for a in load_dir::<AllocRecord>(&dir.join("allocs"))? {
            max_index = max_index.max(a.modify_index);
            t.allocs.insert(a.id.clone(), a);
        }
        Ok(Workloads {
            dir,
            tables: RwLock::new(t),
            persist: Mutex::new(()),
            max_index,
        })
    }

    /// The largest index found on disk at load (the agent raises its counter to it).
    pub fn max_index(&self) -> u64 {
        self.max_index
    }

    /// Allocations on this node, for the agent's stats.
    pub fn alloc_count(&self) -> usize {
        self.tables.read().allocs.len()
    }

    /// Facts about an allocation that the ACL layer needs: `(job_id, namespace, terminal)`.
    /// Terminal means stopped or finished: a workload identity of it is no longer valid.
    pub fn alloc_status(&self, alloc_id: &str) -> Option<(String, String, bool)> {
        let t = self.tables.read();
        let a = t.allocs.get(alloc_id)?;
        Some((
            a.job_id.clone(),
            a.namespace.clone(),
            a.terminal() || a.desired_status != "run",
        ))
    }

    fn job_path(&self, key: &JobKey) -> PathBuf {
        self.dir.join("jobs").join(job_file_name(key))
    }

    fn eval_path(&self, id: &str) -> PathBuf {
        self.dir.join("evals").join(format!("{id}.json"))
    }

    fn alloc_path(&self, id: &str) -> PathBuf {
        self.dir.join("allocs").join(format!("{id}.json"))
    }

    /// Write (or remove) one state file.
    fn write_file(&self, change: &FileChange<'_>) -> Result<(), StoreError> {
        match change {
            FileChange::Job(k, Some(j)) => store::write_json(&self.job_path(k), j),
            FileChange::Job(k, None) => store::remove_file(&self.job_path(k)),
            FileChange::Eval(id, Some(e)) => store::write_json(&self.eval_path(id), e),
            FileChange::Eval(id, None) => store::remove_file(&self.eval_path(id)),
            FileChange::Alloc(id, Some(a)) => store::write_json(&self.alloc_path(id), a),
            FileChange::Alloc(id, None) => store::remove_file(&self.alloc_path(id)),
        }
    }

    /// Persist, then publish: write every staged object durably; only when all are written,
    /// swap them into the tables and wake blocking queries. When a file cannot be written the
    /// files already written get their published versions back, and memory is untouched: the
    /// failed write changed nothing visible. The caller holds `persist`.
    fn commit(&self, counter: &IndexCounter, staged: Staged) -> Result<(), StoreError> {
        let files = staged.files();
        for (done, change) in files.iter().enumerate() {
            if let Err(e) = self.write_file(change) {
                self.roll_back(&files[..done]);
                return Err(e);
            }
        }
        drop(files);
        {
            let mut t = self.tables.write();
            for (k, j) in staged.jobs {
                match j {
                    Some(j) => t.jobs.insert(k, j),
                    None => t.jobs.remove(&k),
                };
            }
            for (id, e) in staged.evals {
                match e {
                    Some(e) => t.evals.insert(id, e),
                    None => t.evals.remove(&id),
                };
            }
            for (id, a) in staged.allocs {
                match a {
                    Some(a) => t.allocs.insert(id, a),
                    None => t.allocs.remove(&id),
                };
            }
        }
        counter.notify();
        Ok(())
    }

    /// Put back the published version of files a failed write already wrote. Removals go
    /// first: they free the space the restores may need on a full disk. Best effort: a file
    /// that cannot be restored is logged (memory still holds the published version).
    fn roll_back(&self, written: &[FileChange<'_>]) {
        let mut back = Staged::default();
        {
            let t = self.tables.read();
            for c in written {
                match c {
                    FileChange::Job(k, _) => {
                        back.jobs.insert((*k).clone(), t.jobs.get(*k).cloned());
                    }
                    FileChange::Eval(id, _) => {
                        back.evals.insert(id.to_string(), t.evals.get(*id).cloned());
                    }
                    FileChange::Alloc(id, _) => {
                        back.allocs
                            .insert(id.to_string(), t.allocs.get(*id).cloned());
                    }
                }
            }
        }
        let (removals, rewrites): (Vec<_>, Vec<_>) =
            back.files().into_iter().partition(FileChange::is_removal);
        for c in removals.iter().chain(rewrites.iter()) {
            if let Err(e) = self.write_file(c) {
                log::error!("cannot roll back a failed state write: {e}");
            }
        }
    }

    /// Stage the stop of every running alloc of a job (from the published tables).
    fn stop_allocs_of(t: &Tables, key: &JobKey, desc: &str, index: u64, staged: &mut Staged) {
        let now = crate::time::unix_now_nanos();
        for a in t.allocs.values() {
            if a.namespace == key.0 && a.job_id == key.1 && a.desired_status == "run" {
                let mut a = a.clone();
                a.desired_status = "stop".into();
                a.desired_description = desc.to_string();
                a.modify_index = index;
                a.alloc_modify_index = index;
                a.modify_time = now;
                staged.allocs.insert(a.id.clone(), Some(a));
            }
        }
    }

    /// Register a canonicalized, validated job. A changed spec makes a new version and
    /// replaces its allocations; an unchanged one leaves everything as it is (but for its
    /// evaluation). Persisted, then published; on error nothing visible changed.
    pub fn register(
        &self,
        counter: &IndexCounter,
        node: &NodeInfo,
        mut job: Job,
    ) -> Result<WriteResult, StoreError> {
        let _write = self.persist.lock();
        let index = counter.next();
        let mut staged = Staged::default();
        let key: JobKey = (job.namespace.clone(), job.id.clone());
        let result = {
            let t = self.tables.read();
            let existing = t.jobs.get(&key);
            let changed = existing.map(|e| e.spec_changed(&job)).unwrap_or(true);
            if changed {
                job.version = existing.map(|e| e.version + 1).unwrap_or(0);
                job.create_index = existing.map(|e| e.create_index).unwrap_or(index);
                job.modify_index = index;
                job.job_modify_index = index;
                job.submit_time = crate::time::unix_now_nanos();
                job.status = "pending".into();
                staged.jobs.insert(key.clone(), Some(job.clone()));
            } else if let Some(e) = existing {
                job = e.clone();
            }
            let eval = EvalRecord::new(&job, "job-register", index);
            let eval_id = eval.id.clone();
            staged.evals.insert(eval_id.clone(), Some(eval));
            if changed {
                Self::stop_allocs_of(
                    &t,
                    &key,
                    "alloc not needed due to job update",
                    index,
                    &mut staged,
                );
                if !job.stop {
                    for tg in &job.task_groups {
                        for i in 0..tg.count().max(0) as u32 {
                            let a = AllocRecord::new(&job, &tg.name, i, &eval_id, node, index);
                            staged.allocs.insert(a.id.clone(), Some(a));
                        }
                    }
                }
            }
            WriteResult {
                eval_id,
                eval_create_index: index,
                job_modify_index: job.job_modify_index,
                index,
            }
        };
        self.commit(counter, staged)?;
        Ok(result)
    }

    /// Stop a job (or purge it). `None` when the job is unknown. Persisted, then published:
    /// on error the job is still listed as it was and its allocs still want to run.
    pub fn deregister(
        &self,
        counter: &IndexCounter,
        namespace: &str,
        job_id: &str,
        purge: bool,
    ) -> Result<Option<WriteResult>, StoreError> {
        let _write = self.persist.lock();
        let key: JobKey = (namespace.to_string(), job_id.to_string());
        let mut staged = Staged::default();
        let result = {
            let t = self.tables.read();
            let Some(job) = t.jobs.get(&key) else {
                return Ok(None);
            };
            let index = counter.next();
            let mut job = job.clone();
            if purge {
                staged.jobs.insert(key.clone(), None);
            } else {
                job.stop = true;
                job.modify_index = index;
                job.job_modify_index = index;
                job.version += 1;
                staged.jobs.insert(key.clone(), Some(job.clone()));
            }
            let eval = EvalRecord::new(&job, "job-deregister", index);
            let eval_id = eval.id.clone();
            staged.evals.insert(eval_id.clone(), Some(eval));
            Self::stop_allocs_of(
                &t,
                &key,
                "alloc not needed since job is stopped",
                index,
                &mut staged,
            );
            WriteResult {
                eval_id,
                eval_create_index: index,
                job_modify_index: index,
                index,
            }
        };
        self.commit(counter, staged)?;
        Ok(Some(result))
    }

    /// Stop one allocation; the scheduler places a replacement when its job still wants it.
    /// `None` when the alloc is unknown; otherwise `(eval_id, index)`.
    pub fn stop_alloc(
        &self,
        counter: &IndexCounter,
        node: &NodeInfo,
        alloc_id: &str,
    ) -> Result<Option<(String, u64)>, StoreError> {
        let _write = self.persist.lock();
        let mut staged = Staged::default();
        let (eval_id, index) = {
            let t = self.tables.read();
            let Some(old) = t.allocs.get(alloc_id) else {
                return Ok(None);
            };
            let index = counter.next();
            let key: JobKey = (old.namespace.clone(), old.job_id.clone());
            let current = t.jobs.get(&key);
            let eval_job = current.unwrap_or(&old.job);
            let eval = EvalRecord::new(eval_job, "alloc-stop", index);
            let eval_id = eval.id.clone();
            staged.evals.insert(eval_id.clone(), Some(eval));
            if old.desired_status == "run" {
                let replace = current
                    .filter(|j| !j.stop && j.version == old.job.version && !old.terminal())
                    .map(|j| {
                        AllocRecord::new(j, &old.task_group, old.alloc_index, &eval_id, node, index)
                    });
                let mut a = old.clone();
                a.desired_status = "stop".into();
                a.desired_description = "alloc was stopped by the user".into();
                a.modify_index = index;
                a.alloc_modify_index = index;
                a.modify_time = crate::time::unix_now_nanos();
                if let Some(r) = &replace {
                    a.next_allocation = r.id.clone();
                }
                staged.allocs.insert(alloc_id.to_string(), Some(a));
                if let Some(mut r) = replace {
                    r.previous_allocation = alloc_id.to_string();
                    staged.allocs.insert(r.id.clone(), Some(r));
                }
            }
            (eval_id, index)
        };
        self.commit(counter, staged)?;
        Ok(Some((eval_id, index)))
    }

    /// Change an allocation (the client's task states, collection) and save it: written
    /// before it is visible, so nobody reads a task state that a crash or a full disk could
    /// lose. `None` when the alloc is unknown.
    pub fn update_alloc(
        &self,
        counter: &IndexCounter,
        alloc_id: &str,
        f: impl FnOnce(&mut AllocRecord),
    ) -> Result<Option<AllocRecord>, StoreError> {
        let _write = self.persist.lock();
        let Some(mut a) = self.tables.read().allocs.get(alloc_id).cloned() else {
            return Ok(None);
        };
        f(&mut a);
        a.refresh_client_status();
        a.modify_index = counter.next();
        a.modify_time = crate::time::unix_now_nanos();
        let mut staged = Staged::default();
        staged.allocs.insert(alloc_id.to_string(), Some(a.clone()));
        self.commit(counter, staged)?;
        Ok(Some(a))
    }

    /// Change one task's state of an allocation and save it.
    pub fn update_task(
        &self,
        counter: &IndexCounter,
        alloc_id: &str,
        task: &str,
        f: impl FnOnce(&mut TaskState),
    ) -> Result<Option<AllocRecord>, StoreError> {
        self.update_alloc(counter, alloc_id, |a| {
            let ts = a
                .task_states
                .entry(task.to_string())
                .or_insert_with(TaskState::pending);
            f(ts);
        })
    }

    pub fn job(&self, namespace: &str, id: &str) -> Option<Job> {
        self.tables
            .read()
            .jobs
            .get(&(namespace.to_string(), id.to_string()))
            .cloned()
    }

    pub fn jobs(&self) -> Vec<Job> {
        self.tables.read().jobs.values().cloned().collect()
    }

    pub fn alloc(&self, id: &str) -> Option<AllocRecord> {
        self.tables.read().allocs.get(id).cloned()
    }

    /// Every allocation, oldest first.
    pub fn allocs(&self) -> Vec<AllocRecord> {
        let mut v: Vec<AllocRecord> = self.tables.read().allocs.values().cloned().collect();
        v.sort_by_key(|a| (a.create_index, a.create_time));
        v
    }

    pub fn allocs_of_job(&self, namespace: &str, job_id: &str) -> Vec<AllocRecord> {
        self.allocs()
            .into_iter()
            .filter(|a| a.namespace == namespace && a.job_id == job_id)
            .collect()
    }

    pub fn eval(&self, id: &str) -> Option<EvalRecord> {
        self.tables.read().evals.get(id).cloned()
    }

    pub fn evals(&self) -> Vec<EvalRecord> {
        let mut v: Vec<EvalRecord> = self.tables.read().evals.values().cloned().collect();
        v.sort_by_key(|e| e.create_index);
        v
    }

    /// A job's `Status`: running while an alloc runs, pending while one waits, else dead.
    pub fn job_status(&self, job: &Job) -> &'static str {
        let allocs = self.allocs_of_job(&job.namespace, &job.id);
        let live: Vec<&AllocRecord> = allocs
            .iter()
            .filter(|a| !a.terminal() && a.desired_status == "run")
            .collect();
        if live.iter().any(|a| a.client_status == "running") {
            "running"
        } else if !live.is_empty() {
            "pending"
        } else if job.stop || job.is_batch() || !allocs.is_empty() {
            "dead"
        } else {
            "pending"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(count: i64, cmd: &str) -> Job {
        let mut j = Job::from_json(
            serde_json::json!({"ID": "web", "TaskGroups": [{"Name": "g", "Count": count,
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": cmd}}]}]}),
        )
        .unwrap();
        j.canonicalize("global");
        j
    }

    #[test]
    fn register_places_count_allocs_and_unchanged_is_a_noop_and_state_survives_reload() {
        let dir = std::env::temp_dir().join(format!("nomadlet-wl-{}", uuid::Uuid::new_v4()));
        let counter = IndexCounter::default();
        let node = NodeInfo {
            id: "n1".into(),
            name: "node".into(),
        };
        let w = Workloads::load(&dir).unwrap();
        let r1 = w.register(&counter, &node, job(2, "/bin/true")).unwrap();
        assert_eq!(w.allocs().len(), 2);
        assert!(w.eval(&r1.eval_id).is_some());
        let r2 = w.register(&counter, &node, job(2, "/bin/true")).unwrap();
        assert_eq!(r2.job_modify_index, r1.job_modify_index);
        assert_eq!(w.allocs().len(), 2);
        w.register(&counter, &node, job(1, "/bin/false")).unwrap();
        let allocs = w.allocs();
        assert_eq!(allocs.len(), 3);
        assert_eq!(
            allocs.iter().filter(|a| a.desired_status == "run").count(),
            1
        );
        assert_eq!(w.job("default", "web").unwrap().version, 1);
        let back = Workloads::load(&dir).unwrap();
        assert_eq!(back.allocs().len(), 3);
        assert_eq!(back.job("default", "web").unwrap().version, 1);
        assert!(back.max_index() >= r1.index);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn json_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_write_that_fails_part_way_changes_nothing_in_memory_or_on_disk() {
        let dir = std::env::temp_dir().join(format!("nomadlet-wl-{}", uuid::Uuid::new_v4()));
        let server = dir.join("server");
        let counter = IndexCounter::default();
        let node = NodeInfo {
            id: "n1".into(),
            name: "node".into(),
        };
        // The job file cannot be written (its dir is a file): allocs and eval were written
        // first and must be rolled back.
        let w = Workloads::load(&dir).unwrap();
        std::fs::create_dir_all(&server).unwrap();
        std::fs::write(server.join("jobs"), b"").unwrap();
        let published = counter.current();
        assert!(w.register(&counter, &node, job(2, "/bin/true")).is_err());
        assert!(w.jobs().is_empty() && w.allocs().is_empty() && w.evals().is_empty());
        assert_eq!(json_files(&server.join("allocs")), 0);
        assert_eq!(json_files(&server.join("evals")), 0);
        assert_eq!(counter.current(), published, "no index published");

        // Now a stop that fails: the allocs on disk get their running versions back.
        std::fs::remove_file(server.join("jobs")).unwrap();
        w.register(&counter, &node, job(2, "/bin/true")).unwrap();
        let published = counter.current();
        std::fs::rename(server.join("jobs"), server.join("jobs.away")).unwrap();
        std::fs::write(server.join("jobs"), b"").unwrap();
        assert!(w.deregister(&counter, "default", "web", false).is_err());
        assert!(w.deregister(&counter, "default", "web", true).is_err());
        assert_eq!(counter.current(), published, "no index published");
        assert!(!w.job("default", "web").unwrap().stop);
        assert!(w.allocs().iter().all(|a| a.desired_status == "run"));
        std::fs::remove_file(server.join("jobs")).unwrap();
        std::fs::rename(server.join("jobs.away"), server.join("jobs")).unwrap();
        let back = Workloads::load(&dir).unwrap();
        assert!(!back.job("default", "web").unwrap().stop);
        assert_eq!(back.allocs().len(), 2);
        assert!(back.allocs().iter().all(|a| a.desired_status == "run"));
        assert_eq!(back.evals().len(), 1, "the failed writes' evals are gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
