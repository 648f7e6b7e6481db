//! artgc beside Argo's own workflow-controller (v3.7.18, built from its Go module by
//! `.ci/argo.sh`) on the real kube-apiserver (`.ci/kube.sh`): Argo writes the Workflows, artgc
//! collects them.
//!
//! There is no kubelet. [`Kubelet`] plays it and Argo's executor, as little as Argo needs:
//! - for each pod Argo creates, it reads the template Argo hands the executor (`ARGO_TEMPLATE`
//!   on the `init` container);
//! - it uploads each output artifact where the executor would: its own key, else the
//!   template's `archiveLocation` key joined with `<name>.tgz` (or the path's base name with
//!   `archive: none`), and `main.log` when logs are archived;
//! - it writes the `WorkflowTaskResult` the wait container writes (named after the node, its
//!   outputs, `report-outputs-completed: "true"`);
//! - then it moves the pod to Succeeded, both containers terminated; or to Failed (`main`
//!   exits 1, outputs still saved, as Argo's wait container saves them) while the attempt
//!   number in the node's name (`...(k)`) is below the pod's `artgc.test/fail-attempts`
//!   annotation (set through the template's `metadata`);
//! - for Argo's own artifact GC pods (`workflows.argoproj.io/component: artifact-gc`), it does
//!   what `argoexec artifact delete` does: deletes each artifact of the pod's
//!   `WorkflowArtifactGCTask`s (one DeleteObject for its key, a listing only for a key ending
//!   in `/`), writes the task's `status.artifactResultsByNode`, and moves the pod to Succeeded.
//!
//! Needs `ARTGC_TEST_KUBECONFIG` and `ARTGC_ARGO_CONTROLLER`/`ARTGC_ARGO_CRDS`
//! (`eval "$(.ci/argo.sh)"`): without them a test is ignored (not run), and fails when asked for (`--include-ignored`).

mod common;
#[path = "../core/tests/support/mod.rs"]
mod support;
use support::{finalizers, processed};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use artgc::controller::{ControllerConfig, ControllerHandle};
use artgc_testkit::{Namespace, RealKube, S3Server, needed_var};
use common::{metrics, quick_config, sample, until};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

const FINALIZER: &str = "workflows.argoproj.io/artifact-gc";

/// The real API server, and Argo's controller running on it with its own GC off (artgc owns
/// Argo's finalizer); without them the (ignored, asked-for) test fails.
async fn argo_with_its_gc_off() -> Option<Argo> {
    argo(&[("ARGO_ARTIFACT_GC_ENABLED", "false")]).await
}

/// As [`argo_with_its_gc_off`], with `env` for Argo's controller instead.
async fn argo(env: &[(&str, &str)]) -> Option<Argo> {
    let kube = RealKube::from_env().await?;
    let how = "Argo's controller: eval \"$(.ci/argo.sh)\"";
    let bin = needed_var("ARTGC_ARGO_CONTROLLER", how)?;
    let crds = needed_var("ARTGC_ARGO_CRDS", how)?;
    Some(Argo::start(&kube, Path::new(&bin), Path::new(&crds), env).await)
}

/// A namespace on the real server with an Argo controller of its own, its artifact repository
/// on `s3`, and the kubelet double.
struct Argo {
    space: Namespace,
    s3: Arc<S3Server>,
    bucket: String,
    process: std::process::Child,
    log: PathBuf,
    kubelet: tokio::task::JoinHandle<()>,
    /// What the kubelet double could not do.
    kubelet_errors: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Argo {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        self.kubelet.abort();
    }
}

impl Argo {
    /// `env`: extra environment for Argo's controller.
    async fn start(kube: &RealKube, bin: &Path, crds: &Path, env: &[(&str, &str)]) -> Self {
        install_crds(kube, crds).await;
        let space = kube.namespace("argo").await;
        let s3 = Arc::new(S3Server::start().await);
        let bucket = s3.bucket("argo").await;
        space
            .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": "default"}}))
            .await;
        space
            .create(support::secret(
                &space.ns,
                "s3-creds",
                &s3.access_key,
                &s3.secret_key,
            ))
            .await;
        let endpoint = s3.endpoint.trim_start_matches("http://").to_string();
        let repository = json!({
            "archiveLogs": true,
            "s3": {
                "bucket": bucket, "endpoint": endpoint, "insecure": true, "region": s3.region,
                "keyFormat": "runs/{{workflow.name}}/{{pod.name}}",
                "accessKeySecret": {"name": "s3-creds", "key": "accesskey"},
                "secretKeySecret": {"name": "s3-creds", "key": "secretkey"},
            },
        });
        space
            .create(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "workflow-controller-configmap"},
                // Argo folds each key into one YAML document: a value is read as a block only
                // when it holds a newline.
                "data": {
                    "artifactRepository": format!("{}\n", serde_json::to_string(&repository).unwrap()),
                    "metricsConfig": "enabled: false\n",
                    "telemetryConfig": "enabled: false\n",
                },
            }))
            .await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("workflow-controller.log");
        let kubeconfig = std::env::var("ARTGC_TEST_KUBECONFIG").unwrap();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--kubeconfig", &kubeconfig, "--namespace", &space.ns])
            .args(["--namespaced", "--managed-namespace", &space.ns])
            .args(["--executor-image", "argoexec:test"])
            .env("LEADER_ELECTION_DISABLE", "true")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = cmd.spawn().expect("workflow-controller starts");
        let kubelet_errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let double = Kubelet::new(space.clone(), &s3, &bucket, kubelet_errors.clone());
        let kubelet = tokio::spawn(double.run());
        Self {
            space,
            s3,
            bucket,
            process,
            log,
            kubelet,
            kubelet_errors,
            _dir: dir,
        }
    }

    async fn submit(&self, wf: Value) {
        self.space.create(wf).await;
    }

    /// Deletes Workflow `name` and waits until it is gone (every finalizer released).
    async fn delete_until_gone(&self, name: &str) {
        self.delete(name).await;
        self.until("deleted", async || self.workflow(name).await.is_none())
            .await;
    }

    async fn workflow(&self, name: &str) -> Option<Value> {
        self.space
            .get("argoproj.io/v1alpha1", "Workflow", name)
            .await
    }

    async fn until(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while std::time::Instant::now() < deadline {
            let errors = self.kubelet_errors.lock().unwrap().clone();
            assert!(errors.is_empty(), "kubelet double: {errors:?}");
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "timed out waiting for: {what}\nArgo's log, last lines first:\n{}",
            tail.join("\n")
        );
    }

    /// Deletes Workflow `name`, as `kubectl delete` does.
    async fn delete(&self, name: &str) {
        artgc::kube_api::workflows(&self.space.client, Some(&self.space.ns))
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }

    async fn keys(&self) -> Vec<String> {
        self.s3.keys(&self.bucket).await
    }

    /// Argo's controller's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// artgc, acting as the admin, watching this namespace only.
    async fn artgc(&self, tweak: impl FnOnce(&mut ControllerConfig)) -> ControllerHandle {
        let mut config = ControllerConfig {
            namespaces: vec![self.space.ns.clone()],
            // Argo's controller runs namespaced here: its ConfigMap (and so its repository, the
            // one its workflows use) is in this namespace, not `argo`.
            argo_config_map: artgc_core::cluster::ArgoConfigMapRef {
                namespace: self.space.ns.clone(),
                name: "workflow-controller-configmap".into(),
            },
            ..quick_config()
        };
        tweak(&mut config);
        artgc::controller::start(self.space.client.clone(), config)
            .await
            .expect("artgc starts")
    }
}

