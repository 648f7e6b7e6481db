//! A Kubernetes API server for tests: generic storage for any group/version/plural, served over
//! HTTP on a loopback port so kube-rs (and kubectl) talk to it as to a real one.
//!
//! What it does, and why each point matters to kube-rs: server-stamped `resourceVersion` from
//! one counter, `uid`, `creationTimestamp`, `generation`; list kinds with a list
//! resourceVersion; watch from a resourceVersion with bookmarks, `timeoutSeconds`, and `410
//! Expired` once history is compacted; label selectors (`=`, `==`, `!=`, `in`, `notin`,
//! existence) and `metadata.name`/`metadata.namespace` field selectors; `Status` errors with
//! reasons; 409 on a stale resourceVersion; merge, strategic (as merge), JSON patch (with `test`,
//! where `null` matches a missing path) and server-side apply (as merge, with field ownership so
//! that a second manager's apply conflicts); DELETE that only marks objects with finalizers;
//! no new finalizers on a deleting object; discovery for kubectl. Faults are injected from test
//! code; every request is logged.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A kind of object the server knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
}

impl ResourceType {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn id(&self) -> String {
        format!("{}/{}/{}", self.group, self.version, self.plural)
    }
}

/// The resources every server starts with.
fn builtin_types() -> Vec<ResourceType> {
    vec![
        ResourceType::new("", "v1", "namespaces", "Namespace", false),
        ResourceType::new("", "v1", "configmaps", "ConfigMap", true),
        ResourceType::new("", "v1", "secrets", "Secret", true),
        ResourceType::new("", "v1", "events", "Event", true),
        ResourceType::new("", "v1", "pods", "Pod", true),
        ResourceType::new("", "v1", "serviceaccounts", "ServiceAccount", true),
        ResourceType::new("events.k8s.io", "v1", "events", "Event", true),
        ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease", true),
        ResourceType::new("argoproj.io", "v1alpha1", "workflows", "Workflow", true),
        ResourceType::new(
            "argoproj.io",
            "v1alpha1",
            "workflowtemplates",
            "WorkflowTemplate",
            true,
        ),
    ]
}

/// Fail the next `times` requests whose method matches and whose path contains `path`.
#[derive(Debug, Clone)]
pub struct KubeFault {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub times: usize,
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

/// What selectors look at, kept beside the serialized object.
#[derive(Debug, Clone)]
struct ObjMeta {
    namespace: Option<String>,
    name: String,
    labels: Value,
}

fn meta_of(obj: &Value) -> ObjMeta {
    ObjMeta {
        namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
        name: obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        labels: obj["metadata"]["labels"].clone(),
    }
}

/// A change, as watches replay it. The object is shared with the store, not copied.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    kind: &'static str,
    type_id: String,
    meta: ObjMeta,
    json: Bytes,
}

struct Watcher {
    type_id: String,
    namespace: Option<String>,
    selector: Selector,
    fields: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Watcher {
    fn sees(&self, meta: &ObjMeta) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta.namespace.as_deref() == Some(ns))
            && self.selector.matches(&meta.labels)
            && fields_match(&self.fields, meta)
    }
}

/// An object, serialized once: GET, LIST and watch send these bytes as they are.
struct Stored {
    json: Bytes,
    meta: ObjMeta,
    /// Field path -> manager, for objects written by server-side apply (empty otherwise).
    owners: BTreeMap<String, String>,
}

impl Stored {
    fn value(&self) -> Value {
        serde_json::from_slice(&self.json).expect("stored objects are valid JSON")
    }
}

struct State {
    types: Vec<ResourceType>,
    objects: BTreeMap<(String, String, String), Stored>,
    rv: u64,
    history: VecDeque<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest_rv: u64,
    history_limit: usize,
    watchers: Vec<Watcher>,
    faults: Vec<KubeFault>,
    latency: Duration,
    /// Latency for requests of one method only (e.g. every PATCH), on top of `latency`.
    method_latency: Option<(String, Duration)>,
    log: Vec<KubeRequest>,
    log_requests: bool,
}

/// A running API server. Dropping it stops it.
pub struct KubeApiServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.drop_watches();
    }
}

