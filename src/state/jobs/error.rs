//! Why a submitted job was refused: it did not decode, or it did not validate. `api/` maps
//! both to 400 with exactly these texts (Nomad's).

use std::fmt;

use super::validate::multierror;

/// A job that cannot be registered (or planned, or validated).
#[derive(Debug)]
pub enum JobError {
    /// The `Job` member is not a job (`Failed to decode job: …`).
    Decode(serde_json::Error),
    /// Nomad's validation messages, printed as Go's multierror list.
    Invalid(Vec<String>),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Decode(e) => write!(f, "Failed to decode job: {e}"),
            JobError::Invalid(errors) => f.write_str(&multierror(errors)),
        }
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobError::Decode(e) => Some(e),
            JobError::Invalid(_) => None,
        }
    }
}
