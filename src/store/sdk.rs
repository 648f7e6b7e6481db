//! The SDK's side of a request: errors to stable kinds, interceptors (attempt counts, bounded
//! response bodies, Content-MD5), regions and endpoints.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::{StoreError, StoreErrorKind};

/// `host:port` of a connection URL: the unit of the per-endpoint bound.
pub(super) fn endpoint_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

/// Classifies an S3 error code (and HTTP status when there is no code).
pub(super) fn kind_of(code: Option<&str>, status: Option<u16>) -> StoreErrorKind {
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

pub(super) fn sdk_error<E>(op: &str, target: &str, err: SdkError<E, HttpResponse>) -> StoreError
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
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// Counts every S3 request attempt of a client by how it ended, for the throttling signal:
/// the SDK retries a throttled request by itself, so only the attempts show the store pushing
/// back before a failure does.
#[derive(Debug)]
pub(super) struct CountAttempts {
    pub(super) endpoint: String,
    pub(super) requests: crate::metrics::S3Requests,
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
pub(super) struct BoundResponses {
    pub(super) max: usize,
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
pub(super) fn attempt_outcome(status: Option<u16>) -> &'static str {
    match status {
        Some(429 | 503) => "throttled",
        Some(s) if s >= 500 => "failed",
        Some(_) => "answered",
        None => "failed",
    }
}

/// A region name as stores give them: lower-case letters, digits and dashes.
pub(super) fn is_region_name(r: &str) -> bool {
    (1..=64).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// AWS's global endpoint serves us-east-1; another region's bucket is reached at its regional
/// endpoint. Any other endpoint is the store's own and stays.
pub(super) fn regional_url(url: &str, region: &str) -> String {
    match url.split_once("://") {
        Some((scheme, "s3.amazonaws.com" | "s3.amazonaws.com/")) => {
            format!("{scheme}://s3.{region}.amazonaws.com")
        }
        _ => url.to_string(),
    }
}

/// Adds `Content-MD5` of the body. The SDK sends only a CRC32 checksum on DeleteObjects; some
/// S3-compatible stores refuse the request without an MD5 (awslabs/aws-sdk-rust#1240).
pub(super) fn add_content_md5(req: &mut aws_smithy_runtime_api::http::Request) {
    use base64::Engine;
    use md5::Digest;
    if let Some(body) = req.body().bytes() {
        let digest = md5::Md5::digest(body);
        let value = base64::engine::general_purpose::STANDARD.encode(digest);
        req.headers_mut().insert("Content-MD5", value);
    }
}

pub(super) fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<jiff::Timestamp> {
    let t = t?;
    jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()
}

/// What one key's error inside a DeleteObjects answer comes to.
#[derive(Debug)]
pub(super) enum KeyError {
    /// `NoSuchKey`: already gone, which is what deleting wanted.
    Gone,
    /// Throttled, or failed on the store's side: sent again, within the attempts.
    Retry(StoreError),
    Failed(StoreError),
}

/// The rule for a per-key error `code` (and its message) reported by DeleteObjects for
/// `what`: access denied is never retried, whatever kind the code maps to.
pub(super) fn per_key_error(code: &str, message: &str, what: &str) -> KeyError {
    if code == "NoSuchKey" {
        return KeyError::Gone;
    }
    let kind = kind_of(Some(code), None);
    let e = StoreError::new(kind, format!("{what}: {code}: {message}"));
    let transient = matches!(
        kind,
        StoreErrorKind::Throttled | StoreErrorKind::Server | StoreErrorKind::Request
    );
    match transient && code != "AccessDenied" {
        true => KeyError::Retry(e),
        false => KeyError::Failed(e),
    }
}
