//! Which S3 keys overlap, and the index of keys that workflows outside one plan still use.
//!
//! An artifact's key reaches the key itself and everything under `key/`; so two keys overlap when
//! their bases (the key without trailing `/`) are equal or one is a `/`-ancestor of the other.
//! `w/dir` and `w/dir2` never overlap.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::location::S3Target;

fn normalize_endpoint(e: &str) -> String {
    let e = e.split_once("://").map_or(e, |(_, rest)| rest);
    e.trim_end_matches('/').to_ascii_lowercase()
}

fn base(key: &str) -> &str {
    key.trim_end_matches('/')
}

/// Ids of uses by bucket and key base.
#[derive(Debug, Default)]
pub struct OverlapIndex {
    buckets: HashMap<(String, String), BTreeMap<Arc<str>, Vec<u32>>>,
}

impl OverlapIndex {
    fn bucket_of(target: &S3Target) -> (String, String) {
        let store = if target.store.is_empty() {
            normalize_endpoint(&target.endpoint)
        } else {
            target.store.clone()
        };
        (store, target.bucket.clone())
    }

    /// Adds a use; returns the shared key text, for callers that keep it. A use of the whole
    /// bucket is not indexed: it would make every key of the bucket "shared" for everyone (a
    /// `Never` artifact at a bucket root pinning other tenants' keys), and artgc never deletes
    /// a bucket root itself.
    pub fn insert(&mut self, target: &S3Target, id: u32) -> Arc<str> {
        let b = base(&target.key);
        if b.is_empty() {
            return Arc::from("");
        }
        let map = self.buckets.entry(Self::bucket_of(target)).or_default();
        if let Some((k, _)) = map.get_key_value(b) {
            let k = k.clone();
            map.get_mut(&*k).expect("present").push(id);
            return k;
        }
        let k: Arc<str> = Arc::from(b);
        map.insert(k.clone(), vec![id]);
        k
    }

    pub fn remove(&mut self, target: &S3Target, id: u32) {
        let bucket = Self::bucket_of(target);
        let Some(map) = self.buckets.get_mut(&bucket) else {
            return;
        };
        let b = base(&target.key);
        if b.is_empty() {
            return;
        }
        if let Some(ids) = map.get_mut(b) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                map.remove(b);
            }
        }
        if map.is_empty() {
            self.buckets.remove(&bucket);
        }
    }

    /// The uses at exactly `base` in `target`'s bucket.
    pub fn uses_at(&self, target: &S3Target, base: &str) -> &[u32] {
        self.buckets
            .get(&Self::bucket_of(target))
            .and_then(|map| map.get(base))
            .map_or(&[], Vec::as_slice)
    }

    /// The key bases (with their uses) that overlap `target`'s, its own included: ancestors,
    /// the same base, descendants.
    pub fn overlapping_bases<'a>(
        &'a self,
        target: &S3Target,
        out: &mut Vec<(&'a Arc<str>, &'a [u32])>,
    ) {
        let Some(map) = self.buckets.get(&Self::bucket_of(target)) else {
            return;
        };
        let b = base(&target.key);
        if b.is_empty() {
            return;
        }
        for (i, _) in b.match_indices('/') {
            if i > 0
                && let Some((k, ids)) = map.get_key_value(&b[..i])
            {
                out.push((k, ids));
            }
        }
        let lower = format!("{b}/");
        if let Some((k, ids)) = map.get_key_value(b) {
            out.push((k, ids));
        }
        let range = map.range::<str, _>((Bound::Included(lower.as_str()), Bound::Unbounded));
        for (k, ids) in range {
            if !k.starts_with(&lower) {
                break;
            }
            out.push((k, ids));
        }
    }

    /// Every use whose key overlaps what `target` may touch.
    pub fn overlapping(&self, target: &S3Target, out: &mut Vec<u32>) {
        let Some(map) = self.buckets.get(&Self::bucket_of(target)) else {
            return;
        };
        let b = base(&target.key);
        if let Some(ids) = map.get(b) {
            out.extend(ids);
        }
        // Ancestors (never the bucket root: see `insert`).
        for (i, _) in b.match_indices('/') {
            if i > 0
                && let Some(ids) = map.get(&b[..i])
            {
                out.extend(ids);
            }
        }
        // Descendants.
        let lower = if b.is_empty() {
            String::new()
        } else {
            format!("{b}/")
        };
        let range = map.range::<str, _>((Bound::Included(lower.as_str()), Bound::Unbounded));
        for (k, ids) in range {
            if !k.starts_with(&lower) {
                break;
            }
            if **k != *b {
                out.extend(ids);
            }
        }
    }
}

