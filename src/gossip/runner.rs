//! The `gossip` thread: one UDP socket (`recv` with a timeout), foca, foca's timers in a
//! deadline heap, joins in progress, `retry_join`, reconnects to failed members and reaping.
//! Every datagram is bounded, opened (and authenticated) before foca sees it; whatever does
//! not open or decode is dropped and counted.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, Timer};
use parking_lot::RwLock;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_core::RngCore;

use super::envelope::{self, Cipher, Kind};
use super::identity::{self, Codec, ForceLeave, ServerId};
use super::{
    Cmd, Counters, Entry, GossipError, MemberStatus, Table, FAILED_REAP, JOIN_RESEND, LEFT_REAP,
    MAX_DATAGRAM, MAX_IDLE, MAX_MEMBERS, RECONNECT_FANOUT, RECONNECT_INTERVAL,
};

/// How often failed and left members are checked for reaping.
const REAP_EVERY: Duration = Duration::from_secs(60);

/// What the thread is built from.
pub struct Parts {
    pub socket: UdpSocket,
    pub cipher: Option<Cipher>,
    pub id: ServerId,
    pub table: Arc<RwLock<Table>>,
    pub counters: Arc<Counters>,
    pub commands: Receiver<Cmd>,
    pub retry_join: Vec<String>,
    pub start_join: Vec<String>,
    pub retry_interval: Duration,
    pub retry_max: u32,
}

/// A foca timer due at `at` (`seq` keeps equal deadlines in submission order).
struct Due {
    at: Instant,
    seq: u64,
    timer: Timer<ServerId>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A join request in progress.
struct PendingJoin {
    targets: Vec<SocketAddr>,
    joined: Vec<bool>,
    deadline: Instant,
    next_send: Instant,
    reply: Sender<Vec<bool>>,
}

/// `retry_join` until one join succeeds.
struct RetryJoin {
    addrs: Vec<String>,
    attempts: u32,
    max: u32,
    interval: Duration,
    next_at: Instant,
}

type Swim = Foca<ServerId, Codec, SmallRng, NoCustomBroadcast>;

pub struct Runner {
    socket: UdpSocket,
    cipher: Option<Cipher>,
    foca: Swim,
    rt: AccumulatingRuntime<ServerId>,
    timers: BinaryHeap<Reverse<Due>>,
    seq: u64,
    table: Arc<RwLock<Table>>,
    counters: Arc<Counters>,
    commands: Receiver<Cmd>,
    joins: Vec<PendingJoin>,
    retry: Option<RetryJoin>,
    start_join: Vec<String>,
    next_reconnect: Instant,
    reconnect_turn: usize,
    next_reap: Instant,
    buf: Vec<u8>,
}

/// What a round of commands asked for.
enum Flow {
    Go,
    Stop { leave: bool },
}

impl Runner {
    pub fn new(p: Parts) -> Runner {
        let mut seed = <SmallRng as SeedableRng>::Seed::default();
        crate::encoding::OsRng.fill_bytes(seed.as_mut());
        let rng = SmallRng::from_seed(seed);
        let foca = Foca::new(p.id, super::foca_config(), rng, Codec);
        let now = Instant::now();
        let retry = (!p.retry_join.is_empty()).then_some(RetryJoin {
            addrs: p.retry_join,
            attempts: 0,
            max: p.retry_max,
            interval: p.retry_interval,
            next_at: now,
        });
        Runner {
            socket: p.socket,
            cipher: p.cipher,
            foca,
            rt: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            table: p.table,
            counters: p.counters,
            commands: p.commands,
            joins: Vec::new(),
            retry,
            start_join: p.start_join,
            next_reconnect: now + RECONNECT_INTERVAL,
            reconnect_turn: 0,
            next_reap: now + REAP_EVERY,
            // One byte more than the largest datagram: a longer one is seen as too long.
            buf: vec![0u8; MAX_DATAGRAM + 1],
        }
    }

