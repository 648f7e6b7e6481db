//! Carries out a plan against the object store: find what each due artifact amounts to (a file,
//! a directory of many keys, or nothing), then delete all keys in batches, bucket by bucket,
//! with bounded concurrency. Shared by `artgc purge` and the controller.
//!
//! The two steps are separate ([`probe`], then [`delete`]) so that a front end can record what
//! the probe found before anything is deleted (see [`Probed::files_to_mark`]).

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;

use crate::store::{
    MAX_BATCH, ObjectStore, ObjectVersion, StoreError, StoreErrorKind, StoredObject,
    VersionDeleted, Versioning,
};
use artgc_core::location::{S3Connection, S3Target};
use artgc_core::model::ANNOTATION_FINISHED_SEEN;
use artgc_core::plan::WorkflowPlan;
use artgc_core::plan::{ArtifactRef, Decision, GcPlan, ObjectKind};
use artgc_core::versions::{
    ReclaimChoice, RunBounds, RunWindow, VersionScope, reclaim_choice, versions_to_reclaim,
};

pub use artgc_core::execution::{ArtifactOutcome, Execution};
use artgc_core::execution::{Claims, Found, KeyToDelete, claim, count_only_what_was_deleted};

/// Progress of a run, for a progress bar.
pub trait Progress: Sync {
    fn probed(&self, _artifacts: u64) {}
    fn to_delete(&self, _objects: u64) {}
    fn deleted(&self, _objects: u64) {}
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {}

/// Whether a run may go on. Checked before every probe and delete request batch: once true,
/// nothing more is sent (shutdown, or a controller that lost its leadership) and the rest is
/// `cancelled`.
pub trait Stop: Sync {
    fn stopped(&self) -> bool;
}

/// A run nothing stops but its end.
pub struct Unstopped;
impl Stop for Unstopped {
    fn stopped(&self) -> bool {
        false
    }
}

/// Whether a run sends its deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Delete,
    /// Probes and plans, deleting nothing.
    DryRun,
}

/// How one run goes: what it sends, what it shows, what stops it.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub mode: Mode,
    pub progress: &'a dyn Progress,
    pub stop: &'a dyn Stop,
}

impl Run<'static> {
    /// Deletes, shows nothing, stops at the end.
    pub const DELETE: Self = Run {
        mode: Mode::Delete,
        progress: &Quiet,
        stop: &Unstopped,
    };
    pub const DRY_RUN: Self = Run {
        mode: Mode::DryRun,
        ..Self::DELETE
    };
}

impl<'a> Run<'a> {
    pub fn with_progress(self, progress: &'a dyn Progress) -> Self {
        Run { progress, ..self }
    }

    pub fn with_stop(self, stop: &'a dyn Stop) -> Self {
        Run { stop, ..self }
    }
}

/// What a probe found: the kind, and the objects to delete with their sizes.
type ProbeResult = Result<(ObjectKind, Vec<StoredObject>), StoreError>;

/// One artifact the plan says to delete, with what its probe may conclude.
struct Job<'a> {
    id: ArtifactRef,
    conn: &'a S3Connection,
    target: &'a S3Target,
    /// May be widened to `key/` (see [`may_widen`]).
    widen: bool,
    /// Objects written after this are someone else's.
    written_by: Option<jiff::Timestamp>,
    /// With widening: objects written before this are not the workflow's.
    written_from: Option<jiff::Timestamp>,
    /// Why its workflow's versions are never reclaimed (times that contradict the server's).
    reclaim_refused: Option<String>,
    /// What bounded its workflow's window besides the status's times.
    bounded_by: Vec<&'static str>,
    /// How a file at the key is looked for.
    find_file: FindFile,
}

/// How a probe looks for a file at a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FindFile {
    /// HEAD the key: one request.
    Head,
    /// List from the key and take it if it is there: an SSE-C object answers HEAD only with its
    /// customer key, which artgc does not send (a delete needs none).
    Listing,
}

fn find_file(customer_key: bool) -> FindFile {
    match customer_key {
        true => FindFile::Listing,
        false => FindFile::Head,
    }
}

/// A key without a trailing `/` names a directory only with positive evidence: the artifact
/// was uploaded with `archive: none` (Argo tars anything else into one object), and no earlier
/// pass found a file there (that file may be gone now, deleted by a pass that crashed before
/// recording it).
fn may_widen(archive_none: bool, file_seen: bool) -> bool {
    archive_none && !file_seen
}

