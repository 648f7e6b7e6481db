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
    /// Whether `key` lies under one of the grant's key prefixes (or it sets none). A prefix
    /// matches at a `/` boundary only: `team-a` grants `team-a/...`, never `team-ab/...`.
    pub fn allows_key(&self, key: &str) -> bool {
        self.key_prefixes.is_empty() || self.key_prefixes.iter().any(|p| under_prefix(key, p))
    }

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
    /// Loopback addresses (`127.0.0.0/8`, `::1`, `localhost`) may be contacted for every
    /// namespace: in a pod they are artgc itself (its admin server) and its sidecars, so they
    /// are refused unless the operator says otherwise here (or names one in a grant's
    /// `endpoints`). For a store reached through a port-forward, or tests.
    #[serde(default)]
    pub allow_loopback: bool,
    /// artgc's own pod addresses (`--pod-ip`, the downward API's `status.podIPs`): contacted
    /// only where a grant's `endpoints` names them, like loopback. Set at start, not in the file.
    #[serde(skip)]
    pub own_addresses: Vec<IpAddr>,
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
            allow_loopback: false,
            own_addresses: Vec::new(),
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
        let host = match host_address(&host) {
            // `::ffff:a.b.c.d` is reached as `a.b.c.d`: one store, one spelling.
            Some(ip) => ip.to_canonical().to_string(),
            None if host.contains(':') => {
                return Err(format!("endpoint {endpoint:?} has an invalid IPv6 address"));
            }
            None if is_reserved_name(&host) => host,
            None => qualify_service(&host, namespace, domain),
        };
        Ok(Self { scheme, host, port })
    }

    /// The URL to send requests to: scheme and host, the port only where it is not the
    /// scheme's default (a signed `Host` header then reads as the store expects).
    pub fn url(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match (self.scheme, self.port) {
            ("http", 80) | ("https", 443) => format!("{}://{host}", self.scheme),
            _ => format!("{}://{host}:{}", self.scheme, self.port),
        }
    }

    /// The address the host names when it is an IP address (canonical text after parsing).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Same host and port; the scheme does not make another store.
    pub fn same_store(&self, other: &Endpoint) -> bool {
        self.host == other.host && self.port == other.port
    }

    /// Link-local, cloud metadata, unspecified and (unless `loopback` allows it) loopback
    /// addresses and names: never contacted. The host is already in canonical form (numeric
    /// spellings parsed as a resolver reads them), so `0x7f000001` is `127.0.0.1` here.
    pub fn is_forbidden(&self, loopback: bool) -> bool {
        match self.ip() {
            Some(ip) => forbidden_address(ip, loopback),
            None => {
                METADATA_HOSTS.contains(&self.host.as_str())
                    || (!loopback
                        && (self.host == "localhost" || self.host.ends_with(".localhost")))
            }
        }
    }
}

/// Names of cloud metadata services (and `localhost`): checked as written, before a short
/// name is qualified as a service, since a pod's resolver falls back to them.
const METADATA_HOSTS: [&str; 7] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.com",
    "metadata.tencentyun.com",
];

fn is_reserved_name(host: &str) -> bool {
    METADATA_HOSTS.contains(&host) || host == "localhost" || host.ends_with(".localhost")
}

/// Whether artgc may never send a request to `ip`: link-local (cloud metadata services and
/// agents live there), the unspecified network (`0.0.0.0/8` reaches the local host), known
/// metadata addresses outside link-local, and loopback unless the operator allows it. IPv6
/// forms that carry an IPv4 address (mapped, compatible, NAT64) are checked as that address.
/// Used at plan time on the endpoint and at connect time on every resolved address.
pub fn forbidden_address(ip: IpAddr, loopback: bool) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            ip.is_link_local()
                || ip.octets()[0] == 0
                || ip.octets() == [100, 100, 100, 200]
                || ip.is_broadcast()
                || (!loopback && ip.is_loopback())
        }
        IpAddr::V6(ip) => {
            let seg = ip.segments();
            if let Some(v4) = embedded_ipv4(&ip) {
                return forbidden_address(IpAddr::V4(v4), loopback);
            }
            (seg[0] & 0xffc0) == 0xfe80
                || ip.is_unspecified()
                || (seg[0] == 0xfd00 && seg[1] == 0x0ec2)
                || (!loopback && ip.is_loopback())
        }
    }
}

/// The IPv4 address an IPv6 address stands for: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`, not `::` or `::1`) or the NAT64 well-known prefix (`64:ff9b::a.b.c.d`).
fn embedded_ipv4(ip: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = ip.segments();
    let tail = std::net::Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    match seg[..6] {
        [0, 0, 0, 0, 0, 0] if seg[6] != 0 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0] => Some(tail),
        _ => None,
    }
}

/// The address a host names, read as the C resolver reads it (`inet_aton`): an IPv6 address,
/// or an IPv4 address in any of its numeric spellings (`2852039166`, `0xa9fea9fe`,
/// `0251.0376.0251.0376`, `169.254.43518`, `0`). `None`: a name.
fn host_address(host: &str) -> Option<IpAddr> {
    if host.contains(':') {
        return host.parse().ok();
    }
    inet_aton(host).map(IpAddr::V4)
}

