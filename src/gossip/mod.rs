//! Server membership: SWIM gossip (foca) among servers on the serf port (UDP), as Serf does
//! for Nomad. One `gossip` thread owns the socket, foca and its timers; the API reads the
//! member table it publishes and asks it to join or force-leave through a channel.

mod envelope;
mod identity;
mod runner;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

pub use identity::ServerId;

/// Largest datagram sent or accepted (Serf's UDP buffer size; under a 1500-byte MTU).
pub const MAX_DATAGRAM: usize = 1400;
/// Addresses one join may name.
pub const MAX_JOIN_ADDRESSES: usize = 16;
/// How often a join in progress announces again to an address that has not answered.
const JOIN_RESEND: Duration = Duration::from_millis(250);
/// How often the thread tries to reach failed members again (Serf: 30 s; small clusters
/// here, so sooner).
const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);
/// Failed members announced to per reconnect round.
const RECONNECT_FANOUT: usize = 3;
/// A failed member is forgotten after this long (Nomad's `ReconnectTimeout`).
const FAILED_REAP: Duration = Duration::from_secs(72 * 3600);
/// A member that left is forgotten after this long (Serf's tombstone timeout).
const LEFT_REAP: Duration = Duration::from_secs(24 * 3600);
/// Longest the thread sleeps in `recv` with nothing due (it is woken for commands).
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Members the table keeps at most (servers are few; this bounds hostile gossip).
const MAX_MEMBERS: usize = 512;
/// The cluster size foca's LAN timings are tuned for (probe 1 s, suspicion 4 s).
const CLUSTER_SIZE_HINT: u32 = 8;
/// Commands waiting for the thread at most.
const COMMAND_QUEUE: usize = 64;

/// Serf's member status words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatus {
    Alive,
    Leaving,
    Left,
    Failed,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }
}

/// One member as `/v1/agent/members` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberInfo {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
    pub status: MemberStatus,
}

/// What the agent tells gossip at start.
pub struct Settings {
    /// `<node name>.<region>`.
    pub name: String,
    /// Where the socket binds.
    pub bind: SocketAddr,
    /// The address other servers reach this one at.
    pub advertise: SocketAddr,
    pub tags: BTreeMap<String, String>,
    /// The decoded `server.encrypt` key (16, 24 or 32 bytes).
    pub key: Option<Vec<u8>>,
    pub retry_join: Vec<String>,
    pub start_join: Vec<String>,
    pub retry_interval: Duration,
    /// 0: retry until a join succeeds.
    pub retry_max: u32,
    /// Where the generation is kept (`<data_dir>/server/gossip.json`).
    pub state_path: PathBuf,
}

/// Why gossip could not start or a request to it failed.
#[derive(Debug)]
pub enum GossipError {
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A key of a length AES-GCM does not take (config load refuses these first).
    Key(usize),
    /// The generation could not be kept.
    Store(crate::store::StoreError),
    /// The socket could not be set up or the thread not started.
    Io(std::io::Error),
    /// The gossip thread has stopped.
    Stopped,
    /// `force-leave` of this agent itself.
    LocalMember,
    /// A join address whose name did not resolve (`host:port` as looked up).
    Lookup {
        addr: String,
        source: std::io::Error,
    },
    /// A join address whose name resolved to no address.
    NoAddress(String),
}

impl fmt::Display for GossipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GossipError::Bind { addr, source } => {
                write!(f, "cannot listen for gossip on udp {addr}: {source}")
            }
            GossipError::Key(n) => write!(f, "gossip key must be 16, 24 or 32 bytes, got {n}"),
            GossipError::Store(e) => write!(f, "cannot keep the gossip generation: {e}"),
            GossipError::Io(e) => write!(f, "gossip: {e}"),
            GossipError::Stopped => f.write_str("gossip is not running"),
            GossipError::LocalMember => f.write_str("cannot force-leave the local agent"),
            GossipError::Lookup { addr, source } => write!(f, "lookup {addr}: {source}"),
            GossipError::NoAddress(addr) => write!(f, "lookup {addr}: no addresses"),
        }
    }
}

impl std::error::Error for GossipError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GossipError::Bind { source, .. }
            | GossipError::Io(source)
            | GossipError::Lookup { source, .. } => Some(source),
            GossipError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// The outcome of a join: how many addresses answered, and why the others did not.
#[derive(Debug, Default)]
pub struct JoinOutcome {
    pub joined: usize,
    pub errors: Vec<String>,
}

