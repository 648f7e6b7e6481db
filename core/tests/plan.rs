//! The planner's rules, one behaviour per test: strategies, due-ness, location sources,
//! credentials, node storage, templates, shared keys and every refusal. Pure: no network.

mod support;

use artgc_core::cluster::ClusterState;
use artgc_core::inventory::WorkflowInput;
use artgc_core::keys::KeyIndex;
use artgc_core::location::Credentials;
use artgc_core::nodes::{NodeEncoding, compress};
use artgc_core::plan::{Decision, KeepReason, ObjectKind, SkipReason, Strategy, StrategyFilter};
use serde_json::{Value, json};
use support::*;

const EP: &str = "minio:9000";

fn creds() -> Vec<Value> {
    vec![secret("ns", "cred", "AK", "SK")]
}

/// A finished workflow in `ns` whose repository is frozen in its status.
fn wf(name: &str) -> Wf {
    workflow("ns", name).status_repo(s3_repo(EP, "repo-bucket", "cred"))
}

// ---- strategies ----

#[test]
fn artifact_strategy_overrides_workflow_strategy() {
    let w = wf("w").strategy("OnWorkflowCompletion").node(
        "n1",
        "t",
        vec![
            with_strategy(key_only("never", "w/never.tgz"), "Never"),
            key_only("inherits", "w/inherits.tgz"),
        ],
    );
    let plan = plan_due(vec![w], creds());
    assert_eq!(
        art(&plan, "w", "never").decision,
        Decision::Keep(KeepReason::Never)
    );
    let inh = art(&plan, "w", "inherits");
    assert_eq!(inh.strategy, Strategy::OnWorkflowCompletion);
    assert_eq!(inh.decision, Decision::Delete);
    assert!(inh.due);
}

#[test]
fn unset_strategy_everywhere_means_never() {
    let plan = plan_due(
        vec![wf("w").node("n1", "t", vec![key_only("a", "w/a.tgz")])],
        creds(),
    );
    let a = art(&plan, "w", "a");
    assert_eq!(a.strategy, Strategy::Never);
    assert_eq!(a.decision, Decision::Keep(KeepReason::Never));
    assert!(!a.due);
}

#[test]
fn stored_workflow_template_spec_supplies_the_workflow_strategy() {
    let w = wf("w")
        .set(&["spec", "workflowTemplateRef"], json!({"name": "tmpl"}))
        .set(
            &["status", "storedWorkflowTemplateSpec"],
            json!({"artifactGC": {"strategy": "OnWorkflowCompletion"}, "templates": []}),
        )
        .node("n1", "t", vec![key_only("a", "w/a.tgz")]);
    let plan = plan_due(vec![w], creds());
    assert_eq!(
        art(&plan, "w", "a").strategy,
        Strategy::OnWorkflowCompletion
    );
    assert_eq!(art(&plan, "w", "a").decision, Decision::Delete);

    // As Argo's `GetExecSpec`: the stored spec (the workflow's spec already merged over the
    // template's when it started) is what ran; `spec` is read only without one. Likewise for
    // forceFinalizerRemoval and the GC service account.
    let w = wf("w2")
        .strategy("Never")
        .set(
            &["spec", "artifactGC", "forceFinalizerRemoval"],
            json!(true),
        )
        .set(
            &["spec", "artifactGC", "serviceAccountName"],
            json!("spec-sa"),
        )
        .set(
            &["status", "storedWorkflowTemplateSpec"],
            json!({"artifactGC": {"strategy": "OnWorkflowCompletion",
                                  "serviceAccountName": "stored-sa"}}),
        )
        .node("n1", "t", vec![key_only("a", "w2/a.tgz")]);
    let plan = plan_due(vec![w.clone()], creds());
    assert_eq!(art(&plan, "w2", "a").decision, Decision::Delete);
    let WorkflowInput::Valid(parsed) = w.input() else {
        panic!("valid")
    };
    assert_eq!(parsed.gc_service_account(), Some("stored-sa"));
    assert!(!parsed.force_finalizer_removal());
    let own = wf("w3")
        .strategy("Never")
        .node("n1", "t", vec![key_only("a", "w3/a.tgz")]);
    let plan = plan_due(vec![own], creds());
    assert_eq!(
        art(&plan, "w3", "a").decision,
        Decision::Keep(KeepReason::Never)
    );
}

#[test]
fn unknown_strategy_is_an_error_naming_the_field() {
    let w = wf("w").node(
        "n1",
        "t",
        vec![with_strategy(key_only("a", "w/a"), "OnWorkflowSuccess")],
    );
    let plan = plan_due(vec![w], creds());
    let Decision::Error(e) = &art(&plan, "w", "a").decision else {
        panic!("expected error")
    };
    assert_eq!(e.category(), "invalid_strategy");
    assert!(
        e.to_string()
            .contains("status.nodes[n1].outputs.artifacts[a].artifactGC.strategy"),
        "{e}"
    );
}

// ---- when things are due ----

fn two_strategies(w: Wf) -> Wf {
    w.node(
        "n1",
        "t",
        vec![
            with_strategy(key_only("comp", "x/comp.tgz"), "OnWorkflowCompletion"),
            with_strategy(key_only("del", "x/del.tgz"), "OnWorkflowDeletion"),
        ],
    )
}

#[test]
fn completed_workflow_makes_completion_due_but_not_deletion() {
    let plan = plan_due(vec![two_strategies(wf("w"))], creds());
    assert_eq!(art(&plan, "w", "comp").decision, Decision::Delete);
    let del = art(&plan, "w", "del");
    assert!(!del.due);
    assert!(matches!(
        del.decision,
        Decision::Skip(SkipReason::NotSelected { .. })
    ));
}

#[test]
fn deleting_a_finished_workflow_makes_both_due() {
    let plan = plan_due(vec![two_strategies(wf("w").deleting())], creds());
    assert_eq!(art(&plan, "w", "comp").decision, Decision::Delete);
    assert_eq!(art(&plan, "w", "del").decision, Decision::Delete);
}

#[test]
fn unfinished_workflow_is_never_purged_whatever_the_filter() {
    for filter in [
        StrategyFilter::Due,
        StrategyFilter::All,
        StrategyFilter::Completion,
    ] {
        let plan = plan_with(
            vec![two_strategies(wf("w").running().deleting())],
            creds(),
            filter,
        );
        for name in ["comp", "del"] {
            let a = art(&plan, "w", name);
            assert!(
                matches!(a.decision, Decision::Skip(SkipReason::NotFinished(_))),
                "{filter:?} {name}"
            );
            assert!(!a.due);
        }
    }
    // A final phase without Argo's completed label is not finished yet either.
    let w = two_strategies(wf("w")).set(&["metadata", "labels"], json!({}));
    let plan = plan_with(vec![w], creds(), StrategyFilter::All);
    assert!(matches!(
        art(&plan, "w", "comp").decision,
        Decision::Skip(SkipReason::NotFinished(_))
    ));
}

#[test]
fn strategy_filters_select_what_they_name() {
    let plan = plan_with(
        vec![two_strategies(wf("w"))],
        creds(),
        StrategyFilter::Deletion,
    );
    assert_eq!(art(&plan, "w", "del").decision, Decision::Delete);
    assert!(matches!(
        art(&plan, "w", "comp").decision,
        Decision::Skip(_)
    ));
    let plan = plan_with(vec![two_strategies(wf("w"))], creds(), StrategyFilter::All);
    assert_eq!(art(&plan, "w", "del").decision, Decision::Delete);
    assert_eq!(art(&plan, "w", "comp").decision, Decision::Delete);
}

#[test]
fn already_deleted_artifacts_are_skipped() {
    let mut a = with_strategy(key_only("a", "w/a.tgz"), "OnWorkflowCompletion");
    a["deleted"] = json!(true);
    let plan = plan_due(vec![wf("w").node("n1", "t", vec![a])], creds());
    assert_eq!(
        art(&plan, "w", "a").decision,
        Decision::Skip(SkipReason::AlreadyDeleted)
    );
}

