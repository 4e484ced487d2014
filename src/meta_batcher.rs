//! The metadata batcher thread, the client's node updater: the first dynamic-metadata change
//! arms a window, later changes in the window are coalesced, and one metadata push goes over
//! the [`ServerLink`] when it closes (a failed push is tried again a window later). Between
//! changes it heartbeats at the TTL the server answered (ref §2.4: a failed heartbeat is
//! retried sooner the closer the node is to missing its TTL), and registers the node when the
//! server did not know it (at start with no server reachable, or after losing its state).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;

use crate::client::link::{Heartbeat, LinkError, NodeMeta, NodeRegistration, ServerLink};
use crate::config::Config;

/// The node's current metadata (static merged with dynamic), read when a push is due.
pub type MetaSource = Box<dyn Fn() -> BTreeMap<String, String> + Send>;

/// What this node registers, read when a registration is due.
pub type RegistrationSource = Box<dyn Fn() -> NodeRegistration + Send>;

/// What the batcher pushes through, and for which node.
pub struct NodeUpdater {
    pub link: Arc<dyn ServerLink>,
    pub node_id: String,
    pub meta: MetaSource,
    pub registration: RegistrationSource,
    /// The TTL of the registration made at start; `None`: not registered yet.
    pub first_ttl: Option<Duration>,
}

/// Everything that can wake the batcher.
enum BatcherEvent {
    MetaChanged,
    Shutdown,
}

/// Shortest wait before a failed heartbeat or registration is tried again (plus jitter of as
/// much again): Nomad's 1–2 s.
const RETRY_MIN: Duration = Duration::from_secs(1);

/// Longest wait before a failed heartbeat is tried again (plus jitter up to 5 s): Nomad's
/// 25–30 s.
const RETRY_MAX: Duration = Duration::from_secs(25);

/// The heartbeat state: registered or not, the TTL the server gave, the last success.
struct Beat {
    registered: bool,
    ttl: Duration,
    last_ok: Instant,
}

impl Beat {
    /// After a failure: 1–2 s when the TTL already ran out, else a random part of the time
    /// left, within [1–2 s, 25–30 s] (ref §2.4).
    fn retry_after(&self, now: Instant) -> Duration {
        let short = RETRY_MIN + crate::time::jitter(RETRY_MIN);
        let left = (self.last_ok + self.ttl).saturating_duration_since(now);
        if !self.registered || left.is_zero() {
            return short;
        }
        let long = RETRY_MAX + crate::time::jitter(Duration::from_secs(5));
        crate::time::jitter(left).clamp(short, long)
    }
}

/// Handle to the batcher thread.
pub struct Batcher {
    tx: Sender<BatcherEvent>,
    rx: Receiver<BatcherEvent>,
    window: Option<Duration>,
    dev: bool,
    handle: Mutex<Option<JoinHandle<()>>>,
}

/// Nomad's window: 5 s plus up to 5 s of jitter (1 s in dev), unless configured.
fn window_for(fixed: Option<Duration>, dev: bool) -> Duration {
    if let Some(w) = fixed {
        return w;
    }
    if dev {
        return Duration::from_secs(1);
    }
    Duration::from_secs(5) + crate::time::jitter(Duration::from_secs(5))
}

impl Batcher {
    pub fn new(config: &Config) -> Batcher {
        let (tx, rx) = bounded(1024);
        Batcher {
            tx,
            rx,
            window: config.meta_batch_window,
            dev: config.dev,
            handle: Mutex::new(None),
        }
    }

    /// Tell the batcher the dynamic metadata changed (never blocks).
    pub fn meta_changed(&self) {
        let _ = self.tx.try_send(BatcherEvent::MetaChanged);
    }

    pub fn start(&self, up: NodeUpdater) {
        let rx = self.rx.clone();
        let (fixed, dev) = (self.window, self.dev);
        let spawned = std::thread::Builder::new()
            .name("meta-batcher".into())
            .spawn(move || run(&up, &rx, fixed, dev));
        match spawned {
            Ok(h) => *self.handle.lock() = Some(h),
            Err(e) => log::error!("cannot start the metadata batcher: {e}"),
        }
    }

