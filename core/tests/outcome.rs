//! What a pass records, from its plan and what the store did: the finalizer rules (including
//! forceFinalizerRemoval) and strategiesProcessed. Pure: no network.

mod support;

use artgc_core::error::{StoreError, StoreErrorKind};
use artgc_core::execution::{ArtifactOutcome, Execution};
use artgc_core::outcome::{ConditionChange, FinalizerChange, KeptReason, PassContext, assess};
use artgc_core::plan::{ArtifactRef, GcPlan, Strategy};
use support::*;

fn creds() -> Vec<serde_json::Value> {
    vec![secret("ns", "cred", "AK", "SK")]
}

fn wf(name: &str) -> Wf {
    workflow("ns", name)
        .status_repo(s3_repo("minio:9000", "b", "cred"))
        .node(
            "n1",
            "t",
            vec![
                with_strategy(key_only("c", "w/c.tgz"), "OnWorkflowCompletion"),
                with_strategy(key_only("d", "w/d.tgz"), "OnWorkflowDeletion"),
            ],
        )
}

/// Every planned deletion succeeded, or failed with 403 when `fail` names the artifact.
fn run(plan: &GcPlan, fail: Option<&str>) -> Execution {
    let mut exec = Execution::default();
    for (a, art) in plan.workflows[0].artifacts.iter().enumerate() {
        if art.connection.is_none() {
            continue;
        }
        let error = (Some(art.name.as_str()) == fail)
            .then(|| StoreError::new(StoreErrorKind::AccessDenied, "AccessDenied"));
        exec.outcomes.insert(
            ArtifactRef::new(0, a),
            ArtifactOutcome {
                objects: 1,
                bytes: 10,
                error,
                ..Default::default()
            },
        );
    }
    exec
}

/// A finished workflow is never given the finalizer (it is added while Argo runs the workflow);
/// the completion pass marks only completion as processed.
#[test]
fn the_completion_pass_marks_completion_only_and_adds_no_finalizer() {
    let plan = plan_due(vec![wf("w")], creds());
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&run(&plan, None)),
        &completed_pass(),
    );
    assert_eq!(out.update.processed, [Strategy::OnWorkflowCompletion]);
    assert_eq!(out.update.deleted.len(), 1);
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
    assert!(out.pending, "d still waits for deletion");
    assert_eq!(out.update.condition, ConditionChange::Keep);
}

#[test]
fn the_deletion_pass_releases_when_everything_is_settled() {
    let plan = plan_due(vec![wf("w").deleting()], creds());
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&run(&plan, None)),
        &completed_pass().deleted().holding(),
    );
    assert_eq!(
        out.update.finalizer,
        FinalizerChange::Remove { forced: false }
    );
    assert_eq!(
        out.update.processed,
        [Strategy::OnWorkflowCompletion, Strategy::OnWorkflowDeletion]
    );
}

#[test]
fn force_releases_only_once_the_budget_is_spent_and_never_marks_failed_work_processed() {
    let plan = plan_due(vec![wf("w").deleting()], creds());
    let exec = run(&plan, Some("d"));
    for attempt in 1..3 {
        let out = assess(
            &plan.workflows[0],
            0,
            Some(&exec),
            &completed_pass()
                .deleted()
                .holding()
                .forcing()
                .attempt(attempt),
        );
        assert_eq!(
            out.update.finalizer,
            FinalizerChange::Keep,
            "attempt {attempt}"
        );
        assert!(matches!(out.update.condition, ConditionChange::Set(ref m) if m.contains("n1/d")));
    }
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&exec),
        &completed_pass().deleted().holding().forcing().attempt(3),
    );
    assert_eq!(
        out.update.finalizer,
        FinalizerChange::Remove { forced: true }
    );
    assert_eq!(out.update.processed, [Strategy::OnWorkflowCompletion]);
    // Without force: held however often it failed.
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&exec),
        &completed_pass().deleted().holding().attempt(99),
    );
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
}

#[test]
fn a_running_workflow_being_deleted_is_held_until_it_finishes() {
    let plan = plan_due(vec![wf("w").running().deleting()], creds());
    let mut c = completed_pass().deleted().holding().forcing().attempt(99);
    c.finished = false;
    let out = assess(&plan.workflows[0], 0, None, &c);
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
    assert!(out.update.processed.is_empty());
}

#[test]
fn nothing_carried_out_is_never_recorded_as_done() {
    // A dry run: planned deletions without outcomes stay pending.
    let plan = plan_due(vec![wf("w").deleting()], creds());
    let out = assess(
        &plan.workflows[0],
        0,
        None,
        &completed_pass().deleted().holding().forcing().attempt(99),
    );
    assert!(out.update.deleted.is_empty());
    assert!(out.update.processed.is_empty());
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
}