#[test]
fn only_pod_nodes_are_considered() {
    let w = wf("w").strategy("OnWorkflowCompletion").set(
        &["status", "nodes", "dag"],
        json!({"id": "dag", "type": "DAG", "outputs": {"artifacts": [key_only("a", "w/a.tgz")]}}),
    );
    let plan = plan_due(vec![w], creds());
    assert!(wfp(&plan, "w").artifacts.is_empty());
}

#[test]
fn main_logs_follow_the_workflow_strategy() {
    let w = wf("w").strategy("OnWorkflowCompletion").node(
        "n1",
        "t",
        vec![key_only("main-logs", "w/w-t-1/main.log")],
    );
    let plan = plan_due(vec![w], creds());
    let logs = art(&plan, "w", "main-logs");
    assert_eq!(logs.decision, Decision::Delete);
    assert_eq!(logs.target.as_ref().unwrap().key, "w/w-t-1/main.log");
}

// ---- where artifacts live ----

#[test]
fn complete_own_location_is_used_as_is() {
    let a = with_strategy(
        full("a", "other:9000", "own-bucket", "k/a.tgz", "cred"),
        "OnWorkflowCompletion",
    );
    let plan = plan_due(vec![wf("w").node("n1", "t", vec![a])], creds());
    let t = art(&plan, "w", "a").target.clone().unwrap();
    assert_eq!(
        (t.endpoint.as_str(), t.bucket.as_str(), t.key.as_str()),
        ("other:9000", "own-bucket", "k/a.tgz")
    );
    let conn = art(&plan, "w", "a").connection.clone().unwrap();
    // Dialled as checked: the short service name, qualified relative to the namespace.
    assert_eq!(conn.url, "http://other.ns.svc.cluster.local:9000");
    assert!(conn.path_style);
    assert_eq!(conn.region, "us-east-1");
    assert!(
        matches!(conn.credentials, Credentials::Static { ref access_key, .. } if access_key == "AK")
    );
}

#[test]
fn template_archive_location_beats_the_repository() {
    let mut archive = s3_repo("archive:9000", "archive-bucket", "cred");
    archive["s3"]["key"] = json!("ignored/by/key-only");
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .template(json!({"name": "t", "archiveLocation": archive}))
        .template(json!({"name": "plain"}))
        .node("n1", "t", vec![key_only("a", "w/a.tgz")])
        .node("n2", "plain", vec![key_only("b", "w/b.tgz")]);
    let plan = plan_due(vec![w], creds());
    let a = art(&plan, "w", "a").target.clone().unwrap();
    assert_eq!(
        (a.endpoint.as_str(), a.bucket.as_str(), a.key.as_str()),
        ("archive:9000", "archive-bucket", "w/a.tgz")
    );
    assert_eq!(
        art(&plan, "w", "b").target.as_ref().unwrap().bucket,
        "repo-bucket"
    );
}

#[test]
fn archive_location_without_a_full_s3_location_falls_back_to_the_repository() {
    // Argo's HasLocation needs endpoint, bucket and key; archiveLogs alone is not a location.
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .template(json!({"name": "t", "archiveLocation": {"archiveLogs": true}}))
        .node("n1", "t", vec![key_only("a", "w/a.tgz")]);
    let plan = plan_due(vec![w], creds());
    assert_eq!(
        art(&plan, "w", "a").target.as_ref().unwrap().bucket,
        "repo-bucket"
    );
}

fn repo_cm(ns: &str, name: &str, default_key: Option<&str>, entries: &[(&str, &str)]) -> Value {
    let mut data = serde_json::Map::new();
    for (k, bucket) in entries {
        data.insert(k.to_string(), json!(format!("s3:\n  endpoint: {EP}\n  bucket: {bucket}\n  insecure: true\n  accessKeySecret: {{name: cred, key: accesskey}}\n  secretKeySecret: {{name: cred, key: secretkey}}\n")));
    }
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data});
    if let Some(k) = default_key {
        cm["metadata"]["annotations"] =
            json!({"workflows.argoproj.io/default-artifact-repository": k});
    }
    cm
}

fn controller_cm(text_key: &str, text: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "workflow-controller-configmap", "namespace": "argo"},
           "data": {text_key: text}})
}

/// Argo's controller ConfigMap with a repository in bucket `global`.
fn global_repository() -> Value {
    controller_cm(
        "artifactRepository",
        &format!("s3:\n  endpoint: {EP}\n  bucket: global\n"),
    )
}

/// A finished workflow with no repository in its status (older or hand-made objects).
fn bare(name: &str) -> Wf {
    workflow("ns", name).strategy("OnWorkflowCompletion").node(
        "n1",
        "t",
        vec![key_only("a", "k/a.tgz")],
    )
}

fn bucket_of(plan: &artgc_core::plan::GcPlan, wf: &str) -> Result<String, String> {
    let a = art(plan, wf, "a");
    match (&a.target, &a.decision) {
        (Some(t), _) => Ok(t.bucket.clone()),
        (None, Decision::Error(e)) => Err(e.to_string()),
        (None, d) => Err(format!("{d:?}")),
    }
}

#[test]
fn repository_sources_in_argo_priority() {
    let ns_cm = repo_cm(
        "ns",
        "artifact-repositories",
        Some("default-v1"),
        &[("default-v1", "ns-default"), ("other", "ns-other")],
    );
    let ctrl = global_repository();
    let mut objs = creds();
    objs.push(ctrl.clone());

    // Only the controller's repository.
    assert_eq!(
        bucket_of(&plan_due(vec![bare("w")], objs.clone()), "w").unwrap(),
        "global"
    );

    // The namespace's annotated ConfigMap wins over the controller's.
    objs.push(ns_cm);
    assert_eq!(
        bucket_of(&plan_due(vec![bare("w")], objs.clone()), "w").unwrap(),
        "ns-default"
    );

    // spec.artifactRepositoryRef picks a key.
    let w = bare("w").set(&["spec", "artifactRepositoryRef"], json!({"key": "other"}));
    assert_eq!(
        bucket_of(&plan_due(vec![w], objs.clone()), "w").unwrap(),
        "ns-other"
    );

    // The status' frozen repository wins over everything.
    let w = bare("w").status_repo(s3_repo(EP, "frozen", "cred"));
    assert_eq!(bucket_of(&plan_due(vec![w], objs), "w").unwrap(), "frozen");
}

#[test]
fn repository_ref_is_looked_up_in_the_controller_namespace_too() {
    let mut objs = creds();
    objs.push(repo_cm(
        "argo",
        "shared-repos",
        None,
        &[("team", "from-argo-ns")],
    ));
    let w = bare("w").set(
        &["spec", "artifactRepositoryRef"],
        json!({"configMap": "shared-repos", "key": "team"}),
    );
    assert_eq!(
        bucket_of(&plan_due(vec![w], objs), "w").unwrap(),
        "from-argo-ns"
    );
}

#[test]
fn controller_config_in_the_older_single_config_key() {
    let mut objs = creds();
    objs.push(controller_cm(
        "config",
        &format!("artifactRepository:\n  s3:\n    endpoint: {EP}\n    bucket: legacy\n"),
    ));
    assert_eq!(
        bucket_of(&plan_due(vec![bare("w")], objs), "w").unwrap(),
        "legacy"
    );
}

#[test]
fn repository_errors_name_what_is_missing() {
    let err = bucket_of(&plan_due(vec![bare("w")], creds()), "w").unwrap_err();
    assert!(err.contains("no artifact repository"), "{err}");

    let w = bare("w").set(
        &["spec", "artifactRepositoryRef"],
        json!({"configMap": "nope", "key": "k"}),
    );
    let err = bucket_of(&plan_due(vec![w], vec![]), "w").unwrap_err();
    assert!(
        err.contains("no ConfigMap \"nope\" with key \"k\" in namespace ns or argo"),
        "{err}"
    );

    // A candidate that exists but does not parse stops the search (Argo's `Resolve`).
    let mut bad = repo_cm("ns", "artifact-repositories", Some("k"), &[]);
    bad["data"] = json!({"k": "s3: [not, a, location"});
    let ctrl = global_repository();
    let err = bucket_of(&plan_due(vec![bare("w")], vec![bad, ctrl]), "w").unwrap_err();
    assert!(
        err.contains("ConfigMap ns/artifact-repositories key \"k\""),
        "{err}"
    );
}

