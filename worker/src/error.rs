//! The worker's error type.

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
}
