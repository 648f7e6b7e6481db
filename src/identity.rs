//! Acting as a workflow's GC service account without a pod: a short-lived token for the account
//! (TokenRequest, audience STS), exchanged at STS for the role of its IRSA annotation
//! (AssumeRoleWithWebIdentity), then, when the artifact names a `roleARN`, that role assumed
//! with those credentials. What Argo's GC pod running as that account could do, and no more:
//! the role's trust policy decides whether the account may take it.
//!
//! Credentials are cached per (namespace, account, role, assumed role) until shortly before
//! they expire; tokens are never cached, logged or kept beyond the exchange.

use crate::cache::Cache;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as AwsCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_s3::config::SharedCredentialsProvider;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::Mutex;

/// How artgc reaches STS and what it asks tokens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsSettings {
    /// The token audience STS expects.
    pub audience: String,
    /// STS endpoint URL; `None`: the regional AWS endpoint of `region`.
    pub endpoint: Option<String>,
    pub region: String,
}

impl Default for StsSettings {
    fn default() -> Self {
        Self {
            audience: "sts.amazonaws.com".into(),
            endpoint: None,
            region: "us-east-1".into(),
        }
    }
}

#[derive(Clone)]
pub struct WebIdentityConfig {
    /// Mints the tokens (`serviceaccounts/token` create).
    pub client: kube::Client,
    pub sts: StsSettings,
}

/// Refresh this long before credentials expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Token lifetime asked for: the API server's minimum; it is used at once.
const TOKEN_SECONDS: i64 = 600;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub namespace: String,
    pub account: String,
    pub role_arn: String,
    pub assume: Option<String>,
}

/// Identities kept at once: a provider per GC service account in use, each with its token.
const MAX_IDENTITIES: usize = 4096;

/// Providers by identity, shared by every S3 client that acts as it.
pub struct IdentityCache {
    providers: Cache<IdentityKey, SharedCredentialsProvider>,
}

impl Default for IdentityCache {
    fn default() -> Self {
        Self {
            providers: Cache::new(MAX_IDENTITIES),
        }
    }
}

impl IdentityCache {
    pub fn provider(
        &self,
        config: &WebIdentityConfig,
        key: IdentityKey,
    ) -> SharedCredentialsProvider {
        self.providers.get_or_insert_with(&key.clone(), || {
            SharedCredentialsProvider::new(ServiceAccountCredentials {
                config: config.clone(),
                key,
                cached: Arc::new(Mutex::new(None)),
            })
        })
    }
}

struct ServiceAccountCredentials {
    config: WebIdentityConfig,
    key: IdentityKey,
    cached: Arc<Mutex<Option<AwsCredentials>>>,
}

impl std::fmt::Debug for ServiceAccountCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServiceAccountCredentials({}/{} as {})",
            self.key.namespace, self.key.account, self.key.role_arn
        )
    }
}

fn fresh(c: &AwsCredentials) -> bool {
    c.expiry()
        .is_none_or(|e| e > SystemTime::now() + REFRESH_MARGIN)
}

impl ServiceAccountCredentials {
    async fn load(&self) -> Result<AwsCredentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(c.clone());
        }
        let k = &self.key;
        let token = self.token().await?;
        let sts = self.sts(None);
        let session = session_name(&k.namespace, &k.account);
        let out = sts
            .assume_role_with_web_identity()
            .role_arn(&k.role_arn)
            .role_session_name(&session)
            .web_identity_token(token)
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(format!(
                    "STS AssumeRoleWithWebIdentity for ServiceAccount {}/{} as {}: {}",
                    k.namespace,
                    k.account,
                    k.role_arn,
                    brief(&e)
                ))
            })?;
        let mut creds = convert(out.credentials(), "artgc-service-account")?;
        if let Some(role) = &k.assume {
            let out = self
                .sts(Some(creds))
                .assume_role()
                .role_arn(role)
                .role_session_name(&session)
                .send()
                .await
                .map_err(|e| {
                    CredentialsError::provider_error(format!(
                        "STS AssumeRole {role} as ServiceAccount {}/{}: {}",
                        k.namespace,
                        k.account,
                        brief(&e)
                    ))
                })?;
            creds = convert(out.credentials(), "artgc-service-account-role")?;
        }
        *cached = Some(creds.clone());
        Ok(creds)
    }

    async fn token(&self) -> Result<String, CredentialsError> {
        let k = &self.key;
        let api: Api<ServiceAccount> = Api::namespaced(self.config.client.clone(), &k.namespace);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![self.config.sts.audience.clone()]),
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = api
            .create_token_request(&k.account, &PostParams::default(), &req)
            .await
            .map_err(|e| {
                CredentialsError::provider_error(format!(
                    "TokenRequest for ServiceAccount {}/{}: {e}",
                    k.namespace, k.account
                ))
            })?;
        out.status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CredentialsError::provider_error(format!(
                    "TokenRequest for ServiceAccount {}/{} returned no token",
                    k.namespace, k.account
                ))
            })
    }

    fn sts(&self, creds: Option<AwsCredentials>) -> aws_sdk_sts::Client {
        let mut b = aws_sdk_sts::config::Builder::new()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(
                self.config.sts.region.clone(),
            ));
        if let Some(url) = &self.config.sts.endpoint {
            b = b.endpoint_url(url);
        }
        if let Some(c) = creds {
            b = b.credentials_provider(c);
        }
        aws_sdk_sts::Client::from_conf(b.build())
    }
}

impl ProvideCredentials for ServiceAccountCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.load())
    }
}

/// STS's own code and message, or what failed on the way there.
fn brief<E, R>(e: &aws_sdk_sts::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sts::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sts::error::ProvideErrorMetadata;
    match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// STS allows `[\w+=,.@-]{2,64}`.
fn session_name(namespace: &str, account: &str) -> String {
    let raw = format!("artgc-{namespace}-{account}");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    clean
}

fn convert(
    c: Option<&aws_sdk_sts::types::Credentials>,
    source: &'static str,
) -> Result<AwsCredentials, CredentialsError> {
    let c = c.ok_or_else(|| CredentialsError::provider_error("STS returned no credentials"))?;
    let expiry = SystemTime::try_from(*c.expiration()).ok();
    Ok(AwsCredentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        expiry,
        source,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_names_fit_sts() {
        let n = super::session_name("team a", &"x".repeat(80));
        assert!(n.starts_with("artgc-team-a-") && n.len() == 64);
    }
}
