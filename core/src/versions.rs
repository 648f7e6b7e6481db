//! Which versions of an artifact's keys a versioned bucket's reclaim deletes. A version is the
//! workflow's only when it is under the artifact's own key (or directory prefix) and was
//! written during the workflow's run: a version written after its finish (plus the clock skew)
//! is a later run's, one written before its start an earlier run's. Without a start time only
//! the current version of a key the probe claimed qualifies. Delete markers are never deleted:
//! removing one could bring an older version back.

use std::collections::HashSet;

/// One version of an object (not a delete marker), as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub last_modified: Option<jiff::Timestamp>,
    /// The key's current version when listed.
    pub is_latest: bool,
}

/// Where an artifact's versions are: its exact key (a file) or everything under a prefix (a
/// directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionScope<'a> {
    Key(&'a str),
    Prefix(&'a str),
}

impl<'a> VersionScope<'a> {
    pub fn contains(&self, key: &str) -> bool {
        match self {
            Self::Key(k) => key == *k,
            Self::Prefix(p) => key.starts_with(p),
        }
    }

    /// What to list: the key itself lists its longer neighbours too (filtered by `contains`).
    pub fn list_prefix(&self) -> &'a str {
        match self {
            Self::Key(k) | Self::Prefix(k) => k,
        }
    }
}

/// The run's window: versions written in it are the workflow's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunWindow {
    /// startedAt minus the clock skew.
    pub from: Option<jiff::Timestamp>,
    /// finishedAt plus the clock skew.
    pub until: Option<jiff::Timestamp>,
}

/// What bounds a workflow's run, and who set each time. `started_at` and `finished_at` are the
/// status's: the Workflow's author writes them. `created_at` (metadata.creationTimestamp) is
/// the API server's, and `finished_seen` is artgc's own record of when it first saw the
/// workflow finished (none in a run over files). An author-written time may only narrow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunFacts {
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    pub created_at: Option<jiff::Timestamp>,
    pub finished_seen: Option<jiff::Timestamp>,
}

/// The run's window as the facts bound it, and whether versions may be reclaimed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunBounds {
    pub window: RunWindow,
    /// Why reclaiming versions is refused for this workflow: its times contradict what the
    /// API server or artgc saw.
    pub refused: Option<String>,
    /// The bounds that were known and used, for the report.
    pub used: Vec<&'static str>,
}

/// The rule: the window starts no earlier than the object's creation and ends no later than
/// the moment artgc first saw the workflow finished (each widened by the clock skew); a start
/// before the creation, a finish after artgc saw it finished, or a finish before the start
/// contradicts the server's facts, and no version is reclaimed for it.
pub fn run_bounds(f: &RunFacts, skew: jiff::SignedDuration) -> RunBounds {
    let widen = |t: jiff::Timestamp, by: jiff::SignedDuration| t.checked_add(by).ok();
    let mut used = Vec::new();
    let mut refused = None;
    let from = f.started_at.map(|s| match f.created_at {
        Some(c) => {
            used.push("metadata.creationTimestamp");
            if widen(s, skew).is_some_and(|s| s < c) {
                refused = Some(format!(
                    "status.startedAt {s} is before the Workflow was created ({c})"
                ));
            }
            s.max(c)
        }
        None => s,
    });
    let until = f.finished_at.map(|fin| match f.finished_seen {
        Some(seen) => {
            used.push("artgc.io/finished-seen");
            if widen(seen, skew).is_some_and(|seen| fin > seen) {
                refused.get_or_insert(format!(
                    "status.finishedAt {fin} is after artgc first saw the workflow finished ({seen})"
                ));
            }
            fin.min(seen)
        }
        None => fin,
    });
    if let (Some(s), Some(fin)) = (f.started_at, f.finished_at)
        && fin < s
    {
        refused.get_or_insert(format!(
            "status.finishedAt {fin} is before status.startedAt {s}"
        ));
    }
    RunBounds {
        window: RunWindow {
            from: from.and_then(|t| widen(t, -skew)),
            until: until.and_then(|t| widen(t, skew)),
        },
        refused,
        used,
    }
}

/// Whether a deleted artifact's noncurrent versions are reclaimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReclaimChoice {
    Reclaim,
    /// Neither the operator (`--reclaim-versions`) nor the namespace's grant asks for it.
    NotAsked,
    /// Asked for, but the workflow's times contradict the server's: its versions stay.
    Refused(String),
}

