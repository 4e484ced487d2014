//! Control groups for tasks, as Nomad does for raw_exec: find the hierarchies this host has
//! (cgroup v2, v1, or hybrid: v1 controllers plus the v2 unified tree), make one cgroup per
//! task under an agent-owned parent, write its limits (memory, cpu weight), list, freeze and
//! kill everything in it, read its usage and OOM kills, and remove it.
//!
//! Layout: on a pure v2 host `<mount>/nomadlet.slice/<alloc_id>.<task>.scope` (a root-level
//! parent, like Nomad's `nomad.slice`, because v2 forbids controllers below a cgroup that holds
//! processes); on v1 and hybrid hosts `<mount>/<the agent's own cgroup>/nomadlet/<alloc_id>.<task>`
//! in every used hierarchy (`.scope` appended in the unified one), so tasks stay inside whatever
//! limits the agent itself runs under. Alloc IDs are unique UUIDs: no two agents ever share a
//! task cgroup, and the shared parents are never removed.
//!
//! `client.cgroup_parent` (Nomad's key) replaces those parents by `<mount>/<cgroup_parent>` in
//! every hierarchy. Without it, a **delegated** v2 cgroup is used when the agent runs in one
//! (systemd's `Delegate=yes` marks it with the `trusted.delegate` xattr): the agent moves itself
//! into the leaf `<delegated>/agent` (cgroup v2 allows no processes in a cgroup whose children
//! use controllers) and makes task cgroups beside it, `<delegated>/<alloc_id>.<task>.scope`,
//! enabling the controllers in `<delegated>/cgroup.subtree_control`. Started already in
//! `<delegated>/agent` (systemd's `DelegateSubgroup=agent`), it stays there. Started at the top
//! of a delegated cgroup where controllers would have to be enabled, it keeps the root-level
//! layout: a restart by a systemd without `DelegateSubgroup=` could not put the new agent back
//! there while tasks run below it. A task cgroup is looked for in every layout the agent could
//! have used before (an upgrade, a restart placed differently), so tasks are found again.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Setting this variable (to anything but empty or `0`) makes the agent use no cgroups.
pub const DISABLE_ENV: &str = "NOMADLET_NO_CGROUPS";
/// The agent's parent cgroup at the root of a pure v2 hierarchy.
pub const V2_PARENT: &str = "nomadlet.slice";
/// The agent's parent cgroup below its own cgroup in each v1 (and hybrid unified) hierarchy.
pub const V1_PARENT: &str = "nomadlet";
/// The v1 controllers a task's cgroup joins.
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer"];
/// The v2 controllers enabled for task cgroups when the host offers them.
pub const V2_CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];
/// The leaf of a delegated cgroup the agent itself runs in (systemd: `DelegateSubgroup=agent`).
pub const AGENT_LEAF: &str = "agent";
/// Extended attributes a service manager sets (to `1`) on a cgroup it delegated: systemd's
/// system manager uses `trusted.`, a user manager `user.`.
pub const DELEGATE_XATTRS: &[&str] = &["trusted.delegate", "user.delegate"];
/// How long a kill waits for the cgroup to become empty.
pub const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often a kill checks whether the cgroup is empty yet.
pub const KILL_POLL: Duration = Duration::from_millis(10);
/// Polls between two kill rounds (dying processes get this long to leave the cgroup).
pub const KILL_ROUNDS_APART: u32 = 5;
/// How long a kill waits for a freeze to take before signalling anyway.
pub const FREEZE_WAIT: Duration = Duration::from_secs(1);
/// Longest task name used as is in a cgroup's name; longer or unusual names are hashed.
pub const MAX_PLAIN_TASK_NAME: usize = 100;
/// Deepest sub-cgroup a task may have made that a kill still walks into.
pub const MAX_NESTED_DEPTH: usize = 8;
/// Smallest `cpu.shares` the kernel accepts.
pub const MIN_CPU_SHARES: i64 = 2;
/// Largest `cpu.shares` the kernel accepts.
pub const MAX_CPU_SHARES: i64 = 262_144;

/// How this agent uses cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every controller in the unified v2 hierarchy.
    V2,
    /// v1 controllers for limits and stats, the v2 unified hierarchy for membership and kill.
    Hybrid,
    /// v1 hierarchies only.
    V1,
    /// No writable cgroup: tasks are held by their process group only.
    None,
}

impl Mode {
    /// The name `/v1/agent/self` shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::V2 => "v2",
            Mode::Hybrid => "hybrid",
            Mode::V1 => "v1",
            Mode::None => "none",
        }
    }
}

/// A failed cgroup operation, with the file it was on.
#[derive(Debug)]
pub struct CgroupError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.what,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for CgroupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn err(what: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One hierarchy the agent uses: where its parent cgroup is, and what it controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// The agent's parent cgroup in this hierarchy (task cgroups are made inside).
    pub base: PathBuf,
    /// The v2 (unified) hierarchy.
    pub v2: bool,
    /// Controllers usable in task cgroups (v1: the hierarchy's; v2: those enabled).
    pub controllers: Vec<String>,
}

impl Hierarchy {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

/// What the host offers, before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub hierarchies: Vec<Hierarchy>,
    /// The v2 mount point when the plan is pure v2.
    pub v2_root: Option<PathBuf>,
    /// The v2 cgroups, top down, whose `cgroup.subtree_control` gets the task controllers
    /// (pure v2: the root and each level down to the parent; delegated: that cgroup only).
    pub enable_in: Vec<PathBuf>,
}

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: Vec<String>,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(Mount {
                root: unescape(pre.get(3)?),
                point: PathBuf::from(unescape(pre.get(4)?)),
                fstype: post.first()?.to_string(),
                super_opts: post
                    .get(2)
                    .map(|o| o.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// `(controllers, path)` of each line of `/proc/self/cgroup` (`0::/x` has no controllers).
fn parse_self_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            let ctrls = ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some((ctrls, path.to_string()))
        })
        .collect()
}

