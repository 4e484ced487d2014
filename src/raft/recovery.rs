//! Outage recovery with `peers.json` (ref §6.1, Nomad's `<data_dir>/server/raft/peers.json`):
//! when a cluster lost its quorum for good, the operator stops the surviving servers, writes
//! the configuration they should form (`[{"id": "<server UUID>", "address": "ip:port",
//! "non_voter": false}, …]`) into that file on each, and starts them: the file replaces the
//! stored Raft configuration once, is deleted, and `peers.info` says what happened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use raft::eraftpb::ConfState;
use serde::Deserialize;

use super::{raft_id, Peer};

/// The largest `peers.json` read (a configuration of a few servers is well under it).
pub const MAX_PEERS_JSON: u64 = 64 * 1024;

/// What `peers.info` says once a `peers.json` was taken.
const PEERS_INFO: &str = "\
The peers.json file of this directory is read once, when the server starts after an outage:
it replaced this server's Raft configuration and was deleted. To recover again, write a new
peers.json with the servers' IDs and RPC addresses, e.g.
[{\"id\": \"<server UUID>\", \"address\": \"<ip>:<rpc port>\", \"non_voter\": false}]
";

/// One entry of `peers.json`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    address: String,
    #[serde(default)]
    non_voter: bool,
}

/// Why a `peers.json` could not be used (the server does not start).
#[derive(Debug)]
pub struct RecoveryError(pub String);

impl std::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "recovery failed to parse peers.json: {}", self.0)
    }
}

impl std::error::Error for RecoveryError {}

/// A configuration to recover to, and where its servers are.
pub struct Recovery {
    pub conf: ConfState,
    pub peers: Vec<(u64, Peer)>,
    path: PathBuf,
}

/// `<raft_dir>/peers.json`, when there is one.
pub fn read(raft_dir: &Path) -> Result<Option<Recovery>, RecoveryError> {
    use std::io::Read;
    let path = raft_dir.join("peers.json");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RecoveryError(e.to_string())),
    };
    let mut text = Vec::new();
    file.take(MAX_PEERS_JSON + 1)
        .read_to_end(&mut text)
        .map_err(|e| RecoveryError(e.to_string()))?;
    if text.len() as u64 > MAX_PEERS_JSON {
        return Err(RecoveryError(format!("larger than {MAX_PEERS_JSON} bytes")));
    }
    // Bounded in size above; serde_json bounds nesting (recursion limit 128).
    let entries: Vec<Entry> =
        serde_json::from_slice(&text).map_err(|e| RecoveryError(e.to_string()))?;
    let mut conf = ConfState::default();
    let mut peers = Vec::new();
    for e in entries {
        let id = raft_id(&e.id)
            .ok_or_else(|| RecoveryError(format!("id {:?} is not a server UUID", e.id)))?;
        let addr: SocketAddr = e
            .address
            .parse()
            .map_err(|_| RecoveryError(format!("address {:?} is not ip:port", e.address)))?;
        if conf.voters.contains(&id) || conf.learners.contains(&id) {
            return Err(RecoveryError(format!("id {:?} appears twice", e.id)));
        }
        if e.non_voter {
            conf.learners.push(id);
        } else {
            conf.voters.push(id);
        }
        peers.push((
            id,
            Peer {
                uuid: e.id,
                name: "(unknown)".to_string(),
                rpc_addr: addr,
            },
        ));
    }
    if conf.voters.is_empty() {
        return Err(RecoveryError("no voter in the configuration".into()));
    }
    Ok(Some(Recovery { conf, peers, path }))
}

impl Recovery {
    /// The configuration is stored: remove `peers.json` and leave `peers.info`.
    pub fn done(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::error!("raft: cannot remove {}: {e}", self.path.display());
        }
        if let Some(dir) = self.path.parent() {
            // An explanation for the operator, not state: a plain write is enough.
            if let Err(e) = std::fs::write(dir.join("peers.info"), PEERS_INFO) {
                log::warn!("raft: cannot write peers.info: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_json_is_read_bounded_and_refused_when_wrong() {
        let dir = std::env::temp_dir().join(format!("nomadlet-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read(&dir).unwrap().is_none());
        let file = dir.join("peers.json");
        std::fs::write(
            &file,
            r#"[{"id":"c13f9998-a0f3-d765-0b52-55a0b3ce5f88","address":"127.0.0.1:4647"},
                {"id":"d7927f2b-067f-45a4-6266-af8bb84de082","address":"127.0.0.2:4647","non_voter":true}]"#,
        )
        .unwrap();
        let r = read(&dir).unwrap().unwrap();
        assert_eq!(r.conf.voters, [0xc13f9998a0f3d765]);
        assert_eq!(r.conf.learners, [0xd7927f2b067f45a4]);
        r.done();
        assert!(!file.exists() && dir.join("peers.info").exists());
        for bad in [
            "{}",
            "[]",
            r#"[{"id":"nope","address":"127.0.0.1:4647"}]"#,
            r#"[{"id":"c13f9998-a0f3-d765-0b52-55a0b3ce5f88","address":"here"}]"#,
            r#"[{"id":"c13f9998-a0f3-d765-0b52-55a0b3ce5f88","address":"127.0.0.1:1","x":1}]"#,
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = read(&dir).err().expect(bad);
            assert!(e
                .to_string()
                .starts_with("recovery failed to parse peers.json"));
        }
        std::fs::write(&file, vec![b' '; MAX_PEERS_JSON as usize + 1]).unwrap();
        assert!(read(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
