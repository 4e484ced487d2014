//! The metadata batcher thread, the client's node updater: the first dynamic-metadata change
//! arms a window, later changes in the window are coalesced, and one metadata push goes over
//! the [`ServerLink`] when it closes. Between changes it heartbeats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;

use crate::client::link::{Heartbeat, NodeMeta, ServerLink};
use crate::config::Config;

/// The node's current metadata (static merged with dynamic), read when a push is due.
pub type MetaSource = Box<dyn Fn() -> BTreeMap<String, String> + Send>;

/// What the batcher pushes through, and for which node.
pub struct NodeUpdater {
    pub link: Arc<dyn ServerLink>,
    pub node_id: String,
    pub meta: MetaSource,
}

/// Everything that can wake the batcher.
enum BatcherEvent {
    MetaChanged,
    Shutdown,
}

/// How often the batcher heartbeats (it also wakes on events).
const HEARTBEAT_EVERY: Duration = crate::client::link::DEFAULT_HEARTBEAT;

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
    let mut next_beat = Instant::now() + HEARTBEAT_EVERY;
    loop {
        let wake = deadline.map_or(next_beat, |d| d.min(next_beat));
        let event = select! {
            recv(rx) -> ev => ev.unwrap_or(BatcherEvent::Shutdown),
            default(wake.saturating_duration_since(Instant::now())) => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    publish(up);
                    deadline = None;
                }
                if now >= next_beat {
                    heartbeat(up);
                    next_beat = now + HEARTBEAT_EVERY;
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

fn publish(up: &NodeUpdater) {
    let req = NodeMeta {
        node_id: up.node_id.clone(),
        meta: (up.meta)(),
    };
    if let Err(e) = up.link.push_meta(&req) {
        log::error!("cannot push the node metadata: {e}");
    }
}

fn heartbeat(up: &NodeUpdater) {
    let req = Heartbeat {
        node_id: up.node_id.clone(),
    };
    if let Err(e) = up.link.heartbeat(&req) {
        log::warn!("heartbeat failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
