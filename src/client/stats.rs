//! The stats sampler: every second (called by the main thread between its signal waits) it
//! reads each running task's usage — from its cgroup
//! (memory.stat, cpuacct/cpu.stat) when it has one, else from `/proc` for its process tree (its
//! session and descendants: RSS, CPU ticks and percent) — and the host's CPUs. Host memory and
//! disks are read when asked.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::sys::cgroup::{StatsSource, Usage};
use crate::time::unix_now_nanos as now_ns;

/// Sampling period (Nomad's `collection_interval` default).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Nomad's `Measured` lists: what a reading from `/proc` fills.
pub const PROC_MEMORY_MEASURED: &[&str] = &["RSS", "Max Usage"];
/// CPU fields a reading from `/proc` fills.
pub const PROC_CPU_MEASURED: &[&str] = &["System Mode", "User Mode", "Percent"];
/// Memory fields a v1 memory cgroup fills (Nomad's list for cgroups v1).
pub const CG1_MEMORY_MEASURED: &[&str] = &[
    "RSS",
    "Cache",
    "Swap",
    "Usage",
    "Max Usage",
    "Kernel Usage",
    "Kernel Max Usage",
];
/// Memory fields a v2 memory cgroup fills.
pub const CG2_MEMORY_MEASURED: &[&str] = &["RSS", "Cache", "Swap", "Usage", "Max Usage"];
/// CPU fields a cgroup fills.
pub const CG_CPU_MEASURED: &[&str] = &[
    "System Mode",
    "User Mode",
    "Throttled Periods",
    "Throttled Time",
    "Percent",
];

/// What the sampler knows about one task's usage.
#[derive(Clone, Debug, Default)]
pub struct TaskUsage {
    pub rss: u64,
    pub max_rss: u64,
    pub cache: u64,
    pub swap: u64,
    pub mapped_file: u64,
    pub usage: u64,
    pub max_usage: u64,
    pub kernel_usage: u64,
    pub kernel_max_usage: u64,
    pub percent: f64,
    pub user_percent: f64,
    pub system_percent: f64,
    pub total_ticks: f64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
    pub memory_measured: &'static [&'static str],
    pub cpu_measured: &'static [&'static str],
    pub timestamp: i64,
}

impl TaskUsage {
    /// Add another task's usage (the alloc's total).
    pub fn add(&mut self, o: &TaskUsage) {
        self.rss += o.rss;
        self.max_rss += o.max_rss;
        self.cache += o.cache;
        self.swap += o.swap;
        self.mapped_file += o.mapped_file;
        self.usage += o.usage;
        self.max_usage += o.max_usage;
        self.kernel_usage += o.kernel_usage;
        self.kernel_max_usage += o.kernel_max_usage;
        self.percent += o.percent;
        self.user_percent += o.user_percent;
        self.system_percent += o.system_percent;
        self.total_ticks += o.total_ticks;
        self.throttled_periods += o.throttled_periods;
        self.throttled_time += o.throttled_time;
        if self.memory_measured.is_empty() {
            self.memory_measured = o.memory_measured;
            self.cpu_measured = o.cpu_measured;
        }
    }
}

struct Tracked {
    pid: i32,
    /// The task's cgroup, when it has one.
    cgroup: Option<StatsSource>,
    /// `(user, system, at)` of the last reading: clock ticks (`/proc`) or ns (cgroup).
    last: Option<(u64, u64, Instant)>,
    usage: TaskUsage,
}

#[derive(Clone, Debug, Default)]
struct CpuSample {
    name: String,
    user: u64,
    system: u64,
    idle: u64,
    total: u64,
}

#[derive(Default)]
struct Shared {
    tasks: HashMap<(String, String), Tracked>,
    cpu_prev: Vec<CpuSample>,
    cpu_pct: Vec<(String, f64, f64, f64, f64)>,
}

/// The latest samples; [`Sampler::sample`] refreshes them.
pub struct Sampler {
    shared: Arc<Mutex<Shared>>,
}

struct ProcStat {
    pid: i32,
    ppid: i32,
    sid: i32,
    utime: u64,
    stime: u64,
    rss_pages: u64,
}

