//! The merge patch a pass writes to its Workflow, as a table: each row is the object as read,
//! what the pass decided, and the patch (or no patch at all).

use artgc_core::model::{
    ANNOTATION_DELETION_ATTEMPTS, ANNOTATION_OFFLOADED_DELETED, ANNOTATION_PROBED_FILES,
};
use artgc_core::nodes::{NodeEncoding, compress, decompress};
use artgc_core::outcome::{ConditionChange, DeletedArtifact, FinalizerChange, StatusUpdate};
use artgc_core::plan::Strategy;
use artgc_core::status_patch::{merge_patch, probed_files_patch};
use serde_json::{Value, json};

const FINALIZER: &str = "workflows.argoproj.io/artifact-gc";

/// A Workflow as read: two Pod nodes, one with two artifacts, another finalizer, someone
/// else's condition.
fn workflow() -> Value {
    json!({
        "metadata": {"name": "w", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                     "finalizers": ["other.io/keep"]},
        "status": {
            "nodes": {
                "n1": {"outputs": {"artifacts": [{"name": "a", "s3": {"key": "k/a"}},
                                                 {"name": "b", "s3": {"key": "k/b"}}]}},
                "n2": {"outputs": {"artifacts": [{"name": "c", "s3": {"key": "k/c"}}]}}
            },
            "conditions": [{"type": "PodRunning", "status": "False"}]
        }
    })
}

/// `v` with `value` at `path` (a number steps into a list).
fn with(mut v: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = match p.parse::<usize>() {
            Ok(i) if cur.is_array() => &mut cur[i],
            _ => &mut cur[*p],
        };
    }
    cur[path[path.len() - 1]] = value;
    v
}

fn deleted(node: &str, index: usize, name: &str) -> DeletedArtifact {
    DeletedArtifact {
        node: node.into(),
        index,
        name: name.into(),
    }
}

fn update(f: impl FnOnce(&mut StatusUpdate)) -> StatusUpdate {
    let mut u = StatusUpdate::none();
    f(&mut u);
    u
}

