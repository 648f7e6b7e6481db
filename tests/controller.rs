//! The controller end to end: a Kubernetes API server and a real S3 server over HTTP, the
//! controller's own tasks in this process. Each test asserts S3 contents, the Workflow's
//! status and finalizers, and Events.
//!
//! Most tests run twice, once per API server (`test_server::` and `real_api_server::`):
//! - the project's API test server, fast, one per test;
//! - the real kube-apiserver `.ci/kube.sh` starts (`ARTGC_TEST_KUBECONFIG`; without it the
//!   real runs are ignored unless asked for, and fail without it when asked), a namespace per test, with Argo's own
//!   Workflow CRD when `../shared` has it, and the controller acting as the ServiceAccount
//!   `deploy/manifests` creates, bound to exactly the RBAC it ships.
//!
//! `ARTGC_TEST_RBAC=chart-namespaced` runs the real half as the Helm chart's ServiceAccount
//! instead, bound to only its `rbac.scope=namespaced` render for the test's namespaces (CI's
//! second run; needs `ARTGC_HELM`).
//!
//! A test that needs a fault the real server cannot be made to show (injected answers, latency,
//! dropped watches, compaction, a status Argo's CRD schema rejects) runs on the test server
//! only, and says so in its first doc line.

mod common;
#[path = "../core/tests/support/mod.rs"]
mod support;

use std::sync::Mutex;
use std::time::Duration;

use artgc::controller::{ControllerConfig, ControllerHandle, LeaderElection};
use artgc_core::nodes::{NodeEncoding, compress, decompress};
use artgc_testkit::{KubeApiServer, KubeFault, Namespace, RealKube, S3Server};
use common::{http_get, metrics, quick_config, sample, until};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use support::*;

const FINALIZER: &str = "workflows.argoproj.io/artifact-gc";
const COMPLETION: &str = "OnWorkflowCompletion";
const DELETION: &str = "OnWorkflowDeletion";

/// Where a test's objects live.
enum Kube {
    /// The project's test server, its own for this test.
    TestServer(KubeApiServer),
    /// A namespace of the real API server, written as its admin.
    Real(Namespace),
}

/// Who the controller acts as.
enum Identity {
    /// This client, as it is.
    Client(kube::Client),
    /// The chart's ServiceAccount in `release_ns`, its namespaced render made for the watched
    /// namespaces when the controller starts.
    Chart {
        real: Box<RealKube>,
        release_ns: String,
    },
}

struct Env {
    kube: Kube,
    /// The workflows' namespace.
    ns: String,
    identity: Identity,
    /// Where Leases go: the RBAC under test grants them in its own namespace only.
    lease_ns: String,
    /// The namespaces the controller watches (all, on the test server).
    watched: Mutex<Vec<String>>,
    s3: S3Server,
    bucket: String,
}

/// Runs each named test (an `async fn(Env)`) on both servers.
macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {
        mod test_server {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::test_server().await).await;
                }
            )*
        }
        mod real_api_server {
            $(
                #[ignore = "needs the real API server: eval \"$(.ci/kube.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(e) = super::Env::real_api_server(stringify!($name)).await {
                        super::$name(e).await;
                    }
                }
            )*
        }
    };
}

on_both_servers!(
    completion_then_deletion_with_mixed_strategies_and_never,
    a_running_workflow_gets_the_finalizer_then_is_collected_when_it_completes,
    force_finalizer_removal_releases_after_the_retry_budget_of_persistent_403s,
    failure_without_force_holds_the_finalizer_sets_the_condition_and_recovers,
    the_condition_is_cleared_on_a_later_success,
    compressed_nodes_are_written_back_in_their_own_encoding,
    a_shared_key_is_kept_until_the_last_user_goes,
    an_output_read_by_a_running_workflow_is_collected_when_the_reader_finishes,
    a_memoized_key_is_collected_by_the_pass_that_sees_its_last_user_go,
    a_namespace_past_its_index_share_is_held_coarser_and_keeps_more,
    only_the_leader_acts_and_hand_over_works,
    keys_that_differ_inside_a_character_are_collected_and_the_process_stays_healthy,
    live_fails_when_the_workers_are_gone,
    a_workflow_argo_never_started_holds_nothing,
    no_finalizer_without_declared_gc,
    unsupported_drivers_are_reported_and_do_not_hold_the_workflow,
    a_refusal_no_retry_changes_is_reported_and_settled,
    a_tenants_slow_store_leaves_workers_for_the_other_namespaces,
);

fn config() -> ControllerConfig {
    ControllerConfig {
        retry_budget: 3,
        ..quick_config()
    }
}

impl Env {
    /// On a test server of its own, namespace `ns`.
    async fn test_server() -> Env {
        let server = KubeApiServer::start().await;
        let client = Identity::Client(server.client());
        Self::seeded(
            Kube::TestServer(server),
            "ns".into(),
            client,
            "ns".into(),
            vec![],
        )
        .await
    }

