//! The security hooks a task runner calls around a task: the Task API socket
//! (`${NOMAD_SECRETS_DIR}/api.sock`, served by the agent's own HTTP server and router) and the
//! workload identity (a signed JWT in `NOMAD_TOKEN` and/or `secrets/nomad_token`).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::acl::jwt::DEFAULT_AUDIENCE;
use crate::client::link::{IdentityRequest, SignIdentities};
use crate::http::ListenerHandle;

use super::Client;

/// The name of the identity every task with `identity { env/file }` gets.
pub const DEFAULT_IDENTITY: &str = "default";
/// The socket's file name in the secrets dir.
pub const SOCKET_NAME: &str = "api.sock";
/// The name the socket is bound under until its mode is set (no longer than [`SOCKET_NAME`],
/// so a path that fits `sun_path` still fits).
const STAGED_SOCKET_NAME: &str = ".api.tmp";
/// The token file's name in the secrets dir (`identity { file = true }`).
pub const TOKEN_FILE: &str = "nomad_token";
/// Longest socket path a `sockaddr_un` holds (108 bytes of `sun_path`, one for the NUL).
pub const SUN_PATH_MAX: usize = 107;
/// Open connections one task may hold on its socket; over it: a quick 503 and close. Lower
/// than a TCP listener's cap so one task cannot starve the others.
pub const TASK_SOCKET_MAX_CONNS: usize = 64;

/// What the task runner knows about a task when it prepares it.
#[derive(Clone, Debug)]
pub struct TaskHookInput {
    pub alloc_id: String,
    pub task: String,
    /// `task.user`, when set.
    pub user: Option<String>,
    /// `<alloc>/<task>/secrets`.
    pub secrets_dir: PathBuf,
    /// `identity { env = true }`.
    pub identity_env: bool,
    /// `identity { file = true }`.
    pub identity_file: bool,
}

/// What the hooks give back to the task runner.
#[derive(Default)]
pub struct TaskHookOutput {
    /// Extra environment variables for the task (`NOMAD_TOKEN`, `NOMAD_UNIX_ADDR`).
    pub env: Vec<(String, String)>,
    /// Problems to record as task events; the task still starts.
    pub warnings: Vec<String>,
    /// Dropped when the task stops for good: closes the socket and removes its file.
    pub guard: Option<Box<dyn Send + Sync>>,
}

// The token is a secret: Debug shows only the variable names.
impl std::fmt::Debug for TaskHookOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHookOutput")
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// The Task API socket of one task: stops its listener and unlinks its file when dropped.
struct TaskSocket {
    listener: Option<ListenerHandle>,
    path: PathBuf,
    /// `(dev, ino)` of the socket file we bound, so a later socket at the same path (a new
    /// prestart) is never unlinked by an older guard.
    file_id: Option<(u64, u64)>,
}

impl Drop for TaskSocket {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.stop();
        }
        let same = std::fs::symlink_metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.file_id)
            .unwrap_or(false);
        if same {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove task API socket {}: {e}", self.path.display());
            }
        }
    }
}

