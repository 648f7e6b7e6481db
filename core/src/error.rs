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
        }
    }

    /// The workflow itself cannot be read: artgc can never collect it, so it holds nothing.
    /// (Anything else is a failure to retry.)
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            Self::Parse { .. } | Self::Field { .. } | Self::Offloaded { .. }
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

/// A failed S3 operation, with a stable category.
#[derive(Debug, Clone, Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
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