    /// Stop the thread (publishing anything pending) and join it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(BatcherEvent::Shutdown);
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

fn run(up: &NodeUpdater, rx: &Receiver<BatcherEvent>, fixed: Option<Duration>, dev: bool) {
    let mut deadline: Option<Instant> = None;
    let mut beat = Beat {
        registered: up.first_ttl.is_some(),
        ttl: up
            .first_ttl
            .unwrap_or(crate::client::link::DEFAULT_HEARTBEAT),
        last_ok: Instant::now(),
    };
    // Registered: the first heartbeat makes a new node `ready` at once. Not registered: try.
    let mut next_beat = Instant::now();
    loop {
        let wake = deadline.map_or(next_beat, |d| d.min(next_beat));
        let event = select! {
            recv(rx) -> ev => ev.unwrap_or(BatcherEvent::Shutdown),
            default(wake.saturating_duration_since(Instant::now())) => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    deadline = if publish(up) {
                        None
                    } else {
                        Some(Instant::now() + window_for(fixed, dev))
                    };
                }
                if now >= next_beat {
                    next_beat = heartbeat(up, &mut beat);
                }
                continue;
            }
        };
        match event {
            BatcherEvent::MetaChanged => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + window_for(fixed, dev));
                }
            }
            BatcherEvent::Shutdown => {
                if deadline.is_some() {
                    publish(up);
                }
                return;
            }
        }
    }
}

/// Push the node's metadata; `false` when it did not reach the server.
fn publish(up: &NodeUpdater) -> bool {
    let req = NodeMeta {
        node_id: up.node_id.clone(),
        meta: (up.meta)(),
    };
    match up.link.push_meta(&req) {
        Ok(_) => true,
        Err(e) => {
            log::error!("cannot push the node metadata (trying again): {e}");
            false
        }
    }
}

/// Register (when needed) or heartbeat; the answer is when to do it next.
fn heartbeat(up: &NodeUpdater, beat: &mut Beat) -> Instant {
    if !beat.registered {
        return match up.link.register_node(&(up.registration)()) {
            Ok(reply) => {
                log::info!("node registered with the server");
                beat.registered = true;
                beat.ttl = Duration::from_millis(reply.ttl_ms);
                beat.last_ok = Instant::now();
                // The heartbeat that makes the node ready follows at once.
                Instant::now()
            }
            Err(e) => {
                log::warn!("cannot register this node: {e}");
                Instant::now() + beat.retry_after(Instant::now())
            }
        };
    }
    let req = Heartbeat {
        node_id: up.node_id.clone(),
    };
    match up.link.heartbeat(&req) {
        Ok(reply) => {
            beat.ttl = Duration::from_millis(reply.ttl_ms);
            beat.last_ok = Instant::now();
            beat.last_ok + beat.ttl
        }
        Err(LinkError::UnknownNode(_)) => {
            log::warn!("the server does not know this node: registering it again");
            beat.registered = false;
            Instant::now()
        }
        Err(e) => {
            log::warn!("heartbeat failed: {e}");
            Instant::now() + beat.retry_after(Instant::now())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_heartbeats_retry_sooner_when_late() {
        let now = Instant::now();
        let mut b = Beat {
            registered: true,
            ttl: Duration::from_secs(10),
            last_ok: now,
        };
        for _ in 0..50 {
            let r = b.retry_after(now + Duration::from_secs(11));
            assert!(r >= RETRY_MIN && r < RETRY_MIN * 2, "{r:?}");
            let r = b.retry_after(now);
            assert!(r >= RETRY_MIN && r <= Duration::from_secs(10), "{r:?}");
        }
        b.ttl = Duration::from_secs(600);
        for _ in 0..50 {
            let r = b.retry_after(now);
            assert!(r >= RETRY_MIN && r < Duration::from_secs(30), "{r:?}");
        }
        b.registered = false;
        assert!(b.retry_after(now) < RETRY_MIN * 2);
    }

    #[test]
    fn windows_follow_nomad() {
        assert_eq!(window_for(None, true), Duration::from_secs(1));
        for _ in 0..50 {
            let w = window_for(None, false);
            assert!(w >= Duration::from_secs(5) && w < Duration::from_secs(10));
        }
        assert_eq!(
            window_for(Some(Duration::from_millis(300)), false),
            Duration::from_millis(300)
        );
    }
}
