//! The one bounded cache artgc keeps between passes: S3 clients, endpoint limits, bucket
//! regions and versioning, ConfigMaps, identities and database pools all live in a [`Cache`].
//!
//! Built on `quick_cache` (a small, well-kept concurrent cache): it bounds the entries kept,
//! evicts the least useful first, and lets one caller at a time make a missing value while the
//! others wait for it. On top of it this type adds what artgc's caches need and nothing more: an
//! age past which an entry is asked again, and entries kept while something still holds them.

use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A bounded map from `K` to `V`, shared between tasks (every method takes `&self`).
pub struct Cache<K, V> {
    items: quick_cache::sync::Cache<
        K,
        Kept<V>,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder,
        Keep<V>,
    >,
    ttl: Option<Duration>,
}

#[derive(Clone)]
struct Kept<V> {
    at: Instant,
    value: V,
}

/// Which entries may not be evicted: those still in use, as `in_use` tells.
struct Keep<V> {
    in_use: fn(&V) -> bool,
}

impl<V> Clone for Keep<V> {
    fn clone(&self) -> Self {
        Self {
            in_use: self.in_use,
        }
    }
}

impl<K, V> quick_cache::Lifecycle<K, Kept<V>> for Keep<V> {
    type RequestState = ();

    fn is_pinned(&self, _key: &K, kept: &Kept<V>) -> bool {
        (self.in_use)(&kept.value)
    }

    fn begin_request(&self) {}
}

impl<K: Eq + Hash + Clone, V: Clone> Cache<K, V> {
    /// Keeps about `capacity` entries, for ever unless evicted.
    pub fn new(capacity: usize) -> Self {
        Self::build(capacity, |_| false)
    }

    /// As [`Cache::new`], but an entry `in_use` says is held elsewhere is never evicted: a
    /// shared limit must stay the one its holders share. Past `capacity` of those, the cache
    /// grows rather than drop one.
    pub fn keeping_in_use(capacity: usize, in_use: fn(&V) -> bool) -> Self {
        Self::build(capacity, in_use)
    }

    fn build(capacity: usize, in_use: fn(&V) -> bool) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: quick_cache::sync::Cache::with(
                capacity,
                capacity as u64,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                Keep { in_use },
            ),
            ttl: None,
        }
    }

    /// An entry older than `ttl` is made again at its next use.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    fn fresh(&self, kept: &Kept<V>) -> bool {
        self.ttl.is_none_or(|ttl| kept.at.elapsed() < ttl)
    }

    /// The value for `key`, if one is kept and not too old.
    pub fn get(&self, key: &K) -> Option<V> {
        let kept = self.items.get(key)?;
        if self.fresh(&kept) {
            Some(kept.value)
        } else {
            self.items.remove(key);
            None
        }
    }

    /// The value for `key`, made by `make` where none is kept.
    pub fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.get(key) {
            return v;
        }
        let made = self
            .items
            .get_or_insert_with(key, || {
                Ok::<_, std::convert::Infallible>(Kept {
                    at: Instant::now(),
                    value: make(),
                })
            })
            .unwrap_or_else(|never| match never {});
        made.value
    }

    /// The value for `key`, made by `make` where none is kept. One caller at a time makes a
    /// key's value; the others wait and take it. An error is not kept: the next caller makes
    /// it again (a store that did not answer now may answer later).
    pub async fn get_or_try_insert<E>(
        &self,
        key: &K,
        make: impl Future<Output = Result<V, E>>,
    ) -> Result<V, E> {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        // On the heap: the makers (an SDK client's build, a request) are big futures, and a
        // miss is rare next to a hit.
        let make = Box::pin(make);
        let made = self
            .items
            .get_or_insert_async(key, async {
                Ok(Kept {
                    at: Instant::now(),
                    value: make.await?,
                })
            })
            .await?;
        Ok(made.value)
    }

    /// Keeps `value` for `key`, in place of what was kept.
    pub fn insert(&self, key: K, value: V) {
        self.items.insert(
            key,
            Kept {
                at: Instant::now(),
                value,
            },
        );
    }

    /// Drops every entry `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        self.items.retain(|k, kept| keep(k, &kept.value));
    }

    /// How many entries are kept now.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn it_keeps_about_its_capacity_however_many_keys_pass() {
        let cache = Cache::new(64);
        for i in 0..10_000 {
            cache.insert(i, i);
        }
        assert!(cache.len() <= 64 + 64 / 4, "kept {}", cache.len());
        assert!(!cache.is_empty());
    }

    #[test]
    fn an_entry_in_use_is_never_evicted() {
        let held = Arc::new(0usize);
        let cache = Cache::keeping_in_use(32, |v: &Arc<usize>| Arc::strong_count(v) > 1);
        // Filled first, so the held entry comes in where new ones are the first to go.
        for i in 0..100 {
            cache.insert(i, Arc::new(i));
        }
        cache.insert(usize::MAX, held.clone());
        for i in 100..5_000 {
            cache.insert(i, Arc::new(i));
        }
        let kept = cache.get(&usize::MAX).expect("the held entry stays");
        assert!(Arc::ptr_eq(&kept, &held));
        assert!(cache.len() <= 32 + 8 + 1, "kept {}", cache.len());
    }

    #[test]
    fn an_old_entry_is_made_again() {
        let cache = Cache::new(8).with_ttl(Duration::from_millis(20));
        assert_eq!(cache.get_or_insert_with(&"k", || 1), 1);
        assert_eq!(cache.get_or_insert_with(&"k", || 2), 1, "fresh: kept");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get(&"k"), None);
        assert_eq!(cache.get_or_insert_with(&"k", || 3), 3, "old: made again");
    }

    #[tokio::test]
    async fn one_caller_makes_a_value_and_an_error_is_not_kept() {
        let cache = Arc::new(Cache::<&str, usize>::new(8));
        let made = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, made, gate) = (cache.clone(), made.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_try_insert(&"k", async {
                        made.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok::<_, ()>(7)
                    })
                    .await
            }));
        }
        while made.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(made.load(Ordering::SeqCst), 1, "made once for 8 callers");

        let failed = cache.get_or_try_insert(&"e", async { Err::<usize, _>("no answer") });
        assert_eq!(failed.await, Err("no answer"));
        let again = cache.get_or_try_insert(&"e", async { Ok::<_, &str>(9) });
        assert_eq!(again.await, Ok(9), "the error was not kept");
    }
}
