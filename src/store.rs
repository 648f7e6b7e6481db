//! The S3 side: one client per connection, probing what an artifact amounts to (HEAD, listing)
//! and deleting keys in batches. Knows nothing about workflows; it is handed connections and
//! keys by the executor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Region, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use backon::BackoffBuilder;
use tokio::sync::{Mutex, OnceCell, Semaphore};

use crate::identity::{IdentityCache, IdentityKey, WebIdentityConfig};
use artgc_core::location::{Credentials, S3Connection};

/// S3 caps DeleteObjects at 1,000 keys.
pub const MAX_BATCH: usize = 1000;

pub use artgc_core::error::{StoreError, StoreErrorKind};

/// `host:port` of a connection URL: the unit of the per-endpoint bound.
fn endpoint_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

/// Classifies an S3 error code (and HTTP status when there is no code).
fn kind_of(code: Option<&str>, status: Option<u16>) -> StoreErrorKind {
    match (code, status) {
        (
            Some(
                "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AllAccessDisabled",
            ),
            _,
        )
        | (None, Some(401 | 403)) => StoreErrorKind::AccessDenied,
        (Some("NoSuchBucket"), _) => StoreErrorKind::NoSuchBucket,
        (Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded"), _)
        | (_, Some(429 | 503)) => StoreErrorKind::Throttled,
        (Some("NotImplemented"), _) | (_, Some(501)) => StoreErrorKind::NotImplemented,
        (Some("InternalError" | "ServiceUnavailable" | "RequestTimeout"), _) => {
            StoreErrorKind::Server
        }
        (_, Some(s)) if s >= 500 => StoreErrorKind::Server,
        (_, Some(403)) => StoreErrorKind::AccessDenied,
        _ => StoreErrorKind::Request,
    }
}

fn sdk_error<E>(op: &str, target: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    // An identity that could not be obtained (STS refused, no token) is not a network fault.
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
        {
            return StoreError::new(
                StoreErrorKind::Credentials,
                format!("{op} {target}: credentials: {}", error_chain(c)),
            );
        }
        source = s.source();
    }
    let kind = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => StoreErrorKind::Network,
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => kind_of(err.code(), status),
        _ => StoreErrorKind::Request,
    };
    let detail = match (err.code(), err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => match status {
            Some(s) => format!("HTTP {s}"),
            None => {
                std::error::Error::source(&err).map_or_else(|| err.to_string(), |s| s.to_string())
            }
        },
    };
    StoreError::new(kind, format!("{op} {target}: {detail}")).caused_by(err)
}

/// The error and its immediate cause (the provider's own message).
fn error_chain(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// Counts every S3 request attempt of a client by how it ended, for the throttling signal:
/// the SDK retries a throttled request by itself, so only the attempts show the store pushing
/// back before a failure does.
#[derive(Debug)]
struct CountAttempts {
    endpoint: String,
    requests: crate::metrics::S3Requests,
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "CountAttempts"
    }

    fn read_after_attempt(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let status = context.response().map(|r| r.status().as_u16());
        self.requests
            .get_or_create(&crate::metrics::EndpointOutcome {
                endpoint: self.endpoint.clone(),
                outcome: attempt_outcome(status),
            })
            .inc();
        Ok(())
    }
}

/// Bounds every response body before the SDK reads it: a declared length over the bound is
/// refused at once, and any body stops being read past it.
#[derive(Debug)]
struct BoundResponses {
    max: usize,
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for BoundResponses {
    fn name(&self) -> &'static str {
        "BoundResponses"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let response = context.response_mut();
        let declared = response
            .headers()
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max as u64) {
            return Err(format!(
                "the store answered with a body of {} bytes, over artgc's bound of {} bytes",
                declared.unwrap_or_default(),
                self.max
            )
            .into());
        }
        let body = std::mem::replace(
            response.body_mut(),
            aws_smithy_types::body::SdkBody::taken(),
        );
        *response.body_mut() = aws_smithy_types::body::SdkBody::from_body_1_x(
            http_body_util::Limited::new(body, self.max),
        );
        Ok(())
    }
}

/// How an attempt ended, from its HTTP status (`None`: no answer).
fn attempt_outcome(status: Option<u16>) -> &'static str {
    match status {
        Some(429 | 503) => "throttled",
        Some(s) if s >= 500 => "failed",
        Some(_) => "answered",
        None => "failed",
    }
}

