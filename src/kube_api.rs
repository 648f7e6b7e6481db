//! Reading from the Kubernetes API: Workflows (as raw JSON for writing back, as a tolerant typed
//! view for the watch) and the ConfigMaps and Secrets one workflow's plan needs.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cache::Cache;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use artgc_core::cluster::{ArgoConfigMapRef, ClusterState};
use artgc_core::inventory::WorkflowInput;
use artgc_core::model::Workflow;
use artgc_core::policy::Policy;

pub fn workflow_resource() -> ApiResource {
    ApiResource {
        group: "argoproj.io".into(),
        version: "v1alpha1".into(),
        api_version: "argoproj.io/v1alpha1".into(),
        kind: "Workflow".into(),
        plural: "workflows".into(),
    }
}

/// Workflows in one namespace, or in all.
pub fn workflows(client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = workflow_resource();
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// A Workflow as the watch delivers it: its metadata, and its JSON text to be read one at a time
/// (a list page of typed Workflows takes ~75 KB each; the text ~8 KB). A malformed Workflow
/// must not fail the watch of all the others, so reading it comes later too.
#[derive(Debug, Clone)]
pub struct WatchedWorkflow {
    pub metadata: ObjectMeta,
    pub raw: Box<serde_json::value::RawValue>,
}

impl WatchedWorkflow {
    pub fn input(&self) -> WorkflowInput {
        let ns = self.metadata.namespace.as_deref().unwrap_or("default");
        WorkflowInput::from_json(self.raw.get(), ns)
    }
}

impl<'de> Deserialize<'de> for WatchedWorkflow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct MetaOnly {
            #[serde(default)]
            metadata: ObjectMeta,
        }
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let metadata = serde_json::from_str::<MetaOnly>(raw.get())
            .map(|m| m.metadata)
            .unwrap_or_default();
        Ok(Self { metadata, raw })
    }
}

impl kube::Resource for WatchedWorkflow {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Workflow".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "argoproj.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "workflows".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// ConfigMaps by (namespace, name); `None`: not found.
type ConfigMapCache = Cache<(String, String), Option<ConfigMap>>;

/// Reads the ConfigMaps and Secrets a plan needs. ConfigMaps are cached for a short time (many
/// workflows share one repository); Secrets are read fresh for each pass.
pub struct ClusterReader {
    client: Client,
    argo_config_map: ArgoConfigMapRef,
    policy: Arc<Policy>,
    config_maps: ConfigMapCache,
    /// [`ClusterReader::persistence_state`], cached as ConfigMaps are: the watch asks on every
    /// change of an offloaded Workflow.
    persistence: Mutex<Option<(Instant, ClusterState)>>,
    ttl: Duration,
    /// The longest one batch of reads for a workflow may take: the watch reads through here
    /// too, and kube's client has no read timeout, so a silent API server would stop it.
    timeout: Duration,
}

/// A read that ran past the reader's timeout, as the client's own errors look.
fn timed_out(what: &str, after: Duration) -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer from the API server within {after:?}"),
    )))
}

/// ConfigMaps cached at once (repositories are few; a namespace per tenant at most).
const MAX_CACHED_CONFIG_MAPS: usize = 4096;

/// How long a ConfigMap read is believed (many workflows share one repository).
const CONFIG_MAP_TTL: Duration = Duration::from_secs(30);

/// A read the API server refuses for this object (forbidden, an invalid name, not found) gives
/// nothing: the planner then reports what is missing for the artifact that needed it, as a
/// failure of that workflow's pass. Throttling and server errors stay errors, to retry.
fn absent_if_denied<T>(r: Result<Option<T>, kube::Error>) -> Result<Option<T>, kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => Ok(None),
        other => other,
    }
}

impl ClusterReader {
    pub fn new(client: Client, argo_config_map: ArgoConfigMapRef, policy: Arc<Policy>) -> Self {
        Self {
            client,
            argo_config_map,
            policy,
            config_maps: Cache::new(MAX_CACHED_CONFIG_MAPS).with_ttl(CONFIG_MAP_TTL),
            persistence: Mutex::new(None),
            ttl: CONFIG_MAP_TTL,
            timeout: Duration::from_secs(30),
        }
    }

