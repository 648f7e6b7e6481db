//! The operator's tenancy policy and the rules that keep one namespace's Workflows inside what
//! that namespace's own GC pod could do in Argo: which identities artgc may act as for it, which
//! endpoints it may contact, which buckets and key prefixes it may touch, and which keys are
//! safe to send at all. Pure: the planner asks, nothing here does IO.
//!
//! A Workflow is untrusted input (its author writes all of it, status included), so nothing a
//! Workflow says widens these grants: endpoints come from ConfigMaps and the policy, identities
//! from Secrets and ServiceAccounts in the workflow's own namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

/// Who artgc acts as when it deletes for a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentityKind {
    /// Static keys from Secrets in the workflow's namespace.
    Secret,
    /// The workflow's GC service account (IRSA: TokenRequest, then STS web identity).
    ServiceAccount,
    /// artgc's own ambient credentials.
    Controller,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::ServiceAccount => "serviceAccount",
            Self::Controller => "controller",
        }
    }
}

/// What a namespace may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    /// Identities artgc may use for it; default: its own Secrets only.
    #[serde(default = "default_identities")]
    pub identities: Vec<IdentityKind>,
    /// With `serviceAccount`: the accounts it may use (empty: any account of the namespace).
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Endpoints allowed besides the repositories configured for the namespace.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// When set, only these buckets.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// When set, only keys under one of these prefixes.
    #[serde(default)]
    pub key_prefixes: Vec<String>,
    /// Where a versioned bucket's versions of an artifact's keys are deleted too (its bytes
    /// really freed), not only hidden behind a delete marker. Unset: nowhere.
    #[serde(default)]
    pub reclaim_versions: Option<ReclaimVersions>,
}

/// Where versions are reclaimed for a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReclaimVersions {
    /// Only at these endpoints (as the policy's `endpoints` name them, aliases included);
    /// empty: every endpoint the namespace may use.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Only these buckets; empty: every bucket the namespace may use.
    #[serde(default)]
    pub buckets: Vec<String>,
}

fn default_identities() -> Vec<IdentityKind> {
    vec![IdentityKind::Secret]
}

impl Default for Grant {
    fn default() -> Self {
        Self {
            identities: default_identities(),
            service_accounts: Vec::new(),
            endpoints: Vec::new(),
            buckets: Vec::new(),
            key_prefixes: Vec::new(),
            reclaim_versions: None,
        }
    }
}

impl Grant {
    /// Whether versions of the namespace's artifacts in `bucket` at the endpoint of
    /// `url` (a connection's, with its scheme) are reclaimed.
    pub fn reclaims_versions_in(
        &self,
        policy: &Policy,
        namespace: &str,
        url: &str,
        bucket: &str,
    ) -> bool {
        let Some(r) = &self.reclaim_versions else {
            return false;
        };
        let insecure = url.starts_with("http://");
        let at = policy.canonical(url, insecure, namespace);
        let endpoint_ok = r.endpoints.is_empty()
            || r.endpoints.iter().any(|e| {
                matches!((policy.canonical(e, insecure, namespace), &at), (Ok(e), Ok(at)) if e == *at)
            });
        endpoint_ok && (r.buckets.is_empty() || r.buckets.iter().any(|b| b == bucket))
    }