impl KubeApiServer {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        let (listener, addr) = crate::http::bind_loopback().await;
        let url = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State {
            types: builtin_types(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            oldest_rv: 1,
            history_limit: 100_000,
            watchers: Vec::new(),
            faults: Vec::new(),
            latency: Duration::ZERO,
            method_latency: None,
            log: Vec::new(),
            log_requests: true,
        }));
        let st = state.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(handle(req, st).await) }
        });
        let stop = crate::http::serve(listener, svc, None);
        Self {
            url,
            state,
            stop: Some(stop),
        }
    }

    /// A kube-rs client for this server, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    /// A kubeconfig file pointing at this server, for programs run as separate processes
    /// (`KUBECONFIG=path`), with `namespace` as the context's default.
    pub fn write_kubeconfig(&self, path: &std::path::Path, namespace: &str) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\ncurrent-context: test\n",
            self.url
        );
        std::fs::write(path, text)
    }

    /// Makes another kind of object known (e.g. a CRD's).
    pub fn register(&self, t: ResourceType) {
        let mut st = self.state.lock().unwrap();
        if !st.types.contains(&t) {
            st.types.push(t);
        }
    }

    /// Creates an object as a POST would (server fields stamped); returns it.
    pub fn seed(&self, object: Value) -> Value {
        let mut st = self.state.lock().unwrap();
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let t = st
            .types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
            .unwrap_or_else(|| panic!("unknown type {api_version} {kind}"));
        let ns = object["metadata"]["namespace"]
            .as_str()
            .map(str::to_string)
            .or_else(|| t.namespaced.then(|| "default".to_string()));
        // As `kubectl create namespace` before the rest: a seeded object's namespace exists.
        if let Some(ns) = ns.as_deref()
            && !st.namespace_exists(ns)
        {
            let namespaces = builtin_types().swap_remove(0);
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            if let Err(e) = st.create(&namespaces, None, namespace, None) {
                panic!("seed: namespace {ns}: {}", e.1);
            }
        }
        match st.create(&t, ns.as_deref(), object, None) {
            Ok(o) => serde_json::from_slice(&o).expect("json"),
            Err(e) => panic!("seed: {}", e.1),
        }
    }

    /// An object as stored, or None.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let st = self.state.lock().unwrap();
        let t = st
            .types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)?;
        let key = (
            t.id(),
            namespace.unwrap_or_default().to_string(),
            name.to_string(),
        );
        st.objects.get(&key).map(Stored::value)
    }

    /// Every stored object of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        let Some(t) = st
            .types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
        else {
            return Vec::new();
        };
        let id = t.id();
        st.objects
            .iter()
            .filter(|((tid, _, _), _)| *tid == id)
            .map(|(_, s)| s.value())
            .collect()
    }

    pub fn inject(&self, fault: KubeFault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// Drops every injected fault not yet used up.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Delay before every request is handled.
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// Delays every new request of `method` (`"PATCH"`, ...) by `latency`; `None` ends it.
    pub fn set_method_latency(&self, method: Option<(&str, Duration)>) {
        self.state.lock().unwrap().method_latency = method.map(|(m, d)| (m.to_string(), d));
    }

    /// Closes every open watch stream (clients must re-watch).
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().watchers.clear();
    }

    /// Forgets all watch history: a watch resuming from any earlier resourceVersion gets 410.
    pub fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.history.clear();
        st.rv += 1;
        st.oldest_rv = st.rv;
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.state.lock().unwrap().log.clone()
    }

    /// Turns the request log off (for benchmarks with many requests).
    pub fn set_request_log(&self, on: bool) {
        self.state.lock().unwrap().log_requests = on;
    }

    /// The server's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.lock().unwrap().rv
    }
}

// ---------------------------------------------------------------- errors

type ApiError = (u16, String, &'static str);

fn status_body(code: u16, message: &str, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn not_found(what: &str) -> ApiError {
    (404, format!("{what} not found"), "NotFound")
}

fn conflict(message: String) -> ApiError {
    (409, message, "Conflict")
}

/// What is wrong with `name` for a `kind` object, as the API server says it: a Namespace's name
/// is a DNS-1123 label, every other name here a DNS-1123 subdomain.
fn name_problem(kind: &str, name: &str) -> Option<&'static str> {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if kind == "Namespace" {
        if name.len() > 63 {
            return Some("must be no more than 63 characters");
        }
        if !label(name) {
            return Some(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            );
        }
        return None;
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    if !name.split('.').all(label) {
        return Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        );
    }
    None
}

