//! The archive of `/v1/operator/snapshot`, as Nomad's is shaped: a gzip tar of `meta.json`
//! (index, term, version, time), `state.bin` (the server state; our own encoding, the JSON
//! image of [`ServerState::to_bytes`]) and `SHA256SUMS` (`<hex>  <name>` per file).
//!
//! [`read`] trusts nothing: the archive's size is bounded by the caller, every entry's declared
//! size is checked before a byte of it is read, the decompressed stream is bounded as a whole
//! (a small gzip that inflates to gigabytes is refused early), only the three regular files are
//! accepted (no links, no pax or long-name records, no duplicates), both checksums are verified
//! and the JSON's depth pre-scanned before anything is decoded. It changes nothing: the caller
//! proposes the state it returns.

use std::fmt;
use std::io::{self, Read};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::ServerState;

/// Largest archive accepted by a restore (the request body limit of the endpoint; also the
/// share of request-body memory one client may hold, so a larger body could not arrive).
pub const MAX_ARCHIVE_BYTES: usize = 16 * 1024 * 1024;
/// Largest `state.bin` a restore inflates (a JSON state compresses about tenfold, so this is
/// about what a full-size archive holds; more is a zip bomb). The restore command carries the
/// state as JSON of about this size, so it also stays well under what one replicated log
/// entry may be (the Raft transport takes 256 MiB per request).
pub const MAX_STATE_BYTES: u64 = 192 * 1024 * 1024;
/// Largest `meta.json` read.
pub const MAX_META_BYTES: u64 = 64 * 1024;
/// Largest `SHA256SUMS` read.
pub const MAX_SUMS_BYTES: u64 = 4 * 1024;
/// At most this many tar records are looked at (the three files; anything more is refused).
pub const MAX_ENTRIES: usize = 3;
/// Bound on everything the gzip stream inflates to: the files plus tar's headers and padding.
pub const MAX_INFLATED_BYTES: u64 = MAX_STATE_BYTES + MAX_META_BYTES + MAX_SUMS_BYTES + 64 * 1024;
/// The JSON depth `state.bin` may have: a job body is bounded at
/// [`crate::parse_bounds::JSON_MAX_DEPTH`] when it is submitted (`{"Job": …}`: a task's
/// `Config` sits at level 7), and the state nests the same job two levels deeper (state →
/// allocs → alloc → job: `Config` at level 9); two more for margin. Checked before decoding.
pub const STATE_MAX_DEPTH: usize = crate::parse_bounds::JSON_MAX_DEPTH + 4;
/// The stack of the thread that decodes `state.bin` (the deepest state [`STATE_MAX_DEPTH`]
/// admits needs about 384 KiB in a debug build; a generous multiple, used once per restore).
pub const DECODE_STACK: usize = 4 * 1024 * 1024;
/// The archive format written and the only one read.
pub const ARCHIVE_VERSION: u64 = 1;
/// What `state.bin` holds (`meta.json`'s `Format`).
pub const STATE_FORMAT: &str = "nomadlet-state-json-1";

/// The names in the archive.
pub const META_FILE: &str = "meta.json";
pub const STATE_FILE: &str = "state.bin";
pub const SUMS_FILE: &str = "SHA256SUMS";

/// `meta.json`: Raft's snapshot meta as Nomad writes it, plus our timestamp and format.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Meta {
    pub version: u64,
    #[serde(rename = "ID")]
    pub id: String,
    pub index: u64,
    pub term: u64,
    /// The size of `state.bin` in bytes.
    pub size: u64,
    /// When the snapshot was taken (RFC 3339).
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub format: String,
}

/// A saved archive and the SHA-256 of its bytes (the `Digest` header).
pub struct Archive {
    pub bytes: Vec<u8>,
    pub sha256: [u8; 32],
}

