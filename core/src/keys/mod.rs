//! Which S3 keys overlap, and the index of keys that workflows outside one plan still use.
//!
//! An artifact's key reaches the key itself and everything under `key/`; so two keys overlap when
//! their bases (the key without trailing `/`) are equal or one is a `/`-ancestor of the other.
//! `w/dir` and `w/dir2` never overlap.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::location::S3Target;

mod runs;

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
    #[cfg(test)]
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

/// The folder of one of the workflow's pods in `key`, as Argo's default key format
/// `{{workflow.name}}/{{pod.name}}` lays it out (after any prefix): a segment equal to the
/// workflow's name, then a pod name starting with `<name>-`, with the key going on below it.
/// Anything else is indexed as it is: a workflow named `reports` does not own all of `reports/`.
fn own_folder<'k>(key: &'k str, name: &str) -> Option<&'k str> {
    if name.is_empty() {
        return None;
    }
    let mut end = 0;
    let mut segments = key.split('/').peekable();
    while let Some(seg) = segments.next() {
        end += seg.len() + 1;
        if seg == name
            && let Some(pod) = segments.peek()
            && pod.len() > name.len() + 1
            && pod.starts_with(name)
            && pod.as_bytes()[name.len()] == b'-'
        {
            let folder = end + pod.len();
            // Only a folder: the key must go on below it.
            return (key.len() > folder + 1).then(|| &key[..folder]);
        }
    }
    None
}

/// The workflow's own folder in `key` (`.../<name>`, the folder of its pods' folders in Argo's
/// default key format), where the key is under one of its pods' folders (see `own_folder`).
fn workflow_folder<'k>(key: &'k str, name: &str) -> Option<&'k str> {
    let pod = own_folder(key, name)?;
    Some(&pod[..pod.rfind('/')?])
}

/// How coarsely a workflow's key uses are held in the index. Each level keeps at least what
/// the one before kept: an entry for a folder covers every key below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Coarseness {
    /// One entry per pod folder of the workflow, every other key as it is.
    #[default]
    PodFolders,
    /// One entry for the workflow's own folder, every other key as it is.
    WorkflowFolder,
    /// As `WorkflowFolder`, with every other key cut to its parent folder this many times
    /// (never above a key's first segment: never the bucket root).
    Parents(u8),
}

impl Coarseness {
    fn next(self) -> Self {
        match self {
            Self::PodFolders => Self::WorkflowFolder,
            Self::WorkflowFolder => Self::Parents(1),
            Self::Parents(n) => Self::Parents(n.saturating_add(1)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodFolders => "pod_folders",
            Self::WorkflowFolder => "workflow_folder",
            Self::Parents(_) => "parent_folders",
        }
    }
}

/// The base under which `b` (a key without trailing `/`) of workflow `name` is held at `level`.
/// The rule that keeps a namespace's share of the index bounded: coarser only ever covers more.
pub fn coarse_base<'k>(b: &'k str, name: &str, level: Coarseness) -> &'k str {
    match level {
        Coarseness::PodFolders => own_folder(b, name).unwrap_or(b),
        Coarseness::WorkflowFolder => workflow_folder(b, name).unwrap_or(b),
        Coarseness::Parents(n) => match workflow_folder(b, name) {
            Some(f) => f,
            None => {
                let mut out = b;
                for _ in 0..n {
                    match out.rfind('/') {
                        Some(i) if i > 0 => out = &out[..i],
                        _ => break,
                    }
                }
                out
            }
        },
    }
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
    /// A running workflow only reads the key (an input): it will never delete it.
    pub reads: bool,
    /// The shortest base (in bytes of the key) a coarser entry may stand for: the policy's key
    /// prefix the namespace is confined to (0: the whole bucket is the namespace's to reach).
    /// Coarsening never covers more than the namespace itself may reach.
    pub floor: usize,
}

/// One namespace's share of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceShare {
    pub namespace: String,
    pub entries: usize,
    /// Its workflows held coarser than pod folders (the bound was reached).
    pub coarse_workflows: usize,
}