/// Argo's CRDs from its module, except the Workflow's (`.ci/kube.sh` installed that), applied
/// once per server and waited for.
async fn install_crds(kube: &RealKube, crds: &Path) {
    let admin = Namespace {
        client: kube.admin(),
        ns: "default".into(),
    };
    for entry in std::fs::read_dir(crds).expect("CRD folder") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("argoproj.io_") || name == "argoproj.io_workflows.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: Value = serde_saphyr::from_str(&text).expect("CRD YAML");
        admin.apply(crd).await;
    }
    let probe = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult",
                       "metadata": {}});
    until("Argo's CRDs are served", async || {
        admin.api(&probe).list(&Default::default()).await.is_ok()
    })
    .await;
}

/// The kubelet and executor double (module docs).
struct Kubelet {
    space: Namespace,
    s3: Arc<S3Server>,
    bucket: String,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Kubelet {
    fn new(
        space: Namespace,
        s3: &Arc<S3Server>,
        bucket: &str,
        errors: Arc<std::sync::Mutex<Vec<String>>>,
    ) -> Self {
        Self {
            space,
            s3: s3.clone(),
            bucket: bucket.to_string(),
            errors,
        }
    }

    async fn run(self) {
        let pods: Api<Pod> = Api::namespaced(self.space.client.clone(), &self.space.ns);
        let mut seen = HashSet::new();
        let mut events = watcher(pods, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(pod) = event else { continue };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) || !seen.insert(name) {
                continue;
            }
            let pod = serde_json::to_value(&pod).unwrap();
            let gc = pod["metadata"]["labels"]["workflows.argoproj.io/component"] == "artifact-gc";
            let done = match gc {
                true => self.run_gc_pod(&pod).await,
                false => self.run_pod(&pod).await,
            };
            if let Err(e) = done {
                let name = &pod["metadata"]["name"];
                self.errors.lock().unwrap().push(format!("pod {name}: {e}"));
            }
        }
    }

