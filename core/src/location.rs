//! Where one artifact lives and how to reach it: Argo's location rules (own complete location,
//! else the template's `archiveLocation`, else the workflow's repository) and its credential
//! rules (Secrets in the workflow's namespace; static keys, then roleARN, then the SDK chain).

use std::fmt;

use crate::cluster::ClusterState;
use crate::error::ResolveError;
use crate::model::{Artifact, ArtifactLocation, S3Location, Template};

/// Bucket and key of an S3 artifact, with the endpoint as the workflow wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    /// The store in canonical form (`host:port`, service names qualified, policy aliases
    /// folded), so the shared-key check sees one store however it is spelt; empty until the
    /// planner sets it.
    pub store: String,
}

impl S3Target {
    /// True when deleting this key could reach every object of the bucket.
    pub fn is_bucket_root(&self) -> bool {
        self.key.trim_matches('/').is_empty()
    }

    /// A key ending in `/` names a directory.
    pub fn is_directory_key(&self) -> bool {
        self.key.ends_with('/')
    }

    /// The listing prefix of the directory this key may name, always ending at a `/`
    /// boundary so that `out/dir` never reaches `out/dir2/...`.
    pub fn directory_prefix(&self) -> String {
        if self.key.ends_with('/') {
            self.key.clone()
        } else {
            format!("{}/", self.key)
        }
    }
}

/// How to connect to a store. Holds credential values, so Debug redacts them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct S3Connection {
    /// `http(s)://host[:port]`.
    pub url: String,
    pub region: String,
    /// No `region` was set: the bucket's region is asked of the store (as minio-go does for
    /// Argo), `region` being only the first guess.
    pub discover_region: bool,
    pub path_style: bool,
    pub credentials: Credentials,
    /// Extra trusted CA (PEM) from `caSecret`.
    pub ca_pem: Option<Vec<u8>>,
    /// The operator lets this store be reached on a loopback address (the connect-time check
    /// of resolved addresses refuses loopback otherwise).
    pub loopback: bool,
    /// artgc's own pod addresses, refused at connect time unless the operator named the store.
    pub own_addresses: Vec<std::net::IpAddr>,
}

/// Who a request is signed as. Debug and [`Credentials::identity`] never show a secret value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credentials {
    /// Keys from Secrets in the workflow's namespace.
    Static {
        /// The Secret the access key came from (for the audit trail).
        secret: String,
        access_key: String,
        secret_key: String,
        session_token: Option<String>,
    },
    /// The workflow's GC service account: a token for it (TokenRequest) exchanged at STS for
    /// `role_arn` (its IRSA annotation), then `assume` assumed with those credentials if set.
    ServiceAccount {
        namespace: String,
        name: String,
        role_arn: String,
        assume: Option<String>,
    },
    /// artgc's own credentials (the SDK's default chain), then `assume` if set. Only where the
    /// operator's policy grants it to the namespace.
    Controller { assume: Option<String> },
}

impl Credentials {
    /// Names the identity for logs and the audit trail.
    pub fn identity(&self) -> String {
        let then = |assume: &Option<String>| {
            assume
                .as_ref()
                .map(|r| format!(", then role {r}"))
                .unwrap_or_default()
        };
        match self {
            Self::Static {
                secret, access_key, ..
            } => format!("secret {secret} (key id {access_key})"),
            Self::ServiceAccount {
                namespace,
                name,
                role_arn,
                assume,
            } => format!(
                "serviceAccount {namespace}/{name} as role {role_arn}{}",
                then(assume)
            ),
            Self::Controller { assume } => format!("controller{}", then(assume)),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.identity())
    }
}

impl fmt::Debug for S3Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Connection")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials)
            .field("ca", &self.ca_pem.is_some())
            .field("loopback", &self.loopback)
            .finish()
    }
}

/// The template a node ran, as far as it can be told.
#[derive(Debug, Clone, Copy)]
pub enum TemplateLookup<'a> {
    Found(&'a Template),
    /// Not found (e.g. an inline template). `any_archive_location` says whether some template of
    /// the workflow has its own archiveLocation, in which case the repository cannot be assumed.
    Unknown {
        any_archive_location: bool,
        /// `templateDefaults.archiveLocation`, merged into every template before it ran, an
        /// inline one included: where an unknown template's outputs went when no template set
        /// its own.
        defaults: Option<&'a ArtifactLocation>,
    },
}