/// The workflow's own folder in `key`: the path up to a segment equal to its name.
fn own_folder<'k>(key: &'k str, name: &str) -> Option<&'k str> {
    if name.is_empty() {
        return None;
    }
    let mut end = 0;
    for seg in key.split('/') {
        end += seg.len();
        if seg == name {
            // Only a folder: the key must go on below it.
            return (key.len() > end + 1).then(|| &key[..end]);
        }
        end += 1;
    }
    None
}

/// One key a workflow uses, as the index stores it.
#[derive(Debug, Clone)]
pub struct WorkflowKeyUse {
    pub target: S3Target,
    /// The workflow wants this artifact deleted now (it is due, not kept for its own reasons);
    /// such a use protects nothing unless it is itself kept for another live use.
    pub due: bool,
    /// Names the use, e.g. `ns/wf artifact out (node n1)`.
    pub label: String,
}

#[derive(Debug)]
pub(crate) struct IndexedUse {
    pub(crate) workflow: Arc<str>,
    pub(crate) target: S3Target,
    pub(crate) due: bool,
    pub(crate) label: Box<str>,
}

/// The keys used by workflows outside the plan at hand: the controller keeps one, fed from its
/// watch, so that each workflow's plan sees every other workflow's keys without listing them.
#[derive(Debug, Default)]
pub struct KeyIndex {
    overlap: OverlapIndex,
    uses: Vec<Option<IndexedUse>>,
    free: Vec<u32>,
    by_workflow: HashMap<Arc<str>, Vec<u32>>,
}

impl KeyIndex {
    /// The index key of a workflow.
    pub fn workflow_key(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    /// Replaces what the index holds for one workflow.
    ///
    /// Uses under the workflow's own folder (a key path segment equal to its name, as Argo's
    /// default key format `{{workflow.name}}/{{pod.name}}` makes them) are held as one entry
    /// for that folder, live if any of them is: most keys are there, and a query can only be
    /// more cautious for it. Other keys (fixed keys, another workflow's outputs read as
    /// inputs) are held one by one.
    pub fn set_workflow(&mut self, workflow: &str, uses: Vec<WorkflowKeyUse>) {
        self.remove_workflow(workflow);
        if uses.is_empty() {
            return;
        }
        let name = workflow.rsplit_once('/').map_or(workflow, |(_, n)| n);
        let mut folders: Vec<(S3Target, bool, usize)> = Vec::new();
        let mut single = Vec::new();
        for u in uses {
            match own_folder(&u.target.key, name) {
                Some(folder) => {
                    let target = S3Target {
                        key: format!("{folder}/"),
                        ..u.target
                    };
                    match folders.iter_mut().find(|(t, _, _)| *t == target) {
                        Some((_, due, n)) => {
                            *due &= u.due;
                            *n += 1;
                        }
                        None => folders.push((target, u.due, 1)),
                    }
                }
                None => single.push(u),
            }
        }
        let uses: Vec<WorkflowKeyUse> = folders
            .into_iter()
            .map(|(target, due, n)| WorkflowKeyUse {
                label: format!("{workflow} ({n} artifact(s) under {})", target.key),
                target,
                due,
            })
            .chain(single)
            .collect();
        let wf: Arc<str> = Arc::from(workflow);
        let mut ids = Vec::with_capacity(uses.len());
        for u in uses {
            let id = match self.free.pop() {
                Some(id) => id,
                None => {
                    self.uses.push(None);
                    (self.uses.len() - 1) as u32
                }
            };
            self.overlap.insert(&u.target, id);
            self.uses[id as usize] = Some(IndexedUse {
                workflow: wf.clone(),
                target: u.target,
                due: u.due,
                label: u.label.into_boxed_str(),
            });
            ids.push(id);
        }
        self.by_workflow.insert(wf, ids);
    }

    pub fn remove_workflow(&mut self, workflow: &str) {
        let Some(ids) = self.by_workflow.remove(workflow) else {
            return;
        };
        for id in ids {
            if let Some(u) = self.uses[id as usize].take() {
                self.overlap.remove(&u.target, id);
                self.free.push(id);
            }
        }
    }

    /// Keeps only the workflows for which `keep` says yes.
    pub fn retain_workflows(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<Arc<str>> = self
            .by_workflow
            .keys()
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_workflow(&k);
        }
    }

