//! Builders for Argo objects in tests: shapes as Argo writes them (see
//! ../shared/fixtures/argo for real ones), written here so each test states what matters.
#![allow(dead_code)]

use artgc_core::cluster::{ArgoConfigMapRef, ClusterState};
use artgc_core::inventory::{Inventory, WorkflowInput};
use artgc_core::plan::{ArtifactPlan, GcPlan, PlanOptions, StrategyFilter, WorkflowPlan};
use serde_json::{Value, json};

/// Sets `value` at a dotted path, creating objects on the way.
pub fn set(v: &mut Value, path: &[&str], value: Value) {
    let mut cur = v;
    for p in &path[..path.len() - 1] {
        if !cur[*p].is_object() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = value;
}

/// A Workflow that has finished (phase Succeeded, `completed` label).
#[derive(Clone)]
pub struct Wf(pub Value);

pub fn workflow(ns: &str, name: &str) -> Wf {
    Wf(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-{name}"),
            "labels": {"workflows.argoproj.io/completed": "true", "workflows.argoproj.io/phase": "Succeeded"},
        },
        "spec": {"entrypoint": "main", "templates": []},
        "status": {"phase": "Succeeded", "nodes": {
            name: {"id": name, "name": name, "type": "Steps", "phase": "Succeeded"}
        }},
    }))
}

impl Wf {
    pub fn set(mut self, path: &[&str], value: Value) -> Self {
        set(&mut self.0, path, value);
        self
    }

    pub fn running(self) -> Self {
        self.set(&["status", "phase"], json!("Running"))
            .set(&["metadata", "labels"], json!({}))
    }

    pub fn deleting(self) -> Self {
        self.set(
            &["metadata", "deletionTimestamp"],
            json!("2026-11-01T00:00:00Z"),
        )
    }

    pub fn strategy(self, s: &str) -> Self {
        self.set(&["spec", "artifactGC", "strategy"], json!(s))
    }

    pub fn template(mut self, t: Value) -> Self {
        self.0["spec"]["templates"].as_array_mut().unwrap().push(t);
        self
    }

    /// A Pod node that ran `template` and produced `artifacts`.
    pub fn node(self, id: &str, template: &str, artifacts: Vec<Value>) -> Self {
        self.set(
            &["status", "nodes", id],
            json!({"id": id, "name": id, "type": "Pod", "phase": "Succeeded",
                   "templateName": template, "outputs": {"artifacts": artifacts}}),
        )
    }

    /// The repository frozen into the status when the workflow started.
    pub fn status_repo(self, repo: Value) -> Self {
        self.set(
            &["status", "artifactRepositoryRef"],
            json!({"configMap": "artifact-repositories", "key": "default", "artifactRepository": repo}),
        )
    }

    pub fn input(self) -> WorkflowInput {
        WorkflowInput::from_value(self.0, "default")
    }
}

/// A repository / archive location in MinIO style.
pub fn s3_repo(endpoint: &str, bucket: &str, secret: &str) -> Value {
    json!({"s3": {
        "endpoint": endpoint, "bucket": bucket, "insecure": true,
        "accessKeySecret": {"name": secret, "key": "accesskey"},
        "secretKeySecret": {"name": secret, "key": "secretkey"},
    }})
}

/// A key-only artifact, as in `s3: {key: ...}`.
pub fn key_only(name: &str, key: &str) -> Value {
    json!({"name": name, "path": "/tmp/x", "s3": {"key": key}})
}

/// An artifact with its own complete location.
pub fn full(name: &str, endpoint: &str, bucket: &str, key: &str, secret: &str) -> Value {
    let mut loc = s3_repo(endpoint, bucket, secret);
    loc["s3"]["key"] = json!(key);
    loc["name"] = json!(name);
    loc
}

/// A due (OnWorkflowCompletion) artifact with its own location on a test S3 server of
/// `region`, reached at `endpoint` (the server itself or a proxy in front of it), credentials
/// from Secret `secret`.
pub fn on_server(
    region: &str,
    endpoint: &str,
    name: &str,
    bucket: &str,
    key: &str,
    secret: &str,
) -> Value {
    let mut a = full(name, endpoint, bucket, key, secret);
    a["s3"]["region"] = json!(region);
    with_strategy(a, "OnWorkflowCompletion")
}

/// Marks an artifact as uploaded with `archive: {none: {}}`.
pub fn archive_none(mut art: Value) -> Value {
    art["archive"] = json!({"none": {}});
    art
}

pub fn with_strategy(mut art: Value, s: &str) -> Value {
    art["artifactGC"] = json!({"strategy": s});
    art
}

pub fn secret(ns: &str, name: &str, ak: &str, sk: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
           "stringData": {"accesskey": ak, "secretkey": sk}})
}

/// Every `endpoint` a JSON value names.
pub fn endpoints_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("endpoint", Value::String(e)) => out.push(e.clone()),
                    _ => endpoints_in(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| endpoints_in(x, out)),
        _ => {}
    }
}

