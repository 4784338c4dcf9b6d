//! Endpoint selection within a pool, by the pool's strategy.
//!
//! [`Balancer::pick`] runs on every request: it allocates nothing and holds no lock. It
//! reads the endpoints' live figures (in flight, latency, scraped load) and the pool's
//! weights; the only state it keeps itself is a round-robin cursor and, for `load_aware`,
//! a bounded table of which endpoint last served each prompt prefix.
//!
//! Hashes ([`session_hash`], [`prefix_hash`] and the rendezvous scores) are xxh3 with a
//! fixed seed, so every gateway replica sends the same session or prefix to the same
//! endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::config::{LoadAware, PoolSpec, Strategy};
use crate::weighted::WeightedRing;

use super::{Endpoint, clock};

/// Seed of every balancing hash. Changing it moves every session and prefix once.
const HASH_SEED: u64 = 0x746f_6c6c_6761_7465; // "tollgate"

/// `load_aware`: one waiting request costs this many running ones in an endpoint's score
/// (a queued request waits for a whole running one to finish).
const WAITING_COST: f64 = 4.0;

/// `load_aware`: slots of the prefix-owner table (a power of two; 8 bytes each).
const AFFINITY_SLOTS: usize = 8192;

/// `ewma`: time constant of the latency average. A sample after a pause of this long
/// carries ~63 % of the weight; samples in quick succession at least [`EWMA_MIN_ALPHA`].
const EWMA_TAU_MS: f64 = 10_000.0;
const EWMA_MIN_ALPHA: f64 = 1.0 / 16.0;

/// Stable hash of a session key, for [`Hints::session`].
pub fn session_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, HASH_SEED)
}

/// Stable hash of a prompt's leading bytes, for [`Hints::prefix`].
pub fn prefix_hash(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, HASH_SEED)
}

/// What a request offers the strategies to decide on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hints {
    /// Hash of the session key (`consistent_hash`).
    pub session: Option<u64>,
    /// Hash of the prompt's leading bytes (`load_aware` prefix affinity).
    pub prefix: Option<u64>,
}

// === impl Traffic ===

/// Live traffic figures of one endpoint, kept by the request path.
#[derive(Debug, Default)]
pub struct Traffic {
    pub in_flight: AtomicU32,
    /// Smoothed time to the response header, in microseconds (0: no sample yet).
    latency_us: AtomicU64,
    /// Clock (ms) of the last latency sample.
    sampled_at_ms: AtomicU64,
}

impl Traffic {
    /// Folds one time-to-header sample into the average. The weight of a sample grows
    /// with the time since the previous one, so an endpoint that was idle for a while is
    /// judged on what it does now, while a busy one is not swung by a single outlier.
    /// Concurrent updates may lose a sample; the average stays sound.
    pub fn record_latency(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let now = clock::now_ms();
        let then = self.sampled_at_ms.swap(now, Ordering::Relaxed);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            let gap = now.saturating_sub(then) as f64;
            let alpha = (1.0 - (-gap / EWMA_TAU_MS).exp()).max(EWMA_MIN_ALPHA);
            (old as f64 + alpha * (sample as f64 - old as f64)).round() as u64
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

// === impl Balancer ===

#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    ring: WeightedRing,
    /// Stable hash of each endpoint's name: its identity in rendezvous hashing.
    name_keys: Box<[u64]>,
    load: LoadAware,
    /// `load_aware` only.
    affinity: Option<Affinity>,
}

impl Balancer {
    pub fn new(spec: &PoolSpec) -> Self {
        let weights: Vec<u32> = spec.endpoints.iter().map(|e| e.weight).collect();
        let strategy = spec.balance.strategy;
        Balancer {
            strategy,
            ring: WeightedRing::new(&weights),
            name_keys: spec
                .endpoints
                .iter()
                .map(|e| xxh3_64_with_seed(e.name.as_bytes(), HASH_SEED))
                .collect(),
            load: spec.balance.load.clone(),
            affinity: (strategy == Strategy::LoadAware).then(Affinity::new),
        }
    }

    /// Picks one endpoint among those for which `usable(i)` holds, or `None`.
    pub fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        hints: &Hints,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match self.strategy {
            Strategy::RoundRobin => self.round_robin(endpoints, usable),
            Strategy::LeastInFlight => self.least_in_flight(endpoints, usable),
            Strategy::Ewma => ewma(endpoints, usable),
            Strategy::ConsistentHash => match hints.session {
                Some(key) => self.rendezvous(endpoints, key, usable),
                None => self.round_robin(endpoints, usable),
            },
            Strategy::LoadAware => self.load_aware(endpoints, hints, usable),
        }
    }