/// The probe of every due artifact of a plan.
pub struct Probed<'a> {
    jobs: Vec<Job<'a>>,
    results: Vec<ProbeResult>,
}

impl Probed<'_> {
    /// Artifacts that could be widened on a later pass and whose probe found a file now: record
    /// them before deleting, so no later pass widens them.
    pub fn files_to_mark(&self) -> Vec<ArtifactRef> {
        self.jobs
            .iter()
            .zip(&self.results)
            .filter(|(job, r)| {
                job.widen
                    && !job.target.is_directory_key()
                    && matches!(r, Ok((ObjectKind::File, objs)) if !objs.is_empty())
            })
            .map(|(job, _)| job.id)
            .collect()
    }
}

/// The workflow's run window as the API server's and artgc's own facts bound the author's
/// times ([`artgc_core::versions::run_bounds`]); an `artgc.io/finished-seen` record later than
/// now (plus the skew) is not artgc's, and refuses reclaim.
fn run_bounds(wp: &WorkflowPlan, skew: jiff::SignedDuration) -> RunBounds {
    let mut facts = wp.run_facts();
    let now = jiff::Timestamp::now();
    let future = facts
        .finished_seen
        .filter(|t| t.checked_sub(skew).is_ok_and(|t| t > now));
    if future.is_some() {
        facts.finished_seen = None;
    }
    let mut b = artgc_core::versions::run_bounds(&facts, skew);
    if let Some(t) = future {
        b.refused.get_or_insert(format!(
            "{ANNOTATION_FINISHED_SEEN} {t} is in the future: not artgc's record"
        ));
    }
    b
}

/// Probes and (unless a dry run) deletes every artifact the plan marks `Delete`.
pub async fn execute(plan: &GcPlan, store: &ObjectStore, run: Run<'_>) -> Execution {
    let probed = probe(plan, store, run).await;
    delete(plan, probed, store, run).await
}

