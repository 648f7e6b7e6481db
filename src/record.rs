//! Writes a pass's [`StatusUpdate`] to the Workflow where Argo's UI and users read it, as the
//! merge patch [`artgc_core::status_patch`] builds. The CRD has no status subresource, so it is
//! one patch of the whole object, carrying `metadata.resourceVersion`: a concurrent writer makes
//! it fail with 409, and then the patch is rebuilt from a fresh read, so nobody's update is lost.

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::Value;

use artgc_core::outcome::StatusUpdate;
use artgc_core::status_patch::{merge_patch_bounded, probed_files_patch};

use crate::kube_api::WatchedWorkflow;
use crate::low_priority::{LowPriority, run_on as on};

/// Why a patch could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Build(String),
    /// The Workflow as the API server returned it is not JSON.
    #[error("reading the Workflow: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("updating the Workflow: {0}")]
    Api(#[from] kube::Error),
    #[error("the Workflow kept changing: {0} conflicting updates in a row")]
    Conflicts(u32),
}

impl RecordError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Build(_) | Self::Parse(_) => "record_build",
            Self::Api(_) => "kube_api",
            Self::Conflicts(_) => "kube_conflict",
        }
    }
}

/// How many conflicting writers to outlast before giving up until the next reconcile.
const MAX_CONFLICTS: u32 = 8;

/// Applies `update` to the Workflow, starting from `raw` (as read for the pass) and re-reading
/// on conflict. A Workflow that is gone, or was re-created under the same name, needs nothing
/// more. With `low`, the patch is built there (a big Workflow's takes a while).
pub async fn apply(
    api: &Api<DynamicObject>,
    raw: Value,
    update: &StatusUpdate,
    finalizer: &str,
    field_manager: &str,
    low: Option<&LowPriority>,
    max_node_status_bytes: u64,
) -> Result<(), RecordError> {
    let (update, finalizer) = (update.clone(), finalizer.to_string());
    patch_fresh(api, raw, field_manager, false, low, move |cur| {
        merge_patch_bounded(cur, &update, &finalizer, max_node_status_bytes)
    })
    .await
    .map(|_| ())
}

/// Records the artifacts whose probe found a file before they are deleted; returns the object
/// as written, for the pass's record, or `None` when the Workflow is gone or another object.
pub async fn mark_probed_files(
    api: &Api<DynamicObject>,
    raw: Value,
    files: &[String],
    field_manager: &str,
    low: Option<&LowPriority>,
) -> Result<Option<Value>, RecordError> {
    let files = files.to_vec();
    patch_fresh(api, raw, field_manager, true, low, move |cur| {
        probed_files_patch(cur, &files)
    })
    .await
}

/// Builds a patch from the object, applies it, and on 409 rebuilds it from a fresh read of the
/// same object (same uid). Returns the object as it now stands when `want` (else the patched
/// one is not parsed: a big Workflow's answer costs as much as reading it), `None` when gone or
/// re-created.
async fn patch_fresh(
    api: &Api<DynamicObject>,
    raw: Value,
    field_manager: &str,
    want: bool,
    low: Option<&LowPriority>,
    build: impl Fn(&Value) -> Result<Option<Value>, String> + Send + Sync + 'static,
) -> Result<Option<Value>, RecordError> {
    let build = std::sync::Arc::new(build);
    // The answers as text; parsed only where needed.
    let text_api: Api<WatchedWorkflow> = match api.namespace() {
        Some(ns) => Api::namespaced(api.clone().into_client(), ns),
        None => Api::all(api.clone().into_client()),
    };
    let name = raw["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let uid = raw["metadata"]["uid"].clone();
    let mut current = raw;
    for _ in 0..MAX_CONFLICTS {
        let b = build.clone();
        let (cur, patch) = on(low, move || {
            let patch = b(&current);
            (current, patch)
        })
        .await;
        current = cur;
        let Some(patch) = patch.map_err(RecordError::Build)? else {
            return Ok(Some(current));
        };
        let params = PatchParams {
            field_manager: Some(field_manager.to_string()),
            ..Default::default()
        };
        match text_api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) if !want => return Ok(Some(Value::Null)),
            Ok(obj) => {
                return on(low, move || serde_json::from_str(obj.raw.get()))
                    .await
                    .map(Some)
                    .map_err(RecordError::Parse);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => match text_api.get_opt(&name).await? {
                Some(obj) => {
                    current = on(low, move || serde_json::from_str(obj.raw.get()))
                        .await
                        .map_err(RecordError::Parse)?;
                    if !uid.is_null() && current["metadata"]["uid"] != uid {
                        tracing::info!(workflow = %name, "the Workflow was re-created under the same name; nothing recorded on the new one");
                        return Ok(None);
                    }
                }
                None => return Ok(None),
            },
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Err(RecordError::Conflicts(MAX_CONFLICTS))
}
