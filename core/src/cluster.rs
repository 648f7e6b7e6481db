//! What the planner may read besides the Workflow itself: ConfigMaps (artifact repositories and
//! the Argo controller's config) and Secrets (credentials). Filled from manifests by the CLI and
//! from the API server by the controller; the lookups here are pure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use serde::Deserialize;

use crate::error::ResolveError;
use crate::model::{ANNOTATION_DEFAULT_REPOSITORY, ArtifactLocation, SecretKeySelector, Workflow};
use crate::policy::{Endpoint, Grant, Policy};

/// The ServiceAccount annotation naming the IAM role its tokens may assume (EKS IRSA).
pub const ANNOTATION_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";

/// The ConfigMap holding namespace-level artifact repositories (Argo's default name).
pub const REPOSITORIES_CONFIGMAP: &str = "artifact-repositories";

/// Where Argo's workflow-controller keeps its config (the global artifact repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgoConfigMapRef {
    pub namespace: String,
    pub name: String,
}

impl Default for ArgoConfigMapRef {
    fn default() -> Self {
        Self {
            namespace: "argo".into(),
            name: "workflow-controller-configmap".into(),
        }
    }
}

/// ConfigMaps and Secrets by namespace and name.
#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    config_maps: HashMap<(String, String), ConfigMap>,
    secrets: HashMap<(String, String), Secret>,
    service_accounts: HashMap<(String, String), ServiceAccount>,
    namespace_labels: HashMap<String, BTreeMap<String, String>>,
    pub controller_config: ArgoConfigMapRef,
    pub policy: Arc<Policy>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A repository as a ConfigMap value holds it (`s3: {...}`, `archiveLogs`, ...).
#[derive(Debug, Deserialize)]
struct ControllerConfig {
    #[serde(default, rename = "artifactRepository")]
    artifact_repository: Option<ArtifactLocation>,
    /// Kept as YAML for [`crate::persistence::parse`].
    #[serde(default)]
    persistence: Option<serde_json::Value>,
}

impl ClusterState {
    pub fn new(controller_config: ArgoConfigMapRef) -> Self {
        Self {
            controller_config,
            ..Default::default()
        }
    }

    pub fn insert_config_map(&mut self, cm: ConfigMap) {
        self.config_maps.insert(key_of(&cm.metadata), cm);
    }

    pub fn insert_secret(&mut self, secret: Secret) {
        self.secrets.insert(key_of(&secret.metadata), secret);
    }

    pub fn insert_service_account(&mut self, sa: ServiceAccount) {
        self.service_accounts.insert(key_of(&sa.metadata), sa);
    }

    pub fn insert_namespace_labels(&mut self, namespace: &str, labels: BTreeMap<String, String>) {
        self.namespace_labels.insert(namespace.to_string(), labels);
    }

    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// Takes in everything `other` holds.
    pub fn absorb(&mut self, other: ClusterState) {
        self.config_maps.extend(other.config_maps);
        self.secrets.extend(other.secrets);
        self.service_accounts.extend(other.service_accounts);
        self.namespace_labels.extend(other.namespace_labels);
    }

    /// What the policy grants the namespace.
    pub fn grant_for(&self, namespace: &str) -> &Grant {
        self.policy
            .grant_for(namespace, self.namespace_labels.get(namespace))
    }