fn invalid(message: String) -> ApiError {
    (422, message, "Invalid")
}

// ---------------------------------------------------------------- selectors

#[derive(Debug, Clone, Default)]
struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        for p in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let rest = rest.trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("bad set in {p:?}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(v)?)
            } else if let Some((k, v)) = p.split_once(" in ") {
                Requirement::In(k.trim().into(), set(v)?)
            } else {
                Requirement::Exists(p.into())
            };
            out.push(req);
        }
        Ok(Self(out))
    }

    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A Secret's write-only `stringData` is merged into `data`, base64-encoded, as the API server
/// does.
fn fold_string_data(t: &ResourceType, obj: &mut Value) {
    use base64::Engine;
    if t.kind != "Secret" {
        return;
    }
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// `rv:namespace:name`; names and namespaces never contain `:`.
fn parse_continue(token: &str) -> Option<(u64, String, String)> {
    let mut parts = token.splitn(3, ':');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_string(), parts.next()?.to_string()))
}

fn field_selector(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once("==")
                .or_else(|| p.split_once('='))
                .ok_or_else(|| format!("unsupported field selector {p:?}"))?;
            match k {
                "metadata.name" | "metadata.namespace" => Ok((k.to_string(), v.to_string())),
                _ => Err(format!("field selector {k:?} is not supported")),
            }
        })
        .collect()
}

fn fields_match(fields: &[(String, String)], meta: &ObjMeta) -> bool {
    fields.iter().all(|(k, v)| {
        let actual = match k.as_str() {
            "metadata.name" => Some(meta.name.as_str()),
            _ => meta.namespace.as_deref(),
        };
        actual == Some(v.as_str())
    })
}

