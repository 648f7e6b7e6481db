//! deploy/ and grafana/: the plain manifests are valid Kubernetes objects (strictly: a typo'd field
//! would not survive a round trip through the API types), secure by default, and configure every
//! controller flag; the Helm chart sets the same flags and reads only values it declares.

use std::collections::BTreeSet;

use artgc_core::inventory::parse_documents;
use clap::CommandFactory;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const MANIFESTS: &str = "deploy/manifests";
const CHART: &str = "deploy/helm/artgc";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn manifests() -> Vec<(String, Value)> {
    let kustomization = &parse_documents(
        "kustomization.yaml",
        &read(&format!("{MANIFESTS}/kustomization.yaml")),
    )
    .unwrap()[0];
    let mut out = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        let text = read(&format!("{MANIFESTS}/{file}"));
        for doc in parse_documents(file, &text).unwrap() {
            out.push((file.to_string(), doc));
        }
    }
    out
}

/// Deserializes into the API type and back: the same JSON, or a field is unknown or mistyped.
fn strict<T: DeserializeOwned + Serialize>(file: &str, doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: {} has fields the API type does not know",
        doc["kind"]
    );
}

#[test]
fn plain_manifests_are_valid_api_objects_and_listed_in_the_kustomization() {
    let docs = manifests();
    let kinds: BTreeSet<&str> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "ConfigMap",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    for (file, doc) in &docs {
        match doc["kind"].as_str().unwrap() {
            "Namespace" => strict::<Namespace>(file, doc),
            "ServiceAccount" => strict::<ServiceAccount>(file, doc),
            "ClusterRole" => strict::<ClusterRole>(file, doc),
            "ClusterRoleBinding" => strict::<ClusterRoleBinding>(file, doc),
            "Role" => strict::<Role>(file, doc),
            "RoleBinding" => strict::<RoleBinding>(file, doc),
            "Deployment" => strict::<Deployment>(file, doc),
            "Service" => strict::<Service>(file, doc),
            "ConfigMap" => {
                strict::<k8s_openapi::api::core::v1::ConfigMap>(file, doc);
                // The shipped policy is one artgc reads.
                let text = doc["data"]["policy.yaml"].as_str().expect("policy.yaml");
                artgc_core::policy::Policy::parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
    let yaml_files: BTreeSet<String> = std::fs::read_dir(MANIFESTS)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    let listed: BTreeSet<String> = docs.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(
        yaml_files, listed,
        "every manifest file is in the kustomization"
    );
}

fn deployment() -> Value {
    manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .unwrap()
        .1
}

#[test]
fn the_deployment_is_locked_down_and_probed() {
    let d = deployment();
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let pod_name = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("POD_NAME for the lease identity");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // Secrets by name only: no list or watch of every Secret in the cluster.
    let rbac = manifests();
    let role = rbac
        .iter()
        .find(|(_, d)| d["kind"] == "ClusterRole")
        .unwrap();
    for rule in role.1["rules"].as_array().unwrap() {
        let verbs = rule["verbs"].as_array().unwrap();
        assert!(!verbs.contains(&Value::from("*")));
        if rule["resources"]
            .as_array()
            .unwrap()
            .contains(&Value::from("secrets"))
        {
            assert_eq!(verbs, &[Value::from("get")]);
        }
    }
}

/// The environment variables of `artgc controller`'s flags.
fn controller_env_vars() -> BTreeSet<String> {
    let cmd = artgc::cli::Cli::command();
    let controller = cmd
        .get_subcommands()
        .find(|c| c.get_name() == "controller")
        .unwrap();
    controller
        .get_arguments()
        .chain(cmd.get_arguments())
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().to_string()))
        .collect()
}

#[test]
fn manifests_and_chart_configure_every_controller_flag() {
    let env = controller_env_vars();
    assert!(env.len() >= 20, "{env:?}");
    let d = deployment();
    let set: BTreeSet<String> = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    // Namespaces and the instance id are optional: unset means all / no instance label.
    // The STS endpoint defaults to AWS's.
    let optional = [
        "ARTGC_NAMESPACES",
        "ARTGC_INSTANCE_ID",
        "ARTGC_STS_ENDPOINT",
    ];
    for var in &env {
        if !optional.contains(&var.as_str()) {
            assert!(set.contains(var), "deploy/manifests does not set {var}");
        }
    }
    let template = read(&format!("{CHART}/templates/deployment.yaml"));
    for var in &env {
        assert!(
            template.contains(&format!("name: {var}")),
            "the chart does not set {var}"
        );
    }
}

#[test]
fn the_chart_reads_only_values_it_declares_and_ships_the_dashboard() {
    let values =
        &parse_documents("values.yaml", &read(&format!("{CHART}/values.yaml"))).unwrap()[0];
    let chart = &parse_documents("Chart.yaml", &read(&format!("{CHART}/Chart.yaml"))).unwrap()[0];
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "artgc");
    let mut seen = 0;
    for entry in std::fs::read_dir(format!("{CHART}/templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // `$c` is `.Values.controller` in the deployment template.
        let text = text.replace("$c.", ".Values.controller.");
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".Values.") {
            let tail = &rest[i + ".Values.".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(tail.len());
            let path_text = tail[..end].trim_end_matches('.');
            let mut v = values;
            for part in path_text.split('.') {
                v = v.get(part).unwrap_or_else(|| {
                    panic!(
                        "{}: .Values.{path_text} is not in values.yaml",
                        path.display()
                    )
                });
            }
            seen += 1;
            rest = &tail[end..];
        }
    }
    assert!(seen > 30, "{seen} value references");
    assert_eq!(
        read(&format!("{CHART}/dashboards/artgc.json")),
        read("grafana/artgc.json"),
        "the chart's dashboard copy is grafana/artgc.json"
    );
}

/// Without helm here, the chart's default render cannot be produced; this checks what can be
/// checked by reading: the same kinds, names and container settings as the plain manifests.
#[test]
fn the_chart_templates_the_same_objects_as_the_plain_manifests() {
    let templates: String = std::fs::read_dir(format!("{CHART}/templates"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for (file, doc) in manifests() {
        let kind = doc["kind"].as_str().unwrap();
        if kind == "Namespace" {
            continue; // Helm installs into an existing or created release namespace.
        }
        assert!(
            templates.contains(&format!("kind: {kind}")),
            "{file}: the chart has no {kind}"
        );
    }
    let d = deployment();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let deploy_tpl = read(&format!("{CHART}/templates/deployment.yaml"));
    for line in [
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "type: RuntimeDefault",
        "path: /live",
        "path: /ready",
        "drop: [\"ALL\"]",
    ] {
        assert!(deploy_tpl.contains(line), "chart deployment lacks {line}");
    }
    assert_eq!(c["args"][0], "controller");
    assert!(deploy_tpl.contains("args: [\"controller\"]"));
}

/// Renders the chart with the real helm (`ARTGC_HELM`, built by `.ci/tools.sh`; CI sets it).
fn helm_template(args: &[&str]) -> Option<Vec<Value>> {
    let helm = artgc_testkit::needed_var("ARTGC_HELM", "helm: eval \"$(.ci/tools.sh)\"")?;
    let out = std::process::Command::new(helm)
        .args(["template", "artgc", CHART, "-n", "artgc"])
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(parse_documents("render", &String::from_utf8_lossy(&out.stdout)).unwrap())
}

fn rendered_policy(docs: &[Value]) -> artgc_core::policy::Policy {
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "artgc-policy")
        .expect("policy ConfigMap");
    artgc_core::policy::Policy::parse(cm["data"]["policy.yaml"].as_str().unwrap()).unwrap()
}

/// The chart's policy is one artgc reads, and enabling the service-account identity for named
/// namespaces grants exactly those namespaces and accounts, in the policy and in RBAC.
#[ignore = "needs helm: eval \"$(.ci/tools.sh)\", then cargo test -- --include-ignored"]
#[test]
fn the_rendered_policy_and_service_account_rbac_agree() {
    use artgc_core::policy::IdentityKind;
    let Some(docs) = helm_template(&[]) else {
        return;
    };
    let p = rendered_policy(&docs);
    assert!(p.grant_for("any", None).allows(IdentityKind::Secret));
    assert!(
        !p.grant_for("any", None)
            .allows(IdentityKind::ServiceAccount)
    );
    assert!(
        !docs
            .iter()
            .any(|d| d.to_string().contains("serviceaccounts/token"))
    );

    let docs = helm_template(&[
        "--set",
        "serviceAccountIdentity.enabled=true",
        "--set",
        "serviceAccountIdentity.namespaces.team-a={gc}",
    ])
    .unwrap();
    let p = rendered_policy(&docs);
    let a = p.grant_for("team-a", None);
    assert!(a.allows(IdentityKind::ServiceAccount) && a.service_accounts == ["gc"]);
    assert!(
        !p.grant_for("team-b", None)
            .allows(IdentityKind::ServiceAccount)
    );
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d.to_string().contains("serviceaccounts/token"))
        .collect();
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["kind"], "Role");
    assert_eq!(roles[0]["metadata"]["namespace"], "team-a");
    for rule in roles[0]["rules"].as_array().unwrap() {
        assert_eq!(rule["resourceNames"], serde_json::json!(["gc"]));
    }
}

