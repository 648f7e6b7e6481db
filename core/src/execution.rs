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
    pub bytes: u64,
    /// Nothing was there to delete.
    pub absent: bool,
    /// Objects kept because they were written after the workflow finished: not its outputs.
    pub written_after: u64,
    pub error: Option<StoreError>,
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
