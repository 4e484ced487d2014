//! Durable JSON files: temp file, fsync, rename, fsync of the directory, before a reply.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A state file could not be read or written.
#[derive(Debug)]
pub struct StoreError {
    pub path: PathBuf,
    pub op: &'static str,
    pub detail: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.detail)
    }
}

impl std::error::Error for StoreError {}

fn err(path: &Path, op: &'static str, e: impl fmt::Display) -> StoreError {
    StoreError {
        path: path.to_path_buf(),
        op,
        detail: e.to_string(),
    }
}

/// Write `bytes` to `path` atomically and durably (mode 0600).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| err(dir, "create", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_string());
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
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
    fn missing_file_reads_as_none_and_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("nomadlet-store-{}", uuid::Uuid::new_v4()));
        let missing: Option<Vec<i32>> = read_json(&dir.join("nope.json")).unwrap();
        assert!(missing.is_none());
        write_bytes(&dir.join("bad.json"), b"{not json").unwrap();
        assert!(read_json::<Vec<i32>>(&dir.join("bad.json")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
