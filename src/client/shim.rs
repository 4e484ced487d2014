//! The per-task shim: the agent's own binary re-executed as `nomadlet task-shim <dir>`, one
//! small single-threaded process per running task. It is the task's parent: it forks the task
//! into its cgroup, owns the task's stdout/stderr pipes and writes them into the rotating log
//! files, and records the exit status in a file. It runs in its own session, so the agent can
//! stop, crash or be replaced while the task keeps running and its output keeps reaching the
//! log files; a new agent re-attaches through the shim's directory:
//!
//! ```text
//! <data_dir>/client/shims/<alloc_id>.<task>/   0700
//!   ctl        FIFO the shim holds open for reading: commands from the agent ("S 15\n": signal
//!              the task, "G 9\n": signal its process group, "P\n": start copying output,
//!              sent once the task is recorded as running so output never precedes its
//!              Started event). Opening it for writing without blocking fails with ENXIO
//!              exactly when the shim is gone: the liveness check.
//!   pid        "<shim pid> <task pid>\n", written once the task runs
//!   exit       "<exit code> <signal>\n", written when the task's main process exited
//!   shim.log   the shim's own errors (its stderr)
//! ```
//!
//! The spec (command, env with the task's identity, user, cgroup, log limits) reaches the shim
//! over a socket pair on its stdin, never through a file; the shim answers `ok <pid>` or
//! `err <message>` on the same socket. After the task's main process exits, the shim kills
//! what is left of its process group, drains the pipes for up to [`LOG_DRAIN_GRACE`] and exits;
//! the agent then empties and removes the task's cgroup (it never leaves the agent's hands).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::alloc_dir::AllocDir;
use super::logs::{Pipe, Rotator, PUMP_CHUNK, PUMP_FIRST_CHUNK};
use super::raw_exec::{self, SpawnSpec, TaskUser};
use crate::sys::poll::PollSet;

/// The hidden subcommand that runs a shim.
pub const SUBCOMMAND: &str = "task-shim";
/// `<data_dir>/client/<SHIMS_DIR>/` holds one directory per task that has a shim.
pub const SHIMS_DIR: &str = "shims";
/// Largest spec the shim reads from its stdin.
pub const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;
/// How long the agent waits for the shim to report the task started (or why it could not).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the shim drains the pipes after the task's main process exited.
pub const LOG_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The shim's poll timeout while nothing happens (it wakes for output, a command or the
/// task's exit; this only bounds the wait).
pub const IDLE_WAIT: Duration = Duration::from_secs(60);
/// Exit check interval where the kernel has no pidfd (before Linux 5.3).
pub const NO_PIDFD_TICK: Duration = Duration::from_millis(100);
/// How often the agent checks for the exit file or the shim's end while it waits for them.
pub const EXIT_POLL: Duration = Duration::from_millis(20);
/// Longest command line on the control FIFO (well under `PIPE_BUF`, so writes are atomic).
pub const MAX_CTL_LINE: usize = 32;
/// Mode of a shim's directory.
pub const SHIM_DIR_MODE: u32 = 0o700;

const CTL: &str = "ctl";
const PID: &str = "pid";
const EXIT: &str = "exit";
const LOG: &str = "shim.log";

/// Log rotation for the task's output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogSpec {
    pub max_files: u64,
    pub max_size: u64,
}

/// Everything the shim needs to start the task.
#[derive(Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub data_dir: PathBuf,
    pub alloc_id: String,
    pub task: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    pub work_dir: PathBuf,
    pub env: BTreeMap<String, String>,
    /// `(uid, gid)` to run as (`None`: the agent's user).
    pub user: Option<(u32, u32)>,
    /// `None`: logs disabled, output to /dev/null.
    pub logs: Option<LogSpec>,
    pub cgroup_procs: Vec<PathBuf>,
}

/// How the task's main process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: i64,
    pub signal: i64,
}

impl ExitInfo {
    fn parse(text: &str) -> Option<ExitInfo> {
        let mut it = text.split_whitespace();
        Some(ExitInfo {
            code: it.next()?.parse().ok()?,
            signal: it.next()?.parse().ok()?,
        })
    }
}

/// `<data_dir>/client/shims/<alloc_id>.<task>` (the task part as its cgroup names it).
pub fn shim_dir(data_dir: &Path, alloc_id: &str, task: &str) -> io::Result<PathBuf> {
    let name = crate::sys::cgroup::task_cgroup_name(alloc_id, task)?;
    Ok(data_dir.join("client").join(SHIMS_DIR).join(name))
}

