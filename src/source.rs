//! Where `artgc plan` and `artgc purge` get their Workflows: manifest files, or a live cluster
//! selected by names, namespace, label selector and age. Either way the result is one plan,
//! built by the same planner as the controller's, from plain values (the command line builds
//! them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::api::ListParams;
use serde_json::Value;

use artgc_core::cluster::{ArgoConfigMapRef, ClusterState};
use artgc_core::error::InputError;
use artgc_core::inventory::{Inventory, WorkflowInput};
use artgc_core::keys::KeyIndex;
use artgc_core::plan::{GcPlan, PlanOptions, plan, plan_with_index, workflow_key_uses};
use artgc_core::policy::Policy;

use crate::kube_api::{ClusterReader, workflows};

/// Where a run's Workflows come from.
pub enum Source {
    /// Manifest files and directories; ConfigMaps and Secrets among them resolve repositories.
    Files {
        paths: Vec<PathBuf>,
        /// For objects that name none.
        namespace: String,
        older_than: Option<Duration>,
        argo: ArgoConfigMapRef,
        policy: Arc<Policy>,
        /// `--max-node-status-bytes`.
        max_node_status_bytes: u64,
    },
    Cluster(ClusterSelection),
}

/// A plan and, for a cluster source, what recording it needs.
pub struct LoadedPlan {
    pub plan: GcPlan,
    pub cluster: Option<ClusterRead>,
}

/// The Workflows a cluster plan was made from, in the plan's order.
pub struct ClusterRead {
    pub client: kube::Client,
    /// Each object as read, as JSON.
    pub objects: Vec<Value>,
    /// Each object as planned (offloaded nodes put back).
    pub inputs: Vec<WorkflowInput>,
}

/// Reads the source and builds the plan.
pub async fn load(source: &Source, opts: &PlanOptions) -> Result<LoadedPlan, InputError> {
    match source {
        Source::Cluster(selection) => load_from_cluster(selection, opts).await,
        Source::Files {
            paths,
            namespace,
            older_than,
            argo,
            policy,
            max_node_status_bytes: limit,
        } => {
            let inventory = read_paths(paths, namespace)?;
            let mut state = ClusterState::new(argo.clone()).with_policy(policy.clone());
            for cm in inventory.config_maps {
                state.insert_config_map(cm);
            }
            for s in inventory.secrets {
                state.insert_secret(s);
            }
            let mut workflows: Vec<WorkflowInput> = inventory
                .workflows
                .into_iter()
                .map(|w| w.unpacked(*limit))
                .collect();
            if let Some(age) = older_than {
                workflows.retain(|w| match w {
                    WorkflowInput::Valid(wf) => {
                        finished_before(wf.status.finished_at.as_deref(), *age)
                    }
                    WorkflowInput::Invalid { .. } => true,
                });
            }
            // Argo's database, as the files' workflow-controller ConfigMap and Secrets name it.
            crate::offload::hydrate_all(&state, &mut workflows, *limit).await;
            Ok(LoadedPlan {
                plan: plan(&workflows, &state, opts),
                cluster: None,
            })
        }
    }
}

/// Reads files and directories (recursively: `.yaml`, `.yml`, `.json`).
pub fn read_paths(paths: &[PathBuf], default_namespace: &str) -> Result<Inventory, InputError> {
    let mut inv = Inventory::default();
    for path in paths {
        for file in expand(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| InputError::Io {
                path: file.display().to_string(),
                source: Arc::new(e),
            })?;
            inv.add_text(&file.display().to_string(), &text, default_namespace)?;
        }
    }
    Ok(inv)
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let io = |e: std::io::Error| InputError::Io {
        path: path.display().to_string(),
        source: Arc::new(e),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let p = entry.path();
        if p.is_dir() {
            files.extend(expand(&p)?);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
    }
    Ok(files)
}

/// True when `finished_at` (RFC 3339) lies at least `age` in the past; unfinished is false.
pub fn finished_before(finished_at: Option<&str>, age: Duration) -> bool {
    let Some(t) = finished_at.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return false;
    };
    let Ok(age) = jiff::SignedDuration::try_from(age) else {
        return false;
    };
    jiff::Timestamp::now().duration_since(t) >= age
}

/// What `plan`/`purge` over a live cluster could not read from it: a cluster error, not a file's.
fn cluster_error(what: &str, e: kube::Error) -> InputError {
    InputError::Cluster {
        what: what.into(),
        source: Arc::new(e),
    }
}

async fn list_all(
    api: &kube::Api<kube::api::DynamicObject>,
    lp: &ListParams,
) -> Result<Vec<Value>, kube::Error> {
    let mut out = Vec::new();
    let mut lp = lp.clone().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for o in page.items {
            out.push(serde_json::to_value(o).unwrap_or(Value::Null));
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
}

/// Lists Workflows page by page (500 a page) into `index`, keeping only their key uses.
async fn index_pages(
    api: &kube::Api<kube::api::DynamicObject>,
    reader: &ClusterReader,
    default_ns: &str,
    index: &mut KeyIndex,
    limit: u64,
) -> Result<(), kube::Error> {
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for o in page.items {
            let v = serde_json::to_value(o).unwrap_or(Value::Null);
            if let WorkflowInput::Valid(wf) =
                WorkflowInput::from_value(v, default_ns).unpacked(limit)
            {
                let s = reader.state_for(&wf, None).await?;
                let key = KeyIndex::workflow_key(wf.namespace(), wf.name());
                index.set_workflow(&key, workflow_key_uses(&wf, &s));
            }
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(()),
        }
    }
}

