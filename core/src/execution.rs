//! What carrying out a plan did, per artifact: the executor's result, read by the judge
//! ([`crate::outcome`]) and the report. Plain data, no IO: the executor (`artgc::execute`)
//! fills it.

use std::collections::HashMap;

use crate::error::StoreError;
use crate::plan::{ArtifactRef, ObjectKind};

/// What happened to one artifact the plan said to delete.
#[derive(Debug, Clone, Default)]
pub struct ArtifactOutcome {
    /// What the store showed: a file, a directory, or `None` when the probe failed.
    pub kind: Option<ObjectKind>,
    /// Objects deleted (or, in a dry run, that would be).
    pub objects: u64,
    /// Bytes really freed (or, in a dry run, that would be): the objects' on an unversioned
    /// bucket, the versions deleted on a versioned one.
    pub bytes: u64,
    /// Bytes deleted in name only: on a versioned (or suspended) bucket a delete adds a delete
    /// marker, and the object's bytes stay in a noncurrent version.
    pub hidden_bytes: u64,
    /// Versions deleted by version id (reclaiming), and their count left because Object Lock
    /// (retention or legal hold) protects them.
    pub versions_deleted: u64,
    pub locked: u64,
    /// The bucket's versioning, as the store reported it (`None`: not asked or not known).
    pub versioning: Option<Versioning>,
    /// Nothing was there to delete.
    pub absent: bool,
    /// Objects kept because they were written after the workflow finished: not its outputs.
    pub written_after: u64,
    /// Why the versions of its keys were not reclaimed although reclaim was asked for.
    pub reclaim_refused: Option<String>,
    /// The server's and artgc's own facts that bounded the run's window when its versions were
    /// reclaimed (besides the status's own times), for the report.
    pub reclaim_bounds: Vec<&'static str>,
    pub error: Option<StoreError>,
}

/// A bucket's versioning state (GetBucketVersioning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Versioning {
    /// Never enabled (or a store without versioning): a delete frees the bytes.
    Off,
    Enabled,
    /// Once enabled: older versions stay; a delete adds a delete marker.
    Suspended,
}

impl Versioning {
    /// Whether a plain delete leaves the bytes in a version.
    pub fn keeps_versions(self) -> bool {
        !matches!(self, Self::Off)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Enabled => "enabled",
            Self::Suspended => "suspended",
        }
    }
}

/// Outcomes by the artifact of the plan they are for.
#[derive(Debug, Default)]
pub struct Execution {
    pub outcomes: HashMap<ArtifactRef, ArtifactOutcome>,
}

impl Execution {
    pub fn get(&self, r: ArtifactRef) -> Option<&ArtifactOutcome> {
        self.outcomes.get(&r)
    }
}