fn read_proc_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // rest[0] is field 3 (state).
    Some(ProcStat {
        pid: pid.parse().ok()?,
        ppid: rest.get(1)?.parse().ok()?,
        sid: rest.get(3)?.parse().ok()?,
        utime: rest.get(11)?.parse().ok()?,
        stime: rest.get(12)?.parse().ok()?,
        rss_pages: rest.get(21)?.parse().ok()?,
    })
}

fn all_procs() -> Vec<ProcStat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            if name.bytes().all(|b| b.is_ascii_digit()) {
                read_proc_stat(name)
            } else {
                None
            }
        })
        .collect()
}

/// The task's processes: its session (it called setsid) plus every descendant.
fn tree(procs: &[ProcStat], root: i32) -> Vec<&ProcStat> {
    let mut members: Vec<i32> = procs
        .iter()
        .filter(|p| p.sid == root || p.pid == root)
        .map(|p| p.pid)
        .collect();
    loop {
        let before = members.len();
        for p in procs {
            if members.contains(&p.ppid) && !members.contains(&p.pid) {
                members.push(p.pid);
            }
        }
        if members.len() == before {
            break;
        }
    }
    procs.iter().filter(|p| members.contains(&p.pid)).collect()
}

fn page_size() -> u64 {
    let v = crate::sys::process::page_size();
    if v > 0 {
        v
    } else {
        4096
    }
}

fn clk_tck() -> f64 {
    let v = crate::sys::process::clock_ticks();
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// The CPU clock in MHz (first `cpu MHz` of /proc/cpuinfo; 1000 when unknown).
pub fn cpu_mhz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(1000.0)
}

fn read_cpus() -> Vec<CpuSample> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("cpu")
                && l.as_bytes()
                    .get(3)
                    .map(|b| b.is_ascii_digit())
                    .unwrap_or(false)
        })
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let user = n(1) + n(2);
            let system = n(3) + n(6) + n(7);
            let idle = n(4) + n(5);
            let total = user + system + idle + n(8);
            Some(CpuSample {
                name: f.first()?.to_string(),
                user,
                system,
                idle,
                total,
            })
        })
        .collect()
}

/// One reading of a task, before CPU deltas are taken.
enum Reading {
    Proc {
        rss: u64,
        user_ticks: u64,
        system_ticks: u64,
    },
    Cgroup(Usage),
}

fn sample_tasks(shared: &Mutex<Shared>) {
    let roots: Vec<((String, String), i32, Option<StatsSource>)> = shared
        .lock()
        .tasks
        .iter()
        .map(|(k, t)| (k.clone(), t.pid, t.cgroup.clone()))
        .collect();
    if roots.is_empty() {
        return;
    }
    // The /proc walk is only needed for tasks without a cgroup (or without a memory one).
    let mut procs: Option<Vec<ProcStat>> = None;
    let page = page_size();
    let hz = clk_tck();
    let mhz = cpu_mhz();
    let now = Instant::now();
    let mut results = Vec::new();
    for (key, root, cgroup) in roots {
        let reading = match cgroup.as_ref().map(StatsSource::sample) {
            Some(Some(mut u)) => {
                if !u.memory {
                    let members = tree(procs.get_or_insert_with(all_procs), root);
                    u.rss = members.iter().map(|p| p.rss_pages * page).sum();
                    u.usage = u.rss;
                }
                Reading::Cgroup(u)
            }
            // The cgroup is gone: the task is being stopped; keep the last reading.
            Some(None) => continue,
            None => {
                let members = tree(procs.get_or_insert_with(all_procs), root);
                Reading::Proc {
                    rss: members.iter().map(|p| p.rss_pages * page).sum(),
                    user_ticks: members.iter().map(|p| p.utime).sum(),
                    system_ticks: members.iter().map(|p| p.stime).sum(),
                }
            }
        };
        results.push((key, reading));
    }
    let mut s = shared.lock();
    for (key, reading) in results {
        let Some(t) = s.tasks.get_mut(&key) else {
            continue;
        };
        // CPU counters and the seconds one unit of them is.
        let (ut, st, unit) = match &reading {
            Reading::Proc {
                user_ticks,
                system_ticks,
                ..
            } => (*user_ticks, *system_ticks, 1.0 / hz),
            Reading::Cgroup(u) => (u.cpu_user_ns, u.cpu_system_ns, 1e-9),
        };
        let (user_pct, sys_pct) = match t.last {
            Some((lu, ls, at)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    ut.saturating_sub(lu) as f64 * unit / secs * 100.0,
                    st.saturating_sub(ls) as f64 * unit / secs * 100.0,
                )
            }
            None => (0.0, 0.0),
        };
        t.last = Some((ut, st, now));
        let percent = user_pct + sys_pct;
        let mut usage = TaskUsage {
            percent,
            user_percent: user_pct,
            system_percent: sys_pct,
            total_ticks: percent / 100.0 * mhz,
            timestamp: now_ns(),
            ..TaskUsage::default()
        };
        match reading {
            Reading::Proc { rss, .. } => {
                usage.rss = rss;
                usage.max_rss = t.usage.max_rss.max(rss);
                usage.usage = rss;
                usage.max_usage = usage.max_rss;
                usage.memory_measured = PROC_MEMORY_MEASURED;
                usage.cpu_measured = PROC_CPU_MEASURED;
            }
            Reading::Cgroup(u) => {
                usage.rss = u.rss;
                usage.max_rss = t.usage.max_rss.max(u.rss);
                usage.cache = u.cache;
                usage.swap = u.swap;
                usage.mapped_file = u.mapped_file;
                usage.usage = u.usage;
                usage.max_usage = u.max_usage.max(t.usage.max_usage).max(u.usage);
                usage.kernel_usage = u.kernel_usage;
                usage.kernel_max_usage = u.kernel_max_usage;
                usage.throttled_periods = u.throttled_periods;
                usage.throttled_time = u.throttled_ns;
                usage.memory_measured = match (u.memory, u.v2) {
                    (false, _) => PROC_MEMORY_MEASURED,
                    (true, false) => CG1_MEMORY_MEASURED,
                    (true, true) => CG2_MEMORY_MEASURED,
                };
                usage.cpu_measured = if u.cpu { CG_CPU_MEASURED } else { &[] };
            }
        }
        t.usage = usage;
    }
}

