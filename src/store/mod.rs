//! Shared state for limits and budgets, as the engine builds it from the `state:`
//! section: the in-process store (default) or Redis behind [`ResilientStore`], which
//! decides what happens while Redis is unreachable.
//!
//! This module owns the backends and their failure handling; what the counters mean
//! (windows, limits, budgets) belongs to the plugins that use [`Store`].

pub mod redis;
#[cfg(test)]
pub(crate) mod test_redis;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use tollgate_plugin::{Acquire, Acquired, Adjust, Release, Store, StoreError};

pub use self::redis::{RedisOptions, RedisStore};

/// How often a Redis marked down is tried again (by one call; the others meanwhile get
/// the `on_error` behaviour straight away).
pub const REDIS_RETRY_EVERY: Duration = Duration::from_secs(1);

// === config ===

/// The top-level `state:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default)]
    pub backend: Backend,
    /// Used when `backend: redis`.
    #[serde(default)]
    pub redis: RedisConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In this process: nothing to install, each gateway instance counts alone.
    #[default]
    Local,
    /// One Redis shared by every gateway instance: exact limits across instances.
    Redis,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default = "default_url")]
    pub url: String,
    /// Put before every key, so several deployments can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Bound on each call (it is on the request path).
    #[serde(default = "default_timeout", deserialize_with = "positive_duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub on_error: OnError,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: default_url(),
            key_prefix: default_key_prefix(),
            timeout: default_timeout(),
            on_error: OnError::default(),
        }
    }
}

fn default_url() -> String {
    "redis://127.0.0.1:6379".into()
}

fn default_key_prefix() -> String {
    "tollgate:".into()
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

fn positive_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    if value.is_zero() {
        return Err(serde::de::Error::custom("must be longer than zero"));
    }
    Ok(value)
}

/// What a call does while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Serve it from this instance's own store: limits still hold, but per instance.
    #[default]
    FailOpen,
    /// Return [`StoreError`]; the limits plugin answers 503.
    FailClosed,
}

// === build ===

/// What the engine keeps: the store handed to plugins, and, for Redis, the wrapper whose
/// health (`redis_up`, `failures`) feeds readiness and metrics.
#[derive(Clone)]
pub struct SharedState {
    pub store: Arc<dyn Store>,
    pub redis: Option<Arc<ResilientStore>>,
}

/// The store a config asks for. Needs no runtime and no network (Redis is connected on
/// first use), so it also serves `--validate`: it fails only on an invalid Redis URL.
pub fn build(config: &StateConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(build_state(config)?.store)
}

/// [`build`], keeping the Redis wrapper visible.
pub fn build_state(config: &StateConfig) -> Result<SharedState, StoreError> {
    match config.backend {
        Backend::Local => Ok(SharedState {
            store: local_store(),
            redis: None,
        }),
        Backend::Redis => {
            let redis = RedisStore::new(&RedisOptions {
                url: config.redis.url.clone(),
                key_prefix: config.redis.key_prefix.clone(),
                timeout: config.redis.timeout,
            })?;
            let resilient = Arc::new(ResilientStore::new(
                Arc::new(redis),
                local_store(),
                config.redis.on_error,
                REDIS_RETRY_EVERY,
            ));
            Ok(SharedState {
                store: resilient.clone(),
                redis: Some(resilient),
            })
        }
    }
}

/// The in-process store.
fn local_store() -> Arc<dyn Store> {
    Arc::new(tollgate_plugin::LocalStore::new())
}

// === impl ResilientStore ===

/// Redis with a way out: while Redis fails, calls fail open to an in-process store or
/// fail closed with [`StoreError`], and Redis is tried again every `retry_every`.
///
/// Where a reservation is undone: lease releases go to the store that granted the
/// lease (leases granted locally are remembered by key and id until released or
/// expired). Counter adjustments carry no request identity, so they go where calls go
/// at that moment: a request charged on one side of an outage and settled on the other
/// corrects the wrong store. That error is bounded by the requests in flight at the
/// switch, and negative corrections clamp at zero or skip a missing counter, so it can
/// never drive a counter below zero.
pub struct ResilientStore {
    redis: Arc<dyn Store>,
    local: Arc<dyn Store>,
    on_error: OnError,
    retry_every: Duration,
    up: AtomicBool,
    /// While down: when (ms since `epoch`) the next call may try Redis.
    retry_at_ms: AtomicU64,
    epoch: Instant,
    failures: AtomicU64,
    bypassed: AtomicU64,
    local_leases: Mutex<LocalLeases>,
}

/// Leases granted by the local store: (key, lease id) → end (ms since `epoch`).
#[derive(Default)]
struct LocalLeases {
    ends: HashMap<(String, String), u64>,
    /// Forget expired entries when the map grows past this.
    prune_above: usize,
}

/// Where one call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Redis,
    /// Redis is down but this call is the one that tries it again.
    Probe,
    /// Redis is down: `on_error` applies without trying.
    Bypass,
}