/// A policy that lets every namespace reach `endpoints` (with its own Secrets, as by default).
/// Tests of other rules use it so that their test servers count as configured stores; the
/// endpoint rules themselves are tested in tests/tenancy.rs.
pub fn endpoints_policy(endpoints: &[String]) -> std::sync::Arc<artgc_core::policy::Policy> {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let text = format!("defaults:\n  endpoints: [{}]\n", list.join(", "));
    std::sync::Arc::new(artgc_core::policy::Policy::parse(&text).expect("policy"))
}

/// Plans workflows against ConfigMaps and Secrets given as JSON objects; the endpoints the
/// workflows name are allowed (see [`endpoints_policy`]).
pub fn plan_with(workflows: Vec<Wf>, objects: Vec<Value>, filter: StrategyFilter) -> GcPlan {
    let mut endpoints = Vec::new();
    workflows
        .iter()
        .for_each(|w| endpoints_in(&w.0, &mut endpoints));
    plan_with_policy(workflows, objects, filter, endpoints_policy(&endpoints))
}

/// Plans workflows against ConfigMaps and Secrets given as JSON objects, under `policy`.
pub fn plan_with_policy(
    workflows: Vec<Wf>,
    objects: Vec<Value>,
    filter: StrategyFilter,
    policy: std::sync::Arc<artgc_core::policy::Policy>,
) -> GcPlan {
    let mut inv = Inventory::default();
    let text =
        serde_json::to_string(&json!({"kind": "List", "apiVersion": "v1", "items": objects}))
            .unwrap();
    inv.add_text("objects.json", &text, "default").unwrap();
    let mut state = ClusterState::new(ArgoConfigMapRef::default()).with_policy(policy);
    inv.config_maps
        .into_iter()
        .for_each(|c| state.insert_config_map(c));
    inv.secrets.into_iter().for_each(|s| state.insert_secret(s));
    let inputs: Vec<WorkflowInput> = workflows.into_iter().map(Wf::input).collect();
    artgc_core::plan::plan(&inputs, &state, &PlanOptions { filter })
}

pub fn plan_due(workflows: Vec<Wf>, objects: Vec<Value>) -> GcPlan {
    plan_with(workflows, objects, StrategyFilter::Due)
}

/// The planned artifact `name` of workflow `wf`.
pub fn art<'a>(plan: &'a GcPlan, wf: &str, name: &str) -> &'a ArtifactPlan {
    wfp(plan, wf)
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no artifact {name} in {wf}"))
}

pub fn wfp<'a>(plan: &'a GcPlan, wf: &str) -> &'a WorkflowPlan {
    plan.workflows
        .iter()
        .find(|w| w.name == wf)
        .unwrap_or_else(|| panic!("no workflow {wf}"))
}

/// The context of a pass over a finished workflow Argo started, not deleted, without artgc's
/// finalizer: first attempt, budget 3. Tests name only what differs from it.
pub fn completed_pass() -> artgc_core::outcome::PassContext {
    artgc_core::outcome::PassContext {
        finished: true,
        started: true,
        deleting: false,
        has_finalizer: false,
        force_finalizer_removal: false,
        attempt: 1,
        budget: 3,
        may_need_gc: true,
        may_add_finalizer: true,
        processed: Default::default(),
        has_condition: false,
    }
}

/// What differs from [`completed_pass`], by name.
pub trait Situation {
    /// Being deleted.
    fn deleted(self) -> Self;
    /// artgc's finalizer is on it.
    fn holding(self) -> Self;
    /// `forceFinalizerRemoval: true`.
    fn forcing(self) -> Self;
    /// This is deletion pass `n`.
    fn attempt(self, n: u32) -> Self;
}

impl Situation for artgc_core::outcome::PassContext {
    fn deleted(self) -> Self {
        Self {
            deleting: true,
            ..self
        }
    }
    fn holding(self) -> Self {
        Self {
            has_finalizer: true,
            ..self
        }
    }
    fn forcing(self) -> Self {
        Self {
            force_finalizer_removal: true,
            ..self
        }
    }
    fn attempt(self, n: u32) -> Self {
        Self { attempt: n, ..self }
    }
}

// ---- A Workflow's recorded GC state, as the tests read it back from a server ----

/// artgc's finalizers (and anyone else's) on the object.
pub fn finalizers(wf: &Value) -> Vec<String> {
    wf["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the node's output artifact is marked `deleted: true` (plain `status.nodes`).
pub fn deleted_flag(wf: &Value, node: &str, artifact: &str) -> bool {
    wf["status"]["nodes"][node]["outputs"]["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == artifact))
        .is_some_and(|a| a["deleted"] == true)
}

/// Whether `strategiesProcessed` records the strategy done.
pub fn processed(wf: &Value, s: &str) -> bool {
    wf["status"]["artifactGCStatus"]["strategiesProcessed"][s] == true
}

/// The `ArtifactGCError` condition's message, when set.
pub fn gc_condition(wf: &Value) -> Option<String> {
    wf["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "ArtifactGCError")
        .map(|c| c["message"].as_str().unwrap_or_default().to_string())
}
