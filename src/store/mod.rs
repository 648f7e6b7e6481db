//! The S3 side: one client per connection, probing what an artifact amounts to (HEAD, listing)
//! and deleting keys in batches. Knows nothing about workflows; it is handed connections and
//! keys by the executor.
//!
//! - this file: the settings, the clients (one per connection, bounded, with their endpoint's
//!   limits) and the caches of bucket regions and versioning;
//! - [`objects`]: HEAD, listing, deleting keys; [`versions`]: versioning, listing and deleting
//!   versions; `sdk`: the SDK's errors, interceptors and endpoints.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Region, StalledStreamProtectionConfig};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use tokio::sync::{OnceCell, Semaphore};

use crate::cache::Cache;
use crate::identity::{IdentityCache, IdentityKey, WebIdentityConfig};

mod objects;
mod sdk;
mod versions;

use artgc_core::location::{Credentials, S3Connection};
use sdk::{BoundResponses, CountAttempts, endpoint_of, is_region_name, regional_url};
pub use versions::VersionDeleted;

/// S3 caps DeleteObjects at 1,000 keys.
pub const MAX_BATCH: usize = 1000;

pub use artgc_core::error::{StoreError, StoreErrorKind};

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

pub use artgc_core::execution::Versioning;

pub use artgc_core::execution::StoredObject;

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

/// Clients kept at once; past this the least used go (building one is cheap next to the
/// memory a cache of every Secret ever seen would take).
const MAX_CLIENTS: usize = 256;

/// Shared S3 access: cached clients and bounds on requests in flight, per endpoint and overall.
pub struct ObjectStore {
    opts: StoreOptions,
    clients: Cache<S3Connection, StoreClient>,
    endpoints: Cache<String, Arc<EndpointLimits>>,
    ambient: OnceCell<aws_config::SdkConfig>,
    web_identity: Option<WebIdentityConfig>,
    identities: IdentityCache,
    permits: Arc<Semaphore>,
    /// Regions found for (endpoint URL, bucket), for connections that set none.
    regions: Cache<(String, String), String>,
    /// Where request attempts are counted, if anywhere.
    requests: Option<crate::metrics::S3Requests>,
    /// Versioning found per (endpoint URL, bucket), believed for a while.
    versioning: Cache<(String, String), artgc_core::execution::Versioning>,
}

impl ObjectStore {
    pub fn new(opts: StoreOptions) -> Self {
        let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        Self {
            opts,
            clients: Cache::new(MAX_CLIENTS),
            // Idle ones only: a limit in use stays the one its requests share.
            endpoints: Cache::keeping_in_use(MAX_CLIENTS, |l| Arc::strong_count(l) > 1),
            ambient: OnceCell::new(),
            web_identity: None,
            identities: IdentityCache::default(),
            permits,
            regions: Cache::new(MAX_CLIENTS * 4),
            requests: None,
            versioning: Cache::new(MAX_CLIENTS * 4).with_ttl(versions::VERSIONING_TTL),
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
        self.endpoints.get_or_insert_with(&url.to_string(), || {
            Arc::new(EndpointLimits {
                requests: Semaphore::new(self.opts.endpoint_concurrency.max(1)),
                deletes: Semaphore::new(self.opts.delete_concurrency.max(1)),
            })
        })
    }

    async fn ambient(&self) -> &aws_config::SdkConfig {
        self.ambient
            .get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load())
            .await
    }

