//! `artgc demo`: the real controller against an embedded S3 store (s3s-fs over a temporary
//! folder) and the project's Kubernetes API test server, with a handful of Argo Workflows that
//! complete and get deleted while it watches. Nothing outside the process, nothing left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use artgc_testkit::{KubeApiServer, S3Server};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::controller::{self, ControllerConfig};
use artgc_core::nodes::{NodeEncoding, compress};
use artgc_core::units::human_bytes;

const NS: &str = "argo-demo";
const ALL_STRATEGIES: [&str; 2] = ["OnWorkflowCompletion", "OnWorkflowDeletion"];

/// Options of `artgc demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep serving /metrics (and the test API server) after the scenario, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// Address of the controller's admin server.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_addr: std::net::SocketAddr,
    /// Pause this long after the controller starts and after each completion, deletion and
    /// step, so a Prometheus scraping the admin server (and a dashboard) sees the work happen.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = artgc_core::units::parse_duration)]
    pub pace: Duration,
}

fn art(name: &str, key: &str, strategy: Option<&str>) -> Value {
    let mut a = json!({"name": name, "path": format!("/tmp/{name}"), "s3": {"key": key}});
    if let Some(s) = strategy {
        a["artifactGC"] = json!({"strategy": s});
    }
    a
}

fn pod(id: &str, template: &str, artifacts: Vec<Value>) -> (String, Value) {
    (
        id.to_string(),
        json!({"id": id, "name": id, "displayName": template, "type": "Pod", "phase": "Succeeded",
               "templateName": template, "outputs": {"artifacts": artifacts, "exitCode": "0"}}),
    )
}

fn workflow(name: &str, kind: &str, strategy: Option<&str>, nodes: Vec<(String, Value)>) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(
        name.into(),
        json!({"id": name, "name": name, "type": kind, "phase": "Running"}),
    );
    // Each template declares its outputs as Argo's users write them (no keys: those come from
    // the repository's keyFormat), with their GC strategies: what artgc's finalizer rule reads.
    let templates: Vec<Value> = nodes
        .iter()
        .map(|(_, n)| {
            let outputs: Vec<Value> = n["outputs"]["artifacts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["name"] != "main-logs")
                .map(|a| {
                    let mut o = json!({"name": a["name"], "path": a["path"]});
                    if !a["artifactGC"].is_null() {
                        o["artifactGC"] = a["artifactGC"].clone();
                    }
                    o
                })
                .collect();
            json!({"name": n["templateName"], "container": {"image": "alpine:3"},
                   "outputs": {"artifacts": outputs}})
        })
        .collect();
    for (id, n) in nodes {
        map.insert(id, n);
    }
    let mut wf = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"workflows.argoproj.io/phase": "Running"}},
        "spec": {"entrypoint": "main", "templates": templates},
        "status": {"phase": "Running", "startedAt": jiff::Timestamp::now().to_string(),
                   "nodes": Value::Object(map)},
    });
    if let Some(s) = strategy {
        wf["spec"]["artifactGC"] = json!({"strategy": s});
    }
    wf
}

struct Scenario {
    /// Workflows, and the objects each artifact key stands for (key -> bytes).
    workflows: Vec<Value>,
    objects: BTreeMap<String, usize>,
}

