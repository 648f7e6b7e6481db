//! The parts of Argo's `Workflow` that artifact GC reads.
//!
//! Only the fields artgc needs, every one optional, unknown fields ignored, so objects from
//! Argo 3.4 up to 4.x all parse. The controller writes back with patches on specific paths, never
//! by re-serialising this model, so nothing it does not know about is lost.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Label Argo sets to `"true"` once a workflow has finished.
pub const LABEL_COMPLETED: &str = "workflows.argoproj.io/completed";
/// Label naming the Argo controller instance that owns a workflow.
pub const LABEL_INSTANCE_ID: &str = "workflows.argoproj.io/controller-instanceid";
/// Annotation on an `artifact-repositories` ConfigMap naming its default key.
pub const ANNOTATION_DEFAULT_REPOSITORY: &str = "workflows.argoproj.io/default-artifact-repository";
/// Artifacts whose probe found a file, as `node/artifact` lines: written before deleting, so a
/// later pass never mistakes the gone file for a directory and lists under `key/`.
pub const ANNOTATION_PROBED_FILES: &str = "artgc.io/probed-files";

/// Failed deletion passes so far: kept on the Workflow so that `forceFinalizerRemoval`'s budget
/// survives a restart of artgc.
pub const ANNOTATION_DELETION_ATTEMPTS: &str = "artgc.io/deletion-attempts";

/// Artifacts artgc deleted of a workflow whose nodes Argo offloaded to its database, as
/// `node/artifact` lines (or, when long, `gzip:` and the base64 of those lines gzipped): artgc
/// never writes Argo's database, so its record of an offloaded workflow lives here. Read back
/// on every pass as `deleted: true`; a mark can only make artgc keep more.
pub const ANNOTATION_OFFLOADED_DELETED: &str = "artgc.io/offloaded-deleted";

/// When artgc first saw the workflow finished (RFC 3339), written by the controller: the latest
/// a version of the workflow's keys can be its output. Only ever lowered: a value later than
/// the moment a pass sees it is replaced by that moment.
pub const ANNOTATION_FINISHED_SEEN: &str = "artgc.io/finished-seen";

/// The (node, artifact) pairs of an [`ANNOTATION_PROBED_FILES`] value.
pub fn parse_probed_files(text: &str) -> std::collections::HashSet<(&str, &str)> {
    text.lines()
        .filter_map(|l| l.trim().rsplit_once('/'))
        .collect()
}

/// The finalizer that holds a deleting workflow until its artifacts are gone.
pub const FINALIZER_ARTIFACT_GC: &str = "workflows.argoproj.io/artifact-gc";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_default")]
    pub spec: WorkflowSpec,
    #[serde(default, deserialize_with = "null_default")]
    pub status: WorkflowStatus,
    /// Set by [`Workflow::apply_template_defaults`]: where the templates' outputs went by
    /// default, and whether some template set a complete archive location of its own (then a
    /// template artgc cannot find may have archived elsewhere).
    #[serde(skip)]
    pub archive_defaults: ArchiveDefaults,
}

