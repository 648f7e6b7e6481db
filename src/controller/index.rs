//! What the watch knows of every Workflow, with one owner: the shared-key index (each
//! workflow's S3 key uses) and the set of watched workflows. Driven as kubert drives its
//! indexes: `apply` one workflow, `delete` one, `reset` after a stream's (re-)list. Passes only
//! read it, through [`WorkflowIndex::keys`], for their shared-key check.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use artgc_core::keys::{Coarseness, KeyIndex, NamespaceShare, WorkflowKey, WorkflowKeyUse};
use tokio::sync::{Mutex as AsyncMutex, MutexGuard};

use crate::metrics::FinalizerWait;

#[derive(Default)]
pub(super) struct WorkflowIndex {
    /// Entries one namespace may hold before a workflow's keys are held coarser.
    bound: usize,
    keys: AsyncMutex<KeyIndex>,
    /// Every workflow the watch delivered, readable or not.
    watched: Mutex<HashSet<WorkflowKey>>,
    /// The watched workflows being deleted that hold artgc's finalizer, with their
    /// deletionTimestamp: what the finalizer-wait gauges show.
    waiting: Mutex<HashMap<WorkflowKey, jiff::Timestamp>>,
    /// The index's size as of its last change, for scrapes that must not wait on its lock.
    keys_indexed: AtomicUsize,
    run_bytes: AtomicUsize,
    /// The namespaces past their bound, as of the index's last change.
    coarse: Mutex<Vec<NamespaceShare>>,
}

/// The index's size, as the metrics show it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IndexSize {
    pub watched: usize,
    pub keys_indexed: usize,
    pub run_bytes: usize,
}

impl WorkflowIndex {
    /// An index in which one namespace's workflows hold at most `bound` entries before a
    /// workflow's keys are held coarser (protection only widens).
    pub fn with_namespace_bound(bound: usize) -> Self {
        Self {
            bound,
            keys: AsyncMutex::new(KeyIndex::with_namespace_bound(bound)),
            ..Self::default()
        }
    }

    /// A readable workflow, with its key uses; `waiting`: its deletionTimestamp, when it is
    /// being deleted and holds artgc's finalizer.
    pub async fn apply(
        &self,
        key: &WorkflowKey,
        uses: Vec<WorkflowKeyUse>,
        waiting: Option<jiff::Timestamp>,
    ) {
        let mut keys = self.keys.lock().await;
        let before = keys.coarseness(key.as_str());
        keys.set_workflow(key.as_str(), uses);
        let now = keys.coarseness(key.as_str());
        if let Some(level) = now.filter(|&l| l > Coarseness::PodFolders && now != before) {
            tracing::warn!(workflow = %key, level = level.as_str(), bound = self.bound,
                "the namespace's share of the shared-key index is full: this workflow's keys are held as coarser folders, which keeps more of other workflows' keys");
        }
        self.measured(&keys);
        drop(keys);
        self.watch(key, waiting);
    }

    /// A workflow that cannot be read: watched, and its earlier key uses (if any) are kept, to
    /// be safe.
    pub fn apply_unreadable(&self, key: &WorkflowKey, waiting: Option<jiff::Timestamp>) {
        self.watch(key, waiting);
    }

    /// A workflow that is gone.
    pub async fn delete(&self, key: &WorkflowKey) {
        let mut keys = self.keys.lock().await;
        keys.remove_workflow(key.as_str());
        self.measured(&keys);
        drop(keys);
        self.watched.lock().expect("lock").remove(key);
        self.waiting.lock().expect("lock").remove(key);
    }

