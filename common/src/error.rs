//! The one error type of `ctcluster-common`.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the shared layer; each variant names what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field of a job spec, request or file has a bad value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field (dotted path for nested ones).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A storage URL that cannot be used.
    #[error("bad storage URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// Nothing stored at that location.
    #[error("not found: {location}")]
    NotFound {
        /// The URL that was looked up.
        location: String,
    },
    /// The object store failed.
    #[error("storage error at {location}: {source}")]
    Storage {
        /// The URL being read or written.
        location: String,
        /// The store's own error.
        #[source]
        source: object_store::Error,
    },
    /// A dataset file (manifest or shard) is malformed.
    #[error("dataset {location}: {reason}")]
    Dataset {
        /// The file's URL.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint is incomplete or corrupt.
    #[error("checkpoint {location}: {reason}")]
    Checkpoint {
        /// The checkpoint's URL.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor computation failed (a panic inside the backend, a shape mismatch).
    #[error("compute error: {0}")]
    Compute(String),
    /// Local file input/output.
    #[error("{path}: {source}")]
    Io {
        /// The local path.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A stored object (or a count read from one) is larger than what may be read or held.
    #[error("{location}: {size} bytes, more than the {limit} bytes allowed for {what}")]
    TooLarge {
        /// The object's URL.
        location: String,
        /// What it is (a manifest, a checkpoint file, ...).
        what: String,
        /// Its size, as the store reports it or as counted while reading.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Data sealed with a key this process does not have.
    #[error("{what} is encrypted with key {key_id:?}, which this process does not have: {hint}")]
    KeyMissing {
        /// What needed the key (a dataset, a checkpoint).
        what: String,
        /// The key's id, from the manifest.
        key_id: String,
        /// Where keys are looked for.
        hint: String,
    },
    /// A sealed file that cannot be opened with its key.
    #[error("{what}: cannot decrypt with key {key_id:?}: {reason}")]
    Sealed {
        /// The file.
        what: String,
        /// The key tried.
        key_id: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Dataset`].
    pub fn dataset(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Dataset {
            location: location.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Checkpoint`].
    pub fn checkpoint(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            location: location.into(),
            reason: reason.into(),
        }
    }

    /// True for failures that may pass if tried again (network, throttling), false for bad
    /// input that will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Storage { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Error::Io { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_not_retryable_but_transport_failures_are() {
        assert!(!Error::invalid("batch_size", "must be positive").is_retryable());
        assert!(!Error::dataset("memory://x", "truncated").is_retryable());
        let generic = Error::Storage {
            location: "s3://b/k".into(),
            source: object_store::Error::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
        };
        assert!(generic.is_retryable());
        let missing = Error::Storage {
            location: "s3://b/k".into(),
            source: object_store::Error::NotFound {
                path: "k".into(),
                source: "no such key".into(),
            },
        };
        assert!(!missing.is_retryable());
    }
}
