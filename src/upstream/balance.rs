//! Endpoint selection within a pool, by the pool's strategy.
//!
//! STUB: weighted round robin only.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::PoolSpec;
use crate::weighted::WeightedRing;

use super::Endpoint;

/// What a request offers the strategies to decide on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hints {
    /// Hash of the session key (`consistent_hash`).
    pub session: Option<u64>,
    /// Hash of the prompt's leading bytes (`load_aware` prefix affinity).
    pub prefix: Option<u64>,
}

/// Live traffic figures of one endpoint, kept by the request path.
#[derive(Debug, Default)]
pub struct Traffic {
    pub in_flight: AtomicU32,
    /// Smoothed time to the response header, in microseconds (0: no sample yet).
    latency_us: AtomicU64,
}

impl Traffic {
    pub fn record_latency(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[derive(Debug)]
pub struct Balancer {
    ring: WeightedRing,
}

impl Balancer {
    pub fn new(spec: &PoolSpec) -> Self {
        let weights: Vec<u32> = spec.endpoints.iter().map(|e| e.weight).collect();
        Balancer {
            ring: WeightedRing::new(&weights),
        }
    }

    /// Picks one endpoint among those for which `usable(i)` holds, or `None`.
    pub fn pick(
        &self,
        endpoints: &[std::sync::Arc<Endpoint>],
        _hints: &Hints,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        for _ in 0..endpoints.len().max(1) * 2 {
            let i = self.ring.next();
            if i < endpoints.len() && usable(i) {
                return Some(i);
            }
        }
        (0..endpoints.len()).find(|&i| usable(i))
    }

    /// Tells the strategy which endpoint took a request with these hints.
    pub fn served(&self, _hints: &Hints, _endpoint: usize) {}
}

/// Stable hash of a session key (same in every process).
pub fn session_hash(key: &[u8]) -> u64 {
    prefix_hash(key)
}

/// Stable hash of a prompt prefix (same in every process): FNV-1a.
pub fn prefix_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