/// The rule: reclaimed where the operator's flag or the artifact's grant (planned from the
/// namespace's policy) asks, unless its run window was refused ([`RunBounds::refused`]).
pub fn reclaim_choice(operator: bool, granted: bool, refused: Option<&str>) -> ReclaimChoice {
    match (operator || granted, refused) {
        (false, _) => ReclaimChoice::NotAsked,
        (true, Some(why)) => ReclaimChoice::Refused(why.to_string()),
        (true, None) => ReclaimChoice::Reclaim,
    }
}

/// Why a listed version is not reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReclaimed {
    /// Another key: a neighbour the listing returned, outside the artifact.
    OutsideArtifact,
    /// Written after the run: a later run's.
    WrittenAfter,
    /// Written before the run (or the run's start unknown and not the claimed current one).
    WrittenBefore,
    /// No time from the store: nothing proves it is the workflow's.
    NoTimestamp,
}

/// The rule for one listed version. `claimed`: the current keys the probe gave this artifact.
pub fn reclaim_version(
    v: &ObjectVersion,
    scope: VersionScope<'_>,
    window: RunWindow,
    claimed: &HashSet<&str>,
) -> Result<(), NotReclaimed> {
    if !scope.contains(&v.key) {
        return Err(NotReclaimed::OutsideArtifact);
    }
    let Some(t) = v.last_modified else {
        return Err(NotReclaimed::NoTimestamp);
    };
    match window.until {
        Some(until) if t > until => return Err(NotReclaimed::WrittenAfter),
        None => return Err(NotReclaimed::WrittenAfter),
        _ => {}
    }
    match window.from {
        Some(from) if t < from => Err(NotReclaimed::WrittenBefore),
        Some(_) => Ok(()),
        None if v.is_latest && claimed.contains(v.key.as_str()) => Ok(()),
        None => Err(NotReclaimed::WrittenBefore),
    }
}

