//! Deletion throughput: Argo's method vs artgc purge vs the server's raw batched limit.
//!
//! `cargo run --release --example bench_delete [-- --workflows 100 --files 20 --dirs 2 --dir-files 90 --latency-ms 0]`
//!
//! Starts s3s-fs in process (or uses the store named by ARTGC_TEST_S3_ENDPOINT and friends, e.g.
//! garage from `.ci/garage.sh`), seeds the same layout before each measurement, and prints:
//! (a) Argo's method: one DeleteObject per key, sequential, listing directory artifacts first;
//! (b) artgc purge end to end: plan from Workflow objects, probe, batched delete;
//! (c) raw limit: DeleteObjects of 1,000 pre-listed keys, at the best of several concurrencies.
//!
//! With `--latency-ms N` every request of (a), (b) and (c) goes through the test proxy, which
//! adds N ms to each: a store across a network.
//! `--skip-argo` leaves (a) out (minutes behind a latency). (b) and each (c) run `--rounds` (3)
//! times in a rotating order, each after a fresh seed and `--settle-secs` (10 on an external
//! store); the summary compares their medians. `--concurrencies 4,8` narrows (c) to those.
//! `--endpoint-concurrency N` and `--delete-concurrency N` set (b)'s bounds (artgc's flags).

use std::time::Instant;

use artgc::execute::{Run, execute};
use artgc::store::{ObjectStore, StoreOptions};
use artgc_core::cluster::{ArgoConfigMapRef, ClusterState};
use artgc_core::inventory::Inventory;
use artgc_core::plan::{Decision, PlanOptions, plan};
use artgc_testkit::S3Server;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::StreamExt;
use serde_json::json;

struct Layout {
    workflows: usize,
    files: usize,
    dirs: usize,
    dir_files: usize,
}

impl Layout {
    fn objects(&self) -> usize {
        self.workflows * (self.files + self.dirs * self.dir_files)
    }

    /// Artifact keys per workflow as Argo's default keyFormat lays them out; every other
    /// directory key lacks its trailing slash (archive: none).
    fn artifacts(&self, w: usize) -> Vec<(String, String, bool)> {
        let wf = format!("bench-{w:04}");
        let mut out = Vec::new();
        for f in 0..self.files {
            out.push((
                format!("file-{f}"),
                format!("{wf}/{wf}-step-{f}/file-{f}.tgz"),
                false,
            ));
        }
        for d in 0..self.dirs {
            let slash = if d % 2 == 0 { "/" } else { "" };
            out.push((
                format!("dir-{d}"),
                format!("{wf}/{wf}-dir-{d}/out{slash}"),
                true,
            ));
        }
        out
    }

    fn keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(self.objects());
        for w in 0..self.workflows {
            for (_, key, is_dir) in self.artifacts(w) {
                if is_dir {
                    let base = key.trim_end_matches('/');
                    keys.extend((0..self.dir_files).map(|i| format!("{base}/part-{i:03}.csv")));
                } else {
                    keys.push(key);
                }
            }
        }
        keys
    }
}

async fn seed(srv: &S3Server, layout: &Layout) -> String {
    let bucket = srv.bucket("bench").await;
    let body = vec![b'a'; 256];
    let objects = layout
        .keys()
        .into_iter()
        .map(|k| (k, body.clone()))
        .collect();
    srv.put_many(&bucket, objects, 32).await;
    // A store goes on working after a burst of writes or deletions (garage updates its Merkle
    // trees and reference counts in the background): each measurement starts once that is over
    // rather than paying for the one before.
    let settle = artgc_testkit::flag("--settle-secs", if srv.kind == "external" { 10 } else { 0 });
    tokio::time::sleep(std::time::Duration::from_secs(settle as u64)).await;
    bucket
}

/// (a) Argo's GC pod: per artifact, list a directory then delete key by key; all sequential.
async fn argo_method(srv: &S3Server, endpoint: &str, bucket: &str, layout: &Layout) -> usize {
    let c = srv.client_at(endpoint);
    let mut n = 0;
    for w in 0..layout.workflows {
        for (_, key, is_dir) in layout.artifacts(w) {
            let keys = if is_dir {
                let prefix = format!("{}/", key.trim_end_matches('/'));
                let page = c
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&prefix)
                    .send()
                    .await
                    .unwrap();
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string))
                    .collect()
            } else {
                vec![key]
            };
            for k in keys {
                c.delete_object()
                    .bucket(bucket)
                    .key(&k)
                    .send()
                    .await
                    .unwrap();
                n += 1;
            }
        }
    }
    n
}

/// When probing ended: the first `to_delete`.
struct Phases {
    started: Instant,
    probed: std::sync::OnceLock<f64>,
}