/// Counters the thread keeps.
#[derive(Default)]
pub struct Counters {
    /// Datagrams refused: oversized, not ours (magic, key), or not decodable by foca.
    pub dropped: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

/// A request to the gossip thread.
enum Cmd {
    Join {
        targets: Vec<SocketAddr>,
        deadline: Instant,
        reply: Sender<Vec<bool>>,
    },
    ForceLeave {
        name: String,
        prune: bool,
        reply: Sender<Result<(), GossipError>>,
    },
    Stop {
        leave: bool,
    },
}

/// One member in the table.
#[derive(Clone, Debug)]
struct Entry {
    id: ServerId,
    status: MemberStatus,
    /// It announced its leave (so when it goes down it is `left`, not `failed`).
    leaving: bool,
    since: Instant,
}

/// The member table the thread writes and the API reads.
struct Table {
    local: String,
    entries: BTreeMap<String, Entry>,
}

/// The handle the agent and the API hold.
pub struct Gossip {
    table: Arc<RwLock<Table>>,
    counters: Arc<Counters>,
    commands: Sender<Cmd>,
    /// A clone of the thread's socket, to wake it with an empty datagram.
    waker: UdpSocket,
    wake_addr: SocketAddr,
    thread: Mutex<Option<JoinHandle<()>>>,
    local_name: String,
    advertise: SocketAddr,
}

impl Gossip {
    /// Bind the serf port and start the `gossip` thread.
    pub fn start(s: Settings) -> Result<Arc<Gossip>, GossipError> {
        let cipher = match &s.key {
            None => None,
            Some(k) => Some(envelope::Cipher::new(k).ok_or(GossipError::Key(k.len()))?),
        };
        let socket = UdpSocket::bind(s.bind).map_err(|source| GossipError::Bind {
            addr: s.bind,
            source,
        })?;
        let local_addr = socket.local_addr().map_err(GossipError::Io)?;
        let wake_addr = match local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::from([127, 0, 0, 1]), local_addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), local_addr.port())
            }
            _ => local_addr,
        };
        let waker = socket.try_clone().map_err(GossipError::Io)?;
        let generation = next_generation(&s.state_path)?;
        let id = ServerId {
            name: s.name.clone(),
            addr: s.advertise,
            generation,
            tags: s.tags.clone(),
        };
        let mut entries = BTreeMap::new();
        entries.insert(
            s.name.clone(),
            Entry {
                id: id.clone(),
                status: MemberStatus::Alive,
                leaving: false,
                since: Instant::now(),
            },
        );
        let table = Arc::new(RwLock::new(Table {
            local: s.name.clone(),
            entries,
        }));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let mut run = runner::Runner::new(runner::Parts {
            socket,
            cipher,
            id,
            table: table.clone(),
            counters: counters.clone(),
            commands: rx,
            retry_join: s.retry_join,
            start_join: s.start_join,
            retry_interval: s.retry_interval,
            retry_max: s.retry_max,
        });
        let thread = std::thread::Builder::new()
            .name("gossip".into())
            .spawn(move || run.run())
            .map_err(GossipError::Io)?;
        Ok(Arc::new(Gossip {
            table,
            counters,
            commands: tx,
            waker,
            wake_addr,
            thread: Mutex::new(Some(thread)),
            local_name: s.name,
            advertise: s.advertise,
        }))
    }

    fn send(&self, cmd: Cmd) -> Result<(), GossipError> {
        self.commands
            .send_timeout(cmd, Duration::from_secs(1))
            .map_err(|_| GossipError::Stopped)?;
        // An empty datagram to our own socket ends the thread's `recv` at once.
        let _ = self.waker.send_to(&[], self.wake_addr);
        Ok(())
    }

    /// Every member: this server first, then the others by name.
    pub fn members(&self) -> Vec<MemberInfo> {
        let t = self.table.read();
        let info = |e: &Entry| MemberInfo {
            name: e.id.name.clone(),
            addr: e.id.addr.ip(),
            port: e.id.addr.port(),
            tags: e.id.tags.clone(),
            status: e.status,
        };
        let mut out: Vec<MemberInfo> = t.entries.get(&t.local).map(info).into_iter().collect();
        out.extend(
            t.entries
                .iter()
                .filter(|(n, _)| **n != t.local)
                .map(|(_, e)| info(e)),
        );
        out
    }

    /// This server as a member.
    pub fn local(&self) -> Option<MemberInfo> {
        self.members().into_iter().next()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Join the servers at `addrs` (`host[:port]`, default port 4648) before `deadline`: the
    /// number that answered, and an error line for each that did not.
    pub fn join(&self, addrs: &[String], deadline: Instant) -> JoinOutcome {
        let mut out = JoinOutcome::default();
        let mut targets = Vec::new();
        let mut names = Vec::new();
        for a in addrs {
            // Name lookups count against the same deadline (one lookup may still take the
            // resolver's own timeout).
            if Instant::now() >= deadline {
                out.errors.push(format!("Failed to join {a}: i/o timeout"));
                continue;
            }
            match resolve(a) {
                Ok(sock) if sock == self.advertise => out.joined += 1,
                Ok(sock) => {
                    targets.push(sock);
                    names.push(a.clone());
                }
                Err(e) => out.errors.push(format!("Failed to join {a}: {e}")),
            }
        }
        if targets.is_empty() {
            return out;
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let cmd = Cmd::Join {
            targets: targets.clone(),
            deadline,
            reply,
        };
        let joined = match self.send(cmd) {
            Ok(()) => wait_reply(&answer, deadline + Duration::from_secs(1)),
            Err(_) => None,
        };
        match joined {
            None => {
                for a in &names {
                    out.errors
                        .push(format!("Failed to join {a}: {}", GossipError::Stopped));
                }
            }
            Some(flags) => {
                for ((a, sock), ok) in names.iter().zip(&targets).zip(flags) {
                    if ok {
                        out.joined += 1;
                    } else {
                        out.errors.push(format!(
                            "Failed to join {a}: no gossip answer from {sock} (not a server, a wrong port, or another gossip key)"
                        ));
                    }
                }
            }
        }
        out
    }

    /// Serf's "remove failed node": a failed member becomes `left`; with `prune` it is erased
    /// from the table. Passed on to every live server. An alive member is not changed (it
    /// would refute); an unknown name is no error, as in Serf.
    pub fn force_leave(&self, name: &str, prune: bool) -> Result<(), GossipError> {
        if name == self.local_name {
            return Err(GossipError::LocalMember);
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.send(Cmd::ForceLeave {
            name: name.to_string(),
            prune,
            reply,
        })?;
        wait_reply(&answer, Instant::now() + Duration::from_secs(5))
            .unwrap_or(Err(GossipError::Stopped))
    }

    /// Stop the thread (announcing a leave first when `leave`) and join it.
    pub fn shutdown(&self, leave: bool) {
        let _ = self.send(Cmd::Stop { leave });
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

fn wait_reply<T>(rx: &Receiver<T>, deadline: Instant) -> Option<T> {
    rx.recv_deadline(deadline).ok()
}

/// `host[:port]` → a socket address, Serf's default port when none is given.
pub fn resolve(addr: &str) -> Result<SocketAddr, GossipError> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok(sock);
    }
    if let Ok(ip) = addr.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, crate::config::DEFAULT_SERF_PORT));
    }
    let with_port = match addr.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => addr.to_string(),
        _ => format!("{addr}:{}", crate::config::DEFAULT_SERF_PORT),
    };
    let mut found = match with_port.to_socket_addrs() {
        Ok(found) => found,
        Err(source) => {
            return Err(GossipError::Lookup {
                addr: with_port,
                source,
            })
        }
    };
    found.next().ok_or(GossipError::NoAddress(with_port))
}

