//! `alloc exec`'s process side: what a running task's exec needs (its env, working dir, user
//! and cgroup, published by its task runner while it runs), and starting a command there with
//! pipes or a pseudo-terminal in its own process group, which is killed when the session ends.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;

use super::raw_exec;
use crate::sys::child::{self, ChildSetup};
use crate::sys::pty;

/// Where a running task's execs run: what its own process was started with.
#[derive(Clone, Debug)]
pub struct ExecTarget {
    pub env: BTreeMap<String, String>,
    pub work_dir: PathBuf,
    /// `(uid, gid)` (`None`: the agent's user).
    pub user: Option<(u32, u32)>,
    /// `cgroup.procs` of the task's cgroup in each hierarchy (empty: no cgroups).
    pub cgroup_procs: Vec<PathBuf>,
}

/// A task's exec target while it runs (`None` otherwise); the task runner writes it, the
/// exec endpoint reads a copy.
pub type ExecSlot = Arc<Mutex<Option<ExecTarget>>>;

/// Why an exec could not start.
#[derive(Debug)]
pub enum ExecError {
    /// The alloc has no task of that name on this client.
    UnknownTask(String),
    /// The task is not running (not started yet, restarting or dead).
    NotRunning(String),
    /// The command could not be started.
    Start(String),
    /// The command could not be resolved (the driver's error, with its cause).
    Command(crate::client::raw_exec::DriverError),
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::UnknownTask(t) => write!(f, "unknown task name {t:?}"),
            ExecError::NotRunning(t) => write!(f, "task {t:?} is not running"),
            ExecError::Start(e) => write!(f, "{e}"),
            ExecError::Command(e) => write!(f, "{e}"),
        }
    }
}

/// The output side of a started exec.
pub enum ExecIo {
    /// Separate pipes: stdin (write end), stdout, stderr (read ends), all non-blocking.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// One non-blocking pty master for input and output.
    Tty { master: OwnedFd },
}

/// A started exec command: the leader of its own process group.
pub struct ExecProcess {
    pub child: Child,
    pub pid: i32,
    pub io: ExecIo,
}

impl ExecProcess {
    /// Kill the exec's whole process group and reap its leader.
    pub fn kill(&mut self) {
        if self.pid > 0 {
            raw_exec::signal_group(self.pid, libc::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.pid = 0;
        }
    }
}

impl Drop for ExecProcess {
    /// A session that ends on any path (an upgrade that failed, a panic) leaves no process.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `cmd` (the first element resolved as the task's own command is) in `target`.
pub fn spawn(target: &ExecTarget, cmd: &[String], tty: bool) -> Result<ExecProcess, ExecError> {
    let Some((prog, args)) = cmd.split_first() else {
        return Err(ExecError::Start("command is not present".into()));
    };
    let program = raw_exec::resolve_command(prog, &target.work_dir, &target.env)
        .map_err(ExecError::Command)?;
    let cgroup_procs =
        raw_exec::open_cgroup_procs(&target.cgroup_procs).map_err(ExecError::Command)?;
    let mut command = Command::new(&program);
    command
        .args(args)
        .current_dir(&target.work_dir)
        .env_clear()
        .envs(target.env.iter());
    let start_err = |e: std::io::Error| ExecError::Start(format!("failed to exec: {e}"));
    let mut master = None;
    if tty {
        let p = pty::open().map_err(start_err)?;
        let out = p.slave.try_clone().map_err(start_err)?;
        let err = p.slave.try_clone().map_err(start_err)?;
        command
            .stdin(Stdio::from(p.slave))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if !target.env.contains_key("TERM") {
            command.env("TERM", "xterm");
        }
        master = Some(p.master);
    } else {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    child::install(
        &mut command,
        ChildSetup {
            cgroup_procs,
            user: target.user,
        },
    );
    if tty {
        pty::install_controlling_tty(&mut command);
    }
    let mut child = command.spawn().map_err(|e| {
        ExecError::Start(format!(
            "failed to exec: {:?}: {e}",
            program.display().to_string()
        ))
    })?;
    // Closes our copies of the slave and of the cgroup.procs fds.
    drop(command);
    let pid = child.id() as i32;
    let io = match master {
        Some(master) => ExecIo::Tty { master },
        None => {
            let (Some(i), Some(o), Some(e)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExecError::Start("failed to exec: no pipes".into()));
            };
            ExecIo::Pipes {
                stdin: Some(OwnedFd::from(i)),
                stdout: OwnedFd::from(o),
                stderr: OwnedFd::from(e),
            }
        }
    };
    let set = match &io {
        ExecIo::Tty { master } => pty::set_nonblocking(master),
        ExecIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => stdin
            .iter()
            .chain([stdout, stderr])
            .try_for_each(pty::set_nonblocking),
    };
    let mut proc = ExecProcess { child, pid, io };
    if let Err(e) = set {
        proc.kill();
        return Err(start_err(e));
    }
    Ok(proc)
}