/// Where a cgroup path (as `/proc/self/cgroup` shows it) is under a mount of its hierarchy.
fn under_mount(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        path
    } else {
        let rest = path.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        point.to_path_buf()
    } else {
        point.join(rel)
    })
}

/// Decide the layout from `/proc/self/mountinfo`, `/proc/self/cgroup`, a reader of a v2
/// mount's root `cgroup.controllers`, and `client.cgroup_parent` (relative, checked by the
/// config). Pure: nothing is created.
pub fn plan(
    mountinfo: &str,
    self_cgroup: &str,
    read_controllers: &dyn Fn(&Path) -> String,
    parent: Option<&str>,
) -> Plan {
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_self_cgroup(self_cgroup);
    let mut unified: Option<&Mount> = None;
    let mut v1: Vec<(&Mount, Vec<String>)> = Vec::new();
    for m in &mounts {
        if m.fstype == "cgroup2" {
            if unified.is_none() {
                unified = Some(m);
            }
        } else if m.fstype == "cgroup" {
            let ctrls: Vec<String> = m
                .super_opts
                .iter()
                .filter(|o| V1_CONTROLLERS.contains(&o.as_str()))
                .cloned()
                .collect();
            if !ctrls.is_empty() && !v1.iter().any(|(_, c)| *c == ctrls) {
                v1.push((m, ctrls));
            }
        }
    }
    let v1_limits = v1
        .iter()
        .any(|(_, c)| c.iter().any(|x| x == "memory" || x == "cpu"));
    let mut hierarchies = Vec::new();
    if let Some(u) = unified {
        let ctrls: Vec<String> = read_controllers(&u.point.join("cgroup.controllers"))
            .split_whitespace()
            .filter(|c| V2_CONTROLLERS.contains(c))
            .map(str::to_string)
            .collect();
        if !v1_limits && (!ctrls.is_empty() || v1.is_empty()) {
            return Plan {
                mode: Mode::V2,
                hierarchies: vec![Hierarchy {
                    base: u.point.join(parent.unwrap_or(V2_PARENT)),
                    v2: true,
                    controllers: ctrls,
                }],
                v2_root: Some(u.point.clone()),
                enable_in: levels(&u.point, parent.unwrap_or(V2_PARENT)),
            };
        }
        let own_v2 = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p);
        let base = match parent {
            Some(rel) => Some(u.point.join(rel)),
            None => own_v2
                .and_then(|p| under_mount(&u.point, &u.root, p))
                .map(|d| d.join(V1_PARENT)),
        };
        if let Some(base) = base {
            hierarchies.push(Hierarchy {
                base,
                v2: true,
                controllers: Vec::new(),
            });
        }
    }
    for (m, ctrls) in v1 {
        let own_path = own
            .iter()
            .find(|(c, _)| c.iter().any(|x| ctrls.contains(x)))
            .map(|(_, p)| p);
        let base = match parent {
            Some(rel) => Some(m.point.join(rel)),
            None => own_path
                .and_then(|p| under_mount(&m.point, &m.root, p))
                .map(|d| d.join(V1_PARENT)),
        };
        if let Some(base) = base {
            hierarchies.push(Hierarchy {
                base,
                v2: false,
                controllers: ctrls,
            });
        }
    }
    Plan {
        mode: mode_of(&hierarchies),
        hierarchies,
        v2_root: None,
        enable_in: Vec::new(),
    }
}

/// `root`, then each cgroup from `root` down to `root/rel`.
fn levels(root: &Path, rel: &str) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut at = root.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        at = at.join(c);
        out.push(at.clone());
    }
    out
}

fn mode_of(h: &[Hierarchy]) -> Mode {
    let v2 = h.iter().any(|x| x.v2);
    let v1 = h.iter().any(|x| !x.v2);
    match (v2, v1) {
        (true, true) => Mode::Hybrid,
        (true, false) => Mode::V2,
        (false, true) => Mode::V1,
        (false, false) => Mode::None,
    }
}

/// The v2 cgroup delegated to this agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    /// The delegated cgroup: task cgroups are made inside it.
    pub dir: PathBuf,
    /// The agent already runs in `<dir>/agent` (systemd's `DelegateSubgroup=agent`).
    pub in_leaf: bool,
}

/// Whether a cgroup carries a service manager's delegation mark and this process may write
/// its `cgroup.procs` and `cgroup.subtree_control`.
fn is_delegated(dir: &Path) -> bool {
    let marked = DELEGATE_XATTRS.iter().any(|name| {
        let mut buf = [0u8; 8];
        rustix::fs::getxattr(dir, *name, &mut buf[..]).is_ok_and(|n| buf[..n].trim_ascii() == b"1")
    });
    marked
        && ["cgroup.procs", "cgroup.subtree_control"].iter().all(|f| {
            rustix::fs::accessat(
                rustix::fs::CWD,
                dir.join(f),
                rustix::fs::Access::WRITE_OK,
                rustix::fs::AtFlags::empty(),
            )
            .is_ok()
        })
}

