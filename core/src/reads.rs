//! Which objects of the API server a workflow's plan reads: the rule, apart from the reads
//! (`artgc::kube_api` does them). Each read is in the workflow's own namespace, or Argo's
//! controller namespace where Argo itself reads there: a Workflow's author names what is read,
//! never where.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::cluster::{ArgoConfigMapRef, REPOSITORIES_CONFIGMAP};
use crate::model::{ArtifactLocation, Workflow};
use crate::nodes::workflow_nodes;

/// The ConfigMaps (namespace, name) a workflow's repository may come from, sorted, each once.
pub fn config_maps(wf: &Workflow, argo: &ArgoConfigMapRef) -> Vec<(String, String)> {
    let ns = wf.namespace().to_string();
    // Read whether or not the status froze a repository: they say which endpoints are
    // configured for the namespace.
    let cns = argo.namespace.clone();
    let mut wanted = vec![
        (ns.clone(), REPOSITORIES_CONFIGMAP.to_string()),
        // A ref naming no ConfigMap falls back to the controller namespace's default one.
        (cns.clone(), REPOSITORIES_CONFIGMAP.to_string()),
        (cns.clone(), argo.name.clone()),
    ];
    // A recorded ref (Argo before 3.1) names its namespace: only the two Argo reads.
    if let Some(r) = &wf.status.artifact_repository_ref
        && r.artifact_repository.is_none()
        && let Some(at) = r.namespace.clone().filter(|n| !n.is_empty())
        && crate::cluster::ref_namespace_allowed(&at, &ns, &cns)
    {
        let name = r.config_map.clone().filter(|n| !n.is_empty());
        wanted.push((at, name.unwrap_or_else(|| REPOSITORIES_CONFIGMAP.into())));
    }
    let spec_ref = wf.spec.artifact_repository_ref.as_ref().or_else(|| {
        wf.stored_spec()
            .and_then(|s| s.artifact_repository_ref.as_ref())
    });
    let status_ref = wf
        .status
        .artifact_repository_ref
        .as_ref()
        .and_then(|r| r.config_map.clone());
    for name in spec_ref
        .and_then(|r| r.config_map.clone())
        .into_iter()
        .chain(status_ref)
        .filter(|n| !n.is_empty())
    {
        wanted.push((ns.clone(), name.clone()));
        wanted.push((argo.namespace.clone(), name));
    }
    wanted.sort();
    wanted.dedup();
    wanted
}

/// Every Secret a workflow's own fields name (spec, status, compressed nodes): a walk of its
/// whole tree, so for a big one it runs off the runtime's workers.
pub fn secrets(wf: &Workflow) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Ok(v) = serde_json::to_value(wf) {
        secret_names(&v, &mut names);
    }
    if let Ok(nodes) = workflow_nodes(wf)
        && wf.status.nodes.as_ref().is_none_or(|n| n.is_empty())
        && let Ok(v) = serde_json::to_value(&nodes.nodes)
    {
        secret_names(&v, &mut names);
    }
    // A name with workflow variables is read as the planner will resolve it.
    let vars = crate::location::Variables::of(wf);
    names
        .into_iter()
        .filter_map(|n| match n.contains("{{") {
            true => vars.substitute(&n).ok(),
            false => Some(n),
        })
        .collect()
}

/// Names of every Secret a location in `value` refers to.
fn secret_names(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if matches!(
                    k.as_str(),
                    "accessKeySecret"
                        | "secretKeySecret"
                        | "sessionTokenSecret"
                        | "caSecret"
                        | "serverSideCustomerKeySecret"
                ) && let Some(name) = v["name"].as_str()
                {
                    out.insert(name.to_string());
                }
                secret_names(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| secret_names(v, out)),
        _ => {}
    }
}

/// The Secrets a resolved repository names.
pub fn secrets_of_repository(repo: &ArtifactLocation) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Ok(v) = serde_json::to_value(repo) {
        secret_names(&v, &mut names);
    }
    names
}

/// The accounts a workflow's GC may act as: per artifact, the workflow's, and `default`.
pub fn gc_service_accounts(wf: &Workflow) -> BTreeSet<String> {
    let mut out = BTreeSet::from(["default".to_string()]);
    out.extend(wf.gc_service_account().map(str::to_string));
    if let Ok(nodes) = workflow_nodes(wf) {
        let named = nodes
            .nodes
            .values()
            .flat_map(|n| n.outputs.iter().flat_map(|o| &o.artifacts))
            .filter_map(|a| a.artifact_gc.as_ref()?.service_account_name.clone())
            .filter(|n| !n.is_empty());
        out.extend(named);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    #[test]
    fn secret_names_with_workflow_variables_are_read_as_they_resolve() {
        let wf: Workflow = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns"},
            "spec": {"arguments": {"parameters": [{"name": "s", "value": "team-creds"}]},
                "templates": [{"name": "t", "archiveLocation": {"s3": {
                    "accessKeySecret": {"name": "{{workflow.parameters.s}}", "key": "a"},
                    "secretKeySecret": {"name": "{{workflow.parameters.nope}}", "key": "b"}}}}]},
        }))
        .unwrap();
        assert_eq!(secrets(&wf).into_iter().collect::<Vec<_>>(), ["team-creds"]);
    }

    #[test]
    fn secret_names_are_found_anywhere() {
        let v = serde_json::json!({"spec": {"templates": [{"archiveLocation": {"s3": {
            "accessKeySecret": {"name": "a", "key": "k"}, "caSecret": {"name": "ca", "key": "c"}}}}]},
            "x": [{"secretKeySecret": {"name": "b", "key": "k"}},
                  {"encryptionOptions": {"serverSideCustomerKeySecret": {"name": "ssec", "key": "k"}}}]});
        let mut out = BTreeSet::new();
        secret_names(&v, &mut out);
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            ["a", "b", "ca", "ssec"]
        );
    }

    #[test]
    fn config_maps_are_read_in_the_workflows_namespace_and_argos_only() {
        let argo = ArgoConfigMapRef {
            namespace: "argo".into(),
            name: "workflow-controller-configmap".into(),
        };
        let wf = |extra: serde_json::Value| -> Workflow {
            let mut v = serde_json::json!({"metadata": {"name": "w", "namespace": "team"}});
            merge(&mut v, extra);
            serde_json::from_value(v).unwrap()
        };
        let base = [
            ("argo", "artifact-repositories"),
            ("argo", "workflow-controller-configmap"),
            ("team", "artifact-repositories"),
        ];
        type Case<'a> = (&'a str, serde_json::Value, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            ("nothing named", serde_json::json!({}), base.to_vec()),
            (
                "a spec ref: in both namespaces",
                serde_json::json!({"spec": {"artifactRepositoryRef": {"configMap": "repos"}}}),
                [base.as_slice(), &[("argo", "repos"), ("team", "repos")]].concat(),
            ),
            (
                "a recorded ref naming Argo's namespace",
                serde_json::json!({"status": {"artifactRepositoryRef":
                    {"namespace": "argo", "configMap": "old"}}}),
                [base.as_slice(), &[("argo", "old"), ("team", "old")]].concat(),
            ),
            (
                "a recorded ref naming another tenant's namespace: not read there",
                serde_json::json!({"status": {"artifactRepositoryRef":
                    {"namespace": "victim", "configMap": "theirs"}}}),
                [base.as_slice(), &[("argo", "theirs"), ("team", "theirs")]].concat(),
            ),
        ];
        for (what, extra, want) in cases {
            let mut want: Vec<(String, String)> = want
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            want.sort();
            assert_eq!(config_maps(&wf(extra), &argo), want, "{what}");
        }
    }
}
