//! Carries out a plan against the object store: find what each due artifact amounts to (a file,
//! a directory of many keys, or nothing), then delete all keys in batches, bucket by bucket,
//! with bounded concurrency. Shared by `artgc purge` and the controller.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;

use crate::location::{S3Connection, S3Target};
use crate::plan::{Decision, GcPlan, ObjectKind};
use crate::store::{MAX_BATCH, ObjectStore, StoreError, StoreErrorKind, StoredObject};

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

/// What a probe found: the kind, and the objects to delete with their sizes.
type Probe = Result<(ObjectKind, Vec<StoredObject>), StoreError>;

/// Keys to delete per (connection, bucket), each once, with the jobs that own it.
type KeyGroups<'a> = HashMap<(&'a S3Connection, &'a str), Vec<(String, Vec<usize>)>>;

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

    // A workflow's artifacts in one bucket are probed together: Argo keeps them under one
    // folder, and separate workflows' listings run concurrently where one listing's pages
    // cannot.
    let mut probe_groups: HashMap<(usize, &S3Connection, &str), Vec<usize>> = HashMap::new();
    for (j, job) in jobs.iter().enumerate() {
        probe_groups
            .entry((job.id.0, job.conn, job.target.bucket.as_str()))
            .or_default()
            .push(j);
    }
    let probes: Vec<(usize, Probe)> = futures::stream::iter(probe_groups.into_values())
        .map(|members| {
            let jobs = &jobs;
            async move {
                let targets: Vec<&S3Target> = members.iter().map(|&j| jobs[j].target).collect();
                let results = probe_many(store, jobs[members[0]].conn, targets).await;
                progress.probed(members.len() as u64);
                members.into_iter().zip(results).collect::<Vec<_>>()
            }
        })
        .buffer_unordered(concurrency)
        .flat_map(futures::stream::iter)
        .collect()
        .await;

    let mut exec = Execution::default();
    let mut groups: KeyGroups<'_> = HashMap::new();
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
    // Futures built before the stream, by a named async fn: a closure inside the stream type
    // makes the whole future not provably `Send` (rustc's higher-ranked lifetime limits).
    let futures: Vec<_> = batches
        .into_iter()
        .map(|(conn, bucket, chunk)| delete_batch(store, conn, bucket, chunk, progress))
        .collect();
    let results: Vec<_> = futures::stream::iter(futures)
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

type BatchResult<'a> = (&'a [(String, Vec<usize>)], Vec<Result<(), StoreError>>);

async fn delete_batch<'a>(
    store: &ObjectStore,
    conn: &S3Connection,
    bucket: &str,
    chunk: &'a [(String, Vec<usize>)],
    progress: &dyn Progress,
) -> BatchResult<'a> {
    let names: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
    let results = match store.client(conn).await {
        Ok(client) => store.delete_keys(&client, bucket, &names).await,
        Err(e) => vec![Err(e); names.len()],
    };
    progress.deleted(results.iter().filter(|r| r.is_ok()).count() as u64);
    (chunk, results)
}

/// The longest prefix, ending at a `/`, shared by all keys.
fn common_prefix<'a>(keys: impl Iterator<Item = &'a str>) -> &'a str {
    let mut common: Option<&str> = None;
    for k in keys {
        let c = common.get_or_insert(k);
        let n = c.bytes().zip(k.bytes()).take_while(|(a, b)| a == b).count();
        *c = &c[..n];
    }
    let c = common.unwrap_or("");
    c.rfind('/').map_or("", |i| &c[..=i])
}

/// Objects a shared listing may run through per artifact it answers for before it is given up:
/// probing one artifact alone costs a request or two, and a listing page holds up to 1,000.
const LISTED_PER_ARTIFACT: usize = 200;

