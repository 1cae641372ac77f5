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
    #[error("{location}: {what} not found")]
    NotFound {
        /// What was looked for (`object`, `no dataset here, manifest.json`).
        what: String,
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
    /// An error about one field of a request (a spec's `dataset`, say): the field, and the
    /// underlying error, whose class it keeps.
    #[error("{field}: {source}")]
    Field {
        /// Which field (dotted path for nested ones).
        field: String,
        /// What went wrong with what it names.
        #[source]
        source: Box<Error>,
    },
}

/// What kind of failure an [`Error`] is: what a client is told (each class is one gRPC code)
/// and whether trying again may help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The input is wrong (a spec field, a malformed or oversized file): the same request
    /// fails the same way again.
    InvalidInput,
    /// Nothing at the location named.
    NotFound,
    /// The store refused this process's credentials.
    PermissionDenied,
    /// This process lacks something the request needs (a decryption key): another process,
    /// or this one once configured, may succeed.
    FailedPrecondition,
    /// The store or the network failed; trying again may pass.
    Unavailable,
    /// A fault inside (a panic in the tensor backend).
    Internal,
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

    /// Puts the error under a request field, keeping its class.
    pub fn in_field(self, field: impl Into<String>) -> Self {
        Error::Field {
            field: field.into(),
            source: Box::new(self),
        }
    }

    /// The error's class. Exhaustive here, so that a new variant must be classified where it
    /// is defined, not caught by a wildcard in a server's mapping.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Invalid { .. }
            | Error::Url { .. }
            | Error::Dataset { .. }
            | Error::Checkpoint { .. }
            | Error::TooLarge { .. }
            | Error::Sealed { .. } => ErrorClass::InvalidInput,
            Error::NotFound { .. } => ErrorClass::NotFound,
            Error::KeyMissing { .. } => ErrorClass::FailedPrecondition,
            Error::Compute(_) => ErrorClass::Internal,
            Error::Storage { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorClass::NotFound,
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => ErrorClass::PermissionDenied,
                object_store::Error::InvalidPath { .. }
                | object_store::Error::NotSupported { .. } => ErrorClass::InvalidInput,
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. } => ErrorClass::FailedPrecondition,
                _ => ErrorClass::Unavailable,
            },
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorClass::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorClass::PermissionDenied,
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    ErrorClass::InvalidInput
                }
                _ => ErrorClass::Unavailable,
            },
            Error::Field { source, .. } => source.class(),
        }
    }

    /// True for failures that may pass if tried again (network, throttling), false for bad
    /// input that will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(source: object_store::Error) -> Error {
        Error::Storage {
            location: "s3://b/k".into(),
            source,
        }
    }

    #[test]
    fn bad_input_is_not_retryable_but_transport_failures_are() {
        assert!(!Error::invalid("batch_size", "must be positive").is_retryable());
        assert!(!Error::dataset("memory://x", "truncated").is_retryable());
        let generic = storage(object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        });
        assert!(generic.is_retryable());
        assert_eq!(generic.class(), ErrorClass::Unavailable);
        let missing = storage(object_store::Error::NotFound {
            path: "k".into(),
            source: "no such key".into(),
        });
        assert!(!missing.is_retryable());
        assert_eq!(missing.class(), ErrorClass::NotFound);
    }

    #[test]
    fn each_variant_has_the_class_a_client_acts_on() {
        let class = |e: Error| e.class();
        assert_eq!(class(Error::invalid("x", "y")), ErrorClass::InvalidInput);
        assert_eq!(
            class(Error::NotFound {
                what: "object".into(),
                location: "memory://a".into()
            }),
            ErrorClass::NotFound
        );
        assert_eq!(
            class(Error::TooLarge {
                location: "memory://a".into(),
                what: "a shard".into(),
                size: 9,
                limit: 8
            }),
            ErrorClass::InvalidInput
        );
        assert_eq!(
            class(Error::KeyMissing {
                what: "dataset".into(),
                key_id: "k1".into(),
                hint: "CT_KEY_k1".into()
            }),
            ErrorClass::FailedPrecondition
        );
        assert_eq!(class(Error::Compute("panic".into())), ErrorClass::Internal);
        assert_eq!(
            class(storage(object_store::Error::PermissionDenied {
                path: "k".into(),
                source: "403".into()
            })),
            ErrorClass::PermissionDenied
        );
        let io = |kind| Error::Io {
            path: "/x".into(),
            source: std::io::Error::from(kind),
        };
        assert_eq!(
            class(io(std::io::ErrorKind::NotFound)),
            ErrorClass::NotFound
        );
        assert_eq!(
            class(io(std::io::ErrorKind::ConnectionReset)),
            ErrorClass::Unavailable
        );
    }

    #[test]
    fn a_field_context_keeps_the_class_and_names_the_field() {
        let e = Error::NotFound {
            what: "no dataset here, manifest.json".into(),
            location: "memory://d".into(),
        }
        .in_field("dataset");
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert_eq!(
            e.to_string(),
            "dataset: memory://d: no dataset here, manifest.json not found"
        );
    }
}
