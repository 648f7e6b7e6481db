//! The judge's rules as tables: each row is one situation and what the rule answers. The
//! situations are built from one baseline (`completed_pass`: a finished, undeleted workflow
//! that Argo started, without the finalizer) so each row names only what differs.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use artgc_core::error::{StoreError, StoreErrorKind};
use artgc_core::execution::ArtifactOutcome;
use artgc_core::outcome::{
    ArtifactVerdict, Collection, ConditionChange, Failure, FinalizerChange, KeptReason,
    PassContext, condition_change, decide_artifact, finalizer_change, processed_strategies,
};
use artgc_core::plan::{
    ArtifactPlan, Decision, KeepReason, OutputFacts, SkipReason, Strategy, StrategyFilter,
    memoized_without_a_view, output_decision, selected_by_filter,
};
use support::{Situation, completed_pass};

fn running() -> PassContext {
    PassContext {
        finished: false,
        ..completed_pass()
    }
}

const KEEP: FinalizerChange = FinalizerChange::Keep;
const ADD: FinalizerChange = FinalizerChange::Add;
const REMOVE: FinalizerChange = FinalizerChange::Remove { forced: false };
const FORCE: FinalizerChange = FinalizerChange::Remove { forced: true };

/// Every branch of the finalizer rule, and the near misses that must not take it.
#[test]
fn finalizer_rule() {
    // Deleted, failing, forceFinalizerRemoval set, and the budget (3) spent.
    let spent = |c: PassContext| c.holding().deleted().forcing().attempt(3);
    // (situation, pending, failed, expected)
    let rows: Vec<(&str, PassContext, bool, bool, FinalizerChange)> = vec![
        // Adding: only while Argo runs a workflow that declares GC, and only where allowed.
        ("running, declares GC", running(), true, false, ADD),
        (
            "running, declares no GC",
            PassContext {
                may_need_gc: false,
                ..running()
            },
            false,
            false,
            KEEP,
        ),
        (
            "running, adding not allowed (purge)",
            PassContext {
                may_add_finalizer: false,
                ..running()
            },
            true,
            false,
            KEEP,
        ),
        (
            "never started",
            PassContext {
                started: false,
                ..running()
            },
            true,
            false,
            KEEP,
        ),
        (
            "running, holds it already",
            running().holding(),
            true,
            false,
            KEEP,
        ),
        (
            "finished, not held: never added",
            completed_pass(),
            true,
            false,
            KEEP,
        ),
        // Releasing a completed, undeleted workflow once nothing is pending.
        (
            "finished, nothing pending",
            completed_pass().holding(),
            false,
            false,
            REMOVE,
        ),
        (
            "finished, work pending",
            completed_pass().holding(),
            true,
            false,
            KEEP,
        ),
        // Deleted workflows.
        (
            "deleted, nothing pending",
            completed_pass().holding().deleted(),
            false,
            false,
            REMOVE,
        ),
        (
            "deleted, still pending",
            completed_pass().holding().deleted(),
            true,
            false,
            KEEP,
        ),
        (
            "deleted, failing, no force",
            completed_pass().holding().deleted(),
            true,
            true,
            KEEP,
        ),
        (
            "deleted, failing, force, budget spent",
            spent(completed_pass()),
            true,
            true,
            FORCE,
        ),
        (
            "deleted, failing, force, budget left",
            PassContext {
                attempt: 2,
                ..spent(completed_pass())
            },
            true,
            true,
            KEEP,
        ),
        (
            "deleted, force, pending but not failing",
            spent(completed_pass()),
            true,
            false,
            KEEP,
        ),
        (
            "deleted while running: let it finish",
            running().holding().deleted(),
            true,
            false,
            KEEP,
        ),
        (
            "deleted, never started: released at once",
            PassContext {
                started: false,
                ..running().holding().deleted()
            },
            true,
            false,
            REMOVE,
        ),
        (
            "deleted, not ours",
            PassContext {
                has_finalizer: false,
                ..completed_pass().holding().deleted()
            },
            false,
            false,
            KEEP,
        ),
    ];
    for (what, ctx, pending, failed, want) in rows {
        assert_eq!(
            finalizer_change(&ctx, Collection::of(pending, failed)),
            want,
            "{what}"
        );
    }
}

fn artifact(strategy: Strategy, decision: Decision) -> ArtifactPlan {
    ArtifactPlan {
        node: "n1".into(),
        index: 0,
        name: "out".into(),
        strategy,
        due: true,
        target: None,
        kind: None,
        archive_none: false,
        file_seen: false,
        connection: None,
        customer_key: false,
        reclaim_versions: false,
        cache_hit: false,
        decision,
    }
}

