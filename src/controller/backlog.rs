//! What the watch saw and the indexer has not yet read: the latest change of each workflow,
//! in arrival order. A workflow that changes again before it is read is read once, at its
//! latest state (a big Workflow patched many times costs one read, not one per patch); one
//! workflow is read by one indexer at a time, so its changes apply in order; and the watch
//! waits while the waiting objects' text passes a byte budget, so a burst of big Workflows
//! cannot fill memory.

use artgc_core::keys::WorkflowKey;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::kube_api::WatchedWorkflow;

#[derive(Debug)]
pub enum Change {
    Apply(Box<WatchedWorkflow>),
    /// Changed, and too big to keep waiting: the indexer reads it again from the API server.
    Reread,
    Delete,
}

impl Change {
    /// The indexers that read it: 1 for big Workflows (read again), 0 for the rest.
    pub fn lane(&self) -> usize {
        usize::from(matches!(self, Change::Reread))
    }

    fn bytes(&self) -> usize {
        match self {
            Change::Apply(wf) => wf.raw.get().len(),
            Change::Reread | Change::Delete => 0,
        }
    }
}

#[derive(Default)]
struct Inner {
    latest: HashMap<WorkflowKey, Change>,
    /// Keys in arrival order, per lane. An entry whose key is in flight, has no change left
    /// (discarded, or taken through a later entry) or whose change moved to the other lane is
    /// skipped when reached: each take costs O(1) amortized.
    order: [VecDeque<WorkflowKey>; 2],
    /// Keys being read, with the bytes they hold.
    in_flight: HashMap<WorkflowKey, usize>,
    bytes: usize,
}

pub struct Backlog {
    inner: Mutex<Inner>,
    work: Notify,
    room: Notify,
    budget: usize,
}

