//! The in-process [`Store`]: counters and leases in one map behind one mutex.
//!
//! This is the default backend, for a gateway that runs alone (or whose limits are per
//! instance). It follows the [`Store`] contract exactly: an acquire checks and charges
//! every counter under one lock, so it is all or nothing and atomic with respect to every
//! other call. The lock is a `std::sync::Mutex` held only for the check-and-add, never
//! across an `.await` (no method awaits anything).
//!
//! Time is wall-clock Unix milliseconds from a [`Clock`], so that tests can move it. A
//! counter is forgotten once its `expires_at_ms` has passed: lazily when it is next
//! touched, and by a sweep of the whole map at most every [`SWEEP_EVERY_MS`], so memory
//! stays bounded by the counters of live windows.

use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::store::{Acquire, Acquired, Adjust, Release, Store, StoreError};

/// Counter names are hashed on every request: with foldhash (seeded per process), a
/// fraction of the default SipHash's cost.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// How often, at most, the whole map is swept of expired counters and leases.
pub const SWEEP_EVERY_MS: u64 = 10_000;

/// Wall-clock time, as Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The in-process backend of [`Store`].
pub struct LocalStore {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    counts: HashMap<String, Count>,
    /// Lease counters: lease id → when that lease ends (Unix ms).
    leases: HashMap<String, HashMap<String, u64>>,
    next_sweep_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    value: u64,
    expires_at_ms: Option<u64>,
}

impl Count {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

// === impl LocalStore ===

impl LocalStore {
    /// On the system's wall clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        LocalStore {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// How many counters and lease counters are held, expired ones not yet swept
    /// included: for tests and metrics.
    pub fn len(&self) -> usize {
        let state = self.lock(self.clock.now_ms());
        state.counts.len() + state.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state, swept first if a sweep is due at `now` (read by the caller, which needs
    /// it too: a clock read per call, not two).
    fn lock(&self, now: u64) -> MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave a half-applied acquire (the
        // check is done before anything is written), so the state is still sound.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now >= state.next_sweep_ms {
            state.sweep(now);
            state.next_sweep_ms = now.saturating_add(SWEEP_EVERY_MS);
        }
        state
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("entries", &self.len())
            .finish()
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn acquire(&self, items: &[Acquire]) -> Result<Acquired, StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock(now);
        Ok(state.acquire(items, now))
    }

    async fn adjust(&self, adjust: &[Adjust], release: &[Release]) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock(now);
        state.adjust(adjust, release, now);
        Ok(())
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock(now);
        Ok(keys.iter().map(|k| state.value(k, now)).collect())
    }

    fn backend(&self) -> &'static str {
        "local"
    }
}

// === impl State ===

impl State {
    fn sweep(&mut self, now: u64) {
        self.counts.retain(|_, c| c.live(now));
        self.leases.retain(|_, holders| {
            holders.retain(|_, ends| *ends > now);
            !holders.is_empty()
        });
    }

    /// A counter's live value, forgetting it if it has expired.
    fn count(&mut self, key: &str, now: u64) -> u64 {
        match self.counts.get(key) {
            Some(c) if c.live(now) => c.value,
            Some(_) => {
                self.counts.remove(key);
                0
            }
            None => 0,
        }
    }

    /// The live leases of a lease counter, forgetting those that have ended.
    fn live_leases(&mut self, key: &str, now: u64) -> Option<&mut HashMap<String, u64>> {
        let holders = self.leases.get_mut(key)?;
        holders.retain(|_, ends| *ends > now);
        if holders.is_empty() {
            self.leases.remove(key);
            return None;
        }
        self.leases.get_mut(key)
    }

    fn value(&mut self, key: &str, now: u64) -> u64 {
        if let Some(holders) = self.live_leases(key, now) {
            return holders.len() as u64;
        }
        self.count(key, now)
    }