fn scenario(repo: &Value) -> Scenario {
    let mut objects = BTreeMap::new();
    let mut file = |key: &str, bytes: usize| {
        objects.insert(key.to_string(), bytes);
    };
    // Steps, workflow-level OnWorkflowCompletion: tarballs, a directory (archive: none) and
    // the archived logs, which follow the workflow's strategy.
    let mut etl = workflow(
        "etl-steps-x7k2p",
        "Steps",
        Some("OnWorkflowCompletion"),
        vec![
            pod(
                "etl-steps-x7k2p-1",
                "extract",
                vec![
                    art("raw", "etl-steps-x7k2p/etl-steps-x7k2p-1/raw.tgz", None),
                    art(
                        "main-logs",
                        "etl-steps-x7k2p/etl-steps-x7k2p-1/main.log",
                        None,
                    ),
                ],
            ),
            pod(
                "etl-steps-x7k2p-2",
                "transform",
                vec![art(
                    "parquet",
                    "etl-steps-x7k2p/etl-steps-x7k2p-2/parquet/",
                    None,
                )],
            ),
        ],
    );
    file("etl-steps-x7k2p/etl-steps-x7k2p-1/raw.tgz", 900_000);
    file("etl-steps-x7k2p/etl-steps-x7k2p-1/main.log", 12_000);
    for p in 0..6 {
        file(
            &format!("etl-steps-x7k2p/etl-steps-x7k2p-2/parquet/part-{p:04}.parquet"),
            400_000,
        );
    }
    etl["status"]["artifactRepositoryRef"] =
        json!({"configMap": "artifact-repositories", "key": "default", "artifactRepository": repo});

    // DAG, artifacts with their own strategies: one for deletion time, one Never.
    let mut train = workflow(
        "train-dag-m4q9z",
        "DAG",
        None,
        vec![
            pod(
                "train-dag-m4q9z-11",
                "fit",
                vec![
                    // A full location of its own (endpoint, bucket, key, credentials).
                    {
                        let mut a = art(
                            "checkpoint",
                            "train-dag-m4q9z/train-dag-m4q9z-11/checkpoint.tgz",
                            Some("OnWorkflowDeletion"),
                        );
                        let mut loc = repo["s3"].clone();
                        loc["key"] = a["s3"]["key"].clone();
                        a["s3"] = loc;
                        a
                    },
                    art("model", "models/churn/v42/model.tgz", Some("Never")),
                ],
            ),
            pod(
                "train-dag-m4q9z-12",
                "evaluate",
                vec![art(
                    "metrics",
                    "train-dag-m4q9z/train-dag-m4q9z-12/metrics.tgz",
                    Some("OnWorkflowCompletion"),
                )],
            ),
        ],
    );
    file(
        "train-dag-m4q9z/train-dag-m4q9z-11/checkpoint.tgz",
        2_500_000,
    );
    file("models/churn/v42/model.tgz", 1_800_000);
    file("train-dag-m4q9z/train-dag-m4q9z-12/metrics.tgz", 8_000);
    train["status"]["artifactRepositoryRef"] =
        json!({"configMap": "artifact-repositories", "key": "default", "artifactRepository": repo});

    // Big status: nodes stored compressed (zstd), as Argo does past 1 MiB.
    let mut report = workflow(
        "report-c9w2d",
        "Steps",
        Some("OnWorkflowCompletion"),
        vec![pod(
            "report-c9w2d-1",
            "render",
            vec![art(
                "pdf",
                "report-c9w2d/report-c9w2d-1/report.pdf.tgz",
                None,
            )],
        )],
    );
    file("report-c9w2d/report-c9w2d-1/report.pdf.tgz", 300_000);
    let nodes = report["status"]["nodes"].take();
    let packed = compress(
        &serde_json::to_vec(&nodes).unwrap_or_default(),
        NodeEncoding::Zstd,
    )
    .unwrap_or_default();
    report["status"].as_object_mut().map(|s| s.remove("nodes"));
    report["status"]["compressedNodes"] = json!(packed);
    report["status"]["artifactRepositoryRef"] =
        json!({"configMap": "artifact-repositories", "key": "default", "artifactRepository": repo});

    // Two runs of a cron workflow writing the same fixed key: the next run still needs it.
    let publish = |name: &str| {
        let mut w = workflow(
            name,
            "Steps",
            Some("OnWorkflowCompletion"),
            vec![pod(
                &format!("{name}-1"),
                "publish",
                vec![art("latest", "reports/latest.csv", None)],
            )],
        );
        w["spec"]["templates"][0]["outputs"] = json!({"artifacts": [{"name": "latest", "path": "/tmp/latest", "s3": {"key": "reports/latest.csv"}}]});
        w["status"]["artifactRepositoryRef"] = json!({"configMap": "artifact-repositories",
            "key": "default", "artifactRepository": repo});
        w
    };
    file("reports/latest.csv", 50_000);
    Scenario {
        workflows: vec![
            etl,
            train,
            report,
            publish("nightly-publish-29381"),
            publish("nightly-publish-29382"),
        ],
        objects,
    }
}

/// One line on stdout, or above the progress bar on a terminal.
struct View {
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
}

