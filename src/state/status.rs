//! Nomad's status words as types: task state, alloc client and desired status, eval status,
//! node status and eligibility, job status and type. Each serializes (serde, `Display`) to
//! exactly the lowercase word Nomad writes, so API JSON and the command log keep their bytes.

use std::fmt;

/// One enum of Nomad status words: the variants, their wire text, `as_str`, `parse`,
/// `Display` and serde as that text (an unknown word does not deserialize).
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        // Not every enum uses every helper outside the tests.
        #[allow(dead_code)]
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word as Nomad writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value Nomad writes as `s`; `None` for any other word.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_enum! {
    /// A task's `State` (`structs.TaskStatePending`, `…Running`, `…Dead`).
    TaskStatus {
        Pending => "pending",
        Running => "running",
        Dead => "dead",
    }
}

status_enum! {
    /// An allocation's `ClientStatus`: what the client reports.
    AllocClientStatus {
        Pending => "pending",
        Running => "running",
        Complete => "complete",
        Failed => "failed",
        Lost => "lost",
        Unknown => "unknown",
    }
}

status_enum! {
    /// An allocation's `DesiredStatus`: what the scheduler wants.
    AllocDesiredStatus {
        Run => "run",
        Stop => "stop",
        Evict => "evict",
    }
}

status_enum! {
    /// An evaluation's `Status`.
    EvalStatus {
        Blocked => "blocked",
        Pending => "pending",
        Complete => "complete",
        Failed => "failed",
        Canceled => "canceled",
    }
}

status_enum! {
    /// A node's `Status`.
    NodeStatus {
        Initializing => "initializing",
        Ready => "ready",
        Down => "down",
        Disconnected => "disconnected",
    }
}

status_enum! {
    /// A node's `SchedulingEligibility`.
    NodeEligibility {
        Eligible => "eligible",
        Ineligible => "ineligible",
    }
}

status_enum! {
    /// A node's `LastDrain.Status` (`structs.DrainStatus`).
    DrainStatus {
        Draining => "draining",
        Complete => "complete",
        Canceled => "canceled",
    }
}

status_enum! {
    /// A job's `Status`, as derived from its allocations.
    JobStatus {
        Pending => "pending",
        Running => "running",
        Dead => "dead",
    }
}

status_enum! {
    /// A job's `Type`.
    JobType {
        Service => "service",
        Batch => "batch",
        System => "system",
        Sysbatch => "sysbatch",
    }
}

impl Default for TaskStatus {
    /// A task not started yet.
    fn default() -> TaskStatus {
        TaskStatus::Pending
    }
}

impl EvalStatus {
    /// Not done yet: `pending` or `blocked` (what keeps a job `pending`).
    pub fn is_open(self) -> bool {
        matches!(self, EvalStatus::Pending | EvalStatus::Blocked)
    }
}

impl AllocClientStatus {
    /// The client is done with the allocation: it will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AllocClientStatus::Complete | AllocClientStatus::Failed | AllocClientStatus::Lost
        )
    }
}

impl JobType {
    /// Batch-like jobs run to completion.
    pub fn is_batch(self) -> bool {
        matches!(self, JobType::Batch | JobType::Sysbatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value serializes to its word, `Display`s as it, and both come back.
    fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str, parse: fn(&str) -> Option<T>)
    where
        T: Copy + PartialEq + fmt::Debug + fmt::Display + serde::Serialize,
        T: serde::de::DeserializeOwned,
    {
        for &v in all {
            let word = as_str(v);
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{word}\""));
            assert_eq!(v.to_string(), word);
            assert_eq!(parse(word), Some(v));
            assert_eq!(
                serde_json::from_str::<T>(&format!("\"{word}\"")).unwrap(),
                v
            );
        }
        assert_eq!(
            parse("Running"),
            None,
            "words are lowercase, as Nomad writes them"
        );
        assert!(serde_json::from_str::<T>("\"nonsense\"").is_err());
    }

    #[test]
    fn every_status_is_nomads_lowercase_word_both_ways() {
        round_trips(TaskStatus::ALL, TaskStatus::as_str, TaskStatus::parse);
        round_trips(
            AllocClientStatus::ALL,
            AllocClientStatus::as_str,
            AllocClientStatus::parse,
        );
        round_trips(
            AllocDesiredStatus::ALL,
            AllocDesiredStatus::as_str,
            AllocDesiredStatus::parse,
        );
        round_trips(EvalStatus::ALL, EvalStatus::as_str, EvalStatus::parse);
        round_trips(NodeStatus::ALL, NodeStatus::as_str, NodeStatus::parse);
        round_trips(
            NodeEligibility::ALL,
            NodeEligibility::as_str,
            NodeEligibility::parse,
        );
        round_trips(JobStatus::ALL, JobStatus::as_str, JobStatus::parse);
        round_trips(JobType::ALL, JobType::as_str, JobType::parse);
        let words: Vec<&str> = AllocClientStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            words,
            ["pending", "running", "complete", "failed", "lost", "unknown"]
        );
    }

    #[test]
    fn terminal_and_batch_follow_nomad() {
        let terminal: Vec<_> = AllocClientStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(terminal, ["complete", "failed", "lost"]);
        let batch: Vec<_> = JobType::ALL
            .iter()
            .filter(|t| t.is_batch())
            .map(|t| t.as_str())
            .collect();
        assert_eq!(batch, ["batch", "sysbatch"]);
    }
}
