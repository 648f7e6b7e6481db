//! The controller's latency and scale, with `artgc controller` as a separate process (its RSS is
//! its own) against the project's Kubernetes API test server and an S3 server in this process.
//!
//! `cargo run --release --example bench_controller [-- --workflows 1000 --rate 50 --artifacts 10
//!  --scale-workflows 10000 --nodes 20]`
//!
//! (1) Latency: `--workflows` running workflows with `--artifacts` due artifacts each (objects in
//!     S3) are marked completed at `--rate` per second; each is timed from its completed label
//!     to all its artifacts deleted and recorded (`deleted: true`, strategiesProcessed), as seen
//!     by a watch here. Prints p50/p90/p99/max.
//! (2) Scale: `--scale-workflows` completed workflows with `--nodes` Pod nodes (one artifact each,
//!     OnWorkflowDeletion, so all are pending and indexed) exist before the controller starts.
//!     Prints time to /ready, and the controller's RSS (current and peak) once it settled.
//!     Keys are in their pods' folders (one index entry per pod); `--layout outside` puts every
//!     key outside them (one index entry per key, front-coded less well).
//! (3) Adversarial: as (1), while other tenants' workflows complete beside them: `--slow` (16)
//!     whose store answers every request after `--slow-ms` (2000), `--huge` (4) with
//!     `--huge-nodes` (20,000) artifacts each. The p99 is the measured (normal) workflows'.
//! Pass `--only latency`, `--only scale` or `--only adversarial` to run one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artgc_testkit::{KubeApiServer, S3Server, flag, free_port};
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const NS: &str = "bench";

fn binary() -> PathBuf {
    // Build the binary this example measures, in this example's profile.
    let exe = std::env::current_exe().expect("current exe");
    let release = exe.components().any(|c| c.as_os_str() == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--locked", "--bin", "artgc"]);
    if release {
        build.arg("--release");
    }
    assert!(
        build.status().expect("cargo build").success(),
        "building artgc failed"
    );
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>")
        .join("artgc")
}

struct Controller {
    child: Child,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Controller {
    fn spawn(kube: &KubeApiServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kc, NS).unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary())
            .args(["controller", "--allow-loopback", "--admin-addr", &admin])
            .env("KUBECONFIG", &kc)
            .env("RUST_LOG", "warn")
            .envs(std::env::var("BENCH_CHILD_ENV").ok().and_then(|v| {
                v.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            }))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn artgc controller");
        Self {
            child,
            admin,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.admin).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.get(9..12)?.parse().ok()?;
        Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
    }

    fn wait_ready(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let mut samples = Vec::new();
        while start.elapsed() < timeout {
            if self.get("/ready").is_some_and(|(s, _)| s == 200) {
                if std::env::var_os("BENCH_RSS_TRACE").is_some() {
                    println!("  RSS while starting (s, MiB): {samples:?}");
                }
                return start.elapsed();
            }
            samples.push((
                (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                self.rss().0.round(),
            ));
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("controller not ready within {timeout:?}");
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// CPU time used so far (user + system), seconds.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and stime are the 12th
        // and 13th, in clock ticks (100 a second on Linux).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    fn stop(mut self) -> Option<i32> {
        // SIGTERM, as Kubernetes stops a pod.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

fn secret(s3: &S3Server) -> Value {
    secret_in(NS, s3)
}

fn secret_in(ns: &str, s3: &S3Server) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": ns},
           "stringData": {"accesskey": s3.access_key, "secretkey": s3.secret_key}})
}

fn repo(s3: &S3Server, bucket: &str) -> Value {
    json!({"s3": {"endpoint": s3.endpoint, "bucket": bucket, "insecure": true, "region": s3.region,
        "accessKeySecret": {"name": "s3", "key": "accesskey"},
        "secretKeySecret": {"name": "s3", "key": "secretkey"}}})
}

/// The namespace's repositories ConfigMap: what configures the store for its workflows.
fn repositories(repo: &Value) -> Value {
    repositories_in(NS, repo)
}

fn repositories_in(ns: &str, repo: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "artifact-repositories", "namespace": ns,
                        "annotations": {"workflows.argoproj.io/default-artifact-repository": "default"}},
           "data": {"default": serde_json::to_string(repo).unwrap()}})
}

/// Where artifact keys go: under their pod's folder (Argo's default key format, one index entry
/// per pod) or outside it (`out/<pod>/out.tgz`, one index entry per key).
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Folder,
    Outside,
}

