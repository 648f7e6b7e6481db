//! `artgc purge` over a live cluster, after deleting: records on each Workflow what the
//! controller would (probed files before deletion, then the outcome). Selecting and planning
//! is [`crate::source`]'s.

use serde_json::Value;

use artgc_core::execution::Execution;
use artgc_core::inventory::WorkflowInput;
use artgc_core::outcome::{PassContext, assess};
use artgc_core::plan::GcPlan;

use crate::kube_api::workflows;
use crate::record;

/// Records, per workflow, the artifacts whose probe found a file (see
/// [`crate::execute::Probed::files_to_mark`]) before anything is deleted; `raws` are updated
/// to the objects as written. A workflow that is gone or re-created is left out of the plan's
/// deletions by failing the whole run: nothing is deleted on an object that is not there.
pub async fn mark_files(
    client: &kube::Client,
    plan: &GcPlan,
    probed: &crate::execute::Probed<'_>,
    raws: &mut [Value],
) -> Result<(), String> {
    let mut by_workflow: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for r in probed.files_to_mark() {
        by_workflow
            .entry(r.workflow)
            .or_default()
            .push(plan.artifact(r).node_and_name());
    }
    for (w, files) in by_workflow {
        let wp = &plan.workflows[w];
        let api = workflows(client, Some(&wp.namespace));
        match record::mark_probed_files(&api, raws[w].clone(), &files, "artgc-purge", None).await {
            Ok(Some(v)) => raws[w] = v,
            Ok(None) => {
                return Err(format!(
                    "Workflow {}/{} is gone or was re-created",
                    wp.namespace, wp.name
                ));
            }
            Err(e) => return Err(format!("Workflow {}/{}: {e}", wp.namespace, wp.name)),
        }
    }
    Ok(())
}

/// Records each workflow's outcome as the controller does (it never adds a finalizer, and
/// never forces one off: that takes the controller's retry budget). Returns the failures.
pub async fn record_all(
    client: &kube::Client,
    plan: &GcPlan,
    execution: &Execution,
    raws: Vec<Value>,
    finalizer: &str,
) -> usize {
    let mut failed = 0;
    for (w, (wp, raw)) in plan.workflows.iter().zip(raws).enumerate() {
        let input = WorkflowInput::from_value(raw.clone(), &wp.namespace);
        let WorkflowInput::Valid(wf) = input else {
            continue;
        };
        let holds = wf
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == finalizer);
        let ctx = PassContext {
            may_add_finalizer: false,
            ..PassContext::of(&wf, &raw, holds, u32::MAX)
        };
        let outcome = assess(wp, w, Some(execution), &ctx);
        let api = workflows(client, Some(&wp.namespace));
        if let Err(e) =
            record::apply(&api, raw, &outcome.update, finalizer, "artgc-purge", None).await
        {
            failed += 1;
            tracing::error!(workflow = %format!("{}/{}", wp.namespace, wp.name), error = %e, "recording the outcome");
        }
    }
    failed
}