/// The preconditions every patch carries, with `metadata` fields besides them.
fn meta(extra: Value) -> Value {
    let mut m = json!({"resourceVersion": "7", "uid": "u1"});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

#[test]
fn merge_patch_rules() {
    let ours_set = json!({"type": "ArtifactGCError", "status": "True", "message": "m"});
    let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let seen = |v: &str| json!({"artgc.io/finished-seen": v});
    let rows: Vec<(&str, Value, StatusUpdate, Option<Value>)> = vec![
        ("nothing to change", workflow(), StatusUpdate::none(), None),
        (
            "finished-seen: recorded when absent",
            workflow(),
            update(|u| u.finished_seen = Some(t("2026-12-07T10:00:00Z"))),
            Some(json!({"metadata": meta(json!({"annotations": seen("2026-12-07T10:00:00Z")}))})),
        ),
        (
            "finished-seen: an earlier record (narrower) stays",
            with(
                workflow(),
                &["metadata", "annotations"],
                seen("2026-12-07T09:00:00Z"),
            ),
            update(|u| u.finished_seen = Some(t("2026-12-07T10:00:00Z"))),
            None,
        ),
        (
            "finished-seen: a later (the author's) or unreadable record is lowered",
            with(
                workflow(),
                &["metadata", "annotations"],
                seen("2099-01-01T00:00:00Z"),
            ),
            update(|u| u.finished_seen = Some(t("2026-12-07T10:00:00Z"))),
            Some(json!({"metadata": meta(json!({"annotations": seen("2026-12-07T10:00:00Z")}))})),
        ),
        (
            "one artifact deleted: only its node's list, marked",
            workflow(),
            update(|u| u.deleted = vec![deleted("n1", 1, "b")]),
            Some(
                json!({"metadata": meta(json!({})), "status": {"nodes": {"n1": {"outputs": {"artifacts": [
                {"name": "a", "s3": {"key": "k/a"}},
                {"name": "b", "s3": {"key": "k/b"}, "deleted": true}]}}}}}),
            ),
        ),
        (
            "a stale index: the artifact is found by name",
            workflow(),
            update(|u| u.deleted = vec![deleted("n1", 0, "b")]),
            Some(
                json!({"metadata": meta(json!({})), "status": {"nodes": {"n1": {"outputs": {"artifacts": [
                {"name": "a", "s3": {"key": "k/a"}},
                {"name": "b", "s3": {"key": "k/b"}, "deleted": true}]}}}}}),
            ),
        ),
        (
            "already marked, or a node that is gone: nothing",
            with(
                workflow(),
                &[
                    "status",
                    "nodes",
                    "n2",
                    "outputs",
                    "artifacts",
                    "0",
                    "deleted",
                ],
                json!(true),
            ),
            update(|u| u.deleted = vec![deleted("gone", 0, "x")]),
            None,
        ),
        (
            "processed strategies merge into Argo's map; recorded ones are not repeated",
            with(
                workflow(),
                &["status", "artifactGCStatus"],
                json!({"strategiesProcessed": {"OnWorkflowCompletion": true}}),
            ),
            update(|u| {
                u.processed = vec![Strategy::OnWorkflowCompletion, Strategy::OnWorkflowDeletion]
            }),
            Some(
                json!({"metadata": meta(json!({})), "status": {"artifactGCStatus":
                {"strategiesProcessed": {"OnWorkflowDeletion": true}}}}),
            ),
        ),
        (
            "condition set: others kept, ours appended",
            workflow(),
            update(|u| u.condition = ConditionChange::Set("m".into())),
            Some(
                json!({"metadata": meta(json!({})), "status": {"conditions": [
                {"type": "PodRunning", "status": "False"}, ours_set.clone()]}}),
            ),
        ),
        (
            "condition set to what it says already: nothing",
            with(
                workflow(),
                &["status", "conditions"],
                json!([ours_set.clone()]),
            ),
            update(|u| u.condition = ConditionChange::Set("m".into())),
            None,
        ),
        (
            "condition cleared: only ours dropped",
            with(
                workflow(),
                &["status", "conditions"],
                json!([{"type": "PodRunning", "status": "False"}, ours_set.clone()]),
            ),
            update(|u| u.condition = ConditionChange::Clear),
            Some(
                json!({"metadata": meta(json!({})), "status": {"conditions": [
                {"type": "PodRunning", "status": "False"}]}}),
            ),
        ),
        (
            "condition cleared when there is none: nothing",
            workflow(),
            update(|u| u.condition = ConditionChange::Clear),
            None,
        ),
        (
            "finalizer added beside the others",
            workflow(),
            update(|u| u.finalizer = FinalizerChange::Add),
            Some(json!({"metadata": meta(json!({"finalizers": ["other.io/keep", FINALIZER]}))})),
        ),
        (
            "finalizer added when present: nothing",
            with(workflow(), &["metadata", "finalizers"], json!([FINALIZER])),
            update(|u| u.finalizer = FinalizerChange::Add),
            None,
        ),
        (
            "finalizer removed, the others kept",
            with(
                workflow(),
                &["metadata", "finalizers"],
                json!([FINALIZER, "other.io/keep"]),
            ),
            update(|u| u.finalizer = FinalizerChange::Remove { forced: true }),
            Some(json!({"metadata": meta(json!({"finalizers": ["other.io/keep"]}))})),
        ),
        (
            "finalizer removed when absent: nothing",
            workflow(),
            update(|u| u.finalizer = FinalizerChange::Remove { forced: false }),
            None,
        ),
        (
            "failed deletion passes counted",
            workflow(),
            update(|u| u.deletion_attempts = Some(2)),
            Some(
                json!({"metadata": meta(json!({"annotations": {ANNOTATION_DELETION_ATTEMPTS: "2"}}))}),
            ),
        ),
        (
            "the same count again: nothing",
            with(
                workflow(),
                &["metadata", "annotations"],
                json!({ANNOTATION_DELETION_ATTEMPTS: "2"}),
            ),
            update(|u| u.deletion_attempts = Some(2)),
            None,
        ),
    ];
    for (what, raw, update, want) in rows {
        let got = merge_patch(&raw, &update, FINALIZER).expect(what);
        assert_eq!(got, want, "{what}");
    }
}

/// Compressed nodes are decoded, marked and re-encoded in the encoding they came in.
#[test]
fn compressed_nodes_are_marked_and_reencoded_as_they_came() {
    let nodes = json!({"n1": {"outputs": {"artifacts": [{"name": "a"}]}}});
    for encoding in [NodeEncoding::Gzip, NodeEncoding::Zstd, NodeEncoding::Brotli] {
        let packed = compress(&serde_json::to_vec(&nodes).unwrap(), encoding).unwrap();
        let raw =
            json!({"metadata": {"resourceVersion": "1"}, "status": {"compressedNodes": packed}});
        let u = update(|u| u.deleted = vec![deleted("n1", 0, "a")]);
        let patch = merge_patch(&raw, &u, FINALIZER).unwrap().expect("a patch");
        let text = patch["status"]["compressedNodes"].as_str().unwrap();
        let (bytes, again) = decompress(text).unwrap();
        assert_eq!(again, encoding);
        let marked: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(marked["n1"]["outputs"]["artifacts"][0]["deleted"], true);
        assert!(patch["status"].get("nodes").is_none());
    }
}

/// A patch is built against a known version: without a resourceVersion there is none.
#[test]
fn a_patch_without_a_resource_version_is_refused() {
    let raw = with(workflow(), &["metadata", "resourceVersion"], Value::Null);
    let u = update(|u| u.finalizer = FinalizerChange::Add);
    let err = merge_patch(&raw, &u, FINALIZER).unwrap_err();
    assert!(err.contains("resourceVersion"), "{err}");
}

/// The probed-files annotation grows by the new lines only.
#[test]
fn probed_files_are_added_once() {
    let raw = with(
        workflow(),
        &["metadata", "annotations"],
        json!({ANNOTATION_PROBED_FILES: "n1/a"}),
    );
    let patch = probed_files_patch(&raw, &["n1/a".into(), "n2/c".into()])
        .unwrap()
        .expect("a patch");
    assert_eq!(
        patch["metadata"]["annotations"][ANNOTATION_PROBED_FILES],
        "n1/a\nn2/c"
    );
    assert_eq!(patch["metadata"]["resourceVersion"], "7");
    assert_eq!(probed_files_patch(&raw, &["n1/a".into()]).unwrap(), None);
}

/// A Workflow whose nodes Argo offloaded: no nodes in the object, only the version.
fn offloaded(annotation: Option<&str>) -> Value {
    let mut v = json!({
        "metadata": {"name": "w", "namespace": "ns", "uid": "u1", "resourceVersion": "7"},
        "status": {"offloadNodeStatusVersion": "fnv:1", "phase": "Succeeded"}
    });
    if let Some(a) = annotation {
        v["metadata"]["annotations"] = json!({ANNOTATION_OFFLOADED_DELETED: a});
    }
    v
}

#[test]
fn offloaded_workflows_record_deletions_in_the_annotation_never_in_status() {
    let rows: Vec<(&str, Value, StatusUpdate, Option<Value>)> = vec![
        (
            "first marks, sorted; no nodes written",
            offloaded(None),
            update(|u| {
                u.deleted = vec![deleted("n2", 0, "c"), deleted("n1", 1, "b")];
                u.processed = vec![Strategy::OnWorkflowCompletion];
            }),
            Some(json!({
                "metadata": meta(json!({"annotations": {ANNOTATION_OFFLOADED_DELETED: "n1/b\nn2/c"}})),
                "status": {"artifactGCStatus": {"strategiesProcessed": {"OnWorkflowCompletion": true}}},
            })),
        ),
        (
            "added to what is there, beside the attempts annotation",
            offloaded(Some("n1/b")),
            update(|u| {
                u.deleted = vec![deleted("n1", 0, "a")];
                u.deletion_attempts = Some(2);
            }),
            Some(json!({"metadata": meta(json!({"annotations": {
                ANNOTATION_OFFLOADED_DELETED: "n1/a\nn1/b",
                ANNOTATION_DELETION_ATTEMPTS: "2",
            }}))})),
        ),
        (
            "already recorded: no patch",
            offloaded(Some("n1/a\nn1/b")),
            update(|u| u.deleted = vec![deleted("n1", 1, "b")]),
            None,
        ),
    ];
    for (what, raw, u, want) in rows {
        assert_eq!(merge_patch(&raw, &u, FINALIZER).unwrap(), want, "{what}");
    }
}

#[test]
fn long_offloaded_marks_are_gzipped_and_read_back() {
    let many: Vec<DeletedArtifact> = (0..5000)
        .map(|i| deleted(&format!("wf-{i:010}"), 0, "out"))
        .collect();
    let patch = merge_patch(&offloaded(None), &update(|u| u.deleted = many), FINALIZER)
        .unwrap()
        .unwrap();
    let value = patch["metadata"]["annotations"][ANNOTATION_OFFLOADED_DELETED]
        .as_str()
        .unwrap();
    assert!(value.starts_with("gzip:"), "{}", &value[..20]);
    assert!(value.len() < 64 * 1024, "{} bytes", value.len());
    let lines = artgc_core::nodes::offloaded_marks(value).unwrap();
    assert_eq!(lines.len(), 5000);
    assert_eq!(lines[0], "wf-0000000000/out");
}
