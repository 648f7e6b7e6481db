//! Error types, one per layer, each with a short stable `category()` for metric labels, Event
//! reasons and scripts. Messages name the object and field; categories never do.

use std::sync::Arc;

use thiserror::Error;

/// The error beneath another, kept (not flattened into text) so that logs and callers can walk
/// the chain; shared, so the error stays `Clone`.
pub type Source = Arc<dyn std::error::Error + Send + Sync>;

/// Input that could not be read or understood.
#[derive(Debug, Error, Clone)]
pub enum InputError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// artgc's own settings (a flag, the policy file) are invalid.
    #[error("{setting}: {source}")]
    Config {
        setting: String,
        #[source]
        source: Source,
    },
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    #[error(
        "node status is offloaded to Argo's database (status.offloadNodeStatusVersion {version}); artgc cannot read it, so this workflow is not plannable"
    )]
    Offloaded { version: String },
    /// Offloaded node status could not be read from Argo's database (`category` is the
    /// reader's: `offload_unreachable`, `offload_credentials`, `offload_missing`, ...).
    /// `permanent`: the recorded version is gone, and will never be readable.
    #[error("reading offloaded node status from Argo's database: {source}")]
    Offload {
        category: &'static str,
        permanent: bool,
        #[source]
        source: Source,
    },
    /// What the plan needs could not be read from the API server (retried).
    #[error("reading {what} from the API server: {source}")]
    Cluster {
        what: String,
        #[source]
        source: Source,
    },
}

impl InputError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Parse { .. } => "parse",
            Self::Io { .. } => "io",
            Self::Config { .. } => "config",
            Self::Field { .. } => "invalid_field",
            Self::Offloaded { .. } => "offloaded",
            Self::Cluster { .. } => "kube_api",
            Self::Offload { category, .. } => category,
        }
    }

    /// The object is not a Workflow artgc can read at all (it has no run to speak of).
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::Parse { .. } | Self::Field { .. })
    }

    /// The workflow itself cannot be read: artgc can never collect it, so it holds nothing.
    /// (Anything else is a failure to retry.)
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            Self::Parse { .. }
                | Self::Field { .. }
                | Self::Offloaded { .. }
                | Self::Offload {
                    permanent: true,
                    ..
                }
        )
    }
}

/// Why one artifact's location, repository or credentials could not be resolved.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    #[error("{0}")]
    Location(String),
    #[error("{0}")]
    Repository(String),
    #[error("{0}")]
    Secret(String),
    #[error("{0}")]
    Strategy(String),
    /// No identity the policy allows for the namespace can act for this artifact.
    #[error("{0}")]
    Identity(String),
    /// The endpoint is not configured for the namespace, or is never contacted.
    #[error("{0}")]
    EndpointNotAllowed(String),
    /// The policy confines the namespace to other buckets or key prefixes.
    #[error("{0}")]
    BucketNotAllowed(String),
    /// A key that could reach outside the artifact on some store.
    #[error("{0}")]
    UnsafeKey(String),
    /// A ref in status names a namespace artgc does not read for this workflow.
    #[error("{0}")]
    RefNotAllowed(String),
}

impl ResolveError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Location(_) => "location",
            Self::Repository(_) => "repository",
            Self::Secret(_) => "secret",
            Self::Strategy(_) => "invalid_strategy",
            Self::Identity(_) => "identity",
            Self::EndpointNotAllowed(_) => "endpoint_not_allowed",
            Self::BucketNotAllowed(_) => "bucket_not_allowed",
            Self::UnsafeKey(_) => "unsafe_key",
            Self::RefNotAllowed(_) => "ref_not_allowed",
        }
    }

    /// A refusal that no retry changes: the Workflow (its author's, status included) and the
    /// operator's policy decide it, not a read that may go better next time. Reported and
    /// settled, so it never holds a finalizer. A missing Secret, ServiceAccount or repository
    /// ConfigMap may appear later: those stay failures, retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::EndpointNotAllowed(_)
            | Self::BucketNotAllowed(_)
            | Self::UnsafeKey(_)
            | Self::RefNotAllowed(_)
            | Self::Strategy(_)
            | Self::Location(_) => true,
            Self::Repository(_) | Self::Secret(_) | Self::Identity(_) => false,
        }
    }
}

/// What kind of S3 failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    AccessDenied,
    NoSuchBucket,
    Throttled,
    Server,
    Network,
    NotImplemented,
    TooManyObjects,
    Credentials,
    Request,
    /// Not sent: the pass was stopped (shutdown, leadership lost).
    Cancelled,
    /// A listing that would not end.
    EndlessListing,
}

/// A failed S3 operation, with a stable category. The message says what was asked of which
/// bucket and key and what the store answered; the SDK's error, when there is one, stays the
/// source.
#[derive(Debug, Clone, Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Source>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    pub fn category(&self) -> &'static str {
        match self.kind {
            StoreErrorKind::AccessDenied => "access_denied",
            StoreErrorKind::NoSuchBucket => "no_such_bucket",
            StoreErrorKind::Throttled => "throttled",
            StoreErrorKind::Server => "server_error",
            StoreErrorKind::Network => "network",
            StoreErrorKind::NotImplemented => "not_implemented",
            StoreErrorKind::TooManyObjects => "too_many_objects",
            StoreErrorKind::Credentials => "credentials",
            StoreErrorKind::Request => "request",
            StoreErrorKind::Cancelled => "cancelled",
            StoreErrorKind::EndlessListing => "endless_listing",
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.kind == StoreErrorKind::Cancelled
    }

    pub fn cancelled() -> Self {
        Self::new(
            StoreErrorKind::Cancelled,
            "not sent: the pass was stopped (shutdown or leadership lost)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// The message says what failed; the underlying error stays reachable as the source, and
    /// the category comes from the kind alone.
    #[test]
    fn errors_keep_their_source_beneath_their_message() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = StoreError::new(StoreErrorKind::Network, "DeleteObjects s3://b/k: reset")
            .caused_by(io());
        assert_eq!(e.to_string(), "DeleteObjects s3://b/k: reset");
        assert_eq!(e.source().unwrap().to_string(), "reset by peer");
        assert_eq!(e.category(), "network");
        let e = InputError::Cluster {
            what: "Workflow ns/w".into(),
            source: Arc::new(io()),
        };
        assert_eq!(
            e.to_string(),
            "reading Workflow ns/w from the API server: reset by peer"
        );
        assert!(e.source().is_some());
        assert_eq!(e.category(), "kube_api");
        assert!(!e.is_unreadable(), "a failed read is retried, not final");
    }
}
