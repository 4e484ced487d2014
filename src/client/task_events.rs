//! One constructor per kind of Nomad task event the client records (type, display message,
//! the fields and `Details` Nomad fills), and the one INFO line per event an operator reads in
//! the agent log ([`log_line`]).

use crate::state::jobs::alloc::TaskEvent;
use crate::state::jobs::timefmt::go_duration;

/// The exit message of a task the OOM killer killed (Nomad's).
pub const OOM_MESSAGE: &str = "OOM Killed";
/// The restart reason of a restart within the restart policy.
pub const WITHIN_POLICY: &str = "Restart within policy";
/// The restart reason of `alloc restart`.
pub const USER_RESTART: &str = "User requested restart";
/// The reason of a failure no restart can fix.
pub const UNRECOVERABLE: &str = "Error was unrecoverable";

impl TaskEvent {
    /// `Received`: the client has the task (`restored`: again, after an agent restart that
    /// could not re-attach to it).
    pub fn received(restored: bool) -> TaskEvent {
        if restored {
            TaskEvent::new("Received", "Task restored by client after agent restart")
        } else {
            TaskEvent::new("Received", "Task received by client")
        }
    }

    /// `Task Setup` with a message (the task dir is built, or a hook warned).
    pub fn task_setup(message: &str) -> TaskEvent {
        let mut ev = TaskEvent::new("Task Setup", message).detail("message", message);
        ev.message = message.to_string();
        ev
    }

    /// `Setup Failure`: the task dir could not be built.
    pub fn setup_failure(msg: String) -> TaskEvent {
        let mut ev =
            TaskEvent::new("Setup Failure", msg.clone()).detail("setup_error", msg.clone());
        ev.setup_error = msg;
        ev.fails_task = true;
        ev
    }

    /// `Driver Failure`: the driver could not start the task.
    pub fn driver_failure(err: String) -> TaskEvent {
        let mut ev =
            TaskEvent::new("Driver Failure", err.clone()).detail("driver_error", err.clone());
        ev.driver_error = err;
        ev.fails_task = true;
        ev
    }

    /// `Not Restarting`: the task is dead and failed, for `reason`.
    pub fn not_restarting(reason: String, unrecoverable: bool) -> TaskEvent {
        let mut ev = TaskEvent::new("Not Restarting", reason.clone())
            .detail("restart_reason", reason.clone());
        if unrecoverable {
            ev.details.insert("fails_task".into(), "true".into());
        }
        ev.restart_reason = reason;
        ev.fails_task = true;
        ev
    }

    /// `Started`, with the task's pid in `Details`.
    pub fn started(pid: i32) -> TaskEvent {
        TaskEvent::new("Started", "Task started by client").detail("pid", pid.to_string())
    }

    /// `Terminated`; an OOM kill is marked as Nomad marks it (`oom_killed`, and the exit
    /// message "OOM Killed").
    pub fn terminated(code: i64, signal: i64, oom: bool) -> TaskEvent {
        let mut display = format!("Exit Code: {code}");
        if signal != 0 {
            display.push_str(&format!(", Signal: {signal}"));
        }
        if oom {
            display.push_str(&format!(", Exit Message: {OOM_MESSAGE:?}"));
        }
        let mut ev = TaskEvent::new("Terminated", display)
            .detail("exit_code", code.to_string())
            .detail("signal", signal.to_string())
            .detail("oom_killed", oom.to_string());
        if oom {
            ev.message = OOM_MESSAGE.to_string();
            ev.details.insert("exit_message".into(), OOM_MESSAGE.into());
        }
        ev.exit_code = code;
        ev.signal = signal;
        ev
    }

    /// `Killing`: KillSignal sent, SIGKILL after `timeout` ns.
    pub fn killing(timeout: i64, reason: &str) -> TaskEvent {
        let mut ev = TaskEvent::new(
            "Killing",
            format!(
                "Sent interrupt. Waiting {} before force killing",
                go_duration(timeout)
            ),
        )
        .detail("kill_timeout", go_duration(timeout));
        ev.kill_timeout = timeout;
        ev.kill_reason = reason.to_string();
        if !reason.is_empty() {
            ev.details.insert("kill_reason".into(), reason.to_string());
        }
        ev
    }

    /// `Killed`: for good (`agent_shutdown`: because the agent stops; it starts again).
    pub fn killed(agent_shutdown: bool) -> TaskEvent {
        if agent_shutdown {
            TaskEvent::new("Killed", "Task killed because the agent is shutting down")
        } else {
            TaskEvent::new("Killed", "Task successfully killed")
        }
    }

    /// `Restarting` after `delay` ns, for `reason`.
    pub fn restarting(delay: i64, reason: &str) -> TaskEvent {
        let display = if reason == WITHIN_POLICY {
            format!("Task restarting in {}", go_duration(delay))
        } else {
            format!("Task restarting in {} - {}", go_duration(delay), reason)
        };
        let mut ev = TaskEvent::new("Restarting", display)
            .detail("restart_reason", reason)
            .detail("start_delay", delay.to_string());
        ev.restart_reason = reason.to_string();
        ev.start_delay = delay;
        ev
    }

    /// `Restarting` at once because the agent restarted and could not re-attach.
    pub fn restarting_after_agent_restart() -> TaskEvent {
        let mut ev = TaskEvent::new("Restarting", "Task restarting after agent restart")
            .detail("restart_reason", "agent restarted");
        ev.restart_reason = "agent restarted".into();
        ev
    }

    /// `Restart Signaled`: `alloc restart`.
    pub fn restart_signaled() -> TaskEvent {
        let mut ev =
            TaskEvent::new("Restart Signaled", USER_RESTART).detail("restart_reason", USER_RESTART);
        ev.restart_reason = USER_RESTART.into();
        ev
    }

    /// `Signaling`: `alloc signal`.
    pub fn signaling(name: String) -> TaskEvent {
        let mut ev = TaskEvent::new("Signaling", format!("Task being sent signal {name}"))
            .detail("signal", name.clone());
        ev.task_signal = name;
        ev
    }

    /// `Sibling Task Failed`.
    pub fn sibling_failed(name: &str) -> TaskEvent {
        let mut ev = TaskEvent::new(
            "Sibling Task Failed",
            format!("Task's sibling {name:?} failed"),
        )
        .detail("failed_sibling", name);
        ev.failed_sibling = name.to_string();
        ev
    }
}

/// The agent log line for an event (`None`: not worth an INFO line), without the alloc and
/// task, which the caller puts first.
pub fn log_line(ev: &TaskEvent) -> Option<String> {
    let line = match ev.event_type.as_str() {
        "Received"
        | "Started"
        | "Killing"
        | "Killed"
        | "Restart Signaled"
        | "Signaling"
        | "Sibling Task Failed" => format!("{}: {}", ev.event_type, ev.display_message),
        "Terminated" => {
            let mut s = format!("exited: code {}, signal {}", ev.exit_code, ev.signal);
            if ev.details.get("oom_killed").is_some_and(|v| v == "true") {
                s.push_str(", OOM killed");
            }
            s
        }
        "Restarting" => format!(
            "restarting in {} ({})",
            go_duration(ev.start_delay),
            ev.restart_reason
        ),
        "Not Restarting" => format!("not restarting: {}", ev.restart_reason),
        "Driver Failure" => format!("driver failure: {}", ev.driver_error),
        "Setup Failure" => format!("setup failure: {}", ev.setup_error),
        _ => return None,
    };
    Some(line)
}
