//! What one GC pass achieved for one workflow, and what to record because of it: artifacts to
//! mark deleted, strategies processed, the `ArtifactGCError` condition, and the finalizer. Pure;
//! the controller and `artgc purge` record the same thing.

use std::collections::{BTreeMap, BTreeSet};

use crate::execution::{ArtifactOutcome, Execution};
use crate::model::Workflow;
use crate::plan::{
    ArtifactPlan, ArtifactRef, Decision, KeepReason, SkipReason, Strategy, WorkflowPlan,
};

/// Argo's condition type for GC failures.
pub const CONDITION_GC_ERROR: &str = "ArtifactGCError";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizerChange {
    Keep,
    Add,
    /// `forced`: released by `forceFinalizerRemoval` with deletions still failing.
    Remove {
        forced: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionChange {
    Keep,
    Set(String),
    Clear,
}

/// An artifact to mark `deleted: true`, by node id and position (the name is checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedArtifact {
    pub node: String,
    pub index: usize,
    pub name: String,
}

/// Everything to write to one Workflow after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub deleted: Vec<DeletedArtifact>,
    pub processed: Vec<Strategy>,
    pub condition: ConditionChange,
    pub finalizer: FinalizerChange,
    /// Failed deletion passes so far, when this pass was one of them.
    pub deletion_attempts: Option<u32>,
    /// artgc's record of when it first saw the workflow finished, to write (see
    /// [`finished_seen_record`]).
    pub finished_seen: Option<jiff::Timestamp>,
}

impl StatusUpdate {
    pub fn none() -> Self {
        Self {
            deleted: Vec::new(),
            processed: Vec::new(),
            condition: ConditionChange::Keep,
            finalizer: FinalizerChange::Keep,
            deletion_attempts: None,
            finished_seen: None,
        }
    }
}

/// The `artgc.io/finished-seen` record a pass at `now` writes: `now`, for a finished workflow
/// whose versions may be reclaimed (`reclaims`), unless a record no later than now is there.
/// A record from the future is the author's, and replaced; one from the past only narrows.
pub fn finished_seen_record(
    wp: &WorkflowPlan,
    finished: bool,
    reclaims: bool,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    match wp.finished_seen {
        _ if !finished || !reclaims => None,
        Some(t) if t <= now => None,
        _ => Some(now),
    }
}

/// Whether any of a workflow's versions may be reclaimed, now or on a later pass: the
/// operator's flag, its namespace's grant, or an artifact's.
pub fn may_reclaim_versions(operator: bool, wp: &WorkflowPlan) -> bool {
    operator || wp.may_reclaim || wp.artifacts.iter().any(|a| a.reclaim_versions)
}

/// Judges one workflow's pass: [`assess`], and the `artgc.io/finished-seen` record
/// ([`finished_seen_record`]; an object that is no readable Workflow has no run to record).
/// `operator_reclaims` is `--reclaim-versions`.
pub fn judge(
    wp: &WorkflowPlan,
    w: usize,
    execution: Option<&Execution>,
    ctx: &PassContext,
    operator_reclaims: bool,
    now: jiff::Timestamp,
) -> PassOutcome {
    let mut out = assess(wp, w, execution, ctx);
    let malformed = wp.error.as_ref().is_some_and(|e| e.is_malformed());
    out.update.finished_seen = finished_seen_record(
        wp,
        ctx.finished && !malformed,
        may_reclaim_versions(operator_reclaims, wp),
        now,
    );
    out
}

/// One artifact (or the whole workflow) that could not be collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `node/artifact`, or `workflow` when the workflow could not be planned.
    pub what: String,
    pub category: &'static str,
    pub reason: String,
}

/// Deleted by one strategy in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub artifacts: u64,
    pub objects: u64,
    /// Bytes really freed.
    pub bytes: u64,
    /// Bytes deleted in name only: left in a versioned bucket's noncurrent versions.
    pub hidden_bytes: u64,
}