    /// Bounds each batch of reads ([`Self::state_for`], [`Self::persistence_state`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, kube::Error> {
        let key = (ns.to_string(), name.to_string());
        self.config_maps
            .get_or_try_insert(&key, async {
                absent_if_denied(
                    Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                        .get_opt(name)
                        .await,
                )
            })
            .await
    }

    /// Argo's database settings and their two Secrets (in the controller's namespace), for
    /// reading offloaded node status: the controller ConfigMap and those Secrets only.
    pub async fn persistence_state(&self) -> Result<ClusterState, kube::Error> {
        tokio::time::timeout(self.timeout, self.read_persistence_state())
            .await
            .map_err(|_| timed_out("reading Argo's persistence settings", self.timeout))?
    }

    async fn read_persistence_state(&self) -> Result<ClusterState, kube::Error> {
        if let Some((at, state)) = &*self.persistence.lock().expect("lock")
            && at.elapsed() < self.ttl
        {
            return Ok(state.clone());
        }
        let mut state = ClusterState::new(self.argo_config_map.clone());
        let cns = self.argo_config_map.namespace.clone();
        if let Some(cm) = self.config_map(&cns, &self.argo_config_map.name).await? {
            state.insert_config_map(cm);
        }
        if let Ok(Some(p)) = state.persistence() {
            let api = Api::<Secret>::namespaced(self.client.clone(), &cns);
            let mut names = vec![p.user_secret.name, p.password_secret.name];
            names.dedup();
            for name in names {
                if let Some(s) = absent_if_denied(api.get_opt(&name).await)? {
                    state.insert_secret(s);
                }
            }
        }
        *self.persistence.lock().expect("lock") = Some((Instant::now(), state.clone()));
        Ok(state)
    }

    /// What planning `wf` needs: the repository ConfigMaps when its status has no resolved
    /// repository, and, with `secrets` (the workflow's own, see [`artgc_core::reads::secrets`]), those
    /// Secrets and the ones its repository names.
    pub async fn state_for(
        &self,
        wf: &Workflow,
        secrets: Option<BTreeSet<String>>,
    ) -> Result<ClusterState, kube::Error> {
        tokio::time::timeout(self.timeout, self.read_state_for(wf, secrets))
            .await
            .map_err(|_| {
                timed_out(
                    "reading the workflow's ConfigMaps and Secrets",
                    self.timeout,
                )
            })?
    }

    async fn read_state_for(
        &self,
        wf: &Workflow,
        secrets: Option<BTreeSet<String>>,
    ) -> Result<ClusterState, kube::Error> {
        let mut state =
            ClusterState::new(self.argo_config_map.clone()).with_policy(self.policy.clone());
        let ns = wf.namespace().to_string();
        let wanted = artgc_core::reads::config_maps(wf, &self.argo_config_map);
        for (cns, name) in wanted {
            if let Some(cm) = self.config_map(&cns, &name).await? {
                state.insert_config_map(cm);
            }
        }
        if self.policy.uses_namespace_labels()
            && let Some(n) = absent_if_denied(
                Api::<Namespace>::all(self.client.clone())
                    .get_opt(&ns)
                    .await,
            )?
        {
            state.insert_namespace_labels(&ns, n.metadata.labels.unwrap_or_default());
        }
        if let Some(mut names) = secrets {
            if let Ok(repo) = state.repository_for(wf) {
                names.extend(artgc_core::reads::secrets_of_repository(&repo));
            }
            let api = Api::<Secret>::namespaced(self.client.clone(), &ns);
            for name in names {
                if let Some(s) = absent_if_denied(api.get_opt(&name).await)? {
                    state.insert_secret(s);
                }
            }
            if self.policy.uses_service_accounts() {
                let api = Api::<ServiceAccount>::namespaced(self.client.clone(), &ns);
                for name in artgc_core::reads::gc_service_accounts(wf) {
                    if let Some(sa) = absent_if_denied(api.get_opt(&name).await)? {
                        state.insert_service_account(sa);
                    }
                }
            }
        }
        Ok(state)
    }
}

/// The reference an Event about the Workflow `raw` names.
pub fn workflow_ref(raw: &Value) -> k8s_openapi::api::core::v1::ObjectReference {
    let m = &raw["metadata"];
    let s = |v: &Value| v.as_str().map(str::to_string);
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("argoproj.io/v1alpha1".into()),
        kind: Some("Workflow".into()),
        name: s(&m["name"]),
        namespace: s(&m["namespace"]),
        uid: s(&m["uid"]),
        resource_version: s(&m["resourceVersion"]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_workflow_still_deserializes_for_the_watch() {
        let w: WatchedWorkflow = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bad", "namespace": "ns"},
            "status": {"nodes": "not a map"}}))
        .unwrap();
        assert_eq!(w.metadata.name.as_deref(), Some("bad"));
        assert!(matches!(w.input(), WorkflowInput::Invalid { .. }));
    }
}