    /// The thread's loop: timers, commands, periodic work, then one `recv` until the next
    /// deadline (or a wake-up datagram).
    pub fn run(&mut self) {
        for a in std::mem::take(&mut self.start_join) {
            match super::resolve(&a) {
                Ok(sock) => self.announce(sock),
                Err(e) => log::warn!("gossip: start_join {a}: {e}"),
            }
        }
        loop {
            self.fire_timers();
            if let Flow::Stop { leave } = self.take_commands() {
                if leave {
                    self.leave();
                }
                self.fail_pending_joins();
                log::debug!("gossip: stopped");
                return;
            }
            self.periodic();
            self.flush();
            let now = Instant::now();
            let wait = self
                .next_wake()
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), MAX_IDLE);
            if let Err(e) = self.socket.set_read_timeout(Some(wait)) {
                log::warn!("gossip: cannot set the receive timeout: {e}");
            }
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => self.datagram(n, from),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // e.g. ECONNREFUSED reported for an earlier send: nothing to do but wait.
                    log::debug!("gossip: recv: {e}");
                    std::thread::sleep(Duration::from_millis(1).min(wait));
                }
            }
            self.flush();
        }
    }

    fn next_wake(&self) -> Instant {
        let mut at = Instant::now() + MAX_IDLE;
        if let Some(Reverse(d)) = self.timers.peek() {
            at = at.min(d.at);
        }
        for j in &self.joins {
            at = at.min(j.next_send).min(j.deadline);
        }
        if let Some(r) = &self.retry {
            at = at.min(r.next_at);
        }
        at.min(self.next_reconnect).min(self.next_reap)
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = self.timers.pop() {
                if let Err(e) = self.foca.handle_timer(d.timer, &mut self.rt) {
                    log::debug!("gossip: timer: {e}");
                }
                self.flush();
            }
        }
    }

    fn take_commands(&mut self) -> Flow {
        loop {
            match self.commands.try_recv() {
                Ok(Cmd::Stop { leave }) => return Flow::Stop { leave },
                Ok(Cmd::Join {
                    targets,
                    deadline,
                    reply,
                }) => {
                    for t in &targets {
                        self.announce(*t);
                    }
                    let joined = targets.iter().map(|t| self.is_member_at(*t)).collect();
                    self.joins.push(PendingJoin {
                        targets,
                        joined,
                        deadline,
                        next_send: Instant::now() + JOIN_RESEND,
                        reply,
                    });
                }
                Ok(Cmd::ForceLeave { name, prune, reply }) => {
                    let r = self.force_leave(&name, prune, true);
                    let _ = reply.send(r);
                }
                Err(TryRecvError::Empty) => return Flow::Go,
                // Every handle is gone: stop as if told to, without a leave.
                Err(TryRecvError::Disconnected) => return Flow::Stop { leave: false },
            }
        }
    }

    fn periodic(&mut self) {
        let now = Instant::now();
        // Joins: answer the finished ones, announce again to the silent ones.
        let mut i = 0;
        while i < self.joins.len() {
            let done = self.joins[i].joined.iter().all(|j| *j) || now >= self.joins[i].deadline;
            if done {
                let j = self.joins.swap_remove(i);
                let _ = j.reply.send(j.joined);
                continue;
            }
            if now >= self.joins[i].next_send {
                self.joins[i].next_send = now + JOIN_RESEND;
                let silent: Vec<SocketAddr> = self.joins[i]
                    .targets
                    .iter()
                    .zip(&self.joins[i].joined)
                    .filter(|(_, j)| !**j)
                    .map(|(t, _)| *t)
                    .collect();
                for t in silent {
                    self.announce(t);
                }
            }
            i += 1;
        }
        // retry_join: until the first join succeeds (someone else is a member).
        if self.retry.is_some() && self.foca.num_members() > 0 {
            log::info!("gossip: retry_join succeeded");
            self.retry = None;
        }
        let mut give_up = false;
        let mut to_announce = Vec::new();
        if let Some(r) = self.retry.as_mut().filter(|r| now >= r.next_at) {
            r.attempts += 1;
            r.next_at = now + r.interval;
            if r.max > 0 && r.attempts > r.max {
                give_up = true;
            } else {
                for a in &r.addrs {
                    match super::resolve(a) {
                        Ok(sock) => to_announce.push(sock),
                        Err(e) => log::warn!("gossip: retry_join {a}: {e}"),
                    }
                }
            }
        }
        if give_up {
            log::error!("gossip: max join retry exhausted");
            self.retry = None;
        }
        for sock in to_announce {
            self.announce(sock);
        }
        // Reach failed members again, a few per round, in turn.
        if now >= self.next_reconnect {
            self.next_reconnect = now + RECONNECT_INTERVAL;
            let failed: Vec<ServerId> = self
                .table
                .read()
                .entries
                .values()
                .filter(|e| e.status == MemberStatus::Failed)
                .map(|e| e.id.clone())
                .collect();
            if !failed.is_empty() {
                for k in 0..RECONNECT_FANOUT.min(failed.len()) {
                    let id = &failed[(self.reconnect_turn + k) % failed.len()];
                    if let Err(e) = self.foca.announce(id.clone(), &mut self.rt) {
                        log::debug!("gossip: reconnect {}: {e}", id.name);
                    }
                }
                self.reconnect_turn = self.reconnect_turn.wrapping_add(RECONNECT_FANOUT);
            }
        }
        if now >= self.next_reap {
            self.next_reap = now + REAP_EVERY;
            let mut t = self.table.write();
            t.entries.retain(|_, e| match e.status {
                MemberStatus::Failed => now.duration_since(e.since) < FAILED_REAP,
                MemberStatus::Left => now.duration_since(e.since) < LEFT_REAP,
                _ => true,
            });
        }
    }

    /// Ask the server at `to` to let us in (foca answers an announce with its member list).
    fn announce(&mut self, to: SocketAddr) {
        if let Err(e) = self.foca.announce(ServerId::at(to), &mut self.rt) {
            log::debug!("gossip: announce to {to}: {e}");
        }
        self.flush();
    }

    fn is_member_at(&self, addr: SocketAddr) -> bool {
        self.foca.iter_members().any(|m| m.id().addr == addr)
    }

    /// Send what foca produced, schedule its timers, apply its notifications.
    fn flush(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            self.send(to.addr, Kind::Foca, &data);
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.seq = self.seq.wrapping_add(1);
            self.timers.push(Reverse(Due {
                at: now + after,
                seq: self.seq,
                timer,
            }));
        }
        while let Some(n) = self.rt.to_notify() {
            self.notified(n);
        }
    }

    fn send(&self, to: SocketAddr, kind: Kind, payload: &[u8]) {
        let Some(wire) = envelope::seal(self.cipher.as_ref(), kind, payload) else {
            log::debug!("gossip: cannot seal a datagram to {to}");
            return;
        };
        if wire.len() > MAX_DATAGRAM {
            log::debug!("gossip: a {}-byte datagram to {to} is too long", wire.len());
            return;
        }
        match self.socket.send_to(&wire, to) {
            Ok(_) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::debug!("gossip: send to {to}: {e}"),
        }
    }

    fn dropped(&self, from: SocketAddr, why: &dyn std::fmt::Display) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        log::debug!("gossip: dropped a datagram from {from}: {why}");
    }

    /// Handle `data` as if it had arrived from `from` (the unit tests' and the fuzz target's
    /// way in).
    pub fn feed(&mut self, data: &[u8], from: SocketAddr) {
        let n = data.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&data[..n]);
        self.datagram(data.len().min(self.buf.len()), from);
    }

    /// Members in the table (for the fuzz target's bound check).
    pub fn members_len(&self) -> usize {
        self.table.read().entries.len()
    }

    /// One datagram of `n` bytes in `self.buf`.
    fn datagram(&mut self, n: usize, from: SocketAddr) {
        if n == 0 {
            // A wake-up (commands are waiting), or nothing at all.
            return;
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if n > MAX_DATAGRAM {
            self.dropped(from, &"too long");
            return;
        }
        let Some((kind, payload)) = envelope::open(self.cipher.as_ref(), &self.buf[..n]) else {
            self.dropped(from, &"not a gossip datagram of ours (format or key)");
            return;
        };
        match kind {
            Kind::Foca => match self.foca.handle_data(&payload, &mut self.rt) {
                Ok(()) => {
                    self.flush();
                    self.answered(from);
                }
                Err(e) => {
                    self.flush();
                    self.dropped(from, &e);
                }
            },
            Kind::Leave => match identity::decode_id(&payload) {
                Some(id) => self.leave_notice(&id),
                None => self.dropped(from, &"bad leave notice"),
            },
            Kind::ForceLeave => match identity::decode_force_leave(&payload) {
                Some(f) => {
                    let _ = self.force_leave(&f.name, f.prune, false);
                }
                None => self.dropped(from, &"bad force-leave notice"),
            },
        }
    }

    /// A valid packet came from `from`: joins waiting on that address (or on a member that
    /// now is one) are done.
    fn answered(&mut self, from: SocketAddr) {
        if self.joins.is_empty() {
            return;
        }
        let members: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for j in &mut self.joins {
            for (t, ok) in j.targets.iter().zip(j.joined.iter_mut()) {
                if *t == from || members.contains(t) {
                    *ok = true;
                }
            }
        }
    }

    fn fail_pending_joins(&mut self) {
        for j in self.joins.drain(..) {
            let _ = j.reply.send(j.joined);
        }
    }

    /// foca's view changed: keep the table (keyed by member name) in step. The log line is
    /// written after the table's lock is let go.
    fn notified(&mut self, n: OwnedNotification<ServerId>) {
        if let Some((level, line)) = self.apply_notification(n) {
            log::log!(level, "gossip: {line}");
        }
    }

    fn apply_notification(
        &mut self,
        n: OwnedNotification<ServerId>,
    ) -> Option<(log::Level, String)> {
        let now = Instant::now();
        let mut t = self.table.write();
        match n {
            OwnedNotification::MemberUp(id) => {
                if id.name == t.local {
                    return Some((
                        log::Level::Warn,
                        format!(
                            "another server at {} uses this server's name {}",
                            id.addr, id.name
                        ),
                    ));
                }
                if let Some(e) = t.entries.get(&id.name) {
                    let newer_alive =
                        e.status == MemberStatus::Alive && e.id.generation > id.generation;
                    if newer_alive {
                        return None;
                    }
                }
                if !t.entries.contains_key(&id.name) && t.entries.len() >= MAX_MEMBERS {
                    return Some((
                        log::Level::Warn,
                        format!("member table full; {} not added", id.name),
                    ));
                }
                let line = format!("member {} ({}) is alive", id.name, id.addr);
                t.entries.insert(
                    id.name.clone(),
                    Entry {
                        id,
                        status: MemberStatus::Alive,
                        leaving: false,
                        since: now,
                    },
                );
                Some((log::Level::Info, line))
            }
            OwnedNotification::MemberDown(id) => {
                let e = t.entries.get_mut(&id.name).filter(|e| e.id == id)?;
                e.status = if e.leaving {
                    MemberStatus::Left
                } else {
                    MemberStatus::Failed
                };
                e.since = now;
                Some((
                    log::Level::Info,
                    format!("member {} is {}", id.name, e.status.as_str()),
                ))
            }
            OwnedNotification::Rename(old, new) => {
                let local = t.local.clone();
                let e = t.entries.get_mut(&old.name).filter(|e| e.id == old)?;
                if old.name == new.name {
                    e.id = new;
                } else if old.name != local {
                    // Another server took this address: the old one is gone.
                    e.status = MemberStatus::Failed;
                    e.since = now;
                }
                None
            }
            OwnedNotification::Rejoin(new) => {
                let line = format!(
                    "declared down by the cluster; rejoined as generation {}",
                    new.generation
                );
                let local = t.local.clone();
                if let Some(e) = t.entries.get_mut(&local) {
                    e.id = new;
                    e.status = MemberStatus::Alive;
                }
                Some((log::Level::Info, line))
            }
            OwnedNotification::Idle => Some((log::Level::Debug, "no other member is alive".into())),
            OwnedNotification::Defunct => {
                Some((log::Level::Warn, "this server was declared down".into()))
            }
            _ => None,
        }
    }

    /// A member said it is leaving: it goes `leaving` now and `left` (not `failed`) once
    /// foca sees it down.
    fn leave_notice(&mut self, id: &ServerId) {
        let known = {
            let mut t = self.table.write();
            match t.entries.get_mut(&id.name).filter(|e| &e.id == id) {
                Some(e) => {
                    e.leaving = true;
                    e.status = match e.status {
                        MemberStatus::Alive | MemberStatus::Leaving => MemberStatus::Leaving,
                        _ => MemberStatus::Left,
                    };
                    e.since = Instant::now();
                    true
                }
                None => false,
            }
        };
        if known {
            log::info!("gossip: member {} is leaving", id.name);
        }
    }

    /// Serf's "remove failed node" here; passed on to the live servers when asked through
    /// the API (`pass_on`).
    fn force_leave(&mut self, name: &str, prune: bool, pass_on: bool) -> Result<(), GossipError> {
        let live: Vec<SocketAddr> = {
            let mut t = self.table.write();
            if name == t.local {
                return Err(GossipError::LocalMember);
            }
            let gone = t.entries.get(name).map(|e| {
                matches!(
                    e.status,
                    MemberStatus::Failed | MemberStatus::Left | MemberStatus::Leaving
                )
            });
            if gone == Some(true) {
                if prune {
                    t.entries.remove(name);
                } else if let Some(e) = t.entries.get_mut(name) {
                    e.status = MemberStatus::Left;
                    e.since = Instant::now();
                }
            }
            let local = t.local.clone();
            t.entries
                .values()
                .filter(|e| e.status == MemberStatus::Alive && e.id.name != local)
                .map(|e| e.id.addr)
                .collect()
        };
        log::info!("gossip: force-leave {name} (prune: {prune})");
        if pass_on {
            let notice = ForceLeave {
                name: name.to_string(),
                prune,
            };
            if let Some(p) = identity::encode_force_leave(&notice) {
                for to in live {
                    self.send(to, Kind::ForceLeave, &p);
                }
            }
        }
        Ok(())
    }

    /// Announce our leave: a notice to every live member, then foca's own leave.
    fn leave(&mut self) {
        let (me, live): (Option<ServerId>, Vec<SocketAddr>) = {
            let t = self.table.read();
            let me = t.entries.get(&t.local).map(|e| e.id.clone());
            let live = t
                .entries
                .values()
                .filter(|e| e.status == MemberStatus::Alive && e.id.name != t.local)
                .map(|e| e.id.addr)
                .collect();
            (me, live)
        };
        if let Some(p) = me.as_ref().and_then(identity::encode_id) {
            for to in &live {
                self.send(*to, Kind::Leave, &p);
            }
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            log::debug!("gossip: leave: {e}");
        }
        while let Some((to, data)) = self.rt.to_send() {
            self.send(to.addr, Kind::Foca, &data);
        }
        log::info!("gossip: left the cluster ({} members told)", live.len());
    }
}