/// What the workflow looked like when the pass was planned, and how often it was tried.
#[derive(Debug, Clone)]
pub struct PassContext {
    pub finished: bool,
    /// Argo started it (see [`Workflow::is_started`]).
    pub started: bool,
    pub deleting: bool,
    /// artgc's finalizer is on the object.
    pub has_finalizer: bool,
    pub force_finalizer_removal: bool,
    /// This deletion pass's number (1 for the first; the failed ones before it are counted on
    /// the Workflow) and the retry budget.
    pub attempt: u32,
    pub budget: u32,
    /// While running: whether any artifact may need GC later (see [`needs_finalizer`]).
    pub may_need_gc: bool,
    /// Whether this pass may add the finalizer: the controller's may, a one-off `purge` may
    /// not (nobody would be there to remove it).
    pub may_add_finalizer: bool,
    /// `status.artifactGCStatus.strategiesProcessed` as found.
    pub processed: BTreeMap<String, bool>,
    pub has_condition: bool,
}

impl PassContext {
    /// The context of a readable workflow as read (`raw` is the same object as JSON).
    pub fn of(wf: &Workflow, raw: &serde_json::Value, has_finalizer: bool, budget: u32) -> Self {
        let attempt = wf
            .annotation(crate::model::ANNOTATION_DELETION_ATTEMPTS)
            .and_then(|a| a.trim().parse::<u32>().ok())
            .unwrap_or(0)
            .saturating_add(1);
        Self {
            finished: wf.is_finished(),
            started: wf.is_started(),
            deleting: wf.is_being_deleted(),
            has_finalizer,
            force_finalizer_removal: wf.force_finalizer_removal(),
            attempt,
            budget,
            may_need_gc: needs_finalizer(wf),
            may_add_finalizer: true,
            processed: wf
                .status
                .artifact_gc_status
                .as_ref()
                .map(|s| s.strategies_processed.clone())
                .unwrap_or_default(),
            has_condition: has_gc_condition(raw),
        }
    }
}

impl PassContext {
    /// The context of a workflow that cannot be read: nothing can be pending, so its failure
    /// is reported and any finalizer of ours released; never added.
    pub fn unreadable(raw: &serde_json::Value, has_finalizer: bool, budget: u32) -> Self {
        Self {
            finished: true,
            started: true,
            deleting: !raw["metadata"]["deletionTimestamp"].is_null(),
            has_finalizer,
            force_finalizer_removal: false,
            attempt: 1,
            budget,
            may_need_gc: false,
            may_add_finalizer: false,
            processed: Default::default(),
            has_condition: has_gc_condition(raw),
        }
    }
}