    /// The role a ServiceAccount of the namespace may assume, from its IRSA annotation.
    pub fn service_account_role(&self, namespace: &str, name: &str) -> Result<String, String> {
        let sa = self
            .service_accounts
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| format!("ServiceAccount {namespace}/{name} not found"))?;
        sa.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_ROLE_ARN))
            .filter(|r| !r.is_empty())
            .cloned()
            .ok_or_else(|| {
                format!("ServiceAccount {namespace}/{name} has no {ANNOTATION_ROLE_ARN} annotation")
            })
    }

    /// Endpoints configured for workflows of `namespace`, in canonical form: every repository
    /// of the ConfigMaps artgc reads for it (its own namespace's and the Argo controller
    /// namespace's) and the controller's own repository. A Workflow's status never adds one:
    /// its author writes it.
    pub fn configured_endpoints(&self, namespace: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mut add = |loc: &ArtifactLocation| {
            if let Some(s3) = &loc.s3
                && let Some(e) = s3.endpoint.as_deref().filter(|e| !e.is_empty())
                && let Ok(c) = self
                    .policy
                    .canonical(e, s3.insecure == Some(true), namespace)
            {
                out.push(c);
            }
        };
        for ((ns, _), cm) in &self.config_maps {
            if ns != namespace && *ns != self.controller_config.namespace {
                continue;
            }
            if key_of(&cm.metadata).1 == self.controller_config.name
                && *ns == self.controller_config.namespace
            {
                continue;
            }
            for text in cm.data.iter().flat_map(|d| d.values()) {
                if let Ok(loc) = serde_saphyr::from_str::<ArtifactLocation>(text) {
                    add(&loc);
                }
            }
        }
        if let Ok(loc) = self.controller_repository() {
            add(&loc);
        }
        out
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// One value of a Secret in the workflow's namespace. Argo reads credentials only there,
    /// and so does artgc, whichever namespace the repository config came from.
    pub fn secret_value(
        &self,
        namespace: &str,
        selector: &SecretKeySelector,
        field: &str,
    ) -> Result<Vec<u8>, ResolveError> {
        let secret = self
            .secrets
            .get(&(namespace.to_string(), selector.name.clone()))
            .ok_or_else(|| {
                ResolveError::Secret(format!(
                    "{field}: Secret {namespace}/{} not found",
                    selector.name
                ))
            })?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&selector.key))
            .ok_or_else(|| {
                ResolveError::Secret(format!(
                    "{field}: Secret {namespace}/{} has no key {:?}",
                    selector.name, selector.key
                ))
            })?;
        Ok(value.0.clone())
    }

    /// The artifact repository a workflow uses for artifacts without a complete location:
    /// the one frozen into its status when it started, else resolved as Argo resolves it.
    pub fn repository_for(&self, wf: &Workflow) -> Result<ArtifactLocation, ResolveError> {
        let ns = wf.namespace();
        let cns = self.controller_config.namespace.as_str();
        let set = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(r) = &wf.status.artifact_repository_ref {
            if let Some(repo) = &r.artifact_repository {
                return Ok(repo.clone());
            }
            // A ref recorded without the repository itself (Argo before 3.1): Argo's `Get`
            // reads exactly that one, no fallback.
            if r.default == Some(true) {
                return self.controller_repository();
            }
            if r.config_map.is_some() || r.key.is_some() || r.namespace.is_some() {
                let field = "status.artifactRepositoryRef";
                let at = set(&r.namespace).unwrap_or_else(|| ns.to_string());
                if !ref_namespace_allowed(&at, ns, cns) {
                    return Err(ResolveError::RefNotAllowed(format!(
                        "{field}.namespace: {at:?} is neither the workflow's namespace nor Argo's controller namespace ({cns}); artgc reads no other namespace's ConfigMap"
                    )));
                }
                let name = set(&r.config_map).unwrap_or_else(|| REPOSITORIES_CONFIGMAP.into());
                let cm = self.config_map(&at, &name).ok_or_else(|| {
                    ResolveError::Repository(format!("{field}: ConfigMap {at}/{name} not found"))
                })?;
                return repository_in(cm, set(&r.key).as_deref(), field)?.ok_or_else(|| {
                    ResolveError::Repository(format!(
                        "{field}: ConfigMap {at}/{name} has no key {:?} (nor a default-key annotation naming one it has)",
                        set(&r.key).unwrap_or_default()
                    ))
                });
            }
        }
        // Argo's `Resolve`: each candidate in turn, moving on when its ConfigMap or key is
        // missing; a candidate that exists but does not parse is an error.
        let spec_ref = wf.spec.artifact_repository_ref.as_ref().or_else(|| {
            wf.stored_spec()
                .and_then(|s| s.artifact_repository_ref.as_ref())
        });
        match spec_ref {
            Some(r) => {
                let field = "spec.artifactRepositoryRef";
                let name = set(&r.config_map).unwrap_or_else(|| REPOSITORIES_CONFIGMAP.into());
                let key = set(&r.key);
                for at in [ns, cns] {
                    if let Some(cm) = self.config_map(at, &name)
                        && let Some(repo) = repository_in(cm, key.as_deref(), field)?
                    {
                        return Ok(repo);
                    }
                }
                Err(ResolveError::Repository(format!(
                    "{field}: no ConfigMap {name:?} with key {:?} in namespace {ns} or {cns}",
                    key.unwrap_or_else(|| "(its default-key annotation)".into())
                )))
            }
            None => {
                if let Some(cm) = self.config_map(ns, REPOSITORIES_CONFIGMAP)
                    && let Some(repo) = repository_in(cm, None, "namespace default repository")?
                {
                    return Ok(repo);
                }
                self.controller_repository()
            }
        }
    }

    /// `artifactRepository` from the workflow-controller ConfigMap, either as its own data key
    /// or inside the older single `config` key.
    pub fn controller_repository(&self) -> Result<ArtifactLocation, ResolveError> {
        let ArgoConfigMapRef { namespace, name } = &self.controller_config;
        let missing = || {
            ResolveError::Repository(format!(
                "no artifact repository: no artifactRepositoryRef, no {REPOSITORIES_CONFIGMAP} ConfigMap in the workflow's namespace, and no artifactRepository in ConfigMap {namespace}/{name}"
            ))
        };
        let cm = self.config_map(namespace, name).ok_or_else(missing)?;
        let data = cm.data.as_ref().ok_or_else(missing)?;
        let bad = |field: &str, e: serde_saphyr::Error| {
            ResolveError::Repository(format!(
                "ConfigMap {namespace}/{name} {field}: {}",
                crate::yaml::unparsed(&e)
            ))
        };
        if let Some(text) = data.get("artifactRepository") {
            return serde_saphyr::from_str::<ArtifactLocation>(text)
                .map_err(|e| bad("data.artifactRepository", e));
        }
        if let Some(text) = data.get("config") {
            let cfg = serde_saphyr::from_str::<ControllerConfig>(text)
                .map_err(|e| bad("data.config", e))?;
            return cfg.artifact_repository.ok_or_else(missing);
        }
        Err(missing())
    }
}

