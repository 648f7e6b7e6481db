//! What each due artifact amounts to: a file (HEAD, or a listing for SSE-C), a directory
//! of keys (a listing), or nothing.

use super::*;

/// How a probe looks for a file at a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FindFile {
    /// HEAD the key: one request.
    Head,
    /// List from the key and take it if it is there: an SSE-C object answers HEAD only with its
    /// customer key, which artgc does not send (a delete needs none).
    Listing,
}

pub(super) fn find_file(customer_key: bool) -> FindFile {
    match customer_key {
        true => FindFile::Listing,
        false => FindFile::Head,
    }
}

/// A key without a trailing `/` names a directory only with positive evidence: the artifact
/// was uploaded with `archive: none` (Argo tars anything else into one object), and no earlier
/// pass found a file there (that file may be gone now, deleted by a pass that crashed before
/// recording it).
pub(super) fn may_widen(archive_none: bool, file_seen: bool) -> bool {
    archive_none && !file_seen
}

/// The probe of every due artifact of a plan.
pub struct Probed<'a> {
    pub(super) jobs: Vec<Job<'a>>,
    pub(super) results: Vec<ProbeResult>,
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
pub(super) fn run_bounds(wp: &WorkflowPlan, skew: jiff::SignedDuration) -> RunBounds {
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

/// The longest prefix, ending at a `/`, shared by all keys.
pub(super) fn common_prefix<'a>(keys: impl Iterator<Item = &'a str>) -> &'a str {
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
pub(super) const LISTED_PER_ARTIFACT: usize = 200;

/// Probes artifacts of one bucket with as few requests as it can: one listing of their common
/// prefix answers for all of them (Argo puts a workflow's keys under one folder, and a bulk purge
/// covers most of a bucket). When that listing would run past a bound proportional to the
/// artifacts it serves, they are split by the next path segment and each part is tried the same
/// way, down to single artifacts, which are probed alone.
pub(super) async fn probe_many(
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

pub(super) fn too_many(job: &Job<'_>, max: usize) -> StoreError {
    StoreError::new(
        StoreErrorKind::TooManyObjects,
        format!(
            "s3://{}/{} holds more than {max} objects (raise --max-objects-per-artifact to allow it)",
            job.target.bucket, job.target.key
        ),
    )
}

/// Objects under a widened `key/` that the workflow did not write during its run are not its.
pub(super) fn written_during(objects: Vec<StoredObject>, job: &Job<'_>) -> Vec<StoredObject> {
    objects
        .into_iter()
        .filter(|o| match (o.last_modified, job.written_from) {
            (Some(t), Some(from)) => t >= from,
            _ => true,
        })
        .collect()
}

/// What a complete listing of a prefix covering the job's key says about it.
pub(super) fn classify(
    index: &BTreeMap<String, StoredObject>,
    job: &Job<'_>,
    max: usize,
) -> ProbeResult {
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
pub(super) async fn probe_one(
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