/// Why a task's API socket was not made (the text is the task event's message).
#[derive(Debug)]
pub enum SocketError {
    /// The path does not fit a `sockaddr_un`.
    PathTooLong { path: PathBuf, len: usize },
    /// The client has no HTTP server to serve it on.
    NoServer,
    /// A step failed: removing an old file, bind, setting its mode, serving.
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

impl std::fmt::Display for SocketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketError::PathTooLong { path, len } => write!(
                f,
                "Task API socket not created: its path {} is {len} bytes, over the \
                 {SUN_PATH_MAX}-byte limit of a Unix socket address; the task runs without the \
                 Task API",
                path.display()
            ),
            SocketError::NoServer => {
                f.write_str("Task API socket not created: the HTTP server is not running")
            }
            SocketError::Io { path, what, source } => write!(
                f,
                "Task API socket {} not created: {what}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SocketError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SocketError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Prepare the Task API socket and workload identity for a task (prestart).
pub fn prestart(client: &Client, input: &TaskHookInput) -> TaskHookOutput {
    let mut out = TaskHookOutput::default();
    let sock = input.secrets_dir.join(SOCKET_NAME);
    let owner = task_owner(input.user.as_deref());
    match open_task_socket(client, input, &sock, owner) {
        Ok(guard) => out.guard = Some(Box::new(guard)),
        Err(e) => {
            let warning = e.to_string();
            log::warn!("alloc {} task {}: {warning}", input.alloc_id, input.task);
            out.warnings.push(warning);
        }
    }
    if input.identity_env || input.identity_file {
        // Signed by the server (in process with `-dev`): the agent running the task holds
        // no signing key.
        let req = SignIdentities {
            node_id: client.node_id().to_string(),
            alloc_id: input.alloc_id.clone(),
            task: input.task.clone(),
            identities: vec![IdentityRequest {
                name: DEFAULT_IDENTITY.into(),
                audience: DEFAULT_AUDIENCE.into(),
            }],
        };
        let signed = client.sign_identities(&req).map(|mut r| r.identities.pop());
        let token = match signed {
            Ok(Some(signed)) => signed.jwt,
            Ok(None) => {
                out.warnings
                    .push("Failed to sign the workload identity: the server signed nothing".into());
                return out;
            }
            Err(e) => {
                let warning = format!("Failed to sign the workload identity: {e}");
                log::warn!("alloc {} task {}: {warning}", input.alloc_id, input.task);
                out.warnings.push(warning);
                return out;
            }
        };
        if input.identity_env {
            out.env.push(("NOMAD_TOKEN".into(), token.clone()));
            out.env.push((
                "NOMAD_UNIX_ADDR".into(),
                format!("unix://{}", sock.display()),
            ));
        }
        if input.identity_file {
            let path = input.secrets_dir.join(TOKEN_FILE);
            if let Err(e) = write_token_file(&path, &token, owner) {
                let warning = format!(
                    "Failed to write workload identity token file {}: {e}",
                    path.display()
                );
                log::warn!("alloc {} task {}: {warning}", input.alloc_id, input.task);
                out.warnings.push(warning);
            }
        }
    }
    out
}

/// `(uid, gid)` of `task.user` when the agent runs as root and the user exists.
fn task_owner(user: Option<&str>) -> Option<(u32, u32)> {
    let user = user.filter(|u| !u.is_empty())?;
    if crate::sys::user::euid() != 0 {
        return None;
    }
    let u = crate::sys::user::lookup(user)?;
    Some((u.uid, u.gid))
}

fn open_task_socket(
    client: &Client,
    input: &TaskHookInput,
    sock: &Path,
    owner: Option<(u32, u32)>,
) -> Result<TaskSocket, SocketError> {
    let len = sock.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(SocketError::PathTooLong {
            path: sock.to_path_buf(),
            len,
        });
    }
    let server = client
        .task_api()
        .map(|t| &t.server)
        .ok_or(SocketError::NoServer)?;
    let fail = |what: &'static str, source: io::Error| SocketError::Io {
        path: sock.to_path_buf(),
        what,
        source,
    };
    // Bound under a name of the same length, given its mode and owner, then renamed into
    // place: the socket never shows up under its real name with the umask's mode.
    let staged = sock.with_file_name(STAGED_SOCKET_NAME);
    for old in [sock, staged.as_path()] {
        match std::fs::remove_file(old) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("cannot remove the old file", e)),
        }
    }
    let listener = UnixListener::bind(&staged).map_err(|e| fail("bind", e))?;
    let placed = set_socket_mode(&staged, owner).and_then(|id| {
        std::fs::rename(&staged, sock)?;
        Ok(id)
    });
    let file_id = match placed {
        Ok(id) => id,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(fail("set its mode", e));
        }
    };
    let tag: Arc<str> = Arc::from(format!("task:{}/{}", input.alloc_id, input.task));
    let handle = server
        .serve_unix_with_cap(listener, tag, TASK_SOCKET_MAX_CONNS)
        .map_err(|e| fail("serve", e))?;
    Ok(TaskSocket {
        listener: Some(handle),
        path: sock.to_path_buf(),
        file_id: Some(file_id),
    })
}

/// 0600 owned by the task's user when there is one we can hand it to, else 0666. The file is
/// reached through an `O_PATH | O_NOFOLLOW` descriptor so a symlink swapped in by the task is
/// never followed.
fn set_socket_mode(sock: &Path, owner: Option<(u32, u32)>) -> io::Result<(u64, u64)> {
    use crate::sys::fd::{self, OFlags};
    let fd = fd::open(sock, OFlags::PATH | OFlags::NOFOLLOW)?;
    let st = fd::fstat(&fd)?;
    if !st.is_socket() {
        return Err(io::Error::other("not a socket"));
    }
    let mode = if let Some((uid, gid)) = owner {
        fd::chown_fd(&fd, uid, gid)?;
        0o600
    } else {
        0o666
    };
    fd::chmod_fd_path(&fd, mode)?;
    Ok((st.st_dev, st.st_ino))
}

/// Write the JWT to a fresh temporary file (never through a symlink), 0600, owned by the task's
/// user when the agent can hand it over, then rename it into place so readers never see a
/// partial token.
fn write_token_file(path: &Path, token: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{TOKEN_FILE}.tmp-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