fn done(objects: u64, written_after: u64, error: Option<StoreErrorKind>) -> ArtifactOutcome {
    ArtifactOutcome {
        objects,
        bytes: objects * 10,
        written_after,
        error: error.map(|k| match k {
            StoreErrorKind::Cancelled => StoreError::cancelled(),
            k => StoreError::new(k, "denied"),
        }),
        ..Default::default()
    }
}

/// What one artifact comes to, for every plan decision and executor result.
#[test]
fn artifact_rule() {
    use ArtifactVerdict::*;
    let c = Strategy::OnWorkflowCompletion;
    let failed = |category: &'static str, reason: &str| {
        Failed(Failure {
            what: "n1/out".into(),
            category,
            reason: reason.into(),
        })
    };
    let unsupported = Decision::Unsupported("hdfs");
    let resolve = Decision::Error(artgc_core::error::ResolveError::Secret("no secret".into()));
    let ok = done(2, 0, None);
    let late = done(2, 1, None);
    let versioned = ArtifactOutcome {
        hidden_bytes: 15,
        bytes: 5,
        locked: 1,
        ..done(2, 0, None)
    };
    let denied = done(0, 0, Some(StoreErrorKind::AccessDenied));
    let stopped = done(0, 0, Some(StoreErrorKind::Cancelled));
    let rows: Vec<(
        &str,
        ArtifactPlan,
        Option<&ArtifactOutcome>,
        bool,
        ArtifactVerdict,
    )> = vec![
        (
            "deleted",
            artifact(c, Decision::Delete),
            Some(&ok),
            true,
            Deleted {
                objects: 2,
                bytes: 20,
                hidden_bytes: 0,
                written_after: false,
                locked: false,
            },
        ),
        (
            "deleted, later objects left",
            artifact(c, Decision::Delete),
            Some(&late),
            true,
            Deleted {
                objects: 2,
                bytes: 20,
                hidden_bytes: 0,
                written_after: true,
                locked: false,
            },
        ),
        (
            "deleted in a versioned bucket: some bytes hidden, a version locked",
            artifact(c, Decision::Delete),
            Some(&versioned),
            true,
            Deleted {
                objects: 2,
                bytes: 5,
                hidden_bytes: 15,
                written_after: false,
                locked: true,
            },
        ),
        (
            "store refused",
            artifact(c, Decision::Delete),
            Some(&denied),
            true,
            failed("access_denied", "denied"),
        ),
        (
            "stopped between batches",
            artifact(c, Decision::Delete),
            Some(&stopped),
            true,
            Pending { cancelled: true },
        ),
        (
            "dry run",
            artifact(c, Decision::Delete),
            None,
            true,
            Pending { cancelled: false },
        ),
        (
            "Never",
            artifact(Strategy::Never, Decision::Keep(KeepReason::Never)),
            None,
            true,
            Kept {
                reason: KeptReason::Never,
                pending: false,
            },
        ),
        (
            "shared",
            artifact(c, Decision::Keep(KeepReason::Shared("ns/other".into()))),
            None,
            true,
            Kept {
                reason: KeptReason::Shared,
                pending: false,
            },
        ),
        (
            "read by a running workflow: pending",
            artifact(c, Decision::Keep(KeepReason::ReadByRunning("ns/r".into()))),
            None,
            true,
            Kept {
                reason: KeptReason::ReadByRunning,
                pending: true,
            },
        ),
        (
            "already deleted",
            artifact(c, Decision::Skip(SkipReason::AlreadyDeleted)),
            None,
            true,
            Settled,
        ),
        (
            "deletion strategy, not deleted yet",
            artifact(
                Strategy::OnWorkflowDeletion,
                Decision::Skip(SkipReason::NotSelected {
                    strategy: Strategy::OnWorkflowDeletion,
                }),
            ),
            None,
            true,
            Pending { cancelled: false },
        ),
        (
            "Never, not selected",
            artifact(
                Strategy::Never,
                Decision::Skip(SkipReason::NotSelected {
                    strategy: Strategy::Never,
                }),
            ),
            None,
            true,
            Settled,
        ),
        (
            "unsupported driver, finished: noted",
            artifact(c, unsupported.clone()),
            None,
            true,
            Noted(
                Failure {
                    what: "n1/out".into(),
                    category: "unsupported_driver",
                    reason: "artgc cannot delete hdfs artifacts".into(),
                },
                KeptReason::Unsupported,
            ),
        ),
        (
            "unsupported driver, running",
            artifact(c, unsupported),
            None,
            false,
            Settled,
        ),
        (
            "resolve error, finished",
            artifact(c, resolve.clone()),
            None,
            true,
            failed("secret", "no secret"),
        ),
        (
            "resolve error, running: later",
            artifact(c, resolve),
            None,
            false,
            Pending { cancelled: false },
        ),
    ];
    // Refusals no retry changes: reported and settled once finished, never a held finalizer.
    use artgc_core::error::ResolveError as R;
    let mut rows = rows;
    for (e, category) in [
        (
            R::EndpointNotAllowed("moved".into()),
            "endpoint_not_allowed",
        ),
        (R::BucketNotAllowed("moved".into()), "bucket_not_allowed"),
        (R::UnsafeKey("moved".into()), "unsafe_key"),
        (R::RefNotAllowed("moved".into()), "ref_not_allowed"),
        (R::Location("moved".into()), "location"),
        (R::Strategy("moved".into()), "invalid_strategy"),
    ] {
        rows.push((
            category,
            artifact(c, Decision::Error(e.clone())),
            None,
            true,
            Noted(
                Failure {
                    what: "n1/out".into(),
                    category,
                    reason: "moved".into(),
                },
                KeptReason::Refused,
            ),
        ));
        rows.push((
            "a refusal while running: later",
            artifact(c, Decision::Error(e)),
            None,
            false,
            Pending { cancelled: false },
        ));
    }
    for (e, category) in [
        (R::Repository("later".into()), "repository"),
        (R::Identity("later".into()), "identity"),
    ] {
        rows.push((
            "may change: a failure, retried",
            artifact(c, Decision::Error(e)),
            None,
            true,
            failed(category, "later"),
        ));
    }
    for (what, art, outcome, is_finished, want) in rows {
        assert_eq!(decide_artifact(&art, outcome, is_finished), want, "{what}");
    }
}

