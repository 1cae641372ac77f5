//! The worker's error type.

use ctcluster_common::ErrorClass;
use ctcluster_common::task::FailureKind;

/// What can stop a worker or fail one task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Bad flags.
    #[error("configuration: {0}")]
    Config(String),
    /// From the shared layer (dataset, model, storage).
    #[error(transparent)]
    Common(#[from] ctcluster_common::Error),
    /// The coordinator answered with an error.
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
    /// The connection to the coordinator failed.
    #[error("connection: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The compute thread is gone.
    #[error("compute thread stopped")]
    ComputeGone,
    /// The parameters the coordinator streamed do not add up (chunks out of order, a length
    /// other than announced).
    #[error("parameters: {0}")]
    Parameters(String),
    /// The coordinator no longer (or not yet) serves what the task needs: its parameters'
    /// version is not the job's. The task fails (retryable) and the session goes on.
    #[error("stale task: {0}")]
    Stale(String),
    /// An aggregator (sharded aggregation) could not be reached or refused a call: the task is
    /// retried (the coordinator resumes the job when an aggregator is lost).
    #[error("aggregator {url}: {reason}")]
    Aggregator {
        /// The aggregator's URL.
        url: String,
        /// What failed.
        reason: String,
    },
}

impl WorkerError {
    /// The error of a refused call made for one task: a stale task ("failed precondition":
    /// the job moved past the task's step, or has not published it yet) fails that task only;
    /// anything else is the coordinator's answer as it came.
    pub fn for_task(status: tonic::Status) -> WorkerError {
        if status.code() == tonic::Code::FailedPrecondition {
            WorkerError::Stale(status.message().to_string())
        } else {
            WorkerError::Rpc(status)
        }
    }

    /// Whether this error ends the worker's session with the coordinator (it then reconnects
    /// and registers again) rather than failing one task.
    pub fn ends_session(&self) -> bool {
        matches!(self, WorkerError::Rpc(_) | WorkerError::Transport(_))
    }

    /// Whether a task that failed with this error may pass if tried again (on this worker or
    /// another): decided by the error's type, reported to the coordinator with the failure.
    /// Bad input (a corrupt or missing shard, an invalid model) fails the same everywhere.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            WorkerError::Common(e) => match e.class() {
                ErrorClass::InvalidInput | ErrorClass::NotFound => FailureKind::BadInput,
                ErrorClass::PermissionDenied
                | ErrorClass::FailedPrecondition
                | ErrorClass::Unavailable
                | ErrorClass::Internal => FailureKind::Retryable,
            },
            WorkerError::Config(_)
            | WorkerError::Rpc(_)
            | WorkerError::Transport(_)
            | WorkerError::ComputeGone
            | WorkerError::Stale(_)
            | WorkerError::Parameters(_) => FailureKind::Retryable,
            WorkerError::Aggregator { .. } => FailureKind::Aggregator,
        }
    }
}

#[cfg(test)]
mod tests {
    use ctcluster_common::Error;

    use super::*;

    #[test]
    fn a_corrupt_shard_is_bad_input_and_a_lost_connection_or_a_missing_key_is_retried() {
        let kind = |e: Error| WorkerError::from(e).failure_kind();
        assert_eq!(
            kind(Error::dataset("memory://d/train-0.arrow", "sha256 differs")),
            FailureKind::BadInput
        );
        assert_eq!(
            kind(Error::NotFound {
                what: "object".into(),
                location: "memory://d/train-0.arrow".into()
            }),
            FailureKind::BadInput
        );
        assert_eq!(
            kind(Error::Io {
                path: "/data/train-0.arrow".into(),
                source: std::io::ErrorKind::ConnectionReset.into()
            }),
            FailureKind::Retryable
        );
        assert_eq!(
            kind(Error::KeyMissing {
                what: "dataset".into(),
                key_id: "k".into(),
                hint: "CT_KEY_k".into()
            }),
            FailureKind::Retryable
        );
        assert_eq!(kind(Error::Compute("panic".into())), FailureKind::Retryable);
        assert_eq!(
            WorkerError::Parameters("3 values, expected 4".into()).failure_kind(),
            FailureKind::Retryable
        );
    }

    #[test]
    fn a_stale_task_fails_alone_and_a_lost_coordinator_ends_the_session() {
        let stale = WorkerError::for_task(tonic::Status::failed_precondition(
            "parameters of step 3 asked for, the job is at step 4",
        ));
        assert!(!stale.ends_session());
        assert_eq!(stale.failure_kind(), FailureKind::Retryable);
        assert!(stale.to_string().contains("step 3"), "{stale}");
        let gone = WorkerError::for_task(tonic::Status::unavailable("connection reset"));
        assert!(gone.ends_session());
    }
}