    async fn run_pod(&self, pod: &Value) -> Result<(), String> {
        let meta = &pod["metadata"];
        let pod_name = meta["name"].as_str().ok_or("no name")?;
        let node_id = meta["annotations"]["workflows.argoproj.io/node-id"]
            .as_str()
            .ok_or("no node-id")?;
        let workflow = meta["labels"]["workflows.argoproj.io/workflow"]
            .as_str()
            .ok_or("no workflow label")?;
        let owner = meta["ownerReferences"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["kind"] == "Workflow"))
            .ok_or("no owner")?;
        let template: Value = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .chain(pod["spec"]["containers"].as_array())
            .flatten()
            .flat_map(|c| c["env"].as_array().into_iter().flatten())
            .find(|e| e["name"] == "ARGO_TEMPLATE")
            .and_then(|e| e["value"].as_str())
            .map(|t| serde_json::from_str(t).expect("ARGO_TEMPLATE"))
            .ok_or("no ARGO_TEMPLATE")?;
        // Retries: the attempt is the last `(k)` of the node's name.
        let attempt: u64 = meta["annotations"]["workflows.argoproj.io/node-name"]
            .as_str()
            .and_then(|n| n.strip_suffix(')'))
            .and_then(|n| n.rsplit_once('('))
            .and_then(|(_, k)| k.parse().ok())
            .unwrap_or(0);
        let fail_attempts: u64 = meta["annotations"]["artgc.test/fail-attempts"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let fails = attempt < fail_attempts;
        let archive_key = template["archiveLocation"]["s3"]["key"]
            .as_str()
            .map(str::to_string);
        let mut artifacts = Vec::new();
        for art in template["outputs"]["artifacts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let mut out = art.clone();
            let name = art["name"].as_str().unwrap_or_default();
            let unarchived = art["archive"]["none"].is_object();
            let key = match art["s3"]["key"].as_str() {
                Some(k) => k.to_string(),
                None => {
                    let base = archive_key.clone().ok_or("no archive location")?;
                    let file = match unarchived {
                        true => art["path"]
                            .as_str()
                            .and_then(|p| p.trim_end_matches('/').rsplit('/').next())
                            .unwrap_or(name)
                            .to_string(),
                        false => format!("{name}.tgz"),
                    };
                    let key = format!("{base}/{file}");
                    out["s3"] = json!({"key": key});
                    key
                }
            };
            // A directory (by convention here: a path ending in `/`) uploads its files.
            if art["path"].as_str().is_some_and(|p| p.ends_with('/')) {
                for f in ["a.txt", "b.txt"] {
                    self.put(&format!("{key}/{f}")).await;
                }
            } else {
                self.put(&key).await;
            }
            artifacts.push(out);
        }
        if template["archiveLocation"]["archiveLogs"] == true {
            let base = archive_key.ok_or("no archive location for logs")?;
            let key = format!("{base}/main.log");
            self.put(&key).await;
            artifacts.push(json!({"name": "main-logs", "s3": {"key": key}}));
        }
        let results = self.space.api(&json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult", "metadata": {}}));
        let result = json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult",
            "metadata": {
                "name": node_id, "namespace": self.space.ns,
                "labels": {"workflows.argoproj.io/workflow": workflow,
                           "workflows.argoproj.io/report-outputs-completed": "true"},
                "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                     "name": workflow, "uid": owner["uid"]}],
            },
            "outputs": {"artifacts": artifacts, "exitCode": if fails { "1" } else { "0" }},
        });
        results
            .create(
                &PostParams::default(),
                &serde_json::from_value(result).unwrap(),
            )
            .await
            .map_err(|e| format!("task result: {e}"))?;
        self.finish(pod_name, !fails, &["main", "wait"]).await
    }

    /// Ends a pod: its containers terminated, `main` with exit code 0 or 1.
    async fn finish(&self, pod: &str, succeeded: bool, containers: &[&str]) -> Result<(), String> {
        let now = jiff::Timestamp::now().to_string();
        let terminated = |name: &str| {
            let (code, reason) = match succeeded || name != "main" {
                true => (0, "Completed"),
                false => (1, "Error"),
            };
            json!({"name": name, "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                   "state": {"terminated": {"exitCode": code, "reason": reason,
                                            "startedAt": now, "finishedAt": now}}})
        };
        let phase = if succeeded { "Succeeded" } else { "Failed" };
        let statuses: Vec<Value> = containers.iter().map(|c| terminated(c)).collect();
        let status = json!({"status": {"phase": phase, "startTime": now,
            "containerStatuses": statuses}});
        let pods: Api<Pod> = Api::namespaced(self.space.client.clone(), &self.space.ns);
        pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| format!("pod status: {e}"))?;
        Ok(())
    }

    /// Argo's artifact GC pod, as `argoexec artifact delete` runs it.
    async fn run_gc_pod(&self, pod: &Value) -> Result<(), String> {
        let pod_name = pod["metadata"]["name"].as_str().ok_or("no name")?;
        let hash = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["env"].as_array().into_iter().flatten())
            .find(|e| e["name"] == "ARGO_ARTIFACT_POD_NAME")
            .and_then(|e| e["value"].as_str())
            .ok_or("no ARGO_ARTIFACT_POD_NAME")?;
        let tasks = self.space.api(&json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowArtifactGCTask",
            "metadata": {}}));
        let selector = format!("workflows.argoproj.io/artifact-gc-pod={hash}");
        let list = tasks
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("GC tasks: {e}"))?;
        for task in list {
            let task = serde_json::to_value(&task).unwrap();
            let mut by_node = serde_json::Map::new();
            let nodes = task["spec"]["artifactsByNode"].as_object().cloned();
            for (node, spec) in nodes.into_iter().flatten() {
                let mut results = serde_json::Map::new();
                let artifacts = spec["artifacts"].as_object().cloned();
                for (name, art) in artifacts.into_iter().flatten() {
                    let key = art["s3"]["key"].as_str().ok_or("GC task: no key")?;
                    self.delete(key).await;
                    results.insert(name.clone(), json!({"name": name, "success": true}));
                }
                by_node.insert(node, json!({"artifactResults": results}));
            }
            let name = task["metadata"]["name"].as_str().unwrap_or_default();
            tasks
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"artifactResultsByNode": by_node}})),
                )
                .await
                .map_err(|e| format!("GC task status: {e}"))?;
        }
        self.finish(pod_name, true, &["main"]).await
    }

    /// As Argo's S3 driver deletes: one key, or everything under a key ending in `/`.
    async fn delete(&self, key: &str) {
        let keys = match key.ends_with('/') {
            true => self
                .s3
                .keys(&self.bucket)
                .await
                .into_iter()
                .filter(|k| k.starts_with(key))
                .collect(),
            false => vec![key.to_string()],
        };
        for k in keys {
            self.s3.delete(&self.bucket, &k).await;
        }
    }

    async fn put(&self, key: &str) {
        self.s3
            .put(&self.bucket, key, format!("output at {key}"))
            .await;
    }
}

/// Steps, key-only artifacts under the repository's `keyFormat`, a directory artifact with
/// `archive: none`, archived logs, and a strategy each: Argo's GC off, artgc owning Argo's
/// finalizer. After completion only the completion artifacts are gone; after `delete` the
/// deletion ones too, the `Never` one stays, and the Workflow is gone.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_with_every_strategy_argo_gc_off_artgc_owning_the_finalizer() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    let produce = json!({
        "name": "produce",
        "container": {"image": "busybox", "command": ["true"]},
        "outputs": {"artifacts": [
            {"name": "done", "path": "/tmp/done", "artifactGC": {"strategy": "OnWorkflowCompletion"}},
            {"name": "later", "path": "/tmp/later"},
            {"name": "keep", "path": "/tmp/keep", "artifactGC": {"strategy": "Never"}},
            {"name": "dir", "path": "/tmp/dir/", "archive": {"none": {}}},
        ]},
    });
    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "steps"},
        "spec": {
            "entrypoint": "main",
            "artifactGC": {"strategy": "OnWorkflowDeletion"},
            "templates": [
                {"name": "main", "steps": [[{"name": "one", "template": "produce"}],
                                           [{"name": "two", "template": "produce"}]]},
                produce,
            ],
        },
    }))
    .await;
    argo.until(
        "Argo completes it and artgc records the completion pass",
        async || {
            argo.workflow("steps").await.is_some_and(|w| {
                w["status"]["phase"] == "Succeeded" && processed(&w, "OnWorkflowCompletion")
            })
        },
    )
    .await;
    let w = argo.workflow("steps").await.unwrap();
    assert_eq!(finalizers(&w), [FINALIZER], "deletion work remains");
    let keys = argo.keys().await;
    // Two pods, each: later, keep, dir/a.txt, dir/b.txt, main.log (done is gone).
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("runs/steps/")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.ends_with("/done.tgz")), "{keys:?}");

    argo.delete("steps").await;
    argo.until("the deleted Workflow is gone", async || {
        argo.workflow("steps").await.is_none()
    })
    .await;
    let keys = argo.keys().await;
    assert_eq!(keys.len(), 2, "only the two Never artifacts stay: {keys:?}");
    assert!(keys.iter().all(|k| k.ends_with("/keep.tgz")), "{keys:?}");
    ctl.shutdown().await;
}