/// A use found in the index: whose it is, and whether that workflow wants it deleted now.
#[derive(Debug, Clone)]
pub struct IndexedUse {
    pub workflow: Arc<str>,
    pub due: bool,
    /// Only reads the key (see [`WorkflowKeyUse::reads`]).
    pub reads: bool,
}

impl IndexedUse {
    /// What a kept artifact names: the workflow and the key base it uses.
    pub fn label(&self, base: &str) -> String {
        format!("{} (key {base})", self.workflow)
    }
}

/// Entries the overlay takes before it is written out as a run.
const OVERLAY_ENTRIES: usize = 4096;
/// The tag's bit for a due use; the rest is the slot.
const DUE: u32 = 1 << 31;
/// The tag's bit for a use that only reads the key (a running workflow's input).
const READ: u32 = 1 << 30;
/// The tag's flag bits; the rest is the slot.
const FLAGS: u32 = DUE | READ;

#[derive(Debug, Default)]
struct Slot {
    /// The workflow, while this slot holds its current uses; `None` once replaced or removed.
    workflow: Option<Arc<str>>,
    /// Entries in the runs and the overlay that carry this slot.
    refs: u32,
    /// Hash of the uses, to skip re-indexing a workflow whose keys did not change (keyed per
    /// process, so no Workflow can be written to collide with another state of itself).
    fingerprint: u64,
    /// The workflow's current entries, counted toward its namespace's bound.
    indexed: u32,
    /// How coarsely they are held.
    level: Coarseness,
}

/// The keys used by workflows outside the plan at hand: the controller keeps one, fed from its
/// watch, so that each workflow's plan sees every other workflow's keys without listing them.
///
/// Built for 100,000s of workflows: entries are `(store, bucket, key base) -> slot` in sorted,
/// front-coded runs (the `runs` module) plus a small overlay of recent ones, merged as runs of
/// equal size meet (each entry is rewritten O(log n) times). Replacing or removing a workflow only
/// retires its slot; its entries are dropped at the next merge that reaches them, and the
/// whole index is rewritten once retired entries outnumber live ones.
#[derive(Debug, Default)]
pub struct KeyIndex {
    runs: Vec<runs::Run>,
    overlay: BTreeMap<Box<[u8]>, Vec<u32>>,
    overlay_entries: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_workflow: HashMap<Arc<str>, u32>,
    live: usize,
    retired: usize,
    hasher: std::hash::RandomState,
    /// Entries one namespace's workflows may hold before a workflow's are held coarser; `None`:
    /// unbounded.
    namespace_bound: Option<usize>,
    /// Per namespace: its workflows' current entries, and how many of them are held coarser
    /// than pod folders.
    per_namespace: HashMap<Arc<str>, (usize, usize)>,
}

/// The sort key of a base: store and bucket, length-prefixed so that no two spell the same
/// bytes, then the base. Every key of a bucket shares the prefix, which front coding absorbs.
fn sort_key(target: &S3Target, base: &str) -> Vec<u8> {
    let (store, bucket) = OverlapIndex::bucket_of(target);
    let mut k = Vec::with_capacity(8 + store.len() + bucket.len() + base.len());
    for part in [store.as_bytes(), bucket.as_bytes()] {
        k.extend_from_slice(&(part.len() as u32).to_be_bytes());
        k.extend_from_slice(part);
    }
    k.extend_from_slice(base.as_bytes());
    k
}

/// A workflow's identity where it is held by key (the controller's queue, the index):
/// its namespace and its name, always both. Its text is `namespace/name`, the index's key.
#[derive(Debug, Clone)]
pub struct WorkflowKey {
    text: Arc<str>,
    slash: usize,
}