impl Backlog {
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::default(),
            work: Notify::new(),
            room: Notify::new(),
            budget: budget.max(1),
        }
    }

    /// Records a workflow's latest change; waits while the backlog is over its budget (one
    /// change bigger than the whole budget goes in alone).
    pub async fn push(&self, key: WorkflowKey, change: Change) {
        let size = change.bytes();
        loop {
            let room = self.room.notified();
            {
                let mut q = self.inner.lock().expect("lock");
                if q.bytes == 0 || q.bytes + size <= self.budget {
                    q.bytes += size;
                    let lane = change.lane();
                    let old = q.latest.insert(key.clone(), change);
                    if let Some(old) = &old {
                        q.bytes -= old.bytes();
                    }
                    let queued = old.is_some_and(|o| o.lane() == lane);
                    if !queued && !q.in_flight.contains_key(&key) {
                        q.order[lane].push_back(key);
                    }
                    drop(q);
                    self.work.notify_waiters();
                    return;
                }
            }
            room.await;
        }
    }

    /// The next workflow whose latest change is in `lane` (see [`Change::lane`]), and that
    /// change; it is in flight until [`Self::done`]. Each lane has its own indexers, so that
    /// slow ones (big Workflows) never hold up the others.
    pub async fn take(&self, lane: usize) -> (WorkflowKey, Change) {
        loop {
            let work = self.work.notified();
            {
                let mut q = self.inner.lock().expect("lock");
                let q = &mut *q;
                while let Some(key) = q.order[lane].pop_front() {
                    let mine = q.latest.get(&key).is_some_and(|c| c.lane() == lane);
                    if !mine || q.in_flight.contains_key(&key) {
                        continue;
                    }
                    let change = q.latest.remove(&key).expect("pending");
                    q.in_flight.insert(key.clone(), change.bytes());
                    return (key, change);
                }
            }
            work.await;
        }
    }

    /// `key` was read; a change that came meanwhile is queued behind the others.
    pub fn done(&self, key: &WorkflowKey) {
        let mut q = self.inner.lock().expect("lock");
        if let Some(bytes) = q.in_flight.remove(key) {
            q.bytes -= bytes;
        }
        if let Some(lane) = q.latest.get(key).map(Change::lane) {
            q.order[lane].push_back(key.clone());
            self.work.notify_waiters();
        }
        drop(q);
        self.room.notify_waiters();
    }

    /// Drops the waiting changes of the workflows `keep` refuses (gone in a re-list).
    pub fn discard(&self, keep: impl Fn(&str) -> bool) {
        let mut q = self.inner.lock().expect("lock");
        let gone: Vec<WorkflowKey> = q
            .latest
            .keys()
            .filter(|k| !keep(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            if let Some(c) = q.latest.remove(&k) {
                q.bytes -= c.bytes();
            }
        }
        drop(q);
        self.room.notify_waiters();
    }

    /// Waits until every change recorded so far has been read.
    pub async fn idle(&self) {
        loop {
            let room = self.room.notified();
            {
                let q = self.inner.lock().expect("lock");
                if q.latest.is_empty() && q.in_flight.is_empty() {
                    return;
                }
            }
            room.await;
        }
    }

    /// Nothing waiting or being read.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        let q = self.inner.lock().expect("lock");
        q.latest.is_empty() && q.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn wf(name: &str, pad: usize) -> Change {
        let text = format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"ns"}},"pad":"{}"}}"#,
            "x".repeat(pad)
        );
        Change::Apply(Box::new(serde_json::from_str(&text).unwrap()))
    }

    fn name(c: &Change) -> String {
        match c {
            Change::Apply(w) => w.metadata.name.clone().unwrap_or_default(),
            Change::Delete => "deleted".into(),
            Change::Reread => "reread".into(),
        }
    }

    fn key(name: &str) -> WorkflowKey {
        WorkflowKey::new("ns", name)
    }

    #[tokio::test]
    async fn changes_coalesce_and_one_workflow_is_read_once_at_a_time() {
        let b = Backlog::new(1 << 20);
        b.push(key("a"), wf("a1", 0)).await;
        b.push(key("b"), wf("b1", 0)).await;
        b.push(key("a"), wf("a2", 0)).await;
        let (k, c) = b.take(0).await;
        assert_eq!(
            (k.as_str(), name(&c).as_str()),
            ("ns/a", "a2"),
            "only the latest"
        );
        // a changes while it is read: not handed out again until done.
        b.push(key("a"), Change::Delete).await;
        let (k, _) = b.take(0).await;
        assert_eq!(k.as_str(), "ns/b");
        let again = tokio::time::timeout(Duration::from_millis(50), b.take(0)).await;
        assert!(again.is_err(), "a is in flight");
        b.done(&key("a"));
        let (k, c) = b.take(0).await;
        assert_eq!((k.as_str(), name(&c).as_str()), ("ns/a", "deleted"));
        b.done(&key("a"));
        b.done(&key("b"));
        assert!(b.is_empty());
        // An indexer takes only what it handles; the rest waits for its own.
        b.push(key("big"), Change::Reread).await;
        b.push(key("small"), wf("small", 0)).await;
        let (k, _) = b.take(0).await;
        assert_eq!(k.as_str(), "ns/small");
        let none = tokio::time::timeout(Duration::from_millis(50), b.take(0)).await;
        assert!(none.is_err());
        let (k, _) = b.take(1).await;
        assert_eq!(k.as_str(), "ns/big");
        // A change that moves to the other lane is read there, once.
        b.push(key("c"), Change::Reread).await;
        b.push(key("c"), wf("c2", 0)).await;
        let (k, c) = b.take(0).await;
        assert_eq!((k.as_str(), name(&c).as_str()), ("ns/c", "c2"));
        let none = tokio::time::timeout(Duration::from_millis(50), b.take(1)).await;
        assert!(none.is_err(), "its old place in the big lane is skipped");
        b.done(&key("c"));
        b.done(&key("small"));
        b.done(&key("big"));
        tokio::time::timeout(Duration::from_millis(50), b.idle())
            .await
            .expect("idle");
    }

    #[tokio::test]
    async fn the_watch_waits_while_the_backlog_is_over_budget() {
        let b = Arc::new(Backlog::new(10_000));
        b.push(key("big"), wf("big", 50_000)).await;
        let pusher = {
            let b = b.clone();
            tokio::spawn(async move { b.push(key("next"), wf("next", 10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pusher.is_finished(), "over budget: the push waits");
        let (k, _) = b.take(0).await;
        assert_eq!(k.as_str(), "ns/big");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pusher.is_finished(), "still held while it is read");
        b.done(&key("big"));
        tokio::time::timeout(Duration::from_secs(1), pusher)
            .await
            .expect("room again")
            .unwrap();
        b.discard(|k| k != "ns/next");
        assert!(b.is_empty());
    }
}