impl artgc::execute::Progress for Phases {
    fn to_delete(&self, _objects: u64) {
        let _ = self.probed.set(self.started.elapsed().as_secs_f64());
    }
}

/// (b) artgc: Workflow objects -> plan -> execute. Returns the objects deleted, and the
/// seconds planning and probing took.
async fn artgc_purge(
    srv: &S3Server,
    endpoint: &str,
    bucket: &str,
    layout: &Layout,
) -> (u64, f64, f64) {
    let repo = json!({"s3": {
        "endpoint": endpoint, "bucket": bucket, "insecure": true, "region": srv.region,
        "accessKeySecret": {"name": "s3", "key": "accesskey"},
        "secretKeySecret": {"name": "s3", "key": "secretkey"}}});
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s3", "namespace": "bench"},
            "stringData": {"accesskey": srv.access_key, "secretkey": srv.secret_key}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "artifact-repositories", "namespace": "bench",
                "annotations": {"workflows.argoproj.io/default-artifact-repository": "default"}},
            "data": {"default": serde_json::to_string(&repo).unwrap()}}),
    ];
    for w in 0..layout.workflows {
        let arts: Vec<_> = layout
            .artifacts(w)
            .into_iter()
            .map(|(name, key, is_dir)| {
                let mut a = json!({"name": name, "s3": {"key": key}});
                if is_dir {
                    a["archive"] = json!({"none": {}});
                }
                a
            })
            .collect();
        items.push(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": format!("bench-{w:04}"), "namespace": "bench",
                         "labels": {"workflows.argoproj.io/completed": "true"}},
            "spec": {"artifactGC": {"strategy": "OnWorkflowCompletion"}},
            "status": {"phase": "Succeeded",
                "artifactRepositoryRef": {"artifactRepository": repo},
                "nodes": {"n": {"id": "n", "type": "Pod", "outputs": {"artifacts": arts}}}},
        }));
    }
    let text = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .unwrap();
    let started = Instant::now();
    let mut inv = Inventory::default();
    inv.add_text("bench", &text, "bench").unwrap();
    // garage and s3s-fs listen on loopback.
    let mut state = ClusterState::new(ArgoConfigMapRef::default()).with_policy(
        std::sync::Arc::new(artgc_core::policy::Policy {
            allow_loopback: true,
            ..Default::default()
        }),
    );
    inv.secrets.into_iter().for_each(|s| state.insert_secret(s));
    inv.config_maps
        .into_iter()
        .for_each(|c| state.insert_config_map(c));
    let p = plan(&inv.workflows, &state, &PlanOptions::default());
    let plan_secs = started.elapsed().as_secs_f64();
    assert!(p.artifacts().all(|(_, a)| a.decision == Decision::Delete));
    // artgc's own bounds, as `--endpoint-concurrency` and `--delete-concurrency` set them.
    let defaults = StoreOptions::default();
    let store = ObjectStore::new(StoreOptions {
        endpoint_concurrency: artgc_testkit::flag(
            "--endpoint-concurrency",
            defaults.endpoint_concurrency,
        ),
        delete_concurrency: artgc_testkit::flag(
            "--delete-concurrency",
            defaults.delete_concurrency,
        ),
        ..defaults
    });
    let phases = Phases {
        started: Instant::now(),
        probed: Default::default(),
    };
    let exec = execute(&p, &store, Run::DELETE.with_progress(&phases)).await;
    let mut objects = 0;
    for o in exec.outcomes.values() {
        assert!(o.error.is_none(), "{:?}", o.error);
        objects += o.objects;
    }
    (
        objects,
        plan_secs,
        phases.probed.get().copied().unwrap_or(f64::NAN),
    )
}

