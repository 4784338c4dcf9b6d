//! Weighted round robin without locks: the smooth schedule (nginx's algorithm) is worked
//! out once, then walked with an atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest schedule kept; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug)]
pub struct WeightedRing {
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl WeightedRing {
    /// `weights[i]` is the share of index `i`. Zero weights are never picked; if every
    /// weight is zero, all are treated as equal.
    pub fn new(weights: &[u32]) -> Self {
        let mut weights: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
        if weights.iter().all(|&w| w == 0) {
            weights.iter_mut().for_each(|w| *w = 1);
        }
        let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
        weights.iter_mut().for_each(|w| *w /= g.max(1));
        let total: u64 = weights.iter().sum();
        if total > MAX_SCHEDULE {
            weights
                .iter_mut()
                .filter(|w| **w > 0)
                .for_each(|w| *w = (*w * MAX_SCHEDULE / total).max(1));
        }
        let total: i64 = weights.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best);
        }
        WeightedRing {
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    /// The next index; `0` for an empty ring.
    pub fn next(&self) -> usize {
        if self.schedule.len() <= 1 {
            return self.schedule.first().copied().unwrap_or(0);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.schedule[n % self.schedule.len()]
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ring: &WeightedRing, n: usize, len: usize) -> Vec<usize> {
        let mut c = vec![0; len];
        for _ in 0..n {
            c[ring.next()] += 1;
        }
        c
    }

    #[test]
    fn shares_follow_weights_and_interleave() {
        let ring = WeightedRing::new(&[5, 1, 1]);
        assert_eq!(counts(&ring, 700, 3), vec![500, 100, 100]);
        // Smooth: the heavy index never takes the whole window of 7 in a row.
        let first: Vec<usize> = (0..7).map(|_| ring.next()).collect();
        assert_ne!(first, vec![0; 7]);
    }

    #[test]
    fn zero_weight_is_skipped_and_all_zero_is_equal() {
        assert_eq!(counts(&WeightedRing::new(&[0, 3]), 30, 2), vec![0, 30]);
        assert_eq!(counts(&WeightedRing::new(&[0, 0]), 10, 2), vec![5, 5]);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let ring = WeightedRing::new(&[u32::MAX, u32::MAX / 2]);
        assert!(ring.schedule.len() as u64 <= MAX_SCHEDULE + 2);
        let c = counts(&ring, ring.schedule.len() * 3, 2);
        assert!(c[0] > c[1] && c[1] > 0);
    }
}