/// Which Workflows of a live cluster a run covers, as plain values (the command line builds it).
pub struct ClusterSelection {
    pub namespace: String,
    pub all_namespaces: bool,
    pub selector: Option<String>,
    /// Exactly these Workflows of `namespace`; empty: every one the rest selects.
    pub names: Vec<String>,
    pub older_than: Option<Duration>,
    pub argo: ArgoConfigMapRef,
    pub policy: Arc<Policy>,
    /// kubectl's `--kubeconfig` and `--context`; `None`: as kubectl without them.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `--max-node-status-bytes`.
    pub max_node_status_bytes: u64,
}

/// A client as kubectl would make one: `--kubeconfig` (else `$KUBECONFIG`, else
/// `~/.kube/config`, else in-cluster) and `--context` (else the current one).
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, InputError> {
    let err = |setting: &str, e: Box<dyn std::error::Error + Send + Sync>| InputError::Config {
        setting: setting.into(),
        source: Arc::from(e),
    };
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| err(&format!("--kubeconfig {}", path.display()), e.into()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| err(&format!("--kubeconfig {}", path.display()), e.into()))?
        }
        (None, Some(name)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| err(&format!("--context {name}"), e.into()))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| err("kubeconfig", e.into()))?,
    };
    kube::Client::try_from(config).map_err(|e| err("kubeconfig", e.into()))
}

async fn load_from_cluster(
    source: &ClusterSelection,
    opts: &PlanOptions,
) -> Result<LoadedPlan, InputError> {
    let client = kube_client(source.kubeconfig.as_deref(), source.context.as_deref()).await?;
    let selected = select(&client, source).await?;
    let limit = source.max_node_status_bytes;
    let mut read: Vec<(Value, WorkflowInput)> = selected
        .into_iter()
        .map(|v| {
            let input = WorkflowInput::from_value(v.clone(), &source.namespace).unpacked(limit);
            (v, input)
        })
        .collect();
    if let Some(age) = source.older_than {
        read.retain(|(_, w)| match w {
            WorkflowInput::Valid(wf) => finished_before(wf.status.finished_at.as_deref(), age),
            WorkflowInput::Invalid { .. } => true,
        });
    }
    let (raws, mut inputs): (Vec<Value>, Vec<WorkflowInput>) = read.into_iter().unzip();

    let policy = source.policy.clone();
    let reader = ClusterReader::new(client.clone(), source.argo.clone(), policy.clone());
    if inputs
        .iter()
        .any(|w| matches!(w, WorkflowInput::Valid(wf) if artgc_core::nodes::is_offloaded(wf)))
    {
        let persistence = reader
            .persistence_state()
            .await
            .map_err(|e| cluster_error("reading Argo's persistence settings", e))?;
        crate::offload::hydrate_all(&persistence, &mut inputs, limit).await;
    }
    let mut state = ClusterState::new(source.argo.clone()).with_policy(policy);
    for w in &inputs {
        if let WorkflowInput::Valid(wf) = w {
            let s = reader
                .state_for(wf, Some(artgc_core::reads::secrets(wf)))
                .await
                .map_err(|e| cluster_error("reading ConfigMaps and Secrets", e))?;
            state.absorb(s);
        }
    }
    let index = everyones_keys(&client, &reader, source).await?;
    let plan = plan_with_index(&inputs, &state, opts, Some(&index));
    Ok(LoadedPlan {
        plan,
        cluster: Some(ClusterRead {
            client,
            objects: raws,
            inputs,
        }),
    })
}

/// The Workflows the selection names (by name, else by listing with its label selector), as
/// JSON.
async fn select(
    client: &kube::Client,
    source: &ClusterSelection,
) -> Result<Vec<Value>, InputError> {
    let ns = (!source.all_namespaces).then_some(source.namespace.as_str());
    let api = workflows(client, ns);
    if source.names.is_empty() {
        let mut lp = ListParams::default();
        if let Some(sel) = &source.selector {
            lp = lp.labels(sel);
        }
        return list_all(&api, &lp)
            .await
            .map_err(|e| cluster_error("listing Workflows", e));
    }
    let mut selected = Vec::new();
    for name in &source.names {
        let obj = api
            .get(name)
            .await
            .map_err(|e| cluster_error(&format!("Workflow {}/{name}", source.namespace), e))?;
        selected.push(serde_json::to_value(obj).unwrap_or(Value::Null));
    }
    Ok(selected)
}

/// Every other workflow's keys, cluster-wide when allowed, else in the namespace: read a page
/// at a time and reduced to its key uses, so memory holds the index, not the objects.
async fn everyones_keys(
    client: &kube::Client,
    reader: &ClusterReader,
    source: &ClusterSelection,
) -> Result<KeyIndex, InputError> {
    let (ns, limit) = (&source.namespace, source.max_node_status_bytes);
    let mut index = KeyIndex::default();
    let everyone = index_pages(&workflows(client, None), reader, ns, &mut index, limit).await;
    if let Err(e) = everyone {
        tracing::warn!(error = %e, "cannot list Workflows cluster-wide; shared keys are checked within the namespace only");
        index = KeyIndex::default();
        index_pages(&workflows(client, Some(ns)), reader, ns, &mut index, limit)
            .await
            .map_err(|e| cluster_error("listing Workflows", e))?;
    }
    Ok(index)
}
