//! Carries out a plan against the object store: find what each due artifact amounts to (a file,
//! a directory of many keys, or nothing), then delete all keys in batches, bucket by bucket,
//! with bounded concurrency. Shared by `artgc purge` and the controller.

use std::collections::HashMap;

use futures::StreamExt;

use crate::location::{S3Connection, S3Target};
use crate::plan::{Decision, GcPlan, ObjectKind};
use crate::store::{MAX_BATCH, ObjectStore, StoreError, StoredObject};

/// What happened to one artifact the plan said to delete.
#[derive(Debug, Clone, Default)]
pub struct ArtifactOutcome {
    /// What the store showed: a file, a directory, or `None` when the probe failed.
    pub kind: Option<ObjectKind>,
    /// Objects deleted (or, in a dry run, that would be).
    pub objects: u64,
    pub bytes: u64,
    /// Nothing was there to delete.
    pub absent: bool,
    pub error: Option<StoreError>,
}

/// Outcomes by (workflow index, artifact index) in the plan.
#[derive(Debug, Default)]
pub struct Execution {
    pub outcomes: HashMap<(usize, usize), ArtifactOutcome>,
}

impl Execution {
    pub fn get(&self, w: usize, a: usize) -> Option<&ArtifactOutcome> {
        self.outcomes.get(&(w, a))
    }
}

/// Progress of a run, for a progress bar.
pub trait Progress: Sync {
    fn probed(&self, _artifacts: u64) {}
    fn to_delete(&self, _objects: u64) {}
    fn deleted(&self, _objects: u64) {}
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {}

struct Job<'a> {
    id: (usize, usize),
    conn: &'a S3Connection,
    target: &'a S3Target,
}

/// Probes and (unless `dry_run`) deletes every artifact the plan marks `Delete`.
pub async fn execute(
    plan: &GcPlan,
    store: &ObjectStore,
    dry_run: bool,
    progress: &dyn Progress,
) -> Execution {
    let jobs: Vec<Job<'_>> = plan
        .workflows
        .iter()
        .enumerate()
        .flat_map(|(w, wp)| {
            wp.artifacts.iter().enumerate().filter_map(move |(a, ap)| {
                match (&ap.decision, &ap.connection, &ap.target) {
                    (Decision::Delete, Some(conn), Some(target)) => Some(Job {
                        id: (w, a),
                        conn,
                        target,
                    }),
                    _ => None,
                }
            })
        })
        .collect();
    let concurrency = store.options().concurrency.max(1);

    let probes: Vec<(usize, Result<(ObjectKind, Vec<StoredObject>), StoreError>)> =
        futures::stream::iter(jobs.iter().enumerate())
            .map(|(j, job)| async move {
                let r = probe(store, job.conn, job.target).await;
                progress.probed(1);
                (j, r)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;

    let mut exec = Execution::default();
    // Keys to delete per (connection, bucket), each once, with the jobs that own it.
    let mut groups: HashMap<(&S3Connection, &str), Vec<(String, Vec<usize>)>> = HashMap::new();
    let mut seen: HashMap<(&S3Connection, &str, String), usize> = HashMap::new();
    for (j, result) in probes {
        let job = &jobs[j];
        let out = exec.outcomes.entry(job.id).or_default();
        match result {
            Err(e) => out.error = Some(e),
            Ok((kind, objects)) => {
                out.kind = Some(kind);
                out.absent = objects.is_empty();
                out.objects = objects.len() as u64;
                out.bytes = objects.iter().map(|o| o.size).sum();
                let group = groups
                    .entry((job.conn, job.target.bucket.as_str()))
                    .or_default();
                for obj in objects {
                    let k = (job.conn, job.target.bucket.as_str(), obj.key.clone());
                    match seen.get(&k) {
                        // Already claimed by another artifact: count it there only.
                        Some(&i) => {
                            group[i].1.push(j);
                            out.objects -= 1;
                            out.bytes -= obj.size;
                        }
                        None => {
                            seen.insert(k, group.len());
                            group.push((obj.key, vec![j]));
                        }
                    }
                }
            }
        }
    }
    if dry_run {
        return exec;
    }
    progress.to_delete(groups.values().map(|g| g.len() as u64).sum());

    let mut batches = Vec::new();
    for ((conn, bucket), keys) in &groups {
        for chunk in keys.chunks(MAX_BATCH) {
            batches.push((*conn, *bucket, chunk));
        }
    }
    let results: Vec<_> = futures::stream::iter(batches)
        .map(|(conn, bucket, chunk)| async move {
            let names: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let results = match store.client(conn).await {
                Ok(client) => store.delete_keys(&client, bucket, &names).await,
                Err(e) => vec![Err(e); names.len()],
            };
            progress.deleted(results.iter().filter(|r| r.is_ok()).count() as u64);
            (chunk, results)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;

    for (chunk, per_key) in results {
        for ((_, owners), result) in chunk.iter().zip(per_key) {
            let Err(e) = result else { continue };
            for &j in owners {
                let out = exec.outcomes.get_mut(&jobs[j].id).expect("probed job");
                out.error.get_or_insert(e.clone());
            }
        }
    }
    // Only what was really deleted counts.
    for out in exec.outcomes.values_mut() {
        if out.error.is_some() {
            out.objects = 0;
            out.bytes = 0;
        }
    }
    exec
}

/// What an artifact amounts to in the store. A key ending in `/` is a directory; any other key
/// is a file, unless no such object exists and objects exist under `key/` (Argo leaves those
/// behind; artgc does not).
async fn probe(
    store: &ObjectStore,
    conn: &S3Connection,
    target: &S3Target,
) -> Result<(ObjectKind, Vec<StoredObject>), StoreError> {
    let client = store.client(conn).await?;
    let limit = store.options().max_objects_per_artifact;
    if target.is_directory_key() {
        let objects = store.list(&client, &target.bucket, &target.key, limit).await?;
        return Ok((ObjectKind::Directory, objects));
    }
    if let Some(size) = store.head(&client, &target.bucket, &target.key).await? {
        let obj = StoredObject {
            key: target.key.clone(),
            size,
        };
        return Ok((ObjectKind::File, vec![obj]));
    }
    let prefix = target.directory_prefix();
    let objects = store.list(&client, &target.bucket, &prefix, limit).await?;
    let kind = if objects.is_empty() {
        ObjectKind::File
    } else {
        ObjectKind::Directory
    };
    Ok((kind, objects))
}