/// Whether the object carries the `ArtifactGCError` condition.
pub fn has_gc_condition(raw: &serde_json::Value) -> bool {
    raw["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == CONDITION_GC_ERROR))
}

#[derive(Debug, Clone)]
pub struct PassOutcome {
    pub update: StatusUpdate,
    pub failures: Vec<Failure>,
    /// What artgc can never collect (a driver it does not support, nodes it cannot read):
    /// reported like failures, but settled, so they hold no finalizer.
    pub notes: Vec<Failure>,
    pub reclaimed: BTreeMap<Strategy, Reclaimed>,
    /// Why artifacts settled by this pass were kept.
    pub kept: Vec<KeptReason>,
    /// Work remains for later (OnWorkflowDeletion artifacts of a live workflow, or failures).
    pub pending: bool,
    /// Some artifact waits for running workflows that read it: check again later.
    pub waiting_on_readers: bool,
}

impl PassOutcome {
    pub fn artifacts_deleted(&self) -> u64 {
        self.reclaimed.values().map(|r| r.artifacts).sum()
    }
    pub fn objects_deleted(&self) -> u64 {
        self.reclaimed.values().map(|r| r.objects).sum()
    }
    pub fn bytes_reclaimed(&self) -> u64 {
        self.reclaimed.values().map(|r| r.bytes).sum()
    }
    pub fn bytes_hidden(&self) -> u64 {
        self.reclaimed.values().map(|r| r.hidden_bytes).sum()
    }
}

/// A declared strategy that may need GC: one that collects, or one Argo does not know (which
/// Argo's `HasArtifactGC` counts too).
fn may_collect(declared: Option<&str>) -> bool {
    match Strategy::parse(declared) {
        Ok(Some(s)) => s != Strategy::Never,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Whether a workflow declares GC, as Argo's `HasArtifactGC`: its workflow-level strategy (which
/// archived logs follow too) or any template's artifact strategy (own, WorkflowTemplate, stored
/// templateRef, inline), unknown values included. Node status is not read: a finalizer is never
/// held on the strength of what artgc may not be able to read.
pub fn needs_finalizer(wf: &Workflow) -> bool {
    if may_collect(wf.workflow_strategy()) {
        return true;
    }
    let declared = |a: &crate::model::Artifact| {
        may_collect(a.artifact_gc.as_ref().and_then(|g| g.strategy.as_deref()))
    };
    wf.all_templates()
        .iter()
        .any(|t| t.artifacts().any(declared))
}

/// Why an artifact settled by a pass was kept: the closed set of the kept metric's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeptReason {
    Never,
    Shared,
    ReadByRunning,
    BucketRoot,
    Memoized,
    /// Deleted, but objects written after the workflow finished were left.
    WrittenAfterWorkflow,
    /// Deleted, but versions Object Lock protects (retention, legal hold) were left.
    Locked,
    /// A driver artgc cannot delete.
    Unsupported,
    /// Refused for good (policy, an unsafe key, a location that cannot be resolved).
    Refused,
}

impl KeptReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Shared => "shared",
            Self::ReadByRunning => "read_by_running",
            Self::BucketRoot => "bucket_root",
            Self::Memoized => "memoized",
            Self::WrittenAfterWorkflow => "written_after_workflow",
            Self::Locked => "locked",
            Self::Unsupported => "unsupported",
            Self::Refused => "refused",
        }
    }

    fn of(reason: &KeepReason) -> Self {
        match reason {
            KeepReason::Never => Self::Never,
            KeepReason::Shared(_) => Self::Shared,
            KeepReason::ReadByRunning(_) => Self::ReadByRunning,
            KeepReason::BucketRoot => Self::BucketRoot,
            KeepReason::Memoized => Self::Memoized,
        }
    }
}

/// What one planned artifact came to in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactVerdict {
    /// Deleted; `written_after`: objects written after the workflow finished were left;
    /// `hidden_bytes`: left in versions behind delete markers; `locked`: versions Object Lock
    /// kept.
    Deleted {
        objects: u64,
        bytes: u64,
        hidden_bytes: u64,
        written_after: bool,
        locked: bool,
    },
    /// Kept on purpose. `pending`: only for now (running readers), deleted once they finish.
    Kept {
        reason: KeptReason,
        pending: bool,
    },
    /// Work left for a later pass: not due yet, not carried out (a dry run), stopped between
    /// batches (`cancelled`: shutdown or lost leadership), or not resolvable while running.
    Pending {
        cancelled: bool,
    },
    Failed(Failure),
    /// Never collectable by artgc (a driver it does not support, a refusal no retry changes):
    /// reported, but settled, kept for the reason given.
    Noted(Failure, KeptReason),
    /// Nothing to do: already deleted, or `Never` and not due.
    Settled,
}

