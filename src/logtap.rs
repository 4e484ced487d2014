//! The log tap: the process's `log` facade logger. It hands every record to env_logger (which
//! writes stderr at the agent's level) and fans it out to `/v1/agent/monitor` subscribers, each
//! at its own level, over bounded channels. Logging never blocks on a subscriber: a line a
//! full channel cannot take is dropped and counted. While a subscriber wants a more verbose
//! level than the agent's, the facade's max level is raised; env_logger still filters stderr.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::RwLock;

/// Lines buffered per subscriber before new ones are dropped (Nomad's monitor buffers 512).
pub const SUBSCRIBER_BUFFER: usize = 512;
/// Longest message kept in one monitor line; longer ones are cut (stderr keeps them whole).
pub const MAX_LINE: usize = 16 * 1024;

/// One log record as a monitor sees it.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub level: Level,
    pub target: String,
    pub message: String,
    pub time: SystemTime,
    /// `file:line` of the logging call, when known.
    pub location: Option<String>,
}

struct Subscriber {
    id: u64,
    level: LevelFilter,
    tx: Sender<LogLine>,
}

struct Tap {
    inner: env_logger::Logger,
    /// The agent's own level (a `LevelFilter` as `usize`): stderr gets what is at or above it.
    /// Changed by a reload (`set_level`); `inner` is built to pass everything.
    inner_level: AtomicUsize,
    subs: RwLock<Vec<Subscriber>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

static TAP: OnceLock<&'static Tap> = OnceLock::new();

/// A `LevelFilter` back from its `usize` (as `LevelFilter as usize` made it).
fn level_from(n: usize) -> LevelFilter {
    LevelFilter::iter().nth(n).unwrap_or(LevelFilter::Trace)
}

impl Tap {
    fn level(&self) -> LevelFilter {
        level_from(self.inner_level.load(Ordering::Relaxed))
    }

    /// Set the facade's max level from `subs` (the agent's, or a subscriber's if that is more
    /// verbose). Called with the subscriber list write-locked, so two changes cannot leave
    /// the level of the older list behind.
    fn set_max_level(&self, subs: &[Subscriber]) {
        let most = subs
            .iter()
            .map(|s| s.level)
            .fold(self.level(), std::cmp::max);
        log::set_max_level(most);
    }
}

impl Log for Tap {
    fn enabled(&self, metadata: &Metadata) -> bool {
        (metadata.level() <= self.level() && self.inner.enabled(metadata))
            || self.subs.read().iter().any(|s| metadata.level() <= s.level)
    }