/// A bucket's region, asked of its store once.
type BucketRegion = Arc<OnceCell<String>>;

/// A region name as stores give them: lower-case letters, digits and dashes.
fn is_region_name(r: &str) -> bool {
    (1..=64).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// AWS's global endpoint serves us-east-1; another region's bucket is reached at its regional
/// endpoint. Any other endpoint is the store's own and stays.
fn regional_url(url: &str, region: &str) -> String {
    match url.split_once("://") {
        Some((scheme, "s3.amazonaws.com" | "s3.amazonaws.com/")) => {
            format!("{scheme}://s3.{region}.amazonaws.com")
        }
        _ => url.to_string(),
    }
}

/// Adds `Content-MD5` of the body. The SDK sends only a CRC32 checksum on DeleteObjects; some
/// S3-compatible stores refuse the request without an MD5 (awslabs/aws-sdk-rust#1240).
fn add_content_md5(req: &mut aws_smithy_runtime_api::http::Request) {
    use base64::Engine;
    use md5::Digest;
    if let Some(body) = req.body().bytes() {
        let digest = md5::Md5::digest(body);
        let value = base64::engine::general_purpose::STANDARD.encode(digest);
        req.headers_mut().insert("Content-MD5", value);
    }
}

/// Limits on the store's work.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// S3 requests in flight at once, across all buckets.
    pub concurrency: usize,
    /// S3 requests in flight to one endpoint (`host:port`), beneath `concurrency`.
    pub endpoint_concurrency: usize,
    /// DeleteObjects batches in flight per endpoint, beneath `endpoint_concurrency`.
    pub delete_concurrency: usize,
    /// Attempts per request for throttling, 5xx and network errors (SDK retries), and per key
    /// for errors reported inside a DeleteObjects response.
    pub max_attempts: u32,
    /// A directory artifact listing more objects than this fails instead of being deleted.
    pub max_objects_per_artifact: usize,
    pub request_timeout: Duration,
    /// Allowed disagreement between the store's clock and the workflow's timestamps: objects
    /// written later than `finishedAt` plus this are not the workflow's outputs.
    pub clock_skew: Duration,
    /// On versioned buckets, delete the versions each workflow wrote too (every namespace and
    /// bucket; the policy's `reclaimVersions` grants it per namespace and bucket).
    pub reclaim_versions: bool,
    /// The largest response body read from a store: the SDK reads a body whole before parsing
    /// it, and a store named in a tenant's own ConfigMap may answer with anything (a listing
    /// page of 1,000 keys is far under 2 MiB).
    pub max_response_bytes: usize,
}

/// [`StoreOptions::max_response_bytes`] by default.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            endpoint_concurrency: 8,
            delete_concurrency: 4,
            max_attempts: 5,
            max_objects_per_artifact: 100_000,
            request_timeout: Duration::from_secs(30),
            clock_skew: Duration::from_secs(120),
            reclaim_versions: false,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

pub use artgc_core::versions::ObjectVersion;

/// The versioning state in a GetBucketVersioning answer's text, whatever its root element.
fn versioning_in(body: &str) -> Versioning {
    if body.contains("<Status>Enabled</Status>") {
        Versioning::Enabled
    } else if body.contains("<Status>Suspended</Status>") {
        Versioning::Suspended
    } else {
        Versioning::Off
    }
}

/// A bucket's versioning, asked once.
type VersioningCell = Arc<OnceCell<Versioning>>;

/// How long a bucket's versioning is believed: it can be turned on (or suspended) any time.
const VERSIONING_TTL: Duration = Duration::from_secs(600);

/// What deleting one version came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionDeleted {
    Deleted,
    /// Object Lock protects it (retention not yet over, or a legal hold): kept. Governance
    /// mode is never bypassed.
    Locked,
}

pub use artgc_core::execution::Versioning;

pub use artgc_core::execution::StoredObject;

fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<jiff::Timestamp> {
    let t = t?;
    jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()
}

/// A client for one connection, with the bound on requests in flight to its endpoint.
#[derive(Clone)]
pub struct StoreClient {
    client: Client,
    endpoint: Arc<EndpointLimits>,
}

/// What one endpoint (host:port) takes at once, across every client of it.
struct EndpointLimits {
    requests: Semaphore,
    /// A batch of 1,000 deletions is the heaviest request a store serves: stores run them one
    /// key at a time under their index's locks, and past a few at once (garage: 4) the
    /// deletions per second fall instead of rising.
    deletes: Semaphore,
}

