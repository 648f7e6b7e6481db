//! A versioned bucket's versions: which a workflow wrote, under its key or prefix and in its
//! run's window, and deleting them by id after the keys' delete markers.

use super::*;

/// A version to reclaim, and the jobs it belongs to (the first one counts it).
pub(super) struct VersionEntry<'a> {
    conn: &'a S3Connection,
    bucket: &'a str,
    version: ObjectVersion,
    owners: Vec<usize>,
}

/// An artifact's place in the store, owned (see [`VersionScope`]).
pub(super) enum Place {
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
pub(super) struct Versions<'a> {
    /// Jobs in a bucket that keeps versions, and whether theirs are reclaimed.
    jobs: HashMap<usize, bool>,
    entries: Vec<VersionEntry<'a>>,
}

/// What happened to each entry of [`Versions::entries`], by position.
pub(super) type VersionResults = Vec<Result<VersionDeleted, StoreError>>;

/// Asks each bucket's versioning (once per endpoint and bucket) and lists, for the jobs whose
/// versions are reclaimed, the versions their workflow wrote under their key or prefix.
pub(super) async fn versioned<'a>(
    plan: &GcPlan,
    jobs: &[Job<'a>],
    claimed: &HashMap<usize, Vec<String>>,
    exec: &mut Execution,
    store: &ObjectStore,
    run: Run<'_>,
) -> Versions<'a> {
    let state = bucket_versioning(jobs, exec, store).await;
    let mut out = Versions::default();
    let operator = store.options().reclaim_versions;
    let places = choose(plan, jobs, exec, &state, operator, &mut out);
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
    collect(jobs, claimed, exec, &places, listed, &mut out);
    out
}

/// Each bucket's versioning, asked once, for the buckets of jobs whose probe went through.
async fn bucket_versioning<'a>(
    jobs: &[Job<'a>],
    exec: &Execution,
    store: &ObjectStore,
) -> HashMap<(&'a S3Connection, &'a str), Option<Versioning>> {
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
    buckets.into_iter().zip(asked).collect()
}

/// Records each job's bucket versioning and the reclaim choice ([`reclaim_choice`]); returns
/// where each reclaimed job's versions are: its key, or the directory the probe found.
fn choose(
    plan: &GcPlan,
    jobs: &[Job<'_>],
    exec: &mut Execution,
    state: &HashMap<(&S3Connection, &str), Option<Versioning>>,
    operator: bool,
    out: &mut Versions<'_>,
) -> Vec<(usize, Place)> {
    let mut places = Vec::new();
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
            operator,
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
            let place = match o.kind {
                Some(ObjectKind::Directory) => Place::Prefix(job.target.directory_prefix()),
                _ => Place::Key(job.target.key.clone()),
            };
            places.push((j, place));
        }
    }
    places
}

/// The versions each listing shows the job wrote ([`versions_to_reclaim`]), each once: a
/// version two jobs claim is deleted once and counted for the first.
fn collect<'a>(
    jobs: &[Job<'a>],
    claimed: &HashMap<usize, Vec<String>>,
    exec: &mut Execution,
    places: &[(usize, Place)],
    listed: Vec<Result<Vec<ObjectVersion>, StoreError>>,
    out: &mut Versions<'a>,
) {
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
}

impl Versions<'_> {
    /// Deletes the versions of jobs whose keys were deleted without error; one result per
    /// entry (entries of failed jobs are `cancelled`: not attempted).
    pub(super) async fn delete(
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
    pub(super) fn settle(
        &self,
        jobs: &[Job<'_>],
        exec: &mut Execution,
        results: Option<&VersionResults>,
    ) {
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