// ---------------------------------------------------------------- state

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Leaf paths of a JSON object (for field ownership).
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                leaves(v, &format!("{prefix}/{k}"), out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl State {
    fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Serializes the new state of an object once, tells matching watches, keeps it in the
    /// history, and hands the bytes back for the store.
    fn record(&mut self, kind: &'static str, t: &ResourceType, object: &Value) -> (Bytes, ObjMeta) {
        let json = Bytes::from(serde_json::to_vec(object).expect("json"));
        let meta = meta_of(object);
        let line = watch_line(kind, &json);
        let type_id = t.id();
        self.watchers.retain(|w| {
            if w.type_id != type_id || !w.sees(&meta) {
                return true;
            }
            w.tx.send(line.clone()).is_ok()
        });
        self.history.push_back(Event {
            rv: self.rv,
            kind,
            type_id,
            meta: meta.clone(),
            json: json.clone(),
        });
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.oldest_rv = old.rv + 1;
            }
        }
        (json, meta)
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        let key = ("/v1/namespaces".to_string(), String::new(), ns.to_string());
        self.objects.contains_key(&key)
    }

    fn create(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        applied_by: Option<&str>,
    ) -> Result<Bytes, ApiError> {
        if !obj.is_object() {
            return Err((400, "body is not an object".into(), "BadRequest"));
        }
        let mut name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let Some(prefix) = obj["metadata"]["generateName"].as_str() else {
                return Err(invalid("metadata.name: Required value".into()));
            };
            name = format!("{prefix}{:05x}", rand::random::<u32>() & 0xfffff);
        }
        if let Some(problem) = name_problem(&t.kind, &name) {
            return Err(invalid(format!(
                "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": {problem}",
                t.kind
            )));
        }
        if let (Some(body_ns), Some(ns)) = (obj["metadata"]["namespace"].as_str(), ns)
            && body_ns != ns
        {
            return Err((
                400,
                "the namespace of the object does not match the namespace on the request".into(),
                "BadRequest",
            ));
        }
        if let Some(ns) = ns
            && !self.namespace_exists(ns)
        {
            return Err(not_found(&format!("namespaces \"{ns}\"")));
        }
        let key = (t.id(), ns.unwrap_or_default().to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err((
                409,
                format!("{} \"{name}\" already exists", t.plural),
                "AlreadyExists",
            ));
        }
        fold_string_data(t, &mut obj);
        let rv = self.next_rv();
        let meta = obj["metadata"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut meta = Value::Object(meta);
        meta["name"] = json!(name);
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            rand::random::<u32>(),
            rand::random::<u16>(),
            rand::random::<u16>() & 0xfff,
            rand::random::<u16>() & 0xfff,
            rand::random::<u64>() & 0xffff_ffff_ffff
        ));
        meta["resourceVersion"] = json!(rv);
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        obj["metadata"] = meta;
        obj["apiVersion"] = json!(t.api_version());
        obj["kind"] = json!(t.kind);
        let mut owners = BTreeMap::new();
        if let Some(m) = applied_by {
            let mut l = Vec::new();
            leaves(&obj, "", &mut l);
            for (p, _) in l.into_iter().filter(|(p, _)| !p.starts_with("/metadata")) {
                owners.insert(p, m.to_string());
            }
        }
        let (json, meta) = self.record("ADDED", t, &obj);
        self.objects.insert(
            key,
            Stored {
                json: json.clone(),
                meta,
                owners,
            },
        );
        Ok(json)
    }

    /// Stores `new` as the next version of an existing object, with the checks of an update.
    fn update(
        &mut self,
        t: &ResourceType,
        key: &(String, String, String),
        mut new: Value,
        manager: &str,
    ) -> Result<Bytes, ApiError> {
        let old = self
            .objects
            .get(key)
            .ok_or_else(|| not_found(&format!("{} \"{}\"", t.plural, key.2)))?;
        let old_obj = old.value();
        if let Some(rv) = rv_of(&new)
            && Some(rv) != rv_of(&old_obj)
        {
            return Err(conflict(format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                t.plural, key.2
            )));
        }
        // As the real server: a uid in the request is a precondition.
        if let Some(uid) = new["metadata"]["uid"].as_str()
            && Some(uid) != old_obj["metadata"]["uid"].as_str()
        {
            return Err(conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old_obj["metadata"]["uid"].as_str().unwrap_or_default()
            )));
        }
        if new["metadata"]["name"].as_str().is_some_and(|n| n != key.2) {
            return Err((
                400,
                "the name of the object does not match the name on the URL".into(),
                "BadRequest",
            ));
        }
        fold_string_data(t, &mut new);
        let deleting = old_obj["metadata"].get("deletionTimestamp").is_some();
        let old_fin = finalizers(&old_obj);
        let new_fin = finalizers(&new);
        if deleting && new_fin.iter().any(|f| !old_fin.contains(f)) {
            return Err(invalid(format!(
                "{} \"{}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                t.kind, key.2
            )));
        }
        // Server-owned metadata cannot be changed by clients.
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "namespace",
            "name",
        ] {
            match old_obj["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        new["apiVersion"] = json!(t.api_version());
        new["kind"] = json!(t.kind);
        new["metadata"]["resourceVersion"] = old_obj["metadata"]["resourceVersion"].clone();
        if new == old_obj {
            return Ok(old.json.clone());
        }
        let spec_changed = {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            strip(&new) != strip(&old_obj)
        };
        if spec_changed {
            let g = old_obj["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        // Owned fields this write changed now belong to its manager; removed ones to nobody.
        let stored = self.objects.get_mut(key).expect("checked above");
        if !stored.owners.is_empty() {
            let (mut before, mut after) = (Vec::new(), Vec::new());
            leaves(&old_obj, "", &mut before);
            leaves(&new, "", &mut after);
            let before: BTreeMap<_, _> = before.into_iter().collect();
            let after: BTreeMap<_, _> = after.into_iter().collect();
            stored.owners.retain(|p, _| after.contains_key(p));
            for (p, owner) in stored.owners.iter_mut() {
                if before.get(p) != after.get(p) {
                    *owner = manager.to_string();
                }
            }
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv);
        if deleting && new_fin.is_empty() {
            self.objects.remove(key);
            return Ok(self.record("DELETED", t, &new).0);
        }
        let (json, meta) = self.record("MODIFIED", t, &new);
        let stored = self.objects.get_mut(key).expect("present");
        stored.json = json.clone();
        stored.meta = meta;
        Ok(json)
    }

    fn delete(
        &mut self,
        t: &ResourceType,
        key: &(String, String, String),
    ) -> Result<Bytes, ApiError> {
        let stored = self
            .objects
            .get(key)
            .ok_or_else(|| not_found(&format!("{} \"{}\"", t.plural, key.2)))?;
        let mut obj = stored.value();
        if finalizers(&obj).is_empty() {
            self.objects.remove(key);
            obj["metadata"]["resourceVersion"] = json!(self.next_rv());
            return Ok(self.record("DELETED", t, &obj).0);
        }
        if obj["metadata"].get("deletionTimestamp").is_some() {
            return Ok(stored.json.clone());
        }
        obj["metadata"]["deletionTimestamp"] = json!(now());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        let (json, meta) = self.record("MODIFIED", t, &obj);
        let stored = self.objects.get_mut(key).expect("present");
        stored.json = json.clone();
        stored.meta = meta;
        Ok(json)
    }

    fn apply(
        &mut self,
        t: &ResourceType,
        key: &(String, String, String),
        patch: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Bytes, ApiError> {
        let Some(stored) = self.objects.get(key) else {
            let ns = (!key.1.is_empty()).then_some(key.1.as_str());
            let mut obj = patch.clone();
            obj["metadata"]["name"] = json!(key.2);
            return self.create(t, ns, obj, Some(manager));
        };
        let mut applied = Vec::new();
        leaves(patch, "", &mut applied);
        let current = stored.value();
        for (path, value) in &applied {
            if path.starts_with("/metadata") || path == "/apiVersion" || path == "/kind" {
                continue;
            }
            if let Some(owner) = stored.owners.get(path)
                && owner != manager
                && !force
                && current.pointer(path) != Some(value)
            {
                return Err(conflict(format!(
                    "Apply failed with 1 conflict: conflict with \"{owner}\": {path}"
                )));
            }
        }
        let mut new = current;
        json_patch::merge(&mut new, patch);
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let out = self.update(t, key, new, manager)?;
        if let Some(s) = self.objects.get_mut(key) {
            for (path, value) in applied {
                if !path.starts_with("/metadata") && !value.is_null() {
                    s.owners.insert(path, manager.to_string());
                }
            }
        }
        Ok(out)
    }
}

/// One watch event line around an already serialized object.
fn watch_line(kind: &str, json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(json.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

// ---------------------------------------------------------------- HTTP

fn raw(json: Bytes, status: u16) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(json).boxed_unsync())
        .expect("response")
}

fn full(v: Value, status: u16) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&v).expect("json"))).boxed_unsync())
        .expect("response")
}