/// The rule for one artifact: its plan decision, what the executor did with it (`None` when
/// it did nothing), and whether the workflow finished.
pub fn decide_artifact(
    art: &ArtifactPlan,
    done: Option<&ArtifactOutcome>,
    finished: bool,
) -> ArtifactVerdict {
    let failure = |category: &'static str, reason: String| Failure {
        what: art.node_and_name(),
        category,
        reason,
    };
    match &art.decision {
        Decision::Delete => match done {
            Some(o) => match &o.error {
                None => ArtifactVerdict::Deleted {
                    objects: o.objects,
                    bytes: o.bytes,
                    hidden_bytes: o.hidden_bytes,
                    written_after: o.written_after > 0,
                    locked: o.locked > 0,
                },
                // Stopped between batches: not a failure, and no proof earlier ones are over.
                Some(e) if e.is_cancelled() => ArtifactVerdict::Pending { cancelled: true },
                Some(e) => ArtifactVerdict::Failed(failure(e.category(), e.to_string())),
            },
            // Planned but not carried out (a dry run).
            None => ArtifactVerdict::Pending { cancelled: false },
        },
        // Readers never delete their inputs: kept now, deleted once they finish.
        Decision::Keep(reason) => ArtifactVerdict::Kept {
            reason: KeptReason::of(reason),
            pending: matches!(reason, KeepReason::ReadByRunning(_)),
        },
        Decision::Skip(SkipReason::AlreadyDeleted) => ArtifactVerdict::Settled,
        Decision::Skip(SkipReason::NotFinished(_) | SkipReason::NotSelected { .. }) => {
            match art.strategy {
                Strategy::Never => ArtifactVerdict::Settled,
                _ => ArtifactVerdict::Pending { cancelled: false },
            }
        }
        d @ Decision::Unsupported(_) if finished => {
            ArtifactVerdict::Noted(failure(d.category(), d.reason()), KeptReason::Unsupported)
        }
        Decision::Unsupported(_) => ArtifactVerdict::Settled,
        d @ Decision::Error(e) if finished && e.is_permanent() => {
            ArtifactVerdict::Noted(failure(d.category(), d.reason()), KeptReason::Refused)
        }
        d @ Decision::Error(_) if finished => {
            ArtifactVerdict::Failed(failure(d.category(), d.reason()))
        }
        Decision::Error(_) => ArtifactVerdict::Pending { cancelled: false },
    }
}

/// The verdicts of a pass, by strategy.
#[derive(Debug, Default)]
struct Tally {
    failed: BTreeSet<Strategy>,
    pending: BTreeSet<Strategy>,
    kept: Vec<(Strategy, KeptReason)>,
    cancelled: bool,
}

impl Tally {
    fn add(&mut self, strategy: Strategy, verdict: ArtifactVerdict, out: &mut PassOutcome) {
        match verdict {
            ArtifactVerdict::Deleted {
                objects,
                bytes,
                hidden_bytes,
                written_after,
                locked,
            } => {
                if written_after {
                    self.kept.push((strategy, KeptReason::WrittenAfterWorkflow));
                }
                if locked {
                    self.kept.push((strategy, KeptReason::Locked));
                }
                let r = out.reclaimed.entry(strategy).or_default();
                r.artifacts += 1;
                r.objects += objects;
                r.bytes += bytes;
                r.hidden_bytes += hidden_bytes;
            }
            ArtifactVerdict::Kept { reason, pending } => {
                if pending {
                    self.pending.insert(strategy);
                    out.waiting_on_readers = true;
                }
                self.kept.push((strategy, reason));
            }
            ArtifactVerdict::Pending { cancelled } => {
                self.pending.insert(strategy);
                self.cancelled |= cancelled;
            }
            ArtifactVerdict::Failed(f) => {
                self.failed.insert(strategy);
                out.failures.push(f);
            }
            ArtifactVerdict::Noted(f, reason) => {
                out.notes.push(f);
                self.kept.push((strategy, reason));
            }
            ArtifactVerdict::Settled => {}
        }
    }
}

