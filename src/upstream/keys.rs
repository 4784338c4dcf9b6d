//! An endpoint's provider credentials, used in turn: the current key serves until the
//! upstream refuses it (401/403) or rate-limits it (429); it then cools down and the next
//! one takes over.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Secret;

use super::clock;

#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Secret>,
    current: AtomicUsize,
    /// Per key: the clock value (ms) until which it is not used.
    resting_until: Vec<AtomicU64>,
}

impl KeyRing {
    pub fn new(keys: Vec<Secret>) -> Self {
        let resting_until = keys.iter().map(|_| AtomicU64::new(0)).collect();
        KeyRing {
            keys,
            current: AtomicUsize::new(0),
            resting_until,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key to use now: the current one unless it rests, else the next that does not;
    /// if all rest, the one that is back first. `None` when the endpoint has no key.
    pub fn pick(&self) -> Option<(usize, &Secret)> {
        let n = self.keys.len();
        if n == 0 {
            return None;
        }
        let now = clock::now_ms();
        let start = self.current.load(Ordering::Relaxed) % n;
        let idx = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.resting_until[i].load(Ordering::Relaxed) <= now)
            .unwrap_or_else(|| {
                (0..n)
                    .min_by_key(|&i| self.resting_until[i].load(Ordering::Relaxed))
                    .unwrap_or(0)
            });
        Some((idx, &self.keys[idx]))
    }

    /// Key `idx` was refused or rate-limited: it rests for `rest` and the next key
    /// becomes current.
    pub fn rest(&self, idx: usize, rest: Duration) {
        let n = self.keys.len();
        if idx >= n {
            return;
        }
        let until = clock::now_ms() + rest.as_millis() as u64;
        self.resting_until[idx].fetch_max(until, Ordering::Relaxed);
        let _ =
            self.current
                .compare_exchange(idx, (idx + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether a key other than `idx` is available now.
    pub fn has_other_than(&self, idx: usize) -> bool {
        let now = clock::now_ms();
        (0..self.keys.len())
            .any(|i| i != idx && self.resting_until[i].load(Ordering::Relaxed) <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: usize) -> KeyRing {
        KeyRing::new((0..n).map(|i| Secret::new(format!("k{i}"))).collect())
    }

    #[test]
    fn no_keys_gives_none() {
        assert!(ring(0).pick().is_none());
    }

    #[test]
    fn current_key_serves_until_it_rests() {
        let r = ring(3);
        assert_eq!(r.pick().unwrap().0, 0);
        assert_eq!(r.pick().unwrap().0, 0);
        r.rest(0, Duration::from_secs(60));
        assert_eq!(r.pick().unwrap().0, 1);
        assert!(r.has_other_than(1));
        r.rest(1, Duration::from_secs(60));
        assert_eq!(r.pick().unwrap().0, 2);
        assert!(!r.has_other_than(2));
    }

    #[test]
    fn when_all_rest_the_first_back_is_used() {
        let r = ring(2);
        r.rest(0, Duration::from_secs(30));
        r.rest(1, Duration::from_secs(60));
        assert_eq!(r.pick().unwrap().0, 0);
    }

    #[test]
    fn a_rested_key_comes_back() {
        let r = ring(2);
        r.rest(0, Duration::ZERO);
        assert_eq!(r.pick().unwrap().0, 1);
        r.rest(1, Duration::from_secs(60));
        assert_eq!(r.pick().unwrap().0, 0);
    }
}
