//! Kubernetes manifests as text: YAML (multi-document) or JSON, single objects or `kind: List` /
//! `WorkflowList` as `kubectl get -o yaml|json` prints them. Workflows, ConfigMaps and Secrets
//! are kept; other kinds are ignored. Reading files is the IO crate's (`artgc::source`).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::Value;

use crate::error::InputError;
use crate::model::Workflow;

/// A Workflow as read: typed, or the error that stopped it, with its name for the report.
#[derive(Debug, Clone)]
pub enum WorkflowInput {
    Valid(Box<Workflow>),
    Invalid {
        namespace: String,
        name: String,
        error: InputError,
    },
}

impl WorkflowInput {
    /// Converts one Workflow object; a bad field is an error naming it, not a failure of the
    /// whole input.
    pub fn from_value(value: Value, default_namespace: &str) -> Self {
        let meta = |k: &str| value["metadata"][k].as_str().map(str::to_string);
        let namespace = meta("namespace").unwrap_or_else(|| default_namespace.to_string());
        let name = meta("name")
            .or_else(|| meta("generateName"))
            .unwrap_or_default();
        match serde_path_to_error::deserialize::<_, Workflow>(value) {
            Ok(mut wf) => {
                wf.metadata.namespace.get_or_insert(namespace);
                wf.apply_template_defaults();
                Self::Valid(Box::new(wf))
            }
            Err(e) => Self::Invalid {
                namespace,
                name,
                error: InputError::Field {
                    field: e.path().to_string(),
                    reason: e.inner().to_string(),
                },
            },
        }
    }

    /// As [`WorkflowInput::from_value`], from JSON text: no intermediate JSON tree, which
    /// matters for the controller's watch of many large Workflows.
    /// The same input with its compressed nodes read, once, within `limit` bytes
    /// (`--max-node-status-bytes`; see [`crate::nodes::unpack`]).
    pub fn unpacked(mut self, limit: u64) -> Self {
        if let Self::Valid(wf) = &mut self {
            crate::nodes::unpack(wf, limit);
        }
        self
    }

    pub fn from_json(text: &str, default_namespace: &str) -> Self {
        let mut de = serde_json::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, Workflow>(&mut de) {
            Ok(mut wf) => {
                wf.metadata
                    .namespace
                    .get_or_insert_with(|| default_namespace.to_string());
                wf.apply_template_defaults();
                Self::Valid(Box::new(wf))
            }
            // The error path: read it again as a tree, for the name and the same message.
            Err(_) => match serde_json::from_str::<Value>(text) {
                Ok(v) => Self::from_value(v, default_namespace),
                Err(e) => Self::Invalid {
                    namespace: default_namespace.to_string(),
                    name: String::new(),
                    error: InputError::Field {
                        field: ".".into(),
                        reason: e.to_string(),
                    },
                },
            },
        }
    }
}

/// Everything read from the inputs.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    pub workflows: Vec<WorkflowInput>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
}

impl Inventory {
    /// Adds the objects of one file's text; `origin` names it in errors.
    pub fn add_text(
        &mut self,
        origin: &str,
        text: &str,
        default_namespace: &str,
    ) -> Result<(), InputError> {
        for doc in parse_documents(origin, text)? {
            self.add_object(origin, doc, default_namespace)?;
        }
        Ok(())
    }