/// Outcome of resolving an artifact's location.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// S3: the bucket/key, and the S3 fields (own or inherited) that say how to connect.
    S3 {
        target: S3Target,
        location: Box<S3Location>,
    },
    /// A driver artgc cannot delete from.
    Unsupported(&'static str),
}

fn location_driver(loc: &ArtifactLocation) -> Option<&'static str> {
    loc.other_driver()
}

/// Argo's `HasLocation` for an `archiveLocation`: some driver fully set.
fn archive_has_location(loc: &ArtifactLocation) -> bool {
    loc.has_complete_s3() || loc.other_driver().is_some()
}

/// Resolves where an artifact lives. `field` names the artifact in errors; `repository` is
/// called only when the artifact has no complete location of its own.
pub fn resolve(
    art: &Artifact,
    template: TemplateLookup<'_>,
    field: &str,
    vars: &Variables,
    repository: impl FnOnce() -> Result<ArtifactLocation, ResolveError>,
) -> Result<Resolved, ResolveError> {
    if let Some(driver) = location_driver(&art.location) {
        return Ok(Resolved::Unsupported(driver));
    }
    let Some(own) = &art.location.s3 else {
        return Err(ResolveError::Location(format!(
            "{field}: artifact has no location (no s3 or other driver)"
        )));
    };
    if own.is_complete() {
        return finish(own.clone(), field, vars);
    }
    let key = own.key.clone().unwrap_or_default();
    let base = match template {
        TemplateLookup::Found(t) => match &t.archive_location {
            Some(a) if archive_has_location(a) => a.clone(),
            _ => repository()?,
        },
        TemplateLookup::Unknown {
            any_archive_location: true,
            ..
        } => {
            return Err(ResolveError::Location(format!(
                "{field}: the node's template cannot be found and some templates set their own archiveLocation, so the bucket of this key-only artifact is unknown"
            )));
        }
        TemplateLookup::Unknown {
            defaults: Some(d), ..
        } if archive_has_location(d) => d.clone(),
        TemplateLookup::Unknown { .. } => repository()?,
    };
    if let Some(driver) = location_driver(&base) {
        return Ok(Resolved::Unsupported(driver));
    }
    let Some(mut merged) = base.s3 else {
        return Err(ResolveError::Repository(format!(
            "{field}: key-only artifact, but its archive location / repository has no s3 section"
        )));
    };
    merged.key = Some(key);
    finish(merged, field, vars)
}

fn finish(
    mut location: S3Location,
    field: &str,
    vars: &Variables,
) -> Result<Resolved, ResolveError> {
    vars.substitute_location(&mut location, field)?;
    let get = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ResolveError::Location(format!("{field}: s3.{name} is not set")))
    };
    let target = S3Target {
        endpoint: get(&location.endpoint, "endpoint")?,
        bucket: get(&location.bucket, "bucket")?,
        key: clean_directory_key(location.key.as_deref().unwrap_or_default()),
        store: String::new(),
    };
    Ok(Resolved::S3 {
        target,
        location: Box::new(location),
    })
}

/// The workflow variables Argo substitutes into a pod's template (`substitutePodParams`), so
/// into an `archiveLocation` too: status keeps the raw text. Only what the Workflow itself says
/// is known here; anything else is refused rather than used literally.
/// Built only when some text names a variable: most locations name none, and every watch event
/// plans a workflow.
pub struct Variables<'w> {
    wf: &'w crate::model::Workflow,
    values: std::cell::OnceCell<std::collections::HashMap<String, String>>,
    /// The node's input parameters as it ran (`inputs.parameters.*`), for a template's
    /// `archiveLocation`: Argo substitutes them into the pod, and the node records them.
    inputs: &'w [crate::model::Parameter],
}

impl<'w> Variables<'w> {
    pub fn of(wf: &'w crate::model::Workflow) -> Self {
        Self {
            wf,
            values: std::cell::OnceCell::new(),
            inputs: &[],
        }
    }

