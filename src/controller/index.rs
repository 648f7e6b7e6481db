//! What the watch knows of every Workflow, with one owner: the shared-key index (each
//! workflow's S3 key uses) and the set of watched workflows. Driven as kubert drives its
//! indexes: `apply` one workflow, `delete` one, `reset` after a stream's (re-)list. Passes only
//! read it, through [`WorkflowIndex::keys`], for their shared-key check.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use artgc_core::keys::{KeyIndex, WorkflowKeyUse};
use tokio::sync::{Mutex as AsyncMutex, MutexGuard};

#[derive(Default)]
pub(super) struct WorkflowIndex {
    keys: AsyncMutex<KeyIndex>,
    /// Every workflow the watch delivered, readable or not.
    watched: Mutex<HashSet<String>>,
    /// The index's size as of its last change, for scrapes that must not wait on its lock.
    keys_indexed: AtomicUsize,
    run_bytes: AtomicUsize,
}

/// The index's size, as the metrics show it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IndexSize {
    pub watched: usize,
    pub keys_indexed: usize,
    pub run_bytes: usize,
}

impl WorkflowIndex {
    /// A readable workflow, with its key uses.
    pub async fn apply(&self, key: &str, uses: Vec<WorkflowKeyUse>) {
        let mut keys = self.keys.lock().await;
        keys.set_workflow(key, uses);
        self.measured(&keys);
        drop(keys);
        self.watch(key);
    }

    /// A workflow that cannot be read: watched, and its earlier key uses (if any) are kept, to
    /// be safe.
    pub fn apply_unreadable(&self, key: &str) {
        self.watch(key);
    }

    /// A workflow that is gone.
    pub async fn delete(&self, key: &str) {
        let mut keys = self.keys.lock().await;
        keys.remove_workflow(key);
        self.measured(&keys);
        drop(keys);
        self.watched.lock().expect("lock").remove(key);
    }

    /// After a (re-)list: drops the workflows for which `keep` is false (deleted while the watch
    /// was down, so their DELETED never came).
    pub async fn reset(&self, keep: impl Fn(&str) -> bool) {
        let mut keys = self.keys.lock().await;
        keys.retain_workflows(&keep);
        self.measured(&keys);
        drop(keys);
        self.watched.lock().expect("lock").retain(|k| keep(k));
    }

    /// The shared-key index, for a pass's check; held only for that check.
    pub async fn keys(&self) -> MutexGuard<'_, KeyIndex> {
        self.keys.lock().await
    }

    pub fn size(&self) -> IndexSize {
        IndexSize {
            watched: self.watched.lock().expect("lock").len(),
            keys_indexed: self.keys_indexed.load(Ordering::Relaxed),
            run_bytes: self.run_bytes.load(Ordering::Relaxed),
        }
    }

    fn watch(&self, key: &str) {
        let mut watched = self.watched.lock().expect("lock");
        if !watched.contains(key) {
            watched.insert(key.to_string());
        }
    }

    fn measured(&self, keys: &KeyIndex) {
        self.keys_indexed.store(keys.len(), Ordering::Relaxed);
        self.run_bytes.store(keys.run_bytes(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reset_drops_only_what_the_relist_did_not_see_from_both_the_keys_and_the_watched_set() {
        let index = WorkflowIndex::default();
        index.apply("ns/a", Vec::new()).await;
        index.apply_unreadable("ns/broken");
        index.apply("other/b", Vec::new()).await;
        assert_eq!(index.size().watched, 3);
        index.reset(|k| k != "ns/a" && k != "ns/broken").await;
        assert_eq!(index.size().watched, 1);
        index.delete("other/b").await;
        assert_eq!(index.size().watched, 0);
    }
}