/// Argo's `Resolve` moves to the next candidate when a ConfigMap or its key is missing: the
/// namespace's ConfigMap without a default-key annotation (or without that key) falls back to
/// the controller's repository, and a ref's key missing in the workflow's namespace is looked
/// up in the controller's namespace.
#[test]
fn repository_candidates_fall_through_on_a_missing_key() {
    let ctrl = global_repository();
    for ns_cm in [
        repo_cm("ns", "artifact-repositories", None, &[("x", "b")]),
        repo_cm("ns", "artifact-repositories", Some("gone"), &[("x", "b")]),
    ] {
        let objs = vec![ns_cm, ctrl.clone()];
        assert_eq!(
            bucket_of(&plan_due(vec![bare("w")], objs), "w").unwrap(),
            "global"
        );
    }
    let objs = vec![
        repo_cm("ns", "repos", None, &[("other", "ns-other")]),
        repo_cm("argo", "repos", None, &[("team", "argo-team")]),
    ];
    let w = bare("w").set(
        &["spec", "artifactRepositoryRef"],
        json!({"configMap": "repos", "key": "team"}),
    );
    assert_eq!(
        bucket_of(&plan_due(vec![w], objs), "w").unwrap(),
        "argo-team"
    );
}

/// A ref recorded in status without the repository itself (Argo before 3.1) is read exactly,
/// as Argo's `Get` reads it: its namespace, ConfigMap and key, or the controller's default.
#[test]
fn a_recorded_repository_ref_without_the_repository_is_honoured() {
    let objs = vec![
        repo_cm(
            "argo",
            "artifact-repositories",
            Some("a"),
            &[("a", "argo-a"), ("b", "argo-b")],
        ),
        repo_cm("ns", "artifact-repositories", Some("a"), &[("a", "ns-a")]),
        global_repository(),
    ];
    let recorded = |r: Value| bare("w").set(&["status", "artifactRepositoryRef"], r);
    let cases = [
        (
            json!({"namespace": "argo", "configMap": "artifact-repositories", "key": "b"}),
            "argo-b",
        ),
        (
            json!({"namespace": "ns", "configMap": "artifact-repositories", "key": "a"}),
            "ns-a",
        ),
        (json!({"default": true}), "global"),
    ];
    for (r, bucket) in cases {
        let plan = plan_due(vec![recorded(r.clone())], objs.clone());
        assert_eq!(bucket_of(&plan, "w").unwrap(), bucket, "{r}");
    }
    let plan = plan_due(
        vec![recorded(json!({"namespace": "argo", "key": "missing"}))],
        objs,
    );
    let err = bucket_of(&plan, "w").unwrap_err();
    assert!(err.contains("status.artifactRepositoryRef"), "{err}");
}

/// `status.artifactRepositoryRef.namespace` is the author's to write: naming another tenant's
/// namespace reads nothing there (Argo's `Get` reads only the workflow's own and the
/// controller's), is refused for good (settled, never a held finalizer), and no message ever
/// quotes a ConfigMap's text.
#[test]
fn a_recorded_ref_to_another_namespace_is_refused_and_nothing_is_quoted() {
    let mut team_b = repo_cm(
        "team-b",
        "artifact-repositories",
        Some("a"),
        &[("a", "team-b-bucket")],
    );
    team_b["data"]["broken"] = json!("s3: {bucket: team-b-secret-text, [unclosed");
    let objs = vec![team_b, global_repository()];
    let recorded = |r: Value| bare("w").set(&["status", "artifactRepositoryRef"], r);
    let plan = plan_due(
        vec![recorded(
            json!({"namespace": "team-b", "configMap": "artifact-repositories", "key": "a"}),
        )],
        objs.clone(),
    );
    let a = art(&plan, "w", "a");
    assert_eq!(a.decision.category(), "ref_not_allowed", "{:?}", a.decision);
    assert!(matches!(&a.decision, Decision::Error(e) if e.is_permanent()));
    assert!(
        !a.decision.reason().contains("team-b-bucket"),
        "{}",
        a.decision.reason()
    );

    // A ConfigMap that does not parse is named, with where, never with what it says.
    let mut own = repo_cm("ns", "artifact-repositories", None, &[]);
    own["data"] = json!({"broken": "s3: {bucket: secret-looking-text, [unclosed"});
    let plan = plan_due(
        vec![recorded(
            json!({"namespace": "ns", "configMap": "artifact-repositories", "key": "broken"}),
        )],
        vec![own],
    );
    let reason = art(&plan, "w", "a").decision.reason();
    assert!(reason.contains("does not parse (line"), "{reason}");
    assert!(!reason.contains("secret-looking-text"), "{reason}");
}

// ---- credentials ----

#[test]
fn secrets_are_read_only_in_the_workflow_namespace() {
    // The Secret exists, but in another namespace: an error for this artifact only.
    let w = wf("w").strategy("OnWorkflowCompletion").node(
        "n1",
        "t",
        vec![
            key_only("a", "w/a.tgz"),
            full("b", EP, "bkt", "w/b.tgz", "nokeys"),
        ],
    );
    let plan = plan_due(
        vec![w],
        vec![
            secret("argo", "cred", "AK", "SK"),
            secret("ns", "nokeys", "AK2", "SK2"),
        ],
    );
    let Decision::Error(e) = &art(&plan, "w", "a").decision else {
        panic!("expected error")
    };
    assert_eq!(e.category(), "secret");
    assert!(e.to_string().contains("Secret ns/cred not found"), "{e}");
    assert_eq!(art(&plan, "w", "b").decision, Decision::Delete);
}

#[test]
fn missing_secret_key_is_an_error() {
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cred", "namespace": "ns"}, "stringData": {"accesskey": "AK"}});
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .node("n1", "t", vec![key_only("a", "w/a")]);
    let plan = plan_due(vec![w], vec![s]);
    let Decision::Error(e) = &art(&plan, "w", "a").decision else {
        panic!()
    };
    assert!(e.to_string().contains("has no key \"secretkey\""), "{e}");
}

#[test]
fn sdk_credentials_role_and_tls_options() {
    let a = json!({"name": "a", "artifactGC": {"strategy": "OnWorkflowCompletion"}, "s3": {
        "endpoint": "s3.amazonaws.com", "bucket": "b", "key": "k/a", "useSDKCreds": true, "region": "eu-west-1",
        "addressingStyle": "virtual-hosted"}});
    let r = json!({"name": "r", "artifactGC": {"strategy": "OnWorkflowCompletion"}, "s3": {
        "endpoint": "s3.amazonaws.com", "bucket": "b", "key": "k/r", "roleARN": "arn:aws:iam::1:role/x"}});
    let w = wf("w").node("n1", "t", vec![a, r]);
    // Without a policy granting it, no namespace acts with artgc's own identity.
    let plan = plan_due(vec![w.clone()], vec![]);
    let Decision::Error(e) = &art(&plan, "w", "a").decision else {
        panic!("{:?}", art(&plan, "w", "a").decision)
    };
    assert_eq!(e.category(), "identity");
    let policy = artgc_core::policy::Policy::parse(
        "defaults:\n  identities: [secret, controller]\n  endpoints: [s3.amazonaws.com]\n",
    )
    .unwrap();
    let plan = plan_with_policy(vec![w], vec![], StrategyFilter::Due, policy.into());
    let c = art(&plan, "w", "a").connection.clone().unwrap();
    assert_eq!(c.credentials, Credentials::Controller { assume: None });
    assert_eq!(c.url, "https://s3.amazonaws.com");
    assert_eq!(c.region, "eu-west-1");
    assert!(!c.path_style);
    let c = art(&plan, "w", "r").connection.clone().unwrap();
    assert!(
        matches!(c.credentials, Credentials::Controller { assume: Some(ref role_arn) } if role_arn == "arn:aws:iam::1:role/x")
    );
}

// ---- node storage ----

fn compressed(encoding: NodeEncoding) -> Wf {
    let plain =
        wf("w")
            .strategy("OnWorkflowCompletion")
            .node("n1", "t", vec![key_only("a", "w/a.tgz")]);
    let nodes = serde_json::to_vec(&plain.0["status"]["nodes"]).unwrap();
    let packed = compress(&nodes, encoding).unwrap();
    plain
        .set(&["status", "nodes"], Value::Null)
        .set(&["status", "compressedNodes"], json!(packed))
}