fn error(e: ApiError) -> Response<Body> {
    full(status_body(e.0, &e.1, e.2), e.0)
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                let s = s.replace('+', " ");
                let bytes = s.as_bytes();
                let mut out = Vec::with_capacity(bytes.len());
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'%'
                        && i + 2 < bytes.len()
                        && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
                    {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    out.push(bytes[i]);
                    i += 1;
                }
                String::from_utf8_lossy(&out).into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let (latency, fault) = {
        let mut s = st.lock().unwrap();
        let fault = s
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path))
            .map(|f| {
                f.times -= 1;
                f.status
            });
        let extra = s
            .method_latency
            .as_ref()
            .filter(|(m, _)| *m == method)
            .map_or(Duration::ZERO, |(_, d)| *d);
        (s.latency + extra, fault)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let resp = match fault {
        Some(code) => error((code, "injected by the test server".into(), "InternalError")),
        None => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            route(&st, &method, &path, &query, &content_type, &body)
        }
    };
    let mut s = st.lock().unwrap();
    if s.log_requests {
        s.log.push(KubeRequest {
            method,
            path,
            query,
            status: resp.status().as_u16(),
        });
    }
    resp
}

fn route(
    st: &Arc<Mutex<State>>,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let q = query_map(query);
    match segs.as_slice() {
        ["version"] => full(
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-artgc-testkit", "platform": "linux/amd64"}),
            200,
        ),
        ["healthz" | "livez" | "readyz"] => full(json!("ok"), 200),
        ["api"] => full(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            200,
        ),
        ["apis"] => discovery_groups(&st.lock().unwrap()),
        ["api", "v1"] => discovery_resources(&st.lock().unwrap(), "", "v1"),
        ["apis", g] => {
            let s = st.lock().unwrap();
            let versions: Vec<String> = s
                .types
                .iter()
                .filter(|t| t.group == *g)
                .map(|t| t.version.clone())
                .collect();
            match versions.first() {
                None => error(not_found(&format!("group {g}"))),
                Some(v) => full(
                    json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
                    "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}],
                    "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v}}),
                    200,
                ),
            }
        }
        ["apis", g, v] => discovery_resources(&st.lock().unwrap(), g, v),
        ["api", "v1", rest @ ..] => resource(st, method, "", "v1", rest, &q, content_type, body),
        ["apis", g, v, rest @ ..] => resource(st, method, g, v, rest, &q, content_type, body),
        _ => error(not_found(&format!("path {path}"))),
    }
}