/// Judges one workflow's pass (workflow `w` of the plan) from its plan and what the store did.
pub fn assess(
    wp: &WorkflowPlan,
    w: usize,
    execution: Option<&Execution>,
    ctx: &PassContext,
) -> PassOutcome {
    let mut out = PassOutcome {
        update: StatusUpdate::none(),
        failures: Vec::new(),
        notes: Vec::new(),
        reclaimed: BTreeMap::new(),
        kept: Vec::new(),
        pending: false,
        waiting_on_readers: false,
    };
    if let Some(e) = &wp.error {
        let f = Failure {
            what: "workflow".into(),
            category: e.category(),
            reason: e.to_string(),
        };
        match e.is_unreadable() {
            true => out.notes.push(f),
            false => out.failures.push(f),
        }
    }
    let mut tally = Tally::default();
    for (a, art) in wp.artifacts.iter().enumerate() {
        let done = execution.and_then(|e| e.get(ArtifactRef::new(w, a)));
        let verdict = decide_artifact(art, done, ctx.finished);
        if let ArtifactVerdict::Deleted { .. } = verdict {
            out.update.deleted.push(DeletedArtifact {
                node: art.node.clone(),
                index: art.index,
                name: art.name.clone(),
            });
        }
        tally.add(art.strategy, verdict, &mut out);
    }
    let failed = !out.failures.is_empty();
    out.pending = failed || !tally.pending.is_empty() || (!ctx.finished && ctx.may_need_gc);
    // A workflow that could not be planned settled nothing, readable later or never.
    out.update.processed =
        processed_strategies(ctx, wp.error.is_some(), &tally.failed, &tally.pending);
    out.kept = settled_keeps(ctx, &out.update.processed, tally.kept);
    let reported: Vec<Failure> = out.failures.iter().chain(&out.notes).cloned().collect();
    out.update.condition = condition_change(ctx, &reported, tally.cancelled);
    if failed && ctx.deleting && ctx.finished {
        out.update.deletion_attempts = Some(ctx.attempt);
    }
    out.update.finalizer = finalizer_change(ctx, Collection::of(out.pending, failed));
    out
}

/// The strategies this pass finished, to add to `strategiesProcessed`: those due (completion
/// once finished, deletion too once deleted) with no artifact failed or pending, and not
/// recorded already. None while the workflow could not be planned.
pub fn processed_strategies(
    ctx: &PassContext,
    whole_failed: bool,
    failed: &BTreeSet<Strategy>,
    pending: &BTreeSet<Strategy>,
) -> Vec<Strategy> {
    if !ctx.finished || whole_failed {
        return Vec::new();
    }
    let due: &[Strategy] = match ctx.deleting {
        true => &[Strategy::OnWorkflowCompletion, Strategy::OnWorkflowDeletion],
        false => &[Strategy::OnWorkflowCompletion],
    };
    due.iter()
        .copied()
        .filter(|s| !failed.contains(s) && !pending.contains(s))
        .filter(|s| ctx.processed.get(s.as_str()) != Some(&true))
        .collect()
}

/// The keep reasons to count for this pass: those of the strategies it settled; `Never` ones
/// once, with the workflow's first settled strategy.
fn settled_keeps(
    ctx: &PassContext,
    processed: &[Strategy],
    kept: Vec<(Strategy, KeptReason)>,
) -> Vec<KeptReason> {
    if processed.is_empty() {
        return Vec::new();
    }
    let first_settlement = !ctx.processed.values().any(|v| *v);
    kept.into_iter()
        .filter(|(s, reason)| match reason {
            KeptReason::Never => first_settlement,
            _ => processed.contains(s),
        })
        .map(|(_, r)| r)
        .collect()
}

/// The `ArtifactGCError` condition: set to what failed or was noted; cleared once a finished
/// workflow's pass ran through with nothing to report (a stopped pass proves nothing).
pub fn condition_change(
    ctx: &PassContext,
    reported: &[Failure],
    cancelled: bool,
) -> ConditionChange {
    if !reported.is_empty() {
        ConditionChange::Set(condition_message(reported))
    } else if ctx.has_condition && ctx.finished && !cancelled {
        ConditionChange::Clear
    } else {
        ConditionChange::Keep
    }
}

/// Where a workflow's collection stands after a pass, as the finalizer rule reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// Nothing is left to delete.
    Done,
    /// Something is left: not yet due, not tried, or a running workflow that may need GC.
    Pending,
    /// Something failed (and so is left).
    Failed,
}

impl Collection {
    pub fn of(pending: bool, failed: bool) -> Self {
        match (pending, failed) {
            (_, true) => Self::Failed,
            (true, false) => Self::Pending,
            (false, false) => Self::Done,
        }
    }
}

