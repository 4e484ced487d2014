//! Nomad's restart tracker: within `Attempts` per `Interval` a task restarts after `Delay`;
//! beyond, mode `fail` gives up and mode `delay` waits for the interval to end.

use std::time::{Duration, Instant};

use crate::state::jobs::spec::TaskGroup;
use crate::state::jobs::timefmt::go_duration;

/// The longest wait the runner plans ahead (a restart delay or interval beyond it is cut).
pub const MAX_PLANNED_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + d`, saturating at [`MAX_PLANNED_WAIT`] (an `Instant` overflow would panic).
pub fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(MAX_PLANNED_WAIT)).unwrap_or(now)
}

/// The state of Nomad's restart tracker.
pub struct RestartTracker {
    attempts: i64,
    interval: i64,
    delay: i64,
    mode: String,
    count: i64,
    window_start: Instant,
}

/// What to do after the task exited.
pub enum Decision {
    Done { failed: bool },
    Restart { delay: i64, reason: String },
    Fail { reason: String },
}

impl RestartTracker {
    pub fn new(tg: &TaskGroup) -> RestartTracker {
        let crate::state::jobs::spec::Restart {
            attempts,
            interval,
            delay,
            mode,
        } = tg.restart();
        RestartTracker {
            attempts,
            interval,
            delay,
            mode,
            count: 0,
            window_start: Instant::now(),
        }
    }

    pub fn decide(&mut self, batch: bool, success: bool) -> Decision {
        if batch && success {
            return Decision::Done { failed: false };
        }
        let interval = Duration::from_nanos(self.interval.max(0) as u64);
        if self.window_start.elapsed() > interval {
            self.window_start = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        if self.count <= self.attempts {
            return Decision::Restart {
                delay: self.delay,
                reason: "Restart within policy".into(),
            };
        }
        let reason = format!(
            "Exceeded allowed attempts {} in interval {} and mode is {:?}",
            self.attempts,
            go_duration(self.interval),
            self.mode
        );
        if self.mode == "delay" {
            let left = interval.saturating_sub(self.window_start.elapsed());
            self.window_start = later(left);
            self.count = 0;
            return Decision::Restart {
                delay: left.as_nanos() as i64,
                reason,
            };
        }
        Decision::Fail { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::jobs::spec::{RestartPolicy, SECOND};

    fn group(attempts: i64, mode: &str) -> TaskGroup {
        TaskGroup {
            restart_policy: Some(RestartPolicy {
                attempts: Some(attempts),
                interval: Some(3600 * SECOND),
                delay: Some(SECOND),
                mode: Some(mode.into()),
                render_templates: false,
            }),
            ..TaskGroup::default()
        }
    }

    #[test]
    fn attempts_then_fail_or_delay() {
        let mut t = RestartTracker::new(&group(1, "fail"));
        assert!(matches!(
            t.decide(true, true),
            Decision::Done { failed: false }
        ));
        assert!(
            matches!(t.decide(false, false), Decision::Restart { delay, .. } if delay == SECOND)
        );
        match t.decide(false, false) {
            Decision::Fail { reason } => {
                assert_eq!(
                    reason,
                    "Exceeded allowed attempts 1 in interval 1h0m0s and mode is \"fail\""
                )
            }
            _ => panic!("expected Fail"),
        }
        let mut d = RestartTracker::new(&group(0, "delay"));
        assert!(
            matches!(d.decide(false, true), Decision::Restart { delay, .. } if delay > 3500 * SECOND)
        );
    }
}