    fn add_object(&mut self, origin: &str, obj: Value, ns: &str) -> Result<(), InputError> {
        if obj.is_null() {
            return Ok(());
        }
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let field_error = |kind: &str, e: serde_json::Error| InputError::Parse {
            file: origin.to_string(),
            message: format!("{kind} {}: {e}", obj["metadata"]["name"]),
        };
        match (api_version, kind.as_str()) {
            (_, k) if k == "List" || k.ends_with("List") => {
                let Value::Object(mut map) = obj else {
                    return Ok(());
                };
                if let Some(Value::Array(items)) = map.remove("items") {
                    for item in items {
                        self.add_object(origin, item, ns)?;
                    }
                }
            }
            (v, "Workflow") if v.starts_with("argoproj.io/") => {
                self.workflows.push(WorkflowInput::from_value(obj, ns));
            }
            ("v1", "ConfigMap") => {
                let mut cm: ConfigMap =
                    serde_json::from_value(obj.clone()).map_err(|e| field_error("ConfigMap", e))?;
                cm.metadata.namespace.get_or_insert_with(|| ns.to_string());
                self.config_maps.push(cm);
            }
            ("v1", "Secret") => {
                let mut secret: Secret =
                    serde_json::from_value(obj.clone()).map_err(|e| field_error("Secret", e))?;
                secret
                    .metadata
                    .namespace
                    .get_or_insert_with(|| ns.to_string());
                // As the API server does: stringData is merged into data and wins.
                if let Some(strings) = secret.string_data.take() {
                    let data = secret.data.get_or_insert_with(Default::default);
                    for (k, v) in strings {
                        data.insert(k, ByteString(v.into_bytes()));
                    }
                }
                self.secrets.push(secret);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Parses a file's text as JSON (when it looks like JSON) or multi-document YAML.
pub fn parse_documents(origin: &str, text: &str) -> Result<Vec<Value>, InputError> {
    let parse_err = |message: String| InputError::Parse {
        file: origin.to_string(),
        message,
    };
    if text.trim_start().starts_with(['{', '[']) {
        let mut out = Vec::new();
        for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            out.push(
                doc.map_err(|e| {
                    parse_err(format!("line {} column {}: {e}", e.line(), e.column()))
                })?,
            );
        }
        return Ok(out);
    }
    serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options())
        .map_err(|e| parse_err(e.to_string()))
}

/// Lifts serde-saphyr's limits, which are sized for config files, to what `kubectl get -A -o
/// yaml` prints for a busy cluster; the guards against alias bombs stay. YAML 1.2 booleans only:
/// a plain `n`, `y`, `no` or `on` is text, as `kubectl` reads it into a string field (the objects
/// are read untyped first, so YAML 1.1's booleans would turn `name: n` into `false`).
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(8 << 30);
    budget.max_events = usize::MAX;
    budget.max_documents = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    budget.max_depth = 256;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_boolean_words_in_string_fields_stay_text() {
        let text = "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata: {name: n, namespace: y}\n\
            spec:\n  templates: [{name: no, outputs: {artifacts: [{name: on, s3: {key: off}}]}}]\n\
            status: {phase: Succeeded}\n";
        let mut inv = Inventory::default();
        inv.add_text("w.yaml", text, "default").unwrap();
        let WorkflowInput::Valid(wf) = &inv.workflows[0] else {
            panic!("{:?}", inv.workflows[0]);
        };
        assert_eq!((wf.name(), wf.namespace()), ("n", "y"));
        let t = &wf.spec.templates[0];
        assert_eq!(t.name.as_deref(), Some("no"));
        let art = &t.outputs.as_ref().unwrap().artifacts[0];
        assert_eq!(art.name, "on");
        assert_eq!(
            art.location.s3.as_ref().unwrap().key.as_deref(),
            Some("off")
        );
    }

    #[test]
    fn yaml_error_names_file_and_position() {
        let err = parse_documents("bad.yaml", "a: [1, 2\nb: c\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("bad.yaml: "), "{text}");
        assert!(text.contains("line") || text.contains(':'), "{text}");
    }

    #[test]
    fn json_error_names_line() {
        let err = parse_documents("bad.json", "{\"a\": }").unwrap_err();
        assert!(err.to_string().contains("bad.json: line 1"), "{err}");
    }

    #[test]
    fn lists_secrets_and_other_kinds() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: argoproj.io/v1alpha1
  kind: Workflow
  metadata: {name: a}
- apiVersion: v1
  kind: Secret
  metadata: {name: s, namespace: ns1}
  data: {accesskey: YWJj}
  stringData: {secretkey: xyz}
- apiVersion: v1
  kind: Pod
  metadata: {name: p}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {k: v}
"#;
        let mut inv = Inventory::default();
        inv.add_text("t.yaml", text, "dflt").unwrap();
        assert_eq!(inv.workflows.len(), 1);
        let WorkflowInput::Valid(wf) = &inv.workflows[0] else {
            panic!("workflow should parse")
        };
        assert_eq!(wf.namespace(), "dflt");
        let data = inv.secrets[0].data.as_ref().unwrap();
        assert_eq!(data["accesskey"].0, b"abc");
        assert_eq!(data["secretkey"].0, b"xyz");
        assert_eq!(
            inv.config_maps[0].metadata.namespace.as_deref(),
            Some("dflt")
        );
    }

    #[test]
    fn bad_workflow_field_is_named_and_does_not_stop_others() {
        let text = r#"
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {name: broken, namespace: ns}
status:
  nodes: "not a map"
---
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {name: fine, namespace: ns}
"#;
        let mut inv = Inventory::default();
        inv.add_text("t.yaml", text, "default").unwrap();
        match &inv.workflows[0] {
            WorkflowInput::Invalid { name, error, .. } => {
                assert_eq!(name, "broken");
                assert!(error.to_string().starts_with("status.nodes:"), "{error}");
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        assert!(matches!(inv.workflows[1], WorkflowInput::Valid(_)));
    }
}
