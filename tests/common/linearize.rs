//! A linearizability checker for histories of job writes and reads, and a workload that makes
//! such histories against real servers.
//!
//! The model is a key-value map: job ID → the marker (`Meta.marker`) of the registration that
//! is current, or absent. Operations: `Register(key, marker)` (always succeeds), `Deregister
//! (key)` with purge (answers whether a job was there: Nomad returns an empty `EvalID` for an
//! unknown job), `Read(key)` (the marker seen, or absent). Each operation has an invoke and a
//! complete instant (nanoseconds on one monotonic clock) and its result; an operation whose
//! outcome is unknown (timeout, connection reset, 5xx on a write) has no completion: it may take
//! effect at any time after its invoke, or never.
//!
//! The check is Wing & Gong's search with Lowe's memoisation (as in Knossos and Porcupine):
//! walk the history's events in time order, try to linearize each pending call whose effect the
//! model allows, backtrack at a return whose call could not be placed, and remember every
//! (set of linearized operations, model state) already explored so no configuration is searched
//! twice. Keys are independent in this model and linearizability is local (Herlihy & Wing), so
//! each key is checked on its own, which keeps the search small.
//!
//! Include it with `#[path = "common/linearize.rs"] mod linearize;` beside `mod common;` (the
//! workload uses `crate::common`'s HTTP helpers). [`run_history`] takes the servers' HTTP
//! addresses and a fault to inject between two phases (kill -9 and restart, a leader kill, a
//! SIGSTOP), runs the workload, and checks the history: one server or a Raft cluster is
//! driven the same way.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Register the job `key` with `Meta.marker = marker`.
    Register { key: String, marker: String },
    /// Deregister (purge) the job `key`.
    Deregister { key: String },
    /// Read the job `key`.
    Read { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Register { key, .. } | Op::Deregister { key } | Op::Read { key } => key,
        }
    }
}

/// What an operation answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// A register acknowledged.
    Written,
    /// A deregister: whether there was a job to remove.
    Deregistered { existed: bool },
    /// A read: the marker of the job seen, `None` when there was no job.
    Value(Option<String>),
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Who ran it (for messages).
    pub client: usize,
    pub op: Op,
    /// When it was sent (ns on the history's clock).
    pub invoke: u64,
    /// When and what it answered; `None`: outcome unknown (it may or may not take effect,
    /// at any time after `invoke`).
    pub done: Option<(u64, Ret)>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        match &self.done {
            Some((at, ret)) => write!(
                f,
                "[{:>10.3} .. {:>10.3} ms] c{} {:?} → {:?}",
                ms(self.invoke),
                ms(*at),
                self.client,
                self.op,
                ret
            ),
            None => write!(
                f,
                "[{:>10.3} .. unknown   ] c{} {:?} → ?",
                ms(self.invoke),
                self.client,
                self.op
            ),
        }
    }
}