/// The finished-seen record a pass writes: only for a finished workflow whose versions may be
/// reclaimed, and only where none no later than now is there.
#[test]
fn finished_seen_record_rule() {
    use artgc_core::outcome::finished_seen_record;
    let now: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
    let plan = |seen: Option<&str>| {
        let mut wp = artgc_core::plan::WorkflowPlan::unplannable(
            "ns",
            "w",
            artgc_core::error::InputError::Offloaded {
                version: "v".into(),
            },
        );
        wp.error = None;
        wp.finished_seen = seen.map(|s| s.parse().unwrap());
        wp
    };
    for (what, seen, finished, reclaims, want) in [
        ("first finished pass", None, true, true, Some(now)),
        ("running", None, false, true, None),
        ("no reclaim anywhere", None, true, false, None),
        (
            "recorded before",
            Some("2026-12-07T09:00:00Z"),
            true,
            true,
            None,
        ),
        (
            "from the future",
            Some("2099-01-01T00:00:00Z"),
            true,
            true,
            Some(now),
        ),
    ] {
        assert_eq!(
            finished_seen_record(&plan(seen), finished, reclaims, now),
            want,
            "{what}"
        );
    }
}

/// Which strategies a pass records as processed.
#[test]
fn processed_strategies_rule() {
    use Strategy::{OnWorkflowCompletion as C, OnWorkflowDeletion as D};
    let none = BTreeSet::new();
    let only = |s: Strategy| BTreeSet::from([s]);
    let deleted = PassContext {
        deleting: true,
        ..completed_pass()
    };
    let recorded = PassContext {
        processed: BTreeMap::from([(C.as_str().to_string(), true)]),
        ..deleted.clone()
    };
    // (situation, ctx, whole workflow failed, failed, pending, expected)
    type Row = (
        &'static str,
        PassContext,
        bool,
        BTreeSet<Strategy>,
        BTreeSet<Strategy>,
        Vec<Strategy>,
    );
    let rows: Vec<Row> = vec![
        (
            "completed",
            completed_pass(),
            false,
            none.clone(),
            none.clone(),
            vec![C],
        ),
        (
            "deleted: both due",
            deleted.clone(),
            false,
            none.clone(),
            none.clone(),
            vec![C, D],
        ),
        (
            "running: none",
            running(),
            false,
            none.clone(),
            none.clone(),
            vec![],
        ),
        (
            "unplannable: none",
            deleted.clone(),
            true,
            none.clone(),
            none.clone(),
            vec![],
        ),
        (
            "a completion artifact failed",
            deleted.clone(),
            false,
            only(C),
            none.clone(),
            vec![D],
        ),
        (
            "a deletion artifact pending",
            deleted.clone(),
            false,
            none.clone(),
            only(D),
            vec![C],
        ),
        (
            "completion recorded already",
            recorded,
            false,
            none.clone(),
            none.clone(),
            vec![D],
        ),
    ];
    for (what, ctx, whole_failed, failed, pending, want) in rows {
        assert_eq!(
            processed_strategies(&ctx, whole_failed, &failed, &pending),
            want,
            "{what}"
        );
    }
}