fn inet_aton(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<u64> = host
        .split('.')
        .map(|p| {
            let (digits, radix) = match p.as_bytes() {
                [b'0', b'x' | b'X', ..] => (&p[2..], 16),
                [b'0', _, ..] => (&p[1..], 8),
                _ => (p, 10),
            };
            // `0x` alone is 0 to glibc.
            if digits.is_empty() && radix == 16 {
                return Some(0);
            }
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return None;
            }
            u64::from_str_radix(digits, radix).ok()
        })
        .collect::<Option<_>>()?;
    let (last, head) = parts.split_last()?;
    if head.iter().any(|&p| p > 255) || parts.len() > 4 {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    let mut v: u64 = 0;
    for (i, p) in head.iter().enumerate() {
        v |= p << (24 - 8 * i as u32);
    }
    Some(std::net::Ipv4Addr::from((v | last) as u32))
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

/// `key` is `prefix` itself or lies under it at a `/` boundary.
pub fn under_prefix(key: &str, prefix: &str) -> bool {
    let Some(rest) = key.strip_prefix(prefix) else {
        return false;
    };
    prefix.is_empty() || prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
}

/// Why a key is refused before anything is sent: `.`/`..` segments (a path-resolving store
/// reaches outside the artifact) and control characters. Empty segments (a leading `/`, `//`)
/// are part of the object's name: Argo writes such keys (a `keyFormat` starting with `/`) and
/// deletes them as written, and S3 keys are literal.
pub fn unsafe_key(key: &str) -> Option<&'static str> {
    if key.chars().any(char::is_control) {
        return Some("contains control characters");
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Some("has a `.` or `..` segment");
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
            assert!(e.is_forbidden(true), "{forbidden}");
        }
        let ok = Endpoint::parse("10.0.0.5:9000", false, "n", "cluster.local").unwrap();
        assert!(!ok.is_forbidden(false));
    }

    /// Every spelling a resolver reads as a metadata, link-local, unspecified or loopback
    /// address is one: the block reads the address, not the text.
    #[test]
    fn other_spellings_of_forbidden_addresses_are_forbidden() {
        let parse = |e: &str| Endpoint::parse(e, true, "team-a", "cluster.local").unwrap();
        for (spelling, canonical) in [
            ("2852039166", "169.254.169.254"),
            ("0xa9fea9fe", "169.254.169.254"),
            ("0251.0376.0251.0376", "169.254.169.254"),
            ("169.254.43518", "169.254.169.254"),
            ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
            ("169.16689662", "169.254.169.254"),
            ("0", "0.0.0.0"),
            ("0x0", "0.0.0.0"),
            ("0.0", "0.0.0.0"),
            ("[::ffff:100.100.100.200]", "100.100.100.200"),
            ("[::ffff:169.254.169.254]:80", "169.254.169.254"),
            ("[::ffff:a9fe:a9fe]", "169.254.169.254"),
            ("[::a9fe:a9fe]", "::a9fe:a9fe"),
            ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe"),
            ("[fd00:ec2::23]", "fd00:ec2::23"),
            ("169.254.170.23", "169.254.170.23"),
            ("[0:0:0:0:0:0:0:0]", "::"),
            ("metadata", "metadata"),
            ("METADATA.goog.", "metadata.goog"),
            ("instance-data", "instance-data"),
            ("metadata.google.internal", "metadata.google.internal"),
        ] {
            let e = parse(spelling);
            assert_eq!(e.host, canonical, "{spelling}");
            assert!(e.is_forbidden(true), "{spelling}");
        }
        for loopback in [
            "127.0.0.1:9090",
            "127.1",
            "2130706433",
            "0x7f000001",
            "017700000001",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "localhost",
            "LOCALHOST.",
            "artgc.localhost",
        ] {
            let e = parse(loopback);
            assert!(
                e.is_forbidden(false),
                "{loopback} without the operator's leave"
            );
            assert!(!e.is_forbidden(true), "{loopback} with allowLoopback");
        }
        for fine in [
            "10.0.0.5:9000",
            "minio",
            "s3.amazonaws.com",
            "1.2.3.4.5",
            "0x1g",
        ] {
            assert!(!parse(fine).is_forbidden(false), "{fine}");
        }
        // Not an address: a name the resolver would look up (and the connect-time check sees).
        assert_eq!(parse("1.2.3.4.5").host, "1.2.3.4.5");
        assert_eq!(parse("256.1.1.1").host, "256.1.1.1");
        assert!(Endpoint::parse("[::zz]", true, "n", "cluster.local").is_err());
    }

    #[test]
    fn key_prefixes_match_at_a_slash_boundary() {
        for (key, prefix, under) in [
            ("team-a/x", "team-a", true),
            ("team-a", "team-a", true),
            ("team-ab/x", "team-a", false),
            ("team-ab/x", "team-a/", false),
            ("team-a/x", "team-a/", true),
            ("runs/team-a-1/x", "runs/team-a-", false),
            ("anything", "", true),
            ("/team-a/x", "team-a", false),
        ] {
            assert_eq!(under_prefix(key, prefix), under, "{key} under {prefix}");
        }
    }

    #[test]
    fn unsafe_keys() {
        for bad in [
            "a/../b",
            "../x",
            "a/./b",
            "a/\u{1b}[2J",
            "..",
            "a/..",
            "/a//../b",
        ] {
            assert!(unsafe_key(bad).is_some(), "{bad:?}");
        }
        // Argo writes keys with a leading `/` or `//` (a keyFormat starting with `/`): they are
        // object names, deleted as written.
        for ok in [
            "a/b.tgz",
            "dir/",
            "a/b..c/d",
            "数据/报告.csv",
            ".hidden/x",
            "/abs",
            "a//b",
            "/runs/w/p/main.log",
            "/runs//dir/",
        ] {
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