    /// Tells the strategy which endpoint took a request with these hints.
    pub fn served(&self, hints: &Hints, endpoint: usize) {
        if let (Some(table), Some(prefix)) = (&self.affinity, hints.prefix) {
            table.record(prefix, endpoint);
        }
    }

    /// Smooth weighted round robin. A turn that falls on an unusable endpoint goes to a
    /// usable one drawn by weight, so the others keep their relative shares.
    fn round_robin(
        &self,
        endpoints: &[Arc<Endpoint>],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let i = self.ring.next();
        if i < endpoints.len() && usable(i) {
            return Some(i);
        }
        // One pass of weighted reservoir sampling: endpoint i is kept with probability
        // w_i / (sum of the usable weights).
        let mut total = 0u64;
        let mut chosen = None;
        for (i, e) in endpoints.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            let w = u64::from(e.spec.weight.max(1));
            total += w;
            if fastrand::u64(..total) < w {
                chosen = Some(i);
            }
        }
        chosen
    }

    /// Fewest requests in flight per unit of weight; ties are drawn at random, so equal
    /// endpoints share evenly whichever of them are usable.
    fn least_in_flight(
        &self,
        endpoints: &[Arc<Endpoint>],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut least = Least::default();
        for (i, e) in endpoints.iter().enumerate() {
            if usable(i) {
                let load = f64::from(e.traffic.in_flight.load(Ordering::Relaxed));
                least.offer(i, load / f64::from(e.spec.weight.max(1)));
            }
        }
        least.best.map(|(i, _)| i)
    }

    /// Weighted rendezvous (highest random weight) hashing of `key` over the endpoints
    /// `eligible` admits: each endpoint scores `weight / -ln(u)` with `u` a uniform
    /// hash of (key, endpoint name). Only the key's own endpoint leaving moves it.
    fn rendezvous(
        &self,
        endpoints: &[Arc<Endpoint>],
        key: u64,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, e) in endpoints.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let name_key = match self.name_keys.get(i) {
                Some(&k) => k,
                None => xxh3_64_with_seed(e.spec.name.as_bytes(), HASH_SEED),
            };
            let score = rendezvous_score(key, name_key, e.spec.weight);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Least loaded by scraped queue and running requests, avoiding saturated endpoints
    /// while any other is left; a prompt prefix stays where its KV cache is warm while
    /// that endpoint is within `affinity_slack` of the least loaded.
    fn load_aware(
        &self,
        endpoints: &[Arc<Endpoint>],
        hints: &Hints,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let stat = |i: usize| load_stat(&endpoints[i], &self.load);
        // Pass 1: the least score among unsaturated endpoints and among all.
        let mut least_free = Least::default();
        let mut least_any = Least::default();
        for i in 0..n {
            if !usable(i) {
                continue;
            }
            let s = stat(i);
            least_any.offer(i, s.score);
            if !s.saturated {
                least_free.offer(i, s.score);
            }
        }
        // Saturated endpoints count only when every endpoint is.
        let only_free = least_free.best.is_some();
        let (least, least_score) = least_free.best.or(least_any.best)?;
        let Some(prefix) = hints.prefix else {
            return Some(least);
        };
        let slack = self.load.affinity_slack;
        let acceptable = |i: usize| {
            if i >= n || !usable(i) {
                return false;
            }
            let s = stat(i);
            !(only_free && s.saturated) && s.score <= least_score + slack
        };
        if let Some(owner) = self.affinity.as_ref().and_then(|t| t.owner(prefix))
            && acceptable(owner)
        {
            return Some(owner);
        }
        // No owner, or it is too busy: the prefix's rendezvous choice among the nearly
        // least loaded, which other replicas tend to make too.
        self.rendezvous(endpoints, prefix, &acceptable)
            .or(Some(least))
    }
}

fn rendezvous_score(key: u64, name_key: u64, weight: u32) -> f64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&key.to_le_bytes());
    buf[8..].copy_from_slice(&name_key.to_le_bytes());
    let h = xxh3_64_with_seed(&buf, HASH_SEED);
    // Uniform in (0, 1): the top 53 bits, centred in their step.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