    pub fn allows(&self, identity: IdentityKind) -> bool {
        self.identities.contains(&identity)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A grant for the namespaces it names or selects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RuleText")]
pub struct Rule {
    pub namespaces: Vec<String>,
    pub namespace_selector: Option<NamespaceSelector>,
    pub grant: Grant,
}

/// A rule as written: its selection and its grant's fields side by side (serde's `flatten`
/// cannot refuse unknown fields, and a misspelt field must not pass silently).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleText {
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    namespace_selector: Option<NamespaceSelector>,
    #[serde(default = "default_identities")]
    identities: Vec<IdentityKind>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    buckets: Vec<String>,
    #[serde(default)]
    key_prefixes: Vec<String>,
    #[serde(default)]
    reclaim_versions: Option<ReclaimVersions>,
}

impl TryFrom<RuleText> for Rule {
    type Error = String;
    fn try_from(r: RuleText) -> Result<Self, String> {
        if r.namespaces.is_empty() && r.namespace_selector.is_none() {
            return Err("a rule names no namespaces and has no namespaceSelector".into());
        }
        Ok(Rule {
            namespaces: r.namespaces,
            namespace_selector: r.namespace_selector,
            grant: Grant {
                identities: r.identities,
                service_accounts: r.service_accounts,
                endpoints: r.endpoints,
                buckets: r.buckets,
                key_prefixes: r.key_prefixes,
                reclaim_versions: r.reclaim_versions,
            },
        })
    }
}

impl Rule {
    fn matches(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.namespaces.iter().any(|n| n == namespace) {
            return true;
        }
        match (&self.namespace_selector, labels) {
            (Some(sel), Some(labels)) => sel
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v)),
            _ => false,
        }
    }
}

/// The operator's policy (`--policy FILE`). With none, every namespace gets [`Grant::default`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// For namespaces no rule matches.
    #[serde(default)]
    pub defaults: Grant,
    /// The first rule that matches a namespace decides for it.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Groups of spellings of one store (`minio:9000`, its FQDN, a load balancer name).
    #[serde(default)]
    pub endpoint_aliases: Vec<Vec<String>>,
    /// The cluster's DNS domain, for service names.
    #[serde(default = "default_domain")]
    pub cluster_domain: String,
}

fn default_domain() -> String {
    "cluster.local".into()
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            defaults: Grant::default(),
            rules: Vec::new(),
            endpoint_aliases: Vec::new(),
            cluster_domain: default_domain(),
        }
    }
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p: Policy = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if p.cluster_domain.is_empty() {
            p.cluster_domain = default_domain();
        }
        Ok(p)
    }

    /// Whether some grant lets artgc act as a service account (the reader then fetches them).
    pub fn uses_service_accounts(&self) -> bool {
        std::iter::once(&self.defaults)
            .chain(self.rules.iter().map(|r| &r.grant))
            .any(|g| g.allows(IdentityKind::ServiceAccount))
    }

    /// Whether some rule selects namespaces by label (the reader then fetches Namespaces).
    pub fn uses_namespace_labels(&self) -> bool {
        self.rules.iter().any(|r| r.namespace_selector.is_some())
    }

    /// The grant for a namespace; `labels` are the Namespace's labels when known.
    pub fn grant_for(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> &Grant {
        self.rules
            .iter()
            .find(|r| r.matches(namespace, labels))
            .map_or(&self.defaults, |r| &r.grant)
    }

    /// The canonical form of an endpoint as seen from `namespace`, aliases folded to the first
    /// spelling of their group.
    pub fn canonical(
        &self,
        endpoint: &str,
        insecure: bool,
        namespace: &str,
    ) -> Result<Endpoint, String> {
        let e = Endpoint::parse(endpoint, insecure, namespace, &self.cluster_domain)?;
        for group in &self.endpoint_aliases {
            let mut members = group
                .iter()
                .filter_map(|a| Endpoint::parse(a, insecure, namespace, &self.cluster_domain).ok());
            let Some(first) = members.next() else {
                continue;
            };
            if first.same_store(&e) || members.any(|m| m.same_store(&e)) {
                return Ok(Endpoint {
                    scheme: e.scheme,
                    ..first
                });
            }
        }
        Ok(e)
    }
}