/// (c) Batched DeleteObjects of pre-listed keys.
async fn raw_batches(
    srv: &S3Server,
    endpoint: &str,
    bucket: &str,
    keys: &[String],
    concurrency: usize,
) {
    let c = srv.client_at(endpoint);
    let c = &c;
    futures::stream::iter(keys.chunks(1000))
        .map(|chunk| async move {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build().unwrap())
                .collect();
            let del = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .unwrap();
            let out = c
                .delete_objects()
                .bucket(bucket)
                .delete(del)
                .send()
                .await
                .unwrap();
            assert!(out.errors().is_empty(), "{:?}", out.errors());
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::main]
async fn main() {
    let layout = Layout {
        workflows: artgc_testkit::flag("--workflows", 100),
        files: artgc_testkit::flag("--files", 20),
        dirs: artgc_testkit::flag("--dirs", 2),
        dir_files: artgc_testkit::flag("--dir-files", 90),
    };
    let srv = S3Server::start().await;
    let latency = artgc_testkit::flag("--latency-ms", 0);
    let proxy = artgc_testkit::FaultProxy::start(&srv.endpoint).await;
    proxy.set_latency(std::time::Duration::from_millis(latency as u64));
    // Every measured request goes through the proxy when a latency is asked for.
    let endpoint = if latency > 0 {
        proxy.endpoint.clone()
    } else {
        srv.endpoint.clone()
    };
    let total = layout.objects();
    println!(
        "store: {} at {} (+{latency} ms a request); {} objects: {} workflows x ({} file artifacts + {} directory artifacts x {} files)",
        srv.kind,
        srv.endpoint,
        total,
        layout.workflows,
        layout.files,
        layout.dirs,
        layout.dir_files
    );

    // (a) takes minutes behind a latency: `--skip-argo` leaves it out.
    let a = if std::env::args().any(|a| a == "--skip-argo") {
        f64::NAN
    } else {
        let bucket = seed(&srv, &layout).await;
        let t = Instant::now();
        let n = argo_method(&srv, &endpoint, &bucket, &layout).await;
        let a = n as f64 / t.elapsed().as_secs_f64();
        assert_eq!(srv.keys(&bucket).await.len(), 0);
        println!(
            "(a) Argo's method, sequential DeleteObject: {n} objects in {:.2} s = {a:.0} objects/s",
            t.elapsed().as_secs_f64()
        );
        a
    };

    // What probing costs on this store: one listing of one workflow's folder.
    let bucket = seed(&srv, &layout).await;
    let t = Instant::now();
    let page = srv
        .client()
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("bench-0000/")
        .send()
        .await
        .unwrap();
    println!(
        "    one ListObjectsV2 of one workflow's folder ({} keys) in this bucket: {:.1} ms",
        page.contents().len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let keys = srv.keys(&bucket).await;
    raw_batches(&srv, &srv.endpoint, &bucket, &keys, 4).await;

    // A store's rate drifts by tens of percent from one run to the next (garage): (b) and
    // each (c) run once per round, in a rotating order, and the medians are compared.
    let rounds = artgc_testkit::flag("--rounds", 3);
    // `--concurrencies 4,8` narrows (c) to those (a long comparison of (b) with one of them).
    let concurrencies: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--concurrencies")
        .nth(1)
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![4, 8, 16]);
    let mut b_rates = Vec::new();
    // (b) without its probe: c's keys come pre-listed, b lists them itself.
    let mut b_delete_rates = Vec::new();
    let mut c_rates: Vec<Vec<f64>> = vec![Vec::new(); concurrencies.len()];
    for round in 0..rounds {
        // Runs 0 = (b), 1.. = (c) at each concurrency; rotated by the round.
        let runs = concurrencies.len() + 1;
        for i in 0..runs {
            let run = (i + round) % runs;
            let bucket = seed(&srv, &layout).await;
            if run == 0 {
                let t = Instant::now();
                let (n, plan_secs, probe_secs) =
                    artgc_purge(&srv, &endpoint, &bucket, &layout).await;
                let secs = t.elapsed().as_secs_f64();
                assert_eq!(n as usize, total);
                assert_eq!(srv.keys(&bucket).await.len(), 0);
                b_rates.push(n as f64 / secs);
                b_delete_rates.push(n as f64 / (secs - plan_secs - probe_secs));
                println!(
                    "(b) artgc purge end to end: {n} objects in {secs:.2} s (plan {plan_secs:.3} s, probe {probe_secs:.3} s, delete {:.2} s) = {:.0} objects/s",
                    secs - plan_secs - probe_secs,
                    n as f64 / secs
                );
            } else {
                let concurrency = concurrencies[run - 1];
                let keys = srv.keys(&bucket).await;
                let t = Instant::now();
                raw_batches(&srv, &endpoint, &bucket, &keys, concurrency).await;
                let secs = t.elapsed().as_secs_f64();
                let rate = keys.len() as f64 / secs;
                assert_eq!(srv.keys(&bucket).await.len(), 0);
                c_rates[run - 1].push(rate);
                println!(
                    "(c) raw DeleteObjects x1000, concurrency {concurrency}: {} objects in {secs:.2} s = {rate:.0} objects/s",
                    keys.len()
                );
            }
        }
    }
    let b = median(&mut b_rates);
    let (c, best) = c_rates
        .iter_mut()
        .zip(concurrencies.iter().copied())
        .map(|(r, k)| (median(r), k))
        .fold((0.0f64, 0usize), |acc, x| if x.0 > acc.0 { x } else { acc });
    println!(
        "\nsummary ({}, medians of {rounds} rounds): a = {a:.0}/s, b = {b:.0}/s, c = {c:.0}/s (concurrency {best})",
        srv.kind
    );
    println!(
        "b/a = {:.1} (target >= 20), b/c = {:.2} (target >= 0.9); b's delete phase alone / c = {:.2}",
        b / a,
        b / c,
        median(&mut b_delete_rates) / c
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
