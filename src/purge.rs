//! `artgc plan` / `artgc purge` over a live cluster: select Workflows (names, namespace, label
//! selector, age), plan them against the keys every other workflow in the cluster uses, and
//! after deleting, record the same status as the controller.

use std::time::Duration;

use kube::api::ListParams;
use serde_json::Value;

use crate::api::{ClusterReader, workflows};
use crate::error::InputError;
use crate::execution::Execution;
use crate::keys::KeyIndex;
use crate::manifests::WorkflowInput;
use crate::outcome::{PassContext, assess};
use crate::plan::{GcPlan, PlanOptions, plan_with_index, workflow_key_uses};
use crate::record;

/// True when `finished_at` (RFC 3339) lies at least `age` in the past; unfinished is false.
pub fn finished_before(finished_at: Option<&str>, age: Duration) -> bool {
    let Some(t) = finished_at.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return false;
    };
    let Ok(age) = jiff::SignedDuration::try_from(age) else {
        return false;
    };
    jiff::Timestamp::now().duration_since(t) >= age
}

/// What `plan`/`purge` over a live cluster could not read from it: a cluster error, not a file's.
fn cluster_error(what: &str, e: impl std::fmt::Display) -> InputError {
    InputError::Cluster {
        what: what.into(),
        message: e.to_string(),
    }
}

async fn list_all(
    api: &kube::Api<kube::api::DynamicObject>,
    lp: &ListParams,
) -> Result<Vec<Value>, kube::Error> {
    let mut out = Vec::new();
    let mut lp = lp.clone().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for o in page.items {
            out.push(serde_json::to_value(o).unwrap_or(Value::Null));
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
}

/// Lists Workflows page by page (500 a page) into `index`, keeping only their key uses.
async fn index_pages(
    api: &kube::Api<kube::api::DynamicObject>,
    reader: &ClusterReader,
    default_ns: &str,
    index: &mut KeyIndex,
) -> Result<(), kube::Error> {
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for o in page.items {
            let v = serde_json::to_value(o).unwrap_or(Value::Null);
            if let WorkflowInput::Valid(wf) = WorkflowInput::from_value(v, default_ns) {
                let s = reader.state_for(&wf, None).await?;
                let key = KeyIndex::workflow_key(wf.namespace(), wf.name());
                index.set_workflow(&key, workflow_key_uses(&wf, &s));
            }
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(()),
        }
    }
}

/// A plan and, for the cluster source, what recording it needs.
pub struct Loaded {
    pub plan: GcPlan,
    pub cluster: Option<(kube::Client, Vec<serde_json::Value>)>,
}

/// Which Workflows of a live cluster a run covers, as plain values (the command line builds it).
pub struct ClusterSelection {
    pub namespace: String,
    pub all_namespaces: bool,
    pub selector: Option<String>,
    /// Exactly these Workflows of `namespace`; empty: every one the rest selects.
    pub names: Vec<String>,
    pub older_than: Option<std::time::Duration>,
    pub argo: crate::cluster::ArgoConfigMapRef,
    pub policy: std::sync::Arc<crate::policy::Policy>,
}

pub async fn load_from_cluster(
    source: &ClusterSelection,
    opts: &PlanOptions,
) -> Result<Loaded, InputError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| InputError::Io {
            path: "kubeconfig".into(),
            message: e.to_string(),
        })?;
    let ns = (!source.all_namespaces).then_some(source.namespace.as_str());
    let api = workflows(&client, ns);
    let mut lp = ListParams::default();
    if let Some(sel) = &source.selector {
        lp = lp.labels(sel);
    }
    let mut selected = Vec::new();
    if source.names.is_empty() {
        selected = list_all(&api, &lp)
            .await
            .map_err(|e| cluster_error("listing Workflows", e))?;
    } else {
        for name in &source.names {
            let obj = api
                .get(name)
                .await
                .map_err(|e| cluster_error(&format!("Workflow {}/{name}", source.namespace), e))?;
            selected.push(serde_json::to_value(obj).unwrap_or(Value::Null));
        }
    }
    let default_ns = source.namespace.clone();
    let mut inputs: Vec<WorkflowInput> = selected
        .iter()
        .map(|v| WorkflowInput::from_value(v.clone(), &default_ns))
        .collect();
    let mut raws = selected;
    if let Some(age) = source.older_than {
        let keep: Vec<bool> = inputs
            .iter()
            .map(|w| match w {
                WorkflowInput::Valid(wf) => finished_before(wf.status.finished_at.as_deref(), age),
                WorkflowInput::Invalid { .. } => true,
            })
            .collect();
        let mut it = keep.iter();
        inputs.retain(|_| *it.next().expect("same length"));
        let mut it = keep.iter();
        raws.retain(|_| *it.next().expect("same length"));
    }

    let policy = source.policy.clone();
    let reader = ClusterReader::new(client.clone(), source.argo.clone(), policy.clone());
    let mut state = crate::cluster::ClusterState::new(source.argo.clone()).with_policy(policy);
    for w in &inputs {
        if let WorkflowInput::Valid(wf) = w {
            let s = reader
                .state_for(wf, Some(crate::api::named_secrets(wf)))
                .await
                .map_err(|e| cluster_error("reading ConfigMaps and Secrets", e))?;
            state.absorb(s);
        }
    }

    // Every other workflow's keys, cluster-wide when allowed, else in the namespace: read a
    // page at a time and reduced to its key uses, so memory holds the index, not the objects.
    let mut index = KeyIndex::default();
    let everyone = index_pages(&workflows(&client, None), &reader, &default_ns, &mut index).await;
    if let Err(e) = everyone {
        tracing::warn!(error = %e, "cannot list Workflows cluster-wide; shared keys are checked within the namespace only");
        index = KeyIndex::default();
        index_pages(
            &workflows(&client, Some(&source.namespace)),
            &reader,
            &default_ns,
            &mut index,
        )
        .await
        .map_err(|e| cluster_error("listing Workflows", e))?;
    }
    let plan = plan_with_index(&inputs, &state, opts, Some(&index));
    Ok(Loaded {
        plan,
        cluster: Some((client, raws)),
    })
}

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
    for (w, a) in probed.files_to_mark() {
        let ap = &plan.workflows[w].artifacts[a];
        by_workflow
            .entry(w)
            .or_default()
            .push(format!("{}/{}", ap.node, ap.name));
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
