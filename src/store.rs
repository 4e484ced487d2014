//! Durable JSON files: temp file, fsync, rename, fsync of the directory, before a reply; and
//! the start-up sweep that removes temp files an interrupted write left behind.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a store failure carries as its cause (an `io::Error`, a decode error, …).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A state file could not be read or written: which file, what was being done, and the
/// error underneath (kept, not just its text).
#[derive(Debug)]
pub struct StoreError {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: Cause,
}

impl StoreError {
    pub fn new(path: &Path, op: &'static str, source: impl Into<Cause>) -> StoreError {
        StoreError {
            path: path.to_path_buf(),
            op,
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

fn err(path: &Path, op: &'static str, e: impl Into<Cause>) -> StoreError {
    StoreError::new(path, op, e)
}

/// Marks a temp file of an atomic write: `.<target>` + this + `<pid>-<32 hex>`. Nothing else
/// in a state directory is named like it, so the start-up sweep can remove exactly these.
pub const TEMP_MARK: &str = ".nomadlet-tmp-";

/// The temp name earlier versions used (`.<target>.tmp-<32 hex>`), swept as well.
const LEGACY_TEMP_MARK: &str = ".tmp-";

/// Length of the random part of a temp name (a simple UUID: 32 lowercase hex digits).
const TEMP_RANDOM_LEN: usize = 32;

/// The temp file name for an atomic write of `target` (see [`TEMP_MARK`]).
fn temp_name(target: &str) -> String {
    format!(
        ".{target}{TEMP_MARK}{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

fn is_random_part(s: &str) -> bool {
    s.len() == TEMP_RANDOM_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Is `name` a temp file of an atomic write (this version's naming or the legacy one)?
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    if let Some((target, tail)) = rest.rsplit_once(TEMP_MARK) {
        if let Some((pid, random)) = tail.split_once('-') {
            return !target.is_empty()
                && !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && is_random_part(random);
        }
    }
    match rest.rsplit_once(LEGACY_TEMP_MARK) {
        Some((target, random)) => !target.is_empty() && is_random_part(random),
        None => false,
    }
}

/// Remove the temp files that interrupted atomic writes left in `dirs` (not recursive; only
/// regular files named by [`is_temp_name`], never anything else). Call at start, before any
/// write. Returns how many were removed; a directory that does not exist counts as empty.
pub fn remove_leftover_temps(dirs: &[PathBuf]) -> Result<usize, StoreError> {
    let mut removed = 0;
    for dir in dirs {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(dir, "list", e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| err(dir, "list", e))?;
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file || !is_temp_name(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(&path, "remove", e)),
            }
        }
    }
    Ok(removed)
}

/// Write `bytes` to `path` atomically and durably (mode 0600).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| err(dir, "create", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_string());
    let tmp = dir.join(temp_name(&name));
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(path, "write", e));
    }
    Ok(())
}

/// Remove `path` durably (the directory is synced); a missing file is already removed.
pub fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, "remove", e)),
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(path, "remove", e))
}

/// Serialize `value` and write it durably.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| err(path, "encode", e))?;
    write_bytes(path, &bytes)
}

/// Read a JSON state file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| err(path, "decode", e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path, "read", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_files() {
        let dir = std::env::temp_dir().join(format!("nomadlet-store-{}", uuid::Uuid::new_v4()));
        let path = dir.join("x.json");
        write_json(&path, &vec![1, 2, 3]).unwrap();
        write_json(&path, &vec![4]).unwrap();
        let back: Option<Vec<i32>> = read_json(&path).unwrap();
        assert_eq!(back, Some(vec![4]));
        let names: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_names_are_recognised_and_nothing_else_is() {
        let fresh = temp_name("x.json");
        assert!(is_temp_name(&fresh), "{fresh}");
        assert!(is_temp_name(
            ".acl.json.tmp-0123456789abcdef0123456789abcdef"
        ));
        for other in [
            "x.json",
            ".x.json",
            "notes.txt",
            "x.json.nomadlet-tmp-1-0123456789abcdef0123456789abcdef",
            ".nomadlet-tmp-1-0123456789abcdef0123456789abcdef",
            ".x.json.nomadlet-tmp-1-0123456789abcdef",
            ".x.json.nomadlet-tmp-a1-0123456789abcdef0123456789abcdef",
            ".x.json.tmp-0123456789ABCDEF0123456789ABCDEF",
            ".x.json.tmp-keep",
        ] {
            assert!(!is_temp_name(other), "{other}");
        }
    }

    #[test]
    fn the_sweep_removes_only_temp_files() {
        let dir = std::env::temp_dir().join(format!("nomadlet-store-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(dir.join(temp_name("sub"))).unwrap();
        fs::write(dir.join(temp_name("a.json")), b"partial").unwrap();
        fs::write(
            dir.join(".b.json.tmp-0123456789abcdef0123456789abcdef"),
            b"",
        )
        .unwrap();
        fs::write(dir.join("keep.json"), b"{}").unwrap();
        let missing = dir.join("missing");
        assert_eq!(remove_leftover_temps(&[dir.clone(), missing]).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"keep.json".to_string()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_reads_as_none_and_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("nomadlet-store-{}", uuid::Uuid::new_v4()));
        let missing: Option<Vec<i32>> = read_json(&dir.join("nope.json")).unwrap();
        assert!(missing.is_none());
        write_bytes(&dir.join("bad.json"), b"{not json").unwrap();
        assert!(read_json::<Vec<i32>>(&dir.join("bad.json")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_its_io_error_as_the_source() {
        let dir = std::env::temp_dir().join(format!("nomadlet-store-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        // A regular file where a directory should be: the write cannot make its parent.
        fs::write(dir.join("file"), b"").unwrap();
        let e = write_json(&dir.join("file").join("x.json"), &[1]).unwrap_err();
        let io = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the io::Error is kept");
        assert!(e.to_string().ends_with(&io.to_string()), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
