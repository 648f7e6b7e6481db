//! The report of a plan or a purge, as users and scripts read it: one JSON document or a table.
//! Field names are a public interface; keep them.

use std::io::Write;

use serde::Serialize;

use artgc_core::execution::Execution;
use artgc_core::plan::{ArtifactRef, Decision, GcPlan};
use artgc_core::units::human_bytes;

/// Index of ACTION in the table.
const ACTION_COLUMN: usize = 9;

#[derive(Debug, Serialize)]
pub struct Report {
    pub workflows: Vec<WorkflowReport>,
    pub totals: Totals,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct WorkflowReport {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's stable category (`offload_missing`, `invalid_field`, ...), for scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_category: Option<&'static str>,
    pub artifacts: Vec<ArtifactReport>,
}

#[derive(Debug, Serialize)]
pub struct ArtifactReport {
    pub node: String,
    pub name: String,
    pub strategy: &'static str,
    pub due: bool,
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub kind: Option<&'static str>,
    pub action: &'static str,
    /// Short stable label of the reason (keep reason, error category, ...).
    pub category: &'static str,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Bytes deleted in name only: left in a versioned bucket's noncurrent versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_bytes: Option<u64>,
    /// Versions deleted by version id (reclaiming a versioned bucket's versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<u64>,
    /// Versions Object Lock protects, kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<u64>,
    /// The bucket's versioning (`off`, `enabled`, `suspended`), when the store said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versioning: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub artifacts_deleted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimed: Option<u64>,
    /// Bytes deleted in name only (versioned buckets): still stored, still billed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_hidden: Option<u64>,
    /// `endpoint/bucket (enabled|suspended)` of every versioned bucket deleted from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versioned_buckets: Vec<String>,
    pub failed: u64,
    pub kept: u64,
}

/// What a versioned bucket made of an artifact's deletion, for its reason.
fn versioned_note(o: &artgc_core::execution::ArtifactOutcome, dry_run: bool) -> String {
    let mut note = String::new();
    if o.versions_deleted > 0 {
        let verb = if dry_run {
            "would reclaim"
        } else {
            "reclaimed"
        };
        note.push_str(&format!(
            "; {verb} {} version(s), {}",
            o.versions_deleted,
            human_bytes(o.bytes)
        ));
    }
    if o.hidden_bytes > 0 {
        let verb = if dry_run { "would stay" } else { "stay" };
        note.push_str(&format!(
            "; {} {verb} in versions (bucket versioning {})",
            human_bytes(o.hidden_bytes),
            o.versioning.map_or("on", |v| v.as_str())
        ));
    }
    if o.locked > 0 {
        note.push_str(&format!(
            "; {} version(s) locked (Object Lock), kept",
            o.locked
        ));
    }
    note
}

impl Report {
    /// Builds the report of a plan, and of its execution when there was one.
    pub fn new(plan: &GcPlan, execution: Option<&Execution>, dry_run: bool) -> Self {
        let mut totals = Totals {
            objects_deleted: execution.map(|_| 0),
            bytes_reclaimed: execution.map(|_| 0),
            bytes_hidden: execution.map(|_| 0),
            ..Default::default()
        };
        let mut versioned = std::collections::BTreeSet::new();
        let mut workflows = Vec::with_capacity(plan.workflows.len());
        for (w, wp) in plan.workflows.iter().enumerate() {
            if wp.error.is_some() {
                totals.failed += 1;
            }
            let mut artifacts = Vec::with_capacity(wp.artifacts.len());
            for (a, ap) in wp.artifacts.iter().enumerate() {
                let outcome = execution.and_then(|e| e.get(ArtifactRef::new(w, a)));
                let mut row = ArtifactReport {
                    node: ap.node.clone(),
                    name: ap.name.clone(),
                    strategy: ap.strategy.as_str(),
                    due: ap.due,
                    endpoint: ap.target.as_ref().map(|t| t.endpoint.clone()),
                    bucket: ap.target.as_ref().map(|t| t.bucket.clone()),
                    key: ap.target.as_ref().map(|t| t.key.clone()),
                    kind: ap.kind.map(|k| k.as_str()),
                    action: ap.decision.action(),
                    category: ap.decision.category(),
                    reason: ap.decision.reason(),
                    objects: None,
                    bytes: None,
                    hidden_bytes: None,
                    versions: None,
                    locked: None,
                    versioning: None,
                };
                match (&ap.decision, outcome) {
                    (Decision::Delete, Some(o)) => {
                        row.kind = o.kind.map(|k| k.as_str()).or(row.kind);
                        row.objects = Some(o.objects);
                        row.bytes = Some(o.bytes);
                        row.versioning = o.versioning.map(|v| v.as_str());
                        if o.versioning.is_some_and(|v| v.keeps_versions()) {
                            row.hidden_bytes = Some(o.hidden_bytes);
                            row.versions = Some(o.versions_deleted);
                            row.locked = Some(o.locked);
                            if let (Some(t), Some(v)) = (&ap.target, o.versioning) {
                                versioned.insert(format!(
                                    "{}/{} ({})",
                                    t.endpoint,
                                    t.bucket,
                                    v.as_str()
                                ));
                            }
                        }
                        if let Some(e) = &o.error {
                            row.action = "failed";
                            row.category = e.category();
                            row.reason = e.to_string();
                            totals.failed += 1;
                        } else {
                            if !dry_run {
                                row.action = "deleted";
                            }
                            row.reason = if o.absent && o.versions_deleted == 0 {
                                "already absent from the store".into()
                            } else if dry_run {
                                format!("would delete {} object(s)", o.objects)
                            } else {
                                format!("deleted {} object(s)", o.objects)
                            };
                            if o.written_after > 0 {
                                row.reason.push_str(&format!(
                                    "; kept {} object(s) written after the workflow finished (written_after_workflow)",
                                    o.written_after
                                ));
                            }
                            if o.versioning.is_some_and(|v| v.keeps_versions()) {
                                row.reason.push_str(&versioned_note(o, dry_run));
                            }
                            if o.versions_deleted > 0 {
                                let by = match o.reclaim_bounds.is_empty() {
                                    true => {
                                        "the status's startedAt and finishedAt only".to_string()
                                    }
                                    false => format!(
                                        "the status's times within {}",
                                        o.reclaim_bounds.join(" and ")
                                    ),
                                };
                                row.reason.push_str(&format!("; run window: {by}"));
                            }
                            if let Some(why) = &o.reclaim_refused {
                                row.reason
                                    .push_str(&format!("; versions not reclaimed: {why}"));
                            }
                            totals.artifacts_deleted += 1;
                            *totals.objects_deleted.get_or_insert(0) += o.objects;
                            *totals.bytes_reclaimed.get_or_insert(0) += o.bytes;
                            *totals.bytes_hidden.get_or_insert(0) += o.hidden_bytes;
                        }
                    }
                    (Decision::Delete, None) => totals.artifacts_deleted += 1,
                    (Decision::Keep(_), _) => totals.kept += 1,
                    (Decision::Error(_), _) => totals.failed += 1,
                    _ => {}
                }
                artifacts.push(row);
            }
            workflows.push(WorkflowReport {
                namespace: wp.namespace.clone(),
                name: wp.name.clone(),
                error: wp.error.as_ref().map(|e| e.to_string()),
                error_category: wp.error.as_ref().map(|e| e.category()),
                artifacts,
            });
        }
        totals.versioned_buckets = versioned.into_iter().collect();
        Report {
            workflows,
            totals,
            dry_run,
        }
    }