impl View {
    fn new(steps: u64) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(steps);
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        Self {
            bar,
            start: Instant::now(),
        }
    }

    fn line(&self, text: &str) {
        let text = format!("[{:5.2}s] {text}", self.start.elapsed().as_secs_f64());
        match &self.bar {
            Some(b) => b.println(text),
            None => println!("{text}"),
        }
    }

    fn step(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            b.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What was shown so far: Events (by name and series count), and the seeded workflows, of
/// which those gone.
#[derive(Default)]
struct Shown {
    events: BTreeSet<String>,
    workflows: BTreeSet<String>,
    gone: BTreeSet<String>,
}

/// Prints Events and disappearances not shown yet.
fn show_new(kube: &KubeApiServer, shown: &mut Shown, view: &View) {
    let mut events = kube.list("events.k8s.io/v1", "Event");
    events.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .parse::<u64>()
            .unwrap_or(0)
    });
    for e in events {
        let id = format!(
            "{}#{}",
            e["metadata"]["name"].as_str().unwrap_or(""),
            e["series"]["count"].as_i64().unwrap_or(1)
        );
        if shown.events.insert(id) {
            view.line(&format!(
                "{:<7} {:<24} {}: {}",
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["regarding"]["name"].as_str().unwrap_or(""),
                e["note"].as_str().unwrap_or("")
            ));
        }
    }
    let present: BTreeSet<String> = kube
        .list("argoproj.io/v1alpha1", "Workflow")
        .iter()
        .filter_map(|w| w["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    for name in &shown.workflows {
        if !present.contains(name) && shown.gone.insert(name.clone()) {
            view.line(&format!(
                "released  {name}: finalizer removed, Workflow deleted"
            ));
        }
    }
}

