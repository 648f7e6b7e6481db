//! What a recorded pass tells: metrics, Kubernetes Events on the Workflow (its owner's view),
//! and logs.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType};
use tracing::{error, info, warn};

use crate::kube_api::workflows;
use crate::metrics;
use crate::record;
use artgc_core::outcome::{FinalizerChange, PassOutcome};
use artgc_core::plan::Strategy;

use super::ControllerState;
use artgc_core::keys::WorkflowKey;

/// A pass that panicked: the condition and a Warning Event on the workflow, so its owner sees
/// it, as for any other failure.
pub(super) async fn publish_internal_error(
    shared: &ControllerState,
    key: &WorkflowKey,
    what: &str,
) {
    let (ns, name) = (key.namespace(), key.name());
    let api = workflows(&shared.client, Some(ns));
    let Ok(Some(obj)) = api.get_opt(name).await else {
        return;
    };
    let Ok(raw) = serde_json::to_value(&obj) else {
        return;
    };
    let message = artgc_core::outcome::condition_message(&[artgc_core::outcome::Failure {
        what: "workflow".into(),
        category: "internal",
        reason: format!("artgc failed internally ({what}); this is a bug"),
    }]);
    let mut update = artgc_core::outcome::StatusUpdate::none();
    update.condition = artgc_core::outcome::ConditionChange::Set(message.clone());
    let reference = crate::kube_api::workflow_ref(&raw);
    let (finalizer, limit) = (
        &shared.config.finalizer,
        shared.config.max_node_status_bytes,
    );
    if let Err(e) = record::apply(&api, raw, &update, finalizer, "artgc", None, limit).await {
        warn!(workflow = %key, error = %e, "recording an internal error");
    }
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: "ArtifactGCFailed".into(),
        note: Some(message),
        action: "Collect".into(),
        secondary: None,
    };
    if let Err(e) = shared.recorder.publish(&ev, &reference).await {
        error!(workflow = %key, error = %e, "publishing an Event");
    }
}

/// When a recorded pass's workflow finished and was deleted: what its GC latency counts from.
pub(super) struct Since {
    pub finished_at: Option<jiff::Timestamp>,
    pub deleted_at: Option<jiff::Timestamp>,
}

/// Metrics, Events and logs for one recorded pass.
pub(super) async fn publish_outcome(
    shared: &ControllerState,
    key: &WorkflowKey,
    outcome: &PassOutcome,
    reference: &ObjectReference,
    since: Since,
) {
    count(shared.metrics(), key.namespace(), outcome, &since);
    if let FinalizerChange::Remove { forced } = outcome.update.finalizer {
        if forced {
            warn!(workflow = %key, "finalizer removed by forceFinalizerRemoval with deletions still failing");
        } else {
            info!(workflow = %key, "finalizer removed");
        }
    }
    if outcome.artifacts_deleted() > 0 || !outcome.failures.is_empty() {
        info!(
            workflow = %key,
            artifacts = outcome.artifacts_deleted(),
            objects = outcome.objects_deleted(),
            bytes = outcome.bytes_reclaimed(),
            hidden_bytes = outcome.bytes_hidden(),
            failed = outcome.failures.len(),
            "artifact GC pass"
        );
    }
    let notices = artgc_core::notice::of_pass(outcome, since.deleted_at.is_some());
    for ev in notices.into_iter().map(kube_event) {
        if let Err(e) = shared.recorder.publish(&ev, reference).await {
            error!(workflow = %key, error = %e, "publishing an Event");
        }
    }
}

/// The pass in the metrics: what it reclaimed, failed and kept, its GC latency, the finalizer.
fn count(m: &metrics::Metrics, ns: &str, outcome: &PassOutcome, since: &Since) {
    for (strategy, r) in &outcome.reclaimed {
        let l = metrics::NamespaceStrategy {
            namespace: ns.into(),
            strategy: strategy.as_str(),
        };
        m.artifacts_deleted.get_or_create(&l).inc_by(r.artifacts);
        m.objects_deleted.get_or_create(&l).inc_by(r.objects);
        m.bytes_reclaimed.get_or_create(&l).inc_by(r.bytes);
        m.bytes_hidden.get_or_create(&l).inc_by(r.hidden_bytes);
    }
    for f in &outcome.failures {
        m.artifacts_failed
            .get_or_create(&metrics::NamespaceCategory {
                namespace: ns.into(),
                category: f.category,
            })
            .inc();
    }
    for reason in &outcome.kept {
        m.artifacts_kept
            .get_or_create(&metrics::Reason {
                reason: reason.as_str(),
            })
            .inc();
    }
    let now = jiff::Timestamp::now();
    for s in &outcome.update.processed {
        let from = match s {
            Strategy::OnWorkflowDeletion => since.deleted_at,
            _ => since.finished_at.or(since.deleted_at),
        };
        if let Some(from) = from {
            let secs = now.duration_since(from).as_secs_f64().max(0.0);
            m.gc_latency
                .get_or_create(&metrics::StrategyLabel {
                    strategy: s.as_str(),
                })
                .observe(secs);
        }
    }
    if let FinalizerChange::Remove { forced } = outcome.update.finalizer {
        m.finalizers_removed
            .get_or_create(&metrics::NamespaceForced {
                namespace: ns.into(),
                forced: if forced { "true" } else { "false" },
            })
            .inc();
    }
}

/// A notice of the core's as the Event kube-rs publishes.
fn kube_event(n: artgc_core::notice::Notice) -> KubeEvent {
    KubeEvent {
        type_: match n.warning {
            true => EventType::Warning,
            false => EventType::Normal,
        },
        reason: n.reason.into(),
        note: Some(n.note),
        action: n.action.into(),
        secondary: None,
    }
}