/// Probes artifacts of one bucket with as few requests as it can: one listing of their common
/// prefix answers for all of them (Argo puts a workflow's keys under one folder, and a bulk purge
/// covers most of a bucket). When that listing would run past a bound proportional to the
/// artifacts it serves, they are split by the next path segment and each part is tried the same
/// way, down to single artifacts, which are probed alone.
async fn probe_many(
    store: &ObjectStore,
    conn: &S3Connection,
    targets: Vec<&S3Target>,
) -> Vec<Probe> {
    if let [single] = targets[..] {
        return vec![probe(store, conn, single).await];
    }
    let prefix = common_prefix(targets.iter().map(|t| t.key.as_str()));
    let limit = targets.len() * LISTED_PER_ARTIFACT;
    let listed = match store.client(conn).await {
        Ok(client) => store.list(&client, &targets[0].bucket, prefix, limit).await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(objects) => {
            let index: BTreeMap<String, u64> =
                objects.into_iter().map(|o| (o.key, o.size)).collect();
            targets.iter().map(|t| Ok(classify(&index, t))).collect()
        }
        Err(e) if e.kind == StoreErrorKind::TooManyObjects => {
            // Split by the next segment after the common prefix; keep the input order.
            let mut parts: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, t) in targets.iter().enumerate() {
                let rest = &t.key[prefix.len()..];
                let segment = rest.find('/').map_or(rest, |n| &rest[..=n]);
                parts.entry(segment).or_default().push(i);
            }
            if parts.len() == 1 {
                // Nothing left to split on (the same key named twice): probe each alone.
                let each = targets.iter().map(|t| probe(store, conn, t));
                return futures::future::join_all(each).await;
            }
            let mut out: Vec<Option<Probe>> = vec![None; targets.len()];
            let parts = parts.into_values().map(|idx| {
                let part = idx.iter().map(|&i| targets[i]).collect();
                async move { (idx, Box::pin(probe_many(store, conn, part)).await) }
            });
            // The store's semaphore bounds the requests these make at once.
            for (idx, results) in futures::future::join_all(parts).await {
                for (i, r) in idx.into_iter().zip(results) {
                    out[i] = Some(r);
                }
            }
            out.into_iter()
                .map(|r| r.expect("every target probed"))
                .collect()
        }
        Err(e) => targets.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// What a complete listing of a prefix covering the target says about it.
fn classify(index: &BTreeMap<String, u64>, target: &S3Target) -> (ObjectKind, Vec<StoredObject>) {
    let under = |prefix: &str| -> Vec<StoredObject> {
        index
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, &size)| StoredObject {
                key: k.clone(),
                size,
            })
            .collect()
    };
    if target.is_directory_key() {
        return (ObjectKind::Directory, under(&target.key));
    }
    if let Some(&size) = index.get(&target.key) {
        let obj = StoredObject {
            key: target.key.clone(),
            size,
        };
        return (ObjectKind::File, vec![obj]);
    }
    let objects = under(&target.directory_prefix());
    let kind = if objects.is_empty() {
        ObjectKind::File
    } else {
        ObjectKind::Directory
    };
    (kind, objects)
}

/// What one artifact amounts to in the store. A key ending in `/` is a directory; any other key
/// is a file, unless no such object exists and objects exist under `key/` (Argo leaves those
/// behind; artgc does not).
async fn probe(store: &ObjectStore, conn: &S3Connection, target: &S3Target) -> Probe {
    let client = store.client(conn).await?;
    let limit = store.options().max_objects_per_artifact;
    if target.is_directory_key() {
        let objects = store
            .list(&client, &target.bucket, &target.key, limit)
            .await?;
        return Ok((ObjectKind::Directory, objects));
    }
    let head = store.head(&client, &target.bucket, &target.key).await;
    if let Ok(Some(size)) = head {
        let obj = StoredObject {
            key: target.key.clone(),
            size,
        };
        return Ok((ObjectKind::File, vec![obj]));
    }
    // Not found, or a store that fails HEAD where its folder stands: the listing decides, and
    // the HEAD error stands when it finds nothing.
    let prefix = target.directory_prefix();
    let objects = store.list(&client, &target.bucket, &prefix, limit).await?;
    match (head, objects.is_empty()) {
        (Err(e), true) => Err(e),
        (_, true) => Ok((ObjectKind::File, objects)),
        (_, false) => Ok((ObjectKind::Directory, objects)),
    }
}