/// What a new agent finds of a task's shim.
pub enum Found {
    /// The shim runs: the task runs (or is just ending).
    Alive(Shim),
    /// The shim is gone after the task exited (while no agent watched).
    Exited(ExitInfo),
    /// No shim, and no exit recorded.
    Lost,
}

/// The agent's handle on a task's shim.
pub struct Shim {
    dir: PathBuf,
    /// The task's main process.
    pub pid: i32,
    /// The shim itself.
    pub shim_pid: i32,
    /// Set when this agent started the shim (it must reap it).
    child: Option<Child>,
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Why a shim did not start its task.
#[derive(Debug)]
pub enum ShimError {
    /// A step of starting the shim failed (what it was, and the error).
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The shim ended without answering the handshake.
    NoAnswer,
    /// The shim answered that the task did not start (its text: it crossed a pipe from
    /// another process, so a text is all there is).
    Refused(String),
}

impl std::fmt::Display for ShimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShimError::Io { what, source } => {
                write!(f, "failed to start the task shim: {what}: {source}")
            }
            ShimError::NoAnswer => {
                f.write_str("failed to start the task shim: it exited without an answer")
            }
            ShimError::Refused(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ShimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShimError::Io { source, .. } => Some(source),
            ShimError::NoAnswer | ShimError::Refused(_) => None,
        }
    }
}

impl Shim {
    /// Start a shim for `spec` in `dir` and wait until it started the task.
    pub fn spawn(spec: &ShimSpec, dir: &Path) -> Result<Shim, ShimError> {
        let fail = |what: &'static str, source: io::Error| ShimError::Io { what, source };
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("remove old shim dir", e)),
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(SHIM_DIR_MODE)
            .create(dir)
            .map_err(|e| fail("create shim dir", e))?;
        crate::sys::shim::mkfifo(&dir.join(CTL), 0o600).map_err(|e| fail("mkfifo", e))?;
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(dir.join(LOG))
            .map_err(|e| fail("open shim.log", e))?;
        let exe = std::env::current_exe().map_err(|e| fail("find own executable", e))?;
        let (mut ours, theirs) = UnixStream::pair().map_err(|e| fail("socketpair", e))?;
        let child = Command::new(exe)
            .arg(SUBCOMMAND)
            .arg(dir)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| fail("spawn", e))?;
        let mut shim = Shim {
            dir: dir.to_path_buf(),
            pid: 0,
            shim_pid: child.id() as i32,
            child: Some(child),
        };
        let reply = (|| -> io::Result<String> {
            ours.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            ours.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
            let body = serde_json::to_vec(spec).map_err(io::Error::other)?;
            ours.write_all(&body)?;
            ours.shutdown(std::net::Shutdown::Write)?;
            let mut line = String::new();
            BufReader::new(&mut ours)
                .take(64 * 1024)
                .read_line(&mut line)?;
            Ok(line)
        })();
        let line = match reply {
            Ok(l) => l,
            Err(e) => {
                shim.abandon();
                return Err(fail("handshake", e));
            }
        };
        if let Some(pid) = line.strip_prefix("ok ").and_then(|p| p.trim().parse().ok()) {
            shim.pid = pid;
            return Ok(shim);
        }
        shim.abandon();
        let msg = line.strip_prefix("err ").unwrap_or(&line).trim();
        if msg.is_empty() {
            return Err(ShimError::NoAnswer);
        }
        Err(ShimError::Refused(msg.to_string()))
    }

    /// A shim that failed its handshake: kill it and reap it.
    fn abandon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Find the shim a previous agent left in `dir`.
    pub fn find(dir: &Path) -> Found {
        let pids = std::fs::read_to_string(dir.join(PID)).ok().and_then(|t| {
            let mut it = t.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        });
        let exit = std::fs::read_to_string(dir.join(EXIT))
            .ok()
            .and_then(|t| ExitInfo::parse(&t));
        let alive = open_ctl(dir).is_ok();
        match (alive, pids, exit) {
            (true, Some((shim_pid, pid)), _) => Found::Alive(Shim {
                dir: dir.to_path_buf(),
                pid,
                shim_pid,
                child: None,
            }),
            (_, _, Some(e)) => Found::Exited(e),
            _ => Found::Lost,
        }
    }

    fn send(&self, line: &str) -> io::Result<()> {
        let mut f = open_ctl(&self.dir)?;
        f.write_all(line.as_bytes())
    }

    /// Signal the task's main process (through the shim, which knows whether it still runs).
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        self.send(&format!("S {sig}\n"))
    }

    /// Start copying the task's output into its log files (idempotent).
    pub fn pump(&self) -> io::Result<()> {
        self.send("P\n")
    }

    /// Signal the task's whole process group.
    pub fn signal_group(&self, sig: i32) -> io::Result<()> {
        self.send(&format!("G {sig}\n"))
    }

    /// The exit status, once the task's main process exited.
    pub fn exited(&self) -> Option<ExitInfo> {
        std::fs::read_to_string(self.dir.join(EXIT))
            .ok()
            .and_then(|t| ExitInfo::parse(&t))
    }

    /// Whether the shim still runs.
    pub fn alive(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return false;
            }
        }
        open_ctl(&self.dir).is_ok()
    }

    /// Wait up to `timeout` for the exit status (`None`: still running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.exited() {
                return Some(e);
            }
            if !self.alive() {
                // The shim wrote the exit file before it ended; a shim killed before is lost.
                return self.exited();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Wait up to `timeout` for the shim to end (its pipes drained), reap it if it is ours,
    /// and remove its directory (killing it if it does not end in time).
    pub fn finish(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() >= deadline {
                log::warn!("task shim {} did not end; killing it", self.shim_pid);
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                } else {
                    let _ = crate::sys::shim::kill(self.shim_pid, libc::SIGKILL);
                }
                break;
            }
            std::thread::sleep(EXIT_POLL);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The agent stops and leaves the task running: the shim is reparented to init.
    pub fn detach(self) {}
}

