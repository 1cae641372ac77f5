//! The coordinator's error type, and its one mapping to gRPC status codes.

use ctcluster_common::task::{FailureKind, TaskFailure};
use ctcluster_common::{Error as CommonError, ErrorClass, JobId, WorkerId};
use tonic::Status;

/// Everything a coordinator request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    /// From the shared layer (bad spec, bad dataset, storage).
    #[error(transparent)]
    Common(#[from] CommonError),
    /// No such job.
    #[error("no job {0}")]
    JobNotFound(JobId),
    /// The worker is not registered (it was dropped, or the coordinator restarted).
    #[error("{0} is not registered; register again")]
    WorkerNotFound(WorkerId),
    /// A worker id registered by another certificate.
    #[error("{0} was registered with another certificate; a worker speaks only for itself")]
    NotYourWorker(WorkerId),
    /// Past a limit (memory budget, jobs per user, active jobs): try later or ask for less.
    #[error("{what}: {reason}")]
    ResourceExhausted {
        /// Which limit.
        what: &'static str,
        /// The figures.
        reason: String,
    },
    /// The caller may not use something another user owns. The message never says whose.
    #[error("{field} {url}: {reason}")]
    NotYours {
        /// The spec field.
        field: &'static str,
        /// The URL as given (the caller's own input).
        url: String,
        /// Why.
        reason: String,
    },
    /// A request for something that has moved on (old parameters, a finished step).
    #[error("stale: {0}")]
    Stale(String),
    /// The worker speaks another protocol version.
    #[error("protocol version {worker} is not the coordinator's {coordinator}")]
    ProtocolMismatch {
        /// The worker's version.
        worker: u32,
        /// Ours.
        coordinator: u32,
    },
    /// A request field is missing or out of range.
    #[error("invalid {field}: {reason}")]
    BadRequest {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A task failed for good: its input is bad, or it failed on every try (its error says
    /// what and where).
    #[error("{}", task_failed(.0))]
    TaskFailed(TaskFailure),
    /// A fault inside the coordinator (a panic in a job's driver); the job fails with it.
    #[error("internal error: {0}")]
    Internal(String),
    /// An aggregator of a sharded job stopped answering, restarted or refused a step: the job
    /// resumes from its newest checkpoint once the aggregators answer again.
    #[error("{0}")]
    AggregatorLost(String),
    /// The coordinator is shutting down.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// A job names a URL outside the storage scope.
    #[error("{field} {url} is outside the storage scope: {reason}")]
    OutOfScope {
        /// The spec field.
        field: &'static str,
        /// The URL as given.
        url: String,
        /// The rule it broke.
        reason: String,
    },
}

fn task_failed(f: &TaskFailure) -> String {
    match f.kind {
        FailureKind::BadInput => format!("a task's input is bad, so the job cannot progress: {f}"),
        FailureKind::Retryable | FailureKind::Aggregator => {
            format!("a task kept failing, so the job cannot progress; the last error: {f}")
        }
    }
}

impl CoordError {
    /// Shorthand for [`CoordError::BadRequest`].
    pub fn bad(field: &'static str, reason: impl Into<String>) -> Self {
        CoordError::BadRequest {
            field,
            reason: reason.into(),
        }
    }
}

impl From<CoordError> for Status {
    fn from(e: CoordError) -> Status {
        let msg = e.to_string();
        match e {
            CoordError::Common(c) => match c.class() {
                ErrorClass::InvalidInput => Status::invalid_argument(msg),
                ErrorClass::NotFound => Status::not_found(msg),
                ErrorClass::PermissionDenied => Status::permission_denied(msg),
                ErrorClass::FailedPrecondition => Status::failed_precondition(msg),
                ErrorClass::Unavailable => Status::unavailable(msg),
                ErrorClass::Internal => Status::internal(msg),
            },
            CoordError::JobNotFound(_) | CoordError::WorkerNotFound(_) => Status::not_found(msg),
            CoordError::Stale(_) | CoordError::ProtocolMismatch { .. } => {
                Status::failed_precondition(msg)
            }
            CoordError::BadRequest { .. } => Status::invalid_argument(msg),
            CoordError::ShuttingDown | CoordError::AggregatorLost(_) => Status::unavailable(msg),
            CoordError::OutOfScope { .. }
            | CoordError::NotYours { .. }
            | CoordError::NotYourWorker(_) => Status::permission_denied(msg),
            CoordError::ResourceExhausted { .. } => Status::resource_exhausted(msg),
            CoordError::TaskFailed(_) => Status::aborted(msg),
            CoordError::Internal(_) => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_the_codes_clients_branch_on() {
        let code = |e: CoordError| Status::from(e).code();
        assert_eq!(
            code(CommonError::invalid("batch_size", "0").into()),
            Code::InvalidArgument
        );
        assert_eq!(
            code(CoordError::JobNotFound(JobId::generate())),
            Code::NotFound
        );
        assert_eq!(
            code(CoordError::Stale("step 3".into())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(CoordError::ProtocolMismatch {
                worker: 0,
                coordinator: 1
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(CoordError::bad("job_id", "empty")),
            Code::InvalidArgument
        );
        assert_eq!(
            code(CoordError::NotYourWorker(WorkerId(3))),
            Code::PermissionDenied
        );
        assert_eq!(
            code(CoordError::ResourceExhausted {
                what: "memory budget",
                reason: "x".into()
            }),
            Code::ResourceExhausted
        );
        assert_eq!(code(CoordError::Internal("panic".into())), Code::Internal);
        assert_eq!(
            code(
                CommonError::TooLarge {
                    location: "memory://x".into(),
                    what: "a shard".into(),
                    size: 9,
                    limit: 8
                }
                .into()
            ),
            Code::InvalidArgument
        );
        assert_eq!(
            code(
                CommonError::NotFound {
                    what: "no dataset here, manifest.json".into(),
                    location: "memory://d".into()
                }
                .in_field("dataset")
                .into()
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                CommonError::KeyMissing {
                    what: "dataset".into(),
                    key_id: "k".into(),
                    hint: "CT_KEY_k".into()
                }
                .into()
            ),
            Code::FailedPrecondition
        );
        assert_eq!(code(CoordError::ShuttingDown), Code::Unavailable);
        assert_eq!(
            code(CoordError::TaskFailed(TaskFailure::bad_input("shard 1"))),
            Code::Aborted
        );
    }
}