/// The delegated v2 cgroup the agent runs at the top of, or in whose `agent` leaf it runs.
/// Pure but for `delegated`, which tells whether a dir is delegated to this process.
pub fn find_delegation(
    mountinfo: &str,
    self_cgroup: &str,
    delegated: &dyn Fn(&Path) -> bool,
) -> Option<Delegation> {
    let mounts = parse_mountinfo(mountinfo);
    let u = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    let own = parse_self_cgroup(self_cgroup);
    let path = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p)?;
    let dir = under_mount(&u.point, &u.root, path)?;
    if dir == u.point {
        return None;
    }
    if dir.file_name().is_some_and(|n| n == AGENT_LEAF) {
        if let Some(parent) = dir.parent().filter(|p| *p != u.point) {
            if delegated(parent) {
                return Some(Delegation {
                    dir: parent.to_path_buf(),
                    in_leaf: true,
                });
            }
        }
    }
    delegated(&dir).then_some(Delegation {
        dir,
        in_leaf: false,
    })
}

/// A task's resources as cgroup limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `resources.cpu` in MHz: the cpu weight.
    pub cpu_mhz: i64,
    /// `resources.memory` in MB.
    pub memory_mb: i64,
    /// `resources.memory_max` in MB (0: none).
    pub memory_max_mb: i64,
}

impl Limits {
    /// `(hard, soft)` memory limits in bytes, as Nomad computes them: with `memory_max` the
    /// hard limit is it and `memory` is the soft one; otherwise `memory` is the hard limit.
    pub fn memory_bytes(&self) -> (i64, i64) {
        let mb = 1024 * 1024;
        if self.memory_max_mb > 0 {
            let hard = self.memory_max_mb.max(self.memory_mb);
            (
                hard.saturating_mul(mb),
                self.memory_mb.max(0).saturating_mul(mb),
            )
        } else {
            (self.memory_mb.max(0).saturating_mul(mb), 0)
        }
    }

    /// v1 `cpu.shares`: the MHz, within the kernel's range.
    pub fn cpu_shares(&self) -> i64 {
        self.cpu_mhz.clamp(MIN_CPU_SHARES, MAX_CPU_SHARES)
    }

    /// v2 `cpu.weight` from the shares, as Nomad's executor converts them (runc's linear
    /// mapping of [2, 262144] onto [1, 10000]).
    pub fn cpu_weight(&self) -> i64 {
        1 + ((self.cpu_shares() - 2) * 9999) / 262_142
    }
}

/// The cgroups this agent uses, found once at start.
pub struct Cgroups {
    mode: Mode,
    hierarchies: Vec<Hierarchy>,
    /// Why cgroups are not used (mode `None`).
    reason: String,
    /// Other v2 dirs an earlier agent may have made task cgroups in (another layout).
    alternates: Vec<PathBuf>,
    /// The delegated v2 cgroup task cgroups are made in.
    delegated: Option<PathBuf>,
}

/// Why a delegated cgroup is not taken (the agent logs it and uses the default layout).
#[derive(Debug)]
enum AdoptError {
    /// The plan has no v2 hierarchy to put the delegated cgroup in.
    NoV2,
    /// The agent runs at the delegated cgroup's top, where controllers would be enabled.
    AtTop(PathBuf),
    /// The agent's leaf could not be made or entered.
    Setup(CgroupError),
}

impl std::fmt::Display for AdoptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdoptError::NoV2 => f.write_str("no v2 hierarchy is in use"),
            AdoptError::AtTop(dir) => write!(
                f,
                "{dir} is delegated, but the agent was started at its top: with controllers \
                 enabled there, a restart could not put the new agent back into it while tasks \
                 run below it (cgroup v2 has no processes in inner cgroups); start the agent in \
                 {dir}/{AGENT_LEAF} (systemd 254 or later: DelegateSubgroup={AGENT_LEAF}) to \
                 run tasks inside it",
                dir = dir.display()
            ),
            AdoptError::Setup(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AdoptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdoptError::Setup(e) => Some(e),
            AdoptError::NoV2 | AdoptError::AtTop(_) => None,
        }
    }
}