/// When the `ArtifactGCError` condition is set, cleared or left.
#[test]
fn condition_rule() {
    let failure = Failure {
        what: "n1/out".into(),
        category: "access_denied",
        reason: "denied".into(),
    };
    let flagged = |c: PassContext| PassContext {
        has_condition: true,
        ..c
    };
    let set = |c: &ConditionChange| matches!(c, ConditionChange::Set(m) if m.contains("n1/out: denied (access_denied)"));
    assert!(
        set(&condition_change(
            &completed_pass(),
            std::slice::from_ref(&failure),
            false
        )),
        "a failure sets it"
    );
    assert!(
        set(&condition_change(&flagged(running()), &[failure], true)),
        "whatever else holds"
    );
    let rows = [
        (
            "flagged, clean pass",
            flagged(completed_pass()),
            false,
            ConditionChange::Clear,
        ),
        (
            "flagged, stopped pass proves nothing",
            flagged(completed_pass()),
            true,
            ConditionChange::Keep,
        ),
        (
            "flagged, running",
            flagged(running()),
            false,
            ConditionChange::Keep,
        ),
        (
            "not flagged",
            completed_pass(),
            false,
            ConditionChange::Keep,
        ),
    ];
    for (what, ctx, cancelled, want) in rows {
        assert_eq!(condition_change(&ctx, &[], cancelled), want, "{what}");
    }
}

/// Which strategies each `--strategy` filter selects.
#[test]
fn strategy_filter_rule() {
    use Strategy::{Never, OnWorkflowCompletion as C, OnWorkflowDeletion as D};
    use StrategyFilter::{All, Completion, Deletion, Due};
    // (filter, strategy, being deleted, selected)
    let rows = [
        (Due, C, false, true),
        (Due, D, false, false),
        (Due, D, true, true),
        (Completion, C, true, true),
        (Completion, D, true, false),
        (Deletion, D, false, true),
        (Deletion, C, true, false),
        (All, C, false, true),
        (All, D, false, true),
        (All, Never, true, false),
        (Due, Never, true, false),
    ];
    for (filter, strategy, deleting, want) in rows {
        assert_eq!(
            selected_by_filter(filter, strategy, deleting),
            want,
            "{filter:?} {strategy:?} deleting={deleting}"
        );
    }
}

/// A cache hit's output that its own rules would delete is the producer's key: only a plan
/// that sees every live workflow may delete it (the shared-key check then keeps it while any
/// other workflow uses it).
#[test]
fn memoized_rule() {
    let hit = |decision: Decision| ArtifactPlan {
        cache_hit: true,
        ..artifact(Strategy::OnWorkflowDeletion, decision)
    };
    let memoized = Some(Decision::Keep(KeepReason::Memoized));
    // (what, sees every workflow, artifact, answer)
    let rows = [
        (
            "a plan over files keeps a due hit",
            false,
            hit(Decision::Delete),
            memoized,
        ),
        (
            "the controller's index: shared-key check decides",
            true,
            hit(Decision::Delete),
            None,
        ),
        (
            "not due: nothing to change",
            false,
            hit(Decision::Keep(KeepReason::Never)),
            None,
        ),
        (
            "not a cache hit",
            false,
            artifact(Strategy::OnWorkflowDeletion, Decision::Delete),
            None,
        ),
    ];
    for (what, sees, art, want) in rows {
        assert_eq!(memoized_without_a_view(sees, &art), want, "{what}");
    }
}