/// Finds what every due artifact amounts to, deleting nothing.
pub async fn probe<'a>(plan: &'a GcPlan, store: &ObjectStore, run: Run<'_>) -> Probed<'a> {
    let skew = jiff::SignedDuration::try_from(store.options().clock_skew).unwrap_or_default();
    let jobs: Vec<Job<'_>> = plan
        .workflows
        .iter()
        .enumerate()
        .flat_map(|(w, wp)| {
            wp.artifacts.iter().enumerate().filter_map(move |(a, ap)| {
                match (&ap.decision, &ap.connection, &ap.target) {
                    (Decision::Delete, Some(conn), Some(target)) => {
                        let bounds = run_bounds(wp, skew);
                        Some(Job {
                            id: ArtifactRef::new(w, a),
                            conn,
                            target,
                            widen: may_widen(ap.archive_none, ap.file_seen),
                            written_by: bounds.window.until,
                            written_from: bounds.window.from,
                            reclaim_refused: bounds.refused,
                            bounded_by: bounds.used,
                            find_file: find_file(ap.customer_key),
                        })
                    }
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
            .entry((job.id.workflow, job.conn, job.target.bucket.as_str()))
            .or_default()
            .push(j);
    }
    let mut results: Vec<Option<ProbeResult>> = (0..jobs.len()).map(|_| None).collect();
    let probes: Vec<(usize, ProbeResult)> = futures::stream::iter(probe_groups.into_values())
        .map(|members| {
            let jobs = &jobs;
            async move {
                let group: Vec<&Job<'_>> = members.iter().map(|&j| &jobs[j]).collect();
                let found = if run.stop.stopped() {
                    group.iter().map(|_| Err(StoreError::cancelled())).collect()
                } else {
                    probe_many(store, jobs[members[0]].conn, group, run).await
                };
                run.progress.probed(members.len() as u64);
                members.into_iter().zip(found).collect::<Vec<_>>()
            }
        })
        .buffer_unordered(concurrency)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    for (j, r) in probes {
        results[j] = Some(r);
    }
    Probed {
        jobs,
        results: results
            .into_iter()
            .map(|r| r.expect("every job probed"))
            .collect(),
    }
}

/// What one deletion request covers of one workflow, for the audit trail.
struct AuditOwner {
    namespace: String,
    workflow: String,
    uid: String,
    artifact: String,
}

/// A key to delete, its size, and the jobs that own it.
type KeyEntry = KeyToDelete;

/// Deletes what [`probe`] found (unless a dry run) and says what happened to each artifact.
pub async fn delete(
    plan: &GcPlan,
    probed: Probed<'_>,
    store: &ObjectStore,
    run: Run<'_>,
) -> Execution {
    let Probed { jobs, results } = probed;
    let found = results.into_iter().enumerate().map(|(j, result)| Found {
        job: j,
        group: (jobs[j].conn, jobs[j].target.bucket.as_str()),
        written_by: jobs[j].written_by,
        result,
    });
    let Claims {
        outcomes,
        mut groups,
        claimed,
    } = claim(found);
    let mut exec = Execution::default();
    for (j, out) in outcomes {
        exec.outcomes.insert(jobs[j].id, out);
    }
    let versions = versioned(plan, &jobs, &claimed, &mut exec, store, run).await;
    if run.mode == Mode::DryRun {
        versions.settle(&jobs, &mut exec, None);
        return exec;
    }
    run.progress
        .to_delete(groups.values().map(|g| g.len() as u64).sum());

    let owners: Vec<AuditOwner> = jobs
        .iter()
        .map(|job| {
            let wp = &plan.workflows[job.id.workflow];
            let ap = plan.artifact(job.id);
            AuditOwner {
                namespace: wp.namespace.clone(),
                workflow: wp.name.clone(),
                uid: wp.uid.clone().unwrap_or_default(),
                artifact: format!("{}/{}", ap.node, ap.name),
            }
        })
        .collect();
    // In key order: a store deletes neighbouring keys of its index faster, as when it lists.
    for keys in groups.values_mut() {
        keys.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    }
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
        .map(|(conn, bucket, chunk)| delete_batch(store, conn, bucket, chunk, &owners, run))
        .collect();
    let results: Vec<_> = futures::stream::iter(futures)
        .buffer_unordered(concurrency(store))
        .collect()
        .await;

    for (chunk, per_key) in results {
        for (KeyToDelete { owners, .. }, result) in chunk.iter().zip(per_key) {
            let Err(e) = result else { continue };
            for &j in owners {
                let out = exec.outcomes.get_mut(&jobs[j].id).expect("probed job");
                out.error.get_or_insert(e.clone());
            }
        }
    }
    // Then the versions the workflows wrote, where reclaimed: after their keys' delete
    // markers, so that no key ever shows an older version again.
    let deleted_versions = versions.delete(&jobs, &exec, store, run, &owners).await;
    versions.settle(&jobs, &mut exec, Some(&deleted_versions));
    exec.outcomes
        .values_mut()
        .for_each(count_only_what_was_deleted);
    exec
}

/// A version to reclaim, and the jobs it belongs to (the first one counts it).
struct VersionEntry<'a> {
    conn: &'a S3Connection,
    bucket: &'a str,
    version: ObjectVersion,
    owners: Vec<usize>,
}

/// An artifact's place in the store, owned (see [`VersionScope`]).
enum Place {
    Key(String),
    Prefix(String),
}

impl Place {
    fn scope(&self) -> VersionScope<'_> {
        match self {
            Self::Key(k) => VersionScope::Key(k),
            Self::Prefix(p) => VersionScope::Prefix(p),
        }
    }
}

/// The versioned buckets' part of a deletion: per job, whether its bytes only get hidden,
/// and the versions to reclaim.
#[derive(Default)]
struct Versions<'a> {
    /// Jobs in a bucket that keeps versions, and whether theirs are reclaimed.
    jobs: HashMap<usize, bool>,
    entries: Vec<VersionEntry<'a>>,
}

/// What happened to each entry of [`Versions::entries`], by position.
type VersionResults = Vec<Result<VersionDeleted, StoreError>>;

/// Asks each bucket's versioning (once per endpoint and bucket) and lists, for the jobs whose
/// versions are reclaimed, the versions their workflow wrote under their key or prefix.
async fn versioned<'a>(
    plan: &GcPlan,
    jobs: &[Job<'a>],
    claimed: &HashMap<usize, Vec<String>>,
    exec: &mut Execution,
    store: &ObjectStore,
    run: Run<'_>,
) -> Versions<'a> {
    let mut buckets: Vec<(&'a S3Connection, &'a str)> = jobs
        .iter()
        .filter(|job| {
            exec.outcomes
                .get(&job.id)
                .is_some_and(|o| o.error.is_none())
        })
        .map(|job| (job.conn, job.target.bucket.as_str()))
        .collect();
    buckets.sort_unstable_by(|a, b| (&a.0.url, a.1).cmp(&(&b.0.url, b.1)));
    buckets.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let asked = futures::future::join_all(buckets.iter().map(|&(conn, bucket)| async move {
        match store.client_for(conn, bucket).await {
            Ok(client) => store.versioning(&client, conn, bucket).await,
            Err(_) => None,
        }
    }))
    .await;
    let state: HashMap<(&S3Connection, &str), Option<Versioning>> =
        buckets.into_iter().zip(asked).collect();

    let mut out = Versions::default();
    let mut listings = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let Some(o) = exec.outcomes.get_mut(&job.id) else {
            continue;
        };
        if o.error.is_some() {
            continue;
        }
        let versioning = state
            .get(&(job.conn, job.target.bucket.as_str()))
            .copied()
            .flatten();
        o.versioning = versioning;
        if !versioning.is_some_and(Versioning::keeps_versions) {
            continue;
        }
        let choice = reclaim_choice(
            store.options().reclaim_versions,
            plan.artifact(job.id).reclaim_versions,
            job.reclaim_refused.as_deref(),
        );
        let reclaim = choice == ReclaimChoice::Reclaim;
        if let ReclaimChoice::Refused(why) = choice {
            o.reclaim_refused = Some(why);
        }
        out.jobs.insert(j, reclaim);
        if reclaim {
            o.reclaim_bounds = job.bounded_by.clone();
            listings.push(j);
        }
    }
    // Where each reclaimed job's versions are: its key, or the directory the probe found.
    let places: Vec<(usize, Place)> = listings
        .into_iter()
        .map(|j| {
            let target = jobs[j].target;
            let place = match exec.outcomes.get(&jobs[j].id).and_then(|o| o.kind) {
                Some(ObjectKind::Directory) => Place::Prefix(target.directory_prefix()),
                _ => Place::Key(target.key.clone()),
            };
            (j, place)
        })
        .collect();
    let listed = futures::future::join_all(places.iter().map(|(j, place)| {
        let job = &jobs[*j];
        async move {
            if run.stop.stopped() {
                return Err(StoreError::cancelled());
            }
            let client = store.client_for(job.conn, &job.target.bucket).await?;
            let limit = store.options().max_objects_per_artifact;
            let prefix = place.scope().list_prefix();
            store
                .list_versions(&client, &job.target.bucket, prefix, limit, &|| {
                    run.stop.stopped()
                })
                .await
        }
    }))
    .await;
    let mut seen: HashMap<(&S3Connection, &str, String, String), usize> = HashMap::new();
    for ((j, place), listing) in places.iter().zip(listed) {
        let (j, scope) = (*j, place.scope());
        let job = &jobs[j];
        let listed = match listing {
            Ok(l) => l,
            Err(e) => {
                let o = exec.outcomes.get_mut(&job.id).expect("probed job");
                o.error = Some(e);
                continue;
            }
        };
        let window = RunWindow {
            from: job.written_from,
            until: job.written_by,
        };
        let mine: std::collections::HashSet<&str> = claimed
            .get(&j)
            .map(|keys| keys.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for v in versions_to_reclaim(&listed, scope, window, &mine) {
            let k = (
                job.conn,
                job.target.bucket.as_str(),
                v.key.clone(),
                v.version_id.clone(),
            );
            match seen.get(&k) {
                Some(&i) => out.entries[i].owners.push(j),
                None => {
                    seen.insert(k, out.entries.len());
                    out.entries.push(VersionEntry {
                        conn: job.conn,
                        bucket: job.target.bucket.as_str(),
                        version: v.clone(),
                        owners: vec![j],
                    });
                }
            }
        }
    }
    out
}

