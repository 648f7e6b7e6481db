//! The controller's work queue: each key at most once queued and once in flight; a key added
//! while in flight runs again after it; delayed entries (backoff) run when due. Keys fall into
//! groups (namespaces) of which at most `per_group` run at once, so one tenant's slow passes
//! never hold every worker: a due key of a full group is parked until one of its group is done.
//! The queue also owns each key's count of failed passes in a row, which sets its backoff and
//! the retry budget.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

type Slot<K> = (Instant, u64, K);

struct Inner<K> {
    due: BTreeSet<Slot<K>>,
    /// Queued keys (due or parked) and their place.
    at: HashMap<K, (Instant, u64)>,
    running: HashSet<K>,
    again: HashMap<K, Instant>,
    seq: u64,
    /// Keys in flight per group.
    busy: HashMap<String, usize>,
    /// Due keys of full groups, in due order.
    parked: HashMap<String, BTreeSet<Slot<K>>>,
    /// Failed passes in a row, per key; gone on success or when the key is forgotten.
    failures: HashMap<K, u32>,
}

pub struct WorkQueue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
    group: fn(&K) -> &str,
    per_group: usize,
}

impl<K: Clone + Eq + Hash + Ord> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new(|_| "", usize::MAX)
    }
}

impl<K: Clone + Eq + Hash + Ord> WorkQueue<K> {
    /// A queue running at most `per_group` keys of one `group` at once.
    pub fn new(group: fn(&K) -> &str, per_group: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                due: BTreeSet::new(),
                at: HashMap::new(),
                running: HashSet::new(),
                again: HashMap::new(),
                seq: 0,
                busy: HashMap::new(),
                parked: HashMap::new(),
                failures: HashMap::new(),
            }),
            notify: Notify::new(),
            group,
            per_group: per_group.max(1),
        }
    }

    /// Gives a group's free places back to its earliest parked keys (more is harmless: a key
    /// that finds its group full again is parked again).
    fn refill(&self, q: &mut Inner<K>, g: &str) {
        let free = self
            .per_group
            .saturating_sub(q.busy.get(g).copied().unwrap_or(0));
        let Some(p) = q.parked.get_mut(g) else {
            return;
        };
        for _ in 0..free {
            match p.pop_first() {
                Some(slot) => {
                    q.due.insert(slot);
                }
                None => break,
            }
        }
        if p.is_empty() {
            q.parked.remove(g);
        }
    }

    /// Takes a queued key out of the due set or its group's parked set.
    fn unqueue(&self, q: &mut Inner<K>, key: &K, (t, s): (Instant, u64)) {
        let slot = (t, s, key.clone());
        if q.due.remove(&slot) {
            return;
        }
        let g = (self.group)(key);
        if let Some(p) = q.parked.get_mut(g) {
            p.remove(&slot);
            if p.is_empty() {
                q.parked.remove(g);
            }
        }
    }

    /// Queues `key` to run at `when`, or earlier if it is already queued earlier.
    pub fn add(&self, key: K, when: Instant) {
        let mut q = self.inner.lock().expect("lock");
        if q.running.contains(&key) {
            let e = q.again.entry(key).or_insert(when);
            *e = (*e).min(when);
            return;
        }
        self.insert(&mut q, key, when);
        drop(q);
        self.notify.notify_one();
    }

    fn insert(&self, q: &mut Inner<K>, key: K, when: Instant) {
        if let Some(&(t, s)) = q.at.get(&key) {
            if t <= when {
                return;
            }
            self.unqueue(q, &key, (t, s));
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
                loop {
                    match q.due.first().cloned() {
                        Some((t, s, key)) if t <= Instant::now() => {
                            q.due.remove(&(t, s, key.clone()));
                            let g = (self.group)(&key);
                            let busy = q.busy.get(g).copied().unwrap_or(0);
                            if busy >= self.per_group {
                                // Its group is full: parked until one of the group is done.
                                q.parked
                                    .entry(g.to_string())
                                    .or_default()
                                    .insert((t, s, key));
                                continue;
                            }
                            *q.busy.entry(g.to_string()).or_default() += 1;
                            q.at.remove(&key);
                            q.running.insert(key.clone());
                            return key;
                        }
                        Some((t, _, _)) => break Some(t),
                        None => break None,
                    }
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

    /// Marks `key`'s pass done and succeeded (its failure count starts again); requeues it at
    /// `recheck`, or when it was added meanwhile.
    pub fn done(&self, key: &K, recheck: Option<Instant>) {
        let mut q = self.inner.lock().expect("lock");
        q.failures.remove(key);
        self.finish(q, key, recheck);
    }

    /// Marks `key`'s pass done and failed: counts the failure and requeues it after
    /// `backoff(failures in a row)`. Returns that count and delay.
    pub fn failed(&self, key: &K, backoff: impl FnOnce(u32) -> Duration) -> (u32, Duration) {
        let mut q = self.inner.lock().expect("lock");
        let n = q.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let n = *n;
        let delay = backoff(n);
        self.finish(q, key, Some(Instant::now() + delay));
        (n, delay)
    }

    fn finish(&self, mut q: std::sync::MutexGuard<'_, Inner<K>>, key: &K, retry: Option<Instant>) {
        if q.running.remove(key) {
            let g = (self.group)(key);
            if let Some(b) = q.busy.get_mut(g) {
                *b -= 1;
                if *b == 0 {
                    q.busy.remove(g);
                }
            }
            self.refill(&mut q, g);
        }
        let again = q.again.remove(key);
        let when = match (again, retry) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        if let Some(when) = when {
            self.insert(&mut q, key.clone(), when);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Drops a key that no longer exists (it may still be in flight).
    pub fn forget(&self, key: &K) {
        let mut q = self.inner.lock().expect("lock");
        if let Some(place) = q.at.remove(key) {
            self.unqueue(&mut q, key, place);
            // It may have held the place a parked key of its group was given.
            self.refill(&mut q, (self.group)(key));
        }
        q.again.remove(key);
        q.failures.remove(key);
    }

    /// Queued plus in flight.
    pub fn len(&self) -> usize {
        let q = self.inner.lock().expect("lock");
        q.at.len() + q.running.len()
    }

    #[cfg(test)]
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

    #[tokio::test(start_paused = true)]
    async fn a_full_group_waits_while_others_run() {
        let q: WorkQueue<&str> = WorkQueue::new(|k| &k[..1], 2);
        let now = Instant::now();
        for k in ["s1", "s2", "s3", "s4", "f1", "f2"] {
            q.add(k, now);
        }
        assert_eq!(q.next().await, "s1");
        assert_eq!(q.next().await, "s2");
        // s3 and s4 are due first, but their group is full.
        assert_eq!(q.next().await, "f1");
        assert_eq!(q.next().await, "f2");
        let none = tokio::time::timeout(Duration::from_secs(1), q.next()).await;
        assert!(none.is_err(), "both groups are full");
        assert_eq!(q.len(), 6);
        q.forget(&"s4");
        q.done(&"s1", None);
        assert_eq!(q.next().await, "s3");
        q.done(&"f1", None);
        q.add("f1", now);
        assert_eq!(q.next().await, "f1");
        for k in ["s2", "s3", "f1", "f2"] {
            q.done(&k, None);
        }
        assert!(q.is_empty());
        assert!(q.inner.lock().unwrap().busy.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_key_is_not_stranded_when_the_one_let_in_is_forgotten() {
        let q: WorkQueue<&str> = WorkQueue::new(|k| &k[..1], 1);
        let now = Instant::now();
        for k in ["s1", "s2", "s3"] {
            q.add(k, now);
        }
        assert_eq!(q.next().await, "s1");
        let none = tokio::time::timeout(Duration::from_secs(1), q.next()).await;
        assert!(none.is_err());
        q.done(&"s1", None);
        q.forget(&"s2");
        assert_eq!(q.next().await, "s3");
    }
}