/// Why a history is not linearizable: the key and its operations in invoke order.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub entries: Vec<Entry>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history of job {:?} is not linearizable ({} operations):",
            self.key,
            self.entries.len()
        )?;
        for e in &self.entries {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// The model's state for one key: the interned marker of the current job, if any.
type State = Option<u32>;

/// One key's operations, markers interned.
struct KeyOp {
    kind: Kind,
    /// The answer, `None` when unknown.
    ret: Option<KRet>,
}

#[derive(Clone, Copy)]
enum Kind {
    Register(u32),
    Deregister,
    Read,
}

#[derive(Clone, Copy, PartialEq)]
enum KRet {
    Written,
    Deregistered(bool),
    Value(Option<u32>),
}

/// The model's step: the state after `op` from `s`, if `op` may answer what it answered there.
fn step(s: State, op: &KeyOp) -> Option<State> {
    match (op.kind, op.ret) {
        (Kind::Register(m), None | Some(KRet::Written)) => Some(Some(m)),
        (Kind::Register(_), Some(_)) => None,
        (Kind::Deregister, None) => Some(None),
        (Kind::Deregister, Some(KRet::Deregistered(existed))) => {
            (existed == s.is_some()).then_some(None)
        }
        (Kind::Deregister, Some(_)) => None,
        (Kind::Read, None) => Some(s),
        (Kind::Read, Some(KRet::Value(v))) => (v == s).then_some(s),
        (Kind::Read, Some(_)) => None,
    }
}

/// An event of one key's history: the call or the return of operation `op`.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// A set of operation numbers.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// How many configurations one key's search may explore before it gives up (a bound so a
/// pathological history fails loudly instead of hanging the test).
pub const MAX_CONFIGURATIONS: usize = 5_000_000;

/// Check one key: `Ok(())` when some order of its operations, consistent with real time,
/// explains every answer; `Err(explored)` otherwise.
fn check_key(entries: &[&Entry]) -> Result<(), String> {
    let mut markers: HashMap<String, u32> = HashMap::new();
    let mut intern = |m: &str| {
        let n = markers.len() as u32;
        *markers.entry(m.to_string()).or_insert(n)
    };
    // Interned before the operations, so reads of a marker never written still compare.
    let ops: Vec<KeyOp> = entries
        .iter()
        .map(|e| {
            let kind = match &e.op {
                Op::Register { marker, .. } => Kind::Register(intern(marker)),
                Op::Deregister { .. } => Kind::Deregister,
                Op::Read { .. } => Kind::Read,
            };
            let ret = e.done.as_ref().map(|(_, r)| match r {
                Ret::Written => KRet::Written,
                Ret::Deregistered { existed } => KRet::Deregistered(*existed),
                Ret::Value(v) => KRet::Value(v.as_deref().map(&mut intern)),
            });
            KeyOp { kind, ret }
        })
        .collect();
    // Events in time order; at equal instants calls come first (the operations overlap:
    // the permissive reading, so ties never make a false alarm).
    let mut timed: Vec<(u64, bool, Event)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        timed.push((
            e.invoke,
            false,
            Event {
                op: i,
                is_call: true,
            },
        ));
        if let Some((at, _)) = &e.done {
            timed.push((
                (*at).max(e.invoke),
                true,
                Event {
                    op: i,
                    is_call: false,
                },
            ));
        }
    }
    timed.sort_by_key(|(t, is_return, ev)| (*t, *is_return, ev.op));
    let events: Vec<Event> = timed.into_iter().map(|(_, _, e)| e).collect();
    // Where each operation's return event is (to lift it with its call).
    let mut return_at = vec![usize::MAX; ops.len()];
    for (i, ev) in events.iter().enumerate() {
        if !ev.is_call {
            return_at[ev.op] = i;
        }
    }
    let mut lifted = vec![false; events.len()];
    let mut returns_left = events.iter().filter(|e| !e.is_call).count();
    let next_live = |lifted: &[bool], from: usize| (from..events.len()).find(|&i| !lifted[i]);

    let mut state: State = None;
    let mut linearized = Bits::new(ops.len());
    let mut seen: HashSet<(Bits, State)> = HashSet::new();
    // (event index of the call, state before it)
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut at = next_live(&lifted, 0);
    while returns_left > 0 {
        let Some(i) = at else {
            // Only calls of unknown outcome are left ahead while a return is still pending:
            // cannot happen (a return is always after its call); treat as a dead end.
            return Err("search ran off the end".into());
        };
        let ev = events[i];
        if ev.is_call {
            let next = step(state, &ops[ev.op]);
            let mut moved = false;
            if let Some(next) = next {
                let mut with = linearized.clone();
                with.set(ev.op);
                if seen.insert((with.clone(), next)) {
                    if seen.len() > MAX_CONFIGURATIONS {
                        return Err(format!("gave up after {MAX_CONFIGURATIONS} configurations"));
                    }
                    stack.push((i, state));
                    state = next;
                    linearized = with;
                    lifted[i] = true;
                    if return_at[ev.op] != usize::MAX {
                        lifted[return_at[ev.op]] = true;
                        returns_left -= 1;
                    }
                    at = next_live(&lifted, 0);
                    moved = true;
                }
            }
            if !moved {
                at = next_live(&lifted, i + 1);
            }
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Err(format!("explored {} configurations", seen.len()));
            };
            let op = events[call].op;
            state = before;
            linearized.clear(op);
            lifted[call] = false;
            if return_at[op] != usize::MAX {
                lifted[return_at[op]] = false;
                returns_left += 1;
            }
            at = next_live(&lifted, call + 1);
        }
    }
    Ok(())
}

