//! A real kube-apiserver (and etcd), started by `.ci/kube.sh` and named by
//! `ARTGC_TEST_KUBECONFIG`: each test works in a namespace of its own on the shared server.
//!
//! Without that variable an asked-for (ignored) test fails, naming what to start.

use kube::api::{Api, DynamicObject, ListParams, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

/// The shared real API server, as its admin.
pub struct RealKube {
    admin: kube::Client,
    kubeconfig: kube::config::Kubeconfig,
}

impl RealKube {
    /// The server `ARTGC_TEST_KUBECONFIG` names; without one, the (ignored, asked-for) test fails.
    pub async fn from_env() -> Option<Self> {
        let path = crate::needed_var("ARTGC_TEST_KUBECONFIG", "the real API server: .ci/kube.sh")?;
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &Default::default())
            .await
            .expect("kube config");
        let admin = kube::Client::try_from(config).expect("client");
        Some(Self { admin, kubeconfig })
    }

    pub fn admin(&self) -> kube::Client {
        self.admin.clone()
    }

    /// A new namespace `prefix-<random>`, as the admin.
    pub async fn namespace(&self, prefix: &str) -> Namespace {
        let ns = format!("{prefix}-{:08x}", rand::random::<u32>());
        let space = Namespace {
            client: self.admin.clone(),
            ns,
        };
        space
            .create(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": space.ns}}),
            )
            .await;
        space
    }

    /// Namespace `ns`, which several tests may share: created unless it exists.
    pub async fn shared_namespace(&self, ns: &str) -> Namespace {
        let space = Namespace {
            client: self.admin.clone(),
            ns: ns.to_string(),
        };
        space
            .create_or(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                true,
            )
            .await;
        space
    }

    /// A client acting as ServiceAccount `artgc/artgc` bound to exactly the RBAC in
    /// `rbac_yaml` (objects that name their namespaces, as `deploy/manifests/rbac.yaml` does),
    /// applied as written. Tests that run at once apply the same objects: applying is
    /// idempotent.
    pub async fn as_deployed(&self, rbac_yaml: &str) -> kube::Client {
        let setup = self.shared_namespace("artgc").await;
        setup
            .create_or(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "artgc"}}),
                true,
            )
            .await;
        for obj in serde_saphyr::from_multiple::<Value>(rbac_yaml).expect("RBAC YAML") {
            setup.apply(obj).await;
        }
        self.client_as("artgc", "artgc").await
    }

    /// Renders `chart` as release `artgc` in `release_ns` with `helm template` and `values`
    /// (`--set` arguments), and applies its ServiceAccounts, Roles and RoleBindings: the render
    /// must grant nothing cluster-wide. Returns the Roles it applied.
    pub async fn apply_namespaced_chart(
        &self,
        helm: &str,
        chart: &str,
        release_ns: &str,
        values: &[String],
    ) -> Vec<Value> {
        let mut cmd = std::process::Command::new(helm);
        cmd.args(["template", "artgc", chart, "--namespace", release_ns]);
        for v in values {
            cmd.args(["--set", v]);
        }
        let out = cmd.output().expect("helm template");
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("UTF-8 render");
        let docs = serde_saphyr::from_multiple::<Value>(&text).expect("rendered YAML");
        let release = Namespace {
            client: self.admin.clone(),
            ns: release_ns.to_string(),
        };
        let mut roles = Vec::new();
        for d in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            assert!(
                !matches!(kind.as_str(), "ClusterRole" | "ClusterRoleBinding"),
                "a namespaced render grants nothing cluster-wide: {d}"
            );
            if matches!(kind.as_str(), "ServiceAccount" | "Role" | "RoleBinding") {
                if kind == "Role" {
                    roles.push(d.clone());
                }
                // A Role in Argo's namespace: that namespace, shared by the tests.
                if let Some(ns) = d["metadata"]["namespace"].as_str()
                    && ns != release_ns
                {
                    self.shared_namespace(ns).await;
                }
                release.apply(d).await;
            }
        }
        roles
    }

    /// A token for ServiceAccount `ns/name`, minted by the API server (TokenRequest).
    pub async fn token_for(&self, ns: &str, name: &str) -> String {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), ns);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"));
        out.status.and_then(|s| s.token).expect("token")
    }

    /// A client for the same server acting as ServiceAccount `ns/name`, with whatever RBAC it
    /// is bound to.
    pub async fn client_as(&self, ns: &str, name: &str) -> kube::Client {
        let token = self.token_for(ns, name).await;
        let cluster = self.kubeconfig.clusters[0]
            .cluster
            .clone()
            .expect("cluster");
        let text = serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {
                "server": cluster.server,
                "certificate-authority": cluster.certificate_authority,
            }}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
            "current-context": "c",
        }))
        .unwrap();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).expect("token kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("client")
    }
}

