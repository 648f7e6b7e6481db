//! Objects: HEAD, listing under a prefix, and deleting keys in batches.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use backon::BackoffBuilder;

use super::sdk::{KeyError, add_content_md5, per_key_error, sdk_error, timestamp};
use super::{
    Listing, MAX_BATCH, ObjectStore, StoreClient, StoreError, StoreErrorKind, StoredObject,
};

impl ObjectStore {
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
        let listing = Listing {
            what: "ListObjectsV2",
            noun: "objects",
            bucket,
            prefix,
            limit,
        };
        let listing = &listing;
        self.pages(
            client,
            listing,
            stopped,
            |token: Option<String>| async move {
                let page = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| listing.error(e))?;
                // A store that ignores the prefix must not widen what is deleted.
                let objects = page
                    .contents()
                    .iter()
                    .filter_map(|obj| {
                        let key = obj.key().filter(|k| k.starts_with(prefix))?;
                        Some(StoredObject {
                            key: key.to_string(),
                            size: obj.size().unwrap_or(0).max(0) as u64,
                            last_modified: timestamp(obj.last_modified()),
                        })
                    })
                    .collect();
                let next = match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => Some(t.to_string()),
                    _ => None,
                };
                Ok((objects, next))
            },
        )
        .await
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
                let what = format!("DeleteObjects s3://{bucket}/{}", keys[i]);
                match per_key_error(code, err.message().unwrap_or_default(), &what) {
                    KeyError::Gone => {}
                    KeyError::Retry(e) => {
                        results[i] = Err(e);
                        retry.push(i);
                    }
                    KeyError::Failed(e) => results[i] = Err(e),
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

    /// One quiet DeleteObjects request, under the endpoint's places for deletes and requests.
    /// `None`: `stopped` once they were ours (the wait may outlast the leadership, or the
    /// process, the pass started with), and nothing was sent.
    pub(super) async fn send_delete(
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
