//! The controller against a real kube-apiserver and etcd (built from their Go modules and
//! started by `.ci/kube.sh`), with S3 from s3s-fs in process: what the project's API test
//! server cannot prove on its own. Real finalizer semantics (a deleted Workflow stays until
//! artgc lets it go), real merge patches with resourceVersion preconditions on a CRD without
//! a status subresource, Events through events.k8s.io, and TokenRequest tokens signed by the
//! API server. Fault injection stays with the test server (tests/controller.rs).
//!
//! Needs `ARTGC_TEST_KUBECONFIG` (`eval "$(.ci/kube.sh start DIR)"`): a test without it fails
//! when asked for (the tests are ignored, so not run, otherwise).

mod common;
#[path = "../core/tests/support/mod.rs"]
mod support;

use artgc::controller::{ControllerConfig, ControllerHandle};
use artgc::identity::StsSettings;
use artgc_testkit::{Namespace, RealKube, S3Server, StsRole, StsServer, needed_var};
use common::{quick_config, until};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde_json::{Value, json};
use support::*;

const FINALIZER: &str = "workflows.argoproj.io/artifact-gc";
const COMPLETION: &str = "OnWorkflowCompletion";
const DELETION: &str = "OnWorkflowDeletion";

/// One test's namespace on the shared server, and what the tests do there.
struct Cluster {
    space: Namespace,
}

impl std::ops::Deref for Cluster {
    type Target = Namespace;
    fn deref(&self) -> &Namespace {
        &self.space
    }
}

impl Cluster {
    async fn new(kube: &RealKube, prefix: &str) -> Self {
        Self {
            space: kube.namespace(prefix).await,
        }
    }

    /// The same namespace, written to and watched as `client`.
    fn acting_as(&self, client: kube::Client) -> Self {
        Self {
            space: Namespace {
                client,
                ns: self.ns.clone(),
            },
        }
    }

    fn workflows(&self) -> Api<DynamicObject> {
        artgc::kube_api::workflows(&self.client, Some(&self.ns))
    }

    /// Deletes Workflow `name`, as `kubectl delete` does.
    async fn delete(&self, name: &str) {
        self.workflows()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }

    async fn workflow(&self, name: &str) -> Option<Value> {
        let obj = self.workflows().get_opt(name).await.expect("get");
        obj.map(|o| serde_json::to_value(o).unwrap())
    }

    async fn start(&self, tweak: impl FnOnce(&mut ControllerConfig)) -> ControllerHandle {
        let mut config = ControllerConfig {
            namespaces: vec![self.ns.clone()],
            ..quick_config()
        };
        tweak(&mut config);
        artgc::controller::start(self.client.clone(), config)
            .await
            .expect("controller starts")
    }

    /// The namespace's repository on `s3`, as Argo reads it (the `artifact-repositories`
    /// ConfigMap), with credentials from Secret `s3-creds`.
    async fn secret_repository(&self, s3: &S3Server, bucket: &str) {
        self.create(secret(&self.ns, "s3-creds", &s3.access_key, &s3.secret_key))
            .await;
        self.create(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "artifact-repositories",
                         "annotations": {"workflows.argoproj.io/default-artifact-repository": "default"}},
            "data": {"default": serde_json::to_string(&repository(s3, bucket)).unwrap()},
        }))
        .await;
    }

    /// A finished workflow `name` with one artifact `out` at `key` of `strategy`, in the
    /// namespace's repository.
    fn one(&self, s3: &S3Server, bucket: &str, name: &str, key: &str, strategy: &str) -> Wf {
        workflow(&self.ns, name)
            .status_repo(repository(s3, bucket))
            .node(
                &format!("{name}-1"),
                "main",
                vec![with_strategy(key_only("out", key), strategy)],
            )
    }

    /// The highest series count of `name`'s Events (a repeated Event is patched, not created).
    async fn event_series(&self, name: &str) -> i32 {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let list = api.list(&ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.series.map(|s| s.count))
            .max()
            .unwrap_or(0)
    }

    /// Event reasons recorded for `name` (events.k8s.io, as artgc writes them).
    async fn event_reasons(&self, name: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let list = api.list(&ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }
}

/// The namespace's repository on `s3`, credentials from Secret `s3-creds`.
fn repository(s3: &S3Server, bucket: &str) -> Value {
    let mut r = s3_repo(&s3.endpoint, bucket, "s3-creds");
    r["s3"]["region"] = json!(s3.region);
    r
}