fn layout() -> Layout {
    match arg("--layout").as_deref() {
        Some("outside") => Layout::Outside,
        None | Some("folder") => Layout::Folder,
        Some(other) => panic!("--layout folder|outside, not {other}"),
    }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn nodes(name: &str, count: usize, strategy: &str) -> Value {
    nodes_in(name, count, strategy, Layout::Folder)
}

fn nodes_in(name: &str, count: usize, strategy: &str, layout: Layout) -> Value {
    let mut nodes = serde_json::Map::new();
    nodes.insert(
        name.into(),
        json!({"id": name, "name": name, "type": "Steps", "phase": "Succeeded"}),
    );
    for n in 0..count {
        let id = format!("{name}-{n:010}");
        nodes.insert(
            id.clone(),
            json!({"id": id, "name": format!("{name}[0].step-{n}"), "type": "Pod",
                   "phase": "Succeeded", "templateName": "step",
                   "outputs": {"parameters": [{"name": "p", "value": "v"}], "exitCode": "0",
                       "artifacts": [{"name": "out", "path": "/tmp/out",
                       "s3": {"key": match layout {
                           Layout::Folder => format!("{name}/{id}/out.tgz"),
                           Layout::Outside => format!("out/{id}/out.tgz"),
                       }},
                       "artifactGC": {"strategy": strategy}}]}}),
        );
    }
    Value::Object(nodes)
}

fn workflow(name: &str, repo: &Value, nodes: Value, completed: bool) -> Value {
    workflow_in(NS, name, repo, nodes, completed)
}

fn workflow_in(ns: &str, name: &str, repo: &Value, nodes: Value, completed: bool) -> Value {
    let (phase, labels) = if completed {
        (
            "Succeeded",
            json!({"workflows.argoproj.io/completed": "true", "workflows.argoproj.io/phase": "Succeeded"}),
        )
    } else {
        ("Running", json!({"workflows.argoproj.io/phase": "Running"}))
    };
    json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"entrypoint": "main", "templates": [
            {"name": "main", "steps": [[{"name": "step", "template": "step"}]]},
            {"name": "step", "container": {"image": "alpine", "command": ["sh", "-c", "echo"]},
             "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out"}]}}]},
        "status": {"phase": phase, "startedAt": "2026-11-26T00:00:00Z",
            "artifactRepositoryRef": {"default": true, "artifactRepository": repo},
            "nodes": nodes}})
}

/// The objects (1 KiB each) of a workflow's Pod nodes, at their folder-layout keys.
fn pod_objects(name: &str, nodes: &Value) -> Vec<(String, Vec<u8>)> {
    nodes
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, node)| node["type"] == "Pod")
        .map(|(id, _)| (format!("{name}/{id}/out.tgz"), vec![b'x'; 1024]))
        .collect()
}