impl Versions<'_> {
    /// Deletes the versions of jobs whose keys were deleted without error; one result per
    /// entry (entries of failed jobs are `cancelled`: not attempted).
    async fn delete(
        &self,
        jobs: &[Job<'_>],
        exec: &Execution,
        store: &ObjectStore,
        run: Run<'_>,
        owners: &[AuditOwner],
    ) -> VersionResults {
        let mut results: VersionResults = vec![Err(StoreError::cancelled()); self.entries.len()];
        let mut groups: HashMap<(&S3Connection, &str), Vec<usize>> = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            let ok = e
                .owners
                .iter()
                .all(|&j| exec.get(jobs[j].id).is_some_and(|o| o.error.is_none()));
            if ok {
                groups.entry((e.conn, e.bucket)).or_default().push(i);
            }
        }
        let work = groups.into_iter().map(|((conn, bucket), idx)| async move {
            let pairs: Vec<(String, String)> = idx
                .iter()
                .map(|&i| {
                    let v = &self.entries[i].version;
                    (v.key.clone(), v.version_id.clone())
                })
                .collect();
            let done = match store.client_for(conn, bucket).await {
                Ok(client) => {
                    store
                        .delete_versions(&client, bucket, &pairs, &|| run.stop.stopped())
                        .await
                }
                Err(e) => vec![Err(e); pairs.len()],
            };
            let deleted = done.iter().filter(|r| r.is_ok()).count();
            let mut workflows: Vec<String> = idx
                .iter()
                .map(|&i| {
                    let o = &owners[self.entries[i].owners[0]];
                    format!("{}/{} ({}) {}", o.namespace, o.workflow, o.uid, o.artifact)
                })
                .collect();
            workflows.sort_unstable();
            workflows.dedup();
            tracing::info!(
                target: "artgc::audit",
                artifacts = %workflows.join(","),
                endpoint = %conn.url,
                bucket,
                versions = pairs.len(),
                deleted,
                identity = %conn.credentials.identity(),
                "delete versions request"
            );
            (idx, done)
        });
        for (idx, done) in futures::future::join_all(work).await {
            for (i, r) in idx.into_iter().zip(done) {
                results[i] = r;
            }
        }
        results
    }

    /// Splits each versioned job's bytes into freed and hidden. `results`: what deleting the
    /// entries did; `None` in a dry run (each entry counts as it would).
    fn settle(&self, jobs: &[Job<'_>], exec: &mut Execution, results: Option<&VersionResults>) {
        // Per job: bytes of versions freed, of those that were current, versions deleted,
        // versions locked.
        let mut freed: HashMap<usize, (u64, u64, u64, u64)> = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            let j = e.owners[0];
            let f = freed.entry(j).or_default();
            let r = results.map_or(Ok(VersionDeleted::Deleted), |r| r[i].clone());
            match r {
                Ok(VersionDeleted::Deleted) => {
                    f.0 += e.version.size;
                    if e.version.is_latest {
                        f.1 += e.version.size;
                    }
                    f.2 += 1;
                }
                Ok(VersionDeleted::Locked) => f.3 += 1,
                // `cancelled` when not attempted: its job failed (that error stands) or the
                // run stopped (retried).
                Err(err) => {
                    let o = exec.outcomes.get_mut(&jobs[j].id).expect("probed job");
                    o.error.get_or_insert(err);
                }
            }
        }
        for (&j, &reclaim) in &self.jobs {
            let Some(o) = exec.outcomes.get_mut(&jobs[j].id) else {
                continue;
            };
            let current = o.bytes;
            match reclaim {
                false => {
                    o.hidden_bytes = current;
                    o.bytes = 0;
                }
                true => {
                    let (bytes, current_freed, count, locked) =
                        freed.get(&j).copied().unwrap_or_default();
                    o.hidden_bytes = current.saturating_sub(current_freed);
                    o.bytes = bytes;
                    o.versions_deleted = count;
                    o.locked = locked;
                }
            }
        }
    }
}

