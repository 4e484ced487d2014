//! A dispatched job's payload in its task's directory: `dispatch_payload { file = "…" }`
//! writes the child job's `Payload` to `<task>/local/<file>` before the task starts. Every
//! step goes through directory fds without following a symlink; the name is checked again
//! here (relative, no `..`), and whatever already has that name is unlinked first, so a
//! link a task left behind is never written through.

use std::io::{self, Write};

use super::alloc_dir::{AllocDir, TASK_DIR_MODE, TASK_SUBDIR_MODE};
use super::dirfd;
use crate::state::jobs::spec::{Job, Task};

/// The payload file's mode (Nomad writes it 0666 before the umask).
pub const PAYLOAD_FILE_MODE: u32 = 0o644;
/// The most directory levels a payload file name may have under `local/`.
pub const MAX_PAYLOAD_DEPTH: usize = 16;

/// The file a task wants its payload in, when it wants one.
fn payload_file(task: &Task) -> Option<&str> {
    task.dispatch_payload
        .get("File")
        .and_then(|f| f.as_str())
        .filter(|f| !f.is_empty())
}

/// Write `job`'s payload for `task` (nothing when the task names no file; an empty file when
/// the job has no payload, as Nomad does).
pub fn write(ad: &AllocDir, job: &Job, task: &Task) -> io::Result<()> {
    let Some(file) = payload_file(task) else {
        return Ok(());
    };
    let parts: Vec<&str> = file.split('/').collect();
    if parts.len() > MAX_PAYLOAD_DEPTH
        || parts
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("dispatch payload file name {file:?} has invalid path"),
        ));
    }
    let data = match job.payload.as_str() {
        Some(b64) if !b64.is_empty() => {
            crate::encoding::base64_std_decode(b64).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the job's payload is not base64",
                )
            })?
        }
        _ => Vec::new(),
    };
    let root = dirfd::open_dir(&ad.root)?;
    let task_fd = dirfd::ensure_subdir(&root, &task.name, TASK_DIR_MODE)?;
    let mut dir = dirfd::ensure_subdir(&task_fd, "local", TASK_SUBDIR_MODE)?;
    let (name, parents) = parts.split_last().unwrap_or((&"", &[]));
    for p in parents {
        dir = dirfd::ensure_subdir(&dir, p, TASK_SUBDIR_MODE)?;
    }
    match dirfd::unlink_at(&dir, name) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let fd = dirfd::open_at(
        &dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        PAYLOAD_FILE_MODE,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_payload_lands_in_local_and_a_planted_link_is_replaced_not_followed() {
        let data = std::env::temp_dir().join(format!("nomadlet-dp-{}", uuid::Uuid::new_v4()));
        let ad = AllocDir::new(&data, "a1");
        ad.build_shared().unwrap();
        ad.build_task("t").unwrap();
        let mut job =
            Job::from_json(json!({"ID": "p/dispatch-1-abcdef01", "Payload": "aGVsbG8="})).unwrap();
        let task = Task {
            name: "t".into(),
            dispatch_payload: json!({"File": "in/input.txt"}),
            ..Task::default()
        };
        let victim = data.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::create_dir_all(ad.task("t").local.join("in")).unwrap();
        std::os::unix::fs::symlink(&victim, ad.task("t").local.join("in/input.txt")).unwrap();
        write(&ad, &job, &task).unwrap();
        let out = ad.task("t").local.join("in/input.txt");
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        job.payload = serde_json::Value::Null;
        write(&ad, &job, &task).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"");
        let bad = Task {
            name: "t".into(),
            dispatch_payload: json!({"File": "../escape"}),
            ..Task::default()
        };
        assert!(write(&ad, &job, &bad).is_err());
        std::fs::remove_dir_all(&data).unwrap();
    }
}