/// A DAG run from a WorkflowTemplate (`workflowTemplateRef`): the strategy is the template's,
/// which Argo stores in `status.storedWorkflowTemplateSpec`. Completion collects it all and
/// releases the finalizer; deleting is then immediate.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_from_a_workflow_template_is_collected_by_the_templates_strategy() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    let produce = json!({
        "name": "produce",
        "container": {"image": "busybox", "command": ["true"]},
        "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out"}]},
    });
    argo.space
        .create(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": "diamond"},
            "spec": {
                "entrypoint": "main",
                "artifactGC": {"strategy": "OnWorkflowCompletion"},
                "templates": [
                    {"name": "main", "dag": {"tasks": [
                        {"name": "a", "template": "produce"},
                        {"name": "b", "template": "produce", "dependencies": ["a"]},
                        {"name": "c", "template": "produce", "dependencies": ["a"]},
                    ]}},
                    produce,
                ],
            },
        }))
        .await;
    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "from-template"},
        "spec": {"workflowTemplateRef": {"name": "diamond"}},
    }))
    .await;
    argo.until("Argo completes it and artgc collects it", async || {
        argo.workflow("from-template").await.is_some_and(|w| {
            w["status"]["phase"] == "Succeeded" && processed(&w, "OnWorkflowCompletion")
        })
    })
    .await;
    let w = argo.workflow("from-template").await.unwrap();
    assert!(
        w["status"]["storedWorkflowTemplateSpec"].is_object(),
        "Argo stored the template's spec"
    );
    // Each of the three pods' outputs (its artifact and its archived log) is recorded deleted.
    let deleted: Vec<&Value> = w["status"]["nodes"]
        .as_object()
        .unwrap()
        .values()
        .filter(|n| n["type"] == "Pod")
        .flat_map(|n| n["outputs"]["artifacts"].as_array().unwrap())
        .collect();
    assert_eq!(deleted.len(), 6, "{deleted:?}");
    assert!(deleted.iter().all(|a| a["deleted"] == true), "{deleted:?}");
    assert!(argo.keys().await.is_empty(), "{:?}", argo.keys().await);
    assert!(
        finalizers(&w).is_empty(),
        "nothing left to hold it for: {}",
        w["metadata"]
    );
    argo.delete("from-template").await;
    argo.until("deleted at once", async || {
        argo.workflow("from-template").await.is_none()
    })
    .await;
    ctl.shutdown().await;
}

/// The stored spec decides, as Argo's `GetExecSpec` does: a Workflow from a WorkflowTemplate
/// whose strategy is `OnWorkflowCompletion`, its own `spec.artifactGC` rewritten to `Never` after
/// Argo stored the merged spec (while a suspend step waits). Argo runs on the stored spec; so
/// does artgc, which collects it at completion instead of keeping everything for the edit.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_spec_decides_not_a_later_edit_of_spec() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    argo.space
        .create(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": "stored"},
            "spec": {
                "entrypoint": "main",
                "artifactGC": {"strategy": "OnWorkflowCompletion"},
                "templates": [
                    {"name": "main", "steps": [[{"name": "p", "template": "produce"}],
                                               [{"name": "hold", "template": "hold"}]]},
                    {"name": "produce", "container": {"image": "busybox", "command": ["true"]},
                     "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out"}]}},
                    {"name": "hold", "suspend": {"duration": "4s"}},
                ],
            },
        }))
        .await;
    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "edited"},
        "spec": {"workflowTemplateRef": {"name": "stored"}},
    }))
    .await;
    argo.until("Argo stored the spec and runs it", async || {
        argo.workflow("edited").await.is_some_and(|w| {
            w["status"]["storedWorkflowTemplateSpec"].is_object()
                && w["status"]["phase"] == "Running"
        })
    })
    .await;
    let edit = json!({"spec": {"artifactGC": {"strategy": "Never"}}});
    argo.space
        .api(&argo.workflow("edited").await.unwrap())
        .patch("edited", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit spec");
    argo.until("Argo completes it and artgc collects it", async || {
        argo.workflow("edited")
            .await
            .is_some_and(|w| w["status"]["phase"] == "Succeeded" && completion_processed(&w))
    })
    .await;
    let w = argo.workflow("edited").await.unwrap();
    assert_eq!(
        w["spec"]["artifactGC"]["strategy"], "Never",
        "the edit stayed"
    );
    let pods = pod_nodes(&w);
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert!(
        pods[0]["outputs"]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["deleted"] == true),
        "{}",
        pods[0]
    );
    assert!(argo.keys().await.is_empty(), "{:?}", argo.keys().await);
    argo.delete_until_gone("edited").await;
    ctl.shutdown().await;
}