impl WorkflowKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            text: format!("{namespace}/{name}").into(),
            slash: namespace.len(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.text[..self.slash]
    }

    pub fn name(&self) -> &str {
        &self.text[self.slash + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

// Compared, hashed and borrowed as its text, so that maps keyed by it answer a `&str`.
impl PartialEq for WorkflowKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for WorkflowKey {}
impl std::hash::Hash for WorkflowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}
impl PartialOrd for WorkflowKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WorkflowKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}
impl std::borrow::Borrow<str> for WorkflowKey {
    fn borrow(&self) -> &str {
        &self.text
    }
}
impl std::fmt::Display for WorkflowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl KeyIndex {
    /// The index key of a workflow.
    pub fn workflow_key(namespace: &str, name: &str) -> String {
        WorkflowKey::new(namespace, name).as_str().to_string()
    }

    /// Replaces what the index holds for one workflow.
    ///
    /// Uses under the workflow's own folder (a key path segment equal to its name, as Argo's
    /// default key format `{{workflow.name}}/{{pod.name}}` makes them) are held as one entry
    /// for that folder, live if any of them is: most keys are there, and a query can only be
    /// more cautious for it. Other keys (fixed keys, another workflow's outputs read as
    /// inputs) are held one by one. A use of a bucket's root is not indexed (see
    /// [`OverlapIndex::insert`]), nor a key longer than S3 allows many times over.
    ///
    /// Where the namespace's bound (see [`KeyIndex::with_namespace_bound`]) would be passed,
    /// the workflow's uses are held coarser, a level at a time ([`Coarseness`]), until they fit
    /// or no level folds more: protection only ever widens.
    pub fn set_workflow(&mut self, workflow: &str, uses: Vec<WorkflowKeyUse>) {
        let (namespace, name) = workflow.rsplit_once('/').unwrap_or(("", workflow));
        let room = self.namespace_bound.map(|bound| {
            let own = self
                .by_workflow
                .get(workflow)
                .map_or(0, |&s| self.slots[s as usize].indexed as usize);
            let others = self.per_namespace.get(namespace).map_or(0, |n| n.0) - own;
            bound.saturating_sub(others).max(1)
        });
        let mut level = Coarseness::default();
        let mut entries = Self::entries(&uses, name, level);
        while let Some(room) = room
            && entries.len() > room
        {
            let next = level.next();
            let coarser = Self::entries(&uses, name, next);
            if coarser == entries && matches!(level, Coarseness::Parents(_)) {
                break;
            }
            level = next;
            entries = coarser;
        }
        drop(uses);
        let fingerprint = std::hash::BuildHasher::hash_one(&self.hasher, &entries);
        if let Some(&slot) = self.by_workflow.get(workflow)
            && self.slots[slot as usize].fingerprint == fingerprint
        {
            return;
        }
        self.remove_workflow(workflow);
        if entries.is_empty() {
            return;
        }
        let wf: Arc<str> = Arc::from(workflow);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1)
                    .ok()
                    .filter(|s| s & FLAGS == 0)
                    .expect("fewer than 2^30 workflows indexed")
            }
        };
        self.slots[slot as usize] = Slot {
            workflow: Some(wf.clone()),
            refs: entries.len() as u32,
            fingerprint,
            indexed: entries.len() as u32,
            level,
        };
        let share = self.per_namespace.entry(Arc::from(namespace)).or_default();
        share.0 += entries.len();
        share.1 += usize::from(level > Coarseness::PodFolders);
        self.live += entries.len();
        self.overlay_entries += entries.len();
        for (k, due, reads) in entries {
            let tag = slot | if due { DUE } else { 0 } | if reads { READ } else { 0 };
            self.overlay
                .entry(k.into_boxed_slice())
                .or_default()
                .push(tag);
        }
        self.by_workflow.insert(wf, slot);
        if self.overlay_entries >= OVERLAY_ENTRIES {
            self.flush();
        }
    }

    pub fn remove_workflow(&mut self, workflow: &str) {
        let Some(slot) = self.by_workflow.remove(workflow) else {
            return;
        };
        let s = &mut self.slots[slot as usize];
        s.workflow = None;
        let namespace = workflow.rsplit_once('/').map_or("", |(ns, _)| ns);
        if let Some(n) = self.per_namespace.get_mut(namespace) {
            n.0 -= s.indexed as usize;
            n.1 -= usize::from(s.level > Coarseness::PodFolders);
            if *n == (0, 0) {
                self.per_namespace.remove(namespace);
            }
        }
        s.indexed = 0;
        s.level = Coarseness::default();
        self.live -= s.refs as usize;
        self.retired += s.refs as usize;
        if s.refs == 0 {
            self.free.push(slot);
        }
        if self.retired > self.live.max(OVERLAY_ENTRIES * 4) {
            self.compact();
        }
    }

    /// An index in which one namespace's workflows hold at most `bound` entries before a
    /// workflow's uses are held coarser (see [`KeyIndex::set_workflow`]).
    pub fn with_namespace_bound(bound: usize) -> Self {
        Self {
            namespace_bound: Some(bound),
            ..Self::default()
        }
    }

    /// The sorted entries for `uses` at `level`: one per base, live if any use of it is, a
    /// read only if all of them are.
    fn entries(
        uses: &[WorkflowKeyUse],
        name: &str,
        level: Coarseness,
    ) -> Vec<(Vec<u8>, bool, bool)> {
        let mut entries: Vec<(Vec<u8>, bool, bool)> = Vec::with_capacity(uses.len());
        for u in uses {
            let b = base(&u.target.key);
            if b.is_empty() {
                continue;
            }
            let mut c = coarse_base(b, name, level);
            if c.len() < u.floor && b.len() >= u.floor {
                c = &b[..u.floor];
            }
            let k = sort_key(&u.target, c);
            if k.len() <= runs::MAX_KEY {
                entries.push((k, u.due, u.reads));
            }
        }
        entries.sort();
        entries.dedup_by(|next, kept| {
            if next.0 == kept.0 {
                kept.1 &= next.1;
                kept.2 &= next.2;
                true
            } else {
                false
            }
        });
        entries
    }

    /// Per namespace (in name order), the entries its workflows hold and how many of its
    /// workflows are held coarser than pod folders: what the index gauges show.
    pub fn namespaces(&self) -> Vec<NamespaceShare> {
        self.shares(|_| true)
    }

    /// The namespaces with workflows held coarser than pod folders (see [`KeyIndex::namespaces`]).
    pub fn coarse_namespaces(&self) -> Vec<NamespaceShare> {
        self.shares(|&(_, coarse)| coarse > 0)
    }

    /// The namespaces whose (entries, coarse workflows) `keep` accepts, in name order; only
    /// those are copied out (the watch asks after every change).
    fn shares(&self, keep: impl Fn(&(usize, usize)) -> bool) -> Vec<NamespaceShare> {
        let mut out: Vec<NamespaceShare> = self
            .per_namespace
            .iter()
            .filter(|(_, n)| keep(n))
            .map(|(ns, &(entries, coarse_workflows))| NamespaceShare {
                namespace: ns.to_string(),
                entries,
                coarse_workflows,
            })
            .collect();
        out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        out
    }

    /// How coarsely a workflow's uses are held, while it is indexed.
    pub fn coarseness(&self, workflow: &str) -> Option<Coarseness> {
        self.by_workflow
            .get(workflow)
            .map(|&s| self.slots[s as usize].level)
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

    /// Key uses indexed (one per base and workflow).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes the index holds in its runs (the bulk of it), for a gauge.
    pub fn run_bytes(&self) -> usize {
        self.runs.iter().map(runs::Run::heap_bytes).sum()
    }

    fn alive(&self, tag: u32) -> bool {
        self.slots[(tag & !FLAGS) as usize].workflow.is_some()
    }

    /// Drops a retired entry: its slot is free once none is left.
    fn drop_entry(slots: &mut [Slot], free: &mut Vec<u32>, retired: &mut usize, tag: u32) {
        let s = &mut slots[(tag & !FLAGS) as usize];
        s.refs -= 1;
        *retired -= 1;
        if s.refs == 0 {
            free.push(tag & !FLAGS);
        }
    }

    /// Writes the overlay out as a run, then merges the newest runs while the older is not
    /// more than twice the newer.
    fn flush(&mut self) {
        if self.overlay.is_empty() {
            return;
        }
        let overlay = std::mem::take(&mut self.overlay);
        self.overlay_entries = 0;
        let Self {
            slots,
            free,
            retired,
            ..
        } = self;
        let mut b = runs::Builder::default();
        for (k, tags) in &overlay {
            for &t in tags {
                if slots[(t & !FLAGS) as usize].workflow.is_some() {
                    b.push(k, t);
                } else {
                    Self::drop_entry(slots, free, retired, t);
                }
            }
        }
        self.runs.push(b.finish());
        while self.runs.len() >= 2 {
            let n = self.runs.len();
            if self.runs[n - 2].len() > 2 * self.runs[n - 1].len() {
                break;
            }
            let newer = self.runs.pop().expect("two runs");
            let older = self.runs.pop().expect("two runs");
            let merged = self.merge(&[&older, &newer]);
            self.runs.push(merged);
        }
    }

    fn merge(&mut self, parts: &[&runs::Run]) -> runs::Run {
        let Self {
            slots,
            free,
            retired,
            ..
        } = self;
        runs::merge(parts, |t| {
            if slots[(t & !FLAGS) as usize].workflow.is_some() {
                true
            } else {
                Self::drop_entry(slots, free, retired, t);
                false
            }
        })
    }

    /// Rewrites every entry into one run, without the retired ones.
    fn compact(&mut self) {
        self.flush();
        let all = std::mem::take(&mut self.runs);
        let refs: Vec<&runs::Run> = all.iter().collect();
        let merged = self.merge(&refs);
        drop(refs);
        drop(all);
        if merged.len() > 0 {
            self.runs.push(merged);
        }
    }

    /// Calls `f` with each live entry at exactly `key`.
    fn each_at(&self, key: &[u8], mut f: impl FnMut(u32)) {
        for run in &self.runs {
            let mut c = run.seek(key);
            while let Some((k, t)) = c.next_entry() {
                if k != key {
                    break;
                }
                if self.alive(t) {
                    f(t);
                }
            }
        }
        if let Some(tags) = self.overlay.get(key) {
            tags.iter().filter(|&&t| self.alive(t)).for_each(|&t| f(t));
        }
    }

    fn use_of(&self, tag: u32) -> IndexedUse {
        IndexedUse {
            workflow: self.slots[(tag & !FLAGS) as usize]
                .workflow
                .clone()
                .expect("alive"),
            due: tag & DUE != 0,
            reads: tag & READ != 0,
        }
    }

    /// The uses at exactly `base` in `target`'s bucket.
    pub fn uses_at(&self, target: &S3Target, base: &str) -> Vec<IndexedUse> {
        let mut out = Vec::new();
        if base.is_empty() {
            return out;
        }
        self.each_at(&sort_key(target, base), |t| out.push(self.use_of(t)));
        out
    }

    /// The key bases overlapping `target`'s (ancestors, the same base, descendants) that hold
    /// a use by a workflow `counts` accepts.
    pub fn overlapping_bases(
        &self,
        target: &S3Target,
        counts: impl Fn(&str) -> bool,
        out: &mut Vec<String>,
    ) {
        let b = base(&target.key);
        if b.is_empty() {
            return;
        }
        let counted = |t: u32| {
            self.slots[(t & !FLAGS) as usize]
                .workflow
                .as_deref()
                .is_some_and(&counts)
        };
        let bucket = sort_key(target, "");
        let mut probe = bucket.clone();
        let ancestors = b.match_indices('/').map(|(i, _)| i).filter(|&i| i > 0);
        for end in ancestors.chain([b.len()]) {
            probe.truncate(bucket.len());
            probe.extend_from_slice(&b.as_bytes()[..end]);
            let mut found = false;
            self.each_at(&probe, |t| found |= counted(t));
            if found {
                out.push(b[..end].to_string());
            }
        }
        // Descendants, from every run and the overlay; a base may be in several.
        let mut lower = bucket.clone();
        lower.extend_from_slice(b.as_bytes());
        lower.push(b'/');
        let mut below: Vec<String> = Vec::new();
        let text = |k: &[u8]| String::from_utf8_lossy(&k[bucket.len()..]).into_owned();
        for run in &self.runs {
            let mut c = run.seek(&lower);
            while let Some((k, t)) = c.next_entry() {
                if !k.starts_with(&lower) {
                    break;
                }
                if counted(t)
                    && below
                        .last()
                        .is_none_or(|l| l.as_bytes() != &k[bucket.len()..])
                {
                    below.push(text(k));
                }
            }
        }
        let range = self
            .overlay
            .range::<[u8], _>((Bound::Included(lower.as_slice()), Bound::Unbounded));
        for (k, tags) in range {
            if !k.starts_with(&lower) {
                break;
            }
            if tags.iter().any(|&t| counted(t)) {
                below.push(text(k));
            }
        }
        below.sort_unstable();
        below.dedup();
        out.extend(below);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_key_is_its_namespace_and_name_and_answers_as_its_text() {
        let k = WorkflowKey::new("team-a", "build-x7");
        assert_eq!((k.namespace(), k.name()), ("team-a", "build-x7"));
        assert_eq!(k.as_str(), "team-a/build-x7");
        assert_eq!(k.as_str(), KeyIndex::workflow_key("team-a", "build-x7"));
        let set: std::collections::HashSet<WorkflowKey> = [k.clone()].into();
        assert!(set.contains("team-a/build-x7"));
        assert_ne!(k, WorkflowKey::new("team", "a/build-x7"));
        // The namespace ends at its own length, not at the first slash of the text.
        let odd = WorkflowKey::new("ns", "a/b");
        assert_eq!((odd.namespace(), odd.name()), ("ns", "a/b"));
    }

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

    /// The coarsening rule, level by level: each level covers what the one before did.
    #[test]
    fn coarser_levels_cover_more_and_never_the_bucket_root() {
        use Coarseness::*;
        // (key base, level, held as)
        let rows = [
            ("wf/wf-1/out.tgz", PodFolders, "wf/wf-1"),
            ("wf/wf-1/out.tgz", WorkflowFolder, "wf"),
            ("a/2026/wf/wf-x/y/z", WorkflowFolder, "a/2026/wf"),
            ("a/2026/wf/wf-x/y/z", Parents(9), "a/2026/wf"),
            ("reports/latest.csv", WorkflowFolder, "reports/latest.csv"),
            ("a/b/c/d.tgz", Parents(1), "a/b/c"),
            ("a/b/c/d.tgz", Parents(2), "a/b"),
            ("a/b/c/d.tgz", Parents(7), "a"),
            ("fixed", Parents(3), "fixed"),
        ];
        for (key, level, want) in rows {
            assert_eq!(coarse_base(key, "wf", level), want, "{key} at {level:?}");
        }
    }

    /// Past its namespace's bound a workflow's uses are held coarser until they fit; other
    /// namespaces keep theirs; a coarser entry still covers every key it stands for.
    #[test]
    fn a_namespace_past_its_bound_is_held_coarser_and_still_covers_its_keys() {
        let mut idx = KeyIndex::with_namespace_bound(4);
        let u = key_use;
        let pods = |wf: &str, n: usize| -> Vec<WorkflowKeyUse> {
            (0..n)
                .map(|i| u(&format!("art/{wf}/{wf}-{i}/out.tgz"), false))
                .collect()
        };
        idx.set_workflow("a/one", pods("one", 3));
        assert_eq!(idx.coarseness("a/one"), Some(Coarseness::PodFolders));
        idx.set_workflow("a/two", pods("two", 3));
        assert_eq!(idx.coarseness("a/two"), Some(Coarseness::WorkflowFolder));
        assert_eq!(bases(&idx, "art/two/two-2/out.tgz"), ["art/two"]);
        idx.set_workflow("b/three", pods("three", 3));
        assert_eq!(idx.coarseness("b/three"), Some(Coarseness::PodFolders));
        // Fixed keys with no workflow folder: cut to parents until they fit.
        let fixed: Vec<WorkflowKeyUse> = (0..10)
            .map(|i| u(&format!("shared/{}/m{i}.bin", i % 2), false))
            .collect();
        idx.set_workflow("a/fixed", fixed);
        assert_eq!(idx.coarseness("a/fixed"), Some(Coarseness::Parents(2)));
        assert_eq!(bases(&idx, "shared/1/m3.bin"), ["shared"]);
        assert_eq!(
            idx.namespaces(),
            [
                NamespaceShare {
                    namespace: "a".into(),
                    entries: 5,
                    coarse_workflows: 2
                },
                NamespaceShare {
                    namespace: "b".into(),
                    entries: 3,
                    coarse_workflows: 0
                },
            ]
        );
        // Room freed: a changed workflow is indexed finely again.
        idx.remove_workflow("a/fixed");
        idx.remove_workflow("a/one");
        idx.set_workflow("a/two", pods("two", 4));
        assert_eq!(idx.coarseness("a/two"), Some(Coarseness::PodFolders));
        assert_eq!(idx.namespaces()[0].entries, 4);
    }

    /// A namespace confined to key prefixes is never held coarser than them: fixed keys cut to
    /// their parents stop at each use's own prefix, so nothing outside what the namespace may
    /// reach is pinned.
    #[test]
    fn coarser_entries_stay_inside_the_namespaces_prefix() {
        let mut idx = KeyIndex::with_namespace_bound(1);
        let confined = |key: &str| WorkflowKeyUse {
            floor: "team/a".len(),
            ..key_use(key, false)
        };
        let uses = ["a", "b"]
            .iter()
            .flat_map(|p| (0..3).map(move |i| format!("team/{p}/x{i}/deep/f.tgz")))
            .map(|k| confined(&k))
            .collect();
        idx.set_workflow("ns/w", uses);
        assert!(idx.coarseness("ns/w") > Some(Coarseness::WorkflowFolder));
        assert_eq!(bases(&idx, "team/a/x0/deep/f.tgz"), ["team/a"]);
        assert!(
            bases(&idx, "team/c/z.tgz").is_empty(),
            "another prefix stays free"
        );
    }

    #[test]
    fn a_pods_folder_is_one_entry_live_if_any_use_is() {
        assert_eq!(own_folder("wf/wf-1/out.tgz", "wf"), Some("wf/wf-1"));
        assert_eq!(
            own_folder("a/2026/wf/wf-x/y/z", "wf"),
            Some("a/2026/wf/wf-x")
        );
        assert_eq!(own_folder("a/2026/wf/x", "wf"), None, "not one of its pods");
        assert_eq!(own_folder("wf/wfx-1/a", "wf"), None);
        assert_eq!(own_folder("wf/wf-/a", "wf"), None);
        assert_eq!(own_folder("wf/wf-1", "wf"), None);
        assert_eq!(own_folder("wf/wf-1/", "wf"), None);
        assert_eq!(own_folder("wfx/wfx-1/a", "wf"), None);
        let mut idx = KeyIndex::default();
        let u = key_use;
        idx.set_workflow(
            "ns/wf",
            vec![
                u("wf/wf-1/a.tgz", true),
                u("wf/wf-1/b.tgz", false),
                u("wf/wf-2/c.tgz", true),
                u("fixed", true),
            ],
        );
        assert_eq!(idx.len(), 3);
        assert_eq!(
            bases(&idx, "wf/wf-1/other"),
            ["wf/wf-1"],
            "the folder covers it"
        );
        let folder = idx.uses_at(&t("x"), "wf/wf-1");
        assert_eq!(folder.len(), 1);
        assert!(!folder[0].due, "live: one of its uses is");
        assert_eq!(folder[0].label("wf/wf-1"), "ns/wf (key wf/wf-1)");
        assert!(bases(&idx, "wfx/a").is_empty());
    }

    /// A workflow named like a top-level folder (`reports`) does not claim other workflows'
    /// keys in it: only its pods' folders are folded.
    #[test]
    fn a_workflow_named_like_a_folder_claims_only_its_pods_folders() {
        let mut idx = KeyIndex::default();
        let u = |k: &str| key_use(k, false);
        idx.set_workflow("ns/reports", vec![u("reports/reports-1/out.tgz")]);
        assert!(bases(&idx, "reports/summary.csv").is_empty());
        assert!(bases(&idx, "reports/team-b-7/out.tgz").is_empty());
        assert_eq!(bases(&idx, "reports/reports-1/x"), ["reports/reports-1"]);
    }

    /// A workflow's use of `key`, due or live, that does more than read it.
    fn key_use(key: &str, due: bool) -> WorkflowKeyUse {
        WorkflowKeyUse {
            target: t(key),
            due,
            label: key.into(),
            reads: false,
            floor: 0,
        }
    }

    fn bases(idx: &KeyIndex, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        idx.overlapping_bases(&t(key), |_| true, &mut out);
        out
    }

    /// Workflows with a use overlapping `key`.
    fn users(idx: &KeyIndex, key: &str) -> Vec<String> {
        let mut out: Vec<String> = bases(idx, key)
            .iter()
            .flat_map(|b| idx.uses_at(&t(key), b))
            .map(|u| u.workflow.to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn key_index_replaces_and_removes_a_workflows_uses() {
        let mut idx = KeyIndex::default();
        let u = |k: &str| key_use(k, false);
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

    /// The index against a plain list of uses, through enough churn to flush, merge and
    /// compact many times: every query answers as the list does.
    #[test]
    fn the_index_answers_as_a_list_would_through_churn() {
        let mut idx = KeyIndex::default();
        let mut truth: HashMap<String, Vec<(String, bool)>> = HashMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..30_000u64 {
            let w = format!("ns/w{}", next(2000));
            if next(10) == 0 {
                idx.remove_workflow(&w);
                truth.remove(&w);
                continue;
            }
            let uses: Vec<(String, bool)> = (0..next(6))
                .map(|_| {
                    let depth = 1 + next(3);
                    let key: Vec<String> = (0..depth).map(|_| format!("d{}", next(12))).collect();
                    (key.join("/"), next(3) == 0)
                })
                .collect();
            idx.set_workflow(
                &w,
                uses.iter()
                    .map(|(k, due)| WorkflowKeyUse {
                        target: t(k),
                        due: *due,
                        label: String::new(),
                        reads: false,
                        floor: 0,
                    })
                    .collect(),
            );
            truth.insert(w, uses);
            if round % 997 != 0 {
                continue;
            }
            for probe in ["d1", "d1/d2", "d3/d3/d3", "d0/d11", "d5/d5"] {
                let mut want: Vec<String> = truth
                    .iter()
                    .flat_map(|(w, uses)| uses.iter().map(move |(k, _)| (w, k)))
                    .filter(|(_, k)| {
                        k.as_str() == probe
                            || probe.starts_with(&format!("{k}/"))
                            || k.starts_with(&format!("{probe}/"))
                    })
                    .map(|(w, _)| w.clone())
                    .collect();
                want.sort();
                want.dedup();
                assert_eq!(users(&idx, probe), want, "round {round} probe {probe}");
            }
            let live: usize = truth
                .values()
                .map(|u| {
                    let mut k: Vec<&String> = u.iter().map(|(k, _)| k).collect();
                    k.sort();
                    k.dedup();
                    k.len()
                })
                .sum();
            assert_eq!(idx.len(), live);
        }
        assert!(idx.runs.len() < 12, "{} runs", idx.runs.len());
        assert!(idx.slots.len() <= 2000 + idx.free.len(), "slots are reused");
    }
}