/// Why an archive could not be written or was refused.
#[derive(Debug)]
pub enum ArchiveError {
    /// Encoding the state or writing the archive failed.
    Write(io::Error),
    /// The gzip or tar stream is broken (truncated, corrupt, inflates past the bound).
    Stream(io::Error),
    /// A record that is not one of the three regular files.
    UnexpectedEntry(String),
    /// A file present twice.
    Duplicate(&'static str),
    /// A file bigger than its bound (its declared size).
    TooLarge {
        name: &'static str,
        size: u64,
        limit: u64,
    },
    /// A file is missing.
    Missing(&'static str),
    /// `SHA256SUMS` does not parse or does not name every file.
    BadSums(String),
    /// A file's SHA-256 differs from `SHA256SUMS`.
    Checksum(&'static str),
    /// `meta.json` does not decode.
    Meta(serde_json::Error),
    /// A format this version does not read.
    Version { version: u64, format: String },
    /// `state.bin` nests deeper than [`STATE_MAX_DEPTH`].
    Depth(crate::parse_bounds::BoundsError),
    /// `state.bin` does not decode.
    State(serde_json::Error),
    /// `meta.json` and `state.bin` disagree (index or size).
    Inconsistent(String),
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveError::Write(e) => write!(f, "failed to write snapshot archive: {e}"),
            ArchiveError::Stream(e) => write!(f, "snapshot is not a valid gzip tar archive: {e}"),
            ArchiveError::UnexpectedEntry(n) => write!(f, "unexpected file {n:?} in snapshot"),
            ArchiveError::Duplicate(n) => write!(f, "file {n:?} appears twice in snapshot"),
            ArchiveError::TooLarge { name, size, limit } => write!(
                f,
                "file {name:?} in snapshot is {size} bytes, larger than the limit of {limit}"
            ),
            ArchiveError::Missing(n) => write!(f, "snapshot is missing {n:?}"),
            ArchiveError::BadSums(why) => write!(f, "snapshot {SUMS_FILE} is invalid: {why}"),
            ArchiveError::Checksum(n) => {
                write!(f, "sha256 hash mismatch for snapshot file {n:?}")
            }
            ArchiveError::Meta(e) => write!(f, "failed to decode snapshot {META_FILE}: {e}"),
            ArchiveError::Version { version, format } => write!(
                f,
                "unsupported snapshot version {version} (format {format:?}); this agent reads \
                 version {ARCHIVE_VERSION} ({STATE_FORMAT:?})"
            ),
            ArchiveError::Depth(e) => write!(f, "snapshot {STATE_FILE} is invalid: {e}"),
            ArchiveError::State(e) => write!(f, "failed to decode snapshot {STATE_FILE}: {e}"),
            ArchiveError::Inconsistent(why) => write!(f, "snapshot is inconsistent: {why}"),
        }
    }
}

impl std::error::Error for ArchiveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArchiveError::Write(e) | ArchiveError::Stream(e) => Some(e),
            ArchiveError::Meta(e) | ArchiveError::State(e) => Some(e),
            ArchiveError::Depth(e) => Some(e),
            _ => None,
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `state` as an archive: `term` is Raft's (0 without Raft), `now_nanos` the time.
pub fn write(state: &ServerState, term: u64, now_nanos: i64) -> Result<Archive, ArchiveError> {
    let body = state
        .to_bytes()
        .map_err(|e| ArchiveError::Write(io::Error::other(e)))?;
    let secs = now_nanos.div_euclid(1_000_000_000);
    let nanos = now_nanos.rem_euclid(1_000_000_000) as u32;
    let meta = Meta {
        version: ARCHIVE_VERSION,
        id: format!("{term}-{}-{}", state.index, secs * 1000),
        index: state.index,
        term,
        size: body.len() as u64,
        timestamp: crate::time::rfc3339_unix(secs, nanos),
        format: STATE_FORMAT.to_string(),
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| ArchiveError::Write(io::Error::other(e)))?;
    let sums = format!(
        "{}  {META_FILE}\n{}  {STATE_FILE}\n",
        hex(&sha256(&meta)),
        hex(&sha256(&body))
    );
    let gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in [
        (META_FILE, meta.as_slice()),
        (STATE_FILE, body.as_slice()),
        (SUMS_FILE, sums.as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(secs.max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data)
            .map_err(ArchiveError::Write)?;
    }
    let gz = tar.into_inner().map_err(ArchiveError::Write)?;
    let bytes = gz.finish().map_err(ArchiveError::Write)?;
    let sha256 = sha256(&bytes);
    Ok(Archive { bytes, sha256 })
}

/// A reader that fails (rather than ends) once more than `left` bytes came through: the
/// bound on what the gzip stream may inflate to.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more means over the bound; none means the stream really ended.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("inflates to more than {MAX_INFLATED_BYTES} bytes"),
                )),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The three files of an archive, read under their bounds.
#[derive(Default)]
struct Files {
    meta: Option<Vec<u8>>,
    state: Option<Vec<u8>>,
    sums: Option<Vec<u8>>,
}

