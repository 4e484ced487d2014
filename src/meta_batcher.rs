//! The metadata batcher thread: the first dynamic-metadata change arms a window, later
//! changes in the window are coalesced, and one node update is published when it closes.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;

use crate::agent::Agent;
use crate::config::Config;

/// Everything that can wake the batcher.
enum BatcherEvent {
    MetaChanged,
    Shutdown,
}

/// How long the batcher sleeps when idle before looking again (it also wakes on events).
const IDLE_TICK: Duration = Duration::from_secs(60);

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

    pub fn start(&self, agent: &Arc<Agent>) {
        let agent = agent.clone();
        let rx = self.rx.clone();
        let (fixed, dev) = (self.window, self.dev);
        let spawned = std::thread::Builder::new()
            .name("meta-batcher".into())
            .spawn(move || run(&agent, &rx, fixed, dev));
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

fn run(agent: &Agent, rx: &Receiver<BatcherEvent>, fixed: Option<Duration>, dev: bool) {
    let mut deadline: Option<Instant> = None;
    loop {
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(IDLE_TICK);
        let event = select! {
            recv(rx) -> ev => ev.unwrap_or(BatcherEvent::Shutdown),
            default(wait) => {
                if let Some(d) = deadline {
                    if Instant::now() >= d {
                        publish(agent);
                        deadline = None;
                    }
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
                    publish(agent);
                }
                return;
            }
        }
    }
}

fn publish(agent: &Agent) {
    // A command like every other change of server state: durable, applied, published and
    // notified by the committer before it returns.
    match agent
        .workloads
        .update_node_meta(agent.node.id(), agent.node.merged_meta())
    {
        Ok(Some(index)) => {
            log::debug!("node metadata published to the node record at index {index}")
        }
        Ok(None) => log::warn!("node metadata not published: the node is not registered"),
        Err(e) => log::error!("node metadata not published: {e}"),
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