/// A completion pass is recorded where Argo reads it, and a deleted Workflow that holds
/// artgc's finalizer stays until its deletion pass is done, then goes: the real API server's
/// finalizer and merge-patch semantics, not the test server's.
#[ignore = "needs the real API server: eval \"$(.ci/kube.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_are_recorded_and_the_finalizer_released_on_a_real_api_server() {
    let Some(kube) = RealKube::from_env().await else {
        return;
    };
    let c = Cluster::new(&kube, "artgc-e2e").await;
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("real").await;
    c.secret_repository(&s3, &bucket).await;
    for k in ["done/out.tgz", "kept/out.tgz", "gone/out.tgz"] {
        s3.put(&bucket, k, "x").await;
    }
    let wf = |name: &str, key: &str, strategy: &str| c.one(&s3, &bucket, name, key, strategy);
    c.create(wf("done", "done/out.tgz", COMPLETION).0).await;
    c.create(wf("kept", "kept/out.tgz", "Never").0).await;
    c.create(
        wf("gone", "gone/out.tgz", DELETION)
            .set(&["metadata", "finalizers"], json!([FINALIZER]))
            .0,
    )
    .await;
    let ctl = c.start(|_| {}).await;

    until("the completion pass is recorded", async || {
        c.workflow("done")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    let done = c.workflow("done").await.unwrap();
    let out = &done["status"]["nodes"]["done-1"]["outputs"]["artifacts"][0];
    assert_eq!(out["deleted"], true, "{out}");
    until("the success Event", async || {
        c.event_reasons("done")
            .await
            .contains(&"ArtifactGCSucceeded".to_string())
    })
    .await;

    // Deleted: the API server keeps it (finalizer) until the deletion pass lets it go.
    c.delete("gone").await;
    until("the deleted Workflow is gone", async || {
        c.workflow("gone").await.is_none()
    })
    .await;
    ctl.shutdown().await;
    assert_eq!(s3.keys(&bucket).await, ["kept/out.tgz"]);
    let kept = c.workflow("kept").await.unwrap();
    assert!(
        finalizers(&kept).is_empty(),
        "a Never artifact holds nothing: {kept}"
    );
}

/// A workflow's GC service account acts through a token the real API server mints and signs
/// (TokenRequest for the STS audience), and STS sees that account as the caller.
#[ignore = "needs the real API server: eval \"$(.ci/kube.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_service_account_token_from_the_real_api_server_reaches_sts() {
    let Some(kube) = RealKube::from_env().await else {
        return;
    };
    let c = Cluster::new(&kube, "artgc-irsa").await;
    let irsa = Irsa::new(&c, "irsa").await;
    let ctl = c.start(|config| irsa.configure(config)).await;
    until("collected through the service account", async || {
        c.workflow("w")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    ctl.shutdown().await;
    irsa.assert_collected_as_gc().await;
}

/// A workflow `w` of the cluster's namespace whose artifact has no Secrets: collected only
/// through its GC service account `gc`, whose role STS trusts for that account alone.
struct Irsa {
    s3: S3Server,
    bucket: String,
    sts: StsServer,
    /// The account as STS must see it.
    caller: String,
}

const GC_ROLE: &str = "arn:aws:iam::111:role/gc";

impl Irsa {
    async fn new(c: &Cluster, bucket: &str) -> Self {
        let keys = [("AKROLE".to_string(), "secret-role".to_string())];
        let s3 = S3Server::start_local_with_keys(&keys).await;
        let bucket = s3.bucket(bucket).await;
        let caller = format!("system:serviceaccount:{}:gc", c.ns);
        let sts = StsServer::start(
            "sts.amazonaws.com",
            vec![StsRole {
                arn: GC_ROLE.into(),
                access_key: keys[0].0.clone(),
                secret_key: keys[0].1.clone(),
                trusted_subjects: vec![caller.clone()],
                trusted_roles: vec![],
            }],
        )
        .await;
        c.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "gc", "annotations": {"eks.amazonaws.com/role-arn": GC_ROLE}}}))
            .await;
        let mut repo = s3_repo(&s3.endpoint, &bucket, "unused");
        let loc = repo["s3"].as_object_mut().unwrap();
        loc.remove("accessKeySecret");
        loc.remove("secretKeySecret");
        loc.insert("region".into(), json!(s3.region));
        s3.put(&bucket, "w/out.tgz", "x").await;
        c.create(
            workflow(&c.ns, "w")
                .status_repo(repo)
                .set(&["spec", "artifactGC", "serviceAccountName"], json!("gc"))
                .node(
                    "w-1",
                    "main",
                    vec![with_strategy(key_only("out", "w/out.tgz"), COMPLETION)],
                )
                .0,
        )
        .await;
        Self {
            s3,
            bucket,
            sts,
            caller,
        }
    }

    /// The store is configured for the namespace, the service-account identity allowed, and
    /// STS is this one.
    fn configure(&self, config: &mut ControllerConfig) {
        config.policy = endpoints_policy_with(
            std::slice::from_ref(&self.s3.endpoint),
            "  identities: [secret, serviceAccount]\n",
        );
        config.sts = StsSettings {
            endpoint: Some(self.sts.url.clone()),
            ..Default::default()
        };
    }

    async fn assert_collected_as_gc(&self) {
        assert!(self.s3.keys(&self.bucket).await.is_empty());
        let calls = self.sts.calls();
        assert!(
            calls
                .iter()
                .any(|call| call.granted && call.caller == self.caller && call.role == GC_ROLE),
            "{calls:?}"
        );
    }
}