/// One namespace on the real server, and the client that writes into it.
#[derive(Clone)]
pub struct Namespace {
    pub client: kube::Client,
    pub ns: String,
}

impl Namespace {
    /// The API for objects like `v`: in `v`'s own namespace, else this one.
    pub fn api(&self, v: &Value) -> Api<DynamicObject> {
        let ar = resource(v);
        let ns = v["metadata"]["namespace"].as_str().unwrap_or(&self.ns);
        match cluster_scoped(v) {
            true => Api::all_with(self.client.clone(), &ar),
            false => Api::namespaced_with(self.client.clone(), ns, &ar),
        }
    }

    /// Creates `v` in this namespace, unless it names its own (or is cluster-scoped).
    pub async fn create(&self, v: Value) {
        self.create_or(v, false).await;
    }

    /// As [`Namespace::create`]; with `shared`, an object another test created already is fine.
    pub async fn create_or(&self, v: Value, shared: bool) {
        let v = self.placed(v);
        let obj: DynamicObject = serde_json::from_value(v.clone()).expect("object");
        match self.api(&v).create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if shared && s.code == 409 => {}
            Err(e) => panic!("creating {} {}: {e}", v["kind"], v["metadata"]["name"]),
        }
    }

    /// Server-side applies `v` (placed as in [`Namespace::create`]): for objects several tests
    /// share, which must be exactly as written now.
    pub async fn apply(&self, v: Value) {
        let v = self.placed(v);
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        let params = PatchParams::apply("artgc-tests").force();
        self.api(&v)
            .patch(&name, &params, &kube::api::Patch::Apply(&v))
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }

    /// The object `api_version`/`kind` named `name` in this namespace, if it exists.
    pub async fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<Value> {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
        let obj = self
            .api(&probe)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("getting {kind} {name}: {e}"));
        obj.map(|o| serde_json::to_value(o).unwrap())
    }

    /// Deletes the object `api_version`/`kind` named `name` in this namespace.
    pub async fn delete(&self, api_version: &str, kind: &str, name: &str) {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
        self.api(&probe)
            .delete(name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {kind} {name}: {e}"));
    }

    /// Every `api_version`/`kind` object in this namespace.
    pub async fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
        let list = self
            .api(&probe)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("listing {kind}: {e}"));
        list.items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    fn placed(&self, mut v: Value) -> Value {
        if !cluster_scoped(&v) && v["metadata"]["namespace"].is_null() {
            v["metadata"]["namespace"] = json!(self.ns);
        }
        v
    }
}

fn resource(v: &Value) -> ApiResource {
    let api_version = v["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = v["kind"].as_str().expect("kind");
    let plural = match kind {
        "Namespace" => "namespaces",
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "ServiceAccount" => "serviceaccounts",
        "Event" => "events",
        "Lease" => "leases",
        "Pod" => "pods",
        "CustomResourceDefinition" => "customresourcedefinitions",
        "WorkflowTaskResult" => "workflowtaskresults",
        "WorkflowTemplate" => "workflowtemplates",
        "Workflow" => "workflows",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        other => panic!("no plural for {other}"),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

fn cluster_scoped(v: &Value) -> bool {
    matches!(
        v["kind"].as_str(),
        Some("Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition")
    )
}