async fn wait_until(
    what: &str,
    kube: &KubeApiServer,
    shown: &mut Shown,
    view: &View,
    mut done: impl FnMut(&KubeApiServer) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        show_new(kube, shown, view);
        if done(kube) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn get(kube: &KubeApiServer, name: &str) -> Option<Value> {
    kube.get("argoproj.io/v1alpha1", "Workflow", Some(NS), name)
}

fn processed(kube: &KubeApiServer, name: &str, strategy: &str) -> bool {
    get(kube, name)
        .is_some_and(|w| w["status"]["artifactGCStatus"]["strategiesProcessed"][strategy] == true)
}

/// Runs the demo; returns the exit code.
pub async fn run(args: &DemoArgs) -> u8 {
    match run_inner(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn run_inner(args: &DemoArgs) -> Result<(), String> {
    let view = View::new(6);
    let s3 = S3Server::start_local().await;
    let bucket = "argo-artifacts".to_string();
    s3.client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .map_err(|e| format!("creating the demo bucket: {e}"))?;
    let kube = KubeApiServer::start().await;
    view.line(&format!(
        "embedded S3 (s3s-fs) at {}, Kubernetes API test server at {}",
        s3.endpoint, kube.url
    ));

    let repo = json!({"s3": {"endpoint": s3.endpoint.trim_start_matches("http://"), "bucket": bucket,
        "insecure": true, "region": s3.region,
        "accessKeySecret": {"name": "artifact-s3", "key": "accesskey"},
        "secretKeySecret": {"name": "artifact-s3", "key": "secretkey"}}});
    kube.seed(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "artifact-s3", "namespace": NS},
        "stringData": {"accesskey": s3.access_key, "secretkey": s3.secret_key}}));
    let repo_yaml = serde_json::to_string(&repo).unwrap_or_default();
    kube.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "artifact-repositories", "namespace": NS,
            "annotations": {"workflows.argoproj.io/default-artifact-repository": "default"}},
        "data": {"default": repo_yaml}}));
    let sc = scenario(&repo);
    let mut total = 0;
    for (key, bytes) in &sc.objects {
        s3.put(&bucket, key, vec![b'a'; *bytes]).await;
        total += bytes;
    }
    let mut shown = Shown::default();
    for w in &sc.workflows {
        kube.seed(w.clone());
        shown
            .workflows
            .insert(w["metadata"]["name"].as_str().unwrap_or("").to_string());
    }
    view.line(&format!(
        "seeded namespace {NS}: {} running Workflows, {} S3 objects ({})",
        sc.workflows.len(),
        sc.objects.len(),
        human_bytes(total as u64)
    ));
    view.step("seeded");

    let config = ControllerConfig {
        namespaces: vec![NS.into()],
        admin_addr: args.admin_addr,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        // The embedded S3 store listens on loopback.
        policy: std::sync::Arc::new(artgc_core::policy::Policy {
            allow_loopback: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let ctl = controller::start(kube.client(), config)
        .await
        .map_err(|e| e.to_string())?;
    let metrics_url = format!("http://{}/metrics", ctl.admin_addr);
    view.line(&format!("controller started; metrics at {metrics_url}"));
    let pace = async || tokio::time::sleep(args.pace).await;
    pace().await;
    let names: Vec<String> = sc
        .workflows
        .iter()
        .filter_map(|w| w["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    {
        let names = names.clone();
        wait_until(
            "finalizers on running workflows",
            &kube,
            &mut shown,
            &view,
            |k| {
                names.iter().all(|n| {
                    get(k, n).is_some_and(|w| {
                        w["metadata"]["finalizers"]
                            .as_array()
                            .is_some_and(|f| !f.is_empty())
                    })
                })
            },
        )
        .await?;
    }
    view.line("finalizers added to the running workflows that will need GC");
    view.step("finalizers");
    pace().await;

    let api = crate::kube_api::workflows(&kube.client(), Some(NS));
    let complete = |name: String| {
        let api = api.clone();
        async move {
            let now = jiff::Timestamp::now().to_string();
            let patch = json!({"metadata": {"labels": {"workflows.argoproj.io/completed": "true",
                                                        "workflows.argoproj.io/phase": "Succeeded"}},
                               "status": {"phase": "Succeeded", "finishedAt": now}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(|e| format!("completing {name}: {e}"))
        }
    };
    // All but the newest nightly run complete.
    let finishing: Vec<String> = names
        .iter()
        .filter(|n| n.as_str() != "nightly-publish-29382")
        .cloned()
        .collect();
    for n in &finishing {
        view.line(&format!("complete  {n}"));
        complete(n.clone()).await?;
        pace().await;
    }
    {
        let finishing = finishing.clone();
        wait_until("completion passes", &kube, &mut shown, &view, |k| {
            finishing.iter().all(|n| processed(k, n, ALL_STRATEGIES[0]))
        })
        .await?;
    }
    view.line("completion passes done; reports/latest.csv kept: nightly-publish-29382 still runs and writes it");
    view.step("completed");
    pace().await;

    for n in ["train-dag-m4q9z", "etl-steps-x7k2p"] {
        view.line(&format!("delete    {n}"));
        api.delete(n, &DeleteParams::default())
            .await
            .map_err(|e| format!("deleting {n}: {e}"))?;
        pace().await;
    }
    wait_until("deletion passes", &kube, &mut shown, &view, |k| {
        get(k, "train-dag-m4q9z").is_none() && get(k, "etl-steps-x7k2p").is_none()
    })
    .await?;
    view.step("deleted");
    pace().await;

    view.line("complete  nightly-publish-29382 (the last user of reports/latest.csv)");
    complete("nightly-publish-29382".into()).await?;
    wait_until("last nightly run", &kube, &mut shown, &view, |k| {
        processed(k, "nightly-publish-29382", ALL_STRATEGIES[0])
    })
    .await?;
    view.step("shared key");
    // Let the last Events land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    show_new(&kube, &mut shown, &view);
    view.finish();

    let metrics = ctl.admin_state.metrics.encode();
    let sum = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let left = s3.keys(&bucket).await;
    println!();
    println!("summary");
    println!(
        "  deleted   {} artifacts, {} objects, {} reclaimed",
        sum("artgc_artifacts_deleted_total"),
        sum("artgc_objects_deleted_total"),
        human_bytes(sum("artgc_reclaimed_bytes_total"))
    );
    for reason in ["never", "shared", "bucket_root"] {
        let n = sum(&format!(
            "artgc_artifacts_kept_total{{reason=\"{reason}\"}}"
        ));
        if n > 0 {
            println!("  kept      {n} artifact(s): {reason}");
        }
    }
    println!(
        "  failed    {} artifact(s); finalizers released: {}",
        sum("artgc_artifacts_failed_total"),
        sum("artgc_finalizers_removed_total")
    );
    println!("  left in S3: {}", left.join(", "));
    println!("  metrics: {metrics_url}");

    if args.serve {
        println!("serving until Ctrl-C (test API server at {})", kube.url);
        let _ = tokio::signal::ctrl_c().await;
    }
    ctl.shutdown().await;
    drop(kube);
    drop(s3);
    Ok(())
}