fn concurrency(store: &ObjectStore) -> usize {
    store.options().concurrency.max(1)
}

type BatchResult<'a> = (&'a [KeyEntry], Vec<Result<(), StoreError>>);

async fn delete_batch<'a>(
    store: &ObjectStore,
    conn: &S3Connection,
    bucket: &str,
    chunk: &'a [KeyEntry],
    owners: &[AuditOwner],
    run: Run<'_>,
) -> BatchResult<'a> {
    let names: Vec<String> = chunk.iter().map(|k| k.key.clone()).collect();
    if run.stop.stopped() {
        return (chunk, vec![Err(StoreError::cancelled()); names.len()]);
    }
    let results = match store.client_for(conn, bucket).await {
        Ok(client) => {
            store
                .delete_keys(&client, bucket, &names, &|| run.stop.stopped())
                .await
        }
        Err(e) => vec![Err(e); names.len()],
    };
    run.progress
        .deleted(results.iter().filter(|r| r.is_ok()).count() as u64);
    audit(conn, bucket, chunk, &results, owners);
    (chunk, results)
}

/// One structured record per deletion request and workflow, on target `artgc::audit`.
fn audit(
    conn: &S3Connection,
    bucket: &str,
    chunk: &[KeyEntry],
    results: &[Result<(), StoreError>],
    owners: &[AuditOwner],
) {
    // Workflow (namespace, name, uid) of each key's first owner -> key positions and artifacts.
    type Keys<'o> = (Vec<usize>, Vec<&'o str>);
    let mut by_workflow: BTreeMap<(&str, &str, &str), Keys<'_>> = BTreeMap::new();
    for (i, KeyToDelete { owners: jobs, .. }) in chunk.iter().enumerate() {
        let first = &owners[jobs[0]];
        let entry = by_workflow
            .entry((&first.namespace, &first.workflow, &first.uid))
            .or_default();
        entry.0.push(i);
        for &j in jobs {
            let a = owners[j].artifact.as_str();
            if !entry.1.contains(&a) {
                entry.1.push(a);
            }
        }
    }
    let identity = conn.credentials.identity();
    for ((namespace, workflow, uid), (keys, artifacts)) in by_workflow {
        let failed = keys.iter().filter(|&&i| results[i].is_err()).count();
        let bytes: u64 = keys.iter().map(|&i| chunk[i].size).sum();
        tracing::info!(
            target: "artgc::audit",
            namespace,
            workflow,
            uid,
            artifacts = %artifacts.join(","),
            endpoint = %conn.url,
            bucket,
            keys = keys.len(),
            first_key = %chunk[keys[0]].key.escape_debug(),
            last_key = %chunk[*keys.last().expect("non-empty")].key.escape_debug(),
            bytes,
            failed,
            identity = %identity,
            "delete request"
        );
    }
}