/// A policy that lets the namespace reach `endpoints`, with more `defaults:` lines; loopback
/// allowed, where every test store listens (the other stores the tests configure, too).
fn endpoints_policy_with(
    endpoints: &[String],
    more: &str,
) -> std::sync::Arc<artgc_core::policy::Policy> {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "allowLoopback: true\ndefaults:\n  endpoints: [{}]\n{more}",
        list.join(", ")
    );
    std::sync::Arc::new(artgc_core::policy::Policy::parse(&text).expect("policy"))
}

/// The controller acting as the ServiceAccount `deploy/manifests` creates, with exactly the
/// RBAC it ships (and leader election on, as deployed): a completion pass, a deletion pass and
/// the Lease all work, so no verb it needs is missing.
#[ignore = "needs the real API server: eval \"$(.ci/kube.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_enough_for_every_pass() {
    let Some(kube) = RealKube::from_env().await else {
        return;
    };
    let c = Cluster::new(&kube, "artgc-rbac").await;
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/manifests/rbac.yaml"
    ))
    .expect("deploy/manifests/rbac.yaml");
    let acting = c.acting_as(kube.as_deployed(&rbac).await);

    let passes = EveryPass::new(&c).await;
    let ctl = acting
        .start(|config| {
            config.leader_election = Some(artgc::controller::LeaderElection {
                namespace: "artgc".into(),
                lease_name: format!("artgc-{}", c.ns),
                identity: "rbac-test".into(),
                duration: 15,
            });
        })
        .await;
    passes.run(&c).await;
    ctl.shutdown().await;
    passes.assert_collected().await;
    let docs = serde_saphyr::from_multiple::<Value>(&rbac).expect("rbac.yaml");
    granted_verbs_were_used(&docs, "system:serviceaccount:artgc:artgc");
}

/// Workflows that make the controller use every verb it has: a completion pass (and its
/// Event), a deletion pass releasing the finalizer, and a pass that fails every time (its
/// repeated Warning Event becomes a series, patched). Credentials from Secrets, the repository
/// from the namespace's ConfigMap.
struct EveryPass {
    s3: S3Server,
    bucket: String,
}

impl EveryPass {
    async fn new(c: &Cluster) -> Self {
        let s3 = S3Server::start().await;
        let bucket = s3.bucket("passes").await;
        c.secret_repository(&s3, &bucket).await;
        for k in ["done/out.tgz", "gone/out.tgz"] {
            s3.put(&bucket, k, "x").await;
        }
        let wf = |name: &str, key: &str, strategy: &str| c.one(&s3, &bucket, name, key, strategy);
        c.create(wf("done", "done/out.tgz", COMPLETION).0).await;
        c.create(
            wf("gone", "gone/out.tgz", DELETION)
                .set(&["metadata", "finalizers"], json!([FINALIZER]))
                .0,
        )
        .await;
        // No such Secret: fails on every pass.
        let mut unreadable = full(
            "out",
            &s3.endpoint,
            &bucket,
            "failing/out.tgz",
            "no-such-secret",
        );
        unreadable["s3"]["region"] = json!(s3.region);
        c.create(
            workflow(&c.ns, "failing")
                .node(
                    "failing-1",
                    "main",
                    vec![with_strategy(unreadable, COMPLETION)],
                )
                .0,
        )
        .await;
        Self { s3, bucket }
    }