/// An output artifact's decision before its location, and the order of the checks.
#[test]
fn output_rule() {
    let completion = Ok(Some(Strategy::OnWorkflowCompletion));
    let never = Ok(Some(Strategy::Never));
    let unset = Ok(None);
    let unknown = Err("unknown strategy \"Sometimes\"".to_string());
    let due = OutputFacts {
        deleted: false,
        cache_hit: false,
        strategy: &completion,
        finished: true,
        phase: Some("Succeeded"),
        selected: true,
    };
    let keep = |r: KeepReason| Some(Decision::Keep(r));
    let rows: Vec<(&str, OutputFacts, Option<Decision>)> = vec![
        ("due: the location decides", due.clone(), None),
        (
            "already deleted, before anything else",
            OutputFacts {
                deleted: true,
                cache_hit: true,
                strategy: &unknown,
                ..due.clone()
            },
            Some(Decision::Skip(SkipReason::AlreadyDeleted)),
        ),
        (
            "cache hit with a bad strategy: the producer's keys, nothing to decide them by",
            OutputFacts {
                cache_hit: true,
                strategy: &unknown,
                ..due.clone()
            },
            keep(KeepReason::Memoized),
        ),
        (
            "a due cache hit: its location and the shared-key check decide",
            OutputFacts {
                cache_hit: true,
                ..due.clone()
            },
            None,
        ),
        (
            "a cache hit of Never is kept as Never",
            OutputFacts {
                cache_hit: true,
                strategy: &never,
                ..due.clone()
            },
            keep(KeepReason::Never),
        ),
        (
            "unknown strategy",
            OutputFacts {
                strategy: &unknown,
                ..due.clone()
            },
            Some(Decision::Error(artgc_core::error::ResolveError::Strategy(
                "unknown strategy \"Sometimes\"".into(),
            ))),
        ),
        (
            "Never",
            OutputFacts {
                strategy: &never,
                ..due.clone()
            },
            keep(KeepReason::Never),
        ),
        (
            "unset is Never",
            OutputFacts {
                strategy: &unset,
                finished: false,
                ..due.clone()
            },
            keep(KeepReason::Never),
        ),
        (
            "not finished",
            OutputFacts {
                finished: false,
                phase: Some("Running"),
                ..due.clone()
            },
            Some(Decision::Skip(SkipReason::NotFinished("Running".into()))),
        ),
        (
            "not selected",
            OutputFacts {
                selected: false,
                ..due.clone()
            },
            Some(Decision::Skip(SkipReason::NotSelected {
                strategy: Strategy::OnWorkflowCompletion,
            })),
        ),
    ];
    for (what, facts, want) in rows {
        assert_eq!(output_decision(&facts), want, "{what}");
    }
}

/// Whether a deleted artifact's versions are reclaimed: asked for by the operator or the
/// grant, and not refused.
#[test]
fn reclaim_choice_rule() {
    use artgc_core::versions::{ReclaimChoice::*, reclaim_choice};
    let why = "finishedAt is after the server's deletion time";
    for (what, operator, granted, refused, want) in [
        ("nobody asks", false, false, None, NotAsked),
        (
            "nobody asks, refused anyway",
            false,
            false,
            Some(why),
            NotAsked,
        ),
        ("the operator asks", true, false, None, Reclaim),
        ("the grant asks", false, true, None, Reclaim),
        ("both ask", true, true, None, Reclaim),
        (
            "asked, times refused",
            true,
            false,
            Some(why),
            Refused(why.into()),
        ),
        (
            "granted, times refused",
            false,
            true,
            Some(why),
            Refused(why.into()),
        ),
    ] {
        assert_eq!(reclaim_choice(operator, granted, refused), want, "{what}");
    }
}

/// A pass's judgement records finished-seen where any version may be reclaimed, and never for
/// a workflow that could not be read.
#[test]
fn judge_records_finished_seen_only_where_versions_may_be_reclaimed() {
    use artgc_core::outcome::{PassContext, judge};
    let now: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
    let ctx = completed_pass();
    let readable = |may_reclaim: bool| {
        let mut wp = artgc_core::plan::WorkflowPlan::unplannable(
            "ns",
            "w",
            artgc_core::error::InputError::Offloaded {
                version: "v".into(),
            },
        );
        wp.error = None;
        wp.may_reclaim = may_reclaim;
        wp
    };
    let unreadable = artgc_core::plan::WorkflowPlan::unplannable(
        "ns",
        "w",
        artgc_core::error::InputError::Field {
            field: "status.nodes".into(),
            reason: "not a map".into(),
        },
    );
    let running = PassContext {
        finished: false,
        ..ctx.clone()
    };
    for (what, wp, ctx, operator, want) in [
        ("grant", readable(true), &ctx, false, Some(now)),
        ("operator's flag", readable(false), &ctx, true, Some(now)),
        ("neither", readable(false), &ctx, false, None),
        ("running", readable(true), &running, true, None),
        ("malformed", unreadable, &ctx, true, None),
    ] {
        let out = judge(&wp, 0, None, ctx, operator, now);
        assert_eq!(out.update.finished_seen, want, "{what}");
    }
}