/// An endpoint in canonical form: scheme, lower-case host (a Kubernetes service name made fully
/// qualified relative to the workflow's namespace), explicit port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl Endpoint {
    /// Parses `[scheme://]host[:port][/]`; anything else (a path, user info, a query) is refused.
    pub fn parse(
        endpoint: &str,
        insecure: bool,
        namespace: &str,
        domain: &str,
    ) -> Result<Self, String> {
        let (scheme, rest) = match endpoint.split_once("://") {
            Some((s, rest)) => match s.to_ascii_lowercase().as_str() {
                "http" => ("http", rest),
                "https" => ("https", rest),
                other => return Err(format!("endpoint scheme {other:?} is not http or https")),
            },
            None if insecure => ("http", endpoint),
            None => ("https", endpoint),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty()
            || rest.contains(['/', '@', '?', '#', ' '])
            || rest.chars().any(char::is_control)
        {
            return Err(format!(
                "endpoint {endpoint:?} is not of the form [scheme://]host[:port]"
            ));
        }
        let (host, port) = split_host_port(rest)
            .ok_or_else(|| format!("endpoint {endpoint:?} has an invalid port"))?;
        let port = port.unwrap_or(if scheme == "http" { 80 } else { 443 });
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("endpoint {endpoint:?} has no host"));
        }
        let host = qualify_service(&host, namespace, domain);
        Ok(Self { scheme, host, port })
    }

    /// Same host and port; the scheme does not make another store.
    pub fn same_store(&self, other: &Endpoint) -> bool {
        self.host == other.host && self.port == other.port
    }

    /// Link-local, cloud metadata and unspecified addresses: never contacted.
    pub fn is_forbidden(&self) -> bool {
        const METADATA_HOSTS: [&str; 5] = [
            "metadata",
            "metadata.google.internal",
            "metadata.goog",
            "instance-data",
            "instance-data.ec2.internal",
        ];
        if METADATA_HOSTS.contains(&self.host.as_str()) {
            return true;
        }
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                ip.is_link_local() || ip.is_unspecified() || ip.octets() == [100, 100, 100, 200]
            }
            Ok(IpAddr::V6(ip)) => {
                let seg = ip.segments();
                (seg[0] & 0xffc0) == 0xfe80
                    || ip.is_unspecified()
                    || seg == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
                    || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
            }
            Err(_) => false,
        }
    }
}

fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((h, _)) if h.contains(':') => Some((s, None)),
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

/// `svc`, `svc.ns`, `svc.ns.svc` and `svc.ns.svc.<domain>` are one service; a short name is
/// relative to the workflow's namespace, where Argo's GC pod would have resolved it.
fn qualify_service(host: &str, namespace: &str, domain: &str) -> String {
    if host.parse::<IpAddr>().is_ok() || host == "localhost" {
        return host.to_string();
    }
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [svc] => format!("{svc}.{namespace}.svc.{domain}"),
        [svc, ns] => format!("{svc}.{ns}.svc.{domain}"),
        [svc, ns, "svc"] => format!("{svc}.{ns}.svc.{domain}"),
        _ => host.to_string(),
    }
}