    /// Waits for each pass, deleting `gone` on the way.
    async fn run(&self, c: &Cluster) {
        until("the completion pass is recorded", async || {
            c.workflow("done")
                .await
                .is_some_and(|w| processed(&w, COMPLETION))
        })
        .await;
        c.delete("gone").await;
        until("the deleted Workflow is gone", async || {
            c.workflow("gone").await.is_none()
        })
        .await;
        until("the success Event", async || {
            c.event_reasons("done")
                .await
                .contains(&"ArtifactGCSucceeded".to_string())
        })
        .await;
        until("the failure Event repeated as a series", async || {
            c.event_series("failing").await >= 2
        })
        .await;
    }

    async fn assert_collected(&self) {
        assert!(self.s3.keys(&self.bucket).await.is_empty());
    }
}

/// Every verb the RBAC objects in `rbac` grant appears, answered 2xx, in the API server's audit
/// log for `user`: nothing is granted that artgc never uses. (Without the audit log it fails
/// in CI and says so elsewhere.)
fn granted_verbs_were_used(rbac: &[Value], user: &str) {
    let Some(path) = needed_var("ARTGC_TEST_KUBE_AUDIT", "the audit log: .ci/kube.sh") else {
        return;
    };
    let text = std::fs::read_to_string(&path).expect("audit log");
    let used: std::collections::BTreeSet<(String, String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user)
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c < 300)
        })
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let o = &e["objectRef"];
            let resource = match o["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", s(&o["resource"])),
                None => s(&o["resource"]),
            };
            (s(&o["apiGroup"]), resource, s(&e["verb"]))
        })
        .collect();
    let mut unused = Vec::new();
    for doc in rbac {
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        if !used.contains(&(g.clone(), r.clone(), v.clone())) {
                            unused.push(format!("{g}/{r} {v}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "granted but never used by {user}: {unused:?} (used: {used:?})"
    );
}

/// The chart's `rbac.scope=namespaced` render with the service-account identity enabled for
/// one namespace and account: the controller, as the chart's ServiceAccount with only that
/// render's Roles, collects through the workflow's GC service account (reading it, minting its
/// token), runs every other kind of pass and holds the Lease; and every verb those Roles grant
/// was used. Needs the real helm too (`ARTGC_HELM`, from `.ci/tools.sh`).
#[ignore = "needs the real API server: eval \"$(.ci/kube.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_namespaced_rbac_with_the_service_account_identity_is_enough() {
    let Some(kube) = RealKube::from_env().await else {
        return;
    };
    let Some(helm) = needed_var("ARTGC_HELM", "helm: eval \"$(.ci/tools.sh)\"") else {
        return;
    };
    let c = Cluster::new(&kube, "artgc-nsrbac").await;
    let release = Cluster::new(&kube, "artgc-release").await;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/artgc");
    let values = [
        "rbac.scope=namespaced".to_string(),
        format!("controller.namespaces={{{}}}", c.ns),
        "serviceAccountIdentity.enabled=true".to_string(),
        format!("serviceAccountIdentity.namespaces.{}={{gc}}", c.ns),
    ];
    let roles = kube
        .apply_namespaced_chart(&helm, chart, &release.ns, &values)
        .await;
    // The workflows' namespace's, the identity's, the Lease's and Argo's namespace's (its
    // ConfigMap by name).
    assert_eq!(roles.len(), 4, "{roles:?}");
    let sa_name = "artgc";
    let acting = c.acting_as(kube.client_as(&release.ns, sa_name).await);

    let irsa = Irsa::new(&c, "nsrbac").await;
    let passes = EveryPass::new(&c).await;
    let lease_ns = release.ns.clone();
    let ctl = acting
        .start(|config| {
            irsa.configure(config);
            config.leader_election = Some(artgc::controller::LeaderElection {
                namespace: lease_ns,
                lease_name: "artgc".into(),
                identity: "namespaced-rbac-test".into(),
                duration: 15,
            });
        })
        .await;
    until("collected through the service account", async || {
        c.workflow("w")
            .await
            .is_some_and(|w| processed(&w, COMPLETION))
    })
    .await;
    passes.run(&c).await;
    ctl.shutdown().await;
    irsa.assert_collected_as_gc().await;
    passes.assert_collected().await;
    let user = format!("system:serviceaccount:{}:{sa_name}", release.ns);
    granted_verbs_were_used(&roles, &user);
}
