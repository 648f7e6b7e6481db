//! The controller's work queue: each key at most once queued and once in flight; a key added
//! while in flight runs again after it; delayed entries (backoff) run when due.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

struct Inner<K> {
    due: BTreeSet<(Instant, u64, K)>,
    at: HashMap<K, (Instant, u64)>,
    running: HashSet<K>,
    again: HashMap<K, Instant>,
    seq: u64,
}

pub struct WorkQueue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash + Ord> Default for WorkQueue<K> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                due: BTreeSet::new(),
                at: HashMap::new(),
                running: HashSet::new(),
                again: HashMap::new(),
                seq: 0,
            }),
            notify: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> WorkQueue<K> {
    /// Queues `key` to run at `when`, or earlier if it is already queued earlier.
    pub fn add(&self, key: K, when: Instant) {
        let mut q = self.inner.lock().expect("lock");
        if q.running.contains(&key) {
            let e = q.again.entry(key).or_insert(when);
            *e = (*e).min(when);
            return;
        }
        Self::insert(&mut q, key, when);
        drop(q);
        self.notify.notify_one();
    }

    fn insert(q: &mut Inner<K>, key: K, when: Instant) {
        if let Some(&(t, s)) = q.at.get(&key) {
            if t <= when {
                return;
            }
            q.due.remove(&(t, s, key.clone()));
        }
        q.seq += 1;
        let s = q.seq;
        q.at.insert(key.clone(), (when, s));
        q.due.insert((when, s, key));
    }

    /// Waits for the next due key and marks it in flight.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            let wait_until = {
                let mut q = self.inner.lock().expect("lock");
                match q.due.first().cloned() {
                    Some((t, s, key)) if t <= Instant::now() => {
                        q.due.remove(&(t, s, key.clone()));
                        q.at.remove(&key);
                        q.running.insert(key.clone());
                        return key;
                    }
                    Some((t, _, _)) => Some(t),
                    None => None,
                }
            };
            match wait_until {
                Some(t) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` done; requeues it at `retry` (backoff) or when it was added meanwhile.
    pub fn done(&self, key: &K, retry: Option<Instant>) {
        let mut q = self.inner.lock().expect("lock");
        q.running.remove(key);
        let again = q.again.remove(key);
        let when = match (again, retry) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        if let Some(when) = when {
            Self::insert(&mut q, key.clone(), when);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Drops a key that no longer exists (it may still be in flight).
    pub fn forget(&self, key: &K) {
        let mut q = self.inner.lock().expect("lock");
        if let Some((t, s)) = q.at.remove(key) {
            q.due.remove(&(t, s, key.clone()));
        }
        q.again.remove(key);
    }

    /// Queued plus in flight.
    pub fn len(&self) -> usize {
        let q = self.inner.lock().expect("lock");
        q.at.len() + q.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_key_runs_once_at_a_time_and_again_after_a_re_add() {
        let q = WorkQueue::default();
        let now = Instant::now();
        q.add("a", now);
        q.add("a", now);
        q.add("b", now + Duration::from_secs(5));
        assert_eq!(q.next().await, "a");
        // Re-added while in flight: not handed out until done.
        q.add("a", now);
        assert_eq!(q.len(), 2);
        let next = tokio::time::timeout(Duration::from_secs(1), q.next()).await;
        assert!(next.is_err(), "a is in flight and b not yet due");
        q.done(&"a", None);
        assert_eq!(q.next().await, "a");
        q.done(&"a", Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(q.next().await, "b", "b is due before a's backoff");
        q.done(&"b", None);
        q.forget(&"a");
        assert!(q.is_empty());
    }
}
