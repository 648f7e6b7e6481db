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