/// The longest prefix, ending at a `/`, shared by all keys.
fn common_prefix<'a>(keys: impl Iterator<Item = &'a str>) -> &'a str {
    let mut common: Option<&str> = None;
    for k in keys {
        let c = common.get_or_insert(k);
        let mut n = c.bytes().zip(k.bytes()).take_while(|(a, b)| a == b).count();
        // Keys may differ inside a multi-byte character: cut at a character boundary.
        while !c.is_char_boundary(n) {
            n -= 1;
        }
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
    jobs: Vec<&Job<'_>>,
    run: Run<'_>,
) -> Vec<ProbeResult> {
    if let [single] = jobs[..] {
        return vec![probe_one(store, conn, single, run).await];
    }
    let prefix = common_prefix(jobs.iter().map(|j| j.target.key.as_str()));
    let limit = jobs.len() * LISTED_PER_ARTIFACT;
    let listed = match store.client_for(conn, &jobs[0].target.bucket).await {
        Ok(client) => {
            store
                .list(&client, &jobs[0].target.bucket, prefix, limit, &|| {
                    run.stop.stopped()
                })
                .await
        }
        Err(e) => Err(e),
    };
    match listed {
        Ok(objects) => {
            let index: BTreeMap<String, StoredObject> =
                objects.into_iter().map(|o| (o.key.clone(), o)).collect();
            let max = store.options().max_objects_per_artifact;
            jobs.iter().map(|j| classify(&index, j, max)).collect()
        }
        Err(e) if e.kind == StoreErrorKind::TooManyObjects => {
            // Split by the next segment after the common prefix; keep the input order.
            let mut parts: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, j) in jobs.iter().enumerate() {
                let rest = &j.target.key[prefix.len()..];
                let segment = rest.find('/').map_or(rest, |n| &rest[..=n]);
                parts.entry(segment).or_default().push(i);
            }
            if parts.len() == 1 {
                // Nothing left to split on (the same key named twice): probe each alone.
                let each = jobs.iter().map(|j| probe_one(store, conn, j, run));
                return futures::future::join_all(each).await;
            }
            let mut out: Vec<Option<ProbeResult>> = (0..jobs.len()).map(|_| None).collect();
            let parts = parts.into_values().map(|idx| {
                let part = idx.iter().map(|&i| jobs[i]).collect();
                async move {
                    let probed = Box::pin(probe_many(store, conn, part, run)).await;
                    (idx, probed)
                }
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
        Err(e) => jobs.iter().map(|_| Err(e.clone())).collect(),
    }
}

fn too_many(job: &Job<'_>, max: usize) -> StoreError {
    StoreError::new(
        StoreErrorKind::TooManyObjects,
        format!(
            "s3://{}/{} holds more than {max} objects (raise --max-objects-per-artifact to allow it)",
            job.target.bucket, job.target.key
        ),
    )
}

/// Objects under a widened `key/` that the workflow did not write during its run are not its.
fn written_during(objects: Vec<StoredObject>, job: &Job<'_>) -> Vec<StoredObject> {
    objects
        .into_iter()
        .filter(|o| match (o.last_modified, job.written_from) {
            (Some(t), Some(from)) => t >= from,
            _ => true,
        })
        .collect()
}

/// What a complete listing of a prefix covering the job's key says about it.
fn classify(index: &BTreeMap<String, StoredObject>, job: &Job<'_>, max: usize) -> ProbeResult {
    let target = job.target;
    let under = |prefix: &str| -> Vec<StoredObject> {
        index
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, o)| o.clone())
            .collect()
    };
    let found = if target.is_directory_key() {
        (ObjectKind::Directory, under(&target.key))
    } else if let Some(obj) = index.get(&target.key) {
        (ObjectKind::File, vec![obj.clone()])
    } else if job.widen {
        let objects = written_during(under(&target.directory_prefix()), job);
        match objects.is_empty() {
            true => (ObjectKind::File, objects),
            false => (ObjectKind::Directory, objects),
        }
    } else {
        (ObjectKind::File, Vec::new())
    };
    if found.1.len() > max {
        return Err(too_many(job, max));
    }
    Ok(found)
}