fn read_files(archive: &[u8]) -> Result<Files, ArchiveError> {
    let inflated = Bounded {
        inner: GzDecoder::new(archive),
        left: MAX_INFLATED_BYTES,
    };
    let mut tar = tar::Archive::new(inflated);
    let mut files = Files::default();
    let mut seen = 0usize;
    {
        // Raw: pax and GNU long-name records come to us as records (and are refused) instead
        // of being read into memory by tar itself.
        let entries = tar.entries().map_err(ArchiveError::Stream)?.raw(true);
        for entry in entries {
            let mut entry = entry.map_err(ArchiveError::Stream)?;
            seen += 1;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if seen > MAX_ENTRIES || entry.header().entry_type() != tar::EntryType::Regular {
                return Err(ArchiveError::UnexpectedEntry(name));
            }
            let (slot, fixed, limit) = match name.as_str() {
                META_FILE => (&mut files.meta, META_FILE, MAX_META_BYTES),
                STATE_FILE => (&mut files.state, STATE_FILE, MAX_STATE_BYTES),
                SUMS_FILE => (&mut files.sums, SUMS_FILE, MAX_SUMS_BYTES),
                _ => return Err(ArchiveError::UnexpectedEntry(name)),
            };
            if slot.is_some() {
                return Err(ArchiveError::Duplicate(fixed));
            }
            let size = entry.header().size().map_err(ArchiveError::Stream)?;
            if size > limit {
                return Err(ArchiveError::TooLarge {
                    name: fixed,
                    size,
                    limit,
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(size)
                .read_to_end(&mut data)
                .map_err(ArchiveError::Stream)?;
            if data.len() as u64 != size {
                return Err(ArchiveError::Stream(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{fixed} is truncated"),
                )));
            }
            *slot = Some(data);
        }
    }
    // The rest of the stream (tar's end blocks, gzip's trailer with its CRC): a truncated
    // or corrupt tail is refused too.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(ArchiveError::Stream)?;
    Ok(files)
}

/// `SHA256SUMS` → `(meta sum, state sum)`.
fn parse_sums(text: &[u8]) -> Result<([u8; 32], [u8; 32]), ArchiveError> {
    let text = std::str::from_utf8(text).map_err(|_| ArchiveError::BadSums("not UTF-8".into()))?;
    let (mut meta, mut state) = (None, None);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| ArchiveError::BadSums(format!("line {line:?}")))?;
        // `sha256sum` marks binary mode with `*` before the name.
        let name = name.trim().trim_start_matches('*');
        let mut bytes = [0u8; 32];
        if sum.len() != 64 || !sum.is_ascii() {
            return Err(ArchiveError::BadSums(format!("hash {sum:?}")));
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&sum[2 * i..2 * i + 2], 16)
                .map_err(|_| ArchiveError::BadSums(format!("hash {sum:?}")))?;
        }
        let slot = match name {
            META_FILE => &mut meta,
            STATE_FILE => &mut state,
            other => return Err(ArchiveError::BadSums(format!("unknown file {other:?}"))),
        };
        if slot.replace(bytes).is_some() {
            return Err(ArchiveError::BadSums(format!("{name:?} listed twice")));
        }
    }
    match (meta, state) {
        (Some(m), Some(s)) => Ok((m, s)),
        (None, _) => Err(ArchiveError::BadSums(format!("no hash for {META_FILE:?}"))),
        (_, None) => Err(ArchiveError::BadSums(format!("no hash for {STATE_FILE:?}"))),
    }
}

/// Decode `state.bin` on a thread of its own with [`DECODE_STACK`] bytes of stack: serde's
/// typed descent (state → alloc → job → group → task → config) costs far more per level than
/// a plain JSON value, so the caller's stack (a connection thread's) is not relied upon. The
/// thread is joined at once; the work is bounded by the input's size and depth.
fn decode_state(body: Vec<u8>) -> Result<ServerState, ArchiveError> {
    let worker = std::thread::Builder::new()
        .name("snapshot-decode".into())
        .stack_size(DECODE_STACK)
        .spawn(move || ServerState::from_bytes(&body))
        .map_err(ArchiveError::Stream)?;
    match worker.join() {
        Ok(r) => r.map_err(ArchiveError::State),
        Err(_) => Err(ArchiveError::Stream(io::Error::other(
            "decoding the state panicked",
        ))),
    }
}

/// Read and verify an archive: its meta and the state it holds. Nothing is changed; every
/// check (bounds, checksums, versions, decoding) passes before the state is returned.
pub fn read(archive: &[u8]) -> Result<(Meta, ServerState), ArchiveError> {
    let files = read_files(archive)?;
    let meta = files.meta.ok_or(ArchiveError::Missing(META_FILE))?;
    let body = files.state.ok_or(ArchiveError::Missing(STATE_FILE))?;
    let sums = files.sums.ok_or(ArchiveError::Missing(SUMS_FILE))?;
    let (meta_sum, state_sum) = parse_sums(&sums)?;
    if !crate::encoding::constant_time_eq(&sha256(&meta), &meta_sum) {
        return Err(ArchiveError::Checksum(META_FILE));
    }
    if !crate::encoding::constant_time_eq(&sha256(&body), &state_sum) {
        return Err(ArchiveError::Checksum(STATE_FILE));
    }
    crate::parse_bounds::check_json_depth(&meta, crate::parse_bounds::JSON_MAX_DEPTH)
        .map_err(ArchiveError::Depth)?;
    let meta: Meta = serde_json::from_slice(&meta).map_err(ArchiveError::Meta)?;
    if meta.version != ARCHIVE_VERSION || meta.format != STATE_FORMAT {
        return Err(ArchiveError::Version {
            version: meta.version,
            format: meta.format,
        });
    }
    if meta.size != body.len() as u64 {
        return Err(ArchiveError::Inconsistent(format!(
            "{META_FILE} says {} bytes of state, {STATE_FILE} has {}",
            meta.size,
            body.len()
        )));
    }
    crate::parse_bounds::check_json_depth(&body, STATE_MAX_DEPTH).map_err(ArchiveError::Depth)?;
    let state = decode_state(body)?;
    if state.index != meta.index {
        return Err(ArchiveError::Inconsistent(format!(
            "{META_FILE} says index {}, the state is at {}",
            meta.index, state.index
        )));
    }
    // `from_bytes` sets nodes after rebuilding the derived indexes: rebuild them with nodes.
    Ok((meta, state.reindexed()))
}

#[cfg(test)]
mod tests;