/// The one rule for artgc's finalizer. Added only while Argo runs a workflow that declares GC
/// (never to a finished one, never to one Argo never started); released once nothing is pending,
/// at once for a deleted workflow Argo never started, and by `forceFinalizerRemoval` when the
/// deletion passes failed `budget` times. A running workflow being deleted is first allowed to
/// finish, as in Argo.
pub fn finalizer_change(ctx: &PassContext, collection: Collection) -> FinalizerChange {
    let c = ctx;
    let pending = collection != Collection::Done;
    let failed = collection == Collection::Failed;
    match (c.deleting, c.finished, c.has_finalizer) {
        (_, _, true) if c.deleting && !c.finished && !c.started => {
            FinalizerChange::Remove { forced: false }
        }
        (true, true, true) if !pending => FinalizerChange::Remove { forced: false },
        (true, true, true) if failed && c.force_finalizer_removal && c.attempt >= c.budget => {
            FinalizerChange::Remove { forced: true }
        }
        (false, false, false) if c.may_add_finalizer && c.started && c.may_need_gc => {
            FinalizerChange::Add
        }
        (false, true, true) if !pending => FinalizerChange::Remove { forced: false },
        _ => FinalizerChange::Keep,
    }
}

/// The condition (and Warning event) text: what failed and why, bounded in length (a single
/// overlong reason is cut, never dropped).
pub fn condition_message(failures: &[Failure]) -> String {
    const MAX: usize = 1024;
    let mut msg = format!("artifact GC failed for {} artifact(s): ", failures.len());
    for (i, f) in failures.iter().enumerate() {
        let mut part = format!(
            "{}{}: {} ({})",
            if i > 0 { "; " } else { "" },
            f.what,
            f.reason,
            f.category
        );
        if msg.len() + part.len() > MAX {
            if i > 0 {
                msg.push_str(&format!("; and {} more", failures.len() - i));
                break;
            }
            let keep = format!(" ... ({})", f.category);
            let mut cut = MAX.saturating_sub(msg.len() + keep.len());
            while !part.is_char_boundary(cut) {
                cut -= 1;
            }
            part.truncate(cut);
            part.push_str(&keep);
        }
        msg.push_str(&part);
    }
    msg
}

/// The queue rule for a Workflow the watch cannot read at all: only its metadata is believed.
/// Passed (reported, then settled by the rules) once its completed label says it finished, or
/// once it is deleted while artgc's finalizer holds it.
pub fn wants_pass_unreadable(completed_label: bool, deleting: bool, has_finalizer: bool) -> bool {
    completed_label || (deleting && has_finalizer)
}

/// The queue rule for a Workflow whose offloaded nodes cannot be read now: passed once it
/// finished or is deleted, so that the pass reads them again and reports what it could not.
pub fn wants_pass_nodes_unread(finished: bool, deleting: bool) -> bool {
    finished || deleting
}

/// Whether the watch should queue a workflow: something to delete, record or release. `wp` is
/// its plan without Secrets (credential errors still count as work).
pub fn wants_pass(wf: &Workflow, wp: &WorkflowPlan, has_finalizer: bool) -> bool {
    if wf.is_being_deleted() {
        return has_finalizer && (wf.is_finished() || !wf.is_started());
    }
    if !wf.is_finished() {
        return !has_finalizer && wf.is_started() && needs_finalizer(wf);
    }
    let work = wp.error.is_some()
        || wp.artifacts.iter().any(|a| {
            matches!(
                a.decision,
                Decision::Delete | Decision::Error(_) | Decision::Unsupported(_)
            )
        });
    let pending = wp.artifacts.iter().any(|a| {
        a.strategy != Strategy::Never
            && matches!(a.decision, Decision::Skip(SkipReason::NotSelected { .. }))
    });
    // Versions may be reclaimed later (at deletion): record now when artgc saw it finished.
    let record_finish = wp.may_reclaim && wp.finished_seen.is_none() && pending;
    work || (has_finalizer && !pending) || record_finish
}