fn sample_host(shared: &Mutex<Shared>) {
    let cpus = read_cpus();
    let mut s = shared.lock();
    let prev = std::mem::take(&mut s.cpu_prev);
    s.cpu_pct = cpus
        .iter()
        .map(|c| {
            let p = prev
                .iter()
                .find(|p| p.name == c.name)
                .cloned()
                .unwrap_or_default();
            let total = c.total.saturating_sub(p.total).max(1) as f64;
            let user = c.user.saturating_sub(p.user) as f64 / total * 100.0;
            let system = c.system.saturating_sub(p.system) as f64 / total * 100.0;
            let idle = c.idle.saturating_sub(p.idle) as f64 / total * 100.0;
            (c.name.clone(), user, system, idle, user + system)
        })
        .collect();
    s.cpu_prev = cpus;
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            shared: Arc::new(Mutex::new(Shared::default())),
        }
    }

    /// Take one sample of every task and of the host's CPUs. The main thread calls it every
    /// [`SAMPLE_INTERVAL`] while it waits for a stop signal: no thread of its own.
    pub fn sample(&self) {
        sample_tasks(&self.shared);
        sample_host(&self.shared);
    }

    /// Track a task: read from its cgroup when it has one, else its process tree.
    pub fn register(&self, alloc_id: &str, task: &str, pid: i32, cgroup: Option<StatsSource>) {
        self.shared.lock().tasks.insert(
            (alloc_id.to_string(), task.to_string()),
            Tracked {
                pid,
                cgroup,
                last: None,
                usage: TaskUsage::default(),
            },
        );
    }

    pub fn unregister(&self, alloc_id: &str, task: &str) {
        self.shared
            .lock()
            .tasks
            .remove(&(alloc_id.to_string(), task.to_string()));
    }

    /// The latest sample of a running task (sampled now if it has none yet).
    pub fn task_usage(&self, alloc_id: &str, task: &str) -> Option<TaskUsage> {
        let key = (alloc_id.to_string(), task.to_string());
        let fresh = self
            .shared
            .lock()
            .tasks
            .get(&key)
            .map(|t| t.usage.timestamp == 0)?;
        if fresh {
            sample_tasks(&self.shared);
        }
        self.shared.lock().tasks.get(&key).map(|t| t.usage.clone())
    }

    /// This host's stats (`api` serves them as `HostStats`, ref §3.3).
    pub fn host_stats(&self, alloc_root: &Path, started: std::time::SystemTime) -> HostStats {
        if self.shared.lock().cpu_prev.is_empty() {
            sample_host(&self.shared);
        }
        let mhz = cpu_mhz();
        let cpus = self.shared.lock().cpu_pct.clone();
        let consumed: f64 = cpus.iter().map(|c| c.4 / 100.0 * mhz).sum();
        let cpu: Vec<HostCpu> = cpus
            .into_iter()
            .map(|(name, user, system, idle, total)| HostCpu {
                name,
                user,
                system,
                idle,
                total_percent: total,
                total_ticks: total / 100.0 * mhz,
            })
            .collect();
        let _ = started;
        HostStats {
            memory: memory(),
            cpu,
            disks: disks(),
            alloc_dir: disk_stats("", "", alloc_root),
            uptime: uptime(),
            timestamp: now_ns(),
            cpu_ticks_consumed: consumed,
        }
    }
}

