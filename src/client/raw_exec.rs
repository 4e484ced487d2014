//! The raw_exec driver: resolve the command, start it (from its shim) in its own cgroup (when
//! the host has them) and its own session (process group) as `task.user` when the agent can
//! switch users, signal the group, and collect the exit.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::sys::child::{self, ChildSetup};

/// A user the task runs as.
#[derive(Clone, Debug)]
pub struct TaskUser {
    pub uid: u32,
    pub gid: u32,
}

/// Why the driver could not start a task (or an exec). Prints Nomad's executor texts.
#[derive(Debug)]
pub enum DriverError {
    /// A user name with a NUL byte.
    InvalidUser(String),
    /// No such user.
    UnknownUser(String),
    /// The task wants another user and the agent is not root.
    CannotSwitchUser { user: String, euid: u32 },
    /// The command names a directory.
    IsDirectory(PathBuf),
    /// The command (absolute or task-dir relative) cannot be looked at.
    Stat {
        command: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bare command not found in the task's `PATH`.
    NotInPath(String),
    /// The task's `cgroup.procs` could not be opened.
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process could not be started.
    Exec {
        command: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverError::InvalidUser(name) => {
                write!(f, "Failed to identify user {name:?}: invalid name")
            }
            DriverError::UnknownUser(name) => {
                write!(f, "Failed to identify user {name:?}: user: unknown user {name}")
            }
            DriverError::CannotSwitchUser { user, euid } => write!(
                f,
                "cannot run task as user {user:?}: the agent runs as uid {euid}, not root, and cannot switch users"
            ),
            DriverError::IsDirectory(p) => {
                write!(f, "exec: {:?}: is a directory", p.display().to_string())
            }
            DriverError::Stat {
                command,
                path,
                source,
            } => write!(
                f,
                "exec: {:?}: stat {}: {}",
                command,
                path.display(),
                go_errno_text(source)
            ),
            DriverError::NotInPath(command) => {
                write!(f, "exec: {command:?}: executable file not found in $PATH")
            }
            DriverError::OpenCgroup { path, source } => write!(
                f,
                "failed to launch command with executor: open {}: {source}",
                path.display()
            ),
            DriverError::Exec { command, source } => write!(
                f,
                "failed to launch command with executor: exec: {:?}: {}",
                command.display().to_string(),
                go_errno_text(source)
            ),
        }
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DriverError::Stat { source, .. }
            | DriverError::OpenCgroup { source, .. }
            | DriverError::Exec { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Look up a user by name (`getpwnam_r`).
pub fn lookup_user(name: &str) -> Result<TaskUser, DriverError> {
    if name.contains('\0') {
        return Err(DriverError::InvalidUser(name.to_string()));
    }
    let Some(u) = crate::sys::user::lookup(name) else {
        return Err(DriverError::UnknownUser(name.to_string()));
    };
    Ok(TaskUser {
        uid: u.uid,
        gid: u.gid,
    })
}

/// Decide the user a task runs as: `None` means the agent's own user.
pub fn task_user(user: &str) -> Result<Option<TaskUser>, DriverError> {
    if user.is_empty() {
        return Ok(None);
    }
    let u = lookup_user(user)?;
    let euid = crate::sys::user::euid();
    if u.uid == euid {
        return Ok(None);
    }
    if euid != 0 {
        return Err(DriverError::CannotSwitchUser {
            user: user.to_string(),
            euid,
        });
    }
    Ok(Some(u))
}

/// Resolve `command` as Nomad's executor does: absolute as given, with a slash relative to
/// the task dir, else searched in the task's `PATH`.
pub fn resolve_command(
    command: &str,
    task_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, DriverError> {
    let exists = |p: &Path| -> Result<PathBuf, DriverError> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Err(DriverError::IsDirectory(p.to_path_buf())),
            Ok(_) => Ok(p.to_path_buf()),
            Err(source) => Err(DriverError::Stat {
                command: command.to_string(),
                path: p.to_path_buf(),
                source,
            }),
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
    Err(DriverError::NotInPath(command.to_string()))
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
    /// `cgroup.procs` of the task's cgroup, which the process joins before it runs (empty:
    /// no cgroups).
    pub cgroup_procs: Vec<PathBuf>,
}

/// A started task process.
pub struct Process {
    pub child: Child,
    pub pid: i32,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Open each cgroup's `cgroup.procs` for writing, before `fork`: the child writes its pid
/// into them first thing, so no code of the task (or an exec in it) runs outside its cgroups.
pub fn open_cgroup_procs(paths: &[PathBuf]) -> Result<Vec<OwnedFd>, DriverError> {
    paths
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|source| DriverError::OpenCgroup {
                    path: p.clone(),
                    source,
                })
        })
        .collect()
}

/// Start the task process in its cgroup and a new session (run by the task's shim, which
/// is its parent).
pub fn spawn(spec: SpawnSpec) -> Result<Process, DriverError> {
    let cgroup_procs = open_cgroup_procs(&spec.cgroup_procs)?;
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
    let mut child = cmd.spawn().map_err(|source| DriverError::Exec {
        command: spec.command.clone(),
        source,
    })?;
    // Closes our copies of the cgroup.procs fds.
    drop(cmd);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    Ok(Process {
        pid: child.id() as i32,
        child,
        stdout,
        stderr,
    })
}

/// Send a signal to the task's whole process group.
pub fn signal_group(pid: i32, sig: i32) {
    if pid > 1 {
        let _ = crate::sys::process::kill_group(pid, sig);
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