impl ClusterState {
    /// Argo's database for offloaded node status, from `persistence` in the workflow-controller
    /// ConfigMap (its own data key, or inside the older `config` key). `Ok(None)`: none is
    /// configured (or the ConfigMap is absent).
    pub fn persistence(&self) -> Result<Option<crate::persistence::Persistence>, String> {
        let ArgoConfigMapRef { namespace, name } = &self.controller_config;
        let Some(data) = self
            .config_map(namespace, name)
            .and_then(|cm| cm.data.as_ref())
        else {
            return Ok(None);
        };
        let at = |e: String| format!("ConfigMap {namespace}/{name}: {e}");
        if let Some(text) = data.get("persistence") {
            return crate::persistence::parse(text).map_err(at);
        }
        if let Some(text) = data.get("config") {
            let cfg = serde_saphyr::from_str::<ControllerConfig>(text)
                .map_err(|e| at(format!("data.config: {}", crate::yaml::unparsed(&e))))?;
            if let Some(p) = cfg.persistence {
                let text = serde_json::to_string(&p).map_err(|e| at(e.to_string()))?;
                return crate::persistence::parse(&text).map_err(at);
            }
        }
        Ok(None)
    }
}

/// A ref recorded in status may name only the workflow's own namespace or Argo's controller
/// namespace, the two Argo's `Get` reads: the namespace is the Workflow author's to write.
pub fn ref_namespace_allowed(at: &str, namespace: &str, controller_namespace: &str) -> bool {
    at == namespace || at == controller_namespace
}

/// The repository under `key` (or the annotated default key) of an `artifact-repositories`
/// style ConfigMap; `None` when it has no such key (Argo moves on to the next candidate).
fn repository_in(
    cm: &ConfigMap,
    key: Option<&str>,
    field: &str,
) -> Result<Option<ArtifactLocation>, ResolveError> {
    let (ns, name) = key_of(&cm.metadata);
    let default_key = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_DEFAULT_REPOSITORY))
        .map(String::as_str);
    let Some(key) = key.or(default_key) else {
        return Ok(None);
    };
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) else {
        return Ok(None);
    };
    serde_saphyr::from_str::<ArtifactLocation>(text)
        .map(Some)
        .map_err(|e| {
            ResolveError::Repository(format!(
                "{field}: ConfigMap {ns}/{name} key {key:?}: {}",
                crate::yaml::unparsed(&e)
            ))
        })
}