/// Where Argo ran the pod: a template's `archiveLocation` names its bucket by
/// `{{inputs.parameters.bucket}}`, which Argo substitutes for the pod and records on the node
/// (`inputs.parameters`); in another Workflow, an inline template archives where
/// `spec.templateDefaults` says, merged in by Argo before it runs. artgc resolves both as Argo
/// ran them and collects every output.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_parameters_and_template_defaults_locate_outputs_as_argo_ran_them() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    let s3 = &argo.s3;
    let location = |bucket: &str, key: &str| {
        json!({"archiveLogs": true, "s3": {
            "bucket": bucket, "endpoint": s3.endpoint.trim_start_matches("http://"),
            "insecure": true, "region": s3.region, "key": key,
            "accessKeySecret": {"name": "s3-creds", "key": "accesskey"},
            "secretKeySecret": {"name": "s3-creds", "key": "secretkey"}}})
    };
    let out = json!({"artifacts": [{"name": "out", "path": "/tmp/out"}]});
    let container = json!({"image": "busybox", "command": ["true"]});
    let workflow = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["entrypoint"] = json!("main");
        spec["artifactGC"] = json!({"strategy": "OnWorkflowCompletion"});
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
               "metadata": {"name": name}, "spec": spec})
    };
    argo.submit(workflow(
        "param",
        json!({"templates": [
            {"name": "main", "steps": [[
                {"name": "p", "template": "produce",
                 "arguments": {"parameters": [{"name": "bucket", "value": argo.bucket}]}}]]},
            {"name": "produce", "inputs": {"parameters": [{"name": "bucket"}]},
             "archiveLocation": location("{{inputs.parameters.bucket}}", "params/{{pod.name}}"),
             "container": container, "outputs": out},
        ]}),
    ))
    .await;
    argo.submit(workflow("inline", json!({
        "templateDefaults": {"archiveLocation": location(&argo.bucket, "defaults/{{pod.name}}")},
        "templates": [{"name": "main", "steps": [[
            {"name": "i", "inline": {"container": container, "outputs": out}}]]}],
    })))
    .await;
    for (name, prefix) in [("param", "params/"), ("inline", "defaults/")] {
        argo.until("Argo completes it and artgc collects it", async || {
            argo.workflow(name)
                .await
                .is_some_and(|w| w["status"]["phase"] == "Succeeded" && completion_processed(&w))
        })
        .await;
        let w = argo.workflow(name).await.unwrap();
        let pods = pod_nodes(&w);
        assert_eq!(pods.len(), 1, "{pods:?}");
        let recorded = pods[0]["outputs"]["artifacts"].as_array().unwrap();
        assert!(
            recorded.iter().all(|a| a["s3"]["key"]
                .as_str()
                .is_some_and(|k| k.starts_with(prefix))),
            "archived where its template says: {recorded:?}"
        );
        assert!(recorded.iter().all(|a| a["deleted"] == true), "{}", pods[0]);
        if name == "param" {
            assert_eq!(
                pods[0]["inputs"]["parameters"][0]["value"],
                json!(argo.bucket),
                "Argo recorded the parameter"
            );
        }
    }
    assert!(argo.keys().await.is_empty(), "{:?}", argo.keys().await);
    for name in ["param", "inline"] {
        argo.delete_until_gone(name).await;
    }
    ctl.shutdown().await;
}

/// Pod nodes of a Workflow, by their name in Argo (`wf[0].step(1)`).
fn pod_nodes(w: &Value) -> Vec<&Value> {
    let mut nodes: Vec<&Value> = w["status"]["nodes"]
        .as_object()
        .map(|n| n.values().filter(|n| n["type"] == "Pod").collect())
        .unwrap_or_default();
    nodes.sort_by_key(|n| n["name"].as_str().unwrap_or_default().to_string());
    nodes
}

fn completion_processed(w: &Value) -> bool {
    w["status"]["phase"] == "Succeeded" && processed(w, "OnWorkflowCompletion")
}

/// A `templateRef` into a WorkflowTemplate whose template retries: the first attempt fails
/// (its outputs saved all the same, as Argo's wait container does), the second succeeds. Both
/// attempts' outputs are collected on completion and recorded on both Pod nodes.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_template_ref_has_every_attempts_outputs_collected() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    argo.space
        .create(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": "lib"},
            "spec": {"templates": [{
                "name": "flaky",
                "metadata": {"annotations": {"artgc.test/fail-attempts": "1"}},
                "retryStrategy": {"limit": 2},
                "container": {"image": "busybox", "command": ["true"]},
                "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out"}]},
            }]},
        }))
        .await;
    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "retried"},
        "spec": {
            "entrypoint": "main",
            "artifactGC": {"strategy": "OnWorkflowCompletion"},
            "templates": [{"name": "main", "steps": [[
                {"name": "try", "templateRef": {"name": "lib", "template": "flaky"}},
            ]]}],
        },
    }))
    .await;
    argo.until("Argo completes it and artgc collects it", async || {
        argo.workflow("retried")
            .await
            .is_some_and(|w| completion_processed(&w))
    })
    .await;
    let w = argo.workflow("retried").await.unwrap();
    let pods = pod_nodes(&w);
    let phases: Vec<&Value> = pods.iter().map(|n| &n["phase"]).collect();
    assert_eq!(phases, [&json!("Failed"), &json!("Succeeded")], "{pods:?}");
    assert!(
        w["status"]["nodes"]
            .as_object()
            .unwrap()
            .values()
            .any(|n| n["type"] == "Retry"),
        "Argo retried through a Retry node"
    );
    for node in &pods {
        let arts = node["outputs"]["artifacts"].as_array().unwrap();
        let names: Vec<&Value> = arts.iter().map(|a| &a["name"]).collect();
        assert_eq!(names, [&json!("out"), &json!("main-logs")], "{node}");
        assert!(arts.iter().all(|a| a["deleted"] == true), "{node}");
    }
    assert!(argo.keys().await.is_empty(), "{:?}", argo.keys().await);
    argo.delete("retried").await;
    argo.until("deleted at once", async || {
        argo.workflow("retried").await.is_none()
    })
    .await;
    ctl.shutdown().await;
}

