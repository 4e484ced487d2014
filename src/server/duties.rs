//! The leader duties of a replicated server (ref §6.6): the scheduler, the node heartbeat
//! timers, the drainer and the periodic dispatcher run on the leader only, started once it has applied an entry of
//! its own term and stopped as soon as it is not the leader any more. One `leader-duties`
//! thread waits for leadership to change (on the consensus's condvar, with a deadline) and
//! starts or stops them; followers run none of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::drainer::Drainer;
use super::heartbeat::Heartbeats;
use super::periodic::PeriodicDispatcher;
use super::scheduler::Scheduler;
use crate::state::jobs::Workloads;
use crate::state::IndexCounter;

/// How long one wait for a leadership change lasts before the thread looks for a stop.
const WAKE: Duration = Duration::from_secs(1);

/// Waits until this server's leadership differs from the `bool` given (or the deadline);
/// returns whether it leads then.
pub type LeadershipWait = Box<dyn Fn(bool, Instant) -> bool + Send>;

/// What the duties run over.
pub struct Parts {
    pub workloads: Arc<Workloads>,
    pub index: Arc<IndexCounter>,
    pub heartbeats: Arc<Heartbeats>,
    pub drainer: Arc<Drainer>,
    pub periodic: Arc<PeriodicDispatcher>,
    /// What a cluster's first leader stores as autopilot's configuration (the agent
    /// config's `autopilot {}` block over Nomad's defaults).
    pub autopilot: crate::state::autopilot::AutopilotConfig,
}

/// The `leader-duties` thread.
pub struct LeaderDuties {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Running {
    parts: Parts,
    scheduler: Option<Scheduler>,
}

impl Running {
    fn gain(&mut self) {
        log::info!(
            "this server leads: scheduler, heartbeat timers, drainer and periodic dispatcher start"
        );
        self.parts.heartbeats.set_leader(true);
        match Scheduler::start(self.parts.workloads.clone(), self.parts.index.clone()) {
            Ok(s) => self.scheduler = Some(s),
            Err(e) => log::error!("cannot start the scheduler: {e}"),
        }
        self.parts.drainer.set_leader(true);
        self.parts.periodic.start();
        self.store_autopilot_defaults();
    }

    /// A cluster's first leader stores autopilot's configuration from its agent config
    /// (Nomad's `getOrCreateAutopilotConfig`): the configuration then has real indexes.
    fn store_autopilot_defaults(&self) {
        if self.parts.workloads.state().autopilot.is_some() {
            return;
        }
        let cmd = crate::state::command::Command::AutopilotSetConfig {
            config: self.parts.autopilot.clone(),
            cas: None,
        };
        match self.parts.workloads.command_log().propose(cmd) {
            Ok((_, index)) => {
                self.parts.index.notify();
                log::info!("autopilot: configuration stored at index {index}");
            }
            Err(e) => log::warn!("autopilot: cannot store the default configuration: {e}"),
        }
    }

    fn lose(&mut self) {
        if let Some(s) = self.scheduler.take() {
            s.shutdown();
        }
        self.parts.heartbeats.set_leader(false);
        self.parts.drainer.set_leader(false);
        self.parts.periodic.stop();
    }
}

impl LeaderDuties {
    /// Followers' state first (nothing runs), then the thread that follows leadership.
    pub fn start(parts: Parts, wait: LeadershipWait) -> std::io::Result<LeaderDuties> {
        parts.heartbeats.set_leader(false);
        parts.drainer.set_leader(false);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut running = Running {
            parts,
            scheduler: None,
        };
        let thread = std::thread::Builder::new()
            .name("leader-duties".into())
            .spawn(move || {
                let mut leading = false;
                while !flag.load(Ordering::SeqCst) {
                    let now = wait(leading, Instant::now() + WAKE);
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Some(s) = &running.scheduler {
                        // The scheduler's timers (it runs only while it has work).
                        s.tick();
                    }
                    if now != leading {
                        if now {
                            running.gain();
                        } else {
                            log::info!("this server no longer leads: its leader duties stop");
                            running.lose();
                        }
                        leading = now;
                    }
                }
                running.lose();
            })?;
        Ok(LeaderDuties {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stop the duties and the thread (joined within one wait).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}