impl ResilientStore {
    /// `redis` is normally a [`RedisStore`]; any store whose errors mean "unreachable"
    /// will do.
    pub fn new(
        redis: Arc<dyn Store>,
        local: Arc<dyn Store>,
        on_error: OnError,
        retry_every: Duration,
    ) -> ResilientStore {
        ResilientStore {
            redis,
            local,
            on_error,
            retry_every,
            up: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            failures: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            local_leases: Mutex::new(LocalLeases {
                ends: HashMap::new(),
                prune_above: 1024,
            }),
        }
    }

    /// Whether the last call that tried Redis succeeded (true until a call fails).
    pub fn redis_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Calls to Redis that failed or timed out, since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Calls that did not reach Redis because it was down or failed: served locally
    /// (`fail_open`) or refused (`fail_closed`).
    pub fn bypassed(&self) -> u64 {
        self.bypassed.load(Ordering::Relaxed)
    }

    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn route(&self) -> Route {
        if self.up.load(Ordering::Acquire) {
            return Route::Redis;
        }
        let now = self.now_ms();
        let at = self.retry_at_ms.load(Ordering::Acquire);
        let next = now.saturating_add(duration_ms(self.retry_every));
        if now >= at
            && self
                .retry_at_ms
                .compare_exchange(at, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            Route::Probe
        } else {
            Route::Bypass
        }
    }

    fn succeeded(&self) {
        if !self.up.load(Ordering::Acquire) && !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                failures = self.failures(),
                "Redis is back; limits are shared again"
            );
        }
    }

    fn failed(&self, route: Route, error: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if route == Route::Probe {
            tracing::debug!(%error, "Redis still unreachable");
            return;
        }
        let next = self.now_ms().saturating_add(duration_ms(self.retry_every));
        self.retry_at_ms.store(next, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            match self.on_error {
                OnError::FailOpen => tracing::warn!(
                    %error,
                    retry_every = ?self.retry_every,
                    "Redis unreachable; failing open to local limits: each gateway instance \
                     now enforces every limit alone"
                ),
                OnError::FailClosed => tracing::warn!(
                    %error,
                    retry_every = ?self.retry_every,
                    "Redis unreachable; failing closed: calls needing shared state are refused"
                ),
            }
        }
    }

    /// Runs `call` on Redis unless Redis is down and this call is not the one to try
    /// it again; an error means `on_error` takes over (and is what `fail_closed`
    /// returns).
    async fn try_redis<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let route = self.route();
        if route == Route::Bypass {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError("redis is down".into()));
        }
        match call.await {
            Ok(value) => {
                self.succeeded();
                Ok(value)
            }
            Err(error) => {
                crate::request_metrics::redis_error("limits");
                self.failed(route, &error);
                self.bypassed.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    fn remember_local_leases(&self, items: &[Acquire]) {
        let now = self.now_ms();
        let Ok(mut leases) = self.local_leases.lock() else {
            return;
        };
        for item in items {
            if let Some(lease) = &item.lease {
                leases.ends.insert(
                    (item.key.clone(), lease.id.clone()),
                    now.saturating_add(lease.ttl_ms),
                );
            }
        }
        if leases.ends.len() > leases.prune_above {
            leases.ends.retain(|_, end| *end > now);
            leases.prune_above = (leases.ends.len() * 2).max(1024);
        }
    }

    /// Splits releases into those of leases granted locally (forgotten as they are
    /// returned) and the rest.
    fn take_local_releases(&self, release: &[Release]) -> (Vec<Release>, Vec<Release>) {
        let Ok(mut leases) = self.local_leases.lock() else {
            return (Vec::new(), release.to_vec());
        };
        if leases.ends.is_empty() {
            return (Vec::new(), release.to_vec());
        }
        release.iter().cloned().partition(|r| {
            leases
                .ends
                .remove(&(r.key.clone(), r.lease_id.clone()))
                .is_some()
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Store for ResilientStore {
    async fn acquire(&self, items: &[Acquire]) -> Result<Acquired, StoreError> {
        match self.try_redis(self.redis.acquire(items)).await {
            Ok(acquired) => Ok(acquired),
            Err(e) if self.on_error == OnError::FailClosed => Err(e),
            Err(_) => {
                let acquired = self.local.acquire(items).await?;
                if matches!(acquired, Acquired::Granted(_)) {
                    self.remember_local_leases(items);
                }
                Ok(acquired)
            }
        }
    }

    async fn adjust(&self, adjust: &[Adjust], release: &[Release]) -> Result<(), StoreError> {
        let (local_release, release) = self.take_local_releases(release);
        if !local_release.is_empty() {
            self.local.adjust(&[], &local_release).await?;
        }
        if adjust.is_empty() && release.is_empty() {
            return Ok(());
        }
        match self.try_redis(self.redis.adjust(adjust, &release)).await {
            Ok(()) => Ok(()),
            Err(e) if self.on_error == OnError::FailClosed => Err(e),
            // Releases of Redis leases are no-ops here; Redis ends them by their TTL.
            Err(_) => self.local.adjust(adjust, &release).await,
        }
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        match self.try_redis(self.redis.get(keys)).await {
            Ok(values) => Ok(values),
            Err(e) if self.on_error == OnError::FailClosed => Err(e),
            Err(_) => self.local.get(keys).await,
        }
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