/// Every branch of the finalizer rule, one row each.
#[test]
fn the_finalizer_rule_table() {
    use FinalizerChange::*;
    use artgc_core::outcome::{Collection, finalizer_change};
    // deleting, finished, started, holds, may_need_gc, force, attempt, pending, failed -> change
    type Row = (
        bool,
        bool,
        bool,
        bool,
        bool,
        bool,
        u32,
        bool,
        bool,
        FinalizerChange,
    );
    #[rustfmt::skip]
    let rows: [Row; 14] = [
        // running: added once Argo started it and it declares GC
        (false, false, true,  false, true,  false, 1, true,  false, Add),
        (false, false, false, false, true,  false, 1, true,  false, Keep), // never started
        (false, false, true,  false, false, false, 1, true,  false, Keep), // declares no GC
        (false, false, true,  true,  true,  false, 1, true,  false, Keep), // already there
        // finished, not deleted: never added; released once nothing is pending
        (false, true,  true,  false, true,  false, 1, true,  false, Keep),
        (false, true,  true,  true,  true,  false, 1, false, false, Remove { forced: false }),
        (false, true,  true,  true,  true,  false, 1, true,  false, Keep),
        // deleted while running: held until it finishes; never started: released at once
        (true,  false, true,  true,  true,  true,  9, true,  true,  Keep),
        (true,  false, false, true,  true,  false, 1, true,  false, Remove { forced: false }),
        // deleted and finished
        (true,  true,  true,  true,  true,  false, 1, false, false, Remove { forced: false }),
        (true,  true,  true,  true,  true,  false, 9, true,  true,  Keep),
        (true,  true,  true,  true,  true,  true,  2, true,  true,  Keep),
        (true,  true,  true,  true,  true,  true,  3, true,  true,  Remove { forced: true }),
        (true,  true,  true,  false, true,  true,  3, true,  true,  Keep), // not ours to hold
    ];
    for (i, (deleting, finished, started, holds, need, force, attempt, pending, failed, want)) in
        rows.into_iter().enumerate()
    {
        let c = PassContext {
            finished,
            started,
            deleting,
            has_finalizer: holds,
            force_finalizer_removal: force,
            attempt,
            budget: 3,
            may_need_gc: need,
            may_add_finalizer: true,
            processed: Default::default(),
            has_condition: false,
        };
        assert_eq!(
            finalizer_change(&c, Collection::of(pending, failed)),
            want,
            "row {i}"
        );
        // A one-off purge never adds it, and otherwise decides the same.
        let purge = PassContext {
            may_add_finalizer: false,
            ..c
        };
        let want = if want == Add { Keep } else { want };
        assert_eq!(
            finalizer_change(&purge, Collection::of(pending, failed)),
            want,
            "row {i}, purge"
        );
    }
}

/// Drivers artgc cannot delete, and nodes it cannot read, are reported but hold nothing.
#[test]
fn what_artgc_cannot_collect_is_reported_and_settled() {
    let gcs = serde_json::json!({"name": "g", "gcs": {"bucket": "b", "key": "k"},
                                 "artifactGC": {"strategy": "OnWorkflowDeletion"}});
    let plan = plan_due(vec![wf("w").deleting().node("n2", "t", vec![gcs])], creds());
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&run(&plan, None)),
        &completed_pass().deleted().holding(),
    );
    assert!(out.failures.is_empty());
    assert_eq!(out.notes.len(), 1);
    assert!(matches!(out.update.condition, ConditionChange::Set(ref m) if m.contains("n2/g")));
    assert_eq!(
        out.update.finalizer,
        FinalizerChange::Remove { forced: false }
    );
    assert!(out.kept.contains(&KeptReason::Unsupported));

    let broken = artgc_core::plan::WorkflowPlan::unplannable(
        "ns",
        "w",
        artgc_core::error::InputError::Field {
            field: "status.nodes".into(),
            reason: "not a map".into(),
        },
    );
    let out = assess(&broken, 0, None, &completed_pass().deleted().holding());
    assert!(out.failures.is_empty() && out.notes.len() == 1);
    assert_eq!(
        out.update.finalizer,
        FinalizerChange::Remove { forced: false }
    );
    // Released, but nothing was collected: no strategy is recorded processed.
    assert_eq!(out.update.processed, []);
}

/// A failed deletion pass is counted on the Workflow; a completion pass never is.
#[test]
fn failed_deletion_passes_are_counted_on_the_workflow() {
    let plan = plan_due(vec![wf("w").deleting()], creds());
    let exec = run(&plan, Some("d"));
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&exec),
        &completed_pass().deleted().holding().forcing().attempt(2),
    );
    assert_eq!(out.update.deletion_attempts, Some(2));
    let plan = plan_due(vec![wf("w")], creds());
    let exec = run(&plan, Some("c"));
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&exec),
        &completed_pass().holding().forcing(),
    );
    assert_eq!(out.update.deletion_attempts, None);
}

