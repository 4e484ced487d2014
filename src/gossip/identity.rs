//! A server's gossip identity: Nomad's member name `<name>.<region>`, the gossip address, a
//! generation that grows with every start (and every rejoin after being declared down), and
//! the member's Serf tags. foca keys members by address; at one address the higher
//! generation wins, so a restarted server replaces its old self at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use bytes::{Buf, BufMut};
use foca::{Header, Member, PostcardCodec};
use serde::{Deserialize, Serialize};

/// Longest member name accepted from the wire.
pub const MAX_NAME: usize = 256;
/// Most tags a member may carry.
pub const MAX_TAGS: usize = 32;
/// Longest tag key or value accepted from the wire.
pub const MAX_TAG_TEXT: usize = 256;

/// One server as gossip knows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ServerId {
    pub name: String,
    pub addr: SocketAddr,
    pub generation: u64,
    pub tags: BTreeMap<String, String>,
}

impl ServerId {
    /// The identity a join announces to: only the address is known (foca accepts an announce
    /// addressed to any identity at the receiver's address).
    pub fn at(addr: SocketAddr) -> ServerId {
        ServerId {
            name: String::new(),
            addr,
            generation: 0,
            tags: BTreeMap::new(),
        }
    }

    /// Within the wire bounds; a sender must also have a name.
    fn check(&self, named: bool) -> Result<(), CodecError> {
        let tags_ok = self.tags.len() <= MAX_TAGS
            && self
                .tags
                .iter()
                .all(|(k, v)| k.len() <= MAX_TAG_TEXT && v.len() <= MAX_TAG_TEXT);
        if self.name.len() > MAX_NAME || (named && self.name.is_empty()) || !tags_ok {
            return Err(CodecError::Bounds);
        }
        Ok(())
    }
}

impl foca::Identity for ServerId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(ServerId {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.name, &self.tags)
            > (adversary.generation, &adversary.name, &adversary.tags)
    }
}

/// Why a packet did not decode.
#[derive(Debug)]
pub enum CodecError {
    Postcard(postcard_error::Error),
    /// An identity outside the wire bounds.
    Bounds,
}

/// postcard's error type, named through foca's codec.
mod postcard_error {
    pub type Error = <foca::PostcardCodec as foca::Codec<super::ServerId>>::Error;
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Postcard(e) => write!(f, "undecodable gossip packet: {e}"),
            CodecError::Bounds => f.write_str("gossip identity out of bounds"),
        }
    }
}

impl std::error::Error for CodecError {}

/// foca's postcard codec, plus the bounds every identity read from the wire must keep.
pub struct Codec;

impl foca::Codec<ServerId> for Codec {
    type Error = CodecError;

    fn encode_header(&mut self, h: &Header<ServerId>, buf: impl BufMut) -> Result<(), CodecError> {
        PostcardCodec
            .encode_header(h, buf)
            .map_err(CodecError::Postcard)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<ServerId>, CodecError> {
        let h: Header<ServerId> = PostcardCodec
            .decode_header(buf)
            .map_err(CodecError::Postcard)?;
        h.src.check(true)?;
        h.dst.check(false)?;
        Ok(h)
    }

    fn encode_member(&mut self, m: &Member<ServerId>, buf: impl BufMut) -> Result<(), CodecError> {
        PostcardCodec
            .encode_member(m, buf)
            .map_err(CodecError::Postcard)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<ServerId>, CodecError> {
        let m: Member<ServerId> = PostcardCodec
            .decode_member(buf)
            .map_err(CodecError::Postcard)?;
        m.id().check(true)?;
        Ok(m)
    }
}

/// Encode an identity for a leave notice.
pub fn encode_id(id: &ServerId) -> Option<Vec<u8>> {
    postcard::to_allocvec(id).ok()
}

/// Decode a leave notice's identity (bounded like every identity from the wire).
pub fn decode_id(data: &[u8]) -> Option<ServerId> {
    let id: ServerId = postcard::from_bytes(data).ok()?;
    id.check(true).ok()?;
    Some(id)
}

/// A `force-leave` passed on to the other servers.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ForceLeave {
    pub name: String,
    pub prune: bool,
}

pub fn encode_force_leave(f: &ForceLeave) -> Option<Vec<u8>> {
    postcard::to_allocvec(f).ok()
}

pub fn decode_force_leave(data: &[u8]) -> Option<ForceLeave> {
    let f: ForceLeave = postcard::from_bytes(data).ok()?;
    (f.name.len() <= MAX_NAME && !f.name.is_empty()).then_some(f)
}