/// Memoization: a second Workflow hits the cache of the first, so its cached step's outputs
/// are the producer's keys. The consumer's completion pass deletes what its own step wrote and
/// keeps the cached outputs for the live producer (`shared`). Deleting the producer then
/// collects them: the consumer, finished, would have deleted them itself, so nobody else uses
/// them, and the consumer's later deletion finds nothing left of them.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memoized_consumer_keeps_the_producers_outputs_while_the_producer_lives() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    let produce = json!({
        "name": "produce",
        "memoize": {"key": "artgc-test-v1", "maxAge": "1h",
                    "cache": {"configMap": {"name": "artgc-memo"}}},
        "container": {"image": "busybox", "command": ["true"]},
        "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out"}]},
    });
    let fresh = json!({
        "name": "fresh",
        "container": {"image": "busybox", "command": ["true"]},
        "outputs": {"artifacts": [{"name": "mine", "path": "/tmp/mine"}]},
    });
    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "producer"},
        "spec": {"entrypoint": "produce", "artifactGC": {"strategy": "OnWorkflowDeletion"},
                 "templates": [produce]},
    }))
    .await;
    argo.until("the producer succeeds", async || {
        argo.workflow("producer")
            .await
            .is_some_and(|w| w["status"]["phase"] == "Succeeded")
    })
    .await;
    let produced = argo.keys().await;
    assert_eq!(produced.len(), 2, "out and main.log: {produced:?}");

    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "consumer"},
        "spec": {
            "entrypoint": "main",
            "artifactGC": {"strategy": "OnWorkflowCompletion"},
            "templates": [
                {"name": "main", "steps": [[{"name": "cached", "template": "produce"}],
                                           [{"name": "own", "template": "fresh"}]]},
                produce, fresh,
            ],
        },
    }))
    .await;
    argo.until("the consumer completes and artgc collects it", async || {
        argo.workflow("consumer")
            .await
            .is_some_and(|w| completion_processed(&w))
    })
    .await;
    let w = argo.workflow("consumer").await.unwrap();
    let pods = pod_nodes(&w);
    assert_eq!(pods.len(), 2, "{pods:?}");
    let (cached, own) = (pods[0], pods[1]);
    assert_eq!(cached["memoizationStatus"]["hit"], true, "{cached}");
    let cached_artifacts = cached["outputs"]["artifacts"].as_array().unwrap();
    assert!(
        cached_artifacts.iter().all(|a| a["s3"]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("runs/producer/"))
            && a["deleted"] != true),
        "the cache hit carries the producer's keys, kept: {cached}"
    );
    let own_artifacts = own["outputs"]["artifacts"].as_array().unwrap();
    assert_eq!(own_artifacts.len(), 2, "{own}");
    assert!(own_artifacts.iter().all(|a| a["deleted"] == true), "{own}");
    assert_eq!(
        argo.keys().await,
        produced,
        "only the consumer's own outputs went"
    );
    assert_eq!(
        sample(
            &metrics(&ctl).await,
            "artgc_artifacts_kept_total{reason=\"shared\"}"
        ),
        Some(2.0)
    );

    argo.delete("producer").await;
    argo.until("the producer is gone", async || {
        argo.workflow("producer").await.is_none()
    })
    .await;
    assert!(argo.keys().await.is_empty(), "{:?}", argo.keys().await);
    argo.delete("consumer").await;
    argo.until("the consumer is gone", async || {
        argo.workflow("consumer").await.is_none()
    })
    .await;
    ctl.shutdown().await;
}

/// `forceFinalizerRemoval`: the artifact's own Secret is gone by the time the Workflow is
/// deleted, so its deletion fails every time; after the retry budget artgc releases the
/// finalizer anyway, says so in an Event, and the object stays in the bucket.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_finalizer_removal_lets_a_workflow_go_whose_deletion_keeps_failing() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo
        .artgc(|c| {
            c.retry_budget = 2;
        })
        .await;
    let s3 = &argo.s3;
    argo.space
        .create(support::secret(
            &argo.space.ns,
            "short-lived",
            &s3.access_key,
            &s3.secret_key,
        ))
        .await;
    let endpoint = s3.endpoint.trim_start_matches("http://").to_string();
    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "forced"},
        "spec": {
            "entrypoint": "produce",
            "artifactGC": {"strategy": "OnWorkflowDeletion", "forceFinalizerRemoval": true},
            "templates": [{
                "name": "produce",
                "container": {"image": "busybox", "command": ["true"]},
                "outputs": {"artifacts": [{
                    "name": "out", "path": "/tmp/out",
                    "s3": {"bucket": argo.bucket, "endpoint": endpoint, "insecure": true,
                           "region": s3.region, "key": "fixed/forced.tgz",
                           "accessKeySecret": {"name": "short-lived", "key": "accesskey"},
                           "secretKeySecret": {"name": "short-lived", "key": "secretkey"}},
                }]},
            }],
        },
    }))
    .await;
    argo.until(
        "Argo completes it, artgc holding the finalizer",
        async || {
            argo.workflow("forced").await.is_some_and(|w| {
                w["status"]["phase"] == "Succeeded" && finalizers(&w) == [FINALIZER]
            })
        },
    )
    .await;
    argo.space.delete("v1", "Secret", "short-lived").await;
    argo.delete("forced").await;
    argo.until("released by force and gone", async || {
        argo.workflow("forced").await.is_none()
    })
    .await;
    let events = argo.space.list("v1", "Event").await;
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "ArtifactGCFinalizerForced"
                && e["involvedObject"]["name"] == "forced"),
        "{events:?}"
    );
    assert!(argo.keys().await.contains(&"fixed/forced.tgz".to_string()));
    ctl.shutdown().await;
}

/// `count` parallel steps of `produce`, each writing artifact `out` (collected on completion)
/// and its log (following the workflow's `strategy`).
fn fan_out(name: &str, count: usize, strategy: &str) -> Value {
    let steps: Vec<Value> = (0..count)
        .map(|i| json!({"name": format!("p{i}"), "template": "produce"}))
        .collect();
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": "main",
            "artifactGC": {"strategy": strategy},
            "templates": [
                {"name": "main", "steps": [steps]},
                {"name": "produce", "container": {"image": "busybox", "command": ["true"]},
                 "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out",
                     "artifactGC": {"strategy": "OnWorkflowCompletion"}}]}},
            ],
        },
    })
}