/// Check a whole history (every key on its own). `Err` names the first key that fails, with
/// its operations.
pub fn check(history: &[Entry]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.op.key()).or_default().push(e);
    }
    for (key, entries) in by_key {
        if let Err(why) = check_key(&entries) {
            let mut entries: Vec<Entry> = entries.into_iter().cloned().collect();
            entries.sort_by_key(|e| e.invoke);
            eprintln!("linearizability: key {key:?}: {why}");
            return Err(Violation {
                key: key.to_string(),
                entries,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The workload: concurrent workers against real servers.

/// The shape of a workload run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Concurrent workers (one thread each, one request at a time).
    pub workers: usize,
    /// Job IDs the workers share.
    pub keys: Vec<String>,
    /// A request that has not answered by then is recorded as of unknown outcome.
    pub request_timeout: Duration,
    /// Pause between a worker's failed connection attempts (it tries the next address).
    pub retry_pause: Duration,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            workers: 4,
            keys: (0..3).map(|i| format!("lin-{i}")).collect(),
            request_timeout: Duration::from_secs(5),
            retry_pause: Duration::from_millis(20),
        }
    }
}

/// A running workload: stop it with [`Running::finish`] to get the history.
pub struct Running {
    stop: Arc<AtomicBool>,
    /// Operations answered so far (all workers).
    completed: Arc<AtomicUsize>,
    workers: Vec<std::thread::JoinHandle<Vec<Entry>>>,
    /// Servers' HTTP addresses the workers use (replace to move them; read each request).
    pub addrs: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Running {
    /// Nanoseconds since the workload started (the history's clock).
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
    /// Operations answered so far (all workers): what a caller waits on to pace phases.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }
    /// Stop the workers, join them, and return the history.
    pub fn finish(self) -> Vec<Entry> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.join().expect("worker panicked"));
        }
        all
    }
}

/// Start `w.workers` workers registering, deregistering and reading `w.keys` on the servers
/// at `addrs` (HTTP `host:port`; each worker starts at its own address and moves to the next
/// when one refuses a connection).
pub fn run_workload(addrs: &[String], w: &Workload) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let addrs = Arc::new(Mutex::new(addrs.to_vec()));
    let started = Instant::now();
    let workers = (0..w.workers)
        .map(|c| {
            let (stop, addrs, w) = (stop.clone(), addrs.clone(), w.clone());
            let completed = completed.clone();
            std::thread::Builder::new()
                .name(format!("lin-worker-{c}"))
                .spawn(move || worker(c, &stop, &completed, &addrs, &w, started))
                .expect("spawn worker")
        })
        .collect();
    Running {
        stop,
        completed,
        workers,
        addrs,
        started,
    }
}

/// What one HTTP attempt came to.
enum Attempt {
    /// No connection: the request was never sent (no effect).
    NotSent,
    /// Sent; the answer never came or was unusable (outcome unknown).
    Unknown,
    Answer(crate::common::Response),
}

