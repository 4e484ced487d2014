//! Raft messages between servers: `POST /v1/rpc/raft` on the peer's RPC port, the body a
//! batch of protobuf `Message`s, each preceded by its length (4 bytes, big-endian). One
//! `raft-send-<id>` thread per peer with a bounded queue (a full queue drops: Raft sends
//! again), one kept-alive connection, dialed with a deadline; every read and write has one.

use std::collections::HashMap;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::{Dial, Input, PeerBook};
use crate::http::client::{exchange_keep_alive, Outgoing, Stream};

/// Why a batch of Raft messages was not encoded, decoded or delivered.
#[derive(Debug)]
pub enum WireError {
    /// A batch of more than [`MAX_BATCH_MESSAGES`].
    TooMany,
    /// A length prefix or the message it announces runs past the end of the batch.
    Truncated(&'static str),
    /// A message does not decode (or encode).
    Message {
        what: &'static str,
        source: protobuf::ProtobufError,
    },
    /// A message longer than a length prefix can say.
    TooLarge,
    /// The peer's address is not in the peer book.
    AddressUnknown,
    /// The peer could not be dialled.
    Dial {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The peer answered other than 200.
    Refused {
        addr: SocketAddr,
        status: u16,
        text: String,
    },
    /// The exchange failed (the connection broke, a deadline passed).
    Exchange {
        addr: SocketAddr,
        source: crate::http::client::ClientError,
    },
    /// Neither the kept connection nor a fresh one answered.
    NoAnswer(SocketAddr),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooMany => write!(f, "more than {MAX_BATCH_MESSAGES} raft messages"),
            WireError::Truncated(what) => f.write_str(what),
            WireError::Message { what, source } => write!(f, "{what}: {source}"),
            WireError::TooLarge => f.write_str("raft message too large"),
            WireError::AddressUnknown => f.write_str("address unknown"),
            WireError::Dial { addr, source } => write!(f, "dial {addr}: {source}"),
            WireError::Refused { addr, status, text } => {
                write!(f, "{addr} answered {status}: {text}")
            }
            WireError::Exchange { addr, source } => write!(f, "{addr}: {source}"),
            WireError::NoAnswer(addr) => write!(f, "{addr}: no answer"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Message { source, .. } => Some(source),
            WireError::Dial { source, .. } => Some(source),
            WireError::Exchange { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The RPC path Raft messages are POSTed to.
pub const RAFT_PATH: &str = crate::server::rpc::RAFT_CALL;
/// Largest body of one batch (a snapshot of the whole state travels in one message).
pub const RAFT_BODY_LIMIT: usize = 256 * 1024 * 1024;
/// Messages in one batch at most (checked before any is decoded).
pub const MAX_BATCH_MESSAGES: usize = 4096;
/// Messages waiting for one peer's sender at most.
const PEER_QUEUE: usize = 4096;
/// Bytes a sender puts in one batch (more waits for the next; one message may exceed it).
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Dialing a peer gives up after this long.
const DIAL_TIMEOUT: Duration = Duration::from_millis(500);
/// One batch's write and reply must finish within this (a snapshot gets longer).
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A snapshot batch's write and reply deadline.
const SNAPSHOT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// After a failed dial, messages to that peer are dropped for this long (Raft retries).
const DOWN_BACKOFF: Duration = Duration::from_millis(200);
/// How long an idle sender waits before it looks for a stop again.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Largest reply body read from a peer.
const MAX_REPLY: usize = 4096;

/// A batch as the wire carries it.
pub fn encode_batch(msgs: &[Message]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    for m in msgs {
        let b = m.write_to_bytes().map_err(|source| WireError::Message {
            what: "encode raft message",
            source,
        })?;
        let len = u32::try_from(b.len()).map_err(|_| WireError::TooLarge)?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// A batch back from the wire: every length checked against what is left before anything
/// is decoded; at most [`MAX_BATCH_MESSAGES`].
pub fn decode_batch(body: &[u8]) -> Result<Vec<Message>, WireError> {
    let mut spans = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if spans.len() >= MAX_BATCH_MESSAGES {
            return Err(WireError::TooMany);
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(WireError::Truncated("truncated raft message length"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(WireError::Truncated("truncated raft message"));
        }
        spans.push(&tail[..len]);
        rest = &tail[len..];
    }
    spans
        .into_iter()
        .map(|b| {
            Message::parse_from_bytes(b).map_err(|source| WireError::Message {
                what: "bad raft message",
                source,
            })
        })
        .collect()
}

/// One peer's sender: its queue and thread.
struct PeerSender {
    queue: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

/// The senders, one per peer, started on the first message to it.
pub struct Transport {
    id: u64,
    peers: PeerBook,
    dial: Dial,
    /// Where failures are reported (the driver's input).
    report: Sender<Input>,
    senders: Mutex<HashMap<u64, PeerSender>>,
    stop: Arc<AtomicBool>,
}

impl Transport {
    pub(crate) fn new(id: u64, peers: PeerBook, dial: Dial, report: Sender<Input>) -> Transport {
        Transport {
            id,
            peers,
            dial,
            report,
            senders: Mutex::new(HashMap::new()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queue `msgs` to their peers (never blocks: a full queue drops).
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() || self.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut senders = self.senders.lock();
        for m in msgs {
            if m.to == self.id || m.to == 0 {
                continue;
            }
            let to = m.to;
            if let std::collections::hash_map::Entry::Vacant(v) = senders.entry(to) {
                match self.spawn(to) {
                    Some(s) => {
                        v.insert(s);
                    }
                    None => continue,
                }
            }
            if let Some(s) = senders.get(&to) {
                if let Err(crossbeam_channel::TrySendError::Full(m)) = s.queue.try_send(m) {
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        let _ = self.report.try_send(Input::SnapshotSent(to, false));
                    }
                }
            }
        }
    }

    fn spawn(&self, to: u64) -> Option<PeerSender> {
        let (tx, rx) = crossbeam_channel::bounded(PEER_QUEUE);
        let w = Worker {
            to,
            peers: self.peers.clone(),
            dial: self.dial.clone(),
            report: self.report.clone(),
            stop: self.stop.clone(),
            conn: None,
            down_until: None,
        };
        match std::thread::Builder::new()
            .name(format!("raft-send-{to:x}"))
            .spawn(move || w.run(rx))
        {
            Ok(h) => Some(PeerSender {
                queue: tx,
                thread: Some(h),
            }),
            Err(e) => {
                log::warn!("cannot start a raft sender thread: {e}");
                None
            }
        }
    }

    /// Stop every sender and join them.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let senders: Vec<PeerSender> = self.senders.lock().drain().map(|(_, s)| s).collect();
        for mut s in senders {
            drop(s.queue);
            if let Some(h) = s.thread.take() {
                let _ = h.join();
            }
        }
    }
}

/// A kept-alive connection to a peer.
struct Conn {
    addr: SocketAddr,
    reader: BufReader<Box<dyn Stream>>,
    tcp: TcpStream,
}

struct Worker {
    to: u64,
    peers: PeerBook,
    dial: Dial,
    report: Sender<Input>,
    stop: Arc<AtomicBool>,
    conn: Option<Conn>,
    down_until: Option<Instant>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Message>) {
        loop {
            let first = match rx.recv_timeout(IDLE_WAKE) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let mut batch = vec![first];
            let mut bytes = batch[0].compute_size() as usize;
            while batch.len() < MAX_BATCH_MESSAGES && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += m.compute_size() as usize;
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            let snapshot = batch
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            if self.down_until.is_some_and(|t| Instant::now() < t) {
                self.failed(snapshot);
                continue;
            }
            match self.send(&batch, snapshot) {
                Ok(()) => {
                    self.down_until = None;
                    if snapshot {
                        let _ = self.report.try_send(Input::SnapshotSent(self.to, true));
                    }
                }
                Err(e) => {
                    log::debug!("raft: sending to {:x} failed: {e}", self.to);
                    self.conn = None;
                    self.down_until = Some(Instant::now() + DOWN_BACKOFF);
                    self.failed(snapshot);
                }
            }
        }
        if let Some(c) = self.conn.take() {
            let _ = c.tcp.shutdown(std::net::Shutdown::Both);
        }
    }

    fn failed(&self, snapshot: bool) {
        let _ = self.report.try_send(Input::Unreachable(self.to));
        if snapshot {
            let _ = self.report.try_send(Input::SnapshotSent(self.to, false));
        }
    }

    fn send(&mut self, batch: &[Message], snapshot: bool) -> Result<(), WireError> {
        let addr = self
            .peers
            .read()
            .get(&self.to)
            .map(|p| p.rpc_addr)
            .ok_or(WireError::AddressUnknown)?;
        if self.conn.as_ref().is_some_and(|c| c.addr != addr) {
            self.conn = None;
        }
        let body = encode_batch(batch)?;
        // A kept-alive connection the peer closed while idle fails at once: dial again once.
        for attempt in 0..2 {
            if self.conn.is_none() {
                let (stream, tcp) = (self.dial)(&addr, Instant::now() + DIAL_TIMEOUT)
                    .map_err(|source| WireError::Dial { addr, source })?;
                let _ = tcp.set_nodelay(true);
                self.conn = Some(Conn {
                    addr,
                    reader: BufReader::new(stream),
                    tcp,
                });
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let timeout = if snapshot {
                SNAPSHOT_IO_TIMEOUT
            } else {
                IO_TIMEOUT
            };
            let _ = conn.tcp.set_read_timeout(Some(timeout));
            let _ = conn.tcp.set_write_timeout(Some(timeout));
            let host = addr.to_string();
            let out = Outgoing {
                method: "POST",
                host: &host,
                path: RAFT_PATH,
                user_agent: "nomadlet-raft",
                headers: &[],
                body: &body,
            };
            match exchange_keep_alive(&mut conn.reader, &out, MAX_REPLY) {
                Ok((200, _)) => return Ok(()),
                Ok((status, reply)) => {
                    self.conn = None;
                    return Err(WireError::Refused {
                        addr,
                        status,
                        text: String::from_utf8_lossy(&reply).into_owned(),
                    });
                }
                Err(source) => {
                    self.conn = None;
                    if attempt == 1 {
                        return Err(WireError::Exchange { addr, source });
                    }
                }
            }
        }
        Err(WireError::NoAnswer(addr))
    }
}
