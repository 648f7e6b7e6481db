//! What carrying out a plan did, per artifact: the executor's result, read by the judge
//! ([`crate::outcome`]) and the report. Plain data, no IO: the executor (`artgc::execute`)
//! fills it.

use std::collections::HashMap;
use std::hash::Hash;

use crate::error::StoreError;
use crate::plan::{ArtifactRef, ObjectKind};

/// An object a probe found: its key, its size and when the store says it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    /// As the store reports it; `None` when it did not.
    pub last_modified: Option<jiff::Timestamp>,
}

/// Written after `limit` (the run's end, plus the skew): another run's object at the same key.
/// An object without a time, or a run without an end, proves nothing either way.
pub fn written_after(o: &StoredObject, limit: Option<jiff::Timestamp>) -> bool {
    matches!((o.last_modified, limit), (Some(t), Some(limit)) if t > limit)
}

/// What one probe found, for [`claim`]: the probed artifact's index (a job), the group its
/// keys are deleted in (a store and bucket), the end of its run, and the probe's result.
pub struct Found<G> {
    pub job: usize,
    pub group: G,
    pub written_by: Option<jiff::Timestamp>,
    pub result: Result<(ObjectKind, Vec<StoredObject>), StoreError>,
}

/// A key to delete, its size, and the jobs that claimed it (the first counts it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyToDelete {
    pub key: String,
    pub size: u64,
    pub owners: Vec<usize>,
}

/// What the probes come to: each job's outcome so far, the keys to delete per group, and the
/// current keys each job claimed (its own or shared), for the version rule.
#[derive(Debug)]
pub struct Claims<G> {
    pub outcomes: HashMap<usize, ArtifactOutcome>,
    pub groups: HashMap<G, Vec<KeyToDelete>>,
    pub claimed: HashMap<usize, Vec<String>>,
}

/// The accounting rule. An object written after its artifact's run is another run's: kept,
/// and counted as `written_after`. Every other object is the artifact's to delete; a key two
/// artifacts found in one group is deleted once and counted (objects and bytes) for the first
/// that found it, so a pass never reports a byte twice. A failed probe is that job's error.
pub fn claim<G: Hash + Eq + Copy>(found: impl IntoIterator<Item = Found<G>>) -> Claims<G> {
    let mut claims = Claims {
        outcomes: HashMap::new(),
        groups: HashMap::new(),
        claimed: HashMap::new(),
    };
    let mut seen: HashMap<(G, String), usize> = HashMap::new();
    for f in found {
        let out = claims.outcomes.entry(f.job).or_default();
        let (kind, objects) = match f.result {
            Err(e) => {
                out.error = Some(e);
                continue;
            }
            Ok(r) => r,
        };
        out.kind = Some(kind);
        out.absent = objects.is_empty();
        let (objects, newer): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .partition(|o| !written_after(o, f.written_by));
        out.written_after = newer.len() as u64;
        out.objects = objects.len() as u64;
        out.bytes = objects.iter().map(|o| o.size).sum();
        claims
            .claimed
            .insert(f.job, objects.iter().map(|o| o.key.clone()).collect());
        let group = claims.groups.entry(f.group).or_default();
        for obj in objects {
            match seen.get(&(f.group, obj.key.clone())) {
                Some(&i) => {
                    group[i].owners.push(f.job);
                    out.objects -= 1;
                    out.bytes -= obj.size;
                }
                None => {
                    seen.insert((f.group, obj.key.clone()), group.len());
                    group.push(KeyToDelete {
                        key: obj.key,
                        size: obj.size,
                        owners: vec![f.job],
                    });
                }
            }
        }
    }
    claims
}

/// Only what was really deleted counts: an artifact that failed reclaimed nothing, whatever its
/// probe found.
pub fn count_only_what_was_deleted(out: &mut ArtifactOutcome) {
    if out.error.is_some() {
        out.objects = 0;
        out.bytes = 0;
        out.hidden_bytes = 0;
    }
}

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