    /// Key uses indexed.
    pub fn len(&self) -> usize {
        self.uses.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn overlapping(&self, target: &S3Target, out: &mut Vec<u32>) {
        self.overlap.overlapping(target, out);
    }

    pub(crate) fn overlap(&self) -> &OverlapIndex {
        &self.overlap
    }

    pub(crate) fn get(&self, id: u32) -> Option<&IndexedUse> {
        self.uses.get(id as usize)?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: &str) -> S3Target {
        S3Target {
            endpoint: "http://Minio:9000/".into(),
            bucket: "b".into(),
            key: key.into(),
            store: String::new(),
        }
    }

    fn hits(idx: &OverlapIndex, key: &str) -> Vec<u32> {
        let mut out = Vec::new();
        idx.overlapping(&t(key), &mut out);
        out.sort();
        out
    }

    #[test]
    fn overlap_is_equal_base_or_ancestor_at_a_slash() {
        let mut idx = OverlapIndex::default();
        for (i, k) in ["w/dir", "w/dir2/", "w/dir/f.txt", "w/other.tgz", "x/"]
            .iter()
            .enumerate()
        {
            idx.insert(&t(k), i as u32);
        }
        assert_eq!(hits(&idx, "w/dir/"), vec![0, 2]);
        assert_eq!(hits(&idx, "w/dir"), vec![0, 2]);
        assert_eq!(hits(&idx, "w/dir2"), vec![1]);
        assert_eq!(hits(&idx, "w/"), vec![0, 1, 2, 3]);
        assert_eq!(hits(&idx, "w/dir/f.txt/"), vec![0, 2]);
        assert_eq!(hits(&idx, "x/y"), vec![4]);
        assert_eq!(hits(&idx, "w/d"), Vec::<u32>::new());
        idx.remove(&t("w/dir"), 0);
        assert_eq!(hits(&idx, "w/dir"), vec![2]);
        let mut other = Vec::new();
        let mut elsewhere = t("w/dir");
        elsewhere.bucket = "c".into();
        idx.overlapping(&elsewhere, &mut other);
        assert!(other.is_empty());
    }

    #[test]
    fn a_workflows_own_folder_is_one_entry_live_if_any_use_is() {
        assert_eq!(own_folder("wf/wf-1/out.tgz", "wf"), Some("wf"));
        assert_eq!(own_folder("a/2026/wf/x", "wf"), Some("a/2026/wf"));
        assert_eq!(own_folder("wf", "wf"), None);
        assert_eq!(own_folder("wf/", "wf"), None);
        assert_eq!(own_folder("wfx/a", "wf"), None);
        let mut idx = KeyIndex::default();
        let u = |k: &str, due: bool| WorkflowKeyUse {
            target: t(k),
            due,
            label: k.into(),
        };
        idx.set_workflow(
            "ns/wf",
            vec![
                u("wf/wf-1/a.tgz", true),
                u("wf/wf-2/b.tgz", false),
                u("fixed", true),
            ],
        );
        assert_eq!(idx.len(), 2);
        let mut ids = Vec::new();
        idx.overlapping(&t("wf/wf-9/other"), &mut ids);
        assert_eq!(ids.len(), 1, "the folder entry covers the whole folder");
        let folder = idx.get(ids[0]).unwrap();
        assert!(!folder.due, "live: one of its uses is");
        assert!(folder.label.contains("ns/wf (2 artifact(s) under wf/)"));
        ids.clear();
        idx.overlapping(&t("wfx/a"), &mut ids);
        assert!(ids.is_empty());
    }

    /// Workflows with a use overlapping `key`.
    fn users(idx: &KeyIndex, key: &str) -> Vec<String> {
        let mut ids = Vec::new();
        idx.overlapping(&t(key), &mut ids);
        let mut out: Vec<String> = ids
            .into_iter()
            .filter_map(|i| idx.get(i).map(|u| u.workflow.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn key_index_replaces_and_removes_a_workflows_uses() {
        let mut idx = KeyIndex::default();
        let u = |k: &str| WorkflowKeyUse {
            target: t(k),
            due: false,
            label: k.into(),
        };
        idx.set_workflow("ns/a", vec![u("a/1"), u("shared")]);
        idx.set_workflow("ns/b", vec![u("shared/x")]);
        assert_eq!(users(&idx, "shared"), vec!["ns/a", "ns/b"]);
        idx.set_workflow("ns/a", vec![u("a/2")]);
        assert_eq!(users(&idx, "shared"), vec!["ns/b"]);
        assert_eq!(idx.len(), 2);
        idx.remove_workflow("ns/b");
        idx.remove_workflow("ns/a");
        assert!(idx.is_empty());
        assert!(idx.by_workflow.is_empty());
    }
}
