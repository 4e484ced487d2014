//! The raw_exec driver: resolve the command, start it in its own cgroup (when the host has
//! them) and its own session (process group) as `task.user` when the agent can switch users,
//! signal the group, and collect the exit.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::sys::cgroup::{TaskCgroup, KILL_WAIT};
use crate::sys::child::{self, ChildSetup};

/// How often a wait for the task's exit checks again.
pub const EXIT_POLL: Duration = Duration::from_millis(50);

/// A user the task runs as.
#[derive(Clone, Debug)]
pub struct TaskUser {
    pub uid: u32,
    pub gid: u32,
}

/// Look up a user by name (`getpwnam_r`).
pub fn lookup_user(name: &str) -> Result<TaskUser, String> {
    if name.contains('\0') {
        return Err(format!("Failed to identify user {name:?}: invalid name"));
    }
    let Some(u) = crate::sys::user::lookup(name) else {
        return Err(format!(
            "Failed to identify user {name:?}: user: unknown user {name}"
        ));
    };
    Ok(TaskUser {
        uid: u.uid,
        gid: u.gid,
    })
}

/// Decide the user a task runs as: `None` means the agent's own user.
pub fn task_user(user: &str) -> Result<Option<TaskUser>, String> {
    if user.is_empty() {
        return Ok(None);
    }
    let u = lookup_user(user)?;
    let euid = crate::sys::user::euid();
    if u.uid == euid {
        return Ok(None);
    }
    if euid != 0 {
        return Err(format!(
            "cannot run task as user {user:?}: the agent runs as uid {euid}, not root, and cannot switch users"
        ));
    }
    Ok(Some(u))
}

/// Resolve `command` as Nomad's executor does: absolute as given, with a slash relative to
/// the task dir, else searched in the task's `PATH`.
pub fn resolve_command(
    command: &str,
    task_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, String> {
    let exists = |p: &Path| -> Result<PathBuf, String> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Err(format!(
                "exec: {:?}: is a directory",
                p.display().to_string()
            )),
            Ok(_) => Ok(p.to_path_buf()),
            Err(e) => Err(format!(
                "exec: {:?}: stat {}: {}",
                command,
                p.display(),
                go_errno_text(&e)
            )),
        }
    };
    if command.starts_with('/') {
        return exists(Path::new(command));
    }
    if command.contains('/') {
        return exists(&task_dir.join(command));
    }
    let path = env
        .get("PATH")
        .cloned()
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(command);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "exec: {command:?}: executable file not found in $PATH"
    ))
}

fn go_errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory".into(),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::ENOTDIR) => "not a directory".into(),
        _ => e.to_string(),
    }
}

/// What to start.
pub struct SpawnSpec<'a> {
    pub command: PathBuf,
    pub args: Vec<String>,
    pub work_dir: PathBuf,
    pub env: &'a BTreeMap<String, String>,
    pub user: Option<TaskUser>,
    /// Pipe stdout/stderr (`false`: logs disabled, output to /dev/null).
    pub capture: bool,
    /// The task's cgroup, which the process joins before it runs (`None`: no cgroups).
    pub cgroup: Option<TaskCgroup>,
}

/// A started task process.
pub struct Process {
    pub child: Child,
    pub pid: i32,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Its cgroup: every process it starts is in it.
    pub cgroup: Option<TaskCgroup>,
}

impl Process {
    /// The kernel's OOM killer killed a process of the task.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0)
    }
}

/// Start the task process in its cgroup and a new session.
pub fn spawn(spec: SpawnSpec) -> Result<Process, String> {
    let result = spawn_in(&spec);
    match result {
        Ok((child, stdout, stderr)) => Ok(Process {
            pid: child.id() as i32,
            child,
            stdout,
            stderr,
            cgroup: spec.cgroup,
        }),
        Err(e) => {
            if let Some(cg) = spec.cgroup {
                if let Err(e) = cg.destroy(KILL_WAIT) {
                    log::warn!("{e}");
                }
            }
            Err(e)
        }
    }
}

type Spawned = (Child, Option<OwnedFd>, Option<OwnedFd>);

fn spawn_in(spec: &SpawnSpec) -> Result<Spawned, String> {
    let cgroup_procs = match &spec.cgroup {
        Some(cg) => cg
            .open_procs()
            .map_err(|e| format!("failed to launch command with executor: {e}"))?,
        None => Vec::new(),
    };
    let mut cmd = Command::new(&spec.command);
    cmd.args(&spec.args)
        .current_dir(&spec.work_dir)
        .env_clear()
        .envs(spec.env.iter())
        .stdin(Stdio::null());
    if spec.capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    child::install(
        &mut cmd,
        ChildSetup {
            cgroup_procs,
            user: spec.user.as_ref().map(|u| (u.uid, u.gid)),
        },
    );
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "failed to launch command with executor: exec: {:?}: {}",
            spec.command.display().to_string(),
            go_errno_text(&e)
        )
    })?;
    // Closes the agent's copies of the cgroup.procs fds.
    drop(cmd);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    Ok((child, stdout, stderr))
}

/// Send a signal to the task's whole process group.
pub fn signal_group(pid: i32, sig: i32) {
    if pid > 1 {
        let _ = crate::sys::process::kill_group(pid, sig);
    }
}

/// Send a signal to the task's main process.
pub fn signal_process(pid: i32, sig: i32) -> Result<(), String> {
    crate::sys::process::kill(pid, sig).map_err(|e| e.to_string())
}

/// Wait for the exit up to `timeout` (`None`: still running).
pub fn wait_for(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(EXIT_POLL.min(deadline - now));
    }
}

/// `(exit_code, signal)` as Nomad reports them (a signal death is `128 + signal`).
pub fn exit_parts(st: &ExitStatus) -> (i64, i64) {
    match (st.code(), st.signal()) {
        (Some(c), _) => (c as i64, 0),
        (None, Some(s)) => (128 + s as i64, s as i64),
        _ => (-1, 0),
    }
}
