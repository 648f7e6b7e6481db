//! Deleting what the probes found: the keys in batches, each key once, with an audit record
//! per request and workflow.

use super::versions::versioned;
use super::*;

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

    let owners = audit_owners(plan, &jobs);
    // In key order: a store deletes neighbouring keys of its index faster, as when it lists.
    for keys in groups.values_mut() {
        keys.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    }
    let batches = groups.iter().flat_map(|((conn, bucket), keys)| {
        keys.chunks(MAX_BATCH)
            .map(move |chunk| (*conn, *bucket, chunk))
    });
    // Futures built before the stream, by a named async fn: a closure inside the stream type
    // makes the whole future not provably `Send` (rustc's higher-ranked lifetime limits).
    let futures: Vec<_> = batches
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

/// Who each job's keys belong to, for the audit records.
fn audit_owners(plan: &GcPlan, jobs: &[Job<'_>]) -> Vec<AuditOwner> {
    jobs.iter()
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
        .collect()
}

pub(super) type BatchResult<'a> = (&'a [KeyEntry], Vec<Result<(), StoreError>>);

pub(super) async fn delete_batch<'a>(
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
pub(super) fn audit(
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