/// The generation of this start: above the last one kept and at least the wall clock in
/// milliseconds, kept before gossip starts (so a restarted server always wins over its old
/// identity, even if the clock went back).
fn next_generation(path: &std::path::Path) -> Result<u64, GossipError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Kept {
        generation: u64,
    }
    let last = crate::store::read_json::<Kept>(path)
        .map_err(GossipError::Store)?
        .map(|k| k.generation)
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let generation = last.saturating_add(1).max(now);
    crate::store::write_json(path, &Kept { generation }).map_err(GossipError::Store)?;
    Ok(generation)
}

/// foca's settings: LAN timings for the cluster size servers have, packets that fit a
/// datagram with its envelope.
fn foca_config() -> foca::Config {
    let mut c =
        foca::Config::new_lan(std::num::NonZeroU32::MIN.saturating_add(CLUSTER_SIZE_HINT - 1));
    if let Some(n) = std::num::NonZeroUsize::new(MAX_DATAGRAM - envelope::OVERHEAD) {
        c.max_packet_size = n;
    }
    c
}

/// The fuzz target's way in (`fuzzing::gossip_datagram`): the first byte chooses a runner
/// without a key or with one, the rest is one datagram from a loopback peer. Never panics; the
/// member table stays within its bound.
pub(crate) fn fuzz_datagram(data: &[u8]) {
    static RUNNERS: std::sync::OnceLock<[Mutex<runner::Runner>; 2]> = std::sync::OnceLock::new();
    let runners = RUNNERS.get_or_init(|| [fuzz_runner(None), fuzz_runner(Some(&[7u8; 32]))]);
    let Some((&which, datagram)) = data.split_first() else {
        return;
    };
    let mut r = runners[usize::from(which & 1)].lock();
    r.feed(datagram, SocketAddr::from(([127, 0, 0, 1], 9)));
    assert!(r.members_len() <= MAX_MEMBERS);
}

fn fuzz_runner(key: Option<&[u8]>) -> Mutex<runner::Runner> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback socket");
    let addr = socket.local_addr().expect("its address");
    let id = ServerId {
        name: "fuzz.global".into(),
        addr,
        generation: 1,
        tags: BTreeMap::new(),
    };
    let mut entries = BTreeMap::new();
    entries.insert(
        id.name.clone(),
        Entry {
            id: id.clone(),
            status: MemberStatus::Alive,
            leaving: false,
            since: Instant::now(),
        },
    );
    let table = Arc::new(RwLock::new(Table {
        local: id.name.clone(),
        entries,
    }));
    let (_tx, rx) = crossbeam_channel::bounded(1);
    Mutex::new(runner::Runner::new(runner::Parts {
        socket,
        cipher: key.and_then(envelope::Cipher::new),
        id,
        table,
        counters: Arc::new(Counters::default()),
        commands: rx,
        retry_join: Vec::new(),
        start_join: Vec::new(),
        retry_interval: Duration::from_secs(1),
        retry_max: 0,
    }))
}

#[cfg(test)]
mod tests;