/// The queue rules for Workflows the watch cannot read: an unreadable object is believed only
/// in its metadata; one whose offloaded nodes are unreadable now is passed once it is due.
#[test]
fn queue_rules_for_what_the_watch_cannot_read() {
    use artgc_core::outcome::{wants_pass_nodes_unread, wants_pass_unreadable};
    for (what, completed, deleting, holds, want) in [
        (
            "running, as far as anyone can tell",
            false,
            false,
            false,
            false,
        ),
        ("labelled completed", true, false, false, true),
        ("deleted, held by artgc", false, true, true, true),
        ("deleted, not artgc's to hold", false, true, false, false),
        ("holding, not deleted", false, false, true, false),
    ] {
        assert_eq!(
            wants_pass_unreadable(completed, deleting, holds),
            want,
            "{what}"
        );
    }
    for (what, finished, deleting, want) in [
        ("running", false, false, false),
        ("finished", true, false, true),
        ("deleted while running", false, true, true),
    ] {
        assert_eq!(wants_pass_nodes_unread(finished, deleting), want, "{what}");
    }
}

/// The executor's accounting: objects written after the run are kept and counted apart; a key
/// two artifacts found in one bucket is deleted once and counted for the first; a failed probe
/// is that artifact's error; a failed artifact reclaimed nothing.
#[test]
fn claim_accounting_rule() {
    use artgc_core::error::StoreError;
    use artgc_core::execution::{Found, StoredObject, claim, count_only_what_was_deleted};
    use artgc_core::plan::ObjectKind;
    let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let end = Some(t("2026-12-07T10:00:00Z"));
    let obj = |key: &str, size: u64, at: Option<&str>| StoredObject {
        key: key.into(),
        size,
        last_modified: at.map(t),
    };
    let found = |job, group, result| Found {
        job,
        group,
        written_by: end,
        result,
    };
    let claims = claim([
        // Job 0: a directory of two objects and one written after the run.
        found(
            0,
            "b1",
            Ok((
                ObjectKind::Directory,
                vec![
                    obj("w/out/a", 10, Some("2026-12-07T09:00:00Z")),
                    obj("w/out/b", 20, None),
                    obj("w/out/c", 40, Some("2026-12-07T11:00:00Z")),
                ],
            )),
        ),
        // Job 1: the same key in the same bucket: deleted once, counted for job 0.
        found(
            1,
            "b1",
            Ok((ObjectKind::File, vec![obj("w/out/a", 10, None)])),
        ),
        // Job 2: the same key in another bucket is another object.
        found(
            2,
            "b2",
            Ok((ObjectKind::File, vec![obj("w/out/a", 5, None)])),
        ),
        // Job 3: nothing there; job 4: the probe failed.
        found(3, "b1", Ok((ObjectKind::File, vec![]))),
        found(4, "b1", Err(StoreError::cancelled())),
    ]);
    let o = |j: usize| &claims.outcomes[&j];
    assert_eq!((o(0).objects, o(0).bytes, o(0).written_after), (2, 30, 1));
    assert_eq!((o(1).objects, o(1).bytes), (0, 0), "counted for job 0");
    assert_eq!((o(2).objects, o(2).bytes), (1, 5));
    assert!(o(3).absent && o(3).error.is_none());
    assert!(o(4).error.is_some() && o(4).kind.is_none());
    let b1: Vec<(&str, &[usize])> = claims.groups["b1"]
        .iter()
        .map(|k| (k.key.as_str(), k.owners.as_slice()))
        .collect();
    assert_eq!(b1, [("w/out/a", &[0, 1][..]), ("w/out/b", &[0][..])]);
    assert_eq!(
        claims.claimed[&1],
        ["w/out/a"],
        "job 1 claims the key it shares"
    );
    assert!(!claims.claimed.contains_key(&4));
    let mut failed = claims.outcomes[&0].clone();
    failed.error = Some(StoreError::cancelled());
    failed.hidden_bytes = 7;
    count_only_what_was_deleted(&mut failed);
    assert_eq!(
        (failed.objects, failed.bytes, failed.hidden_bytes),
        (0, 0, 0)
    );
}