#[test]
fn compressed_nodes_in_every_format_plan_like_plain_nodes() {
    for enc in [NodeEncoding::Gzip, NodeEncoding::Zstd, NodeEncoding::Brotli] {
        let plan = plan_due(vec![compressed(enc)], creds());
        assert_eq!(wfp(&plan, "w").node_encoding, Some(enc));
        assert_eq!(art(&plan, "w", "a").decision, Decision::Delete, "{enc:?}");
    }
}

#[test]
fn corrupt_compressed_nodes_fail_that_workflow_only() {
    let bad = wf("bad")
        .set(&["status", "nodes"], Value::Null)
        .set(&["status", "compressedNodes"], json!("H4sI!!!"));
    let good =
        wf("good")
            .strategy("OnWorkflowCompletion")
            .node("n1", "t", vec![key_only("a", "good/a")]);
    let plan = plan_due(vec![bad, good], creds());
    let err = wfp(&plan, "bad").error.clone().unwrap();
    assert!(
        err.to_string().starts_with("status.compressedNodes:"),
        "{err}"
    );
    assert_eq!(art(&plan, "good", "a").decision, Decision::Delete);
}

#[test]
fn offloaded_nodes_are_not_plannable() {
    let w = wf("w")
        .set(&["status", "nodes"], Value::Null)
        .set(&["status", "offloadNodeStatusVersion"], json!("fnv:123"));
    let plan = plan_due(vec![w], creds());
    let err = wfp(&plan, "w").error.clone().unwrap();
    assert_eq!(err.category(), "offloaded");
    assert!(err.to_string().contains("not plannable"));
}

// ---- templates ----

#[test]
fn template_ref_nodes_use_the_stored_template_archive_location() {
    let mut archive = s3_repo("wt:9000", "wt-bucket", "cred");
    archive["s3"]["key"] = json!("x");
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .set(
            &["status", "storedTemplates", "namespaced/my-wt/build"],
            json!({"name": "build", "archiveLocation": archive}),
        )
        .set(
            &["status", "nodes", "n1"],
            json!({"id": "n1", "type": "Pod", "templateRef": {"name": "my-wt", "template": "build"},
            "outputs": {"artifacts": [key_only("a", "w/a.tgz")]}}),
        );
    let plan = plan_due(vec![w], creds());
    assert_eq!(
        art(&plan, "w", "a").target.as_ref().unwrap().bucket,
        "wt-bucket"
    );
}

#[test]
fn inline_template_artifacts_are_collected() {
    // Argo's own GC never collects these (it scans named templates only).
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .template(json!({"name": "main", "dag": {"tasks": [{"name": "i", "inline": {"container": {"image": "x"}}}]}}))
        .set(&["status", "nodes", "n1"], json!({"id": "n1", "type": "Pod", "outputs": {"artifacts": [key_only("a", "w/a.tgz")]}}));
    let plan = plan_due(vec![w], creds());
    assert_eq!(art(&plan, "w", "a").decision, Decision::Delete);
    assert_eq!(
        art(&plan, "w", "a").target.as_ref().unwrap().bucket,
        "repo-bucket"
    );
}

#[test]
fn unknown_template_with_archive_locations_around_is_an_error_not_a_guess() {
    let mut archive = s3_repo(EP, "elsewhere", "cred");
    archive["s3"]["key"] = json!("x");
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .template(json!({"name": "main", "steps": [[{"name": "i", "inline": {"archiveLocation": archive}}]]}))
        .set(&["status", "nodes", "n1"], json!({"id": "n1", "type": "Pod", "outputs": {"artifacts": [key_only("a", "w/a.tgz")]}}));
    let plan = plan_due(vec![w], creds());
    let Decision::Error(e) = &art(&plan, "w", "a").decision else {
        panic!()
    };
    assert_eq!(e.category(), "location");
}

// ---- refusals ----

#[test]
fn bucket_roots_are_refused() {
    for key in ["", "/", "//"] {
        let a = with_strategy(key_only("a", key), "OnWorkflowCompletion");
        let plan = plan_due(vec![wf("w").node("n1", "t", vec![a])], creds());
        assert_eq!(
            art(&plan, "w", "a").decision,
            Decision::Keep(KeepReason::BucketRoot),
            "key {key:?}"
        );
        assert!(art(&plan, "w", "a").connection.is_none());
    }
}

#[test]
fn drivers_that_cannot_delete_are_unsupported() {
    for driver in [
        "http",
        "git",
        "artifactory",
        "hdfs",
        "raw",
        "gcs",
        "azure",
        "oss",
    ] {
        let a = json!({"name": "a", "artifactGC": {"strategy": "OnWorkflowCompletion"}, driver: {"key": "k", "url": "u"}});
        let plan = plan_due(vec![wf("w").node("n1", "t", vec![a])], creds());
        assert_eq!(
            art(&plan, "w", "a").decision,
            Decision::Unsupported(driver),
            "{driver}"
        );
    }
    // A GCS repository behind a key-only artifact is unsupported too.
    let w = workflow("ns", "g")
        .status_repo(json!({"gcs": {"bucket": "b"}}))
        .strategy("OnWorkflowCompletion")
        .node("n1", "t", vec![json!({"name": "a", "gcs": {"key": "k"}})]);
    assert_eq!(
        art(&plan_due(vec![w], vec![]), "g", "a").decision,
        Decision::Unsupported("gcs")
    );
}

#[test]
fn directory_keys_are_directories() {
    let w = wf("w").strategy("OnWorkflowCompletion").node(
        "n1",
        "t",
        vec![key_only("d", "w/out/"), key_only("f", "w/out.txt")],
    );
    let plan = plan_due(vec![w], creds());
    assert_eq!(art(&plan, "w", "d").kind, Some(ObjectKind::Directory));
    assert_eq!(art(&plan, "w", "f").kind, Some(ObjectKind::File));
}

// ---- shared keys ----

fn fixed(name: &str, strategy: &str, key: &str) -> Wf {
    wf(name).node(
        "n1",
        "t",
        vec![with_strategy(key_only("out", key), strategy)],
    )
}

#[test]
fn a_key_another_workflow_keeps_is_kept() {
    let plan = plan_due(
        vec![
            fixed("a", "OnWorkflowCompletion", "my-file"),
            fixed("b", "Never", "my-file"),
        ],
        creds(),
    );
    let Decision::Keep(KeepReason::Shared(by)) = &art(&plan, "a", "out").decision else {
        panic!("expected shared")
    };
    assert!(by.contains("ns/b artifact out"), "{by}");
}

#[test]
fn a_key_every_user_of_which_is_being_purged_is_deleted() {
    let plan = plan_due(
        vec![
            fixed("a", "OnWorkflowCompletion", "my-file"),
            fixed("b", "OnWorkflowCompletion", "my-file"),
        ],
        creds(),
    );
    assert_eq!(art(&plan, "a", "out").decision, Decision::Delete);
    assert_eq!(art(&plan, "b", "out").decision, Decision::Delete);
}

#[test]
fn keeping_propagates_until_stable() {
    // c keeps x/ (Never); b's dir x/ overlaps it, so b is kept; then a's file x/f overlaps b's
    // kept directory, so a is kept too.
    let plan = plan_due(
        vec![
            fixed("a", "OnWorkflowCompletion", "x/y/f"),
            fixed("b", "OnWorkflowCompletion", "x/y/"),
            fixed("c", "Never", "x/y/g"),
        ],
        creds(),
    );
    assert!(matches!(
        art(&plan, "b", "out").decision,
        Decision::Keep(KeepReason::Shared(_))
    ));
    assert!(matches!(
        art(&plan, "a", "out").decision,
        Decision::Keep(KeepReason::Shared(_))
    ));
}