    /// The variables of one node: the workflow's, and its recorded input parameters.
    pub fn of_node(wf: &'w crate::model::Workflow, node: &'w crate::model::NodeStatus) -> Self {
        Self {
            inputs: node
                .inputs
                .as_ref()
                .map_or(&[], |i| i.parameters.as_slice()),
            ..Self::of(wf)
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(p) = name.strip_prefix("inputs.parameters.") {
            return self
                .inputs
                .iter()
                .find(|x| x.name == p)
                .and_then(|x| match &x.value {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                });
        }
        self.values().get(name).cloned()
    }

    fn values(&self) -> &std::collections::HashMap<String, String> {
        self.values.get_or_init(|| Self::collect(self.wf))
    }

    fn collect(wf: &crate::model::Workflow) -> std::collections::HashMap<String, String> {
        let mut values = std::collections::HashMap::new();
        let meta = &wf.metadata;
        let mut put = |k: String, v: &str| {
            values.insert(k, v.to_string());
        };
        put("workflow.name".into(), wf.name());
        put("workflow.namespace".into(), wf.namespace());
        if let Some(uid) = &meta.uid {
            put("workflow.uid".into(), uid);
        }
        for (k, v) in meta.labels.iter().flatten() {
            put(format!("workflow.labels.{k}"), v);
        }
        for (k, v) in meta.annotations.iter().flatten() {
            put(format!("workflow.annotations.{k}"), v);
        }
        // The stored WorkflowTemplate's arguments, then the workflow's own over them.
        let stored = wf.stored_spec().and_then(|s| s.arguments.as_ref());
        for args in stored.into_iter().chain(wf.spec.arguments.as_ref()) {
            for p in &args.parameters {
                let value = match &p.value {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => continue,
                    Some(other) => other.to_string(),
                };
                values.insert(format!("workflow.parameters.{}", p.name), value);
            }
        }
        values
    }

    /// `text` with every `{{ name }}` replaced, or the first tag that cannot be.
    pub fn substitute(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start..].find("}}") else {
                return Err(rest[start..].to_string());
            };
            let tag = &rest[start..start + len + 2];
            match self.lookup(tag[2..tag.len() - 2].trim()) {
                Some(v) => out.push_str(&v),
                None => return Err(tag.to_string()),
            }
            rest = &rest[start + len + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn substitute_location(&self, loc: &mut S3Location, field: &str) -> Result<(), ResolveError> {
        let err = |name: &str, tag: String| {
            ResolveError::Location(format!(
                "{field}: s3.{name} uses {tag}, which artgc cannot resolve from the Workflow (only workflow.name, .namespace, .uid, .labels.*, .annotations.*, literal workflow.parameters.* and the node's recorded inputs.parameters.*); refused rather than used as written"
            ))
        };
        let fields = [
            ("endpoint", &mut loc.endpoint),
            ("bucket", &mut loc.bucket),
            ("region", &mut loc.region),
            ("key", &mut loc.key),
            ("roleARN", &mut loc.role_arn),
        ];
        for (name, value) in fields {
            if let Some(v) = value.as_mut().filter(|v| v.contains("{{")) {
                *v = self.substitute(v).map_err(|t| err(name, t))?;
            }
        }
        let secrets = [
            ("accessKeySecret", &mut loc.access_key_secret),
            ("secretKeySecret", &mut loc.secret_key_secret),
            ("sessionTokenSecret", &mut loc.session_token_secret),
            ("caSecret", &mut loc.ca_secret),
        ];
        for (name, sel) in secrets {
            if let Some(sel) = sel.as_mut() {
                for v in [&mut sel.name, &mut sel.key] {
                    if v.contains("{{") {
                        *v = self.substitute(v).map_err(|t| err(name, t))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A directory key as Argo uses it: its uploader joins file names to the key with `path.Join`
/// and its GC lists `Clean(key) + "/"`, so empty and `.` segments are not part of any object's
/// key. `..` is left in place (and refused later): resolving it could leave the artifact. A file
/// key is Argo's object name as is.
pub fn clean_directory_key(key: &str) -> String {
    if !key.ends_with('/') {
        return key.to_string();
    }
    let lead = if key.starts_with('/') { "/" } else { "" };
    let body: Vec<&str> = key
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    match body.is_empty() {
        true => "/".to_string(),
        false => format!("{lead}{}/", body.join("/")),
    }
}

/// Sets `target.store` to the canonical form of its endpoint as seen from `namespace`.
pub fn canonicalize_store(resolved: &mut Resolved, state: &ClusterState, namespace: &str) {
    if let Resolved::S3 { target, location } = resolved {
        let insecure = location.insecure == Some(true);
        target.store = match state
            .policy
            .canonical(&target.endpoint, insecure, namespace)
        {
            Ok(e) if e.host.contains(':') => format!("[{}]:{}", e.host, e.port),
            Ok(e) => format!("{}:{}", e.host, e.port),
            Err(_) => target.endpoint.to_ascii_lowercase(),
        };
    }
}

/// Everything that may decide who deletes an artifact, and where.
pub struct Authority<'a> {
    pub state: &'a ClusterState,
    /// The workflow's namespace: Secrets, ServiceAccounts and the policy's grant come from it.
    pub namespace: &'a str,
    /// `artifactGC.serviceAccountName` of the artifact, else of the workflow.
    pub service_account: Option<&'a str>,
    /// [`ClusterState::configured_endpoints`] of the namespace, computed once per workflow.
    pub configured: &'a [crate::policy::Endpoint],
}

/// Checks what the namespace may do with this artifact (a safe key, an endpoint configured for
/// it, the buckets and prefixes the policy allows, an identity it may use) and builds the
/// connection. Nothing is sent anywhere for an artifact refused here.
pub fn authorize(
    auth: &Authority<'_>,
    target: &S3Target,
    loc: &S3Location,
    field: &str,
) -> Result<S3Connection, ResolveError> {
    let Authority {
        state, namespace, ..
    } = auth;
    if let Some(why) = crate::policy::unsafe_key(&target.key) {
        return Err(ResolveError::UnsafeKey(format!(
            "{field}: key {:?} {why}; refused",
            target.key
        )));
    }
    let insecure = loc.insecure == Some(true);
    let (endpoint, named_by_operator) = allowed_endpoint(auth, target, insecure, field)?;
    let loopback = state.policy.allow_loopback || named_by_operator;
    let grant = state.grant_for(namespace);
    allowed_place(grant, target, namespace, field)?;
    let credentials = credentials(auth, grant, loc, field)?;
    let ca_pem = loc
        .ca_secret
        .as_ref()
        .map(|c| state.secret_value(namespace, c, &format!("{field}.s3.caSecret")))
        .transpose()?;
    // Dial what was checked: a short service name is sent fully qualified (relative to the
    // workflow's namespace), not through artgc's own DNS search path.
    let dialled = crate::policy::Endpoint::parse(
        &target.endpoint,
        insecure,
        namespace,
        &state.policy.cluster_domain,
    )
    .map_err(|e| ResolveError::EndpointNotAllowed(format!("{field}.s3.endpoint: {e}")))?;
    let region = loc.region.clone().filter(|r| !r.is_empty());
    Ok(S3Connection {
        url: dialled.url(),
        discover_region: region.is_none(),
        region: region.unwrap_or_else(|| "us-east-1".into()),
        path_style: path_style(
            loc.addressing_style.as_deref(),
            &endpoint.host,
            &target.bucket,
        ),
        credentials,
        ca_pem,
        loopback,
        // Named by the operator in a grant: its own addresses are allowed, as loopback is.
        own_addresses: match named_by_operator {
            true => Vec::new(),
            false => state.policy.own_addresses.clone(),
        },
    })
}

/// Whether a use of `target` by a workflow of the authority's namespace protects the key from
/// deletion: only where artgc would accept that location for the *user's* namespace (a safe
/// key, an endpoint configured or granted for it, the policy's buckets and prefixes). A
/// namespace with no business at a store cannot pin other tenants' keys there.
pub fn may_protect(auth: &Authority<'_>, target: &S3Target, loc: &S3Location) -> bool {
    crate::policy::unsafe_key(&target.key).is_none()
        && allowed_endpoint(auth, target, loc.insecure == Some(true), "").is_ok()
        && allowed_place(
            auth.state.grant_for(auth.namespace),
            target,
            auth.namespace,
            "",
        )
        .is_ok()
}

/// The endpoint as the policy names it, if artgc may contact it for this namespace: never a
/// link-local or metadata address, loopback only with the operator's leave, and only a
/// repository configured for the namespace or an endpoint the policy grants it. The second
/// value says whether the operator named it in the namespace's grant (which opens loopback and
/// artgc's own addresses for it, at plan time and at the connect-time check).
fn allowed_endpoint(
    auth: &Authority<'_>,
    target: &S3Target,
    insecure: bool,
    field: &str,
) -> Result<(crate::policy::Endpoint, bool), ResolveError> {
    let Authority {
        state,
        namespace,
        configured,
        ..
    } = auth;
    let policy = &state.policy;
    let endpoint = policy
        .canonical(&target.endpoint, insecure, namespace)
        .map_err(|e| ResolveError::EndpointNotAllowed(format!("{field}.s3.endpoint: {e}")))?;
    let mut granted = state
        .grant_for(namespace)
        .endpoints
        .iter()
        .filter_map(|e| policy.canonical(e, insecure, namespace).ok());
    let named_by_operator = granted.any(|c| c == endpoint);
    let loopback = policy.allow_loopback || named_by_operator;
    let own = endpoint
        .ip()
        .is_some_and(|ip| policy.own_addresses.contains(&ip.to_canonical()));
    if endpoint.is_forbidden(loopback) || (own && !named_by_operator) {
        return Err(ResolveError::EndpointNotAllowed(format!(
            "{field}.s3.endpoint: {endpoint} is a link-local, metadata, unspecified, loopback or artgc's own address; artgc never contacts it (loopback and its own only where the policy allows it)"
        )));
    }
    if !named_by_operator && !configured.contains(&endpoint) {
        return Err(ResolveError::EndpointNotAllowed(format!(
            "{field}.s3.endpoint: {endpoint} is not a repository configured for namespace {namespace} and the policy does not allow it"
        )));
    }
    Ok((endpoint, named_by_operator))
}

/// The bucket and key lie where the policy confines the namespace (when it does).
fn allowed_place(
    grant: &crate::policy::Grant,
    target: &S3Target,
    namespace: &str,
    field: &str,
) -> Result<(), ResolveError> {
    if !grant.buckets.is_empty() && !grant.buckets.contains(&target.bucket) {
        return Err(ResolveError::BucketNotAllowed(format!(
            "{field}.s3.bucket: the policy does not allow namespace {namespace} bucket {:?}",
            target.bucket
        )));
    }
    if !grant.allows_key(&target.key) {
        return Err(ResolveError::BucketNotAllowed(format!(
            "{field}.s3.key: {:?} is outside the key prefixes the policy allows namespace {namespace}",
            target.key
        )));
    }
    Ok(())
}

/// Argo's `addressingStyle`: `path`, `virtual-hosted`, or anything else for auto, which (as
/// minio-go) means virtual-hosted on AWS for a bucket name that can be a host name label, and
/// path style everywhere else.
fn path_style(style: Option<&str>, host: &str, bucket: &str) -> bool {
    match style {
        Some("path") => true,
        Some("virtual-hosted") => false,
        _ => {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            let aws = host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn");
            !aws || bucket.contains('.')
        }
    }
}

/// Whether the artifact was uploaded with SSE-C (a customer key), checked as Argo's S3 client
/// checks `encryptionOptions` before it does anything: the key's Secret must exist in the
/// workflow's namespace, SSE-C needs TLS, and it excludes a KMS key. Deleting needs no key, but
/// such an object cannot be HEADed without it, so its probe lists instead.
pub fn customer_key_encrypted(
    auth: &Authority<'_>,
    loc: &S3Location,
    field: &str,
) -> Result<bool, ResolveError> {
    let Some(enc) = &loc.encryption_options else {
        return Ok(false);
    };
    let Some(sel) = &enc.server_side_customer_key_secret else {
        return Ok(false);
    };
    let name = format!("{field}.s3.encryptionOptions.serverSideCustomerKeySecret");
    let key = auth.state.secret_value(auth.namespace, sel, &name)?;
    if key.iter().all(u8::is_ascii_whitespace) {
        // Argo reads an empty key as no SSE-C.
        return Ok(false);
    }
    if enc.kms_key_id.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(ResolveError::Location(format!(
            "{field}.s3.encryptionOptions: kmsKeyId and serverSideCustomerKeySecret cannot be set together"
        )));
    }
    if loc.insecure == Some(true) {
        return Err(ResolveError::Location(format!(
            "{field}.s3.encryptionOptions: serverSideCustomerKeySecret needs TLS (insecure: true)"
        )));
    }
    Ok(true)
}

/// Argo's order (static keys, then roleARN, then the SDK chain), with the chain being the
/// workflow's GC service account's, never artgc's own unless the policy grants it.
fn credentials(
    auth: &Authority<'_>,
    grant: &crate::policy::Grant,
    loc: &S3Location,
    field: &str,
) -> Result<Credentials, ResolveError> {
    use crate::policy::IdentityKind;
    let Authority {
        state,
        namespace,
        service_account,
        ..
    } = auth;
    let text = |sel: &crate::model::SecretKeySelector, name: &str| {
        let raw = state.secret_value(namespace, sel, &format!("{field}.s3.{name}"))?;
        String::from_utf8(raw)
            .map(|s| s.trim().to_string())
            .map_err(|_| ResolveError::Secret(format!("{field}.s3.{name}: value is not UTF-8")))
    };
    let assume = loc.role_arn.clone().filter(|r| !r.is_empty());
    match (&loc.access_key_secret, &loc.secret_key_secret) {
        (Some(a), Some(s)) => {
            if !grant.allows(IdentityKind::Secret) {
                return Err(ResolveError::Identity(format!(
                    "{field}.s3: the policy does not let namespace {namespace} use its Secrets"
                )));
            }
            Ok(Credentials::Static {
                secret: a.name.clone(),
                access_key: text(a, "accessKeySecret")?,
                secret_key: text(s, "secretKeySecret")?,
                session_token: loc
                    .session_token_secret
                    .as_ref()
                    .map(|t| text(t, "sessionTokenSecret"))
                    .transpose()?,
            })
        }
        (Some(_), None) | (None, Some(_)) => Err(ResolveError::Secret(format!(
            "{field}.s3: accessKeySecret and secretKeySecret must be set together"
        ))),
        (None, None) if grant.allows(IdentityKind::ServiceAccount) => {
            let name = service_account.unwrap_or("default");
            if !grant.service_accounts.is_empty()
                && !grant.service_accounts.iter().any(|s| s == name)
            {
                return Err(ResolveError::Identity(format!(
                    "{field}: the policy does not let namespace {namespace} act as ServiceAccount {name:?}"
                )));
            }
            let role_arn = state
                .service_account_role(namespace, name)
                .map_err(|e| ResolveError::Identity(format!("{field}: {e}")))?;
            Ok(Credentials::ServiceAccount {
                namespace: namespace.to_string(),
                name: name.to_string(),
                role_arn,
                assume,
            })
        }
        (None, None) if grant.allows(IdentityKind::Controller) => {
            Ok(Credentials::Controller { assume })
        }
        (None, None) => Err(ResolveError::Identity(format!(
            "{field}.s3: no accessKeySecret/secretKeySecret, and the policy lets namespace {namespace} use neither its GC service account nor artgc's own identity"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_variables_are_substituted_and_unknown_ones_refused() {
        let wf: crate::model::Workflow = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns", "uid": "u1", "labels": {"team": "a"}},
            "spec": {"arguments": {"parameters": [
                {"name": "bucket", "value": "data"}, {"name": "n", "value": 7},
                {"name": "from", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]}},
        }))
        .unwrap();
        let vars = Variables::of(&wf);
        for (text, out) in [
            ("{{workflow.parameters.bucket}}", "data"),
            (
                "{{ workflow.name }}/{{workflow.uid}}-{{workflow.parameters.n}}",
                "w/u1-7",
            ),
            ("{{workflow.labels.team}}-{{workflow.namespace}}", "a-ns"),
            ("plain", "plain"),
        ] {
            assert_eq!(vars.substitute(text).as_deref(), Ok(out), "{text}");
        }
        for text in [
            "{{workflow.parameters.from}}",
            "{{workflow.parameters.missing}}",
            "{{inputs.parameters.x}}",
            "{{=sprig.trim(workflow.name)}}",
            "a-{{workflow.name",
        ] {
            assert!(vars.substitute(text).is_err(), "{text}");
        }
    }

    #[test]
    fn addressing_style_auto_is_virtual_hosted_only_on_aws() {
        for (style, host, bucket, path) in [
            (None, "s3.amazonaws.com", "data", false),
            (Some(""), "s3.eu-west-2.amazonaws.com", "data", false),
            (None, "s3.cn-north-1.amazonaws.com.cn", "data", false),
            (None, "s3.amazonaws.com", "my.data", true),
            (None, "minio.argo.svc.cluster.local", "data", true),
            (Some("path"), "s3.amazonaws.com", "data", true),
            (Some("virtual-hosted"), "minio", "data", false),
        ] {
            assert_eq!(
                path_style(style, host, bucket),
                path,
                "{style:?} {host} {bucket}"
            );
        }
    }

    #[test]
    fn directory_keys_are_cleaned_as_argo_uploads_them() {
        for (key, clean) in [
            ("results//run-7/", "results/run-7/"),
            ("a/./b/", "a/b/"),
            ("./a/", "a/"),
            ("a/../b/", "a/../b/"),
            ("/a//b/", "/a/b/"),
            ("//", "/"),
            ("a//b", "a//b"),
            ("a/b.tgz", "a/b.tgz"),
        ] {
            assert_eq!(clean_directory_key(key), clean, "{key:?}");
        }
    }
}