/// TokenRequest (`serviceaccounts/NAME/token`): a JWT-shaped token naming the account as the
/// real server's does (`sub: system:serviceaccount:NS:NAME`, the requested audiences); the
/// signature is not a real one, and the STS double does not check it.
fn token_request(s: &State, group: &str, ns: &str, name: &str, body: &[u8]) -> Response<Body> {
    use base64::Engine;
    let exists = s
        .objects
        .keys()
        .any(|(id, ons, oname)| id == "/v1/serviceaccounts" && ons == ns && oname == name);
    if !group.is_empty() || !exists {
        return error(not_found(&format!("serviceaccounts \"{name}\"")));
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let audiences = req["spec"]["audiences"].clone();
    let seconds = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let now = jiff::Timestamp::now();
    let exp = now.as_second() + seconds;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let claims = json!({
        "iss": "artgc-testkit", "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": audiences, "exp": exp, "iat": now.as_second(),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name}},
    });
    let token = format!(
        "{}.{}.testkit",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let expires = jiff::Timestamp::from_second(exp).unwrap_or(now);
    full(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "metadata": {"name": name, "namespace": ns},
               "spec": req["spec"],
               "status": {"token": token, "expirationTimestamp": expires.to_string()}}),
        201,
    )
}

fn discovery_groups(s: &State) -> Response<Body> {
    let mut groups: BTreeMap<&str, &str> = BTreeMap::new();
    for t in s.types.iter().filter(|t| !t.group.is_empty()) {
        groups.entry(&t.group).or_insert(&t.version);
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    full(
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        200,
    )
}

fn discovery_resources(s: &State, group: &str, version: &str) -> Response<Body> {
    let resources: Vec<Value> = s
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| {
            json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                   "kind": t.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
        })
        .collect();
    if resources.is_empty() {
        return error(not_found(&format!("{group}/{version}")));
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    full(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        200,
    )
}

#[allow(clippy::too_many_arguments)]
fn resource(
    st: &Arc<Mutex<State>>,
    method: &str,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &BTreeMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let mut s = st.lock().unwrap();
    // [namespaces, NS, plural, name?] | [plural, name?]
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if s.find_type(group, version, plural)
                .is_some_and(|t| t.namespaced) =>
        {
            (
                Some(ns.to_string()),
                plural.to_string(),
                tail.first().map(|n| n.to_string()),
            )
        }
        [plural, tail @ ..] => (
            None,
            plural.to_string(),
            tail.first().map(|n| n.to_string()),
        ),
        [] => return error(not_found("resource")),
    };
    if let (["namespaces", ns, "serviceaccounts", name, "token"], "POST") = (rest, method) {
        return token_request(&s, group, ns, name, body);
    }
    if rest.len() > if ns.is_some() { 4 } else { 2 } {
        return error(not_found("subresource"));
    }
    let Some(t) = s.find_type(group, version, &plural) else {
        return error(not_found(&format!(
            "the server could not find the requested resource ({plural})"
        )));
    };
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| (400, format!("invalid JSON body: {e}"), "BadRequest"))
    };
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    match (method, name) {
        ("GET", None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(&mut s, &t, ns.as_deref(), q)
        }
        ("GET", None) => {
            let selector = match Selector::parse(q.get("labelSelector").map_or("", String::as_str))
            {
                Ok(sel) => sel,
                Err(e) => return error((400, e, "BadRequest")),
            };
            let fields = match field_selector(q.get("fieldSelector").map_or("", String::as_str)) {
                Ok(f) => f,
                Err(e) => return error((400, e, "BadRequest")),
            };
            let id = t.id();
            let limit = q
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|&l| l > 0);
            // `continue` carries the list's resourceVersion and the last key served. Pages are
            // read from the current state (a real server reads a snapshot); watchers that start
            // at the first page's version see the changes again, which they tolerate.
            let (list_rv, start) = match q.get("continue").filter(|c| !c.is_empty()) {
                Some(token) => match parse_continue(token) {
                    Some((rv, ons, name)) => (rv, Some((id.clone(), ons, name))),
                    None => return error((400, "invalid continue token".into(), "BadRequest")),
                },
                None => (s.rv, None),
            };
            let lower = match &start {
                Some(k) => Bound::Excluded(k.clone()),
                None => Bound::Included((id.clone(), String::new(), String::new())),
            };
            let mut items = s
                .objects
                .range((lower, Bound::Unbounded))
                .take_while(|((tid, _, _), _)| *tid == id)
                .filter(|((_, ons, _), _)| ns.as_deref().is_none_or(|n| n == ons))
                .filter(|(_, o)| {
                    selector.matches(&o.meta.labels) && fields_match(&fields, &o.meta)
                });
            // The list is written around the stored bytes, not rebuilt as a JSON value.
            let mut body = Vec::new();
            body.extend_from_slice(b"\"items\":[");
            let mut served = 0;
            let mut last = None;
            for (k, o) in items.by_ref() {
                if served > 0 {
                    body.push(b',');
                }
                served += 1;
                body.extend_from_slice(&o.json);
                last = Some(k);
                if limit.is_some_and(|l| served == l) {
                    break;
                }
            }
            let more = limit.is_some_and(|l| served == l) && items.next().is_some();
            let mut meta = json!({"resourceVersion": list_rv.to_string()});
            if more && let Some((_, ons, name)) = last {
                meta["continue"] = json!(format!("{list_rv}:{ons}:{name}"));
            }
            let head = json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
                              "metadata": meta});
            let mut out = serde_json::to_vec(&head).expect("json");
            out.pop();
            out.push(b',');
            out.extend_from_slice(&body);
            out.extend_from_slice(b"]}");
            raw(Bytes::from(out), 200)
        }
        ("POST", None) => {
            match parse_body().and_then(|b| s.create(&t, ns.as_deref(), b, Some(&manager))) {
                Ok(o) => raw(o, 201),
                Err(e) => error(e),
            }
        }
        (m, Some(name)) => {
            let key = (t.id(), ns.clone().unwrap_or_default(), name.clone());
            let missing = || not_found(&format!("{} \"{name}\"", t.plural));
            let result = match m {
                "GET" => s
                    .objects
                    .get(&key)
                    .map(|o| o.json.clone())
                    .ok_or_else(missing),
                "PUT" => parse_body().and_then(|b| s.update(&t, &key, b, &manager)),
                "DELETE" => s.delete(&t, &key),
                "PATCH" => parse_body().and_then(|patch| {
                    if content_type.starts_with("application/apply-patch") {
                        let force = q.get("force").is_some_and(|f| f == "true");
                        return s.apply(&t, &key, &patch, &manager, force);
                    }
                    let current = s.objects.get(&key).map(Stored::value).ok_or_else(missing)?;
                    let mut new = current.clone();
                    if content_type.starts_with("application/json-patch") {
                        let ops = json_patch_ops(&current, patch.clone())?;
                        json_patch::patch(&mut new, &ops)
                            .map_err(|e| invalid(format!("json patch: {e}")))?;
                    } else {
                        json_patch::merge(&mut new, &patch);
                    }
                    // A patch without resourceVersion applies to the latest version.
                    if new["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
                        && patch.pointer("/metadata/resourceVersion").is_none()
                        && let Some(m) = new["metadata"].as_object_mut()
                    {
                        m.remove("resourceVersion");
                    }
                    s.update(&t, &key, new, &manager)
                }),
                _ => Err((405, format!("method {m} not allowed"), "MethodNotAllowed")),
            };
            match result {
                Ok(o) => raw(o, 200),
                Err(e) => error(e),
            }
        }
        (m, None) => error((
            405,
            format!("method {m} not allowed on a collection"),
            "MethodNotAllowed",
        )),
    }
}