#[test]
fn a_running_workflow_that_names_the_key_keeps_it() {
    // The Argo docs' warning: concurrent runs writing the same fixed key.
    let running = wf("r")
        .running()
        .template(json!({"name": "t", "outputs": {"artifacts": [key_only("out", "my-file")]}}));
    let plan = plan_due(
        vec![fixed("done", "OnWorkflowCompletion", "my-file"), running],
        creds(),
    );
    let Decision::Keep(KeepReason::Shared(by)) = &art(&plan, "done", "out").decision else {
        panic!()
    };
    assert!(by.contains("ns/r template t"), "{by}");
}

#[test]
fn prefix_boundaries_are_respected_when_matching_shared_keys() {
    let plan = plan_due(
        vec![
            fixed("a", "OnWorkflowCompletion", "out/dir"),
            fixed("b", "Never", "out/dir2/file"),
            fixed("c", "Never", "out/di"),
        ],
        creds(),
    );
    assert_eq!(art(&plan, "a", "out").decision, Decision::Delete);
}

#[test]
fn shared_matching_is_per_bucket() {
    let other = wf("b").node(
        "n1",
        "t",
        vec![with_strategy(
            full("out", EP, "another-bucket", "my-file", "cred"),
            "Never",
        )],
    );
    let plan = plan_due(
        vec![fixed("a", "OnWorkflowCompletion", "my-file"), other],
        creds(),
    );
    assert_eq!(art(&plan, "a", "out").decision, Decision::Delete);
}

// ---- Argo's own objects, when the shared fixtures are present ----

/// `../shared/fixtures/argo` beside the repository (tests run in the crate's own folder).
const ARGO_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/argo");

#[ignore = "needs ../shared/fixtures beside the repository, then cargo test -- --include-ignored"]
#[test]
fn argo_test_workflow_plans_as_argo_documents() {
    let path = std::path::Path::new(ARGO_FIXTURES)
        .join("status-testdata/workflow__controller__artifact_gc_test__artgcWorkflow.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{} is missing: CI must have ../shared",
            path.display()
        );
        eprintln!("skipped: {} not present", path.display());
        return;
    };
    let mut inv = artgc_core::inventory::Inventory::default();
    inv.add_text("artgcWorkflow", &text, "default").unwrap();
    for ns_secret in ["my-minio-cred", "my-minio-cred-1", "my-minio-cred-2"] {
        let s = secret("argo", ns_secret, "AK", "SK");
        inv.add_text("s", &s.to_string(), "default").unwrap();
    }
    // Argo's e2e store, as the operator allows it.
    let mut state = artgc_core::cluster::ClusterState::default()
        .with_policy(endpoints_policy(&["minio:9000".into()]));
    inv.secrets.into_iter().for_each(|s| state.insert_secret(s));
    let plan = artgc_core::plan::plan(&inv.workflows, &state, &Default::default());
    let wf = &plan.workflows[0].name;
    // The on-deletion artifact is key-only and its template has an archiveLocation.
    let on_del = art(&plan, wf, "on-deletion");
    assert_eq!(on_del.target.as_ref().unwrap().bucket, "my-bucket-3");
    assert!(matches!(
        on_del.decision,
        Decision::Skip(SkipReason::NotSelected { .. })
    ));
    for name in [
        "first-on-completion-1",
        "first-on-completion-2",
        "second-on-completion",
    ] {
        assert_eq!(art(&plan, wf, name).decision, Decision::Delete, "{name}");
    }
    // Logs follow the workflow-level strategy, unset here: Never.
    assert_eq!(
        art(&plan, wf, "main-logs").decision,
        Decision::Keep(KeepReason::Never)
    );
    assert_eq!(
        art(&plan, wf, "main-logs").target.as_ref().unwrap().bucket,
        "my-bucket"
    );
}

// ---- shared keys against the controller's index of other workflows ----

fn state() -> ClusterState {
    let mut inv = artgc_core::inventory::Inventory::default();
    let text =
        serde_json::to_string(&json!({"kind": "List", "apiVersion": "v1", "items": creds()}))
            .unwrap();
    inv.add_text("creds.json", &text, "default").unwrap();
    let mut state = ClusterState::new(Default::default()).with_policy(endpoints_policy(&[
        "minio:9000".into(),
        "minio.ns:9000".into(),
    ]));
    inv.secrets.into_iter().for_each(|s| state.insert_secret(s));
    state
}

fn index_of(others: Vec<Wf>) -> KeyIndex {
    let state = state();
    let mut index = KeyIndex::default();
    for w in others {
        let WorkflowInput::Valid(wf) = w.input() else {
            panic!("valid")
        };
        let key = KeyIndex::workflow_key(wf.namespace(), wf.name());
        index.set_workflow(&key, artgc_core::plan::workflow_key_uses(&wf, &state));
    }
    index
}

fn plan_against(w: Wf, index: &KeyIndex) -> artgc_core::plan::GcPlan {
    artgc_core::plan::plan_with_index(&[w.input()], &state(), &Default::default(), Some(index))
}

#[test]
fn an_indexed_live_use_keeps_and_an_indexed_due_use_does_not() {
    let live = index_of(vec![fixed("b", "Never", "my-file")]);
    let plan = plan_against(fixed("a", "OnWorkflowCompletion", "my-file"), &live);
    let Decision::Keep(KeepReason::Shared(by)) = &art(&plan, "a", "out").decision else {
        panic!("expected shared")
    };
    assert!(by.contains("ns/b (key my-file)"), "{by}");
    // b wants it gone too (due, or kept earlier only for a): nobody else needs it.
    let due = index_of(vec![fixed("b", "OnWorkflowCompletion", "my-file")]);
    let plan = plan_against(fixed("a", "OnWorkflowCompletion", "my-file"), &due);
    assert_eq!(art(&plan, "a", "out").decision, Decision::Delete);
}

#[test]
fn an_indexed_due_use_turns_live_when_it_overlaps_a_live_one() {
    // As keeping_propagates_until_stable, with b and c outside the plan.
    let index = index_of(vec![
        fixed("b", "OnWorkflowCompletion", "x/y/"),
        fixed("c", "Never", "x/y/g"),
    ]);
    let plan = plan_against(fixed("a", "OnWorkflowCompletion", "x/y/f"), &index);
    let Decision::Keep(KeepReason::Shared(by)) = &art(&plan, "a", "out").decision else {
        panic!("expected shared")
    };
    assert!(by.contains("ns/b"), "{by}");
}

#[test]
fn the_planned_workflows_own_index_entries_are_ignored() {
    // The index still holds "a" as it ran (its template names the key); "a" is now finished.
    let running = wf("a")
        .running()
        .template(json!({"name": "t", "outputs": {"artifacts": [key_only("out", "my-file")]}}));
    let index = index_of(vec![running]);
    assert_eq!(index.len(), 1);
    let plan = plan_against(fixed("a", "OnWorkflowCompletion", "my-file"), &index);
    assert_eq!(art(&plan, "a", "out").decision, Decision::Delete);
}

/// A running workflow named like a top-level folder keeps only what it uses: the controller's
/// index (folded by pod folder) and `plan -f` (every key as it is) decide alike.
#[test]
fn a_workflow_named_like_a_folder_does_not_keep_other_keys_in_it() {
    let reports = fixed("reports", "Never", "reports/reports-1/out.tgz").running();
    let team = fixed("team", "OnWorkflowCompletion", "reports/summary.csv");
    let index = index_of(vec![reports.clone()]);
    let cluster = plan_against(team.clone(), &index);
    assert_eq!(art(&cluster, "team", "out").decision, Decision::Delete);
    let files = plan_due(vec![reports.clone(), team], creds());
    assert_eq!(art(&files, "team", "out").decision, Decision::Delete);

    // Its own pods' folders stay covered, on both paths.
    let inside = fixed("other", "OnWorkflowCompletion", "reports/reports-1/out.tgz");
    let cluster = plan_against(inside.clone(), &index);
    assert!(matches!(
        art(&cluster, "other", "out").decision,
        Decision::Keep(KeepReason::Shared(_))
    ));
    let files = plan_due(vec![reports, inside], creds());
    assert!(matches!(
        art(&files, "other", "out").decision,
        Decision::Keep(KeepReason::Shared(_))
    ));
}

