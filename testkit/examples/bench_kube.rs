//! How the test API server holds up with many realistic Workflows.
//!
//! `cargo run --release -p artgc-testkit --example bench_kube [-- --workflows 10000 --nodes 20]`
//!
//! Seeds Workflows with `--nodes` Pod nodes each (outputs, logs, repository ref: the shape Argo
//! writes) through kube-rs, then times a full list, a label-selected list, a watch from scratch,
//! GETs and merge patches, and prints the server process' RSS.

use std::time::{Duration, Instant};

use artgc_testkit::KubeApiServer;
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchParams,
};
use kube::core::{GroupVersionKind, WatchEvent};
use serde_json::{Value, json};

fn workflow(i: usize, nodes: usize) -> Value {
    let name = format!("wf-{i:05}");
    let mut status_nodes = serde_json::Map::new();
    for n in 0..nodes {
        let id = format!("{name}-{}", 1_000_000 + n * 7919);
        status_nodes.insert(id.clone(), json!({
            "id": id, "name": format!("{name}[{n}].step-{n}"), "displayName": format!("step-{n}"),
            "type": "Pod", "phase": "Succeeded", "templateName": "step", "templateScope": format!("local/{name}"),
            "startedAt": "2026-11-20T02:00:00Z", "finishedAt": "2026-11-20T02:00:30Z",
            "hostNodeName": "worker-3", "resourcesDuration": {"cpu": 3, "memory": 2},
            "outputs": {"artifacts": [
                {"name": "result", "path": "/tmp/result.json", "s3": {"key": format!("{name}/{id}/result.tgz")}},
                {"name": "main-logs", "s3": {"key": format!("{name}/{id}/main.log")}},
            ], "exitCode": "0"},
        }));
    }
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": format!("team-{}", i % 10),
            "labels": {"workflows.argoproj.io/completed": if i.is_multiple_of(10) { "false" } else { "true" },
                       "workflows.argoproj.io/phase": "Succeeded"}},
        "spec": {"entrypoint": "main", "artifactGC": {"strategy": "OnWorkflowCompletion"},
            "templates": [{"name": "step", "container": {"image": "alpine", "command": ["sh", "-c", "echo hi"]},
                "outputs": {"artifacts": [{"name": "result", "path": "/tmp/result.json"}]}}]},
        "status": {"phase": "Succeeded", "startedAt": "2026-11-20T02:00:00Z", "finishedAt": "2026-11-20T02:10:00Z",
            "artifactRepositoryRef": {"artifactRepository": {"s3": {"endpoint": "minio:9000", "bucket": "artifacts",
                "insecure": true, "accessKeySecret": {"name": "cred", "key": "accesskey"},
                "secretKeySecret": {"name": "cred", "key": "secretkey"}}}},
            "nodes": status_nodes},
    })
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let (count, nodes) = (
        artgc_testkit::flag("--workflows", 10_000),
        artgc_testkit::flag("--nodes", 20),
    );
    let server = KubeApiServer::start().await;
    server.set_request_log(false);
    for team in 0..10 {
        server.seed(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": format!("team-{team}")}}));
    }
    let client = server.client();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
        "workflows",
    );
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let size = serde_json::to_vec(&workflow(0, nodes)).unwrap().len();
    println!("{count} Workflows, {nodes} Pod nodes each, {size} bytes of JSON each");

    let t = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &format!("team-{}", i % 10), &ar);
            async move {
                let obj: DynamicObject = serde_json::from_value(workflow(i, nodes)).unwrap();
                api.create(&PostParams::default(), &obj).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "create (kube-rs, 16 in flight): {secs:.2} s = {:.0} objects/s",
        count as f64 / secs
    );

    println!(
        "RSS after seeding (the server holds every object): {:.0} MiB",
        rss_mib()
    );

    let t = Instant::now();
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), count);
    drop(list);
    println!("list all: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);

    let t = Instant::now();
    let sel = all
        .list(&ListParams::default().labels("workflows.argoproj.io/completed=false"))
        .await
        .unwrap();
    println!(
        "list by label selector ({} match): {:.0} ms",
        sel.items.len(),
        t.elapsed().as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let stream = all
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .unwrap();
    let mut stream = stream.boxed();
    let mut added = 0;
    while added < count {
        if let Some(WatchEvent::Added(_)) = stream.try_next().await.unwrap() {
            added += 1;
        }
    }
    println!(
        "watch from scratch, {added} ADDED events: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(stream);

    let mut gets = Vec::with_capacity(1000);
    for i in 0..1000 {
        let i = (i * 7907) % count;
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &format!("team-{}", i % 10), &ar);
        let t = Instant::now();
        api.get(&format!("wf-{i:05}")).await.unwrap();
        gets.push(t.elapsed());
    }
    gets.sort();
    println!(
        "get: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&gets, 0.5),
        percentile(&gets, 0.99)
    );

    let t = Instant::now();
    for i in 0..1000 {
        let i = (i * 7907) % count;
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &format!("team-{}", i % 10), &ar);
        let patch = Patch::Merge(json!({"metadata": {"labels": {"artgc.test/touched": "true"}}}));
        api.patch(&format!("wf-{i:05}"), &PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "merge patch, sequential: {:.2} ms each",
        secs * 1e3 / 1000.0
    );
    println!(
        "RSS at the end (server, client buffers, allocator slack): {:.0} MiB",
        rss_mib()
    );
}
