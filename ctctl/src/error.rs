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
    /// An output file or folder could not be written (a full disk, no permission).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The local path.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be encoded (a chart, a preview grid).
    #[error("encoding {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        reason: String,
    },
}

impl CtlError {
    /// A [`CtlError::Write`] for `path`.
    pub fn write(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CtlError + '_ {
        move |source| CtlError::Write {
            path: path.display().to_string(),
            source,
        }
    }
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
    /// The process exit code for this error: 2 bad usage, 3 coordinator unreachable, 4 the
    /// job did not succeed, 1 anything else that failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Connect { .. } => 3,
            CtlError::JobDidNotSucceed { .. } => 4,
            CtlError::Rpc(_)
            | CtlError::Common(_)
            | CtlError::Demo(_)
            | CtlError::Write { .. }
            | CtlError::Encode { .. } => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_say_what_kind_of_failure_it_was() {
        assert_eq!(CtlError::Usage("--count".into()).exit_code(), 2);
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let write = CtlError::write(std::path::Path::new("/out/loss.png"))(io);
        assert_eq!(write.exit_code(), 1, "a failed write is not bad usage");
        assert!(write.to_string().contains("/out/loss.png"));
        assert_eq!(
            CtlError::Encode {
                what: "a chart",
                reason: "too large".into()
            }
            .exit_code(),
            1
        );
        assert_eq!(
            CtlError::Connect {
                url: "https://x".into(),
                reason: "refused".into()
            }
            .exit_code(),
            3
        );
        assert_eq!(
            CtlError::Rpc(tonic::Status::not_found("job")).exit_code(),
            1
        );
    }
}