impl std::ops::Deref for StoreClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Both places a request holds: its endpoint's and the global one.
pub struct Permit<'a> {
    _endpoint: tokio::sync::SemaphorePermit<'a>,
    _global: tokio::sync::SemaphorePermit<'a>,
}

/// Clients kept at once; past this the cache starts over (building one is cheap next to the
/// memory a cache of every Secret ever seen would take).
const MAX_CLIENTS: usize = 256;

/// Shared S3 access: cached clients and bounds on requests in flight, per endpoint and overall.
pub struct ObjectStore {
    opts: StoreOptions,
    clients: Mutex<HashMap<S3Connection, StoreClient>>,
    endpoints: std::sync::Mutex<HashMap<String, Arc<EndpointLimits>>>,
    ambient: OnceCell<aws_config::SdkConfig>,
    web_identity: Option<WebIdentityConfig>,
    identities: IdentityCache,
    permits: Arc<Semaphore>,
    /// Regions found for (endpoint URL, bucket), for connections that set none.
    regions: std::sync::Mutex<HashMap<(String, String), BucketRegion>>,
    /// Where request attempts are counted, if anywhere.
    requests: Option<crate::metrics::S3Requests>,
    /// Versioning found per (endpoint URL, bucket), and when it was first asked.
    versioning: std::sync::Mutex<HashMap<(String, String), (std::time::Instant, VersioningCell)>>,
}

impl ObjectStore {
    pub fn new(opts: StoreOptions) -> Self {
        let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        Self {
            opts,
            clients: Mutex::new(HashMap::new()),
            endpoints: Default::default(),
            ambient: OnceCell::new(),
            web_identity: None,
            identities: IdentityCache::default(),
            permits,
            regions: Default::default(),
            requests: None,
            versioning: Default::default(),
        }
    }

    /// Counts every request attempt of the store's clients in `requests`.
    pub fn with_request_counter(mut self, requests: crate::metrics::S3Requests) -> Self {
        self.requests = Some(requests);
        self
    }