/// Take a delegated cgroup for the v2 hierarchy of `p`: move the agent into its `agent` leaf
/// (unless it runs there already), and make task cgroups directly inside it.
fn adopt(p: &mut Plan, d: &Delegation) -> Result<(), AdoptError> {
    let pure = p.v2_root.is_some();
    let Some(h) = p.hierarchies.iter_mut().find(|h| h.v2) else {
        return Err(AdoptError::NoV2);
    };
    let wanted: Vec<String> = if pure {
        std::fs::read_to_string(d.dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .filter(|c| V2_CONTROLLERS.contains(c))
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    if !d.in_leaf && !wanted.is_empty() {
        return Err(AdoptError::AtTop(d.dir.clone()));
    }
    if !d.in_leaf {
        let leaf = d.dir.join(AGENT_LEAF);
        mkdir(&leaf).map_err(AdoptError::Setup)?;
        // Moves this process only (all its threads); its shims and tasks stay where they are.
        write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())
            .map_err(AdoptError::Setup)?;
    }
    h.base = d.dir.clone();
    h.controllers = wanted;
    p.enable_in = if pure {
        vec![d.dir.clone()]
    } else {
        Vec::new()
    };
    p.v2_root = None;
    Ok(())
}

impl Cgroups {
    /// Find the host's hierarchies and make the agent's parent cgroups (under
    /// `client.cgroup_parent` when given, else in a delegated cgroup when the agent runs in
    /// one, else the default layout); mode `None` when nothing is writable or [`DISABLE_ENV`]
    /// is set.
    pub fn detect(parent: Option<&str>) -> Cgroups {
        if std::env::var(DISABLE_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
            return Cgroups::none(format!("disabled by {DISABLE_ENV}"));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut p = plan(
            &mountinfo,
            &own,
            &|path| std::fs::read_to_string(path).unwrap_or_default(),
            parent,
        );
        if p.hierarchies.is_empty() {
            return Cgroups::none("no cgroup hierarchy is mounted".into());
        }
        let default_v2 = p.hierarchies.iter().find(|h| h.v2).map(|h| h.base.clone());
        let mut alternates = Vec::new();
        let mut delegated = None;
        let found = parent
            .is_none()
            .then(|| find_delegation(&mountinfo, &own, &is_delegated))
            .flatten();
        if let Some(d) = found {
            match adopt(&mut p, &d) {
                Ok(()) => {
                    log::info!(
                        "cgroups: {} is delegated to the agent: the agent runs in {}, tasks \
                         beside it",
                        d.dir.display(),
                        d.dir.join(AGENT_LEAF).display()
                    );
                    delegated = Some(d.dir.clone());
                    alternates.extend(default_v2);
                }
                Err(why) => {
                    log::warn!("cgroups: {why}");
                    alternates.push(d.dir.clone());
                }
            }
        }
        let mut usable = Vec::new();
        let mut last_error = String::new();
        for mut h in p.hierarchies {
            if let Err(e) = mkdir_all(&h.base) {
                last_error = e.to_string();
                log::debug!("cgroups: {last_error}");
                continue;
            }
            if h.v2 && !p.enable_in.is_empty() {
                h.controllers = enable_v2_controllers(&p.enable_in, &h.base, &h.controllers);
            }
            usable.push(h);
        }
        if usable.is_empty() {
            return Cgroups::none(format!("no cgroup is writable ({last_error})"));
        }
        Cgroups {
            mode: mode_of(&usable),
            hierarchies: usable,
            reason: String::new(),
            alternates,
            delegated,
        }
    }

    /// No cgroups, for `reason`.
    pub fn none(reason: String) -> Cgroups {
        Cgroups {
            mode: Mode::None,
            hierarchies: Vec::new(),
            reason,
            alternates: Vec::new(),
            delegated: None,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the mode is `None` (empty otherwise).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether a hierarchy offers a controller.
    pub fn controls(&self, c: &str) -> bool {
        self.hierarchies.iter().any(|h| h.has(c))
    }

    /// The parent task cgroups are made in, as a path from its hierarchy's root (the v2 one
    /// when used): what Nomad shows tasks as `NOMAD_PARENT_CGROUP`. `None` in mode `None`.
    pub fn parent_name(&self) -> Option<String> {
        let h = self
            .hierarchies
            .iter()
            .find(|h| h.v2)
            .or(self.hierarchies.first())?;
        let mounts =
            parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let rel = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
            .filter_map(|m| h.base.strip_prefix(&m.point).ok())
            .min_by_key(|r| r.components().count())?;
        Some(format!("/{}", rel.display()))
    }

    /// The delegated v2 cgroup task cgroups are made in, if one is used.
    pub fn delegated(&self) -> Option<&Path> {
        self.delegated.as_deref()
    }

    /// The agent's parent cgroups.
    pub fn parents(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.base.clone()).collect()
    }

    fn task_dirs(&self, alloc_id: &str, task: &str) -> io::Result<Vec<TaskDir>> {
        let name = task_cgroup_name(alloc_id, task)?;
        Ok(self
            .hierarchies
            .iter()
            .map(|h| TaskDir {
                path: h.base.join(if h.v2 {
                    format!("{name}.scope")
                } else {
                    name.clone()
                }),
                v2: h.v2,
                controllers: h.controllers.clone(),
            })
            .collect())
    }

    /// The task's cgroup if one is left from an earlier run (an agent crash): it is this
    /// agent's (its parent) and this task's (its alloc ID and task name) by its path.
    pub fn leftover(&self, alloc_id: &str, task: &str) -> Option<TaskCgroup> {
        let mut dirs = self.task_dirs(alloc_id, task).ok()?;
        for d in dirs.iter_mut().filter(|d| d.v2 && !d.path.is_dir()) {
            let Some(name) = d.path.file_name() else {
                continue;
            };
            if let Some(found) = self
                .alternates
                .iter()
                .map(|a| a.join(name))
                .find(|p| p.is_dir())
            {
                d.path = found;
            }
        }
        dirs.retain(|d| d.path.is_dir());
        (!dirs.is_empty()).then_some(TaskCgroup { dirs })
    }

    /// Make the task's cgroup (killing and removing a leftover one first) and write its
    /// limits. `Ok(None)` in mode `None`.
    pub fn create(
        &self,
        alloc_id: &str,
        task: &str,
        limits: &Limits,
    ) -> io::Result<Option<TaskCgroup>> {
        if self.mode == Mode::None {
            return Ok(None);
        }
        if let Some(old) = self.leftover(alloc_id, task) {
            log::warn!("alloc {alloc_id} task {task}: killing the processes of a leftover cgroup");
            old.destroy(KILL_WAIT).map_err(io::Error::other)?;
        }
        let cg = TaskCgroup {
            dirs: self.task_dirs(alloc_id, task)?,
        };
        let made = cg.make(limits);
        if let Err(e) = made {
            let _ = cg.destroy(Duration::ZERO);
            return Err(io::Error::other(e));
        }
        Ok(Some(cg))
    }
}

/// `<alloc_id>.<task>`, the task name hashed when it is long or has unusual characters. An
/// alloc ID that is not a UUID-like hex string is `InvalidInput`.
pub fn task_cgroup_name(alloc_id: &str, task: &str) -> io::Result<String> {
    let id_ok = !alloc_id.is_empty()
        && alloc_id.len() <= 64
        && alloc_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !id_ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("alloc ID {alloc_id:?} cannot name a cgroup"),
        ));
    }
    let plain = !task.is_empty()
        && task.len() <= MAX_PLAIN_TASK_NAME
        && task
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if plain {
        return Ok(format!("{alloc_id}.{task}"));
    }
    let digest = Sha256::digest(task.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{alloc_id}.t-{hex}"))
}

/// `mkdir -p`: a configured parent may be several levels deep.
fn mkdir_all(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|e| err("create cgroup", path, e))
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err("create cgroup", path, e)),
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| err("write", path, e))
}

