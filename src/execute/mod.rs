//! Carries out a plan against the object store: find what each due artifact amounts to (a file,
//! a directory of many keys, or nothing), then delete all keys in batches, bucket by bucket,
//! with bounded concurrency. Shared by `artgc purge` and the controller.
//!
//! The two steps are separate ([`probe`], then [`delete`]) so that a front end can record what
//! the probe found before anything is deleted (see [`Probed::files_to_mark`]).
//!
//! - this file: how a run goes ([`Run`]: mode, progress, stop) and the jobs both steps share;
//! - `probe`: what each artifact amounts to; `delete`: the batches, their audit records and the
//!   accounting; `versions`: a versioned bucket's versions, where reclaimed.

mod delete;
mod probe;
mod versions;

pub use delete::delete;
use probe::FindFile;
pub use probe::{Probed, probe};

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;

use crate::store::{
    MAX_BATCH, ObjectStore, ObjectVersion, StoreError, StoreErrorKind, StoredObject,
    VersionDeleted, Versioning,
};
use artgc_core::location::{S3Connection, S3Target};
use artgc_core::model::ANNOTATION_FINISHED_SEEN;
use artgc_core::plan::WorkflowPlan;
use artgc_core::plan::{ArtifactRef, Decision, GcPlan, ObjectKind};
use artgc_core::versions::{
    ReclaimChoice, RunBounds, RunWindow, VersionScope, reclaim_choice, versions_to_reclaim,
};

pub use artgc_core::execution::{ArtifactOutcome, Execution};
use artgc_core::execution::{Claims, Found, KeyToDelete, claim, count_only_what_was_deleted};

/// Progress of a run, for a progress bar.
pub trait Progress: Sync {
    fn probed(&self, _artifacts: u64) {}
    fn to_delete(&self, _objects: u64) {}
    fn deleted(&self, _objects: u64) {}
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {}

/// Whether a run may go on. Checked before every probe and delete request batch: once true,
/// nothing more is sent (shutdown, or a controller that lost its leadership) and the rest is
/// `cancelled`.
pub trait Stop: Sync {
    fn stopped(&self) -> bool;
}

/// A run nothing stops but its end.
pub struct Unstopped;
impl Stop for Unstopped {
    fn stopped(&self) -> bool {
        false
    }
}

/// Whether a run sends its deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Delete,
    /// Probes and plans, deleting nothing.
    DryRun,
}

/// How one run goes: what it sends, what it shows, what stops it.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub mode: Mode,
    pub progress: &'a dyn Progress,
    pub stop: &'a dyn Stop,
}

impl Run<'static> {
    /// Deletes, shows nothing, stops at the end.
    pub const DELETE: Self = Run {
        mode: Mode::Delete,
        progress: &Quiet,
        stop: &Unstopped,
    };
    pub const DRY_RUN: Self = Run {
        mode: Mode::DryRun,
        ..Self::DELETE
    };
}

impl<'a> Run<'a> {
    pub fn with_progress(self, progress: &'a dyn Progress) -> Self {
        Run { progress, ..self }
    }

    pub fn with_stop(self, stop: &'a dyn Stop) -> Self {
        Run { stop, ..self }
    }
}

/// What a probe found: the kind, and the objects to delete with their sizes.
pub(super) type ProbeResult = Result<(ObjectKind, Vec<StoredObject>), StoreError>;

/// One artifact the plan says to delete, with what its probe may conclude.
pub(super) struct Job<'a> {
    id: ArtifactRef,
    conn: &'a S3Connection,
    target: &'a S3Target,
    /// May be widened to `key/` (see [`may_widen`]).
    widen: bool,
    /// Objects written after this are someone else's.
    written_by: Option<jiff::Timestamp>,
    /// With widening: objects written before this are not the workflow's.
    written_from: Option<jiff::Timestamp>,
    /// Why its workflow's versions are never reclaimed (times that contradict the server's).
    reclaim_refused: Option<String>,
    /// What bounded its workflow's window besides the status's times.
    bounded_by: Vec<&'static str>,
    /// How a file at the key is looked for.
    find_file: FindFile,
}

/// Probes and (unless a dry run) deletes every artifact the plan marks `Delete`.
pub async fn execute(plan: &GcPlan, store: &ObjectStore, run: Run<'_>) -> Execution {
    let probed = probe(plan, store, run).await;
    delete(plan, probed, store, run).await
}

/// What one deletion request covers of one workflow, for the audit trail.
pub(super) struct AuditOwner {
    namespace: String,
    workflow: String,
    uid: String,
    artifact: String,
}

/// A key to delete, its size, and the jobs that own it.
pub(super) type KeyEntry = KeyToDelete;

pub(super) fn concurrency(store: &ObjectStore) -> usize {
    store.options().concurrency.max(1)
}