    fn log(&self, record: &Record) {
        if record.level() <= self.level() && self.inner.matches(record) {
            self.inner.log(record);
        }
        let subs = self.subs.read();
        if subs.iter().all(|s| record.level() > s.level) {
            return;
        }
        let mut message = record.args().to_string();
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let line = LogLine {
            level: record.level(),
            target: record.target().to_string(),
            message,
            time: SystemTime::now(),
            location: record
                .file()
                .map(|f| format!("{f}:{}", record.line().unwrap_or(0))),
        };
        for s in subs.iter().filter(|s| record.level() <= s.level) {
            match s.tx.try_send(line.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                // The subscriber is going away; its Drop removes it.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Install the tap as the process's logger, around `inner` (which should pass every level:
/// the tap filters stderr at `level`, which `set_level` changes later).
pub fn install(inner: env_logger::Logger, level: LevelFilter) {
    let tap: &'static Tap = Box::leak(Box::new(Tap {
        inner,
        inner_level: AtomicUsize::new(level as usize),
        subs: RwLock::new(Vec::new()),
        next_id: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
    }));
    if log::set_logger(tap).is_ok() {
        log::set_max_level(level);
        let _ = TAP.set(tap);
    }
}

/// A monitor's feed: lines at `level` or more severe, until dropped.
pub struct Subscription {
    id: u64,
    pub lines: Receiver<LogLine>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(tap) = TAP.get() {
            let mut subs = tap.subs.write();
            subs.retain(|s| s.id != self.id);
            tap.set_max_level(&subs);
        }
    }
}

/// The agent's log level now; `None` when no tap is installed.
pub fn level() -> Option<LevelFilter> {
    TAP.get().map(|t| t.level())
}

/// Change the agent's log level (a reload); `false` when no tap is installed.
pub fn set_level(level: LevelFilter) -> bool {
    let Some(tap) = TAP.get() else {
        return false;
    };
    let subs = tap.subs.write();
    tap.inner_level.store(level as usize, Ordering::Relaxed);
    tap.set_max_level(&subs);
    true
}

/// Subscribe to log lines at `level` or more severe; `None` when no tap is installed.
pub fn subscribe(level: LevelFilter) -> Option<Subscription> {
    let tap = TAP.get()?;
    let (tx, rx) = bounded(SUBSCRIBER_BUFFER);
    let id = tap.next_id.fetch_add(1, Ordering::Relaxed);
    let mut subs = tap.subs.write();
    subs.push(Subscriber { id, level, tx });
    tap.set_max_level(&subs);
    drop(subs);
    Some(Subscription { id, lines: rx })
}

/// `(subscribers now, lines dropped since start)`.
pub fn stats() -> (usize, u64) {
    match TAP.get() {
        Some(t) => (t.subs.read().len(), t.dropped.load(Ordering::Relaxed)),
        None => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap() -> Tap {
        Tap {
            inner: env_logger::Builder::new()
                .filter_level(LevelFilter::Off)
                .build(),
            inner_level: AtomicUsize::new(LevelFilter::Off as usize),
            subs: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn log_at(t: &Tap, level: Level, msg: &str) {
        t.log(
            &Record::builder()
                .args(format_args!("{msg}"))
                .level(level)
                .target("test")
                .build(),
        );
    }

    #[test]
    fn a_full_subscriber_drops_and_counts_and_never_blocks_logging() {
        let t = tap();
        let (tx, rx) = bounded(SUBSCRIBER_BUFFER);
        t.subs.write().push(Subscriber {
            id: 1,
            level: LevelFilter::Info,
            tx,
        });
        for i in 0..SUBSCRIBER_BUFFER + 100 {
            log_at(&t, Level::Info, &format!("line {i}"));
        }
        assert_eq!(t.dropped.load(Ordering::Relaxed), 100);
        assert_eq!(rx.len(), SUBSCRIBER_BUFFER);
        assert_eq!(rx.recv().unwrap().message, "line 0");
    }

    #[test]
    fn each_subscriber_gets_only_its_level() {
        let t = tap();
        let (tx_err, rx_err) = bounded(8);
        let (tx_dbg, rx_dbg) = bounded(8);
        t.subs.write().push(Subscriber {
            id: 1,
            level: LevelFilter::Error,
            tx: tx_err,
        });
        t.subs.write().push(Subscriber {
            id: 2,
            level: LevelFilter::Debug,
            tx: tx_dbg,
        });
        log_at(&t, Level::Debug, "dbg");
        log_at(&t, Level::Trace, "trace");
        log_at(&t, Level::Error, "err");
        let dbg: Vec<String> = rx_dbg.try_iter().map(|l| l.message).collect();
        let err: Vec<String> = rx_err.try_iter().map(|l| l.message).collect();
        assert_eq!(dbg, ["dbg", "err"]);
        assert_eq!(err, ["err"]);
        assert!(t.enabled(&Metadata::builder().level(Level::Debug).build()));
        assert!(!t.enabled(&Metadata::builder().level(Level::Trace).build()));
    }

    #[test]
    fn level_round_trips_through_its_number() {
        for l in LevelFilter::iter() {
            assert_eq!(level_from(l as usize), l);
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let t = tap();
        let (tx, rx) = bounded(1);
        t.subs.write().push(Subscriber {
            id: 1,
            level: LevelFilter::Info,
            tx,
        });
        let long = "é".repeat(MAX_LINE);
        log_at(&t, Level::Info, &long);
        let got = rx.recv().unwrap().message;
        assert!(got.len() <= MAX_LINE && got.chars().all(|c| c == 'é'));
    }
}