/// Argo's node compression: with a small `MAX_WORKFLOW_SIZE`, Argo keeps the nodes only in
/// `status.compressedNodes`. artgc reads them, collects the completion outputs and writes its
/// record back compressed: the nodes decode (here with flate2, not artgc's code) to exactly
/// those artifacts `deleted`, and Argo, which reconciles the Workflow while the finalizer is
/// on, reads artgc's encoding without error. Deleting it then collects the logs.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argos_compressed_nodes_are_collected_and_recorded_compressed() {
    let env = [
        ("ARGO_ARTIFACT_GC_ENABLED", "false"),
        ("MAX_WORKFLOW_SIZE", "6000"),
    ];
    let Some(argo) = argo(&env).await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    argo.submit(fan_out("wide", 12, "OnWorkflowDeletion")).await;
    argo.until("Argo completes it and artgc collects it", async || {
        argo.workflow("wide")
            .await
            .is_some_and(|w| completion_processed(&w))
    })
    .await;
    let w = argo.workflow("wide").await.unwrap();
    assert!(
        w["status"]["nodes"]
            .as_object()
            .is_none_or(|n| n.is_empty()),
        "Argo compressed the nodes"
    );
    let nodes = decompress(
        w["status"]["compressedNodes"]
            .as_str()
            .expect("compressedNodes"),
    );
    let pods: Vec<&Value> = nodes
        .as_object()
        .unwrap()
        .values()
        .filter(|n| n["type"] == "Pod")
        .collect();
    assert_eq!(pods.len(), 12);
    completion_outputs_deleted_logs_kept(&pods);
    let keys = argo.keys().await;
    assert_eq!(keys.len(), 12, "the logs stay: {keys:?}");
    assert!(keys.iter().all(|k| k.ends_with("/main.log")), "{keys:?}");
    // Argo reconciles it again (the finalizer is on): it reads artgc's encoding.
    let recorded: u64 = w["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    argo.until("Argo reads artgc's record", async || {
        argo.log().lines().any(|l| {
            l.contains("msg=\"Processing workflow\"")
                && l.contains("workflow=wide")
                && l.split("ResourceVersion=")
                    .nth(1)
                    .and_then(|v| v.split(' ').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v >= recorded)
        })
    })
    .await;
    assert!(!argo.log().contains("hydration failed"), "{}", argo.log());
    let w = argo.workflow("wide").await.unwrap();
    assert_eq!(w["status"]["phase"], "Succeeded");

    argo.delete_until_gone("wide").await;
    assert!(argo.keys().await.is_empty(), "{:?}", argo.keys().await);
    ctl.shutdown().await;
}

/// Every pod of a [`fan_out`] succeeded, its `out` is marked deleted and its log is not.
fn completion_outputs_deleted_logs_kept(pods: &[&Value]) {
    for node in pods {
        assert_eq!(node["phase"], "Succeeded", "{node}");
        let deleted: Vec<(&Value, &Value)> = node["outputs"]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (&a["name"], &a["deleted"]))
            .collect();
        assert_eq!(
            deleted,
            [
                (&json!("out"), &json!(true)),
                (&json!("main-logs"), &Value::Null)
            ],
            "{node}"
        );
    }
}

/// Argo's `compressedNodes`: base64 of gzip of the nodes' JSON.
fn decompress(packed: &str) -> Value {
    use base64::Engine;
    use std::io::Read;
    let gz = base64::engine::general_purpose::STANDARD
        .decode(packed)
        .expect("base64");
    let mut json = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut json)
        .expect("gzip");
    serde_json::from_str(&json).expect("nodes JSON")
}

/// Both collectors, as the README's second deployment: Argo's GC on (its GC pods, played by
/// the double as `argoexec artifact delete`), artgc under its own `--finalizer`. Each holds the
/// Workflow until its own pass is done; deleting the same keys twice harms nothing: no
/// failure from either, every finalizer released, only the `Never` outputs left.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_argos_own_gc_under_its_own_finalizer() {
    const OURS: &str = "artgc.io/artifact-gc";
    let Some(argo) = argo(&[]).await else {
        return;
    };
    let ctl = argo.artgc(|c| c.finalizer = OURS.into()).await;
    argo.submit(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "both"},
        "spec": {
            "entrypoint": "main",
            "artifactGC": {"strategy": "OnWorkflowDeletion"},
            "templates": [
                {"name": "main", "steps": [[{"name": "one", "template": "produce"},
                                            {"name": "two", "template": "produce"}]]},
                {"name": "produce", "container": {"image": "busybox", "command": ["true"]},
                 "outputs": {"artifacts": [
                     {"name": "done", "path": "/tmp/done",
                      "artifactGC": {"strategy": "OnWorkflowCompletion"}},
                     {"name": "later", "path": "/tmp/later"},
                     {"name": "keep", "path": "/tmp/keep", "artifactGC": {"strategy": "Never"}},
                 ]}},
            ],
        },
    }))
    .await;
    argo.until(
        "both finalizers on, the completion outputs gone",
        async || {
            let Some(w) = argo.workflow("both").await else {
                return false;
            };
            let mut finalizers = finalizers(&w);
            finalizers.sort();
            let keys = argo.keys().await;
            completion_processed(&w)
                && finalizers == [OURS, FINALIZER]
                && keys.len() == 6
                && !keys.iter().any(|k| k.ends_with("/done.tgz"))
        },
    )
    .await;
    argo.delete("both").await;
    argo.until("both let it go", async || {
        argo.workflow("both").await.is_none()
    })
    .await;
    let keys = argo.keys().await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.ends_with("/keep.tgz")), "{keys:?}");
    let events = argo.space.list("v1", "Event").await;
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "Warning" && e["involvedObject"]["kind"] == "Workflow")
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    let gc_pods: Vec<Value> = argo
        .space
        .list("v1", "Pod")
        .await
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["workflows.argoproj.io/component"] == "artifact-gc")
        .collect();
    assert!(!gc_pods.is_empty(), "Argo's GC ran too");
    ctl.shutdown().await;
}

