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
}
