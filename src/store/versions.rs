//! Versioned buckets: a bucket's versioning (cached), listing the versions under a key or
//! prefix, and deleting versions by id, Object Lock respected.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::types::ObjectIdentifier;

use super::sdk::{kind_of, sdk_error, timestamp};
use artgc_core::location::S3Connection;

use super::{
    Listing, MAX_BATCH, ObjectStore, ObjectVersion, StoreClient, StoreError, StoreErrorKind,
    Versioning,
};

/// The versioning state in a GetBucketVersioning answer's text, whatever its root element.
pub(super) fn versioning_in(body: &str) -> Versioning {
    if body.contains("<Status>Enabled</Status>") {
        Versioning::Enabled
    } else if body.contains("<Status>Suspended</Status>") {
        Versioning::Suspended
    } else {
        Versioning::Off
    }
}

/// How long a bucket's versioning is believed: it can be turned on (or suspended) any time.
pub(super) const VERSIONING_TTL: Duration = Duration::from_secs(600);

/// What deleting one version came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionDeleted {
    Deleted,
    /// Object Lock protects it (retention not yet over, or a legal hold): kept. Governance
    /// mode is never bypassed.
    Locked,
}

impl ObjectStore {
    /// The bucket's versioning, asked once per endpoint and bucket. A store that does not
    /// implement the request has none (`Off`); one that cannot be asked now (access denied,
    /// unreachable) gives `None` and is asked again next time.
    pub async fn versioning(
        &self,
        client: &StoreClient,
        conn: &S3Connection,
        bucket: &str,
    ) -> Option<Versioning> {
        let asked = self
            .versioning
            .get_or_try_insert(&(conn.url.clone(), bucket.to_string()), async {
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
        asked.ok()
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
        let listing = Listing {
            what: "ListObjectVersions",
            noun: "versions",
            bucket,
            prefix,
            limit,
        };
        type Marker = (Option<String>, Option<String>);
        let listing = &listing;
        self.pages(
            client,
            listing,
            stopped,
            |marker: Option<Marker>| async move {
                let (key_marker, version_marker) = marker.unwrap_or_default();
                let page = client
                    .list_object_versions()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_key_marker(key_marker)
                    .set_version_id_marker(version_marker)
                    .send()
                    .await
                    .map_err(|e| listing.error(e))?;
                // A store that ignores the prefix must not widen what is deleted; delete markers
                // are left out.
                let versions = page
                    .versions()
                    .iter()
                    .filter_map(|v| {
                        let key = v.key().filter(|k| k.starts_with(prefix))?;
                        Some(ObjectVersion {
                            key: key.to_string(),
                            version_id: v.version_id()?.to_string(),
                            size: v.size().unwrap_or(0).max(0) as u64,
                            last_modified: timestamp(v.last_modified()),
                            is_latest: v.is_latest() == Some(true),
                        })
                    })
                    .collect();
                let next = match page.next_key_marker() {
                    Some(k) if page.is_truncated() == Some(true) => Some((
                        Some(k.to_string()),
                        page.next_version_id_marker().map(str::to_string),
                    )),
                    _ => None,
                };
                Ok((versions, next))
            },
        )
        .await
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
}