/// What Argo writes when a workflow completes: the label, the phase, `finishedAt`.
fn completion() -> Value {
    json!({"metadata": {"labels": {
            "workflows.argoproj.io/completed": "true", "workflows.argoproj.io/phase": "Succeeded"}},
        "status": {"phase": "Succeeded", "finishedAt": jiff::Timestamp::now().to_string()}})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Other tenants' workflows beside the measured ones: `slow` workflows in namespace `slow`
/// whose store answers each request after `slow_ms`, and `huge` workflows in namespace `huge`
/// with `huge_nodes` artifacts each; all complete as the measured ones start completing.
#[derive(Clone, Copy)]
struct Adversaries {
    slow: usize,
    slow_ms: u64,
    huge: usize,
    huge_nodes: usize,
    /// Huge node status as plain `status.nodes` (`--huge-plain`): larger than any API server
    /// admits (etcd takes 1.5 MiB), so by default it is what Argo writes for an oversized
    /// status, gzipped `status.compressedNodes`.
    huge_plain: bool,
}

async fn latency(
    workflows: usize,
    rate: usize,
    artifacts: usize,
    adversaries: Option<Adversaries>,
) {
    let kube = KubeApiServer::start().await;
    kube.set_request_log(false);
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("lat").await;
    kube.seed(secret(&s3));
    let repo = repo(&s3, &bucket);
    kube.seed(repositories(&repo));
    let mut others: Vec<(String, String)> = Vec::new();
    let mut proxy = None;
    if let Some(a) = adversaries {
        let slow = artgc_testkit::FaultProxy::start(&s3.endpoint).await;
        let mut slow_repo = repo.clone();
        slow_repo["s3"]["endpoint"] = json!(slow.endpoint);
        let direct = repo.clone();
        for (ns, r) in [("slow", &slow_repo), ("huge", &direct)] {
            kube.seed(secret_in(ns, &s3));
            kube.seed(repositories_in(ns, r));
        }
        let mut objects = Vec::new();
        for i in 0..a.slow {
            let name = format!("slow-{i:03}");
            let n = nodes(&name, artifacts, "OnWorkflowCompletion");
            objects.extend(pod_objects(&name, &n));
            kube.seed(workflow_in("slow", &name, &slow_repo, n, false));
            others.push(("slow".into(), name));
        }
        for i in 0..a.huge {
            // Its objects are absent: the pass still plans, checks and deletes every key.
            let name = format!("huge-{i:03}");
            let n = nodes(&name, a.huge_nodes, "OnWorkflowCompletion");
            let w = if a.huge_plain {
                workflow_in("huge", &name, &direct, n, false)
            } else {
                let json = serde_json::to_vec(&n).expect("nodes");
                let packed =
                    artgc_core::nodes::compress(&json, artgc_core::nodes::NodeEncoding::Gzip)
                        .expect("gzip");
                let mut w = workflow_in("huge", &name, &direct, Value::Null, false);
                w["status"]["compressedNodes"] = json!(packed);
                w
            };
            kube.seed(w);
            others.push(("huge".into(), name));
        }
        s3.put_many(&bucket, objects, 32).await;
        slow.set_latency(Duration::from_millis(a.slow_ms));
        println!(
            "adversaries: {} workflows x {artifacts} artifacts behind a store answering after {} ms; {} workflows x {} artifacts ({})",
            a.slow,
            a.slow_ms,
            a.huge,
            a.huge_nodes,
            if a.huge_plain {
                "plain status.nodes"
            } else {
                "gzipped status.compressedNodes"
            }
        );
        proxy = Some(slow);
    }
    let mut objects = Vec::new();
    for w in 0..workflows {
        let name = format!("lat-{w:05}");
        let n = nodes(&name, artifacts, "OnWorkflowCompletion");
        objects.extend(pod_objects(&name, &n));
        // Running: node outputs are already reported; the label and phase come at "completion".
        kube.seed(workflow(&name, &repo, n, false));
    }
    let total_objects = objects.len();
    s3.put_many(&bucket, objects, 32).await;
    println!(
        "latency: {workflows} workflows x {artifacts} artifacts ({total_objects} objects of 1 KiB), completing at {rate}/s"
    );

    let ctl = Controller::spawn(&kube);
    let ready = ctl.wait_ready(Duration::from_secs(60));
    println!("  controller ready in {:.2} s", ready.as_secs_f64());

    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let done: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let client = kube.client();
    let api: kube::Api<kube::api::DynamicObject> = artgc::kube_api::workflows(&client, Some(NS));
    let watch_done = done.clone();
    let watch = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = events.next().await {
            let objs = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                _ => continue,
            };
            for o in objs {
                let v = serde_json::to_value(&o).unwrap();
                let processed = v["status"]["artifactGCStatus"]["strategiesProcessed"]["OnWorkflowCompletion"]
                    == true;
                let all_deleted = v["status"]["nodes"].as_object().is_some_and(|n| {
                    n.values()
                        .filter(|n| n["type"] == "Pod")
                        .all(|n| n["outputs"]["artifacts"][0]["deleted"] == true)
                });
                if processed && all_deleted {
                    let name = v["metadata"]["name"].as_str().unwrap().to_string();
                    watch_done
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        }
    });

    let patch_api = artgc::kube_api::workflows(&client, Some(NS));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let t0 = tokio::time::Instant::now();
    let mut patches = Vec::new();
    // The others complete first, spread over the first second.
    for (i, (ns, name)) in others.iter().enumerate() {
        let api = artgc::kube_api::workflows(&client, Some(ns));
        let name = name.clone();
        let at = t0 + Duration::from_millis(1000 * i as u64 / others.len() as u64);
        patches.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&completion()))
                .await
                .expect("complete");
        }));
    }
    for w in 0..workflows {
        tokio::time::sleep_until(t0 + interval * w as u32).await;
        let name = format!("lat-{w:05}");
        let api = patch_api.clone();
        let started = started.clone();
        patches.push(tokio::spawn(async move {
            let patch = completion();
            started.lock().unwrap().insert(name.clone(), Instant::now());
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("complete");
        }));
    }
    for p in patches {
        p.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.lock().unwrap().len() < workflows && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.abort();
    let sum = ctl.metric("artgc_reconcile_duration_seconds_sum{result=\"ok\"}");
    let count = ctl.metric("artgc_reconcile_duration_seconds_count{result=\"ok\"}");
    if let (Some(sum), Some(count)) = (sum, count) {
        println!(
            "  reconciles: {count}, mean duration {:.0} ms",
            sum / count.max(1.0) * 1e3
        );
    }
    let (rss, peak) = ctl.rss();
    let cpu = ctl.cpu_secs();
    let remaining = s3
        .keys(&bucket)
        .await
        .iter()
        .filter(|k| k.starts_with("lat-"))
        .count();
    let code = ctl.stop();
    if let Some(p) = &proxy {
        let slow_requests = p.log().len();
        println!("  requests the slow store received meanwhile: {slow_requests}");
    }
    let started = started.lock().unwrap();
    let done = done.lock().unwrap();
    let mut lat: Vec<f64> = started
        .iter()
        .filter_map(|(n, t)| Some(done.get(n)?.duration_since(*t).as_secs_f64()))
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "  completed and recorded: {}/{workflows}; objects left in S3: {remaining}",
        lat.len()
    );
    println!(
        "  latency completed label -> deleted and recorded: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.9) * 1e3,
        percentile(&lat, 0.99) * 1e3,
        lat.last().copied().unwrap_or(f64::NAN) * 1e3
    );
    println!(
        "  controller RSS {rss:.1} MiB (peak {peak:.1} MiB), CPU {cpu:.1} s; exit on SIGTERM: {code:?}"
    );
    if lat.len() < workflows || remaining > 0 || code != Some(0) {
        eprintln!("error: not every workflow was collected and recorded, or no clean exit");
        std::process::exit(1);
    }
}

