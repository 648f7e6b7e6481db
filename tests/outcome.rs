//! What a pass records, from its plan and what the store did: the finalizer rules (including
//! forceFinalizerRemoval) and strategiesProcessed. Pure: no network.

mod support;

use artgc::execute::{ArtifactOutcome, Execution};
use artgc::outcome::{ConditionChange, FinalizerChange, PassContext, assess};
use artgc::plan::{GcPlan, Strategy};
use artgc::store::{StoreError, StoreErrorKind};
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

fn ctx(plan_deleting: bool, has_finalizer: bool, force: bool, attempt: u32) -> PassContext {
    PassContext {
        finished: true,
        deleting: plan_deleting,
        has_finalizer,
        force_finalizer_removal: force,
        attempt,
        budget: 3,
        may_need_gc: true,
        processed: Default::default(),
        has_condition: false,
    }
}

/// Every planned deletion succeeded, or failed with 403 when `fail` names the artifact.
fn run(plan: &GcPlan, fail: Option<&str>) -> Execution {
    let mut exec = Execution::default();
    for (a, art) in plan.workflows[0].artifacts.iter().enumerate() {
        if art.connection.is_none() {
            continue;
        }
        let error = (Some(art.name.as_str()) == fail).then(|| StoreError {
            kind: StoreErrorKind::AccessDenied,
            message: "AccessDenied".into(),
        });
        exec.outcomes.insert(
            (0, a),
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

#[test]
fn the_completion_pass_holds_the_finalizer_for_deletion_work_and_marks_completion_only() {
    let plan = plan_due(vec![wf("w")], creds());
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&run(&plan, None)),
        &ctx(false, false, false, 1),
    );
    assert_eq!(out.update.processed, [Strategy::OnWorkflowCompletion]);
    assert_eq!(out.update.deleted.len(), 1);
    assert_eq!(
        out.update.finalizer,
        FinalizerChange::Add,
        "d still waits for deletion"
    );
    assert!(out.pending);
    assert_eq!(out.update.condition, ConditionChange::Keep);
}

#[test]
fn the_deletion_pass_releases_when_everything_is_settled() {
    let plan = plan_due(vec![wf("w").deleting()], creds());
    let out = assess(
        &plan.workflows[0],
        0,
        Some(&run(&plan, None)),
        &ctx(true, true, false, 1),
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
            &ctx(true, true, true, attempt),
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
        &ctx(true, true, true, 3),
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
        &ctx(true, true, false, 99),
    );
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
}

#[test]
fn a_running_workflow_being_deleted_is_held_until_it_finishes() {
    let plan = plan_due(vec![wf("w").running().deleting()], creds());
    let mut c = ctx(true, true, true, 99);
    c.finished = false;
    let out = assess(&plan.workflows[0], 0, None, &c);
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
    assert!(out.update.processed.is_empty());
}

#[test]
fn nothing_carried_out_is_never_recorded_as_done() {
    // A dry run: planned deletions without outcomes stay pending.
    let plan = plan_due(vec![wf("w").deleting()], creds());
    let out = assess(&plan.workflows[0], 0, None, &ctx(true, true, true, 99));
    assert!(out.update.deleted.is_empty());
    assert!(out.update.processed.is_empty());
    assert_eq!(out.update.finalizer, FinalizerChange::Keep);
}