/// The versions to delete, in listing order.
pub fn versions_to_reclaim<'v>(
    listed: &'v [ObjectVersion],
    scope: VersionScope<'_>,
    window: RunWindow,
    claimed: &HashSet<&str>,
) -> Vec<&'v ObjectVersion> {
    listed
        .iter()
        .filter(|v| reclaim_version(v, scope, window, claimed).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Workflow whose status claims it ran from 2000 to 2099 gets the window the server's
    /// facts allow, and no reclaim at all; honest times are used as they are.
    #[test]
    fn author_written_times_only_narrow_the_window() {
        let t = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        let skew = jiff::SignedDuration::from_secs(120);
        let created = t("2026-12-07T10:00:00Z");
        let seen = t("2026-12-07T10:10:00Z");
        type Row<'a> = (&'a str, RunFacts, Option<&'a str>, Option<&'a str>, bool);
        let rows: Vec<Row> = vec![
            (
                "honest",
                RunFacts {
                    started_at: t("2026-12-07T10:00:05Z"),
                    finished_at: t("2026-12-07T10:09:55Z"),
                    created_at: created,
                    finished_seen: seen,
                },
                Some("2026-12-07T09:58:05Z"),
                Some("2026-12-07T10:11:55Z"),
                false,
            ),
            (
                "2000 to 2099",
                RunFacts {
                    started_at: t("2000-01-01T00:00:00Z"),
                    finished_at: t("2099-01-01T00:00:00Z"),
                    created_at: created,
                    finished_seen: seen,
                },
                Some("2026-12-07T09:58:00Z"),
                Some("2026-12-07T10:12:00Z"),
                true,
            ),
            (
                "a finish before the start",
                RunFacts {
                    started_at: t("2026-12-07T10:05:00Z"),
                    finished_at: t("2026-12-07T10:01:00Z"),
                    created_at: created,
                    finished_seen: seen,
                },
                Some("2026-12-07T10:03:00Z"),
                Some("2026-12-07T10:03:00Z"),
                true,
            ),
            (
                "files: no record of artgc's, the status's finish stands",
                RunFacts {
                    started_at: t("2026-12-07T10:00:05Z"),
                    finished_at: t("2026-12-07T10:09:55Z"),
                    created_at: created,
                    finished_seen: None,
                },
                Some("2026-12-07T09:58:05Z"),
                Some("2026-12-07T10:11:55Z"),
                false,
            ),
            (
                "no start: only the current claimed version, as before",
                RunFacts {
                    started_at: None,
                    finished_at: t("2026-12-07T10:09:55Z"),
                    created_at: created,
                    finished_seen: seen,
                },
                None,
                Some("2026-12-07T10:11:55Z"),
                false,
            ),
        ];
        for (what, facts, from, until, refused) in rows {
            let b = run_bounds(&facts, skew);
            let show = |t: Option<jiff::Timestamp>| t.map(|t| t.to_string());
            assert_eq!(show(b.window.from).as_deref(), from, "{what}: from");
            assert_eq!(show(b.window.until).as_deref(), until, "{what}: until");
            assert_eq!(b.refused.is_some(), refused, "{what}: {:?}", b.refused);
        }
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn v(key: &str, when: Option<&str>, latest: bool) -> ObjectVersion {
        ObjectVersion {
            key: key.into(),
            version_id: format!("{key}@{}", when.unwrap_or("-")),
            size: 1,
            last_modified: when.map(at),
            is_latest: latest,
        }
    }

    type Case<'a> = (
        &'a str,
        ObjectVersion,
        VersionScope<'a>,
        RunWindow,
        Result<(), NotReclaimed>,
    );

    #[test]
    fn reclaim_rule() {
        let run = RunWindow {
            from: Some(at("2026-01-01T10:00:00Z")),
            until: Some(at("2026-01-01T11:00:00Z")),
        };
        let unstarted = RunWindow { from: None, ..run };
        let unfinished = RunWindow { until: None, ..run };
        let claimed: HashSet<&str> = ["out/a.tgz"].into();
        let file = VersionScope::Key("out/a.tgz");
        let dir = VersionScope::Prefix("out/d/");
        use NotReclaimed::*;
        let table: Vec<Case> = vec![
            (
                "the run's current version",
                v("out/a.tgz", Some("2026-01-01T10:30:00Z"), true),
                file,
                run,
                Ok(()),
            ),
            (
                "the run's earlier write of the key",
                v("out/a.tgz", Some("2026-01-01T10:10:00Z"), false),
                file,
                run,
                Ok(()),
            ),
            (
                "at the window's edges",
                v("out/a.tgz", Some("2026-01-01T11:00:00Z"), true),
                file,
                run,
                Ok(()),
            ),
            (
                "a later run's version",
                v("out/a.tgz", Some("2026-01-01T11:00:01Z"), true),
                file,
                run,
                Err(WrittenAfter),
            ),
            (
                "an earlier run's version",
                v("out/a.tgz", Some("2026-01-01T09:59:59Z"), false),
                file,
                run,
                Err(WrittenBefore),
            ),
            (
                "a neighbouring key the listing returned",
                v("out/a.tgz.bak", Some("2026-01-01T10:30:00Z"), true),
                file,
                run,
                Err(OutsideArtifact),
            ),
            (
                "a file under the directory",
                v("out/d/x", Some("2026-01-01T10:30:00Z"), true),
                dir,
                run,
                Ok(()),
            ),
            (
                "a sibling directory",
                v("out/dd/x", Some("2026-01-01T10:30:00Z"), true),
                dir,
                run,
                Err(OutsideArtifact),
            ),
            (
                "no timestamp",
                v("out/a.tgz", None, true),
                file,
                run,
                Err(NoTimestamp),
            ),
            (
                "no start: the claimed current version",
                v("out/a.tgz", Some("2026-01-01T10:30:00Z"), true),
                file,
                unstarted,
                Ok(()),
            ),
            (
                "no start: an older version",
                v("out/a.tgz", Some("2026-01-01T10:10:00Z"), false),
                file,
                unstarted,
                Err(WrittenBefore),
            ),
            (
                "no start: a current version not claimed",
                v("out/d/x", Some("2026-01-01T10:30:00Z"), true),
                dir,
                unstarted,
                Err(WrittenBefore),
            ),
            (
                "no finish: nothing",
                v("out/a.tgz", Some("2026-01-01T10:30:00Z"), true),
                file,
                unfinished,
                Err(WrittenAfter),
            ),
        ];
        for (what, version, scope, window, want) in table {
            assert_eq!(
                reclaim_version(&version, scope, window, &claimed),
                want,
                "{what}"
            );
        }
    }
}