/// A memoization cache hit on an earlier step of the same workflow carries that step's keys:
/// the workflow's own artifact decides them, so they are deleted with it instead of being kept
/// for ever as "shared" with the workflow itself. A hit on another workflow's keys still keeps
/// them for their producer.
#[test]
fn a_cache_hit_on_the_same_workflow_does_not_pin_its_own_output() {
    let key = "w/w-1/out.tgz";
    let hit = |w: Wf, node: &str| {
        w.set(
            &["status", "nodes", node],
            json!({"id": node, "name": node, "type": "Pod", "phase": "Succeeded", "templateName": "t",
                   "memoizationStatus": {"hit": true, "key": "k", "cacheName": "c"},
                   "outputs": {"artifacts": [with_strategy(key_only("out", key), "OnWorkflowCompletion")]}}),
        )
    };
    let w = hit(fixed("w", "OnWorkflowCompletion", key), "w-2");
    let plan = plan_due(vec![w], creds());
    let own: Vec<&Decision> = plan.workflows[0]
        .artifacts
        .iter()
        .map(|a| &a.decision)
        .collect();
    assert_eq!(
        own,
        [&Decision::Delete, &Decision::Keep(KeepReason::Memoized)]
    );
    // Another workflow's hit on the same key keeps it.
    let other = hit(wf("consumer"), "c-1");
    let plan = plan_due(
        vec![fixed("w", "OnWorkflowCompletion", key), other],
        creds(),
    );
    assert!(matches!(
        art(&plan, "w", "out").decision,
        Decision::Keep(KeepReason::Shared(_))
    ));
}

/// A key kept only for its users is collected once no live workflow uses it, by whichever pass
/// sees the last use go: a consumer's cache hit on another workflow's output is deleted with
/// the consumer when the producer is gone (the controller's index sees every live workflow),
/// kept while the producer or another consumer still uses it, and kept by a plan over files,
/// which cannot know whether the producer lives.
#[test]
fn a_key_kept_only_for_a_consumer_is_collected_once_its_last_user_goes() {
    let key = "producer/producer-1/out.tgz";
    let consumer = |name: &str, strategy: &str| {
        wf(name).set(
            &["status", "nodes", "c-1"],
            json!({"id": "c-1", "name": "c-1", "type": "Pod", "phase": "Succeeded", "templateName": "t",
                   "memoizationStatus": {"hit": true, "key": "k", "cacheName": "c"},
                   "outputs": {"artifacts": [with_strategy(key_only("out", key), strategy)]}}),
        )
    };
    let due = consumer("consumer", "OnWorkflowCompletion");
    // The producer gone, no other user: the consumer's pass deletes it.
    let plan = plan_against(due.clone(), &index_of(vec![]));
    assert_eq!(art(&plan, "consumer", "out").decision, Decision::Delete);
    // The producer lives (its artifact not due): kept for it.
    let producer = fixed("producer", "OnWorkflowDeletion", key);
    let plan = plan_against(due.clone(), &index_of(vec![producer.clone()]));
    let Decision::Keep(KeepReason::Shared(by)) = &art(&plan, "consumer", "out").decision else {
        panic!(
            "expected shared: {:?}",
            art(&plan, "consumer", "out").decision
        )
    };
    assert!(by.contains("ns/producer"), "{by}");
    // Another consumer whose own hit is not due keeps it too.
    let other = consumer("other", "OnWorkflowDeletion");
    let plan = plan_against(due.clone(), &index_of(vec![other.clone()]));
    assert!(matches!(
        art(&plan, "consumer", "out").decision,
        Decision::Keep(KeepReason::Shared(_))
    ));
    // And the producer's own pass, seen from the other side: a live consumer keeps it; a
    // consumer that would delete it (due) does not.
    let plan = plan_against(
        fixed("producer", "OnWorkflowCompletion", key),
        &index_of(vec![other]),
    );
    assert!(matches!(
        art(&plan, "producer", "out").decision,
        Decision::Keep(KeepReason::Shared(_))
    ));
    let plan = plan_against(
        fixed("producer", "OnWorkflowCompletion", key),
        &index_of(vec![due.clone()]),
    );
    assert_eq!(art(&plan, "producer", "out").decision, Decision::Delete);
    // A plan over files cannot know the producer is gone.
    let files = plan_due(vec![due], creds());
    assert_eq!(
        art(&files, "consumer", "out").decision,
        Decision::Keep(KeepReason::Memoized)
    );
}

/// A use protects a key only where artgc would accept that location for the user's namespace:
/// a namespace with no repository for a store (nothing configured or granted there), writing
/// one `Never` artifact at the store's top folder or running a "reader" of it, pins nothing;
/// where the policy confines it to other buckets or prefixes, likewise. Both paths decide alike.
#[test]
fn a_use_protects_only_where_its_namespace_may_reach() {
    let owner = fixed(
        "owner",
        "OnWorkflowCompletion",
        "artifacts/owner/owner-1/out.tgz",
    );
    let store = s3_repo("minio.ns:9000", "repo-bucket", "cred");
    let pin = |ns: &str| {
        workflow(ns, "pin").status_repo(store.clone()).node(
            "n1",
            "t",
            vec![with_strategy(key_only("top", "artifacts"), "Never")],
        )
    };
    let reader = |ns: &str| {
        workflow(ns, "reader")
            .status_repo(store.clone())
            .running()
            .set(
                &["status", "nodes", "r1"],
                json!({"id": "r1", "type": "Pod", "phase": "Running", "templateName": "t",
                       "inputs": {"artifacts": [key_only("in", "artifacts/owner/")]}}),
            )
    };
    // Only the owner's namespace reaches the store (`minio:9000` relative to ns).
    let only_ns = || {
        let mut s = state();
        s.policy = endpoints_policy(&["minio:9000".into()]);
        s
    };
    for (who, user) in [("pin", pin("tenant-x")), ("reader", reader("tenant-x"))] {
        let mut index = KeyIndex::default();
        let WorkflowInput::Valid(wf) = user.clone().input() else {
            panic!("valid")
        };
        let key = KeyIndex::workflow_key(wf.namespace(), wf.name());
        index.set_workflow(&key, artgc_core::plan::workflow_key_uses(&wf, &only_ns()));
        let plan = artgc_core::plan::plan_with_index(
            &[owner.clone().input()],
            &only_ns(),
            &Default::default(),
            Some(&index),
        );
        assert_eq!(
            art(&plan, "owner", "out").decision,
            Decision::Delete,
            "{who}"
        );
        // The same use from a namespace that may reach the store protects the key.
        let plan = plan_against(
            owner.clone(),
            &index_of(vec![match who {
                "pin" => pin("tenant-x"),
                _ => reader("tenant-x"),
            }]),
        );
        assert!(
            matches!(art(&plan, "owner", "out").decision, Decision::Keep(_)),
            "{who} allowed: {:?}",
            art(&plan, "owner", "out").decision
        );
    }
}

/// A running workflow's next step reads `models/{{workflow.parameters.model}}.tgz`: the
/// parameter is substituted as Argo substitutes it, so the finished producer's pass keeps
/// `models/model-v3.tgz`. A tag artgc cannot resolve yet (`{{inputs.parameters.x}}`) protects
/// the folder before it, keeping more, never less.
#[test]
fn a_running_workflows_parameterised_inputs_are_protected() {
    let producer = fixed("producer", "OnWorkflowCompletion", "models/model-v3.tgz");
    let neighbour = fixed("neighbour", "OnWorkflowCompletion", "other/model-v3.tgz");
    let consumer = |key: &str| {
        wf("consumer")
            .running()
            .set(
                &["spec", "arguments"],
                json!({"parameters": [{"name": "model", "value": "model-v3"}]}),
            )
            .set(
                &["spec", "templates"],
                json!([{"name": "train", "inputs": {"artifacts": [
                    {"name": "model", "path": "/m", "s3": {"key": key}}]}}]),
            )
    };
    for key in [
        "models/{{workflow.parameters.model}}.tgz",
        "models/{{inputs.parameters.model}}.tgz",
    ] {
        for plan in [
            plan_due(
                vec![producer.clone(), neighbour.clone(), consumer(key)],
                creds(),
            ),
            plan_against(producer.clone(), &index_of(vec![consumer(key)])),
        ] {
            assert!(
                matches!(art(&plan, "producer", "out").decision, Decision::Keep(_)),
                "{key}: {:?}",
                art(&plan, "producer", "out").decision
            );
        }
        let plan = plan_due(vec![neighbour.clone(), consumer(key)], creds());
        assert_eq!(
            art(&plan, "neighbour", "out").decision,
            Decision::Delete,
            "{key}"
        );
    }
    // A tag before any folder names no place short of the bucket: nothing protected.
    let plan = plan_due(
        vec![
            producer.clone(),
            consumer("{{inputs.parameters.model}}.tgz"),
        ],
        creds(),
    );
    assert_eq!(art(&plan, "producer", "out").decision, Decision::Delete);
}