/// A leftover `WorkflowTaskResult` (Argo deletes a fulfilled workflow's, but its list can miss
/// some) takes artgc's marks back: while artgc's finalizer holds the completed Workflow, Argo
/// reconciles it every 5 s and copies the result's outputs, without `deleted`, onto the node
/// (deleting the leftover as it persists that). artgc's watch sees the write and its next pass
/// marks the artifact again (its key already gone), so the mark comes back and stays.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_argo_takes_back_is_restored_and_stays() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    argo.submit(fan_out("reset", 3, "OnWorkflowDeletion")).await;
    let all_marked = |w: &Value| {
        pod_nodes(w).len() == 3
            && pod_nodes(w)
                .iter()
                .all(|n| n["outputs"]["artifacts"][0]["deleted"] == true)
    };
    argo.until("Argo completes it and artgc collects it", async || {
        argo.workflow("reset")
            .await
            .is_some_and(|w| completion_processed(&w) && all_marked(&w))
    })
    .await;
    let w = argo.workflow("reset").await.unwrap();
    let node = pod_nodes(&w)[0].clone();
    let id = node["id"].as_str().unwrap().to_string();
    let mut outputs = node["outputs"].clone();
    for a in outputs["artifacts"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("deleted");
    }
    // Every version of the Workflow from here on, to see the mark taken back however briefly.
    let taken_back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = {
        let api = argo.space.api(&w);
        let taken_back = taken_back.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=reset");
            let mut events = watcher(api, config).applied_objects().boxed();
            while let Some(event) = events.next().await {
                let Ok(obj) = event else { continue };
                if !all_marked(&serde_json::to_value(&obj).unwrap()) {
                    taken_back.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = argo.space.api(&json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult", "metadata": {}}));
    let leftover = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult",
        "metadata": {
            "name": id, "namespace": argo.space.ns,
            "labels": {"workflows.argoproj.io/workflow": "reset",
                       "workflows.argoproj.io/report-outputs-completed": "true"},
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                 "name": "reset", "uid": w["metadata"]["uid"]}],
        },
        "outputs": outputs,
    });
    results
        .create(
            &PostParams::default(),
            &serde_json::from_value(leftover).unwrap(),
        )
        .await
        .expect("leftover task result");
    argo.until("Argo takes a mark back", async || {
        taken_back.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    argo.until("the leftover is gone and every mark is back", async || {
        let gone = results.get_opt(&id).await.expect("get").is_none();
        gone && argo.workflow("reset").await.is_some_and(|w| all_marked(&w))
    })
    .await;
    seen.abort();
    // Past Argo's next reconcile (5 s): nothing takes them back again.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let w = argo.workflow("reset").await.unwrap();
    assert!(all_marked(&w), "{}", w["status"]["nodes"]);
    argo.delete_until_gone("reset").await;
    ctl.shutdown().await;
}

/// Concurrent writers: artgc adds its finalizer while Argo is still writing the nodes of 30
/// parallel pods, and records its completion pass while Argo reconciles the finished Workflow.
/// Neither loses the other's writes: every node Argo finished is there with its outputs, every
/// completion output artgc deleted is marked, the finalizer is on once, and the deletion ends.
#[ignore = "needs the real API server and Argo's controller: eval \"$(.ci/kube.sh start DIR)\" \"$(.ci/argo.sh)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_and_artgc_writing_at_once_lose_nothing() {
    let Some(argo) = argo_with_its_gc_off().await else {
        return;
    };
    let ctl = argo.artgc(|_| {}).await;
    argo.submit(fan_out("busy", 30, "OnWorkflowDeletion")).await;
    argo.until("artgc holds it while Argo runs it", async || {
        argo.workflow("busy")
            .await
            .is_some_and(|w| finalizers(&w) == [FINALIZER] && w["status"]["phase"] == "Running")
    })
    .await;
    // A mark Argo takes back (its conflict path, a leftover task result) is restored by the
    // next pass: wait for every one, not only the first record.
    argo.until("Argo completes it and artgc collects it", async || {
        argo.workflow("busy").await.is_some_and(|w| {
            completion_processed(&w)
                && pod_nodes(&w)
                    .iter()
                    .all(|n| n["outputs"]["artifacts"][0]["deleted"] == true)
        })
    })
    .await;
    let w = argo.workflow("busy").await.unwrap();
    assert_eq!(finalizers(&w), [FINALIZER]);
    assert_eq!(
        w["metadata"]["labels"]["workflows.argoproj.io/completed"],
        "true"
    );
    let pods = pod_nodes(&w);
    assert_eq!(pods.len(), 30);
    completion_outputs_deleted_logs_kept(&pods);
    let keys = argo.keys().await;
    assert_eq!(keys.len(), 30, "the logs stay: {keys:?}");
    argo.delete_until_gone("busy").await;
    assert!(argo.keys().await.is_empty(), "{:?}", argo.keys().await);
    // How often the two met, from the API server's audit log (informative: the interleaving
    // is the scheduler's).
    if let Ok(path) = std::env::var("ARTGC_TEST_KUBE_AUDIT") {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let writes = |agent: &str, code: u64| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| {
                    e["objectRef"]["resource"] == "workflows"
                        && e["objectRef"]["namespace"] == argo.space.ns
                        && e["objectRef"]["name"] == "busy"
                        && matches!(e["verb"].as_str(), Some("update" | "patch"))
                        // kube-rs (artgc) sends no User-Agent.
                        && e["userAgent"].as_str().unwrap_or("kube-rs").starts_with(agent)
                        && e["responseStatus"]["code"] == code
                })
                .count()
        };
        eprintln!(
            "writes to the Workflow: Argo {} ({} conflicts), artgc {} ({} conflicts)",
            writes("workflow-controller", 200),
            writes("workflow-controller", 409),
            writes("kube-rs", 200),
            writes("kube-rs", 409),
        );
    }
    ctl.shutdown().await;
}