/// Enable the controllers in `dirs` (top down); returns those enabled for task cgroups made
/// in `base`.
fn enable_v2_controllers(dirs: &[PathBuf], base: &Path, wanted: &[String]) -> Vec<String> {
    for c in wanted {
        for dir in dirs {
            if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                log::debug!("cgroups: {e}");
            }
        }
    }
    let on = std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
    on.split_whitespace()
        .filter(|c| wanted.iter().any(|w| w == c))
        .map(str::to_string)
        .collect()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[derive(Clone, Debug)]
struct TaskDir {
    path: PathBuf,
    v2: bool,
    controllers: Vec<String>,
}

impl TaskDir {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

/// One task's cgroup, in every hierarchy the agent uses.
#[derive(Debug)]
pub struct TaskCgroup {
    dirs: Vec<TaskDir>,
}

/// Where a task's usage is read from (cheap to clone for the stats sampler).
#[derive(Clone, Debug, Default)]
pub struct StatsSource {
    /// `(dir, v2)` of the cgroup with the memory controller.
    memory: Option<(PathBuf, bool)>,
    /// `(dir, v2)` of the cgroup with cpu accounting (v1 cpuacct, or any v2 cgroup).
    cpu: Option<(PathBuf, bool)>,
    /// v1 `cpu` controller dir (throttling).
    cpu_v1: Option<PathBuf>,
}

/// One reading of a task cgroup's usage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub memory: bool,
    pub v2: bool,
    pub rss: u64,
    pub cache: u64,
    pub swap: u64,
    pub mapped_file: u64,
    pub usage: u64,
    pub max_usage: u64,
    pub kernel_usage: u64,
    pub kernel_max_usage: u64,
    pub cpu: bool,
    pub cpu_total_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

/// USER_HZ, the unit of v1 `cpuacct.stat`.
fn clk_tck() -> u64 {
    let v = super::process::clock_ticks();
    if v > 0 {
        v
    } else {
        100
    }
}

impl StatsSource {
    /// Read the usage now; `None` once the cgroup is gone.
    pub fn sample(&self) -> Option<Usage> {
        let mut u = Usage::default();
        if let Some((dir, v2)) = &self.memory {
            if let Ok(stat) = std::fs::read_to_string(dir.join("memory.stat")) {
                u.memory = true;
                u.v2 = *v2;
                let g = |k: &str| keyed(&stat, k).unwrap_or(0);
                if *v2 {
                    u.rss = g("anon");
                    u.cache = g("file");
                    u.mapped_file = g("file_mapped");
                    u.kernel_usage = g("kernel");
                    u.swap = read_u64(&dir.join("memory.swap.current")).unwrap_or(0);
                    u.usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
                    u.max_usage = read_u64(&dir.join("memory.peak")).unwrap_or(0);
                } else {
                    let t = |k: &str| keyed(&stat, &format!("total_{k}")).unwrap_or(g(k));
                    u.rss = t("rss");
                    u.cache = t("cache");
                    u.swap = t("swap");
                    u.mapped_file = t("mapped_file");
                    u.usage = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
                    u.max_usage = read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0);
                    u.kernel_usage = read_u64(&dir.join("memory.kmem.usage_in_bytes")).unwrap_or(0);
                    u.kernel_max_usage =
                        read_u64(&dir.join("memory.kmem.max_usage_in_bytes")).unwrap_or(0);
                }
            }
        }
        if let Some((dir, v2)) = &self.cpu {
            if *v2 {
                if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat")) {
                    u.cpu = true;
                    let us = |k: &str| keyed(&stat, k).unwrap_or(0).saturating_mul(1000);
                    u.cpu_total_ns = us("usage_usec");
                    u.cpu_user_ns = us("user_usec");
                    u.cpu_system_ns = us("system_usec");
                    u.throttled_periods = keyed(&stat, "nr_throttled").unwrap_or(0);
                    u.throttled_ns = us("throttled_usec");
                }
            } else if let Some(total) = read_u64(&dir.join("cpuacct.usage")) {
                u.cpu = true;
                u.cpu_total_ns = total;
                let stat = std::fs::read_to_string(dir.join("cpuacct.stat")).unwrap_or_default();
                let per_tick = 1_000_000_000 / clk_tck().max(1);
                u.cpu_user_ns = keyed(&stat, "user").unwrap_or(0).saturating_mul(per_tick);
                u.cpu_system_ns = keyed(&stat, "system").unwrap_or(0).saturating_mul(per_tick);
            }
        }
        if let Some(dir) = &self.cpu_v1 {
            if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat")) {
                u.throttled_periods = keyed(&stat, "nr_throttled").unwrap_or(0);
                u.throttled_ns = keyed(&stat, "throttled_time").unwrap_or(0);
            }
        }
        (u.memory || u.cpu).then_some(u)
    }
}

/// `kill(pid, SIGKILL)` for a pid read from a cgroup of ours (never 0, 1 or negative).
fn sigkill(pid: i32) {
    if pid > 1 {
        let _ = super::process::kill(pid, libc::SIGKILL);
    }
}