/// A snapshot of this host's usage.
#[derive(Clone, Debug, PartialEq)]
pub struct HostStats {
    pub memory: HostMemory,
    pub cpu: Vec<HostCpu>,
    /// Every mounted block device (and `/`).
    pub disks: Vec<DiskUsage>,
    /// The file system holding the alloc dirs (`None` when it cannot be read).
    pub alloc_dir: Option<DiskUsage>,
    /// Seconds since boot.
    pub uptime: u64,
    /// Unix nanoseconds of this snapshot.
    pub timestamp: i64,
    /// MHz of CPU time consumed over the last sample, summed over CPUs.
    pub cpu_ticks_consumed: f64,
}

/// Host memory in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMemory {
    pub total: u64,
    pub available: u64,
    pub used: u64,
    pub free: u64,
}

/// One CPU's usage over the last sample, in percent.
#[derive(Clone, Debug, PartialEq)]
pub struct HostCpu {
    /// `cpu0`, `cpu1`, ...
    pub name: String,
    pub user: f64,
    pub system: f64,
    pub idle: f64,
    pub total_percent: f64,
    /// `total_percent` of the CPU's MHz.
    pub total_ticks: f64,
}

/// One file system's usage (bytes; percentages of used over used plus available).
#[derive(Clone, Debug, PartialEq)]
pub struct DiskUsage {
    pub device: String,
    pub mountpoint: String,
    pub size: u64,
    pub used: u64,
    pub available: u64,
    pub used_percent: f64,
    pub inodes_used_percent: f64,
}

fn meminfo() -> HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

fn memory() -> HostMemory {
    let m = meminfo();
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    let total = g("MemTotal");
    let available = g("MemAvailable");
    HostMemory {
        total,
        available,
        used: total.saturating_sub(available),
        free: g("MemFree"),
    }
}

fn uptime() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

fn disk_stats(device: &str, mountpoint: &str, path: &Path) -> Option<DiskUsage> {
    let st = crate::sys::fd::statvfs(path).ok()?;
    let (size, free, avail) = (st.total, st.free, st.avail);
    let used = size.saturating_sub(free);
    let pct = if used + avail > 0 {
        used as f64 / (used + avail) as f64 * 100.0
    } else {
        0.0
    };
    let inodes = st.inodes;
    let ipct = if inodes > 0 {
        (inodes - st.inodes_free) as f64 / inodes as f64 * 100.0
    } else {
        0.0
    };
    Some(DiskUsage {
        device: device.to_string(),
        mountpoint: mountpoint.to_string(),
        size,
        used,
        available: avail,
        used_percent: pct,
        inodes_used_percent: ipct,
    })
}

fn disks() -> Vec<DiskUsage> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 2 || !(f[0].starts_with("/dev/") || f[1] == "/") || seen.contains(&f[0]) {
            continue;
        }
        seen.push(f[0]);
        out.extend(disk_stats(f[0], f[1], Path::new(f[1])));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_tree_is_measured() {
        let me = std::process::id() as i32;
        let procs = all_procs();
        let own = procs.iter().find(|p| p.pid == me).unwrap();
        assert!(own.rss_pages > 0);
        assert!(!read_cpus().is_empty());
    }
}