/// Why a key is refused before anything is sent: `.`/`..` segments (a path-resolving store
/// reaches outside the artifact), empty segments Argo's uploader would have cleaned (only the
/// trailing `/` of a directory key is allowed), control characters.
pub fn unsafe_key(key: &str) -> Option<&'static str> {
    if key.chars().any(char::is_control) {
        return Some("contains control characters");
    }
    let body = key.strip_suffix('/').unwrap_or(key);
    for seg in body.split('/') {
        match seg {
            "." | ".." => return Some("has a `.` or `..` segment"),
            "" => return Some("has an empty segment (`//` or a leading `/`)"),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &Policy, e: &str, ns: &str) -> String {
        p.canonical(e, false, ns).unwrap().to_string()
    }

    #[test]
    fn service_names_are_one_name_relative_to_the_workflow_namespace() {
        let p = Policy::default();
        let fq = "https://minio.argo.svc.cluster.local:443";
        for e in [
            "minio.argo",
            "minio.argo.svc",
            "MINIO.argo.svc.cluster.local.",
            "https://minio.argo:443/",
        ] {
            assert_eq!(canon(&p, e, "team-a"), fq, "{e}");
        }
        assert_eq!(canon(&p, "minio", "argo"), fq);
        assert_eq!(
            canon(&p, "minio", "team-a"),
            "https://minio.team-a.svc.cluster.local:443"
        );
        assert_eq!(
            canon(&p, "s3.eu-west-1.amazonaws.com", "x"),
            "https://s3.eu-west-1.amazonaws.com:443"
        );
        assert_eq!(
            p.canonical("127.0.0.1:9000", true, "x")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(canon(&p, "[::1]:9000", "x"), "https://[::1]:9000");
    }

    #[test]
    fn aliases_fold_into_their_group() {
        let p = Policy::parse(
            "endpointAliases:\n  - [\"minio.storage:9000\", \"objects.example.com:9000\"]\n",
        )
        .unwrap();
        let a = p.canonical("objects.example.com:9000", true, "x").unwrap();
        let b = p.canonical("minio.storage.svc:9000", true, "y").unwrap();
        assert!(a.same_store(&b));
        assert_eq!(a.host, "minio.storage.svc.cluster.local");
    }

    #[test]
    fn odd_endpoints_and_metadata_addresses_are_refused() {
        for bad in ["", "ftp://x", "user@host", "host/path", "host:99999", "a b"] {
            assert!(
                Endpoint::parse(bad, false, "n", "cluster.local").is_err(),
                "{bad}"
            );
        }
        for forbidden in [
            "169.254.169.254",
            "http://169.254.170.2:80",
            "metadata.google.internal",
            "[fd00:ec2::254]",
            "[fe80::1]:9000",
            "0.0.0.0:9000",
            "100.100.100.200",
        ] {
            let e = Endpoint::parse(forbidden, false, "n", "cluster.local").unwrap();
            assert!(e.is_forbidden(), "{forbidden}");
        }
        let ok = Endpoint::parse("10.0.0.5:9000", false, "n", "cluster.local").unwrap();
        assert!(!ok.is_forbidden());
    }

    #[test]
    fn unsafe_keys() {
        for bad in [
            "a/../b",
            "../x",
            "a/./b",
            "a//b",
            "/abs",
            "a/\u{1b}[2J",
            "..",
            "a/..",
        ] {
            assert!(unsafe_key(bad).is_some(), "{bad:?}");
        }
        for ok in ["a/b.tgz", "dir/", "a/b..c/d", "数据/报告.csv", ".hidden/x"] {
            assert_eq!(unsafe_key(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn the_first_matching_rule_decides_else_the_defaults() {
        let p = Policy::parse(
            r#"
defaults:
  identities: [secret]
rules:
  - namespaces: [team-a]
    identities: [secret, serviceAccount]
    serviceAccounts: [gc]
  - namespaceSelector: {matchLabels: {artgc/controller-identity: "true"}}
    identities: [controller]
    buckets: [shared]
"#,
        )
        .unwrap();
        assert!(
            p.grant_for("team-a", None)
                .allows(IdentityKind::ServiceAccount)
        );
        assert!(
            !p.grant_for("team-b", None)
                .allows(IdentityKind::ServiceAccount)
        );
        let labels = BTreeMap::from([("artgc/controller-identity".into(), "true".into())]);
        let g = p.grant_for("ops", Some(&labels));
        assert!(g.allows(IdentityKind::Controller) && !g.allows(IdentityKind::Secret));
        assert!(p.uses_service_accounts() && p.uses_namespace_labels());
        assert!(
            !Policy::default()
                .grant_for("x", None)
                .allows(IdentityKind::Controller)
        );
        assert!(Policy::parse("rules:\n  - identities: [secret]\n").is_err());
        assert!(Policy::parse("defaults:\n  identities: [root]\n").is_err());
        assert!(Policy::parse("rules:\n  - namespaces: [a]\n    bukets: [x]\n").is_err());
    }
}