fn open_ctl(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(dir.join(CTL))
}

/// The `task-shim` subcommand: returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: nomadlet {SUBCOMMAND} DIR");
        return 2;
    };
    if let Err(e) = crate::sys::shim::new_session() {
        eprintln!("task-shim: setsid: {e}");
    }
    let sock = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("task-shim: stdin: {e}");
            return 1;
        }
    };
    let mut body = Vec::new();
    if let Err(e) = (&sock).take(MAX_SPEC_BYTES).read_to_end(&mut body) {
        eprintln!("task-shim: reading the spec: {e}");
        return 1;
    }
    let spec: ShimSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("task-shim: bad spec: {e}");
            let _ = (&sock).write_all(format!("err task shim: bad spec: {e}\n").as_bytes());
            return 1;
        }
    };
    drop(body);
    run(&dir, spec, sock)
}

/// The shim's life: start the task, then pump, take commands and wait for the exit.
fn run(dir: &Path, spec: ShimSpec, mut reply: UnixStream) -> i32 {
    let mut answer = |text: String| {
        let _ = reply.write_all(text.as_bytes());
    };
    let ctl = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(dir.join(CTL))
    {
        Ok(f) => f,
        Err(e) => {
            answer(format!(
                "err failed to start the task shim: open ctl: {e}\n"
            ));
            return 1;
        }
    };
    // The files are chosen before the task runs, so nothing it plants first can move them.
    let sinks = match &spec.logs {
        None => None,
        Some(l) => match AllocDir::new(&spec.data_dir, &spec.alloc_id).build_shared() {
            Ok(fd) => {
                let fd = Arc::new(fd);
                let open = |stream: &str| {
                    let base = format!("{}.{}", spec.task, stream);
                    Rotator::open(fd.clone(), &base, l.max_files, l.max_size)
                };
                Some([open("stdout"), open("stderr")])
            }
            Err(e) => {
                answer(format!(
                    "err failed to build task directory for {:?}: {e}\n",
                    spec.task
                ));
                return 1;
            }
        },
    };
    let proc = raw_exec::spawn(SpawnSpec {
        command: spec.command.clone(),
        args: spec.args.clone(),
        work_dir: spec.work_dir.clone(),
        env: &spec.env,
        user: spec.user.map(|(uid, gid)| TaskUser { uid, gid }),
        capture: spec.logs.is_some(),
        cgroup_procs: spec.cgroup_procs.clone(),
    });
    drop(spec);
    let mut proc = match proc {
        Ok(p) => p,
        Err(msg) => {
            answer(format!("err {}\n", msg.to_string().replace('\n', " ")));
            return 1;
        }
    };
    let pid = proc.pid;
    if let Err(e) = write_atomic(dir, PID, &format!("{} {pid}\n", std::process::id())) {
        eprintln!("task-shim: writing the pid file: {e}");
    }
    answer(format!("ok {pid}\n"));
    drop(reply);
    let mut pipes: Vec<Pipe> = match sinks {
        Some([out, err]) => [(proc.stdout.take(), out), (proc.stderr.take(), err)]
            .into_iter()
            .filter_map(|(fd, rot)| Some(Pipe::new(fd?, Some(rot))))
            .collect(),
        None => Vec::new(),
    };
    let mut pidfd = match crate::sys::shim::pidfd_open(pid) {
        Ok(fd) => Some(fd),
        Err(e) => {
            if e.kind() != io::ErrorKind::Unsupported {
                eprintln!("task-shim: pidfd_open: {e}");
            }
            None
        }
    };
    let mut ctl = ctl;
    // Starting the task ran code the loop never runs again: only the loop's pages stay.
    if let Err(e) = crate::sys::mem::trim_code_pages() {
        eprintln!("task-shim: cannot trim code pages: {e}");
    }
    let mut buf = vec![0u8; PUMP_FIRST_CHUNK];
    let mut cmd_buf: Vec<u8> = Vec::with_capacity(MAX_CTL_LINE);
    let mut exited: Option<Instant> = None;
    let mut pumping = false;
    let mut set = PollSet::new();
    loop {
        if exited.is_none() {
            if let Ok(Some(st)) = proc.child.try_wait() {
                let (code, signal) = raw_exec::exit_parts(&st);
                if let Err(e) = write_atomic(dir, EXIT, &format!("{code} {signal}\n")) {
                    eprintln!("task-shim: writing the exit file: {e}");
                }
                // Whatever the task left in its group goes with it (the agent then empties
                // its cgroup).
                let _ = crate::sys::shim::kill(-pid, libc::SIGKILL);
                exited = Some(Instant::now() + LOG_DRAIN_GRACE);
                pidfd = None;
            }
        }
        // Until the agent says so, output waits in the pipes; at the end it is drained anyway.
        let pumping_now = pumping || exited.is_some();
        let open = pipes.iter().filter(|p| p.fd().is_some()).count();
        let timeout = match exited {
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if open == 0 || left.is_zero() {
                    return 0;
                }
                left
            }
            None if pidfd.is_none() => NO_PIDFD_TICK,
            None => IDLE_WAIT,
        };
        set.clear();
        set.push(ctl.as_fd());
        if let Some(fd) = &pidfd {
            set.push(fd.as_fd());
        }
        let first_pipe = if pidfd.is_some() { 2 } else { 1 };
        let mut which = Vec::with_capacity(2);
        for (i, p) in pipes.iter().enumerate() {
            if let Some(fd) = p.fd().filter(|_| pumping_now) {
                set.push(fd);
                which.push(i);
            }
        }
        match set.wait(timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("task-shim: poll: {e}");
                std::thread::sleep(NO_PIDFD_TICK);
                continue;
            }
        }
        let ready: Vec<bool> = (0..first_pipe + which.len())
            .map(|k| set.ready(k))
            .collect();
        if ready[0] {
            pumping |= read_commands(&mut ctl, &mut cmd_buf, pid, exited.is_some());
        }
        for (k, &i) in which.iter().enumerate() {
            if ready[first_pipe + k] && pipes[i].pump(&mut buf) && buf.len() < PUMP_CHUNK {
                buf.resize(PUMP_CHUNK, 0);
            }
        }
    }
}

/// Take the agent's commands from the FIFO: `S <sig>` to the task, `G <sig>` to its group,
/// `P` to start pumping (returns whether it came). No signal is sent once the task's main
/// process was reaped (its pid may be reused).
fn read_commands(ctl: &mut File, pending: &mut Vec<u8>, pid: i32, reaped: bool) -> bool {
    let mut pump = false;
    let mut chunk = [0u8; 256];
    loop {
        match ctl.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line);
        let mut it = text.split_whitespace();
        let target = match it.next() {
            Some("P") => {
                pump = true;
                continue;
            }
            Some("S") => pid,
            Some("G") => -pid,
            _ => continue,
        };
        let Some(sig) = it.next().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if !reaped {
            if let Err(e) = crate::sys::shim::kill(target, sig) {
                eprintln!("task-shim: kill({target}, {sig}): {e}");
            }
        }
    }
    if pending.len() > MAX_CTL_LINE {
        pending.clear();
    }
    pump
}