/// JSON patch operations, with Kubernetes' leniency: a `test` of `null` passes on a missing path.
fn json_patch_ops(current: &Value, patch: Value) -> Result<json_patch::Patch, ApiError> {
    let Value::Array(ops) = patch else {
        return Err((400, "a JSON patch must be an array".into(), "BadRequest"));
    };
    let ops: Vec<Value> = ops
        .into_iter()
        .filter(|op| {
            !(op["op"] == "test"
                && op["value"].is_null()
                && op["path"]
                    .as_str()
                    .is_some_and(|p| current.pointer(p).is_none()))
        })
        .collect();
    serde_json::from_value(Value::Array(ops))
        .map_err(|e| (400, format!("json patch: {e}"), "BadRequest"))
}

fn watch(
    s: &mut State,
    t: &ResourceType,
    ns: Option<&str>,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let selector = match Selector::parse(q.get("labelSelector").map_or("", String::as_str)) {
        Ok(sel) => sel,
        Err(e) => return error((400, e, "BadRequest")),
    };
    let fields = match field_selector(q.get("fieldSelector").map_or("", String::as_str)) {
        Ok(f) => f,
        Err(e) => return error((400, e, "BadRequest")),
    };
    let from: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let id = t.id();
    let visible = |m: &ObjMeta| {
        ns.is_none_or(|n| m.namespace.as_deref() == Some(n))
            && selector.matches(&m.labels)
            && fields_match(&fields, m)
    };
    match from {
        Some(rv) if rv < s.oldest_rv => {
            // Expired: a 200 with an ERROR event, as the real server does on watch.
            let status = status_body(
                410,
                &format!("too old resource version: {rv} ({})", s.oldest_rv),
                "Expired",
            );
            let _ = tx.send(watch_line(
                "ERROR",
                &serde_json::to_vec(&status).expect("json"),
            ));
            drop(tx);
            return stream_response(rx, None);
        }
        Some(rv) => {
            for ev in s
                .history
                .iter()
                .filter(|e| e.rv > rv && e.type_id == id && visible(&e.meta))
            {
                let _ = tx.send(watch_line(ev.kind, &ev.json));
            }
        }
        None => {
            for (_, o) in s
                .objects
                .iter()
                .filter(|((tid, _, _), o)| *tid == id && visible(&o.meta))
            {
                let _ = tx.send(watch_line("ADDED", &o.json));
            }
        }
    }
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let bookmark = bookmarks.then(|| {
        watch_line(
            "BOOKMARK",
            &serde_json::to_vec(&json!({"kind": t.kind, "apiVersion": t.api_version(),
                "metadata": {"resourceVersion": s.rv.to_string()}}))
            .expect("json"),
        )
    });
    if let Some(b) = &bookmark {
        let _ = tx.send(b.clone());
    }
    s.watchers.push(Watcher {
        type_id: id,
        namespace: ns.map(str::to_string),
        selector,
        fields,
        tx,
    });
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    stream_response(rx, timeout)
}

fn stream_response(
    rx: mpsc::UnboundedReceiver<Bytes>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let events = tokio_stream_from(rx);
    let events: futures::stream::BoxStream<'static, Bytes> = match timeout {
        Some(t) => {
            let deadline = tokio::time::sleep(t);
            events.take_until(deadline).boxed()
        }
        None => events.boxed(),
    };
    let frames = events.map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        .expect("response")
}

fn tokio_stream_from(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> futures::stream::BoxStream<'static, Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