/// Power of two random choices: two usable endpoints drawn at random, the one with the
/// lower latency × (in flight + 1) / weight wins. An endpoint without a latency sample
/// yet scores best, so new endpoints are tried.
fn ewma(endpoints: &[Arc<Endpoint>], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    // Reservoir sampling of two in one pass.
    let mut pair: [Option<usize>; 2] = [None, None];
    let mut seen = 0usize;
    for i in 0..endpoints.len() {
        if !usable(i) {
            continue;
        }
        seen += 1;
        if seen <= 2 {
            pair[seen - 1] = Some(i);
        } else {
            let j = fastrand::usize(..seen);
            if j < 2 {
                pair[j] = Some(i);
            }
        }
    }
    match pair {
        [Some(a), Some(b)] => {
            let (sa, sb) = (ewma_cost(&endpoints[a]), ewma_cost(&endpoints[b]));
            // Compare sa / wa with sb / wb without division.
            let wa = u128::from(endpoints[a].spec.weight.max(1));
            let wb = u128::from(endpoints[b].spec.weight.max(1));
            let (ca, cb) = (sa * wb, sb * wa);
            Some(if ca < cb || (ca == cb && fastrand::bool()) {
                a
            } else {
                b
            })
        }
        [Some(a), None] => Some(a),
        _ => None,
    }
}

fn ewma_cost(e: &Endpoint) -> u128 {
    let latency = e.traffic.latency_us.load(Ordering::Relaxed);
    let in_flight = e.traffic.in_flight.load(Ordering::Relaxed);
    u128::from(latency) * (u128::from(in_flight) + 1)
}

/// The least score offered, ties drawn at random (each of k equal scores kept with
/// probability 1/k) so that equal endpoints share.
#[derive(Debug, Default)]
struct Least {
    best: Option<(usize, f64)>,
    ties: u32,
}

impl Least {
    fn offer(&mut self, i: usize, score: f64) {
        match self.best {
            Some((_, b)) if score > b => {}
            Some((_, b)) if score == b => {
                self.ties += 1;
                if fastrand::u32(..self.ties) == 0 {
                    self.best = Some((i, score));
                }
            }
            _ => {
                self.best = Some((i, score));
                self.ties = 1;
            }
        }
    }
}

/// One endpoint's standing for `load_aware`.
#[derive(Debug, Clone, Copy)]
struct LoadStat {
    score: f64,
    saturated: bool,
}

fn load_stat(e: &Endpoint, settings: &LoadAware) -> LoadStat {
    let in_flight = f64::from(e.traffic.in_flight.load(Ordering::Relaxed));
    match e.load.fresh(settings.stale_after) {
        Some(l) => LoadStat {
            score: l.waiting * WAITING_COST + l.running + in_flight,
            saturated: load_saturated(&l, settings),
        },
        // Unknown load: judged on this gateway's own traffic, and never saturated.
        None => LoadStat {
            score: in_flight,
            saturated: false,
        },
    }
}

fn load_saturated(l: &super::load::Load, settings: &LoadAware) -> bool {
    l.waiting >= settings.max_waiting
        || l.cache_usage.is_some_and(|c| c >= settings.max_cache_usage)
}

/// Whether the endpoint's fresh scraped load says it is saturated (its queue at
/// `max_waiting`, or its KV cache at `max_cache_usage`); unknown load never is.
pub(super) fn saturated(e: &Endpoint, settings: &LoadAware) -> bool {
    e.load
        .fresh(settings.stale_after)
        .is_some_and(|l| load_saturated(&l, settings))
}

// === impl Affinity ===

/// Which endpoint last served each prompt prefix: a direct-mapped table of atomic slots,
/// so memory is fixed whatever the traffic; a newer prefix evicts an older one that
/// lands on the same slot.
///
/// A slot holds `tag << 16 | (endpoint + 1)`, where the tag is the hash's bits above the
/// slot index; 0 is empty.
#[derive(Debug)]
struct Affinity {
    slots: Box<[AtomicU64]>,
}

const ENDPOINT_BITS: u32 = 16;
const ENDPOINT_MASK: u64 = (1 << ENDPOINT_BITS) - 1;

impl Affinity {
    fn new() -> Self {
        Affinity {
            slots: (0..AFFINITY_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot_and_tag(prefix: u64) -> (usize, u64) {
        let slot = (prefix as usize) & (AFFINITY_SLOTS - 1);
        // The high bits, disjoint from the index bits (AFFINITY_SLOTS <= 2^16).
        (slot, prefix >> ENDPOINT_BITS)
    }

    fn record(&self, prefix: u64, endpoint: usize) {
        if endpoint as u64 >= ENDPOINT_MASK {
            return;
        }
        let (slot, tag) = Self::slot_and_tag(prefix);
        let value = (tag << ENDPOINT_BITS) | (endpoint as u64 + 1);
        self.slots[slot].store(value, Ordering::Relaxed);
    }

    fn owner(&self, prefix: u64) -> Option<usize> {
        let (slot, tag) = Self::slot_and_tag(prefix);
        let value = self.slots[slot].load(Ordering::Relaxed);
        let endpoint = value & ENDPOINT_MASK;
        (endpoint != 0 && value >> ENDPOINT_BITS == tag).then(|| (endpoint - 1) as usize)
    }
}

#[cfg(test)]
mod tests;
