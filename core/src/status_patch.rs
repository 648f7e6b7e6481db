//! The merge patches that record a pass on a Workflow where Argo's UI and users read it:
//! `deleted: true` on artifacts (in `status.nodes`, or `status.compressedNodes` re-encoded as it
//! came), `status.artifactGCStatus.strategiesProcessed`, the `ArtifactGCError` condition, the
//! finalizer and the probed-files annotation. Each carries the resourceVersion and uid it was
//! built against, so a concurrent writer or a re-created Workflow makes it fail with 409.
//! Applying them is the IO crate's (`artgc::record`).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::model::{
    ANNOTATION_DELETION_ATTEMPTS, ANNOTATION_FINISHED_SEEN, ANNOTATION_OFFLOADED_DELETED,
    ANNOTATION_PROBED_FILES,
};
use crate::nodes::{compress, decompress_bounded};
use crate::outcome::{
    CONDITION_GC_ERROR, ConditionChange, DeletedArtifact, FinalizerChange, StatusUpdate,
};
use crate::plan::Strategy;

/// [`merge_patch_bounded`] within the default `--max-node-status-bytes`.
pub fn merge_patch(
    raw: &Value,
    update: &StatusUpdate,
    finalizer: &str,
) -> Result<Option<Value>, String> {
    merge_patch_bounded(
        raw,
        update,
        finalizer,
        crate::nodes::DEFAULT_MAX_DECOMPRESSED,
    )
}

/// The merge patch that applies `update` to the object `raw`, or `None` when it would change
/// nothing. Each field is its own rule below; the patch carries only what changes. `limit`
/// bounds compressed nodes, re-read here to be written back (`--max-node-status-bytes`).
pub fn merge_patch_bounded(
    raw: &Value,
    update: &StatusUpdate,
    finalizer: &str,
    limit: u64,
) -> Result<Option<Value>, String> {
    let mut status = Map::new();
    let mut metadata = Map::new();
    let mut annotations = Map::new();
    let raw_status = &raw["status"];
    if offloaded(raw_status) {
        if let Some(value) = offloaded_marks(raw, &update.deleted)? {
            annotations.insert(ANNOTATION_OFFLOADED_DELETED.into(), Value::String(value));
        }
    } else if let Some((field, value)) = deleted_marks(raw_status, &update.deleted, limit)? {
        status.insert(field.into(), value);
    }
    if let Some(value) = strategies_processed(raw_status, &update.processed) {
        status.insert("artifactGCStatus".into(), value);
    }
    if let Some(list) = conditions(raw_status, &update.condition) {
        status.insert("conditions".into(), Value::Array(list));
    }
    if let Some(list) = finalizers(raw, update.finalizer, finalizer) {
        metadata.insert("finalizers".into(), list);
    }
    if let Some(n) = deletion_attempts(raw, update.deletion_attempts) {
        annotations.insert(ANNOTATION_DELETION_ATTEMPTS.into(), Value::String(n));
    }
    if let Some(t) = finished_seen(raw, update.finished_seen) {
        annotations.insert(ANNOTATION_FINISHED_SEEN.into(), Value::String(t));
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    if status.is_empty() && metadata.is_empty() {
        return Ok(None);
    }
    preconditions(raw, &mut metadata)?;
    let mut patch = Map::new();
    patch.insert("metadata".into(), Value::Object(metadata));
    if !status.is_empty() {
        patch.insert("status".into(), Value::Object(status));
    }
    Ok(Some(Value::Object(patch)))
}

/// `deleted: true` on the artifacts deleted, where the nodes are: `status.nodes` (only the
/// changed nodes' artifact lists), or `status.compressedNodes` re-encoded as it came.
fn deleted_marks(
    raw_status: &Value,
    deleted: &[DeletedArtifact],
    limit: u64,
) -> Result<Option<(&'static str, Value)>, String> {
    if deleted.is_empty() {
        return Ok(None);
    }
    // By node, once: a workflow may have tens of thousands of both.
    let mut by_node: HashMap<&str, Vec<&DeletedArtifact>> = HashMap::new();
    for d in deleted {
        by_node.entry(d.node.as_str()).or_default().push(d);
    }
    if let Some(nodes) = raw_status["nodes"].as_object().filter(|n| !n.is_empty()) {
        let mut patch_nodes = Map::new();
        for (id, deleted) in &by_node {
            let Some(node) = nodes.get(*id) else { continue };
            let mut arts = node["outputs"]["artifacts"].clone();
            if mark_deleted(&mut arts, deleted) {
                patch_nodes.insert(id.to_string(), json!({"outputs": {"artifacts": arts}}));
            }
        }
        return Ok((!patch_nodes.is_empty()).then_some(("nodes", Value::Object(patch_nodes))));
    }
    let Some(packed) = raw_status["compressedNodes"].as_str() else {
        return Ok(None);
    };
    let (bytes, encoding) =
        decompress_bounded(packed, limit).map_err(|e| format!("status.compressedNodes: {e}"))?;
    let mut nodes: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|e| format!("status.compressedNodes: {e}"))?;
    let mut changed = false;
    for (id, deleted) in &by_node {
        if let Some(arts) = nodes
            .get_mut(*id)
            .and_then(|n| n.get_mut("outputs"))
            .and_then(|o| o.get_mut("artifacts"))
        {
            changed |= mark_deleted(arts, deleted);
        }
    }
    if !changed {
        return Ok(None);
    }
    let json = serde_json::to_vec(&nodes).map_err(|e| e.to_string())?;
    let packed = compress(&json, encoding)
        .map_err(|e| format!("re-encoding status.compressedNodes: {e}"))?;
    Ok(Some(("compressedNodes", Value::String(packed))))
}