/// The chart's default render and the plain manifests are the same install: the same objects
/// (kind and name), the same RBAC rules, the same policy, and the same controller settings.
#[ignore = "needs helm: eval \"$(.ci/tools.sh)\", then cargo test -- --include-ignored"]
#[test]
fn the_default_render_and_the_plain_manifests_agree() {
    let Some(rendered) = helm_template(&[]) else {
        return;
    };
    let key = |d: &Value| {
        (
            d["kind"].as_str().unwrap_or_default().to_string(),
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let plain: Vec<Value> = manifests()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] != "Namespace")
        .collect();
    let mut plain_keys: Vec<_> = plain.iter().map(key).collect();
    let mut rendered_keys: Vec<_> = rendered.iter().filter(|d| !d.is_null()).map(key).collect();
    plain_keys.sort();
    rendered_keys.sort();
    assert_eq!(plain_keys, rendered_keys);
    let find = |k: &(String, String)| rendered.iter().find(|d| key(d) == *k).unwrap();
    for doc in &plain {
        let r = find(&key(doc));
        match doc["kind"].as_str().unwrap() {
            "ClusterRole" | "Role" => assert_eq!(doc["rules"], r["rules"], "{:?}", key(doc)),
            "ClusterRoleBinding" | "RoleBinding" => {
                assert_eq!(doc["roleRef"], r["roleRef"], "{:?}", key(doc));
                assert_eq!(doc["subjects"], r["subjects"], "{:?}", key(doc));
            }
            "ConfigMap" => {
                let policy = |d: &Value| {
                    artgc_core::policy::Policy::parse(d["data"]["policy.yaml"].as_str().unwrap())
                        .map(|p| format!("{p:?}"))
                        .unwrap()
                };
                assert_eq!(policy(doc), policy(r), "the policy");
            }
            "Deployment" => {
                let env_of = |d: &Value, name: &str| {
                    d["spec"]["template"]["spec"]["containers"][0]["env"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|e| e["name"] == name)
                        .map(|e| e["value"].as_str().unwrap().to_string())
                };
                // The chart leaves namespace workers to their default (half the workers); the
                // plain manifests spell that default out.
                let workers: u32 = env_of(doc, "ARTGC_WORKERS").unwrap().parse().unwrap();
                assert_eq!(
                    env_of(doc, "ARTGC_NAMESPACE_WORKERS"),
                    Some((workers / 2).to_string())
                );
                assert_eq!(env_of(r, "ARTGC_NAMESPACE_WORKERS"), None);
                let settings = |d: &Value| {
                    let c = &d["spec"]["template"]["spec"]["containers"][0];
                    let mut env: Vec<String> = c["env"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|e| e["name"] != "ARTGC_NAMESPACE_WORKERS")
                        .map(|e| format!("{}={}{}", e["name"], e["value"], e["valueFrom"]))
                        .collect();
                    env.sort();
                    (c["args"].clone(), env, c["ports"].clone())
                };
                assert_eq!(settings(doc), settings(r), "the controller's settings");
            }
            _ => {}
        }
    }
}