    /// In a namespace of its own on the real API server, the controller acting as the shipped
    /// ServiceAccount (or the chart's); without it the (ignored, asked-for) test fails.
    async fn real_api_server(test: &str) -> Option<Env> {
        let kube = RealKube::from_env().await?;
        // Namespace names are DNS labels: a short, readable prefix of the test's name.
        let prefix: String = test.replace('_', "-").chars().take(40).collect();
        let space = kube.namespace(prefix.trim_end_matches('-')).await;
        let ns = space.ns.clone();
        let (identity, lease_ns) = match std::env::var("ARTGC_TEST_RBAC").as_deref() {
            Ok("chart-namespaced") => {
                let release_ns = kube.namespace("artgc-release").await.ns;
                let lease_ns = release_ns.clone();
                (
                    Identity::Chart {
                        real: Box::new(kube),
                        release_ns,
                    },
                    lease_ns,
                )
            }
            Err(_) | Ok("manifests") => {
                let rbac = std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/deploy/manifests/rbac.yaml"
                ))
                .expect("deploy/manifests/rbac.yaml");
                (
                    Identity::Client(kube.as_deployed(&rbac).await),
                    "artgc".into(),
                )
            }
            Ok(other) => panic!("ARTGC_TEST_RBAC={other}: manifests or chart-namespaced"),
        };
        let watched = vec![ns.clone()];
        Some(Self::seeded(Kube::Real(space), ns, identity, lease_ns, watched).await)
    }

    /// The client the controller acts with: for the chart, its render for the namespaces
    /// watched now, applied.
    async fn controller_client(&self) -> kube::Client {
        match &self.identity {
            Identity::Client(client) => client.clone(),
            Identity::Chart { real, release_ns } => {
                let helm = std::env::var("ARTGC_HELM").expect(
                    "ARTGC_HELM (.ci/tools.sh): ARTGC_TEST_RBAC=chart-namespaced needs helm",
                );
                let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/artgc");
                let watched = self.watched.lock().unwrap().join(",");
                let values = [
                    "rbac.scope=namespaced".to_string(),
                    format!("controller.namespaces={{{watched}}}"),
                ];
                real.apply_namespaced_chart(&helm, chart, release_ns, &values)
                    .await;
                real.client_as(release_ns, "artgc").await
            }
        }
    }

    async fn seeded(
        kube: Kube,
        ns: String,
        identity: Identity,
        lease_ns: String,
        watched: Vec<String>,
    ) -> Env {
        let s3 = S3Server::start().await;
        let bucket = s3.bucket("ctl").await;
        let env = Env {
            kube,
            ns,
            identity,
            lease_ns,
            watched: Mutex::new(watched),
            s3,
            bucket,
        };
        env.seed(secret(
            &env.ns,
            "s3-creds",
            &env.s3.access_key,
            &env.s3.secret_key,
        ))
        .await;
        // The namespace's repository, as the workflows' status froze it: its endpoint is the
        // one configured for the namespace.
        env.repository_config_map(&env.ns, &env.repo()).await;
        env
    }

    /// The `artifact-repositories` ConfigMap of `ns`, its default `repo`.
    async fn repository_config_map(&self, ns: &str, repo: &Value) {
        self.seed(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "artifact-repositories", "namespace": ns,
                         "annotations": {"workflows.argoproj.io/default-artifact-repository": "default"}},
            "data": {"default": serde_json::to_string(repo).unwrap()},
        }))
        .await;
    }

    /// Another tenant's namespace, watched too.
    async fn other_namespace(&self, prefix: &str) -> String {
        let ns = match &self.kube {
            Kube::TestServer(_) => prefix.to_string(),
            Kube::Real(_) => {
                let kube = RealKube::from_env().await.expect("real API server");
                kube.namespace(prefix).await.ns
            }
        };
        let mut watched = self.watched.lock().unwrap();
        if !watched.is_empty() {
            watched.push(ns.clone());
        }
        ns
    }

    /// The test server, for a test that stays on it.
    fn server(&self) -> &KubeApiServer {
        match &self.kube {
            Kube::TestServer(server) => server,
            Kube::Real(_) => panic!("this test runs on the test server only"),
        }
    }

    /// A client with every right: the test's own hand.
    fn admin(&self) -> kube::Client {
        match &self.kube {
            Kube::TestServer(server) => server.client(),
            Kube::Real(space) => space.client.clone(),
        }
    }

    /// Creates `obj` as it is, status included (Argo's CRD has no status subresource).
    async fn seed(&self, obj: Value) {
        match &self.kube {
            Kube::TestServer(server) => {
                server.seed(obj);
            }
            Kube::Real(space) => space.create(obj).await,
        }
    }

    fn repo(&self) -> Value {
        let mut r = s3_repo(&self.s3.endpoint, &self.bucket, "s3-creds");
        r["s3"]["region"] = json!(self.s3.region);
        r
    }

    /// A finished workflow with the repository frozen into its status.
    fn wf(&self, name: &str) -> Wf {
        workflow(&self.ns, name).status_repo(self.repo())
    }

    /// A finished workflow with one artifact `a` at `key` of strategy `strategy`.
    fn one(&self, name: &str, key: &str, strategy: &str) -> Wf {
        self.wf(name).node(
            &format!("{name}-1"),
            "main",
            vec![with_strategy(key_only("a", key), strategy)],
        )
    }

    async fn put(&self, keys: &[&str]) {
        for k in keys {
            self.s3.put(&self.bucket, k, format!("data of {k}")).await;
        }
    }

    async fn keys(&self) -> Vec<String> {
        self.s3.keys(&self.bucket).await
    }

    async fn create(&self, wf: Wf) {
        self.seed(wf.0).await;
    }

    async fn start(&self, tweak: impl FnOnce(&mut ControllerConfig)) -> ControllerHandle {
        let mut c = config();
        c.namespaces = self.watched.lock().unwrap().clone();
        tweak(&mut c);
        artgc::controller::start(self.controller_client().await, c)
            .await
            .expect("controller starts")
    }

    /// Leader election over one Lease per test, as `identity`.
    fn leader(&self, identity: &str) -> LeaderElection {
        // 3 s renews with a second to spare. The real server, under the whole suite on two
        // cores, has taken longer than that to answer a renewal (CI lost a leader to it).
        let duration = match self.kube {
            Kube::TestServer(_) => 3,
            Kube::Real(_) => 10,
        };
        LeaderElection {
            namespace: self.lease_ns.clone(),
            lease_name: format!("artgc-leader-{}", self.ns),
            identity: identity.into(),
            duration,
        }
    }

    async fn get(&self, name: &str) -> Option<Value> {
        match &self.kube {
            Kube::TestServer(server) => {
                server.get("argoproj.io/v1alpha1", "Workflow", Some(&self.ns), name)
            }
            Kube::Real(space) => space.get("argoproj.io/v1alpha1", "Workflow", name).await,
        }
    }

    fn api(&self) -> kube::Api<DynamicObject> {
        artgc::kube_api::workflows(&self.admin(), Some(&self.ns))
    }

    async fn delete(&self, name: &str) {
        self.api()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }

    async fn patch(&self, name: &str, patch: Value) {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
    }

    async fn all_events(&self) -> Vec<Value> {
        match &self.kube {
            Kube::TestServer(server) => server.list("events.k8s.io/v1", "Event"),
            Kube::Real(space) => space.list("events.k8s.io/v1", "Event").await,
        }
    }

    /// Events about workflow `name`: (type, reason, note).
    async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        self.all_events()
            .await
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (s(&e["type"]), s(&e["reason"]), s(&e["note"]))
            })
            .collect()
    }

    async fn reporters(&self) -> Vec<String> {
        self.all_events()
            .await
            .into_iter()
            .map(|e| {
                e["reportingInstance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }
}

async fn completion_then_deletion_with_mixed_strategies_and_never(e: Env) {
    e.put(&[
        "w1/done.tgz",
        "w1/later.tgz",
        "w1/keep.tgz",
        "w1/logs/main.log",
    ])
    .await;
    e.create(
        e.wf("w1")
            .strategy(COMPLETION)
            .node(
                "w1-1",
                "main",
                vec![
                    with_strategy(key_only("done", "w1/done.tgz"), COMPLETION),
                    with_strategy(key_only("later", "w1/later.tgz"), DELETION),
                    with_strategy(key_only("keep", "w1/keep.tgz"), "Never"),
                    // No own strategy: follows the workflow's, as archived logs do.
                    key_only("main-logs", "w1/logs/main.log"),
                ],
            )
            .set(&["metadata", "finalizers"], json!([FINALIZER])),
    )
    .await;
    let ctl = e.start(|_| {}).await;
    until("completion pass recorded", async || {
        e.get("w1").await.is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    let w = e.get("w1").await.unwrap();
    assert_eq!(e.keys().await, ["w1/keep.tgz", "w1/later.tgz"]);
    assert!(deleted_flag(&w, "w1-1", "done"));
    assert!(deleted_flag(&w, "w1-1", "main-logs"));
    assert!(!deleted_flag(&w, "w1-1", "later"));
    assert!(!deleted_flag(&w, "w1-1", "keep"));
    assert!(!processed(&w, DELETION));
    assert_eq!(
        finalizers(&w),
        [FINALIZER],
        "deletion work remains: finalizer held"
    );
    assert_eq!(gc_condition(&w), None);
    // Events follow the record.
    until("the Normal Event", async || {
        e.events("w1").await.iter().any(|(t, r, n)| {
            t == "Normal" && r == "ArtifactGCSucceeded" && n.contains("2 artifact(s): 2 object(s)")
        })
    })
    .await;

    // Deleting it: the deletion pass runs, then the finalizer goes and so does the object.
    e.delete("w1").await;
    until("workflow gone", async || e.get("w1").await.is_none()).await;
    assert_eq!(e.keys().await, ["w1/keep.tgz"], "Never is kept");
    until("metrics counted", async || {
        sample(
            &metrics(&ctl).await,
            &format!(
                "artgc_finalizers_removed_total{{namespace=\"{}\",forced=\"false\"}}",
                e.ns
            ),
        )
        .is_some()
    })
    .await;
    let m = metrics(&ctl).await;
    let ns = &e.ns;
    for (series, value) in [
        (
            format!(
                "artgc_artifacts_deleted_total{{namespace=\"{ns}\",strategy=\"OnWorkflowCompletion\"}}"
            ),
            2.0,
        ),
        (
            format!(
                "artgc_artifacts_deleted_total{{namespace=\"{ns}\",strategy=\"OnWorkflowDeletion\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "artgc_objects_deleted_total{{namespace=\"{ns}\",strategy=\"OnWorkflowDeletion\"}}"
            ),
            1.0,
        ),
        ("artgc_artifacts_kept_total{reason=\"never\"}".into(), 1.0),
        (
            format!("artgc_finalizers_removed_total{{namespace=\"{ns}\",forced=\"false\"}}"),
            1.0,
        ),
        ("artgc_watch_ready".into(), 1.0),
        ("artgc_watch_failing_seconds".into(), 0.0),
        (
            "artgc_gc_latency_seconds_count{strategy=\"OnWorkflowDeletion\"}".into(),
            1.0,
        ),
        ("artgc_leader".into(), 1.0),
    ] {
        assert_eq!(sample(&m, &series), Some(value), "{series} in\n{m}");
    }
    // Every S3 request attempt is counted by endpoint; none was throttled.
    let endpoint = e.s3.endpoint.trim_start_matches("http://");
    let answered =
        format!("artgc_s3_requests_total{{endpoint=\"{endpoint}\",outcome=\"answered\"}}");
    assert!(
        sample(&m, &answered).is_some_and(|n| n >= 2.0),
        "{answered} in\n{m}"
    );
    assert!(!m.contains("outcome=\"throttled\""), "{m}");
    ctl.shutdown().await;
}

async fn a_running_workflow_gets_the_finalizer_then_is_collected_when_it_completes(e: Env) {
    e.put(&["r/out.tgz"]).await;
    let tpl = json!({"name": "main", "outputs": {"artifacts": [
        {"name": "out", "path": "/tmp/out", "artifactGC": {"strategy": COMPLETION}}]}});
    e.create(e.wf("r").running().template(tpl.clone())).await;
    // Nothing in this one needs GC: no finalizer for it.
    e.create(e.wf("plain").running()).await;
    let ctl = e.start(|_| {}).await;
    until("finalizer added", async || {
        e.get("r")
            .await
            .is_some_and(|w| finalizers(&w) == [FINALIZER])
    })
    .await;
    assert!(finalizers(&e.get("plain").await.unwrap()).is_empty());
    assert_eq!(
        e.keys().await,
        ["r/out.tgz"],
        "nothing deleted while running"
    );

    // It completes: the node reports its artifact and Argo sets the label.
    let now = jiff::Timestamp::now().to_string();
    e.patch(
        "r",
        json!({"metadata": {"labels": {"workflows.argoproj.io/completed": "true"}},
               "status": {"phase": "Succeeded", "finishedAt": now, "nodes": {"r-1": {
                   "id": "r-1", "name": "r-1", "type": "Pod", "templateName": "main",
                   "outputs": {"artifacts": [with_strategy(key_only("out", "r/out.tgz"), COMPLETION)]}}}}}),
    )
    .await;
    until("collected and released", async || {
        e.get("r")
            .await
            .is_some_and(|w| processed(&w, COMPLETION) && finalizers(&w).is_empty())
    })
    .await;
    assert!(e.keys().await.is_empty());
    assert!(deleted_flag(&e.get("r").await.unwrap(), "r-1", "out"));
    ctl.shutdown().await;
}

fn denied_secret(e: &Env) -> Value {
    secret(&e.ns, "bad-creds", &e.s3.access_key, "not-the-secret-key")
}

fn with_secret(mut art: Value, e: &Env, secret: &str) -> Value {
    let mut loc = e.repo();
    loc["s3"]["key"] = art["s3"]["key"].clone();
    loc["s3"]["accessKeySecret"]["name"] = json!(secret);
    loc["s3"]["secretKeySecret"]["name"] = json!(secret);
    art["s3"] = loc["s3"].clone();
    art
}

async fn force_finalizer_removal_releases_after_the_retry_budget_of_persistent_403s(e: Env) {
    e.seed(denied_secret(&e)).await;
    e.put(&["f/denied.tgz"]).await;
    let art = with_secret(
        with_strategy(key_only("denied", "f/denied.tgz"), DELETION),
        &e,
        "bad-creds",
    );
    e.create(
        e.wf("f")
            .node("f-1", "main", vec![art])
            .set(
                &["spec", "artifactGC", "forceFinalizerRemoval"],
                json!(true),
            )
            .set(&["metadata", "finalizers"], json!([FINALIZER])),
    )
    .await;
    let ctl = e.start(|_| {}).await;
    e.delete("f").await;
    until("released by force", async || e.get("f").await.is_none()).await;
    assert!(
        e.events("f")
            .await
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == "ArtifactGCFailed" && n.contains("f-1/denied"))
    );
    until("the Warning says so", async || {
        e.events("f").await.iter().any(|(t, r, n)| {
            t == "Warning"
                && r == "ArtifactGCFinalizerForced"
                && n.contains("f-1/denied")
                && n.contains("access_denied")
        })
    })
    .await;
    assert_eq!(e.keys().await, ["f/denied.tgz"], "nothing was deletable");
    let m = metrics(&ctl).await;
    let ns = &e.ns;
    assert!(
        sample(
            &m,
            &format!("artgc_finalizers_removed_total{{namespace=\"{ns}\",forced=\"true\"}}")
        ) == Some(1.0),
        "{m}"
    );
    // One failure per attempt: the budget (3) was spent before the release.
    assert!(
        sample(
            &m,
            &format!(
                "artgc_artifacts_failed_total{{namespace=\"{ns}\",category=\"access_denied\"}}"
            )
        ) == Some(3.0),
        "{m}"
    );
    // Artifact failures are not reconcile errors (artgc's own): they are not counted twice.
    assert!(!m.contains("artgc_reconcile_errors_total{"), "{m}");
    ctl.shutdown().await;
}

async fn failure_without_force_holds_the_finalizer_sets_the_condition_and_recovers(e: Env) {
    e.seed(denied_secret(&e)).await;
    e.put(&["g/a.tgz"]).await;
    let art = with_secret(
        with_strategy(key_only("a", "g/a.tgz"), DELETION),
        &e,
        "bad-creds",
    );
    e.create(
        e.wf("g")
            .node("g-1", "main", vec![art])
            .set(&["metadata", "finalizers"], json!([FINALIZER])),
    )
    .await;
    let ctl = e.start(|_| {}).await;
    e.delete("g").await;
    until("condition set", async || {
        e.get("g").await.and_then(|w| gc_condition(&w)).is_some()
    })
    .await;
    // Each failed deletion pass is counted on the Workflow.
    until("counted twice", async || {
        e.get("g").await.is_some_and(|w| {
            w["metadata"]["annotations"]["artgc.io/deletion-attempts"]
                .as_str()
                .and_then(|a| a.parse::<u32>().ok())
                .is_some_and(|a| a >= 2)
        })
    })
    .await;
    // Well past the budget: still held.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let w = e.get("g").await.expect("still there");
    assert_eq!(finalizers(&w), [FINALIZER]);
    let msg = gc_condition(&w).unwrap();
    assert!(
        msg.contains("g-1/a") && msg.contains("access_denied"),
        "{msg}"
    );
    assert!(!processed(&w, DELETION));
    until("the Warning", async || {
        e.events("g")
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "ArtifactGCFailed")
    })
    .await;
    assert_eq!(e.keys().await, ["g/a.tgz"]);
    // The held workflow is in the finalizer-wait gauges, aged from its deletionTimestamp.
    let waiting = format!(
        "artgc_finalizer_waiting_workflows{{namespace=\"{}\"}}",
        e.ns
    );
    let oldest = format!(
        "artgc_finalizer_oldest_wait_seconds{{namespace=\"{}\"}}",
        e.ns
    );
    let m = metrics(&ctl).await;
    assert_eq!(sample(&m, &waiting), Some(1.0), "{m}");
    assert!(sample(&m, &oldest).is_some_and(|s| s >= 1.0), "{m}");

    // The credentials get fixed: the next retry succeeds and lets the workflow go.
    let fixed = secret(&e.ns, "bad-creds", &e.s3.access_key, &e.s3.secret_key);
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(e.admin(), &e.ns)
        .patch("bad-creds", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    until("collected after the fix", async || {
        e.get("g").await.is_none()
    })
    .await;
    assert!(e.keys().await.is_empty());
    until("no longer waiting", async || {
        !metrics(&ctl).await.contains(&waiting)
    })
    .await;
    assert!(!metrics(&ctl).await.contains(&oldest));
    ctl.shutdown().await;
}

async fn the_condition_is_cleared_on_a_later_success(e: Env) {
    e.put(&["c/a.tgz"]).await;
    // A missing Secret first: a clear error naming the field, not a crash.
    let art = with_secret(
        with_strategy(key_only("a", "c/a.tgz"), COMPLETION),
        &e,
        "late-creds",
    );
    e.create(e.wf("c").node("c-1", "main", vec![art])).await;
    let ctl = e.start(|_| {}).await;
    until("condition names the missing Secret", async || {
        e.get("c")
            .await
            .and_then(|w| gc_condition(&w))
            .is_some_and(|m| m.contains(&format!("Secret {}/late-creds not found", e.ns)))
    })
    .await;
    assert!(
        finalizers(&e.get("c").await.unwrap()).is_empty(),
        "a finished workflow is never given the finalizer, failing or not"
    );
    e.seed(secret(
        &e.ns,
        "late-creds",
        &e.s3.access_key,
        &e.s3.secret_key,
    ))
    .await;
    until("cleared and released", async || {
        e.get("c").await.is_some_and(|w| {
            gc_condition(&w).is_none() && processed(&w, COMPLETION) && finalizers(&w).is_empty()
        })
    })
    .await;
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

async fn compressed_nodes_are_written_back_in_their_own_encoding(e: Env) {
    e.put(&["z/a.tgz", "z/b.tgz"]).await;
    for (name, enc) in [("zg", NodeEncoding::Gzip), ("zz", NodeEncoding::Zstd)] {
        let nodes = json!({format!("{name}-1"): {"id": format!("{name}-1"), "name": "n", "type": "Pod",
            "templateName": "main", "phase": "Succeeded", "outputs": {"artifacts": [
                with_strategy(key_only("a", if name == "zg" { "z/a.tgz" } else { "z/b.tgz" }), COMPLETION),
                {"name": "param-like", "extra": {"kept": true}}]}}});
        let packed = compress(&serde_json::to_vec(&nodes).unwrap(), enc).unwrap();
        e.create(
            e.wf(name)
                .set(&["status", "nodes"], Value::Null)
                .set(&["status", "compressedNodes"], json!(packed)),
        )
        .await;
    }
    let ctl = e.start(|_| {}).await;
    for (name, enc) in [("zg", NodeEncoding::Gzip), ("zz", NodeEncoding::Zstd)] {
        until("recorded", async || {
            e.get(name).await.is_some_and(|w| processed(&w, COMPLETION))
        })
        .await;
        let w = e.get(name).await.unwrap();
        assert!(w["status"]["nodes"].is_null(), "stays compressed");
        let (json, seen) = decompress(w["status"]["compressedNodes"].as_str().unwrap()).unwrap();
        assert_eq!(seen, enc);
        let nodes: Value = serde_json::from_slice(&json).unwrap();
        let arts = &nodes[format!("{name}-1")]["outputs"]["artifacts"];
        assert_eq!(arts[0]["deleted"], true);
        assert_eq!(arts[1]["extra"]["kept"], true, "unknown fields survive");
    }
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

async fn a_shared_key_is_kept_until_the_last_user_goes(e: Env) {
    e.put(&["shared/model.bin", "own/a.tgz"]).await;
    // `user` still runs, with a template that writes the fixed key.
    let tpl = json!({"name": "main", "outputs": {"artifacts": [
        {"name": "model", "path": "/tmp/m", "s3": {"key": "shared/model.bin"},
         "artifactGC": {"strategy": COMPLETION}}]}});
    e.create(e.wf("user").running().template(tpl)).await;
    e.create(e.wf("first").node(
        "first-1",
        "main",
        vec![
            with_strategy(key_only("model", "shared/model.bin"), COMPLETION),
            with_strategy(key_only("own", "own/a.tgz"), COMPLETION),
        ],
    ))
    .await;
    let ctl = e.start(|_| {}).await;
    until("first processed", async || {
        e.get("first")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    let w = e.get("first").await.unwrap();
    assert!(deleted_flag(&w, "first-1", "own"));
    assert!(
        !deleted_flag(&w, "first-1", "model"),
        "kept: user still runs"
    );
    assert_eq!(e.keys().await, ["shared/model.bin"]);
    let m = metrics(&ctl).await;
    assert!(
        sample(&m, "artgc_artifacts_kept_total{reason=\"shared\"}") == Some(1.0),
        "{m}"
    );

    // The last user completes: now nobody needs the key.
    e.patch(
        "user",
        json!({"metadata": {"labels": {"workflows.argoproj.io/completed": "true"}},
               "status": {"phase": "Succeeded", "nodes": {"user-1": {
                   "id": "user-1", "name": "user-1", "type": "Pod", "templateName": "main",
                   "outputs": {"artifacts": [with_strategy(key_only("model", "shared/model.bin"), COMPLETION)]}}}}}),
    )
    .await;
    until("user processed", async || {
        e.get("user")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    assert!(deleted_flag(
        &e.get("user").await.unwrap(),
        "user-1",
        "model"
    ));
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

/// A namespace's workflows may hold only `--index-keys-per-namespace` entries of the shared-key
/// index: a running workflow with five pods' folders, past a bound of 2, is held as its
/// workflow folder. That folder covers a key of it no node names yet, so another workflow's
/// due artifact there is kept (`shared`) where the pods' folders would have let it go: the
/// bound keeps more, never less, and says so in a gauge.
async fn a_namespace_past_its_index_share_is_held_coarser_and_keeps_more(e: Env) {
    let stray = "art/big/big-9/late.tgz";
    e.put(&[stray]).await;
    let mut big = e.wf("big").running();
    for i in 0..5 {
        big = big.node(
            &format!("big-{i}"),
            "main",
            vec![with_strategy(
                key_only("out", &format!("art/big/big-{i}/out.tgz")),
                DELETION,
            )],
        );
    }
    e.create(big).await;
    e.create(e.one("other", stray, COMPLETION)).await;
    let ctl = e.start(|c| c.index_keys_per_namespace = 2).await;
    until("other processed", async || {
        e.get("other")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    assert!(!deleted_flag(
        &e.get("other").await.unwrap(),
        "other-1",
        "a"
    ));
    assert_eq!(e.keys().await, [stray], "kept under big's coarse folder");
    let m = metrics(&ctl).await;
    let series = format!("artgc_index_coarse_workflows{{namespace=\"{}\"}}", e.ns);
    assert_eq!(sample(&m, &series), Some(1.0), "{m}");
    ctl.shutdown().await;
}

/// A consumer's memoization cache hit carries its producer's key. The producer is deleted while
/// the consumer lives: the key is kept for the consumer and the producer released. When the
/// consumer goes too, its pass sees no other user and deletes the key: never left without an
/// owner, never deleted under a live user.
async fn a_memoized_key_is_collected_by_the_pass_that_sees_its_last_user_go(e: Env) {
    let key = "producer/producer-1/out.tgz";
    e.put(&[key]).await;
    let held = json!([FINALIZER]);
    e.create(
        e.one("producer", key, DELETION)
            .set(&["metadata", "finalizers"], held.clone()),
    )
    .await;
    e.create(e.wf("consumer").set(&["metadata", "finalizers"], held).set(
        &["status", "nodes", "consumer-1"],
        json!({"id": "consumer-1", "name": "consumer-1", "type": "Pod", "phase": "Succeeded",
                       "templateName": "main",
                       "memoizationStatus": {"hit": true, "key": "k", "cacheName": "c"},
                       "outputs": {"artifacts": [with_strategy(key_only("a", key), DELETION)]}}),
    ))
    .await;
    let ctl = e.start(|_| {}).await;
    e.delete("producer").await;
    until("producer released", async || {
        e.get("producer").await.is_none()
    })
    .await;
    assert_eq!(e.keys().await, [key], "kept for the live consumer");

    e.delete("consumer").await;
    until("consumer released", async || {
        e.get("consumer").await.is_none()
    })
    .await;
    assert!(
        e.keys().await.is_empty(),
        "the last user's pass collects it"
    );
    ctl.shutdown().await;
}

/// A running workflow that reads another's output never deletes it: the owner, being deleted,
/// holds its finalizer while the reader runs, and is collected and released once it finishes.
async fn an_output_read_by_a_running_workflow_is_collected_when_the_reader_finishes(e: Env) {
    let key = "owner/owner-1/out.tgz";
    e.put(&[key]).await;
    e.create(
        e.one("owner", key, DELETION)
            .set(&["metadata", "finalizers"], json!([FINALIZER])),
    )
    .await;
    e.create(e.wf("reader").running().set(
        &["status", "nodes", "reader-1"],
        json!({"id": "reader-1", "name": "reader-1", "type": "Pod", "phase": "Running", "templateName": "main",
               "inputs": {"artifacts": [key_only("in", key)]}}),
    ))
    .await;
    let ctl = e
        .start(|c| c.reader_recheck = Duration::from_millis(200))
        .await;
    e.delete("owner").await;
    // Several deletion passes later: still held, the object still there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let w = e.get("owner").await.expect("held by its finalizer");
    assert_eq!(finalizers(&w), [FINALIZER]);
    assert!(!processed(&w, DELETION));
    assert_eq!(e.keys().await, [key]);

    e.patch(
        "reader",
        json!({"metadata": {"labels": {"workflows.argoproj.io/completed": "true"}},
               "status": {"phase": "Succeeded"}}),
    )
    .await;
    // No event on the owner: its recheck finds the reader done.
    until("owner collected and released", async || {
        e.get("owner").await.is_none()
    })
    .await;
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

/// The issue's hold-out: every connection to the API server black-holed for 5 s while passes
/// run (a load balancer that lost its backend; the connections it held stay dead for good),
/// 20 completed Workflows waiting. Requests on dead connections time out (`--api-timeout`),
/// passes end by their deadline, the dead watch is re-made after `--watch-timeout` (+5 s), and
/// every Workflow is collected on new connections without a restart; `/live` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_api_server_stops_collection_only_while_it_lasts() {
    let e = Env::test_server().await;
    let upstream: std::net::SocketAddr = e
        .server()
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = artgc_testkit::BlackHoleProxy::start(upstream).await;
    let ctl = start_through(&proxy.url, |c| {
        c.concurrency = 4;
        c.pass_deadline = Duration::from_secs(3);
        c.api_timeout = Duration::from_secs(1);
        c.watch_timeout = Duration::from_secs(2);
    })
    .await;
    until("the controller is ready", async || {
        http_get(&format!("http://{}/ready", ctl.admin_addr))
            .await
            .0
            == 200
    })
    .await;
    let names: Vec<String> = (0..20).map(|i| format!("hole-{i}")).collect();
    for n in &names {
        e.put(&[&format!("{n}/a.tgz")]).await;
    }
    proxy.set_black_hole(true);
    for n in &names {
        e.create(e.one(n, &format!("{n}/a.tgz"), COMPLETION)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_black_hole(false);
    let live = http_get(&format!("http://{}/live", ctl.admin_addr)).await;
    assert_eq!(live.0, 200, "{}", live.1);
    until("every workflow collected after the hole", async || {
        for n in &names {
            if !e.get(n).await.is_some_and(|w| processed(&w, COMPLETION)) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

/// The controller on the API server at `url` with the clients `artgc controller` makes (the
/// requests' own read timeout), on the test server's config tweaked by `tweak`.
async fn start_through(url: &str, tweak: impl FnOnce(&mut ControllerConfig)) -> ControllerHandle {
    let mut c = config();
    tweak(&mut c);
    let clients = artgc::controller::KubeClients::from_config(
        kube::Config::new(url.parse().unwrap()),
        c.api_timeout,
    )
    .unwrap();
    artgc::controller::start(clients, c).await.unwrap()
}

/// Writes go silent (every PATCH is accepted and never answered) while reads still answer: the
/// status write of a pass fails at `--api-timeout` through the request client's read timeout,
/// is counted (`kube_api`) and retried, long before the pass deadline (an hour here); once the
/// server answers, the workflow is recorded. With one client for everything (kube's default,
/// no read timeout), the write waits for the whole deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_write_fails_at_the_request_timeout_not_the_pass_deadline() {
    let e = Env::test_server().await;
    e.put(&["stall/a.tgz"]).await;
    let ctl = start_through(&e.server().url, |c| {
        c.concurrency = 1;
        c.pass_deadline = Duration::from_secs(3600);
        c.api_timeout = Duration::from_millis(500);
    })
    .await;
    e.server()
        .set_method_latency(Some(("PATCH", Duration::from_secs(3600))));
    e.create(e.one("stalled", "stall/a.tgz", COMPLETION)).await;
    until("a write timed out and was counted", async || {
        sample(
            &metrics(&ctl).await,
            "artgc_reconcile_errors_total{category=\"kube_api\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(
        !e.get("stalled")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    );
    e.server().set_method_latency(None);
    until("recorded once writes are answered", async || {
        e.get("stalled")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

/// The API server goes silent (a load balancer that lost its backend: requests are accepted and
/// never answered) while a pass runs. The pass is abandoned at `--pass-deadline`, counted
/// (`artgc_reconcile_errors_total{category="deadline"}`) and retried with backoff; `/live`
/// stays 200 because workers keep ending passes; once the server answers again the workflow is
/// collected without a restart. Without the deadline the worker waits on the dead request for
/// good. Stays on the test server: the silence is its injected latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_never_holds_a_worker_for_good() {
    let e = Env::test_server().await;
    e.put(&["stall/a.tgz"]).await;
    let ctl = e
        .start(|c| {
            c.concurrency = 1;
            c.pass_deadline = Duration::from_millis(1500);
            c.api_timeout = Duration::from_millis(500);
        })
        .await;
    until("the controller is ready", async || {
        http_get(&format!("http://{}/ready", ctl.admin_addr))
            .await
            .0
            == 200
    })
    .await;
    // Requests already streaming (the watch) go on; every new one hangs for an hour.
    e.server().set_latency(Duration::from_secs(3600));
    e.create(e.one("stalled", "stall/a.tgz", COMPLETION)).await;
    until("a pass ran past its deadline", async || {
        sample(
            &metrics(&ctl).await,
            "artgc_reconcile_errors_total{category=\"deadline\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    let live = http_get(&format!("http://{}/live", ctl.admin_addr)).await;
    assert_eq!(live.0, 200, "workers still end their passes: {}", live.1);
    assert_eq!(
        e.keys().await,
        ["stall/a.tgz"],
        "nothing was sent before the silence ended"
    );
    e.server().set_latency(Duration::ZERO);
    until("collected once the server answers", async || {
        e.get("stalled")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

/// Where the policy (or `--reclaim-versions`, for every namespace) reclaims versions, a
/// finished workflow whose artifacts wait for its deletion is passed once and carries artgc's
/// record of when it was seen finished (`artgc.io/finished-seen`), the bound on its run's
/// window when it is deleted later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_is_recorded_where_versions_are_reclaimed() {
    finish_recorded(|c| {
        let mut p = artgc_core::policy::Policy::parse("defaults:\n  reclaimVersions: {}\n")
            .expect("policy");
        p.allow_loopback = true;
        c.policy = std::sync::Arc::new(p);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_is_recorded_where_the_flag_reclaims_versions() {
    finish_recorded(|c| c.store.reclaim_versions = true).await;
}

async fn finish_recorded(tweak: impl FnOnce(&mut ControllerConfig)) {
    let e = Env::test_server().await;
    e.put(&["later/a.tgz"]).await;
    e.create(e.one("later", "later/a.tgz", DELETION)).await;
    let before = jiff::Timestamp::now();
    let ctl = e.start(tweak).await;
    until("the finish is recorded", async || {
        e.get("later").await.is_some_and(|w| {
            w["metadata"]["annotations"]["artgc.io/finished-seen"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t >= before - jiff::SignedDuration::from_secs(1))
        })
    })
    .await;
    assert_eq!(e.keys().await, ["later/a.tgz"], "nothing is due yet");
    ctl.shutdown().await;
}

/// Stays on the test server: the 409s and 500s are injected answers.
#[tokio::test]
async fn conflicts_and_server_errors_on_updates_lose_nothing() {
    let e = Env::test_server().await;
    e.put(&["k/a.tgz"]).await;
    e.create(e.one("k", "k/a.tgz", COMPLETION)).await;
    // Another writer's change, made before the controller's write: it must survive.
    e.patch("k", json!({"metadata": {"labels": {"team": "data"}}}))
        .await;
    for (status, times) in [(409, 3), (500, 2)] {
        e.server().inject(KubeFault {
            method: "PATCH",
            path: "/workflows/k".into(),
            status,
            times,
        });
    }
    let ctl = e.start(|_| {}).await;
    until("recorded despite faults", async || {
        e.get("k").await.is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    let w = e.get("k").await.unwrap();
    assert_eq!(w["metadata"]["labels"]["team"], "data");
    assert!(deleted_flag(&w, "k-1", "a"));
    let patches = e
        .server()
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/workflows/k"))
        .map(|r| r.status)
        .collect::<Vec<_>>();
    assert!(
        patches.contains(&409) && patches.contains(&500),
        "{patches:?}"
    );
    assert_eq!(patches.last(), Some(&200));
    ctl.shutdown().await;
}

/// Stays on the test server: dropped watches and compaction on demand.
#[tokio::test]
async fn watch_drops_and_410_gone_are_survived() {
    let e = Env::test_server().await;
    e.put(&["d/1.tgz", "d/2.tgz"]).await;
    let ctl = e.start(|_| {}).await;
    until("ready", async || {
        http_get(&format!("http://{}/ready", ctl.admin_addr))
            .await
            .0
            == 200
    })
    .await;
    e.server().drop_watches();
    e.create(e.one("d1", "d/1.tgz", COMPLETION)).await;
    until("d1 processed after a dropped watch", async || {
        e.get("d1").await.is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    e.server().compact();
    e.server().drop_watches();
    e.create(e.one("d2", "d/2.tgz", COMPLETION)).await;
    until("d2 processed after 410 Gone", async || {
        e.get("d2").await.is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    assert!(e.keys().await.is_empty());
    assert_eq!(
        http_get(&format!("http://{}/live", ctl.admin_addr)).await.0,
        200
    );
    // A watch that keeps failing shows in artgc_watch_failing_seconds (what the alert reads),
    // and the gauge is back to 0 once the watch works again.
    let failing = async || sample(&metrics(&ctl).await, "artgc_watch_failing_seconds");
    assert_eq!(failing().await, Some(0.0));
    e.server().inject(KubeFault {
        method: "GET",
        path: "/workflows".into(),
        status: 500,
        times: 1_000_000,
    });
    e.server().drop_watches();
    until("the watch failing is measured", async || {
        failing().await.is_some_and(|s| s >= 1.0)
    })
    .await;
    e.server().clear_faults();
    // A change reaches the resumed watch (a silent recovery is the unit test's).
    e.create(e.one("d3", "d/3.tgz", COMPLETION)).await;
    until("the watch works again", async || {
        failing().await == Some(0.0)
    })
    .await;
    ctl.shutdown().await;
}

/// Stays on the test server: the status write fails by injected 503s.
#[tokio::test]
async fn killed_mid_gc_a_restarted_controller_resumes_and_releases() {
    let e = Env::test_server().await;
    let keys: Vec<String> = (0..20).map(|i| format!("m/{i}.tgz")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    e.put(&key_refs).await;
    let arts = keys
        .iter()
        .enumerate()
        .map(|(i, k)| with_strategy(key_only(&format!("a{i}"), k), DELETION))
        .collect();
    e.create(
        e.wf("m")
            .node("m-1", "main", arts)
            .set(&["metadata", "finalizers"], json!([FINALIZER])),
    )
    .await;
    e.delete("m").await;
    // The status write hangs: the deletions happen, the record does not.
    e.server().inject(KubeFault {
        method: "PATCH",
        path: "/workflows/m".into(),
        status: 503,
        times: 1000,
    });
    let first = e.start(|_| {}).await;
    until("objects deleted", async || e.keys().await.is_empty()).await;
    first.kill().await;
    let w = e.get("m").await.expect("held by the finalizer");
    assert_eq!(finalizers(&w), [FINALIZER]);
    assert!(!deleted_flag(&w, "m-1", "a0"));

    e.server().clear_faults();
    let second = e.start(|_| {}).await;
    until("resumed and released", async || e.get("m").await.is_none()).await;
    second.shutdown().await;
}

async fn only_the_leader_acts_and_hand_over_works(e: Env) {
    e.put(&["l/1.tgz", "l/2.tgz"]).await;
    let le = |id: &str| e.leader(id);
    let a = e.start(|c| c.leader_election = Some(le("a"))).await;
    until("a leads", async || {
        sample(&metrics(&a).await, "artgc_leader") == Some(1.0)
    })
    .await;
    let b = e.start(|c| c.leader_election = Some(le("b"))).await;
    e.create(e.one("l1", "l/1.tgz", COMPLETION)).await;
    until("l1 processed", async || {
        e.get("l1").await.is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    assert_eq!(sample(&metrics(&b).await, "artgc_leader"), Some(0.0));
    // The Event follows the record.
    until("a's Event", async || !e.reporters().await.is_empty()).await;
    assert_eq!(e.reporters().await, ["a"], "only the leader wrote Events");

    a.shutdown().await;
    until("b leads", async || {
        sample(&metrics(&b).await, "artgc_leader") == Some(1.0)
    })
    .await;
    e.create(e.one("l2", "l/2.tgz", COMPLETION)).await;
    until("l2 processed", async || {
        e.get("l2").await.is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    until("b's Event", async || {
        let mut reporters = e.reporters().await;
        reporters.sort();
        reporters == ["a", "b"]
    })
    .await;
    assert!(e.keys().await.is_empty());
    b.shutdown().await;
}

/// Stays on the test server: Argo's full CRD schema (which the real server runs with)
/// rejects these statuses; its minimal CRD, the default install, lets them in.
#[tokio::test]
async fn a_malformed_workflow_is_reported_and_does_not_stop_the_others() {
    let e = Env::test_server().await;
    e.put(&["ok/a.tgz"]).await;
    e.create(
        e.wf("broken")
            .set(
                &["status", "nodes"],
                json!({"x": {"outputs": {"artifacts": "not a list"}}}),
            )
            .set(&["metadata", "finalizers"], json!([FINALIZER])),
    )
    .await;
    e.create(e.one("fine", "ok/a.tgz", COMPLETION)).await;
    let ctl = e.start(|_| {}).await;
    e.delete("broken").await;
    until("fine processed", async || {
        e.get("fine")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    // Nodes artgc cannot read hold nothing: reported, and the deletion goes through.
    until("broken is reported and gone", async || {
        e.get("broken").await.is_none()
            && e.events("broken").await.iter().any(|(t, r, note)| {
                t == "Warning" && r == "ArtifactGCFailed" && note.contains("status.nodes")
            })
    })
    .await;
    // Finished, not deleted, unreadable: reported, and not given a finalizer to stick on.
    e.create(e.wf("broken-too").set(
        &["status", "nodes"],
        json!({"x": {"outputs": {"artifacts": 7}}}),
    ))
    .await;
    until("broken-too has the condition", async || {
        e.get("broken-too")
            .await
            .and_then(|w| gc_condition(&w))
            .is_some()
    })
    .await;
    assert!(finalizers(&e.get("broken-too").await.unwrap()).is_empty());
    // The Event follows the record.
    until("broken-too has the Warning", async || {
        e.events("broken-too")
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "ArtifactGCFailed")
    })
    .await;
    assert!(e.keys().await.is_empty());
    ctl.shutdown().await;
}

/// Stays on the test server: it needs the list's pages slowed down.
#[tokio::test]
async fn nothing_is_collected_before_the_first_list_has_indexed_every_workflow() {
    let e = Env::test_server().await;
    e.put(&["fixed/k"]).await;
    // The first page of the initial list (500) holds a-first; zz-user, which still runs and
    // names the same key, comes with the fourth, well after a-first could have been reconciled.
    e.create(e.one("a-first", "fixed/k", COMPLETION)).await;
    for i in 0..1600 {
        e.create(e.wf(&format!("m-filler-{i:04}")).running()).await;
    }
    let tpl = json!({"name": "main", "outputs": {"artifacts": [
        {"name": "k", "path": "/tmp/k", "s3": {"key": "fixed/k"}}]}});
    e.create(e.wf("zz-user").running().template(tpl)).await;
    e.server().set_latency(Duration::from_millis(300));
    let ctl = e.start(|_| {}).await;
    until("a-first processed", async || {
        e.get("a-first")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    assert_eq!(e.keys().await, ["fixed/k"], "zz-user still uses it");
    assert!(!deleted_flag(
        &e.get("a-first").await.unwrap(),
        "a-first-1",
        "a"
    ));
    e.server().set_latency(Duration::ZERO);
    ctl.shutdown().await;
}

// ---- liveness: nothing sticks, nothing takes the controller down ----

/// Keys that differ inside a multi-byte character once panicked at the common-prefix cut,
/// killing a worker per such workflow. Now they are collected beside healthy workflows and the
/// process stays live and ready.
async fn keys_that_differ_inside_a_character_are_collected_and_the_process_stays_healthy(e: Env) {
    e.put(&["数据/报告.csv", "数据/日志.csv", "ok/a.tgz"]).await;
    e.create(e.wf("utf8").node(
        "utf8-1",
        "main",
        vec![
            with_strategy(key_only("report", "数据/报告.csv"), COMPLETION),
            with_strategy(key_only("log", "数据/日志.csv"), COMPLETION),
        ],
    ))
    .await;
    e.create(e.one("plain", "ok/a.tgz", COMPLETION)).await;
    let ctl = e.start(|c| c.concurrency = 1).await;
    until("both collected", async || {
        for name in ["utf8", "plain"] {
            if !e.get(name).await.is_some_and(|w| processed(&w, COMPLETION)) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(e.keys().await.is_empty());
    for path in ["live", "ready"] {
        let (status, body) = http_get(&format!("http://{}/{path}", ctl.admin_addr)).await;
        assert_eq!(status, 200, "/{path}: {body}");
    }
    ctl.shutdown().await;
}

/// /live fails once the workers are gone (here: stopped), so a wedged process is restarted.
async fn live_fails_when_the_workers_are_gone(e: Env) {
    let ctl = e.start(|_| {}).await;
    let admin = ctl.admin_addr;
    until("ready", async || {
        http_get(&format!("http://{admin}/ready")).await.0 == 200
    })
    .await;
    assert_eq!(http_get(&format!("http://{admin}/live")).await.0, 200);
    let admin_state = ctl.admin_state.clone();
    ctl.shutdown().await;
    assert!(
        admin_state.not_live().is_some(),
        "workers and watch are gone"
    );
}

/// A workflow Argo never started (another instance, throttled, Pending) is released at once
/// when deleted, and never given the finalizer in the first place.
async fn a_workflow_argo_never_started_holds_nothing(e: Env) {
    let declared = json!({"name": "main", "outputs": {"artifacts": [
        {"name": "out", "path": "/tmp/out", "artifactGC": {"strategy": DELETION}}]}});
    let pending = |name: &str| {
        e.wf(name)
            .set(&["status"], json!({"phase": "Pending"}))
            .set(&["metadata", "labels"], json!({}))
            .template(declared.clone())
    };
    e.create(pending("held").set(&["metadata", "finalizers"], json!([FINALIZER])))
        .await;
    e.create(pending("new")).await;
    let ctl = e.start(|_| {}).await;
    e.delete("held").await;
    until("released at once", async || e.get("held").await.is_none()).await;
    // Once Argo starts it, the finalizer goes on.
    assert!(finalizers(&e.get("new").await.unwrap()).is_empty());
    e.patch(
        "new",
        json!({"status": {"phase": "Running", "startedAt": jiff::Timestamp::now().to_string()}}),
    )
    .await;
    until("finalizer added once started", async || {
        e.get("new")
            .await
            .is_some_and(|w| finalizers(&w) == [FINALIZER])
    })
    .await;
    ctl.shutdown().await;
}

/// A running workflow whose templates declare no GC gets no finalizer, whatever its node status
/// says (it may be unreadable, or written by its author).
async fn no_finalizer_without_declared_gc(e: Env) {
    let running = e
        .wf("undeclared")
        .running()
        .set(&["status", "startedAt"], json!("2026-11-27T00:00:00Z"))
        .node(
            "u-1",
            "main",
            vec![with_strategy(key_only("a", "u/a"), DELETION)],
        );
    e.create(running).await;
    e.create(
        e.wf("unreadable")
            .running()
            .set(&["status", "compressedNodes"], json!("not base64 at all!"))
            .set(&["status", "nodes"], json!({})),
    )
    .await;
    let ctl = e.start(|_| {}).await;
    until("ready", async || {
        http_get(&format!("http://{}/ready", ctl.admin_addr))
            .await
            .0
            == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(finalizers(&e.get("undeclared").await.unwrap()).is_empty());
    assert!(finalizers(&e.get("unreadable").await.unwrap()).is_empty());
    ctl.shutdown().await;
}

/// Artifacts artgc cannot delete (GCS here) are reported and settled: the deletion completes.
async fn unsupported_drivers_are_reported_and_do_not_hold_the_workflow(e: Env) {
    let gcs = json!({"name": "g", "gcs": {"bucket": "b", "key": "k"},
                     "artifactGC": {"strategy": DELETION}});
    settled_on_deletion(&e, "gcs", gcs, "gcs", "unsupported").await;
}

/// A repository moved to a new endpoint: the older workflow's artifact names the old one, which
/// is no longer configured for the namespace. Decided on a successful read of the namespace's
/// configuration, the refusal will not change on retry: reported (Event, metric) and settled,
/// so `kubectl delete` completes instead of hanging for good (no forceFinalizerRemoval).
async fn a_refusal_no_retry_changes_is_reported_and_settled(e: Env) {
    let moved = json!({"name": "m", "path": "/tmp/m",
                       "s3": {"endpoint": "old-minio.storage:9000", "bucket": "b", "key": "k/m",
                              "insecure": true,
                              "accessKeySecret": {"name": "s3", "key": "accesskey"},
                              "secretKeySecret": {"name": "s3", "key": "secretkey"}},
                       "artifactGC": {"strategy": DELETION}});
    settled_on_deletion(&e, "moved", moved, "endpoint_not_allowed", "refused").await;
}

/// Deletes workflow `name` (holding artgc's finalizer, one `artifact`) and expects it released,
/// a Warning Event naming `reported`, and one artifact kept for `kept`.
async fn settled_on_deletion(e: &Env, name: &str, artifact: Value, reported: &str, kept: &str) {
    e.create(
        e.wf(name)
            .node(&format!("{name}-1"), "main", vec![artifact])
            .set(&["metadata", "finalizers"], json!([FINALIZER])),
    )
    .await;
    let ctl = e.start(|_| {}).await;
    e.delete(name).await;
    until("released", async || e.get(name).await.is_none()).await;
    until("reported", async || {
        e.events(name)
            .await
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == "ArtifactGCFailed" && n.contains(reported))
    })
    .await;
    let m = metrics(&ctl).await;
    let series = format!("artgc_artifacts_kept_total{{reason=\"{kept}\"}}");
    assert!(sample(&m, &series) == Some(1.0), "{m}");
    ctl.shutdown().await;
}

/// Reading the workflow's Secrets fails (403) on every pass: each failed deletion pass counts,
/// with the condition and an Event, and the count lives on the Workflow, so a controller that
/// restarts goes on from it. Here a previous controller already counted 2 of 3: the first pass
/// of this one spends the budget (with the count in memory, two more passes would be needed,
/// each after a 30 s backoff).
///
/// Stays on the test server: the 403s are injected (the shipped RBAC grants Secret reads).
#[tokio::test]
async fn forbidden_reads_count_toward_force_and_the_count_survives_a_restart() {
    let e = Env::test_server().await;
    e.put(&["r/a.tgz"]).await;
    let art = with_secret(
        with_strategy(key_only("a", "r/a.tgz"), DELETION),
        &e,
        "s3-creds",
    );
    e.create(
        e.wf("r")
            .node("r-1", "main", vec![art])
            .set(
                &["spec", "artifactGC", "forceFinalizerRemoval"],
                json!(true),
            )
            .set(&["metadata", "finalizers"], json!([FINALIZER]))
            .set(
                &["metadata", "annotations", "artgc.io/deletion-attempts"],
                json!("2"),
            ),
    )
    .await;
    e.server().inject(KubeFault {
        method: "GET",
        path: "/secrets/".into(),
        status: 403,
        times: usize::MAX,
    });
    let ctl = e
        .start(|c| {
            c.backoff_base = Duration::from_secs(30);
            c.backoff_max = Duration::from_secs(30);
        })
        .await;
    e.delete("r").await;
    until("released by force on the third counted pass", async || {
        e.get("r").await.is_none()
    })
    .await;
    until("the forced release is reported", async || {
        e.events("r").await.iter().any(|(t, r, n)| {
            t == "Warning" && r == "ArtifactGCFinalizerForced" && n.contains("secret")
        })
    })
    .await;
    assert_eq!(e.keys().await, ["r/a.tgz"]);
    ctl.shutdown().await;
}

/// Fencing: a replica that loses its Lease mid-pass sends no further delete request and writes
/// no record (the next leader redoes the pass).
/// Stays on the test server: the Lease's renewals fail by injected answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_lease_mid_pass_stops_deleting_and_records_nothing() {
    use artgc_testkit::FaultProxy;
    let e = Env::test_server().await;
    let proxy = FaultProxy::start(&e.s3.endpoint).await;
    // Six delete batches of 1,000 keys, 1.5 s apart through the proxy: the Lease (3 s) runs
    // out after at most three of them.
    let objects: Vec<(String, Vec<u8>)> = (0..6000)
        .map(|i| (format!("big/out/{i:05}"), b"x".to_vec()))
        .collect();
    e.s3.put_many(&e.bucket, objects, 32).await;
    // The artifact is reached through the proxy, which slows every request down.
    let mut art = with_secret(
        with_strategy(key_only("out", "big/out/"), COMPLETION),
        &e,
        "s3-creds",
    );
    art["s3"]["endpoint"] = json!(proxy.endpoint);
    let mut repo = e.repo();
    repo["s3"]["endpoint"] = json!(proxy.endpoint);
    // The namespace's repositories name the proxy too: a configured endpoint.
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(e.admin(), &e.ns);
    cms.patch(
        "artifact-repositories",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"proxy": serde_json::to_string(&repo).unwrap()}})),
    )
    .await
    .expect("add the proxy repository");
    let lease = e.leader("a");
    let a = e
        .start(|c| {
            c.leader_election = Some(lease);
            c.store.concurrency = 1;
            c.store.endpoint_concurrency = 1;
        })
        .await;
    until("a leads", async || {
        sample(&metrics(&a).await, "artgc_leader") == Some(1.0)
    })
    .await;
    let deletes = |p: &FaultProxy| {
        p.log()
            .iter()
            .filter(|r| r.method == "POST" && r.path_and_query.contains("delete"))
            .count()
    };
    proxy.set_latency(Duration::from_millis(1500));
    e.create(e.wf("big").node("big-1", "main", vec![art])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while deletes(&proxy) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no delete request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replica can no longer renew its Lease (a partition from the API server's writes):
    // once it expires, it is no longer the leader, and another may be.
    e.server().inject(KubeFault {
        method: "PATCH",
        path: "/leases/".into(),
        status: 503,
        times: usize::MAX,
    });
    // The Lease (3 s) runs out unrenewed; from then on nothing more is sent. The proxy logs a
    // request when its latency is over: one sent just before the end shows 1.5 s later.
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_millis(2500)).await;
    let at_loss = deletes(&proxy);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        deletes(&proxy),
        at_loss,
        "delete requests went on after the Lease ran out"
    );
    assert!(at_loss < 6, "not all six batches were sent: {at_loss}");
    let w = e.get("big").await.unwrap();
    assert!(!processed(&w, COMPLETION), "no record without the Lease");
    assert!(!deleted_flag(&w, "big-1", "out"));
    a.kill().await;
}

/// One tenant's slow store holds at most its namespace's share of the workers: another
/// namespace's workflow is collected while every slow pass still waits on its store.
async fn a_tenants_slow_store_leaves_workers_for_the_other_namespaces(e: Env) {
    use artgc_testkit::FaultProxy;
    let proxy = FaultProxy::start(&e.s3.endpoint).await;
    let slow_ns = &e.other_namespace("slow-tenant").await;
    let mut slow_repo = e.repo();
    slow_repo["s3"]["endpoint"] = json!(proxy.endpoint);
    e.seed(secret(
        slow_ns,
        "s3-creds",
        &e.s3.access_key,
        &e.s3.secret_key,
    ))
    .await;
    e.repository_config_map(slow_ns, &slow_repo).await;
    // Two workers: one per namespace at most (half of them).
    let ctl = e.start(|c| c.concurrency = 2).await;
    proxy.set_latency(Duration::from_secs(4));
    for i in 0..3 {
        let name = format!("s{i}");
        let key = format!("slow/{i}");
        e.put(&[key.as_str()]).await;
        e.seed(
            workflow(slow_ns, &name)
                .status_repo(slow_repo.clone())
                .node(
                    &format!("{name}-1"),
                    "main",
                    vec![with_strategy(key_only("a", &key), COMPLETION)],
                )
                .0,
        )
        .await;
    }
    // Let the slow ones take what they can.
    tokio::time::sleep(Duration::from_millis(500)).await;
    e.put(&["fast/a"]).await;
    let started = std::time::Instant::now();
    e.create(e.one("fast", "fast/a", COMPLETION)).await;
    until("the other namespace's workflow is collected", async || {
        e.get("fast")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "it waited behind the slow store's passes: {took:?}"
    );
    assert!(
        e.keys().await.iter().any(|k| k.starts_with("slow/")),
        "the slow passes were still running"
    );
    ctl.kill().await;
}