/// `status.artifactGCStatus` with the strategies newly processed (merged into Argo's map).
fn strategies_processed(raw_status: &Value, processed: &[Strategy]) -> Option<Value> {
    let current = &raw_status["artifactGCStatus"]["strategiesProcessed"];
    let newly: Map<String, Value> = processed
        .iter()
        .filter(|s| current[s.as_str()] != Value::Bool(true))
        .map(|s| (s.as_str().to_string(), Value::Bool(true)))
        .collect();
    (!newly.is_empty()).then(|| json!({ "strategiesProcessed": newly }))
}

/// The whole new `status.conditions` list (a merge patch replaces lists) when ours changes:
/// set replaces our condition and keeps everyone else's; clear drops only ours.
fn conditions(raw_status: &Value, change: &ConditionChange) -> Option<Vec<Value>> {
    let current: &[Value] = raw_status["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is_ours = |c: &&Value| c["type"] == CONDITION_GC_ERROR;
    let others = || current.iter().filter(|c| !is_ours(c)).cloned();
    match change {
        ConditionChange::Keep => None,
        ConditionChange::Clear => current
            .iter()
            .any(|c| is_ours(&c))
            .then(|| others().collect()),
        ConditionChange::Set(message) => {
            let ours = json!({"type": CONDITION_GC_ERROR, "status": "True", "message": message});
            if current.iter().find(is_ours) == Some(&ours) {
                return None;
            }
            Some(others().chain([ours]).collect())
        }
    }
}

/// The whole new `metadata.finalizers` list when ours is added or removed; others untouched.
fn finalizers(raw: &Value, change: FinalizerChange, finalizer: &str) -> Option<Value> {
    let current: Vec<&str> = raw["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let present = current.contains(&finalizer);
    match change {
        FinalizerChange::Add if !present => Some(json!(
            current.into_iter().chain([finalizer]).collect::<Vec<_>>()
        )),
        FinalizerChange::Remove { .. } if present => Some(json!(
            current
                .into_iter()
                .filter(|f| *f != finalizer)
                .collect::<Vec<_>>()
        )),
        _ => None,
    }
}

/// The failed-deletion-passes annotation, when it changes.
fn deletion_attempts(raw: &Value, attempts: Option<u32>) -> Option<String> {
    let n = attempts?.to_string();
    let current = raw["metadata"]["annotations"][ANNOTATION_DELETION_ATTEMPTS].as_str();
    (current != Some(n.as_str())).then_some(n)
}

/// Nodes in Argo's database only: artgc records its deletions in an annotation instead.
fn offloaded(raw_status: &Value) -> bool {
    raw_status["nodes"].as_object().is_none_or(|n| n.is_empty())
        && raw_status["compressedNodes"]
            .as_str()
            .is_none_or(str::is_empty)
        && raw_status["offloadNodeStatusVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
}

/// The offloaded-deleted annotation with `deleted` added (`node/artifact` lines, sorted), or
/// `None` when it holds them already.
fn offloaded_marks(raw: &Value, deleted: &[DeletedArtifact]) -> Result<Option<String>, String> {
    if deleted.is_empty() {
        return Ok(None);
    }
    let current = raw["metadata"]["annotations"][ANNOTATION_OFFLOADED_DELETED]
        .as_str()
        .unwrap_or_default();
    let mut lines: std::collections::BTreeSet<String> = crate::nodes::offloaded_marks(current)
        .map_err(|e| format!("metadata.annotations[{ANNOTATION_OFFLOADED_DELETED}]: {e}"))?
        .into_iter()
        .collect();
    let before = lines.len();
    lines.extend(deleted.iter().map(|d| format!("{}/{}", d.node, d.name)));
    if lines.len() == before {
        return Ok(None);
    }
    let lines: Vec<String> = lines.into_iter().collect();
    crate::nodes::offloaded_marks_value(&lines).map(Some)
}

/// Sets `deleted: true` on one node's artifacts named in `deleted`; true if any changed.
/// The index is checked against the name, and the name is searched if they disagree.
fn mark_deleted(arts: &mut Value, deleted: &[&DeletedArtifact]) -> bool {
    let Some(list) = arts.as_array_mut() else {
        return false;
    };
    let mut changed = false;
    for d in deleted {
        let at = if list
            .get(d.index)
            .is_some_and(|a| a["name"] == d.name.as_str())
        {
            Some(d.index)
        } else {
            list.iter().position(|a| a["name"] == d.name.as_str())
        };
        if let Some(i) = at
            && list[i]["deleted"] != Value::Bool(true)
            && let Some(obj) = list[i].as_object_mut()
        {
            obj.insert("deleted".into(), Value::Bool(true));
            changed = true;
        }
    }
    changed
}

/// The resourceVersion and uid the patch is built against: a concurrent writer makes it fail with
/// 409, and so does a Workflow deleted and created again under the same name (another object,
/// which must never receive this one's marks).
fn preconditions(raw: &Value, metadata: &mut Map<String, Value>) -> Result<(), String> {
    let rv = raw["metadata"]["resourceVersion"].clone();
    if rv.is_null() {
        return Err("metadata.resourceVersion is missing".into());
    }
    metadata.insert("resourceVersion".into(), rv);
    let uid = raw["metadata"]["uid"].clone();
    if !uid.is_null() {
        metadata.insert("uid".into(), uid);
    }
    Ok(())
}

/// The finished-seen record to write: only ever lowered (the object's own value, when it parses
/// and is no later, stays).
fn finished_seen(raw: &Value, record: Option<jiff::Timestamp>) -> Option<String> {
    let record = record?;
    let current = raw["metadata"]["annotations"][ANNOTATION_FINISHED_SEEN]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match current {
        Some(t) if t <= record => None,
        _ => Some(record.to_string()),
    }
}

/// The merge patch that adds `files` (`node/artifact` lines) to the probed-files annotation,
/// or `None` when it holds them already.
pub fn probed_files_patch(raw: &Value, files: &[String]) -> Result<Option<Value>, String> {
    let current = raw["metadata"]["annotations"][ANNOTATION_PROBED_FILES]
        .as_str()
        .unwrap_or_default();
    let mut lines: Vec<&str> = current.lines().filter(|l| !l.is_empty()).collect();
    let before = lines.len();
    for f in files {
        if !lines.contains(&f.as_str()) {
            lines.push(f);
        }
    }
    if lines.len() == before {
        return Ok(None);
    }
    let mut metadata = Map::new();
    metadata.insert(
        "annotations".into(),
        json!({ ANNOTATION_PROBED_FILES: lines.join("\n") }),
    );
    preconditions(raw, &mut metadata)?;
    Ok(Some(json!({ "metadata": metadata })))
}