async fn scale(workflows: usize, node_count: usize, layout: Layout) {
    let kube = KubeApiServer::start().await;
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("scale").await;
    kube.seed(secret(&s3));
    let repo = repo(&s3, &bucket);
    kube.seed(repositories(&repo));
    let mut bytes = 0usize;
    for w in 0..workflows {
        let name = format!("big-{w:05}");
        let mut wf = workflow(
            &name,
            &repo,
            nodes_in(&name, node_count, "OnWorkflowDeletion", layout),
            true,
        );
        wf["metadata"]["finalizers"] = json!(["workflows.argoproj.io/artifact-gc"]);
        wf["status"]["artifactGCStatus"] =
            json!({"strategiesProcessed": {"OnWorkflowCompletion": true}});
        wf["status"]["finishedAt"] = json!("2026-11-26T00:00:00Z");
        bytes += serde_json::to_vec(&wf).unwrap().len();
        kube.seed(wf);
    }
    // One entry per pod folder (one artifact each) or per key: the same count.
    let entries = workflows * node_count;
    println!(
        "scale: {workflows} completed workflows x {node_count} Pod nodes ({:.0} MB of JSON), every artifact pending (indexed), keys {}: {entries} index entries",
        bytes as f64 / 1e6,
        match layout {
            Layout::Folder => "in each pod's own folder",
            Layout::Outside => "outside the workflows' folders",
        }
    );
    let ctl = Controller::spawn(&kube);
    let ready = ctl.wait_ready(Duration::from_secs(120));
    let (rss_ready, _) = ctl.rss();
    // Settle: the watch has been read; wait until nothing is queued.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(30) {
        if ctl.metric("artgc_workflows_pending") == Some(0.0)
            && ctl.metric("artgc_workflows_watched") == Some(workflows as f64)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let keys = ctl.metric("artgc_keys_indexed").unwrap_or(f64::NAN);
    let index_bytes = ctl.metric("artgc_key_index_bytes").unwrap_or(f64::NAN);
    if std::env::var_os("BENCH_RSS_TRACE").is_some() {
        for r in kube
            .requests()
            .iter()
            .filter(|r| r.path.contains("workflows"))
            .take(5)
        {
            println!("  {} {}?{} -> {}", r.method, r.path, r.query, r.status);
        }
    }
    let (rss, peak) = ctl.rss();
    let code = ctl.stop();
    println!("  time to ready: {:.2} s", ready.as_secs_f64());
    println!(
        "  controller RSS at ready {rss_ready:.1} MiB; settled {rss:.1} MiB; peak {peak:.1} MiB; keys indexed {keys}; index runs {:.1} MiB",
        index_bytes / 1048576.0
    );
    println!("  exit on SIGTERM: {code:?}");
    if keys != entries as f64 || code != Some(0) {
        eprintln!("error: not every workflow was indexed, or no clean exit");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn main() {
    let only = arg("--only").unwrap_or_default();
    if only.is_empty() || only == "latency" {
        latency(
            flag("--workflows", 1000),
            flag("--rate", 50),
            flag("--artifacts", 10),
            None,
        )
        .await;
    }
    if only.is_empty() || only == "adversarial" {
        latency(
            flag("--workflows", 1000),
            flag("--rate", 50),
            flag("--artifacts", 10),
            Some(Adversaries {
                slow: flag("--slow", 16),
                slow_ms: flag("--slow-ms", 2000) as u64,
                huge: flag("--huge", 4),
                huge_nodes: flag("--huge-nodes", 20_000),
                huge_plain: std::env::args().any(|a| a == "--huge-plain"),
            }),
        )
        .await;
    }
    if only.is_empty() || only == "scale" {
        scale(
            flag("--scale-workflows", 10_000),
            flag("--nodes", 20),
            layout(),
        )
        .await;
    }
}