fn send(addr: &str, method: &str, path: &str, body: &[u8], timeout: Duration) -> Attempt {
    use std::net::TcpStream;
    let Ok(sock) = addr.parse::<std::net::SocketAddr>() else {
        return Attempt::NotSent;
    };
    let Ok(s) = TcpStream::connect_timeout(&sock, timeout) else {
        return Attempt::NotSent;
    };
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let raw = crate::common::build_request(method, path, &[], body);
    match crate::common::exchange(s, &raw) {
        Ok(r) => Attempt::Answer(r),
        Err(_) => Attempt::Unknown,
    }
}

/// A small xorshift: the workload needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn job_body(key: &str, marker: &str) -> Vec<u8> {
    serde_json::json!({"Job": {"ID": key, "Type": "service", "Datacenters": ["dc1"],
        "Meta": {"marker": marker},
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sleep", "args": ["600"]}}]}]}})
    .to_string()
    .into_bytes()
}

fn worker(
    client: usize,
    stop: &AtomicBool,
    completed: &AtomicUsize,
    addrs: &Mutex<Vec<String>>,
    w: &Workload,
    started: Instant,
) -> Vec<Entry> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((client as u64 + 1) * 0x1234_5678_9ABC));
    let mut history = Vec::new();
    let mut target = client;
    let mut n = 0u64;
    let now = || started.elapsed().as_nanos() as u64;
    while !stop.load(Ordering::SeqCst) {
        let key = w.keys[rng.below(w.keys.len() as u64) as usize].clone();
        let op = match rng.below(10) {
            0..=3 => {
                n += 1;
                Op::Register {
                    key,
                    marker: format!("c{client}-{n}"),
                }
            }
            4..=5 => Op::Deregister { key },
            _ => Op::Read { key },
        };
        let (method, path, body) = match &op {
            Op::Register { key, marker } => ("POST", "/v1/jobs".to_string(), job_body(key, marker)),
            Op::Deregister { key } => ("DELETE", format!("/v1/job/{key}?purge=true"), Vec::new()),
            Op::Read { key } => ("GET", format!("/v1/job/{key}"), Vec::new()),
        };
        let addr = {
            let a = addrs.lock().expect("addrs");
            a[target % a.len()].clone()
        };
        let invoke = now();
        let attempt = send(&addr, method, &path, &body, w.request_timeout);
        let answered = now();
        let ret = match attempt {
            Attempt::NotSent => {
                // Nothing happened: try the next server after a pause.
                target += 1;
                std::thread::sleep(w.retry_pause);
                continue;
            }
            Attempt::Answer(r) if is_no_leader(&r) => {
                // No leader got it (the agent says `No cluster leader` only before it passed
                // a request on, src/api/forward.rs): no effect either, and the next server
                // may know the new leader. Recording it as unknown would only widen the
                // search; and a server that still names a dead leader answers at once, so
                // retrying it without a pause would spin.
                target += 1;
                std::thread::sleep(w.retry_pause);
                continue;
            }
            Attempt::Unknown => None,
            Attempt::Answer(r) => answer_of(&op, &r),
        };
        if ret.is_some() {
            completed.fetch_add(1, Ordering::SeqCst);
        }
        history.push(Entry {
            client,
            op,
            invoke,
            done: ret.map(|r| (answered, r)),
        });
    }
    history
}

/// Whether `r` is Nomad's `No cluster leader` (500): the request reached no leader.
fn is_no_leader(r: &crate::common::Response) -> bool {
    r.status == 500 && r.text().trim() == "No cluster leader"
}

/// The result an answer means; `None` when it leaves the outcome unknown (a 5xx on a write:
/// it may still take effect; an unexpected answer to a read: it is dropped as no evidence).
fn answer_of(op: &Op, r: &crate::common::Response) -> Option<Ret> {
    match op {
        Op::Register { .. } => (r.status == 200).then_some(Ret::Written),
        Op::Deregister { .. } => {
            if r.status != 200 {
                return None;
            }
            let eval = r.json()["EvalID"].as_str().unwrap_or_default().to_string();
            Some(Ret::Deregistered {
                existed: !eval.is_empty(),
            })
        }
        Op::Read { .. } => match r.status {
            200 => Some(Ret::Value(
                r.json()["Meta"]["marker"].as_str().map(str::to_string),
            )),
            404 => Some(Ret::Value(None)),
            _ => None,
        },
    }
}