    /// After a (re-)list: drops the workflows for which `keep` is false (deleted while the watch
    /// was down, so their DELETED never came).
    pub async fn reset(&self, keep: impl Fn(&str) -> bool) {
        let mut keys = self.keys.lock().await;
        keys.retain_workflows(&keep);
        self.measured(&keys);
        drop(keys);
        self.watched
            .lock()
            .expect("lock")
            .retain(|k| keep(k.as_str()));
        self.waiting
            .lock()
            .expect("lock")
            .retain(|k, _| keep(k.as_str()));
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

    /// Per namespace (in name order), how many workflows wait on artgc's finalizer and since
    /// when the oldest has, as of `now`.
    pub fn waiting(&self, now: jiff::Timestamp) -> Vec<FinalizerWait> {
        let waiting = self.waiting.lock().expect("lock");
        let mut by_ns: BTreeMap<&str, (usize, jiff::Timestamp)> = BTreeMap::new();
        for (key, since) in waiting.iter() {
            let e = by_ns.entry(key.namespace()).or_insert((0, *since));
            e.0 += 1;
            e.1 = e.1.min(*since);
        }
        by_ns
            .into_iter()
            .map(|(ns, (workflows, oldest))| FinalizerWait {
                namespace: ns.to_string(),
                workflows,
                oldest_seconds: now.duration_since(oldest).as_secs_f64().max(0.0),
            })
            .collect()
    }

    fn watch(&self, key: &WorkflowKey, waiting: Option<jiff::Timestamp>) {
        let mut watched = self.watched.lock().expect("lock");
        if !watched.contains(key) {
            watched.insert(key.clone());
        }
        drop(watched);
        let mut w = self.waiting.lock().expect("lock");
        match waiting {
            Some(t) => {
                w.insert(key.clone(), t);
            }
            None => {
                w.remove(key);
            }
        }
    }

    fn measured(&self, keys: &KeyIndex) {
        self.keys_indexed.store(keys.len(), Ordering::Relaxed);
        self.run_bytes.store(keys.run_bytes(), Ordering::Relaxed);
        *self.coarse.lock().expect("lock") = keys.coarse_namespaces();
    }

    /// The namespaces whose workflows are held coarser, for the gauges.
    pub fn coarse(&self) -> Vec<NamespaceShare> {
        self.coarse.lock().expect("lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ns: &str, name: &str) -> WorkflowKey {
        WorkflowKey::new(ns, name)
    }

    #[tokio::test]
    async fn reset_drops_only_what_the_relist_did_not_see_from_both_the_keys_and_the_watched_set() {
        let index = WorkflowIndex::default();
        index.apply(&k("ns", "a"), Vec::new(), None).await;
        index.apply_unreadable(&k("ns", "broken"), None);
        index.apply(&k("other", "b"), Vec::new(), None).await;
        assert_eq!(index.size().watched, 3);
        index.reset(|k| k != "ns/a" && k != "ns/broken").await;
        assert_eq!(index.size().watched, 1);
        index.delete(&k("other", "b")).await;
        assert_eq!(index.size().watched, 0);
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    /// The gauges count only workflows still deleting with the finalizer: one released (seen
    /// again without it), deleted or gone at a re-list no longer waits.
    #[tokio::test]
    async fn waiting_counts_deleting_holders_per_namespace_with_the_oldest_age() {
        let index = WorkflowIndex::default();
        let now = at("2026-01-01T01:00:00Z");
        index
            .apply(&k("a", "one"), Vec::new(), Some(at("2026-01-01T00:50:00Z")))
            .await;
        index.apply_unreadable(&k("a", "two"), Some(at("2026-01-01T00:30:00Z")));
        index
            .apply(
                &k("b", "three"),
                Vec::new(),
                Some(at("2026-01-01T00:59:00Z")),
            )
            .await;
        index.apply(&k("b", "running"), Vec::new(), None).await;
        let waits = index.waiting(now);
        assert_eq!(
            waits,
            vec![
                FinalizerWait {
                    namespace: "a".into(),
                    workflows: 2,
                    oldest_seconds: 1800.0
                },
                FinalizerWait {
                    namespace: "b".into(),
                    workflows: 1,
                    oldest_seconds: 60.0
                },
            ]
        );
        index.apply(&k("a", "two"), Vec::new(), None).await;
        index.delete(&k("a", "one")).await;
        index.reset(|k| k != "b/three").await;
        assert!(index.waiting(now).is_empty());
    }
}