/// With prometheusRule.enabled the chart renders one PrometheusRule whose groups are exactly
/// deploy/prometheus/artgc-alerts.yaml's (Prometheus' `{{ $labels }}` templates untouched by
/// Helm), labelled for the operator's ruleSelector; off by default.
#[ignore = "needs helm: eval \"$(.ci/tools.sh)\", then cargo test -- --include-ignored"]
#[test]
fn the_chart_ships_the_alert_rules_as_a_prometheus_rule() {
    let Some(default) = helm_template(&[]) else {
        return;
    };
    assert!(!default.iter().any(|d| d["kind"] == "PrometheusRule"));
    let docs = helm_template(&[
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=prometheus",
    ])
    .unwrap();
    let rules: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1);
    let rule = rules[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let plain = &parse_documents(
        "artgc-alerts.yaml",
        &read("deploy/prometheus/artgc-alerts.yaml"),
    )
    .unwrap()[0];
    assert_eq!(rule["spec"]["groups"], plain["groups"]);
    let text = serde_json::to_string(&rule["spec"]).unwrap();
    assert!(text.contains("{{ $labels.namespace }}"), "{text}");
    let monitor = helm_template(&["--set", "serviceMonitor.enabled=true"]).unwrap();
    let sm = monitor
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .unwrap();
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true);
}