    pub fn write_json(&self, out: &mut dyn Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }

    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let with_sizes = self.totals.objects_deleted.is_some();
        let mut header = vec![
            "WORKFLOW", "NODE", "ARTIFACT", "STRATEGY", "DUE", "ENDPOINT", "BUCKET", "KEY", "KIND",
            "ACTION",
        ];
        let with_hidden = self.totals.bytes_hidden.is_some_and(|h| h > 0)
            || !self.totals.versioned_buckets.is_empty();
        if with_sizes {
            header.extend(["OBJECTS", "BYTES"]);
        }
        if with_hidden {
            header.push("HIDDEN");
        }
        header.push("REASON");
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        let dash = || "-".to_string();
        for w in &self.workflows {
            let wname = format!("{}/{}", w.namespace, w.name);
            if let Some(e) = &w.error {
                let mut row = vec![dash(); header.len()];
                row[0] = wname.clone();
                row[ACTION_COLUMN] = "error".into();
                row[header.len() - 1] = e.clone();
                rows.push(row);
            }
            for a in &w.artifacts {
                let mut row = vec![
                    wname.clone(),
                    a.node.clone(),
                    a.name.clone(),
                    a.strategy.to_string(),
                    if a.due { "yes" } else { "no" }.to_string(),
                    a.endpoint.clone().unwrap_or_else(dash),
                    a.bucket.clone().unwrap_or_else(dash),
                    a.key.clone().unwrap_or_else(dash),
                    a.kind.map_or_else(dash, str::to_string),
                    a.action.to_string(),
                ];
                if with_sizes {
                    row.push(a.objects.map_or_else(dash, |n| n.to_string()));
                    row.push(a.bytes.map_or_else(dash, human_bytes));
                }
                if with_hidden {
                    row.push(a.hidden_bytes.map_or_else(dash, human_bytes));
                }
                row.push(a.reason.clone());
                rows.push(row);
            }
        }
        // Keys, names and reasons come from Workflows: no terminal escapes reach the screen.
        for cell in rows.iter_mut().flatten() {
            if cell.chars().any(char::is_control) {
                *cell = cell.escape_debug().to_string();
            }
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        let t = &self.totals;
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        match (t.objects_deleted, t.bytes_reclaimed) {
            (Some(o), Some(b)) => {
                writeln!(
                    out,
                    "\n{verb} {} artifact(s), {o} object(s), {} reclaimed; {} failed; {} kept",
                    t.artifacts_deleted,
                    human_bytes(b),
                    t.failed,
                    t.kept
                )?;
                if !t.versioned_buckets.is_empty() {
                    writeln!(
                        out,
                        "{} hidden behind delete markers, still stored: versioned bucket(s) {}",
                        human_bytes(t.bytes_hidden.unwrap_or(0)),
                        t.versioned_buckets.join(", ")
                    )?;
                }
                Ok(())
            }
            _ => writeln!(
                out,
                "\n{} artifact(s) to delete; {} error(s); {} kept",
                t.artifacts_deleted, t.failed, t.kept
            ),
        }
    }
}
