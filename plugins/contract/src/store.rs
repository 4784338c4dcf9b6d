//! Shared state for limits and budgets: one interface, two backends — in-process (the
//! default) and Redis (several gateway instances share exact counts).
//!
//! The model is a set of named counters. [`Store::acquire`] charges several counters at
//! once, all or nothing: either every counter stays within its limit and all are
//! charged, or none is. That one call is a request's whole admission (one round trip to
//! Redis). [`Store::adjust`] then trues counters up or down (real usage instead of the
//! estimate) and releases concurrency leases.
//!
//! Counter names carry their window (e.g. `rpm:key:team-a:29000000` for one minute), so
//! a store knows nothing of windows: a counter simply expires at `expires_at_ms`.

use async_trait::async_trait;

/// One counter to charge at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    /// The counter's full name, window included.
    pub key: String,
    /// How much to add.
    pub amount: u64,
    /// The counter may not go above this.
    pub limit: u64,
    /// Unix time (ms) after which the counter is forgotten; `None`: kept forever
    /// (lifetime budgets). Ignored for leases.
    pub expires_at_ms: Option<u64>,
    /// A concurrency slot instead of a count: the counter is the number of live leases,
    /// `amount` is ignored (one lease), and this lease (`id`, unique per request) ends at
    /// `Release` or after `ttl_ms` at the latest (a crashed gateway cannot leak slots).
    pub lease: Option<Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub ttl_ms: u64,
}

/// The result of [`Store::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Every counter was charged; its value after the charge, in the order given.
    Granted(Vec<u64>),
    /// Nothing was charged: counter `index` would have gone over its limit; `current` is
    /// its value now.
    Refused { index: usize, current: u64 },
}

/// A correction after the fact: added as is (negative to give back), never refused.
/// A counter that does not exist (expired) is left alone rather than re-created below
/// zero; values never go below zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjust {
    pub key: String,
    pub delta: i64,
    /// As in [`Acquire::expires_at_ms`], for a counter this creates.
    pub expires_at_ms: Option<u64>,
}

/// The end of a concurrency lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub key: String,
    pub lease_id: String,
}

/// The backend could not be reached or failed; the caller decides (fail open or
/// closed) per config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shared state unavailable: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Charges every counter or none, atomically with respect to every other call.
    async fn acquire(&self, items: &[Acquire]) -> Result<Acquired, StoreError>;

    /// Applies corrections and releases leases (one round trip).
    async fn adjust(&self, adjust: &[Adjust], release: &[Release]) -> Result<(), StoreError>;

    /// Current values (0 for a missing counter; the number of live leases for a lease
    /// counter), e.g. for `x-ratelimit-remaining` headers and tests.
    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError>;

    /// A short name for logs and metrics: `local` or `redis`.
    fn backend(&self) -> &'static str;
}
