//! The Kubernetes Events a pass leaves on its Workflow, as plain values (the controller
//! publishes them).

use crate::outcome::{FinalizerChange, PassOutcome};

/// One Event: Warning or Normal, its reason, note and action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    pub action: &'static str,
}

/// The Events a pass leaves on its Workflow. Events of one reason and action form a series (a
/// count, the first note), so each pass kind and the forced release get their own action.
pub fn of_pass(outcome: &PassOutcome, deleted: bool) -> Vec<Notice> {
    let action = match deleted {
        true => "CollectOnDeletion",
        false => "CollectOnCompletion",
    };
    let mut events = Vec::new();
    let reported: Vec<_> = outcome
        .failures
        .iter()
        .chain(&outcome.notes)
        .cloned()
        .collect();
    if !reported.is_empty() {
        events.push(Notice {
            warning: true,
            reason: "ArtifactGCFailed",
            note: crate::outcome::condition_message(&reported),
            action,
        });
    } else if outcome.artifacts_deleted() > 0 {
        events.push(Notice {
            warning: false,
            reason: "ArtifactGCSucceeded",
            note: format!(
                "deleted {} artifact(s): {} object(s), {} reclaimed{}",
                outcome.artifacts_deleted(),
                outcome.objects_deleted(),
                crate::units::human_bytes(outcome.bytes_reclaimed()),
                match outcome.bytes_hidden() {
                    0 => String::new(),
                    h => format!(
                        ", {} hidden in a versioned bucket",
                        crate::units::human_bytes(h)
                    ),
                }
            ),
            action,
        });
    }
    if outcome.update.finalizer == (FinalizerChange::Remove { forced: true }) {
        events.push(Notice {
            warning: true,
            reason: "ArtifactGCFinalizerForced",
            note: format!(
                "finalizer removed by forceFinalizerRemoval after the retry budget; left in the store: {}",
                crate::outcome::condition_message(&outcome.failures)
            ),
            action: "RemoveFinalizer",
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Failure, Reclaimed, StatusUpdate};
    use crate::plan::Strategy;

    fn outcome() -> PassOutcome {
        PassOutcome {
            update: StatusUpdate::none(),
            failures: Vec::new(),
            notes: Vec::new(),
            reclaimed: Default::default(),
            kept: Vec::new(),
            pending: false,
            waiting_on_readers: false,
        }
    }

    fn failure() -> Failure {
        Failure {
            what: "n/out".into(),
            category: "s3_denied",
            reason: "AccessDenied".into(),
        }
    }

    #[test]
    fn a_pass_leaves_one_event_of_what_it_did_and_one_for_a_forced_release() {
        let deleted = {
            let mut o = outcome();
            o.reclaimed.insert(
                Strategy::OnWorkflowCompletion,
                Reclaimed {
                    artifacts: 2,
                    objects: 3,
                    bytes: 2048,
                    hidden_bytes: 0,
                },
            );
            o
        };
        let hidden = {
            let mut o = deleted.clone();
            o.reclaimed
                .get_mut(&Strategy::OnWorkflowCompletion)
                .unwrap()
                .hidden_bytes = 1024;
            o
        };
        let failed = {
            let mut o = deleted.clone();
            o.failures.push(failure());
            o
        };
        let noted = {
            let mut o = outcome();
            o.notes.push(failure());
            o
        };
        let forced = {
            let mut o = failed.clone();
            o.update.finalizer = FinalizerChange::Remove { forced: true };
            o
        };
        // (what, outcome, deleted, [(warning, reason, action, note starts with)])
        type Want = (bool, &'static str, &'static str, &'static str);
        let cases: Vec<(&str, PassOutcome, bool, Vec<Want>)> = vec![
            ("nothing done", outcome(), false, vec![]),
            (
                "deleted at completion",
                deleted.clone(),
                false,
                vec![(
                    false,
                    "ArtifactGCSucceeded",
                    "CollectOnCompletion",
                    "deleted 2 artifact(s): 3 object(s), 2.0 KiB reclaimed",
                )],
            ),
            (
                "deleted at deletion, some hidden",
                hidden,
                true,
                vec![(
                    false,
                    "ArtifactGCSucceeded",
                    "CollectOnDeletion",
                    "deleted 2 artifact(s): 3 object(s), 2.0 KiB reclaimed, 1.0 KiB hidden",
                )],
            ),
            (
                "a failure outweighs what was deleted",
                failed,
                false,
                vec![(
                    true,
                    "ArtifactGCFailed",
                    "CollectOnCompletion",
                    "artifact GC failed",
                )],
            ),
            (
                "a note is reported like a failure",
                noted,
                false,
                vec![(
                    true,
                    "ArtifactGCFailed",
                    "CollectOnCompletion",
                    "artifact GC failed",
                )],
            ),
            (
                "a forced release has its own series",
                forced,
                true,
                vec![
                    (
                        true,
                        "ArtifactGCFailed",
                        "CollectOnDeletion",
                        "artifact GC failed",
                    ),
                    (
                        true,
                        "ArtifactGCFinalizerForced",
                        "RemoveFinalizer",
                        "finalizer removed by forceFinalizerRemoval",
                    ),
                ],
            ),
        ];
        for (what, o, deleting, want) in cases {
            let got = of_pass(&o, deleting);
            assert_eq!(got.len(), want.len(), "{what}: {got:?}");
            for (n, (warning, reason, action, note)) in got.iter().zip(want) {
                assert_eq!(
                    (n.warning, n.reason, n.action),
                    (warning, reason, action),
                    "{what}"
                );
                assert!(n.note.starts_with(note), "{what}: {}", n.note);
            }
        }
    }
}