    fn acquire(&mut self, items: &[Acquire], now: u64) -> Acquired {
        // Check everything first, writing nothing: what this call itself adds is counted
        // too, in case two items name the same counter (a request has a handful).
        let mut pending: Vec<(&str, u64)> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let (current, add) = match &item.lease {
                Some(lease) => {
                    let holders = self.live_leases(&item.key, now);
                    let held = holders.as_ref().is_some_and(|h| h.contains_key(&lease.id));
                    let live = holders.map_or(0, |h| h.len() as u64);
                    // Acquiring a lease already held renews it; it takes no new slot.
                    (live, u64::from(!held))
                }
                None => (self.count(&item.key, now), item.amount),
            };
            let earlier = pending.iter_mut().find(|(key, _)| *key == item.key);
            let already = earlier.as_ref().map_or(0, |(_, added)| *added);
            let after = current.saturating_add(already).saturating_add(add);
            if after > item.limit {
                return Acquired::Refused { index, current };
            }
            match earlier {
                Some((_, added)) => *added = added.saturating_add(add),
                None => pending.push((&item.key, add)),
            }
        }
        // Everything fits: charge.
        let values = items
            .iter()
            .map(|item| match &item.lease {
                Some(lease) => {
                    let ends = now.saturating_add(lease.ttl_ms);
                    let holders = match self.leases.get_mut(&item.key) {
                        Some(holders) => holders,
                        None => self.leases.entry(item.key.clone()).or_default(),
                    };
                    holders.insert(lease.id.clone(), ends);
                    holders.len() as u64
                }
                None => {
                    // The check above dropped an expired counter, so one found is live.
                    let count = match self.counts.get_mut(&item.key) {
                        Some(count) => count,
                        None => self.counts.entry(item.key.clone()).or_insert(Count {
                            value: 0,
                            expires_at_ms: item.expires_at_ms,
                        }),
                    };
                    count.value = count.value.saturating_add(item.amount);
                    count.value
                }
            })
            .collect();
        Acquired::Granted(values)
    }

    fn adjust(&mut self, adjust: &[Adjust], release: &[Release], now: u64) {
        for a in adjust {
            // Forget an expired counter first, so that it counts as missing below.
            self.count(&a.key, now);
            match self.counts.entry(a.key.clone()) {
                Entry::Occupied(mut e) => {
                    let c = e.get_mut();
                    c.value = if a.delta >= 0 {
                        c.value.saturating_add(a.delta.unsigned_abs())
                    } else {
                        c.value.saturating_sub(a.delta.unsigned_abs())
                    };
                }
                Entry::Vacant(e) => {
                    // Only a positive correction creates a counter (and only one that is
                    // not already over).
                    let live = a.expires_at_ms.is_none_or(|at| at > now);
                    if a.delta > 0 && live {
                        e.insert(Count {
                            value: a.delta.unsigned_abs(),
                            expires_at_ms: a.expires_at_ms,
                        });
                    }
                }
            }
        }
        for r in release {
            if let Some(holders) = self.leases.get_mut(&r.key) {
                holders.remove(&r.lease_id);
                if holders.is_empty() {
                    self.leases.remove(&r.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Lease;

    const T0: u64 = 1_700_000_000_000;

    fn store() -> (Arc<ManualClock>, LocalStore) {
        let clock = Arc::new(ManualClock::new(T0));
        let store = LocalStore::with_clock(clock.clone());
        (clock, store)
    }

    fn count(key: &str, amount: u64, limit: u64, expires_at_ms: Option<u64>) -> Acquire {
        Acquire {
            key: key.to_owned(),
            amount,
            limit,
            expires_at_ms,
            lease: None,
        }
    }

    fn lease(key: &str, id: &str, limit: u64, ttl_ms: u64) -> Acquire {
        Acquire {
            key: key.to_owned(),
            amount: 1,
            limit,
            expires_at_ms: None,
            lease: Some(Lease {
                id: id.to_owned(),
                ttl_ms,
            }),
        }
    }

    fn adjust(key: &str, delta: i64, expires_at_ms: Option<u64>) -> Adjust {
        Adjust {
            key: key.to_owned(),
            delta,
            expires_at_ms,
        }
    }

    async fn get(store: &LocalStore, key: &str) -> u64 {
        store.get(&[key.to_owned()]).await.unwrap()[0]
    }

    #[tokio::test]
    async fn acquire_charges_up_to_the_limit_and_no_further() {
        let (_, s) = store();
        let a = [count("c", 2, 5, None)];
        assert_eq!(s.acquire(&a).await.unwrap(), Acquired::Granted(vec![2]));
        assert_eq!(s.acquire(&a).await.unwrap(), Acquired::Granted(vec![4]));
        assert_eq!(
            s.acquire(&a).await.unwrap(),
            Acquired::Refused {
                index: 0,
                current: 4
            }
        );
        assert_eq!(
            s.acquire(&[count("c", 1, 5, None)]).await.unwrap(),
            Acquired::Granted(vec![5])
        );
        assert_eq!(get(&s, "c").await, 5);
        assert_eq!(get(&s, "missing").await, 0);
    }

    #[tokio::test]
    async fn a_refused_acquire_charges_nothing() {
        let (_, s) = store();
        s.acquire(&[count("b", 3, 3, None)]).await.unwrap();
        let items = [
            count("a", 1, 10, None),
            lease("l", "r1", 5, 1000),
            count("b", 1, 3, None),
        ];
        assert_eq!(
            s.acquire(&items).await.unwrap(),
            Acquired::Refused {
                index: 2,
                current: 3
            }
        );
        assert_eq!(get(&s, "a").await, 0);
        assert_eq!(get(&s, "l").await, 0);
        assert_eq!(get(&s, "b").await, 3);
    }

    #[tokio::test]
    async fn the_same_counter_twice_in_one_acquire_counts_both() {
        let (_, s) = store();
        let items = [count("a", 2, 3, None), count("a", 2, 3, None)];
        assert_eq!(
            s.acquire(&items).await.unwrap(),
            Acquired::Refused {
                index: 1,
                current: 0
            }
        );
        let items = [count("a", 1, 3, None), count("a", 2, 3, None)];
        assert_eq!(
            s.acquire(&items).await.unwrap(),
            Acquired::Granted(vec![1, 3])
        );
    }

    #[tokio::test]
    async fn counters_expire_at_their_time() {
        let (clock, s) = store();
        let a = [count("w", 1, 1, Some(T0 + 60_000))];
        assert!(matches!(s.acquire(&a).await.unwrap(), Acquired::Granted(_)));
        clock.set(T0 + 59_999);
        assert!(matches!(
            s.acquire(&a).await.unwrap(),
            Acquired::Refused { .. }
        ));
        assert_eq!(get(&s, "w").await, 1);
        clock.set(T0 + 60_000);
        assert_eq!(get(&s, "w").await, 0);
        // A new counter after expiry takes the expiry it is given now.
        let b = [count("w", 1, 1, Some(T0 + 120_000))];
        assert_eq!(s.acquire(&b).await.unwrap(), Acquired::Granted(vec![1]));
        clock.set(T0 + 119_999);
        assert_eq!(get(&s, "w").await, 1);
    }

    #[tokio::test]
    async fn counters_without_expiry_are_kept() {
        let (clock, s) = store();
        s.acquire(&[count("life", 7, 100, None)]).await.unwrap();
        clock.advance(365 * 24 * 3_600_000);
        assert_eq!(get(&s, "life").await, 7);
    }

    #[tokio::test]
    async fn the_sweep_forgets_expired_counters_untouched_since() {
        let (clock, s) = store();
        for i in 0..100 {
            let key = format!("k{i}");
            s.acquire(&[count(&key, 1, 1, Some(T0 + 1000))])
                .await
                .unwrap();
            s.acquire(&[lease(&format!("l{i}"), "r", 1, 1000)])
                .await
                .unwrap();
        }
        s.acquire(&[count("keep", 1, 1, None)]).await.unwrap();
        assert_eq!(s.len(), 201);
        clock.advance(SWEEP_EVERY_MS);
        get(&s, "keep").await;
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn leases_count_holders_and_end_at_release() {
        let (_, s) = store();
        for id in ["r1", "r2", "r3"] {
            assert!(matches!(
                s.acquire(&[lease("conc", id, 3, 60_000)]).await.unwrap(),
                Acquired::Granted(_)
            ));
        }
        assert_eq!(
            s.acquire(&[lease("conc", "r4", 3, 60_000)]).await.unwrap(),
            Acquired::Refused {
                index: 0,
                current: 3
            }
        );
        // Renewing a lease already held takes no new slot.
        assert_eq!(
            s.acquire(&[lease("conc", "r2", 3, 60_000)]).await.unwrap(),
            Acquired::Granted(vec![3])
        );
        s.adjust(
            &[],
            &[Release {
                key: "conc".to_owned(),
                lease_id: "r1".to_owned(),
            }],
        )
        .await
        .unwrap();
        assert_eq!(get(&s, "conc").await, 2);
        assert_eq!(
            s.acquire(&[lease("conc", "r4", 3, 60_000)]).await.unwrap(),
            Acquired::Granted(vec![3])
        );
        // Releasing twice, or what was never held, changes nothing.
        let again = Release {
            key: "conc".to_owned(),
            lease_id: "r1".to_owned(),
        };
        s.adjust(&[], &[again]).await.unwrap();
        assert_eq!(get(&s, "conc").await, 3);
    }

    #[tokio::test]
    async fn leases_end_after_their_ttl() {
        let (clock, s) = store();
        s.acquire(&[lease("conc", "old", 1, 1_000)]).await.unwrap();
        clock.advance(999);
        assert!(matches!(
            s.acquire(&[lease("conc", "new", 1, 1_000)]).await.unwrap(),
            Acquired::Refused { .. }
        ));
        clock.advance(1);
        assert_eq!(get(&s, "conc").await, 0);
        assert_eq!(
            s.acquire(&[lease("conc", "new", 1, 1_000)]).await.unwrap(),
            Acquired::Granted(vec![1])
        );
    }

    #[tokio::test]
    async fn adjust_adds_and_never_goes_below_zero() {
        let (_, s) = store();
        s.acquire(&[count("t", 100, 1000, None)]).await.unwrap();
        s.adjust(&[adjust("t", -30, None)], &[]).await.unwrap();
        assert_eq!(get(&s, "t").await, 70);
        s.adjust(&[adjust("t", 2000, None)], &[]).await.unwrap();
        assert_eq!(get(&s, "t").await, 2070, "an adjust is never refused");
        s.adjust(&[adjust("t", -5000, None)], &[]).await.unwrap();
        assert_eq!(get(&s, "t").await, 0);
    }

    #[tokio::test]
    async fn adjust_does_not_resurrect_an_expired_counter_with_a_negative_delta() {
        let (clock, s) = store();
        let at = Some(T0 + 1000);
        s.acquire(&[count("t", 100, 1000, at)]).await.unwrap();
        clock.advance(1000);
        s.adjust(&[adjust("t", -40, at)], &[]).await.unwrap();
        assert_eq!(get(&s, "t").await, 0);
        assert_eq!(s.len(), 0);
        s.adjust(&[adjust("never", -1, None)], &[]).await.unwrap();
        assert_eq!(s.len(), 0);
    }

    #[tokio::test]
    async fn a_positive_adjust_creates_a_missing_counter_with_its_expiry() {
        let (clock, s) = store();
        s.adjust(&[adjust("t", 25, Some(T0 + 1000))], &[])
            .await
            .unwrap();
        assert_eq!(get(&s, "t").await, 25);
        clock.advance(1000);
        assert_eq!(get(&s, "t").await, 0);
        // Nor is one created that would already be over.
        s.adjust(&[adjust("t", 25, Some(T0 + 1000))], &[])
            .await
            .unwrap();
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn concurrent_acquires_from_many_threads_grant_exactly_the_limit() {
        const LIMIT: u64 = 1000;
        let s = Arc::new(LocalStore::new());
        let granted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                let granted = granted.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        for i in 0..500 {
                            let items = [
                                count("shared", 1, LIMIT, None),
                                count(&format!("own{t}"), 1, u64::MAX, None),
                                lease("conc", &format!("{t}-{i}"), u64::MAX, 60_000),
                            ];
                            if let Acquired::Granted(_) = s.acquire(&items).await.unwrap() {
                                granted.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(granted.load(Ordering::SeqCst), LIMIT);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let keys: Vec<String> = std::iter::once("shared".to_owned())
            .chain((0..8).map(|t| format!("own{t}")))
            .chain(std::iter::once("conc".to_owned()))
            .collect();
        let values = rt.block_on(s.get(&keys)).unwrap();
        assert_eq!(values[0], LIMIT);
        assert_eq!(values[1..9].iter().sum::<u64>(), LIMIT, "all or nothing");
        assert_eq!(values[9], LIMIT);
    }
}
