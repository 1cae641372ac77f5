//! `ctctl`'s error type: every failure is printed as one clear line, and the exit code says
//! which kind it was.

/// What a `ctctl` command can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// Bad arguments or files.
    #[error("{0}")]
    Usage(String),
    /// The coordinator cannot be reached.
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Connect {
        /// Its URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The coordinator refused the request.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
    /// From the shared layer (datasets, models, storage).
    #[error(transparent)]
    Common(#[from] ctcluster_common::Error),
    /// A job ended without succeeding.
    #[error("job {id} {state}: {message}")]
    JobDidNotSucceed {
        /// The job.
        id: String,
        /// failed or cancelled.
        state: String,
        /// Why.
        message: String,
    },
    /// The local cluster of `ctctl demo` failed.
    #[error("demo: {0}")]
    Demo(String),
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        _ => "error",
    }
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Connect { .. } => 3,
            CtlError::JobDidNotSucceed { .. } => 4,
            _ => 1,
        }
    }
}
