//! One GC pass over a plan, the same for both front ends: the controller runs it over the one
//! Workflow it just read, `artgc purge` over its selection. The steps, in order, and what each
//! touches:
//!
//! 1. **probe** (store): what each due artifact amounts to: a file, a directory, nothing.
//! 2. **mark** (API server): on each Workflow, the artifacts whose probe found a file, before
//!    anything is deleted, so that no later pass takes the gone file for a directory.
//! 3. **delete** (store), unless a dry run.
//! 4. **judge** (pure): each workflow's outcome ([`artgc_core::outcome::judge`]).
//! 5. **record** (API server): the outcome on each Workflow, finalizer included.
//!
//! Without a [`Recorder`] (a plan read from files, `--no-record`) or in a dry run, steps 2 and
//! 5 are left out: the outcomes are only reported.

use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::Value;

use artgc_core::execution::Execution;
use artgc_core::inventory::WorkflowInput;
use artgc_core::outcome::{PassContext, PassOutcome, judge};
use artgc_core::plan::GcPlan;

use crate::execute::{Mode, Run, delete, probe};
use crate::kube_api::workflows;
use crate::low_priority::LowPriority;
use crate::record::{self, RecordError};
use crate::store::ObjectStore;

/// Whether a Workflow may be written now (a controller that lost its leadership may not).
pub trait WriteGate: Sync {
    fn may_write(&self) -> bool;
}

/// Always open: a one-off run writes whenever it has something to write.
pub struct Open;
impl WriteGate for Open {
    fn may_write(&self) -> bool {
        true
    }
}

/// What a front end may do with artgc's finalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finalizers {
    /// The controller's: add it while Argo runs a workflow that declares GC, remove it once
    /// nothing is pending, force it off after `budget` failed deletion passes.
    Manage { budget: u32 },
    /// A one-off run's: remove it once nothing is pending, never add it (nobody would be there
    /// to remove it) and never force it (that takes the controller's retry budget).
    ReleaseOnly,
}

/// Who records a pass on the Workflows, and how.
pub struct Recorder<'a> {
    pub client: &'a kube::Client,
    /// The field manager of every write: `artgc` for the controller, `artgc-purge` for the CLI.
    pub field_manager: &'a str,
    pub finalizer: &'a str,
    pub finalizers: Finalizers,
    /// Where patches of a big Workflow are built.
    pub low: Option<&'a LowPriority>,
    /// `--max-node-status-bytes`: bounds compressed nodes re-read to write them back.
    pub max_node_status_bytes: u64,
    pub gate: &'a dyn WriteGate,
    /// The plan's workflows (same order), as read for the pass.
    pub subjects: Vec<Subject<'a>>,
}

/// One workflow of the plan, as read for the pass.
pub struct Subject<'a> {
    /// The object as JSON: what the writes start from.
    pub object: Value,
    /// The same object as read (its nodes put back where Argo offloaded them).
    pub input: &'a WorkflowInput,
}

/// Why a pass stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A Workflow the probe found files for is gone or was re-created: nothing is deleted on
    /// an object that is not there.
    #[error("Workflow {0} is gone or was re-created")]
    Gone(String),
    #[error("Workflow {workflow}: {source}")]
    Record {
        workflow: String,
        #[source]
        source: RecordError,
    },
    /// The write gate closed: nothing more is written.
    #[error("Workflow {0}: not written, this replica no longer leads")]
    Fenced(String),
}

/// What a pass did.
pub struct Passed {
    pub execution: Execution,
    /// With a recorder, each workflow's outcome and record (the Workflow as it stood when
    /// written, or why it was not written), in the plan's order. Empty without one.
    pub recorded: Vec<(PassOutcome, Result<ObjectReference, PassError>)>,
}