/// A running reader holds the owner's deletion (`read_by_running`, pending) only within its own
/// namespace: a tenant whose Workflow reads another namespace's key, forever `Running` by its
/// own hand if it likes, makes that key kept but settles the owner, so it cannot hold another
/// tenant's Workflow. Both paths, `plan -f` and the controller's index, decide alike.
#[test]
fn only_a_reader_of_the_owner_s_namespace_holds_it() {
    let owner = fixed("owner", "OnWorkflowDeletion", "owner/owner-1/out.tgz").deleting();
    // The owner's store (`minio:9000` in namespace ns), as seen from any namespace.
    let repo = s3_repo("minio.ns:9000", "repo-bucket", "cred");
    let reader = |ns: &str| {
        workflow(ns, "reader")
            .status_repo(repo.clone())
            .running()
            .set(
                &["status", "nodes", "r1"],
                json!({"id": "r1", "type": "Pod", "phase": "Running", "templateName": "t",
                       "inputs": {"artifacts": [key_only("in", "owner/owner-1/out.tgz")]}}),
            )
    };
    for (ns, pending) in [("ns", true), ("other-tenant", false)] {
        let files = plan_due(vec![owner.clone(), reader(ns)], creds());
        let index = index_of(vec![reader(ns)]);
        let cluster = plan_against(owner.clone(), &index);
        for plan in [&files, &cluster] {
            let d = &art(plan, "owner", "out").decision;
            match pending {
                true => assert!(
                    matches!(d, Decision::Keep(KeepReason::ReadByRunning(_))),
                    "{ns}: {d:?}"
                ),
                false => assert!(
                    matches!(d, Decision::Keep(KeepReason::Shared(_))),
                    "{ns}: {d:?}"
                ),
            }
        }
    }
}

/// The process's peak resident memory, in bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A few hundred KB of `compressedNodes` that inflate to 128 MB: an error for that workflow
/// (the default bound is 32 MiB), and memory stays flat.
#[test]
fn a_decompression_bomb_is_an_error_and_memory_stays_flat() {
    use base64::Engine;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..128 {
        gz.write_all(&chunk).unwrap();
    }
    let packed = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    assert!(packed.len() < 2 << 20, "{}", packed.len());
    let before = peak_rss();
    let w = wf("bomb")
        .set(&["status", "nodes"], json!({}))
        .set(&["status", "compressedNodes"], json!(packed));
    let plan = plan_due(vec![w], creds());
    let err = plan.workflows[0].error.as_ref().expect("an error");
    assert!(
        err.to_string().contains("decompresses to more than"),
        "{err}"
    );
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 96 << 20, "peak RSS grew by {} MiB", grown >> 20);
}

// ---- Argo conformance: templateDefaults, templateScope, deletion without the label ----

/// Argo merges `spec.templateDefaults` into every template it runs
/// (`mergedTemplateDefaultsInto`): a default archiveLocation is where outputs went. Argo's own
/// GC reads the raw template and looks in the repository instead.
/// Argo substitutes a template's input parameters into its `archiveLocation` for the pod, and
/// the node records the values it ran with: artgc resolves the location as Argo did. A node
/// of an inline template (which artgc cannot find by name) archived where `templateDefaults`
/// says when no template sets a location of its own.
#[test]
fn input_parameters_and_template_defaults_resolve_as_argo_ran_the_pod() {
    let mut archive = s3_repo(EP, "{{inputs.parameters.bucket}}", "cred");
    archive["s3"]["key"] = json!("x");
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .template(json!({"name": "t", "archiveLocation": archive,
                         "inputs": {"parameters": [{"name": "bucket"}]}}))
        .node("n1", "t", vec![key_only("a", "w/a.tgz")])
        .set(
            &["status", "nodes", "n1", "inputs"],
            json!({"parameters": [{"name": "bucket", "value": "team-data"}]}),
        )
        .node("n2", "t", vec![key_only("b", "w/b.tgz")]);
    let plan = plan_due(vec![w], creds());
    assert_eq!(
        art(&plan, "w", "a").target.as_ref().unwrap().bucket,
        "team-data"
    );
    assert_eq!(art(&plan, "w", "a").decision, Decision::Delete);
    // A node that recorded no value: refused, never the literal tag.
    let b = art(&plan, "w", "b");
    assert_eq!(b.decision.category(), "location", "{:?}", b.decision);

    let mut defaults = s3_repo("defaults:9000", "defaults-bucket", "cred");
    defaults["s3"]["key"] = json!("x");
    let inline = |own: Option<Value>| {
        let mut steps =
            json!({"name": "main", "steps": [[{"name": "s", "inline": {"container": {}}}]]});
        if let Some(own) = own {
            steps["steps"][0][0]["inline"]["archiveLocation"] = own;
        }
        wf("w")
            .strategy("OnWorkflowCompletion")
            .set(
                &["spec", "templateDefaults"],
                json!({"archiveLocation": defaults}),
            )
            .template(steps)
            .node("n1", "", vec![key_only("a", "w/a.tgz")])
    };
    let plan = plan_due(vec![inline(None)], creds());
    let a = art(&plan, "w", "a");
    assert_eq!(
        a.target.as_ref().map(|t| t.bucket.as_str()),
        Some("defaults-bucket"),
        "{:?}",
        a.decision
    );
    // Some template archives elsewhere on its own: the inline node's place is unknown.
    let mut own = s3_repo("other:9000", "own", "cred");
    own["s3"]["key"] = json!("x");
    let plan = plan_due(vec![inline(Some(own))], creds());
    assert_eq!(art(&plan, "w", "a").decision.category(), "location");
}

#[test]
fn template_defaults_archive_location_is_where_outputs_went() {
    let mut archive = s3_repo("defaults:9000", "defaults-bucket", "cred");
    archive["s3"]["key"] = json!("x");
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .set(
            &["spec", "templateDefaults"],
            json!({"archiveLocation": archive}),
        )
        .template(json!({"name": "t"}))
        // A template's own fields win, field by field (a strategic merge).
        .template(json!({"name": "own", "archiveLocation": {"s3": {"bucket": "own-bucket"}}}))
        .node("n1", "t", vec![key_only("a", "w/a.tgz")])
        .node("n2", "own", vec![key_only("b", "w/b.tgz")]);
    let plan = plan_due(vec![w], creds());
    let a = art(&plan, "w", "a").target.clone().unwrap();
    assert_eq!(
        (a.endpoint.as_str(), a.bucket.as_str(), a.key.as_str()),
        ("defaults:9000", "defaults-bucket", "w/a.tgz")
    );
    let b = art(&plan, "w", "b").target.clone().unwrap();
    assert_eq!(
        (b.endpoint.as_str(), b.bucket.as_str()),
        ("defaults:9000", "own-bucket")
    );

    // The stored WorkflowTemplate spec's defaults apply too; the workflow's own win over them.
    let mut stored = s3_repo("stored:9000", "stored-bucket", "cred");
    stored["s3"]["key"] = json!("x");
    let w = wf("w2")
        .strategy("OnWorkflowCompletion")
        .set(&["spec", "workflowTemplateRef"], json!({"name": "wt"}))
        .set(
            &["status", "storedWorkflowTemplateSpec"],
            json!({"templateDefaults": {"archiveLocation": stored}, "templates": [{"name": "t"}]}),
        )
        .node("n1", "t", vec![key_only("a", "w2/a.tgz")]);
    let plan = plan_due(vec![w.clone()], creds());
    assert_eq!(
        art(&plan, "w2", "a").target.as_ref().unwrap().bucket,
        "stored-bucket"
    );
    let w = w.set(
        &["spec", "templateDefaults"],
        json!({"archiveLocation": {"s3": {"bucket": "mine"}}}),
    );
    let plan = plan_due(vec![w], creds());
    let t = art(&plan, "w2", "a").target.clone().unwrap();
    assert_eq!(
        (t.endpoint.as_str(), t.bucket.as_str()),
        ("stored:9000", "mine")
    );
}