impl TaskCgroup {
    fn make(&self, limits: &Limits) -> Result<(), CgroupError> {
        for d in &self.dirs {
            mkdir(&d.path)?;
        }
        let (hard, soft) = limits.memory_bytes();
        for d in &self.dirs {
            if d.v2 {
                if d.has("memory") && hard > 0 {
                    write_file(&d.path.join("memory.max"), &hard.to_string())?;
                    if soft > 0 {
                        write_file(&d.path.join("memory.low"), &soft.to_string())?;
                    }
                    let swap = d.path.join("memory.swap.max");
                    if swap.exists() {
                        write_file(&swap, "0")?;
                    }
                }
                if d.has("cpu") {
                    write_file(&d.path.join("cpu.weight"), &limits.cpu_weight().to_string())?;
                }
            } else {
                if d.has("memory") && hard > 0 {
                    write_file(&d.path.join("memory.limit_in_bytes"), &hard.to_string())?;
                    // No swap beyond the limit, where swap is accounted.
                    let memsw = d.path.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &hard.to_string())?;
                    }
                    if soft > 0 {
                        write_file(
                            &d.path.join("memory.soft_limit_in_bytes"),
                            &soft.to_string(),
                        )?;
                    }
                }
                if d.has("cpu") {
                    write_file(&d.path.join("cpu.shares"), &limits.cpu_shares().to_string())?;
                }
            }
        }
        Ok(())
    }

    /// `cgroup.procs` of every hierarchy, for the task shim to open before it forks the task.
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// `cgroup.procs` of every hierarchy, opened for the child to write `0` to before exec.
    pub fn open_procs(&self) -> Result<Vec<std::os::fd::OwnedFd>, CgroupError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.path.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|e| err("open", &p, e))
            })
            .collect()
    }

    /// Where the stats sampler reads this task's usage.
    pub fn stats_source(&self) -> StatsSource {
        let memory = self
            .dirs
            .iter()
            .find(|d| d.has("memory"))
            .map(|d| (d.path.clone(), d.v2));
        let cpu = self
            .dirs
            .iter()
            .find(|d| !d.v2 && d.has("cpuacct"))
            .or_else(|| self.dirs.iter().find(|d| d.v2))
            .map(|d| (d.path.clone(), d.v2));
        let cpu_v1 = self
            .dirs
            .iter()
            .find(|d| !d.v2 && d.has("cpu"))
            .map(|d| d.path.clone());
        StatsSource {
            memory,
            cpu,
            cpu_v1,
        }
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .filter(|d| d.has("memory"))
            .filter_map(|d| {
                let file = if d.v2 {
                    "memory.events"
                } else {
                    "memory.oom_control"
                };
                let text = std::fs::read_to_string(d.path.join(file)).ok()?;
                keyed(&text, "oom_kill")
            })
            .max()
            .unwrap_or(0)
    }

    /// The cgroup's dirs and any sub-cgroups the task made, parents before children.
    fn tree(&self) -> Vec<(PathBuf, bool)> {
        let mut out = Vec::new();
        let mut stack: Vec<(PathBuf, bool, usize)> = self
            .dirs
            .iter()
            .map(|d| (d.path.clone(), d.v2, 0))
            .collect();
        while let Some((dir, v2, depth)) = stack.pop() {
            if depth < MAX_NESTED_DEPTH {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push((e.path(), v2, depth + 1));
                        }
                    }
                }
            }
            out.push((dir, v2));
        }
        out.sort_by_key(|(p, _)| p.components().count());
        out
    }

    /// Every process in the cgroup (in any hierarchy, in any sub-cgroup).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = BTreeSet::new();
        for (dir, _) in self.tree() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.into_iter().collect()
    }

    fn freeze(&self) -> Option<(PathBuf, bool)> {
        let (dir, v2) = if let Some(d) = self.dirs.iter().find(|d| !d.v2 && d.has("freezer")) {
            (d.path.clone(), false)
        } else {
            let d = self.dirs.iter().find(|d| d.v2)?;
            (d.path.clone(), true)
        };
        let (file, value) = if v2 {
            ("cgroup.freeze", "1")
        } else {
            ("freezer.state", "FROZEN")
        };
        write_file(&dir.join(file), value).ok()?;
        let deadline = Instant::now() + FREEZE_WAIT;
        loop {
            let frozen = if v2 {
                std::fs::read_to_string(dir.join("cgroup.events"))
                    .is_ok_and(|t| keyed(&t, "frozen") == Some(1))
            } else {
                std::fs::read_to_string(dir.join("freezer.state"))
                    .is_ok_and(|t| t.trim() == "FROZEN")
            };
            if frozen || Instant::now() >= deadline {
                return Some((dir, v2));
            }
            std::thread::sleep(KILL_POLL);
        }
    }

    fn thaw(dir: &Path, v2: bool) {
        let (file, value) = if v2 {
            ("cgroup.freeze", "0")
        } else {
            ("freezer.state", "THAWED")
        };
        if let Err(e) = write_file(&dir.join(file), value) {
            log::warn!("cgroups: {e}");
        }
    }

    /// One round of killing: v2 `cgroup.kill` where there is one; from the second round on
    /// (or without `cgroup.kill`) also freeze, SIGKILL every process listed in any hierarchy,
    /// thaw (frozen processes cannot fork or exit, so no listed pid is reused meanwhile).
    fn kill_round(&self, round: u32) {
        let mut killed = false;
        for d in self.dirs.iter().filter(|d| d.v2) {
            killed |= write_file(&d.path.join("cgroup.kill"), "1").is_ok();
        }
        if killed && round == 0 {
            return;
        }
        let frozen = self.freeze();
        for pid in self.pids() {
            sigkill(pid);
        }
        if let Some((dir, v2)) = frozen {
            TaskCgroup::thaw(&dir, v2);
        }
    }

    /// Kill every process in the cgroup and wait (up to `wait`) until none is left.
    pub fn kill_all(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut round = 0;
        loop {
            if self.pids().is_empty() {
                return true;
            }
            if round % KILL_ROUNDS_APART == 0 {
                self.kill_round(round / KILL_ROUNDS_APART);
            }
            round += 1;
            if Instant::now() >= deadline {
                return self.pids().is_empty();
            }
            std::thread::sleep(KILL_POLL);
        }
    }

    /// Kill everything in the cgroup, wait until it is empty, and remove its dirs.
    pub fn destroy(&self, wait: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + wait;
        let emptied = self.kill_all(wait);
        let mut tree = self.tree();
        tree.reverse();
        for (dir, _) in tree {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if !emptied || Instant::now() >= deadline {
                            return Err(err("remove cgroup", &dir, e));
                        }
                        std::thread::sleep(KILL_POLL);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    fn none(_: &Path) -> String {
        String::new()
    }

    #[test]
    fn hybrid_hosts_use_v1_controllers_under_the_agents_own_cgroup_and_the_unified_tree() {
        let p = plan(HYBRID_MOUNTS, HYBRID_SELF, &none, None);
        assert_eq!(p.mode, Mode::Hybrid);
        let find = |c: &str| {
            p.hierarchies
                .iter()
                .find(|h| h.has(c))
                .map(|h| h.base.clone())
        };
        assert_eq!(
            find("memory"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/process_api/abc/nomadlet"
            ))
        );
        assert_eq!(
            find("cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu/nomadlet"))
        );
        assert!(find("freezer").is_some() && find("pids").is_some() && find("cpuacct").is_some());
        let unified: Vec<_> = p.hierarchies.iter().filter(|h| h.v2).collect();
        assert_eq!(unified.len(), 1);
        assert_eq!(
            unified[0].base,
            PathBuf::from("/sys/fs/cgroup/unified/nomadlet")
        );
        // cpuset and name=systemd are not used.
        assert_eq!(p.hierarchies.len(), 6);
    }

    #[test]
    fn pure_v2_hosts_use_a_root_level_slice_with_the_controllers_offered() {
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = "0::/system.slice/nomadlet.service\n";
        let ctl = |p: &Path| {
            assert_eq!(p, Path::new("/sys/fs/cgroup/cgroup.controllers"));
            "cpuset cpu io memory hugetlb pids rdma misc".to_string()
        };
        let p = plan(mounts, own, &ctl, None);
        assert_eq!(p.mode, Mode::V2);
        assert_eq!(p.hierarchies.len(), 1);
        assert_eq!(
            p.hierarchies[0].base,
            PathBuf::from("/sys/fs/cgroup/nomadlet.slice")
        );
        assert_eq!(p.hierarchies[0].controllers, ["cpu", "memory", "pids"]);
        assert_eq!(p.v2_root, Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            p.enable_in,
            [
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/sys/fs/cgroup/nomadlet.slice")
            ]
        );
        // client.cgroup_parent, as Nomad's: relative to the root, controllers enabled down to it.
        let p = plan(mounts, own, &ctl, Some("edge/tasks.slice"));
        assert_eq!(
            p.hierarchies[0].base,
            PathBuf::from("/sys/fs/cgroup/edge/tasks.slice")
        );
        assert_eq!(p.enable_in.len(), 3);
    }

    #[test]
    fn v1_only_and_nothing_mounted() {
        let mounts: String = HYBRID_MOUNTS
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = plan(&mounts, HYBRID_SELF, &none, None);
        assert_eq!(p.mode, Mode::V1);
        assert!(p.hierarchies.iter().all(|h| !h.v2));
        let p = plan("22 1 0:5 / /proc rw - proc proc rw\n", "", &none, None);
        assert_eq!(p.mode, Mode::None);
        assert!(p.hierarchies.is_empty());
    }

    #[test]
    fn co_mounted_controllers_and_namespaced_roots() {
        let mounts = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let own = "3:cpu,cpuacct:/a\n4:memory:/docker/x/y\n";
        let p = plan(mounts, own, &none, None);
        assert_eq!(p.mode, Mode::V1);
        assert_eq!(
            p.hierarchies[0].base,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a/nomadlet")
        );
        assert_eq!(p.hierarchies[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            p.hierarchies[1].base,
            PathBuf::from("/sys/fs/cgroup/memory/y/nomadlet")
        );
        // A path outside the mount's root cannot be placed.
        let p = plan(
            mounts,
            "3:cpu,cpuacct:/a\n4:memory:/elsewhere\n",
            &none,
            None,
        );
        assert_eq!(p.hierarchies.len(), 1);
    }

    #[test]
    fn a_configured_parent_replaces_the_agents_own_in_every_hierarchy() {
        let p = plan(HYBRID_MOUNTS, HYBRID_SELF, &none, Some("nomad"));
        assert_eq!(p.mode, Mode::Hybrid);
        for h in &p.hierarchies {
            assert!(h.base.ends_with("nomad"), "{}", h.base.display());
            assert!(!h.base.display().to_string().contains("process_api"));
        }
    }

    #[test]
    fn a_delegated_cgroup_is_found_at_the_agents_own_or_above_its_agent_leaf() {
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let svc = Path::new("/sys/fs/cgroup/system.slice/nomadlet.service");
        let marked = |p: &Path| p == svc;
        let top = "0::/system.slice/nomadlet.service\n";
        assert_eq!(
            find_delegation(mounts, top, &marked),
            Some(Delegation {
                dir: svc.to_path_buf(),
                in_leaf: false
            })
        );
        let leaf = "0::/system.slice/nomadlet.service/agent\n";
        assert_eq!(
            find_delegation(mounts, leaf, &marked),
            Some(Delegation {
                dir: svc.to_path_buf(),
                in_leaf: true
            })
        );
        // Not marked, the root, or outside the mount: none.
        assert_eq!(find_delegation(mounts, top, &|_| false), None);
        assert_eq!(find_delegation(mounts, "0::/\n", &|_| true), None);
        assert_eq!(
            find_delegation(mounts, "0::/a/agent\n", &|p: &Path| p
                == Path::new("/sys/fs/cgroup")),
            None
        );
        // Hybrid: the unified mount.
        let d = find_delegation(HYBRID_MOUNTS, "0::/t\n", &|_| true).unwrap();
        assert_eq!(d.dir, PathBuf::from("/sys/fs/cgroup/unified/t"));
    }

    #[test]
    fn a_delegated_cgroup_needing_controllers_is_taken_only_from_its_agent_leaf() {
        let dir = std::env::temp_dir().join(format!(
            "nomadlet-adopt-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let all = |_: &Path| "cpu memory pids".to_string();
        let pure = || plan(mounts, "0::/x\n", &all, None);
        // At its top (no DelegateSubgroup=): refused, the root-level layout stays.
        let mut p = pure();
        let top = Delegation {
            dir: dir.clone(),
            in_leaf: false,
        };
        let why = adopt(&mut p, &top).unwrap_err().to_string();
        assert!(why.contains("was started at its top"), "{why}");
        assert_eq!(p, pure());
        // From its leaf: task cgroups inside it, controllers enabled there only.
        let leaf = Delegation {
            dir: dir.clone(),
            in_leaf: true,
        };
        adopt(&mut p, &leaf).unwrap();
        assert_eq!(p.hierarchies[0].base, dir);
        assert_eq!(p.hierarchies[0].controllers, ["cpu", "memory", "pids"]);
        assert_eq!(p.enable_in, std::slice::from_ref(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn limits_follow_nomads_rules() {
        let l = Limits {
            cpu_mhz: 100,
            memory_mb: 32,
            memory_max_mb: 0,
        };
        assert_eq!(l.memory_bytes(), (32 << 20, 0));
        assert_eq!(l.cpu_shares(), 100);
        assert_eq!(l.cpu_weight(), 4);
        let l = Limits {
            cpu_mhz: 1,
            memory_mb: 100,
            memory_max_mb: 200,
        };
        assert_eq!(l.memory_bytes(), (200 << 20, 100 << 20));
        assert_eq!(l.cpu_shares(), 2);
        assert_eq!(l.cpu_weight(), 1);
        let max = Limits {
            cpu_mhz: 10_000_000,
            ..l
        };
        assert_eq!(max.cpu_weight(), 10_000);
    }

    #[test]
    fn task_cgroup_names_are_safe() {
        let id = "0b8c7f0e-1a2b-4c3d-9e8f-001122334455";
        assert_eq!(task_cgroup_name(id, "web").unwrap(), format!("{id}.web"));
        let odd = task_cgroup_name(id, "a b/../c").unwrap();
        assert!(odd.starts_with(&format!("{id}.t-")) && !odd.contains('/'));
        assert_ne!(odd, task_cgroup_name(id, "a b/../d").unwrap());
        assert!(task_cgroup_name("../x", "t").is_err());
        assert!(task_cgroup_name("", "t").is_err());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    /// The cgroups of this host, restricted to the v2 or the v1 hierarchies: each kill path
    /// (`cgroup.kill`; freeze + SIGKILL + thaw) is exercised on a hybrid host. `None` unless
    /// root on a host with such hierarchies.
    fn only(v2: bool) -> Option<Cgroups> {
        if crate::sys::user::euid() != 0 {
            return None;
        }
        let p = plan(
            &std::fs::read_to_string("/proc/self/mountinfo").ok()?,
            &std::fs::read_to_string("/proc/self/cgroup").ok()?,
            &|path| std::fs::read_to_string(path).unwrap_or_default(),
            None,
        );
        if p.v2_root.is_some() {
            return None;
        }
        let hierarchies: Vec<Hierarchy> = p
            .hierarchies
            .into_iter()
            .filter(|h| h.v2 == v2 && mkdir(&h.base).is_ok())
            .collect();
        (!hierarchies.is_empty()).then(|| Cgroups {
            mode: mode_of(&hierarchies),
            hierarchies,
            reason: String::new(),
            alternates: Vec::new(),
            delegated: None,
        })
    }

    #[test]
    fn every_kill_path_leaves_no_process_and_no_cgroup() {
        for v2 in [true, false] {
            let Some(cgs) = only(v2) else {
                eprintln!(
                    "no writable {} cgroups: skipped",
                    if v2 { "v2" } else { "v1" }
                );
                continue;
            };
            let alloc = uuid::Uuid::new_v4().to_string();
            let limits = Limits {
                cpu_mhz: 100,
                memory_mb: 64,
                memory_max_mb: 0,
            };
            let cg = cgs.create(&alloc, "t", &limits).unwrap().unwrap();
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.args(["-c", "setsid -f sleep 1000; sleep 1000"]);
            crate::sys::child::install(
                &mut cmd,
                crate::sys::child::ChildSetup {
                    cgroup_procs: cg.open_procs().unwrap(),
                    user: None,
                },
            );
            let mut child = cmd.spawn().unwrap();
            drop(cmd);
            let deadline = Instant::now() + Duration::from_secs(10);
            while cg.pids().len() < 3 {
                assert!(Instant::now() < deadline, "processes never appeared");
                std::thread::sleep(KILL_POLL);
            }
            let pids = cg.pids();
            cg.destroy(KILL_WAIT).unwrap();
            let _ = child.wait();
            for p in pids {
                let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "));
                assert!(!alive, "pid {p} survived ({})", cgs.mode().as_str());
            }
            assert!(cgs.leftover(&alloc, "t").is_none());
        }
    }
}