/// A pass stopped between batches (shutdown, leadership lost) proves nothing: the condition of
/// an earlier failure stays, and nothing is marked.
#[test]
fn a_cancelled_pass_keeps_the_condition() {
    let plan = plan_due(vec![wf("w")], creds());
    let mut exec = run(&plan, None);
    for o in exec.outcomes.values_mut() {
        o.error = Some(StoreError::cancelled());
    }
    let mut c = completed_pass();
    c.has_condition = true;
    let out = assess(&plan.workflows[0], 0, Some(&exec), &c);
    assert_eq!(out.update.condition, ConditionChange::Keep);
    assert!(out.update.deleted.is_empty() && out.failures.is_empty() && out.pending);
}

/// A key kept only because a running workflow reads it (an input) is pending: the reader never
/// deletes its inputs, so settling now would orphan it. The finalizer stays and the strategy is
/// not processed until the reader finishes. A running writer of the key will own it (its own GC
/// deletes it), so that keep settles.
#[test]
fn a_key_read_by_a_running_workflow_is_pending_not_settled() {
    use artgc_core::plan::{Decision, KeepReason};
    use serde_json::json;
    let owner = workflow("ns", "owner")
        .status_repo(s3_repo("minio:9000", "b", "cred"))
        .node(
            "n1",
            "t",
            vec![with_strategy(
                key_only("out", "owner/n1/out.tgz"),
                "OnWorkflowDeletion",
            )],
        )
        .deleting();
    let reader = workflow("ns", "reader")
        .status_repo(s3_repo("minio:9000", "b", "cred"))
        .running()
        .set(
            &["status", "nodes", "r1"],
            json!({"id": "r1", "type": "Pod", "phase": "Running", "templateName": "t",
                   "inputs": {"artifacts": [key_only("in", "owner/n1/out.tgz")]}}),
        );
    let plan = plan_due(vec![owner.clone(), reader], creds());
    let art = &plan.workflows[0].artifacts[0];
    assert!(
        matches!(&art.decision, Decision::Keep(KeepReason::ReadByRunning(by)) if by.contains("ns/reader")),
        "{:?}",
        art.decision
    );
    let out = assess(
        &plan.workflows[0],
        0,
        None,
        &completed_pass().deleted().holding(),
    );
    assert!(out.pending && out.waiting_on_readers);
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
    assert!(!out.update.processed.contains(&Strategy::OnWorkflowDeletion));

    // A running workflow that writes the key (a template output) settles it.
    let writer = workflow("ns", "writer")
        .running()
        .template(json!({"name": "t",
        "outputs": {"artifacts": [{"name": "o", "s3": {"key": "owner/n1/out.tgz"}}]}}));
    let writer = writer.status_repo(s3_repo("minio:9000", "b", "cred"));
    let plan = plan_due(vec![owner, writer], creds());
    let art = &plan.workflows[0].artifacts[0];
    assert!(
        matches!(&art.decision, Decision::Keep(KeepReason::Shared(_))),
        "{:?}",
        art.decision
    );
    let out = assess(
        &plan.workflows[0],
        0,
        None,
        &completed_pass().deleted().holding(),
    );
    assert!(!out.waiting_on_readers);
    assert_eq!(
        out.update.finalizer,
        FinalizerChange::Remove { forced: false }
    );
}

/// Where the policy reclaims versions, a finished workflow whose artifacts wait for its
/// deletion still gets a pass now: it records when artgc saw it finished
/// (`artgc.io/finished-seen`), the bound on its run's window when it is deleted days later.
/// Once recorded, or where nothing is reclaimed, nothing asks for that pass.
#[test]
fn a_finished_workflow_is_passed_once_to_record_its_finish_where_versions_are_reclaimed() {
    use artgc_core::outcome::wants_pass;
    let deletion_only = |seen: Option<&str>| {
        let mut w = workflow("ns", "w")
            .status_repo(s3_repo("minio:9000", "b", "cred"))
            .node(
                "n1",
                "t",
                vec![with_strategy(
                    key_only("d", "w/d.tgz"),
                    "OnWorkflowDeletion",
                )],
            );
        if let Some(t) = seen {
            w = w.set(
                &["metadata", "annotations"],
                serde_json::json!({"artgc.io/finished-seen": t}),
            );
        }
        w
    };
    let reclaiming = "defaults:\n  endpoints: [\"minio:9000\"]\n  reclaimVersions: {}\n";
    let plain = "defaults:\n  endpoints: [\"minio:9000\"]\n";
    for (text, seen, want) in [
        (reclaiming, None, true),
        (reclaiming, Some("2026-12-07T10:00:00Z"), false),
        (plain, None, false),
    ] {
        let w = deletion_only(seen);
        let policy = std::sync::Arc::new(artgc_core::policy::Policy::parse(text).unwrap());
        let plan = plan_with_policy(vec![w.clone()], creds(), Default::default(), policy);
        let artgc_core::inventory::WorkflowInput::Valid(parsed) = w.input() else {
            panic!("valid")
        };
        assert_eq!(
            wants_pass(&parsed, &plan.workflows[0], false),
            want,
            "{text} {seen:?}"
        );
    }
}
