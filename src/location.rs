//! Where one artifact lives and how to reach it: Argo's location rules (own complete location,
//! else the template's `archiveLocation`, else the workflow's repository) and its credential
//! rules (Secrets in the workflow's namespace; static keys, then roleARN, then the SDK chain).

use std::fmt;

use crate::cluster::ClusterState;
use crate::error::ResolveError;
use crate::model::{Artifact, ArtifactLocation, S3Location, Template};

/// Bucket and key of an S3 artifact, with the endpoint as the workflow wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
}

impl S3Target {
    /// True when deleting this key could reach every object of the bucket.
    pub fn is_bucket_root(&self) -> bool {
        self.key.trim_matches('/').is_empty()
    }

    /// A key ending in `/` names a directory.
    pub fn is_directory_key(&self) -> bool {
        self.key.ends_with('/')
    }

    /// The listing prefix of the directory this key may name, always ending at a `/`
    /// boundary so that `out/dir` never reaches `out/dir2/...`.
    pub fn directory_prefix(&self) -> String {
        if self.key.ends_with('/') {
            self.key.clone()
        } else {
            format!("{}/", self.key)
        }
    }
}

/// How to connect to a store. Holds credential values, so Debug redacts them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct S3Connection {
    /// `http(s)://host[:port]`.
    pub url: String,
    pub region: String,
    pub path_style: bool,
    pub credentials: Credentials,
    /// Extra trusted CA (PEM) from `caSecret`.
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credentials {
    Static {
        access_key: String,
        secret_key: String,
        session_token: Option<String>,
    },
    /// Assume this role with the ambient credentials.
    AssumeRole { role_arn: String },
    /// The AWS SDK's default chain (env, profile, web identity / IRSA, instance metadata).
    Ambient,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static { access_key, .. } => write!(f, "static({access_key}, ***)"),
            Self::AssumeRole { role_arn } => write!(f, "assume-role({role_arn})"),
            Self::Ambient => f.write_str("sdk-chain"),
        }
    }
}

impl fmt::Debug for S3Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Connection")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials)
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// The template a node ran, as far as it can be told.
#[derive(Debug, Clone, Copy)]
pub enum TemplateLookup<'a> {
    Found(&'a Template),
    /// Not found (e.g. an inline template). `any_archive_location` says whether some template of
    /// the workflow has its own archiveLocation, in which case the repository cannot be assumed.
    Unknown {
        any_archive_location: bool,
    },
}

/// Outcome of resolving an artifact's location.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// S3: the bucket/key, and the S3 fields (own or inherited) that say how to connect.
    S3 {
        target: S3Target,
        location: Box<S3Location>,
    },
    /// A driver artgc cannot delete from.
    Unsupported(&'static str),
}

fn location_driver(loc: &ArtifactLocation) -> Option<&'static str> {
    loc.other_driver()
}

/// Argo's `HasLocation` for an `archiveLocation`: some driver fully set.
fn archive_has_location(loc: &ArtifactLocation) -> bool {
    loc.has_complete_s3() || loc.other_driver().is_some()
}

/// Resolves where an artifact lives. `field` names the artifact in errors; `repository` is
/// called only when the artifact has no complete location of its own.
pub fn resolve(
    art: &Artifact,
    template: TemplateLookup<'_>,
    field: &str,
    repository: impl FnOnce() -> Result<ArtifactLocation, ResolveError>,
) -> Result<Resolved, ResolveError> {
    if let Some(driver) = location_driver(&art.location) {
        return Ok(Resolved::Unsupported(driver));
    }
    let Some(own) = &art.location.s3 else {
        return Err(ResolveError::Location(format!(
            "{field}: artifact has no location (no s3 or other driver)"
        )));
    };
    if own.is_complete() {
        return finish(own.clone(), field);
    }
    let key = own.key.clone().unwrap_or_default();
    let base = match template {
        TemplateLookup::Found(t) => match &t.archive_location {
            Some(a) if archive_has_location(a) => a.clone(),
            _ => repository()?,
        },
        TemplateLookup::Unknown {
            any_archive_location: true,
        } => {
            return Err(ResolveError::Location(format!(
                "{field}: the node's template cannot be found and some templates set their own archiveLocation, so the bucket of this key-only artifact is unknown"
            )));
        }
        TemplateLookup::Unknown { .. } => repository()?,
    };
    if let Some(driver) = location_driver(&base) {
        return Ok(Resolved::Unsupported(driver));
    }
    let Some(mut merged) = base.s3 else {
        return Err(ResolveError::Repository(format!(
            "{field}: key-only artifact, but its archive location / repository has no s3 section"
        )));
    };
    merged.key = Some(key);
    finish(merged, field)
}

fn finish(location: S3Location, field: &str) -> Result<Resolved, ResolveError> {
    let get = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ResolveError::Location(format!("{field}: s3.{name} is not set")))
    };
    let target = S3Target {
        endpoint: get(&location.endpoint, "endpoint")?,
        bucket: get(&location.bucket, "bucket")?,
        key: location.key.clone().unwrap_or_default(),
    };
    Ok(Resolved::S3 {
        target,
        location: Box::new(location),
    })
}

/// Builds the connection for an S3 location, reading Secrets in `namespace` only.
pub fn connection(
    state: &ClusterState,
    namespace: &str,
    loc: &S3Location,
    field: &str,
) -> Result<S3Connection, ResolveError> {
    let endpoint = loc.endpoint.as_deref().unwrap_or_default();
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else if loc.insecure == Some(true) {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    };
    let text = |sel: &crate::model::SecretKeySelector, name: &str| {
        let raw = state.secret_value(namespace, sel, &format!("{field}.s3.{name}"))?;
        String::from_utf8(raw)
            .map(|s| s.trim().to_string())
            .map_err(|_| ResolveError::Secret(format!("{field}.s3.{name}: value is not UTF-8")))
    };
    let credentials = match (&loc.access_key_secret, &loc.secret_key_secret) {
        (Some(a), Some(s)) => Credentials::Static {
            access_key: text(a, "accessKeySecret")?,
            secret_key: text(s, "secretKeySecret")?,
            session_token: loc
                .session_token_secret
                .as_ref()
                .map(|t| text(t, "sessionTokenSecret"))
                .transpose()?,
        },
        (Some(_), None) | (None, Some(_)) => {
            return Err(ResolveError::Secret(format!(
                "{field}.s3: accessKeySecret and secretKeySecret must be set together"
            )));
        }
        (None, None) => match loc.role_arn.as_deref().filter(|r| !r.is_empty()) {
            Some(role) => Credentials::AssumeRole {
                role_arn: role.to_string(),
            },
            None => Credentials::Ambient,
        },
    };
    let ca_pem = loc
        .ca_secret
        .as_ref()
        .map(|c| state.secret_value(namespace, c, &format!("{field}.s3.caSecret")))
        .transpose()?;
    Ok(S3Connection {
        url,
        region: loc
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into()),
        path_style: loc.addressing_style.as_deref() != Some("virtual-hosted"),
        credentials,
        ca_pem,
    })
}
