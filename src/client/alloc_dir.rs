//! The allocation directory in Nomad's layout and permissions, built through directory fds so
//! a symlink a task leaves behind is never followed (and never chmod-ed).
//!
//! ```text
//! <data_dir>/alloc/<alloc_id>/        0755
//!   alloc/                            0755   shared: data/ logs/ tmp/ (0777)
//!   <task>/                           0777   local/ secrets/ (0777), tmp/ (1777), private/ (0700)
//! ```

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::dirfd;

pub const ALLOC_DIR_MODE: u32 = 0o755;
pub const SHARED_DIR_MODE: u32 = 0o755;
pub const SHARED_SUBDIR_MODE: u32 = 0o777;
pub const TASK_DIR_MODE: u32 = 0o777;
pub const TASK_SUBDIR_MODE: u32 = 0o777;
pub const TASK_TMP_MODE: u32 = 0o1777;
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Paths of one allocation's directory.
#[derive(Clone, Debug)]
pub struct AllocDir {
    /// `<data_dir>/alloc/<alloc_id>`.
    pub root: PathBuf,
}

/// Paths of one task's directory.
#[derive(Clone, Debug)]
pub struct TaskDir {
    pub dir: PathBuf,
    pub local: PathBuf,
    pub secrets: PathBuf,
}

impl AllocDir {
    pub fn new(data_dir: &Path, alloc_id: &str) -> AllocDir {
        AllocDir {
            root: data_dir.join("alloc").join(alloc_id),
        }
    }

    /// `<alloc>/alloc` (`NOMAD_ALLOC_DIR`).
    pub fn shared(&self) -> PathBuf {
        self.root.join("alloc")
    }

    pub fn task(&self, task: &str) -> TaskDir {
        let dir = self.root.join(task);
        TaskDir {
            local: dir.join("local"),
            secrets: dir.join("secrets"),
            dir,
        }
    }

    /// Build the shared part; returns an fd of `alloc/logs` for the log writers.
    pub fn build_shared(&self) -> io::Result<OwnedFd> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent)?;
        let parent_fd = dirfd::open_dir(parent)?;
        let name = self
            .root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad alloc dir"))?;
        let root = dirfd::ensure_subdir(&parent_fd, name, ALLOC_DIR_MODE)?;
        let shared = dirfd::ensure_subdir(&root, "alloc", SHARED_DIR_MODE)?;
        dirfd::ensure_subdir(&shared, "data", SHARED_SUBDIR_MODE)?;
        dirfd::ensure_subdir(&shared, "tmp", SHARED_SUBDIR_MODE)?;
        dirfd::ensure_subdir(&shared, "logs", SHARED_SUBDIR_MODE)
    }

    /// Build one task's directory.
    pub fn build_task(&self, task: &str) -> io::Result<TaskDir> {
        let root = dirfd::open_dir(&self.root)?;
        let t = dirfd::ensure_subdir(&root, task, TASK_DIR_MODE)?;
        dirfd::ensure_subdir(&t, "local", TASK_SUBDIR_MODE)?;
        dirfd::ensure_subdir(&t, "secrets", TASK_SUBDIR_MODE)?;
        dirfd::ensure_subdir(&t, "tmp", TASK_TMP_MODE)?;
        dirfd::ensure_subdir(&t, "private", PRIVATE_DIR_MODE)?;
        Ok(self.task(task))
    }

    /// Append a line to `<task>/executor.out` (the driver's own log), opened through the task
    /// dir fd without following a symlink the task may have put there.
    pub fn executor_note(&self, task: &str, line: &str) -> io::Result<()> {
        use std::io::Write;
        let root = dirfd::open_dir(&self.root)?;
        let t = dirfd::ensure_subdir(&root, task, TASK_DIR_MODE)?;
        let fd = dirfd::open_at(
            &t,
            "executor.out",
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            0o644,
        )?;
        super::logs::safe_file(&fd)?;
        let mut f = std::fs::File::from(fd);
        writeln!(f, "{line}")
    }

    /// Remove the whole alloc dir (GC). `remove_dir_all` does not follow symlinks.
    pub fn destroy(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn layout_and_modes_and_symlinks_are_not_followed() {
        let data = std::env::temp_dir().join(format!("nomadlet-ad-{}", uuid::Uuid::new_v4()));
        let ad = AllocDir::new(&data, "a1");
        ad.build_shared().unwrap();
        ad.build_task("web").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&ad.root), 0o755);
        assert_eq!(mode(&ad.shared().join("logs")), 0o777);
        assert_eq!(mode(&ad.task("web").dir.join("tmp")), 0o1777);
        // A task swaps alloc/data for a symlink to a directory it does not own.
        let victim = data.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir(ad.shared().join("data")).unwrap();
        std::os::unix::fs::symlink(&victim, ad.shared().join("data")).unwrap();
        assert!(ad.build_shared().is_err());
        assert_eq!(mode(&victim), 0o700);
        ad.destroy().unwrap();
        assert!(victim.exists());
        std::fs::remove_dir_all(&data).unwrap();
    }
}