/// A WorkflowTemplate's local template runs with `templateScope: namespaced/<wt>` and is stored
/// as `storedTemplates["namespaced/<wt>/<name>"]`; a same-named template of the Workflow is not
/// it (Argo's GC looks up the name in the Workflow only).
#[test]
fn template_scope_finds_the_workflow_template_s_own_template() {
    let mut archive = s3_repo("wt:9000", "wt-bucket", "cred");
    archive["s3"]["key"] = json!("x");
    let node = |id: &str, scope: &str, art: Value| {
        json!({"id": id, "type": "Pod", "phase": "Succeeded", "templateName": "build",
               "templateScope": scope, "outputs": {"artifacts": [art]}})
    };
    let w = wf("w")
        .strategy("OnWorkflowCompletion")
        .template(json!({"name": "build"}))
        .set(
            &["status", "storedTemplates", "namespaced/my-wt/build"],
            json!({"name": "build", "archiveLocation": archive}),
        )
        .set(
            &["status", "nodes", "n1"],
            node("n1", "namespaced/my-wt", key_only("scoped", "w/a.tgz")),
        )
        .set(
            &["status", "nodes", "n2"],
            node("n2", "local/w", key_only("local", "w/b.tgz")),
        )
        .set(
            &["status", "nodes", "n3"],
            node("n3", "my-wt", key_only("bare", "w/c.tgz")),
        );
    let plan = plan_due(vec![w], creds());
    let bucket = |a: &str| art(&plan, "w", a).target.as_ref().unwrap().bucket.clone();
    assert_eq!(bucket("scoped"), "wt-bucket");
    assert_eq!(bucket("local"), "repo-bucket");
    // A bare scope is namespaced (Argo's GetTemplateScope).
    assert_eq!(bucket("bare"), "wt-bucket");
}

/// Argo's `artifactGCStrategiesReady`: a finished workflow being deleted is due even when the
/// `completed` label never came; one still running is not.
#[test]
fn a_deleted_workflow_in_a_final_phase_is_due_without_the_completed_label() {
    let unlabelled = |w: Wf| w.set(&["metadata", "labels"], json!({}));
    let plan = plan_due(
        vec![unlabelled(two_strategies(wf("w"))).deleting()],
        creds(),
    );
    assert_eq!(art(&plan, "w", "comp").decision, Decision::Delete);
    assert_eq!(art(&plan, "w", "del").decision, Decision::Delete);

    let plan = plan_due(vec![unlabelled(two_strategies(wf("w")))], creds());
    assert!(matches!(
        art(&plan, "w", "comp").decision,
        Decision::Skip(SkipReason::NotFinished(_))
    ));
    let running = unlabelled(two_strategies(wf("w")))
        .set(&["status", "phase"], json!("Running"))
        .deleting();
    let plan = plan_due(vec![running], creds());
    assert!(matches!(
        art(&plan, "w", "comp").decision,
        Decision::Skip(SkipReason::NotFinished(_))
    ));
}

/// Argo substitutes workflow variables into a pod's template, archiveLocation included, and
/// keeps the raw text in status: resolve what the Workflow says, refuse the rest.
#[test]
fn workflow_parameters_in_an_archive_location_are_resolved_or_refused() {
    let mut archive = s3_repo("archive:9000", "{{workflow.parameters.bucket}}", "cred");
    archive["s3"]["key"] = json!("x");
    let w = |name: &str, args: Value| {
        wf(name)
            .strategy("OnWorkflowCompletion")
            .set(&["spec", "arguments"], args)
            .template(json!({"name": "t", "archiveLocation": archive.clone()}))
            .node("n1", "t", vec![key_only("a", &format!("{name}/a.tgz"))])
    };
    let plan = plan_due(
        vec![
            w(
                "known",
                json!({"parameters": [{"name": "bucket", "value": "team-data"}]}),
            ),
            w(
                "unknown",
                json!({"parameters": [{"name": "bucket",
                "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]}),
            ),
        ],
        creds(),
    );
    let known = art(&plan, "known", "a");
    assert_eq!(known.decision, Decision::Delete);
    assert_eq!(known.target.as_ref().unwrap().bucket, "team-data");
    let unknown = art(&plan, "unknown", "a");
    let Decision::Error(e) = &unknown.decision else {
        panic!("{:?}", unknown.decision);
    };
    assert!(
        e.to_string()
            .contains("s3.bucket uses {{workflow.parameters.bucket}}"),
        "{e}"
    );
    assert!(unknown.connection.is_none());

    // A substituted endpoint passes the same gate as a written one: a tenant's parameter
    // cannot point artgc at a store not configured for its namespace.
    let mut to = s3_repo("{{workflow.parameters.ep}}", "b", "cred");
    to["s3"]["key"] = json!("x");
    let w = wf("steer")
        .strategy("OnWorkflowCompletion")
        .set(
            &["spec", "arguments"],
            json!({"parameters": [{"name": "ep", "value": "169.254.169.254:80"}]}),
        )
        .template(json!({"name": "t", "archiveLocation": to}))
        .node("n1", "t", vec![key_only("a", "steer/a.tgz")]);
    let plan = plan_due(vec![w], creds());
    let steered = art(&plan, "steer", "a");
    assert_eq!(steered.decision.category(), "endpoint_not_allowed");
    assert!(steered.connection.is_none());
}

/// The policy's `reclaimVersions` marks a namespace's artifacts for reclaiming versions, in
/// the buckets it names (none named: every bucket); without it, nowhere. A misspelt field is
/// refused.
#[test]
fn reclaim_versions_follows_the_policy_per_namespace_and_bucket() {
    let art_in = |name: &str, bucket: &str| {
        json!({"name": name, "artifactGC": {"strategy": "OnWorkflowCompletion"}, "s3": {
            "endpoint": "s3.amazonaws.com", "bucket": bucket, "key": format!("k/{name}"),
            "useSDKCreds": true, "region": "eu-west-1"}})
    };
    let w = wf("w").node(
        "n1",
        "t",
        vec![art_in("a", "versioned"), art_in("b", "plain")],
    );
    let with = |text: &str| {
        let policy = artgc_core::policy::Policy::parse(text).unwrap();
        plan_with_policy(vec![w.clone()], vec![], StrategyFilter::Due, policy.into())
    };
    let base = "defaults:\n  identities: [controller]\n  endpoints: [s3.amazonaws.com]\n";
    let plan = with(base);
    assert!(!art(&plan, "w", "a").reclaim_versions);
    let plan = with(&format!(
        "{base}  reclaimVersions: {{buckets: [versioned]}}\n"
    ));
    assert_eq!(art(&plan, "w", "a").decision, Decision::Delete);
    assert!(art(&plan, "w", "a").reclaim_versions);
    assert!(!art(&plan, "w", "b").reclaim_versions);
    let plan = with(&format!("{base}  reclaimVersions: {{}}\n"));
    assert!(art(&plan, "w", "b").reclaim_versions);
    // By endpoint: the artifacts' (https, as AWS's is reached) or another.
    let plan = with(&format!(
        "{base}  reclaimVersions: {{endpoints: [s3.amazonaws.com]}}\n"
    ));
    assert!(art(&plan, "w", "a").reclaim_versions);
    let plan = with(&format!(
        "{base}  reclaimVersions: {{endpoints: [minio.example.com:9000]}}\n"
    ));
    assert!(!art(&plan, "w", "a").reclaim_versions);
    // Another namespace's rule grants nothing here.
    let plan = with(&format!(
        "{base}rules:\n- namespaces: [other]\n  identities: [controller]\n  reclaimVersions: {{}}\n"
    ));
    assert!(!art(&plan, "w", "a").reclaim_versions);
    assert!(
        artgc_core::policy::Policy::parse(&format!("{base}  reclaimVersions: {{bucket: [x]}}\n"))
            .is_err()
    );
}