/// What `templateDefaults` says of archive locations, before it is merged into the templates.
#[derive(Debug, Clone, Default)]
pub struct ArchiveDefaults {
    pub location: Option<ArtifactLocation>,
    pub own_locations: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    #[serde(default, deserialize_with = "null_default")]
    pub templates: Vec<Template>,
    #[serde(default, rename = "artifactGC")]
    pub artifact_gc: Option<WorkflowArtifactGc>,
    #[serde(default)]
    pub artifact_repository_ref: Option<ArtifactRepositoryRef>,
    #[serde(default)]
    pub workflow_template_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub arguments: Option<Arguments>,
    /// Merged by Argo into every template it runs (`mergedTemplateDefaultsInto`).
    #[serde(default)]
    pub template_defaults: Option<Template>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowArtifactGc {
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub force_finalizer_removal: Option<bool>,
    /// The account Argo's GC pod runs as (namespace `default` when unset).
    #[serde(default)]
    pub service_account_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRepositoryRef {
    #[serde(default)]
    pub config_map: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Arguments {
    #[serde(default, deserialize_with = "null_default")]
    pub artifacts: Vec<Artifact>,
    #[serde(default, deserialize_with = "null_default")]
    pub parameters: Vec<Parameter>,
}

/// A workflow argument; only a literal `value` can be known here (not `valueFrom`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Parameter {
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Argo's `AnyString`: text, or a number or boolean written without quotes.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub archive_location: Option<ArtifactLocation>,
    #[serde(default)]
    pub inputs: Option<IoArtifacts>,
    #[serde(default)]
    pub outputs: Option<IoArtifacts>,
    /// Steps; only read to find inline templates.
    #[serde(default)]
    pub steps: Option<Vec<Vec<StepOrTask>>>,
    #[serde(default)]
    pub dag: Option<Dag>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Dag {
    #[serde(default, deserialize_with = "null_default")]
    pub tasks: Vec<StepOrTask>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StepOrTask {
    #[serde(default)]
    pub inline: Option<Box<Template>>,
}

impl Template {
    /// Templates defined inline in this template's steps or DAG tasks.
    pub fn inline_templates(&self) -> impl Iterator<Item = &Template> {
        let steps = self.steps.iter().flatten().flatten();
        let tasks = self.dag.iter().flat_map(|d| d.tasks.iter());
        steps.chain(tasks).filter_map(|s| s.inline.as_deref())
    }

    pub fn artifacts(&self) -> impl Iterator<Item = &Artifact> {
        let inputs = self.inputs.iter().flat_map(|i| i.artifacts.iter());
        inputs.chain(self.outputs.iter().flat_map(|o| o.artifacts.iter()))
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct IoArtifacts {
    #[serde(default, deserialize_with = "null_default")]
    pub artifacts: Vec<Artifact>,
    /// A node's input parameters as it ran (their values substituted).
    #[serde(default, deserialize_with = "null_default")]
    pub parameters: Vec<Parameter>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, rename = "artifactGC")]
    pub artifact_gc: Option<ArtifactGc>,
    #[serde(default, deserialize_with = "null_default")]
    pub deleted: bool,
    /// How the executor packed it; only `none` matters here (a directory stays many keys).
    #[serde(default)]
    pub archive: Option<ArchiveStrategy>,
    #[serde(flatten)]
    pub location: ArtifactLocation,
}

impl Artifact {
    /// `archive: {none: {}}`: a directory output was uploaded as many keys under its key.
    pub fn archive_none(&self) -> bool {
        self.archive.as_ref().is_some_and(|a| a.none.is_some())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ArchiveStrategy {
    #[serde(default)]
    pub none: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactGc {
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub service_account_name: Option<String>,
}

/// Where an artifact lives, or the base location of a repository / `archiveLocation`.
/// One field per driver; Argo allows at most one to be set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactLocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oss: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifactory: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdfs: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<serde_json::Value>,
}

impl ArtifactLocation {
    /// The driver in use other than S3, if any.
    pub fn other_driver(&self) -> Option<&'static str> {
        [
            ("gcs", &self.gcs),
            ("azure", &self.azure),
            ("oss", &self.oss),
            ("http", &self.http),
            ("git", &self.git),
            ("artifactory", &self.artifactory),
            ("hdfs", &self.hdfs),
            ("raw", &self.raw),
            ("plugin", &self.plugin),
        ]
        .into_iter()
        .find_map(|(name, v)| v.as_ref().map(|_| name))
    }

    /// Argo's `HasLocation` for S3: endpoint, bucket and key all set.
    pub fn has_complete_s3(&self) -> bool {
        self.s3.as_ref().is_some_and(S3Location::is_complete)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Location {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_secret: Option<SecretKeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_secret: Option<SecretKeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_secret: Option<SecretKeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeySelector>,
    #[serde(default, rename = "roleARN", skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(
        default,
        rename = "useSDKCreds",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_sdk_creds: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressing_style: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_options: Option<EncryptionOptions>,
}

/// Argo's `S3EncryptionOptions`: how the executor encrypted what it uploaded.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_encryption_context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_encryption: Option<bool>,
    /// SSE-C: the customer key. Such an object cannot even be HEADed without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_customer_key_secret: Option<SecretKeySelector>,
}

/// Treats an explicit `null` like a missing field, as Go's JSON decoding does.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn non_empty(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

impl S3Location {
    pub fn is_complete(&self) -> bool {
        non_empty(&self.endpoint) && non_empty(&self.bucket) && non_empty(&self.key)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub struct SecretKeySelector {
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub key: String,
}

/// How a workflow's nodes were stored, so that a write-back can keep the same form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEncoding {
    Plain,
    Gzip,
    Zstd,
    Brotli,
}

impl NodeEncoding {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Brotli => "brotli",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub nodes: Option<BTreeMap<String, NodeStatus>>,
    #[serde(default)]
    pub compressed_nodes: Option<String>,
    #[serde(default)]
    pub offload_node_status_version: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub stored_templates: BTreeMap<String, Template>,
    #[serde(default)]
    pub stored_workflow_template_spec: Option<WorkflowSpec>,
    #[serde(default)]
    pub artifact_repository_ref: Option<ArtifactRepositoryRefStatus>,
    #[serde(default, rename = "artifactGCStatus")]
    pub artifact_gc_status: Option<ArtifactGcStatus>,
    /// Set where [`crate::nodes::unpack`] read `compressedNodes` into `nodes` (once, as the
    /// object was read): how they were encoded, or why they could not be read.
    #[serde(skip)]
    pub unpacked: Option<Result<NodeEncoding, String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRepositoryRefStatus {
    #[serde(default)]
    pub config_map: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Argo's controller-wide default repository was used.
    #[serde(default)]
    pub default: Option<bool>,
    #[serde(default)]
    pub artifact_repository: Option<ArtifactLocation>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactGcStatus {
    #[serde(default, deserialize_with = "null_default")]
    pub strategies_processed: BTreeMap<String, bool>,
    #[serde(default, deserialize_with = "null_default")]
    pub pods_recouped: BTreeMap<String, bool>,
    #[serde(default, deserialize_with = "null_default")]
    pub not_specified: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub node_type: Option<String>,
    #[serde(default)]
    pub template_name: Option<String>,
    #[serde(default)]
    pub template_ref: Option<TemplateRef>,
    /// Where `template_name` is defined: empty or `local/...` for the workflow's own templates,
    /// `namespaced/<wt>` or `cluster/<cwt>` for a WorkflowTemplate's (a bare `<wt>` is namespaced).
    #[serde(default)]
    pub template_scope: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub inputs: Option<IoArtifacts>,
    #[serde(default)]
    pub outputs: Option<IoArtifacts>,
    #[serde(default)]
    pub memoization_status: Option<MemoizationStatus>,
}

impl NodeStatus {
    /// A memoization cache hit: its outputs are the producer workflow's, not this one's.
    pub fn is_cache_hit(&self) -> bool {
        self.memoization_status.as_ref().is_some_and(|m| m.hit)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoizationStatus {
    #[serde(default, deserialize_with = "null_default")]
    pub hit: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub cluster_scope: Option<bool>,
}

impl Workflow {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(key).map(String::as_str)
    }

    pub fn is_being_deleted(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// Finished in Argo's terms (`artifactGCStrategiesReady`): a final phase, and the
    /// `completed` label or a deletion under way (a deleted workflow may never get the label).
    pub fn is_finished(&self) -> bool {
        let final_phase = matches!(
            self.status.phase.as_deref(),
            Some("Succeeded" | "Failed" | "Error")
        );
        final_phase && (self.label(LABEL_COMPLETED) == Some("true") || self.is_being_deleted())
    }

    /// Applies `templateDefaults` as Argo does before running a template: the workflow's own,
    /// over the stored WorkflowTemplate spec's, merged under each template's `archiveLocation`
    /// (the only part of a template that says where its outputs went). Argo's own GC reads the
    /// raw templates and misses a default archive location.
    pub fn apply_template_defaults(&mut self) {
        let own = self
            .spec
            .template_defaults
            .as_ref()
            .and_then(|d| d.archive_location.as_ref());
        let stored = self
            .stored_spec()
            .and_then(|s| s.template_defaults.as_ref())
            .and_then(|d| d.archive_location.as_ref());
        let defaults = match (stored, own) {
            (None, None) => return,
            (Some(d), None) | (None, Some(d)) => serde_json::to_value(d),
            (Some(s), Some(o)) => serde_json::to_value(s).and_then(|mut s| {
                merge_json(&mut s, serde_json::to_value(o)?);
                Ok(s)
            }),
        };
        let Ok(defaults) = defaults else { return };
        let complete = |l: &ArtifactLocation| l.has_complete_s3() || l.other_driver().is_some();
        self.archive_defaults = ArchiveDefaults {
            location: serde_json::from_value(defaults.clone()).ok(),
            own_locations: self
                .all_templates()
                .iter()
                .any(|t| t.archive_location.as_ref().is_some_and(complete)),
        };
        let apply = |t: &mut Template| {
            let mut merged = defaults.clone();
            if let Some(own) = &t.archive_location
                && let Ok(v) = serde_json::to_value(own)
            {
                merge_json(&mut merged, v);
            }
            if let Ok(loc) = serde_json::from_value(merged) {
                t.archive_location = Some(loc);
            }
        };
        let stored_spec = self.status.stored_workflow_template_spec.as_mut();
        let tops = self
            .spec
            .templates
            .iter_mut()
            .chain(stored_spec.into_iter().flat_map(|s| s.templates.iter_mut()))
            .chain(self.status.stored_templates.values_mut());
        for t in tops {
            let mut stack = vec![t];
            while let Some(t) = stack.pop() {
                apply(t);
                let steps = t.steps.iter_mut().flatten().flatten();
                let tasks = t.dag.iter_mut().flat_map(|d| d.tasks.iter_mut());
                stack.extend(steps.chain(tasks).filter_map(|s| s.inline.as_deref_mut()));
            }
        }
    }

    /// Argo's controller has started it: phase `Running` or a `startedAt`. A workflow Argo never
    /// picked up (another instance id, throttled, Pending) produced nothing to collect.
    pub fn is_started(&self) -> bool {
        self.status.phase.as_deref() == Some("Running")
            || self.is_finished()
            || self
                .status
                .started_at
                .as_deref()
                .is_some_and(|s| !s.is_empty())
    }

    /// The spec the workflow runs with: its own, or the stored WorkflowTemplate spec.
    pub fn stored_spec(&self) -> Option<&WorkflowSpec> {
        self.status.stored_workflow_template_spec.as_ref()
    }

    /// The spec Argo executes (`GetExecSpec`): the stored WorkflowTemplate spec (already the
    /// workflow's spec merged over the template's) when there is one, else the workflow's own.
    /// Argo reads the workflow-level strategy, `forceFinalizerRemoval` and the GC service
    /// account from it, and so does artgc.
    fn exec_gc(&self) -> Option<&WorkflowArtifactGc> {
        match self.stored_spec() {
            Some(stored) => stored.artifact_gc.as_ref(),
            None => self.spec.artifact_gc.as_ref(),
        }
    }

    /// The workflow-level strategy, from the executed spec.
    pub fn workflow_strategy(&self) -> Option<&str> {
        self.exec_gc()?
            .strategy
            .as_deref()
            .filter(|s| !s.is_empty())
    }

    /// The workflow-level GC service account, from the executed spec.
    pub fn gc_service_account(&self) -> Option<&str> {
        self.exec_gc()?
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
    }

    pub fn force_finalizer_removal(&self) -> bool {
        self.exec_gc()
            .and_then(|g| g.force_finalizer_removal)
            .unwrap_or(false)
    }

    /// Every template the workflow can run: own, stored WorkflowTemplate spec, stored
    /// templateRef templates, and templates inlined in steps or DAG tasks of any of those.
    pub fn all_templates(&self) -> Vec<&Template> {
        let mut out: Vec<&Template> = Vec::new();
        let top = self
            .spec
            .templates
            .iter()
            .chain(
                self.stored_spec()
                    .into_iter()
                    .flat_map(|s| s.templates.iter()),
            )
            .chain(self.status.stored_templates.values());
        for t in top {
            out.push(t);
            let mut stack: Vec<&Template> = t.inline_templates().collect();
            while let Some(inner) = stack.pop() {
                out.push(inner);
                stack.extend(inner.inline_templates());
            }
        }
        out
    }

    /// The template a Pod node ran: a `templateRef`'s in `status.storedTemplates`; else
    /// `templateName` in its `templateScope`: a WorkflowTemplate's local template is stored as
    /// `storedTemplates["namespaced/<wt>/<name>"]` (Argo's GC looks the name up in the workflow
    /// only, and can pick a same-named template there); local names are the workflow's own
    /// templates, then the stored WorkflowTemplate spec's.
    pub fn template_of(&self, node: &NodeStatus) -> Option<&Template> {
        if let Some(tref) = &node.template_ref
            && let (Some(wt), Some(t)) = (tref.name.as_deref(), tref.template.as_deref())
        {
            let scope = if tref.cluster_scope == Some(true) {
                "cluster"
            } else {
                "namespaced"
            };
            return self
                .status
                .stored_templates
                .get(&format!("{scope}/{wt}/{t}"));
        }
        let name = node.template_name.as_deref().filter(|n| !n.is_empty())?;
        if let Some((scope, resource)) = template_scope(node.template_scope.as_deref()) {
            return self
                .status
                .stored_templates
                .get(&format!("{scope}/{resource}/{name}"));
        }
        let named = |ts: &'_ [Template]| -> Option<usize> {
            ts.iter().position(|t| t.name.as_deref() == Some(name))
        };
        if let Some(i) = named(&self.spec.templates) {
            return Some(&self.spec.templates[i]);
        }
        let spec = self.stored_spec()?;
        named(&spec.templates).map(|i| &spec.templates[i])
    }
}

/// A node's `templateScope` as Argo's `GetTemplateScope` reads it: `None` for the workflow's
/// own (empty, or `local/...`), else (`namespaced` or `cluster`, resource name); a bare name is
/// namespaced.
fn template_scope(scope: Option<&str>) -> Option<(&str, &str)> {
    let scope = scope.filter(|s| !s.is_empty())?;
    match scope.split_once('/') {
        None => Some(("namespaced", scope)),
        Some(("local", _)) => None,
        Some((kind, rest)) => Some((kind, rest.split('/').next().unwrap_or(rest))),
    }
}

/// A strategic merge of two objects as Kubernetes does it for structs: `patch`'s fields win,
/// objects merge field by field, anything else is replaced.
fn merge_json(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}