    /// The client for a connection, built once and reused.
    pub async fn client(&self, conn: &S3Connection) -> Result<StoreClient, StoreError> {
        self.clients
            .get_or_try_insert(conn, async {
                Ok(StoreClient {
                    client: self.build_client(conn).await?,
                    endpoint: self.endpoint_limit(&endpoint_of(&conn.url)),
                })
            })
            .await
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
        let guess = self.client(conn).await?;
        // One question per endpoint and bucket, however many passes start on it at once.
        let asked = self
            .regions
            .get_or_try_insert(&(conn.url.clone(), bucket.to_string()), async {
                // The store answered: its region, or (none given) the guess stands. No
                // answer: the guess for now, and the question again next time.
                match self.bucket_region(&guess, bucket).await {
                    Some(found) => Ok(found.unwrap_or_else(|| conn.region.clone())),
                    None => Err(()),
                }
            })
            .await;
        let region = asked.unwrap_or_else(|()| conn.region.clone());
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
                b.credentials_provider(self.identities.provider(config, key))
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
}

/// One listing (objects or versions) under a prefix, for [`ObjectStore::pages`].
struct Listing<'a> {
    /// The request, for messages.
    what: &'static str,
    /// What it lists, for messages.
    noun: &'static str,
    bucket: &'a str,
    prefix: &'a str,
    /// More items than this is an error: a bound on what one artifact may delete.
    limit: usize,
}

impl Listing<'_> {
    fn error<E>(
        &self,
        e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        sdk::sdk_error(
            self.what,
            &format!("s3://{}/{}", self.bucket, self.prefix),
            e,
        )
    }
}

impl ObjectStore {
    /// The one pager: asks `page` for each page after the marker the last one returned (`None`
    /// for the first), each under the endpoint's bound, until a page returns no marker. Past
    /// the listing's `limit` it fails; a store that keeps answering "more" past what the limit
    /// allows (empty pages, a repeated marker) is cut off. `stopped` is asked before every page
    /// after the first: a long listing ends `cancelled` on shutdown or lost leadership.
    async fn pages<T, M, Page>(
        &self,
        client: &StoreClient,
        listing: &Listing<'_>,
        stopped: &(dyn Fn() -> bool + Sync),
        mut page: impl FnMut(Option<M>) -> Page,
    ) -> Result<Vec<T>, StoreError>
    where
        Page: std::future::Future<Output = Result<(Vec<T>, Option<M>), StoreError>>,
    {
        let mut out = Vec::new();
        let mut marker = None;
        // A page holds up to 1,000 items.
        let max_pages = listing.limit / 1000 + 3;
        for page_no in 0..max_pages {
            if page_no > 0 && stopped() {
                return Err(StoreError::cancelled());
            }
            let (items, next) = {
                let _permit = self.permit(client).await;
                page(marker.take()).await?
            };
            out.extend(items);
            if out.len() > listing.limit {
                return Err(StoreError::new(
                    StoreErrorKind::TooManyObjects,
                    format!(
                        "s3://{}/{} holds more than {} {} (raise --max-objects-per-artifact to allow it)",
                        listing.bucket, listing.prefix, listing.limit, listing.noun
                    ),
                ));
            }
            match next {
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
        Err(StoreError::new(
            StoreErrorKind::EndlessListing,
            format!(
                "{} s3://{}/{}: the store still answered \"more\" after {max_pages} pages ({} {}); given up",
                listing.what,
                listing.bucket,
                listing.prefix,
                out.len(),
                listing.noun
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::sdk::{KeyError, attempt_outcome, is_region_name, per_key_error, regional_url};
    use super::versions::versioning_in;
    use super::*;

    #[test]
    fn a_key_deleteobjects_failed_is_retried_only_when_the_store_may_answer_otherwise() {
        let at = "DeleteObjects s3://b/k";
        let kind = |r: &KeyError| match r {
            KeyError::Gone => "gone",
            KeyError::Retry(_) => "retry",
            KeyError::Failed(_) => "failed",
        };
        for (code, want) in [
            ("NoSuchKey", "gone"),
            ("SlowDown", "retry"),
            ("InternalError", "retry"),
            ("ServiceUnavailable", "retry"),
            ("AccessDenied", "failed"),
            ("Unknown", "retry"),
        ] {
            assert_eq!(kind(&per_key_error(code, "m", at)), want, "{code}");
        }
        let KeyError::Failed(e) = per_key_error("AccessDenied", "no", at) else {
            panic!("failed")
        };
        assert_eq!(e.to_string(), "DeleteObjects s3://b/k: AccessDenied: no");
    }

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
