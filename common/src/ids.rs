//! Newtype ids, so a job id is never passed where a worker id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A job's id: `job-` followed by 12 hex digits, chosen by the coordinator at submit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        JobId(format!("job-{}", &hex[..12]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Error> {
        let ok = value.len() <= 64
            && !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(JobId(value))
        } else {
            Err(Error::invalid(
                "job_id",
                format!("{value:?} is not a job id (letters, digits, '-' and '_', at most 64)"),
            ))
        }
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker's id, handed out by the coordinator at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}

impl std::str::FromStr for WorkerId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        s.strip_prefix("worker-")
            .and_then(|n| n.parse().ok())
            .map(WorkerId)
            .ok_or_else(|| Error::invalid("worker_id", format!("{s:?} is not a worker id")))
    }
}

/// A task's id (one micro-batch of one step, or one evaluation batch), unique per coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{}", self.0)
    }
}

/// An optimizer step count: the number of updates applied to a job's parameters so far.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Step(pub u64);

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_round_trip_and_reject_path_tricks() {
        let id = JobId::generate();
        assert_eq!(JobId::try_from(id.to_string()).unwrap(), id);
        assert!(JobId::try_from("../etc".to_string()).is_err());
        assert!(JobId::try_from(String::new()).is_err());
        assert_eq!("worker-7".parse::<WorkerId>().unwrap(), WorkerId(7));
        assert!("7".parse::<WorkerId>().is_err());
    }
}
