//! The merge patches that record a pass on a Workflow where Argo's UI and users read it:
//! `deleted: true` on artifacts (in `status.nodes`, or `status.compressedNodes` re-encoded as it
//! came), `status.artifactGCStatus.strategiesProcessed`, the `ArtifactGCError` condition, the
//! finalizer and the probed-files annotation. Each carries the resourceVersion and uid it was
//! built against, so a concurrent writer or a re-created Workflow makes it fail with 409.
//! Applying them is the IO crate's (`artgc::record`).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::model::{ANNOTATION_DELETION_ATTEMPTS, ANNOTATION_PROBED_FILES};
use crate::nodes::{compress, decompress};
use crate::outcome::{
    CONDITION_GC_ERROR, ConditionChange, DeletedArtifact, FinalizerChange, StatusUpdate,
};

/// The merge patch that applies `update` to the object `raw`, or `None` when it would change
/// nothing.
pub fn merge_patch(
    raw: &Value,
    update: &StatusUpdate,
    finalizer: &str,
) -> Result<Option<Value>, String> {
    let mut status = Map::new();
    let mut metadata = Map::new();
    let raw_status = &raw["status"];

    if !update.deleted.is_empty() {
        // By node, once: a workflow may have tens of thousands of both.
        let mut by_node: HashMap<&str, Vec<&DeletedArtifact>> = HashMap::new();
        for d in &update.deleted {
            by_node.entry(d.node.as_str()).or_default().push(d);
        }
        let plain = raw_status["nodes"].as_object().filter(|n| !n.is_empty());
        if let Some(nodes) = plain {
            let mut patch_nodes = Map::new();
            for (id, deleted) in &by_node {
                let Some(node) = nodes.get(*id) else { continue };
                let mut arts = node["outputs"]["artifacts"].clone();
                if mark_deleted(&mut arts, deleted) {
                    patch_nodes.insert(id.to_string(), json!({"outputs": {"artifacts": arts}}));
                }
            }
            if !patch_nodes.is_empty() {
                status.insert("nodes".into(), Value::Object(patch_nodes));
            }
        } else if let Some(packed) = raw_status["compressedNodes"].as_str() {
            let (bytes, encoding) =
                decompress(packed).map_err(|e| format!("status.compressedNodes: {e}"))?;
            let mut nodes: Map<String, Value> = serde_json::from_slice(&bytes)
                .map_err(|e| format!("status.compressedNodes: {e}"))?;
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
            if changed {
                let json = serde_json::to_vec(&nodes).map_err(|e| e.to_string())?;
                let packed = compress(&json, encoding)
                    .map_err(|e| format!("re-encoding status.compressedNodes: {e}"))?;
                status.insert("compressedNodes".into(), Value::String(packed));
            }
        }
    }

    let processed = &raw_status["artifactGCStatus"]["strategiesProcessed"];
    let mut newly = Map::new();
    for s in &update.processed {
        if processed[s.as_str()] != Value::Bool(true) {
            newly.insert(s.as_str().into(), Value::Bool(true));
        }
    }
    if !newly.is_empty() {
        status.insert(
            "artifactGCStatus".into(),
            json!({"strategiesProcessed": newly}),
        );
    }

    let conditions: Vec<Value> = raw_status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_ours = |c: &Value| c["type"] == CONDITION_GC_ERROR;
    let new_conditions = match &update.condition {
        ConditionChange::Keep => None,
        ConditionChange::Clear => conditions
            .iter()
            .any(is_ours)
            .then(|| conditions.iter().filter(|c| !is_ours(c)).cloned().collect()),
        ConditionChange::Set(message) => {
            let ours = json!({"type": CONDITION_GC_ERROR, "status": "True", "message": message});
            let current = conditions.iter().find(|c| is_ours(c));
            if current == Some(&ours) {
                None
            } else {
                let mut list: Vec<Value> =
                    conditions.iter().filter(|c| !is_ours(c)).cloned().collect();
                list.push(ours);
                Some(list)
            }
        }
    };
    if let Some(list) = new_conditions {
        status.insert("conditions".into(), Value::Array(list));
    }

    let finalizers: Vec<String> = raw["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let present = finalizers.iter().any(|f| f == finalizer);
    match update.finalizer {
        FinalizerChange::Add if !present => {
            let mut list = finalizers.clone();
            list.push(finalizer.to_string());
            metadata.insert("finalizers".into(), json!(list));
        }
        FinalizerChange::Remove { .. } if present => {
            let list: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
            metadata.insert("finalizers".into(), json!(list));
        }
        _ => {}
    }

    if let Some(n) = update.deletion_attempts {
        let current = raw["metadata"]["annotations"][ANNOTATION_DELETION_ATTEMPTS].as_str();
        if current != Some(n.to_string().as_str()) {
            metadata.insert(
                "annotations".into(),
                json!({ ANNOTATION_DELETION_ATTEMPTS: n.to_string() }),
            );
        }
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
