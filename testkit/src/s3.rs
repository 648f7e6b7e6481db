//! A real S3 server for tests: in-process `s3s-fs` on a loopback port, or an external store
//! named by environment variables.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// Env var naming an external S3 endpoint (`host:port`, plain HTTP) to test against.
pub const ENV_ENDPOINT: &str = "ARTGC_TEST_S3_ENDPOINT";
pub const ENV_ACCESS_KEY: &str = "ARTGC_TEST_S3_ACCESS_KEY";
pub const ENV_SECRET_KEY: &str = "ARTGC_TEST_S3_SECRET_KEY";
pub const ENV_REGION: &str = "ARTGC_TEST_S3_REGION";

/// A running S3 endpoint and admin credentials for it.
pub struct S3Server {
    /// `host:port`, as an Argo artifact's `endpoint` names it (plain HTTP: `insecure: true`).
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// `s3s-fs` or the external store's name.
    pub kind: &'static str,
    client: Client,
    _root: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A bucket name no other test (or earlier run against the same external store) uses.
pub fn unique_bucket(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    format!("{prefix}-{}-{n}-{r:08x}", std::process::id())
}

/// An admin client; `ca` (PEM) switches to HTTPS trusting that CA.
fn admin_client(endpoint: &str, ak: &str, sk: &str, region: &str, ca: Option<&str>) -> Client {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(format!("{scheme}://{endpoint}"))
        .force_path_style(true)
        .credentials_provider(Credentials::new(ak, sk, None, None, "testkit"));
    if let Some(pem) = ca {
        use aws_smithy_http_client::tls;
        let trust = tls::TrustStore::empty().with_pem_certificate(pem.as_bytes().to_vec());
        let ctx = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .expect("tls");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(ctx)
            .build_https();
        conf = conf.http_client(http);
    }
    Client::from_conf(conf.build())
}

impl S3Server {
    /// The external store if `ARTGC_TEST_S3_ENDPOINT` is set, else an in-process `s3s-fs`.
    pub async fn start() -> Self {
        match std::env::var(ENV_ENDPOINT) {
            Ok(endpoint) if !endpoint.is_empty() => {
                let var = |k: &str| {
                    std::env::var(k)
                        .unwrap_or_else(|_| panic!("{k} must be set with {ENV_ENDPOINT}"))
                };
                let (ak, sk) = (var(ENV_ACCESS_KEY), var(ENV_SECRET_KEY));
                let region = std::env::var(ENV_REGION).unwrap_or_else(|_| "garage".into());
                Self {
                    client: admin_client(&endpoint, &ak, &sk, &region, None),
                    endpoint,
                    access_key: ak,
                    secret_key: sk,
                    region,
                    kind: "external",
                    _root: None,
                    stop: None,
                }
            }
            _ => Self::start_local().await,
        }
    }

    /// `s3s-fs` over a fresh temporary folder, with SigV4 checked against random credentials.
    pub async fn start_local() -> Self {
        Self::start_inner(None, &[]).await
    }

    /// Like [`S3Server::start_local`], also accepting these (access key, secret key) pairs (the
    /// credentials an STS double hands out).
    pub async fn start_local_with_keys(keys: &[(String, String)]) -> Self {
        Self::start_inner(None, keys).await
    }

    /// Like [`S3Server::start_local`], but serving HTTPS with a self-signed certificate for
    /// 127.0.0.1, returned as PEM (what an Argo `caSecret` holds).
    pub async fn start_local_tls() -> (Self, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
        let pem = cert.cert.pem();
        let der = cert.cert.der().clone();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(
            cert.signing_key.serialize_der(),
        )
        .expect("key");
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (
            Self::start_inner(Some((acceptor, pem.clone())), &[]).await,
            pem,
        )
    }

    async fn start_inner(
        tls: Option<(tokio_rustls::TlsAcceptor, String)>,
        extra_keys: &[(String, String)],
    ) -> Self {
        let ca = tls.as_ref().map(|(_, pem)| pem.clone());
        let tls = tls.map(|(acceptor, _)| acceptor);
        let root = tempfile::tempdir().expect("temp dir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let access_key = format!("AK{:016x}", rand::random::<u64>());
        let secret_key = format!("SK{:032x}", rand::random::<u128>());
        let mut builder = S3ServiceBuilder::new(fs);
        let mut auth = SimpleAuth::from_single(access_key.clone(), secret_key.clone());
        for (ak, sk) in extra_keys {
            auth.register(ak.clone(), sk.clone().into());
        }
        builder.set_auth(auth);
        let service = builder.build();
        let (listener, endpoint) = crate::http::bind_loopback().await;
        let stop = crate::http::serve(listener, service, tls);
        let region = "us-east-1".to_string();
        Self {
            client: admin_client(&endpoint, &access_key, &secret_key, &region, ca.as_deref()),
            endpoint,
            access_key,
            secret_key,
            region,
            kind: "s3s-fs",
            _root: Some(root),
            stop: Some(stop),
        }
    }

    /// A client with the server's admin credentials, for seeding and checking.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A client with the admin credentials that reaches the server at `endpoint` (a proxy in
    /// front of it, plain HTTP).
    pub fn client_at(&self, endpoint: &str) -> Client {
        admin_client(
            endpoint,
            &self.access_key,
            &self.secret_key,
            &self.region,
            None,
        )
    }

    /// Creates a bucket with a unique name and returns it.
    pub async fn bucket(&self, prefix: &str) -> String {
        let name = unique_bucket(prefix);
        self.client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
        name
    }

    pub async fn put(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.into()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put s3://{bucket}/{key}: {e:?}"));
    }

    /// Deletes one key (a missing key is no error, as in S3).
    pub async fn delete(&self, bucket: &str, key: &str) {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("delete s3://{bucket}/{key}: {e:?}"));
    }

    /// Puts many objects with `concurrency` requests in flight.
    pub async fn put_many(
        &self,
        bucket: &str,
        objects: Vec<(String, Vec<u8>)>,
        concurrency: usize,
    ) {
        futures::stream::iter(objects)
            .map(|(k, body)| async move { self.put(bucket, &k, body).await })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    }

    /// Every key in the bucket, sorted.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        out.sort();
        out
    }
}