/// Runs the pass. Fails only at the mark step, before anything is deleted; a failed record is one
/// workflow's, in [`Passed::recorded`].
pub async fn run(
    plan: &GcPlan,
    store: &ObjectStore,
    run: Run<'_>,
    recorder: Option<Recorder<'_>>,
) -> Result<Passed, PassError> {
    // `--reclaim-versions` decides the finished-seen record too.
    let operator_reclaims = store.options().reclaim_versions;
    let mut recorder = recorder.filter(|_| run.mode == Mode::Delete);
    let contexts: Vec<PassContext> = match &recorder {
        Some(r) => {
            debug_assert_eq!(plan.workflows.len(), r.subjects.len());
            r.subjects.iter().map(|s| context(s, r)).collect()
        }
        None => Vec::new(),
    };

    let execution = if plan.artifacts().any(|(_, a)| a.connection.is_some()) {
        let probed = probe(plan, store, run).await;
        if let Some(r) = &mut recorder {
            mark(plan, &probed, r).await?;
        }
        delete(plan, probed, store, run).await
    } else {
        Execution::default()
    };

    let mut recorded = Vec::new();
    if let Some(mut r) = recorder {
        let now = jiff::Timestamp::now();
        let subjects = std::mem::take(&mut r.subjects);
        for (w, ((wp, ctx), subject)) in plan
            .workflows
            .iter()
            .zip(&contexts)
            .zip(subjects)
            .enumerate()
        {
            let outcome = judge(wp, w, Some(&execution), ctx, operator_reclaims, now);
            let workflow = format!("{}/{}", wp.namespace, wp.name);
            let written = write(&r, &wp.namespace, subject.object, &outcome, workflow).await;
            recorded.push((outcome, written));
        }
    }
    Ok(Passed {
        execution,
        recorded,
    })
}

/// The facts the judgement reads off the object, as read.
fn context(s: &Subject<'_>, r: &Recorder<'_>) -> PassContext {
    let holds = s.object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|f| f == r.finalizer));
    let mode = r.finalizers;
    let budget = match mode {
        Finalizers::Manage { budget } => budget,
        Finalizers::ReleaseOnly => u32::MAX,
    };
    match s.input {
        WorkflowInput::Valid(wf) => PassContext {
            may_add_finalizer: matches!(mode, Finalizers::Manage { .. }),
            ..PassContext::of(wf, &s.object, holds, budget)
        },
        WorkflowInput::Invalid { .. } => PassContext::unreadable(&s.object, holds, budget),
    }
}

/// Step 2: records, per workflow, the artifacts whose probe found a file; `objects` become the
/// Workflows as written.
async fn mark(
    plan: &GcPlan,
    probed: &crate::execute::Probed<'_>,
    r: &mut Recorder<'_>,
) -> Result<(), PassError> {
    let mut by_workflow: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for a in probed.files_to_mark() {
        by_workflow
            .entry(a.workflow)
            .or_default()
            .push(plan.artifact(a).node_and_name());
    }
    for (w, files) in by_workflow {
        let wp = &plan.workflows[w];
        let workflow = format!("{}/{}", wp.namespace, wp.name);
        if !r.gate.may_write() {
            return Err(PassError::Fenced(workflow));
        }
        let api = workflows(r.client, Some(&wp.namespace));
        let object = std::mem::take(&mut r.subjects[w].object);
        match record::mark_probed_files(&api, object, &files, r.field_manager, r.low).await {
            Ok(Some(v)) => r.subjects[w].object = v,
            Ok(None) => return Err(PassError::Gone(workflow)),
            Err(source) => return Err(PassError::Record { workflow, source }),
        }
    }
    Ok(())
}

/// Step 5 for one workflow.
async fn write(
    r: &Recorder<'_>,
    namespace: &str,
    object: Value,
    outcome: &PassOutcome,
    workflow: String,
) -> Result<ObjectReference, PassError> {
    if !r.gate.may_write() {
        return Err(PassError::Fenced(workflow));
    }
    let reference = crate::kube_api::workflow_ref(&object);
    let api = workflows(r.client, Some(namespace));
    record::apply(
        &api,
        object,
        &outcome.update,
        r.finalizer,
        r.field_manager,
        r.low,
        r.max_node_status_bytes,
    )
    .await
    .map_err(|source| PassError::Record { workflow, source })?;
    Ok(reference)
}