/// Keep what the checker should see: unknown reads say nothing and are dropped.
pub fn evidence(history: Vec<Entry>) -> Vec<Entry> {
    history
        .into_iter()
        .filter(|e| !(matches!(e.op, Op::Read { .. }) && e.done.is_none()))
        .collect()
}

/// Counts of a history for messages: (completed, unknown) per operation kind.
pub fn summary(history: &[Entry]) -> String {
    let mut c: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in history {
        let k = match e.op {
            Op::Register { .. } => "register",
            Op::Deregister { .. } => "deregister",
            Op::Read { .. } => "read",
        };
        let slot = c.entry(k).or_default();
        if e.done.is_some() {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    }
    c.iter()
        .map(|(k, (d, u))| format!("{k}: {d} done, {u} unknown"))
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------
// The whole run: workload, a fault in the middle, checks.

/// Each phase (before the fault, after it) runs until this many more operations answered.
const OPS_PER_PHASE: usize = 400;
/// ... or at most this long (then the run fails: too little happened to prove anything).
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// At least this many operations must have completed in a phase (a run that did nothing
/// proves nothing).
const MIN_DONE_PER_PHASE: usize = 20;

/// Completed operations in `h` invoked after `since` (ns).
fn done_since(h: &[Entry], since: u64) -> usize {
    h.iter()
        .filter(|e| e.invoke >= since && e.done.is_some())
        .count()
}

/// Run the workload against `addrs`, calling `fault` between the two phases (it gets the
/// running workload, e.g. to kill and restart a server), then check the history.
pub fn run_history(addrs: &[String], fault: impl FnOnce(&Running)) -> Vec<Entry> {
    let run = run_workload(addrs, &Workload::default());
    crate::common::wait_until(PHASE_DEADLINE, "operations before the fault", || {
        run.completed() >= OPS_PER_PHASE
    });
    let fault_at = run.now();
    fault(&run);
    let resumed_at = run.now();
    let target = run.completed() + OPS_PER_PHASE;
    crate::common::wait_until(PHASE_DEADLINE, "operations after the fault", || {
        run.completed() >= target
    });
    let history = run.finish();
    eprintln!(
        "history: {} operations ({}); fault at {:.0} ms, resumed at {:.0} ms",
        history.len(),
        summary(&history),
        fault_at as f64 / 1e6,
        resumed_at as f64 / 1e6
    );
    let before = history
        .iter()
        .filter(|e| e.done.as_ref().is_some_and(|(at, _)| *at <= fault_at))
        .count();
    assert!(
        before >= MIN_DONE_PER_PHASE,
        "only {before} operations completed before the fault"
    );
    let after = done_since(&history, resumed_at);
    assert!(
        after >= MIN_DONE_PER_PHASE,
        "only {after} operations completed after the restart"
    );
    for kind in ["register", "deregister", "read"] {
        assert!(
            history.iter().any(|e| e.done.is_some()
                && match e.op {
                    Op::Register { .. } => kind == "register",
                    Op::Deregister { .. } => kind == "deregister",
                    Op::Read { .. } => kind == "read",
                }),
            "no completed {kind}"
        );
    }
    let mut evidence = evidence(history.clone());
    if let Err(v) = check(&evidence) {
        panic!("{v}");
    }
    // The checker is engaged with this very history: one read made to see a marker nobody
    // wrote must make it fail.
    let last_read = evidence
        .iter()
        .rposition(|e| matches!(e.op, Op::Read { .. }) && e.done.is_some())
        .expect("a completed read");
    if let Some((at, _)) = evidence[last_read].done.clone() {
        evidence[last_read].done = Some((at, Ret::Value(Some("never-written".into()))));
    }
    assert!(
        check(&evidence).is_err(),
        "a read of a marker never written went unnoticed"
    );
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(c: usize, key: &str, m: &str, t: (u64, u64)) -> Entry {
        Entry {
            client: c,
            op: Op::Register {
                key: key.into(),
                marker: m.into(),
            },
            invoke: t.0,
            done: Some((t.1, Ret::Written)),
        }
    }
    fn dereg(c: usize, key: &str, existed: bool, t: (u64, u64)) -> Entry {
        Entry {
            client: c,
            op: Op::Deregister { key: key.into() },
            invoke: t.0,
            done: Some((t.1, Ret::Deregistered { existed })),
        }
    }
    fn read(c: usize, key: &str, v: Option<&str>, t: (u64, u64)) -> Entry {
        Entry {
            client: c,
            op: Op::Read { key: key.into() },
            invoke: t.0,
            done: Some((t.1, Ret::Value(v.map(str::to_string)))),
        }
    }
    fn unknown(mut e: Entry) -> Entry {
        e.done = None;
        e
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_passes() {
        let h = vec![
            read(0, "a", None, (0, 1)),
            reg(0, "a", "m1", (2, 3)),
            read(1, "a", Some("m1"), (4, 5)),
            reg(1, "a", "m2", (6, 7)),
            read(0, "a", Some("m2"), (8, 9)),
            dereg(0, "a", true, (10, 11)),
            dereg(1, "a", false, (12, 13)),
            read(1, "a", None, (14, 15)),
        ];
        check(&h).expect("linearizable");
    }

    #[test]
    fn a_read_overlapping_a_write_may_see_either_value() {
        for seen in [None, Some("m1")] {
            let h = vec![reg(0, "a", "m1", (10, 20)), read(1, "a", seen, (12, 18))];
            check(&h).expect("overlapping read sees old or new");
        }
        // Two overlapping writes: a later read may see either one, consistently.
        for last in ["m1", "m2"] {
            let h = vec![
                reg(0, "a", "m1", (0, 10)),
                reg(1, "a", "m2", (1, 9)),
                read(2, "a", Some(last), (20, 21)),
                read(3, "a", Some(last), (22, 23)),
            ];
            check(&h).expect("either write may be last");
        }
    }

    #[test]
    fn a_stale_read_after_a_completed_write_fails() {
        let h = vec![
            reg(0, "a", "m1", (0, 10)),
            reg(0, "a", "m2", (11, 20)),
            read(1, "a", Some("m1"), (21, 30)),
        ];
        let v = check(&h).expect_err("stale read");
        assert_eq!(v.key, "a");
        assert!(v.to_string().contains("not linearizable"), "{v}");
        // A read of nothing after an acknowledged register: a lost write.
        let h = vec![reg(0, "a", "m1", (0, 10)), read(1, "a", None, (11, 12))];
        check(&h).expect_err("lost write");
    }

    #[test]
    fn reads_that_see_two_writes_in_opposite_orders_fail() {
        let h = vec![
            reg(0, "a", "m1", (0, 100)),
            reg(1, "a", "m2", (0, 100)),
            read(2, "a", Some("m1"), (10, 20)),
            read(2, "a", Some("m2"), (30, 40)),
            read(3, "a", Some("m2"), (10, 20)),
            read(3, "a", Some("m1"), (30, 40)),
        ];
        check(&h).expect_err("no single order explains both readers");
    }

    #[test]
    fn a_value_never_written_or_a_wrong_deregister_answer_fails() {
        let h = vec![
            reg(0, "a", "m1", (0, 1)),
            read(1, "a", Some("ghost"), (2, 3)),
        ];
        check(&h).expect_err("a marker nobody wrote");
        let h = vec![reg(0, "a", "m1", (0, 1)), dereg(1, "a", false, (2, 3))];
        check(&h).expect_err("deregister found nothing although the job was there");
        let h = vec![dereg(1, "a", true, (2, 3))];
        check(&h).expect_err("deregister removed a job that never existed");
    }

    #[test]
    fn an_unknown_outcome_may_take_effect_late_or_never_but_only_once() {
        // Never took effect.
        let h = vec![
            reg(0, "a", "m1", (0, 1)),
            unknown(reg(1, "a", "m2", (2, 3))),
            read(2, "a", Some("m1"), (50, 51)),
        ];
        check(&h).expect("an unknown write may never happen");
        // Took effect long after its client gave up.
        let h = vec![
            reg(0, "a", "m1", (0, 1)),
            unknown(reg(1, "a", "m2", (2, 3))),
            read(2, "a", Some("m1"), (50, 51)),
            read(2, "a", Some("m2"), (60, 61)),
        ];
        check(&h).expect("an unknown write may happen late");
        // But not before it was sent.
        let h = vec![
            read(2, "a", Some("m2"), (0, 1)),
            unknown(reg(1, "a", "m2", (2, 3))),
        ];
        check(&h).expect_err("seen before it was invoked");
        // And not twice: m2 seen, then m1 (completed before), then m2 again.
        let h = vec![
            reg(0, "a", "m1", (0, 1)),
            unknown(reg(1, "a", "m2", (2, 3))),
            read(2, "a", Some("m2"), (10, 11)),
            read(2, "a", Some("m1"), (20, 21)),
        ];
        check(&h).expect_err("m1 cannot come back after m2 took effect");
    }

    #[test]
    fn keys_are_checked_independently_and_a_violation_names_its_key() {
        let h = vec![
            reg(0, "a", "m1", (0, 10)),
            reg(0, "b", "x1", (0, 10)),
            read(1, "a", Some("m1"), (11, 12)),
            read(1, "b", None, (11, 12)),
        ];
        let v = check(&h).expect_err("b lost its write");
        assert_eq!(v.key, "b");
        assert_eq!(v.entries.len(), 2);
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // 4 clients, 600 operations on one key, heavy overlap; a correct register: every
        // operation takes effect at its midpoint.
        let mut h = Vec::new();
        let mut cur: Option<String> = None;
        let mut events: Vec<(u64, Entry)> = Vec::new();
        for i in 0..600u64 {
            let c = (i % 4) as usize;
            let invoke = i * 10;
            let complete = invoke + 35; // overlaps the next three operations
            let mid = invoke + 17;
            events.push((
                mid,
                match i % 5 {
                    0 | 1 => reg(c, "k", &format!("m{i}"), (invoke, complete)),
                    2 => dereg(c, "k", false, (invoke, complete)),
                    _ => read(c, "k", None, (invoke, complete)),
                },
            ));
        }
        events.sort_by_key(|(m, _)| *m);
        for (_, mut e) in events {
            // Fill in the answers from the model applied at the midpoints.
            match &e.op {
                Op::Register { marker, .. } => cur = Some(marker.clone()),
                Op::Deregister { .. } => {
                    e.done = Some((
                        e.done.as_ref().unwrap().0,
                        Ret::Deregistered {
                            existed: cur.is_some(),
                        },
                    ));
                    cur = None;
                }
                Op::Read { .. } => {
                    e.done = Some((e.done.as_ref().unwrap().0, Ret::Value(cur.clone())))
                }
            }
            h.push(e);
        }
        let t = Instant::now();
        check(&h).expect("linearizable by construction");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // One read late in the history that sees the very first write: stale (m0 was
        // overwritten by m1 long before this read was invoked).
        let i = h
            .iter()
            .rposition(|e| matches!(e.op, Op::Read { .. }) && e.invoke > 3000)
            .unwrap();
        let at = h[i].done.as_ref().unwrap().0;
        h[i].done = Some((at, Ret::Value(Some("m0".to_string()))));
        let t = Instant::now();
        check(&h).expect_err("one stale read");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