/// What one artifact amounts to in the store. A key ending in `/` is a directory; any other key
/// is a file, unless the artifact may be widened (`archive: none`, no file seen before), HEAD
/// answered that no such object exists, and objects exist under `key/` (Argo leaves those
/// behind; artgc does not). A failed HEAD is no evidence: its error stands.
async fn probe_one(
    store: &ObjectStore,
    conn: &S3Connection,
    job: &Job<'_>,
    run: Run<'_>,
) -> ProbeResult {
    let stop = || run.stop.stopped();
    let target = job.target;
    let client = store.client_for(conn, &job.target.bucket).await?;
    let limit = store.options().max_objects_per_artifact;
    if target.is_directory_key() {
        let objects = store
            .list(&client, &target.bucket, &target.key, limit, &stop)
            .await?;
        return Ok((ObjectKind::Directory, objects));
    }
    let found = match job.find_file {
        FindFile::Head => store.head(&client, &target.bucket, &target.key).await?,
        FindFile::Listing => store
            .list(&client, &target.bucket, &target.key, limit, &stop)
            .await?
            .into_iter()
            .find(|o| o.key == target.key),
    };
    if let Some(obj) = found {
        return Ok((ObjectKind::File, vec![obj]));
    }
    if !job.widen {
        store.check_bucket(&client, &target.bucket).await?;
        return Ok((ObjectKind::File, Vec::new()));
    }
    let prefix = target.directory_prefix();
    let objects = written_during(
        store
            .list(&client, &target.bucket, &prefix, limit, &stop)
            .await?,
        job,
    );
    match objects.is_empty() {
        true => Ok((ObjectKind::File, objects)),
        false => Ok((ObjectKind::Directory, objects)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that differ inside a multi-byte character once cut the prefix mid-character.
    #[test]
    fn the_common_prefix_ends_at_a_character_boundary() {
        let keys = ["数据/报告.csv", "数据/日志.csv"];
        assert_eq!(common_prefix(keys.iter().copied()), "数据/");
        assert_eq!(common_prefix(["é1", "è2"].iter().copied()), "");
        assert_eq!(
            common_prefix(["w/a/x", "w/a/y", "w/b"].iter().copied()),
            "w/"
        );
    }

    #[test]
    fn an_sse_c_object_is_found_by_listing_never_by_head() {
        assert_eq!(find_file(true), FindFile::Listing);
        assert_eq!(find_file(false), FindFile::Head);
    }

    #[test]
    fn widening_needs_archive_none_and_no_file_seen_before() {
        assert!(may_widen(true, false));
        assert!(!may_widen(false, false));
        assert!(!may_widen(true, true));
        assert!(!may_widen(false, true));
    }
}