    /// Lets the store act as workflows' GC service accounts (the policy decides for whom).
    pub fn with_web_identity(mut self, config: WebIdentityConfig) -> Self {
        self.web_identity = Some(config);
        self
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// A place among the requests in flight, held for one request: first the endpoint's, so
    /// a request waiting on a slow endpoint holds no global place.
    async fn permit<'a>(&'a self, client: &'a StoreClient) -> Permit<'a> {
        let endpoint = client
            .endpoint
            .requests
            .acquire()
            .await
            .expect("semaphore never closed");
        let global = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        Permit {
            _endpoint: endpoint,
            _global: global,
        }
    }

    fn endpoint_limit(&self, url: &str) -> Arc<EndpointLimits> {
        let mut map = self.endpoints.lock().expect("lock");
        if map.len() >= MAX_CLIENTS && !map.contains_key(url) {
            // Idle ones only: a semaphore in use stays shared with its requests.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(url.to_string())
            .or_insert_with(|| {
                Arc::new(EndpointLimits {
                    requests: Semaphore::new(self.opts.endpoint_concurrency.max(1)),
                    deletes: Semaphore::new(self.opts.delete_concurrency.max(1)),
                })
            })
            .clone()
    }

    async fn ambient(&self) -> &aws_config::SdkConfig {
        self.ambient
            .get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load())
            .await
    }

    /// The client for a connection, built once and reused.
    pub async fn client(&self, conn: &S3Connection) -> Result<StoreClient, StoreError> {
        if let Some(c) = self.clients.lock().await.get(conn) {
            return Ok(c.clone());
        }
        let client = StoreClient {
            client: self.build_client(conn).await?,
            endpoint: self.endpoint_limit(&endpoint_of(&conn.url)),
        };
        let mut clients = self.clients.lock().await;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.entry(conn.clone()).or_insert(client.clone());
        Ok(client)
    }

    /// The client for a bucket of a connection: where the artifact set no region, the bucket's
    /// region is found first (once per endpoint and bucket) and signed for, as minio-go does
    /// for Argo. The SDK does not follow S3's 301 to the right region, so without this every
    /// AWS bucket outside the guessed region fails for ever.
    pub async fn client_for(
        &self,
        conn: &S3Connection,
        bucket: &str,
    ) -> Result<StoreClient, StoreError> {
        if !conn.discover_region {
            return self.client(conn).await;
        }
        // One question per endpoint and bucket, however many passes start on it at once.
        let cell = {
            let mut regions = self.regions.lock().expect("lock");
            if regions.len() >= MAX_CLIENTS * 4 {
                regions.retain(|_, c| c.initialized());
                if regions.len() >= MAX_CLIENTS * 4 {
                    regions.clear();
                }
            }
            regions
                .entry((conn.url.clone(), bucket.to_string()))
                .or_default()
                .clone()
        };
        let guess = self.client(conn).await?;
        let asked = cell
            .get_or_try_init(|| async {
                // The store answered: its region, or (none given) the guess stands. No
                // answer: the guess for now, and the question again next time.
                match self.bucket_region(&guess, bucket).await {
                    Some(found) => Ok(found.unwrap_or_else(|| conn.region.clone())),
                    None => Err(()),
                }
            })
            .await;
        let region = match asked {
            Ok(r) => r.clone(),
            Err(()) => conn.region.clone(),
        };
        if region == conn.region {
            return self.client(conn).await;
        }
        let mut at = conn.clone();
        at.url = regional_url(&conn.url, &region);
        at.region = region;
        at.discover_region = false;
        self.client(&at).await
    }

    /// The bucket's region as the store tells it: `x-amz-bucket-region` on a HEAD of the bucket,
    /// whether it answered 200, 301 (another region) or 403. `Some(None)`: it answered without
    /// saying (not AWS); `None`: no answer at all.
    async fn bucket_region(&self, client: &StoreClient, bucket: &str) -> Option<Option<String>> {
        let _permit = self.permit(client).await;
        // A region is a name (`eu-west-2`, `garage`): anything else is not used, as it would
        // go into the host name of AWS's regional endpoint.
        let header = |h: &aws_smithy_runtime_api::http::Headers| {
            h.get("x-amz-bucket-region")
                .filter(|r| is_region_name(r))
                .map(str::to_string)
        };
        match client.head_bucket().bucket(bucket).send().await {
            Ok(out) => Some(
                out.bucket_region()
                    .filter(|r| is_region_name(r))
                    .map(str::to_string),
            ),
            Err(e) => e.raw_response().map(|r| header(r.headers())),
        }
    }

    async fn build_client(&self, conn: &S3Connection) -> Result<Client, StoreError> {
        let retry = RetryConfig::standard()
            .with_max_attempts(self.opts.max_attempts.max(1))
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(10));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(self.opts.request_timeout)
            .build();
        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(conn.region.clone()))
            .endpoint_url(&conn.url)
            .force_path_style(conn.path_style)
            .retry_config(retry)
            .timeout_config(timeouts)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        b = match &conn.credentials {
            Credentials::Static {
                access_key,
                secret_key,
                session_token,
                ..
            } => b.credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key,
                secret_key,
                session_token.clone(),
                None,
                "artgc-secret",
            )),
            Credentials::ServiceAccount {
                namespace,
                name,
                role_arn,
                assume,
            } => {
                let config = self.web_identity.as_ref().ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Credentials,
                        format!("acting as ServiceAccount {namespace}/{name} needs a Kubernetes cluster (TokenRequest)"),
                    )
                })?;
                let key = IdentityKey {
                    namespace: namespace.clone(),
                    account: name.clone(),
                    role_arn: role_arn.clone(),
                    assume: assume.clone(),
                };
                b.credentials_provider(self.identities.provider(config, key).await)
            }
            Credentials::Controller { assume: None } => {
                let provider = self.ambient().await.credentials_provider().ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Credentials,
                        "no credentials: the AWS SDK found no credentials of artgc's own",
                    )
                })?;
                b.credentials_provider(provider)
            }
            Credentials::Controller {
                assume: Some(role_arn),
            } => {
                let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                    .session_name("artgc")
                    .region(Region::new(conn.region.clone()))
                    .configure(self.ambient().await)
                    .build()
                    .await;
                b.credentials_provider(provider)
            }
        };
        // Every client resolves through the address check, the CA from `caSecret` or not.
        {
            use aws_smithy_http_client::tls;
            let mut trust = tls::TrustStore::default();
            if let Some(pem) = &conn.ca_pem {
                trust = trust.with_pem_certificate(pem.clone());
            }
            let ctx = tls::TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .map_err(|e| StoreError::new(StoreErrorKind::Request, format!("caSecret: {e}")))?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(ctx)
                .build_with_resolver(crate::dns::CheckedResolver {
                    loopback: conn.loopback,
                    own: conn.own_addresses.clone(),
                });
            b = b.http_client(http);
        }
        b = b.interceptor(BoundResponses {
            max: self.opts.max_response_bytes,
        });
        if let Some(requests) = &self.requests {
            b = b.interceptor(CountAttempts {
                endpoint: endpoint_of(&conn.url),
                requests: requests.clone(),
            });
        }
        Ok(Client::from_conf(b.build()))
    }

    /// HEAD one key: the object, or `None` when there is no such object.
    pub async fn head(
        &self,
        client: &StoreClient,
        bucket: &str,
        key: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        let _permit = self.permit(client).await;
        match client.head_object().bucket(bucket).key(key).send().await {
            Ok(out) => Ok(Some(StoredObject {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified: timestamp(out.last_modified()),
            })),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(sdk_error("HeadObject", &format!("s3://{bucket}/{key}"), e)),
        }
    }

    /// Checks that the bucket answers (a HEAD's 404 says nothing about whether the key or the
    /// bucket is missing, and a missing bucket must not pass as "already deleted").
    pub async fn check_bucket(&self, client: &StoreClient, bucket: &str) -> Result<(), StoreError> {
        let _permit = self.permit(client).await;
        client
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("ListObjectsV2", &format!("s3://{bucket}"), e))
    }

    /// Lists every object under `prefix`, at most `limit` of them (more is an error: a bound
    /// on what one artifact may delete). `stopped` is asked before every page after the first:
    /// a long listing ends `cancelled` on shutdown or lost leadership.
    pub async fn list(
        &self,
        client: &StoreClient,
        bucket: &str,
        prefix: &str,
        limit: usize,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<StoredObject>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // A page holds up to 1,000 keys; a store that keeps answering "more" past what the
        // bound allows (empty pages, a repeated token) is cut off.
        let max_pages = limit / 1000 + 3;
        for page_no in 0..max_pages {
            if page_no > 0 && stopped() {
                return Err(StoreError::cancelled());
            }
            let page = {
                let _permit = self.permit(client).await;
                client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error("ListObjectsV2", &format!("s3://{bucket}/{prefix}"), e)
                    })?
            };
            for obj in page.contents() {
                // A store that ignores the prefix must not widen what is deleted.
                if let Some(key) = obj.key().filter(|k| k.starts_with(prefix)) {
                    out.push(StoredObject {
                        key: key.to_string(),
                        size: obj.size().unwrap_or(0).max(0) as u64,
                        last_modified: timestamp(obj.last_modified()),
                    });
                }
            }
            if out.len() > limit {
                return Err(StoreError::new(
                    StoreErrorKind::TooManyObjects,
                    format!(
                        "s3://{bucket}/{prefix} holds more than {limit} objects (raise --max-objects-per-artifact to allow it)"
                    ),
                ));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
        Err(StoreError::new(
            StoreErrorKind::EndlessListing,
            format!(
                "ListObjectsV2 s3://{bucket}/{prefix}: the store still answered \"more\" after {max_pages} pages ({} objects); given up",
                out.len()
            ),
        ))
    }

    /// Deletes keys of one bucket in batches of up to 1,000, retrying keys the store reports as
    /// throttled or failed on its side. A missing key counts as deleted. Returns one result per
    /// key, in order.
    pub async fn delete_keys(
        &self,
        client: &StoreClient,
        bucket: &str,
        keys: &[String],
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Result<(), StoreError>> = vec![Ok(()); keys.len()];
        let mut fallback = false;
        for (chunk_no, chunk) in keys.chunks(MAX_BATCH).enumerate() {
            let base = chunk_no * MAX_BATCH;
            if !fallback {
                match self.delete_batch(client, bucket, chunk, stopped).await {
                    Ok(per_key) => {
                        for (i, r) in per_key.into_iter().enumerate() {
                            results[base + i] = r;
                        }
                        continue;
                    }
                    Err(e) if e.kind == StoreErrorKind::NotImplemented => {
                        tracing::info!(
                            bucket,
                            "store does not implement DeleteObjects; deleting one key at a time"
                        );
                        fallback = true;
                    }
                    Err(e) => {
                        for r in &mut results[base..base + chunk.len()] {
                            *r = Err(e.clone());
                        }
                        continue;
                    }
                }
            }
            for (i, key) in chunk.iter().enumerate() {
                results[base + i] = self.delete_one(client, bucket, key, stopped).await;
            }
        }
        results
    }

    async fn delete_batch(
        &self,
        client: &StoreClient,
        bucket: &str,
        keys: &[String],
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut results: Vec<Result<(), StoreError>> = vec![Ok(()); keys.len()];
        let position: HashMap<&str, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.opts.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build();
        loop {
            let objects = pending
                .iter()
                .map(|&i| ObjectIdentifier::builder().key(&keys[i]).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::new(StoreErrorKind::Request, e.to_string()))?;
            let Some(out) = self.send_delete(client, bucket, objects, stopped).await? else {
                // Keys an earlier attempt deleted stay counted.
                for &i in &pending {
                    results[i] = Err(StoreError::cancelled());
                }
                return Ok(results);
            };
            let mut retry = Vec::new();
            for err in out.errors() {
                let Some(&i) = err.key().and_then(|k| position.get(k)) else {
                    continue;
                };
                let code = err.code().unwrap_or("Unknown");
                if code == "NoSuchKey" {
                    continue;
                }
                let kind = kind_of(Some(code), None);
                let e = StoreError::new(
                    kind,
                    format!(
                        "DeleteObjects s3://{bucket}/{}: {code}: {}",
                        keys[i],
                        err.message().unwrap_or_default()
                    ),
                );
                results[i] = Err(e);
                if matches!(
                    kind,
                    StoreErrorKind::Throttled | StoreErrorKind::Server | StoreErrorKind::Request
                ) && code != "AccessDenied"
                {
                    retry.push(i);
                }
            }
            if retry.is_empty() {
                return Ok(results);
            }
            let Some(delay) = delays.next() else {
                return Ok(results);
            };
            tracing::debug!(
                bucket,
                keys = retry.len(),
                ?delay,
                "retrying keys DeleteObjects reported as failed"
            );
            tokio::time::sleep(delay).await;
            for &i in &retry {
                results[i] = Ok(());
            }
            pending = retry;
        }
    }

    /// The bucket's versioning, asked once per endpoint and bucket. A store that does not
    /// implement the request has none (`Off`); one that cannot be asked now (access denied,
    /// unreachable) gives `None` and is asked again next time.
    pub async fn versioning(
        &self,
        client: &StoreClient,
        conn: &S3Connection,
        bucket: &str,
    ) -> Option<Versioning> {
        let cell = {
            let mut cache = self.versioning.lock().expect("lock");
            if cache.len() >= MAX_CLIENTS * 4 {
                cache.clear();
            }
            let now = std::time::Instant::now();
            let entry = cache
                .entry((conn.url.clone(), bucket.to_string()))
                .or_insert_with(|| (now, VersioningCell::default()));
            if now.duration_since(entry.0) > VERSIONING_TTL {
                *entry = (now, VersioningCell::default());
            }
            entry.1.clone()
        };
        let asked = cell
            .get_or_try_init(|| async {
                let _permit = self.permit(client).await;
                match client.get_bucket_versioning().bucket(bucket).send().await {
                    Ok(out) => Ok(match out.status() {
                        Some(aws_sdk_s3::types::BucketVersioningStatus::Enabled) => {
                            Versioning::Enabled
                        }
                        Some(aws_sdk_s3::types::BucketVersioningStatus::Suspended) => {
                            Versioning::Suspended
                        }
                        _ => Versioning::Off,
                    }),
                    // Stores that answer 200 under another root element than AWS's (moto:
                    // GetBucketVersioningResponse) fail the SDK's parse: their Status is read.
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                        let body = e
                            .raw_response()
                            .and_then(|r| r.body().bytes())
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default();
                        Ok(versioning_in(&body))
                    }
                    Err(e) => {
                        let e = sdk_error("GetBucketVersioning", &format!("s3://{bucket}"), e);
                        match e.kind {
                            StoreErrorKind::NotImplemented => Ok(Versioning::Off),
                            _ => {
                                tracing::warn!(bucket, error = %e, "bucket versioning unknown; deleted bytes are counted as reclaimed");
                                Err(e)
                            }
                        }
                    }
                }
            })
            .await;
        asked.ok().copied()
    }

    /// Lists every version (delete markers left out) of the keys under `prefix`, at most
    /// `limit` of them.
    pub async fn list_versions(
        &self,
        client: &StoreClient,
        bucket: &str,
        prefix: &str,
        limit: usize,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<ObjectVersion>, StoreError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        let max_pages = limit / 1000 + 3;
        for page_no in 0..max_pages {
            if page_no > 0 && stopped() {
                return Err(StoreError::cancelled());
            }
            let page = {
                let _permit = self.permit(client).await;
                client
                    .list_object_versions()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_key_marker(key_marker.take())
                    .set_version_id_marker(version_marker.take())
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error("ListObjectVersions", &format!("s3://{bucket}/{prefix}"), e)
                    })?
            };
            for v in page.versions() {
                // A store that ignores the prefix must not widen what is deleted.
                let (Some(key), Some(id)) =
                    (v.key().filter(|k| k.starts_with(prefix)), v.version_id())
                else {
                    continue;
                };
                out.push(ObjectVersion {
                    key: key.to_string(),
                    version_id: id.to_string(),
                    size: v.size().unwrap_or(0).max(0) as u64,
                    last_modified: timestamp(v.last_modified()),
                    is_latest: v.is_latest() == Some(true),
                });
            }
            if out.len() > limit {
                return Err(StoreError::new(
                    StoreErrorKind::TooManyObjects,
                    format!(
                        "s3://{bucket}/{prefix} holds more than {limit} versions (raise --max-objects-per-artifact to allow it)"
                    ),
                ));
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(out);
            }
        }
        Err(StoreError::new(
            StoreErrorKind::EndlessListing,
            format!(
                "ListObjectVersions s3://{bucket}/{prefix}: the store still answered \"more\" after {max_pages} pages; given up"
            ),
        ))
    }

    /// Deletes versions (key, version id) of one bucket in batches of up to 1,000. A version
    /// refused with AccessDenied is asked about: one Object Lock protects is `Locked`; any
    /// other refusal stays an error. Never sends the governance bypass.
    pub async fn delete_versions(
        &self,
        client: &StoreClient,
        bucket: &str,
        versions: &[(String, String)],
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Vec<Result<VersionDeleted, StoreError>> {
        let mut results = Vec::with_capacity(versions.len());
        for chunk in versions.chunks(MAX_BATCH) {
            match self
                .delete_version_batch(client, bucket, chunk, stopped)
                .await
            {
                Ok(r) => results.extend(r),
                Err(e) => results.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        results
    }

    async fn delete_version_batch(
        &self,
        client: &StoreClient,
        bucket: &str,
        chunk: &[(String, String)],
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Result<VersionDeleted, StoreError>>, StoreError> {
        let objects = chunk
            .iter()
            .map(|(k, v)| ObjectIdentifier::builder().key(k).version_id(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::new(StoreErrorKind::Request, e.to_string()))?;
        let Some(out) = self.send_delete(client, bucket, objects, stopped).await? else {
            return Ok(chunk.iter().map(|_| Err(StoreError::cancelled())).collect());
        };
        let position: HashMap<(&str, &str), usize> = chunk
            .iter()
            .enumerate()
            .map(|(i, (k, v))| ((k.as_str(), v.as_str()), i))
            .collect();
        let mut results: Vec<Result<VersionDeleted, StoreError>> =
            vec![Ok(VersionDeleted::Deleted); chunk.len()];
        for err in out.errors() {
            let Some(key) = err.key() else {
                continue;
            };
            // An error without its version id (some stores leave it out) stands for every
            // version of the key in the request: none is counted deleted unproven.
            let hit: Vec<usize> = match err.version_id() {
                Some(id) => position.get(&(key, id)).copied().into_iter().collect(),
                None => chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, (k, _))| k == key)
                    .map(|(i, _)| i)
                    .collect(),
            };
            let code = err.code().unwrap_or("Unknown");
            if code == "NoSuchVersion" || code == "NoSuchKey" {
                continue;
            }
            let kind = kind_of(Some(code), None);
            for i in hit {
                let id = &chunk[i].1;
                results[i] = if kind == StoreErrorKind::AccessDenied
                    && self.is_locked(client, bucket, key, id).await
                {
                    Ok(VersionDeleted::Locked)
                } else {
                    Err(StoreError::new(
                        kind,
                        format!(
                            "DeleteObjects s3://{bucket}/{key} version {id}: {code}: {}",
                            err.message().unwrap_or_default()
                        ),
                    ))
                };
            }
        }
        Ok(results)
    }

    /// Whether Object Lock protects a version now: a retention date still ahead, or a legal
    /// hold on. HEAD of the version says both; where HEAD is refused (an SSE-C object wants
    /// its key) the retention and legal-hold requests are asked. Not known: not locked, so the
    /// refusal stays an error.
    async fn is_locked(&self, client: &StoreClient, bucket: &str, key: &str, id: &str) -> bool {
        let _permit = self.permit(client).await;
        let now = jiff::Timestamp::now();
        let ahead = |t: Option<&aws_smithy_types::DateTime>| timestamp(t).is_some_and(|u| u > now);
        let hold = aws_sdk_s3::types::ObjectLockLegalHoldStatus::On;
        if let Ok(h) = client
            .head_object()
            .bucket(bucket)
            .key(key)
            .version_id(id)
            .send()
            .await
        {
            return ahead(h.object_lock_retain_until_date())
                || h.object_lock_legal_hold_status() == Some(&hold);
        }
        let retained = client
            .get_object_retention()
            .bucket(bucket)
            .key(key)
            .version_id(id)
            .send()
            .await
            .ok()
            .is_some_and(|r| ahead(r.retention().and_then(|r| r.retain_until_date())));
        retained
            || client
                .get_object_legal_hold()
                .bucket(bucket)
                .key(key)
                .version_id(id)
                .send()
                .await
                .ok()
                .is_some_and(|h| h.legal_hold().and_then(|h| h.status()) == Some(&hold))
    }

    /// One quiet DeleteObjects request, under the endpoint's places for deletes and requests.
    /// `None`: `stopped` once they were ours (the wait may outlast the leadership, or the
    /// process, the pass started with), and nothing was sent.
    async fn send_delete(
        &self,
        client: &StoreClient,
        bucket: &str,
        objects: Vec<ObjectIdentifier>,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<aws_sdk_s3::operation::delete_objects::DeleteObjectsOutput>, StoreError>
    {
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::new(StoreErrorKind::Request, e.to_string()))?;
        let _delete = client
            .endpoint
            .deletes
            .acquire()
            .await
            .expect("semaphore never closed");
        let _permit = self.permit(client).await;
        if stopped() {
            return Ok(None);
        }
        client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .customize()
            .mutate_request(add_content_md5)
            .send()
            .await
            .map(Some)
            .map_err(|e| sdk_error("DeleteObjects", &format!("s3://{bucket}"), e))
    }

    async fn delete_one(
        &self,
        client: &StoreClient,
        bucket: &str,
        key: &str,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), StoreError> {
        let _permit = self.permit(client).await;
        if stopped() {
            return Err(StoreError::cancelled());
        }
        match client.delete_object().bucket(bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(sdk_error(
                "DeleteObject",
                &format!("s3://{bucket}/{key}"),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_region_name_goes_into_aws_s_regional_host() {
        for ok in ["eu-west-2", "us-gov-west-1", "garage"] {
            assert!(is_region_name(ok), "{ok}");
        }
        for bad in ["", "EU-WEST-2", "evil.com/x", "a b", "eu_west"] {
            assert!(!is_region_name(bad), "{bad:?}");
        }
        assert_eq!(
            regional_url("https://s3.amazonaws.com", "eu-west-2"),
            "https://s3.eu-west-2.amazonaws.com"
        );
        for other in ["https://s3.eu-west-1.amazonaws.com", "http://minio:9000"] {
            assert_eq!(regional_url(other, "eu-west-2"), other);
        }
    }

    #[test]
    fn attempts_are_throttled_on_429_and_503_failed_on_other_5xx_or_no_answer() {
        for (status, outcome) in [
            (Some(200), "answered"),
            (Some(204), "answered"),
            (Some(403), "answered"),
            (Some(404), "answered"),
            (Some(429), "throttled"),
            (Some(503), "throttled"),
            (Some(500), "failed"),
            (Some(502), "failed"),
            (None, "failed"),
        ] {
            assert_eq!(attempt_outcome(status), outcome, "{status:?}");
        }
    }

    #[test]
    fn versioning_is_read_from_any_root_element() {
        for (body, want) in [
            (
                "<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
                Versioning::Enabled,
            ),
            (
                "<GetBucketVersioningResponse xmlns=\"x\"><Status>Suspended</Status></GetBucketVersioningResponse>",
                Versioning::Suspended,
            ),
            ("<VersioningConfiguration/>", Versioning::Off),
        ] {
            assert_eq!(versioning_in(body), want, "{body}");
        }
    }
}
