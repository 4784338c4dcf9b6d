//! The response cache: exact-match answers to completions and embeddings, scoped per
//! tenant, streams included, in memory or in Redis.
//!
//! - [`key`]: what identifies an answer (a SHA-256 of the canonical request).
//! - [`config`]: the `cache:` section and what it decides per model and key.
//! - [`entry`]: a stored answer and its byte form; [`capture`]: copying one as it goes
//!   to the client.
//! - [`memory`] and the Redis store: where entries live; [`coalesce`]: identical
//!   requests in flight wait for the first.
//!
//! A non-stream and a stream request never share an entry: each is replayed exactly as
//! its first client received it (the JSON body byte for byte; a stream event for event,
//! the usage chunk shown only to a client that asked for it).
//!
//! Any fault — an entry that does not decode, Redis unreachable, an answer too large —
//! is counted and logged, and the request is answered as if there were no cache.

pub mod capture;
pub mod coalesce;
pub mod config;
pub mod entry;
pub mod key;
pub mod memory;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use tollgate_plugin::{Clock, Principal, SystemClock, TokenUsage};

pub use capture::Capture;
pub use coalesce::{Coalescer, Follower, Leader, Turn};
pub use config::{CacheConfig, Policy};
pub use entry::{Answer, Entry};
pub use key::CacheKey;

use crate::error::GatewayError;
use crate::openai::{Api, is_usage_only_chunk, put_event};
use crate::store::{RedisOptions, RedisStore, StateConfig};
use config::{BackendKind, ScopeKind};
use key::Scope;
use memory::MemoryBackend;

/// The request header that sets an entry's TTL, in whole seconds (capped at `max_ttl`).
pub const TTL_HEADER: &str = "x-tollgate-cache-ttl";

/// After a Redis failure, the cache leaves Redis alone this long (requests go upstream
/// without paying the timeout each).
const REDIS_REST: Duration = Duration::from_secs(1);

/// What the cache did for a response (`x-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Served from the cache.
    Hit,
    /// Looked up, not found: answered upstream.
    Miss,
    /// Not looked up: not cacheable (settings, a non-deterministic request) or the client
    /// said `Cache-Control: no-cache`.
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Bypass => "BYPASS",
        }
    }
}

/// What the cache does for one request.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub key: CacheKey,
    /// Look the answer up (not after `Cache-Control: no-cache`).
    pub lookup: bool,
    /// Store the answer (not after `no-store`, or a TTL of 0): for how long, and up to
    /// what size.
    pub store: Option<(Duration, usize)>,
}

// One per gateway: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

struct RedisBackend {
    store: RedisStore,
    /// Until when (clock ms) Redis is left alone after a failure.
    resting_until_ms: AtomicU64,
}

pub struct ResponseCache {
    policy: Policy,
    backend: Backend,
    coalescer: Arc<Coalescer>,
    clock: Arc<dyn Clock>,
    /// Prices, for the cost a hit saves.
    prices: Option<tollgate_limits::Quotas>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// The cache a checked section asks for; Redis uses the `state.redis` connection
    /// settings (connected on first use).
    pub fn build(
        policy: Policy,
        state: &StateConfig,
        prices: Option<tollgate_limits::Quotas>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let backend = match policy.config.backend {
            BackendKind::Memory => Backend::Memory(MemoryBackend::new(policy.config.max_bytes)),
            BackendKind::Redis => Backend::Redis(RedisBackend {
                store: RedisStore::new(&RedisOptions {
                    url: state.redis.url.clone(),
                    key_prefix: state.redis.key_prefix.clone(),
                    timeout: state.redis.timeout,
                })
                .map_err(|e| e.to_string())?,
                resting_until_ms: AtomicU64::new(0),
            }),
        };
        stats::init();
        Ok(ResponseCache {
            policy,
            backend,
            coalescer: Arc::new(Coalescer::default()),
            clock,
            prices,
        })
    }

    /// [`Self::build`] on the wall clock.
    pub fn new(
        policy: Policy,
        state: &StateConfig,
        prices: Option<tollgate_limits::Quotas>,
    ) -> Result<Self, String> {
        Self::build(policy, state, prices, Arc::new(SystemClock))
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub fn charge_hits(&self) -> bool {
        self.policy.config.charge_hits
    }

    /// What to do for a request to `model` (the public name it resolved to) with this
    /// body; `None`: bypass the cache. A malformed `x-tollgate-cache-ttl` is a 400.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        &self,
        api: Api,
        model: &str,
        body: &[u8],
        stream: bool,
        principal: &Principal,
        headers: &HeaderMap,
    ) -> Result<Option<Plan>, GatewayError> {
        let ttl_asked = requested_ttl(headers)?;
        let settings = self.policy.settings(model, &principal.id);
        // Embeddings are always repeatable.
        let deterministic = api == Api::Embeddings || key::is_deterministic(body);
        if !settings.enabled || (settings.deterministic_only && !deterministic) {
            return Ok(None);
        }
        let (no_cache, no_store) = cache_control(headers);
        let ttl = ttl_asked.map_or(settings.ttl, |t| t.min(self.policy.config.max_ttl));
        let store = (!no_store && !ttl.is_zero()).then_some((ttl, settings.max_entry_bytes));
        if no_cache && store.is_none() {
            return Ok(None);
        }
        let scope = match (self.policy.config.scope, principal.team.as_deref()) {
            (ScopeKind::Team, Some(team)) => Scope::Team(team),
            (ScopeKind::Team | ScopeKind::Key, _) => Scope::Key(&principal.id),
            (ScopeKind::Shared, _) => Scope::Shared,
        };
        let Some(key) = key::cache_key(api, model, body, stream, scope) else {
            return Ok(None);
        };
        Ok(Some(Plan {
            key,
            lookup: !no_cache,
            store,
        }))
    }

    /// The entry for `key`, if one is stored, whole and fresh. Faults are counted and
    /// read as a miss.
    pub async fn lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let now = self.clock.now_ms();
        match &self.backend {
            Backend::Memory(m) => m.get(key, now),
            Backend::Redis(r) => {
                if now < r.resting_until_ms.load(Ordering::Relaxed) {
                    stats::fault("redis_resting");
                    return None;
                }
                let name = redis_name(key);
                let bytes = match r.store.get_bytes(&name).await {
                    Ok(bytes) => bytes?,
                    Err(e) => {
                        r.failed(now, "lookup", &e.to_string());
                        return None;
                    }
                };
                match Entry::decode(&bytes, key) {
                    Ok(entry) if !entry.is_expired(now) => Some(Arc::new(entry)),
                    Ok(_) => None,
                    Err(e) => {
                        stats::fault("decode");
                        tracing::warn!(key = %key.hex(), error = %e, "Cache entry does not decode: ignored and removed");
                        let _ = r.store.delete(&name).await;
                        None
                    }
                }
            }
        }
    }

    /// Stores a complete answer for `plan` (which must ask to store).
    pub async fn store(
        &self,
        plan: &Plan,
        answer: Answer,
        served_model: &str,
        usage: Option<TokenUsage>,
    ) {
        let Some((ttl, _)) = plan.store else { return };
        let now = self.clock.now_ms();
        let entry = Entry {
            key: plan.key.0,
            expires_at_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            served_model: served_model.to_owned(),
            usage: usage.map(Into::into),
            answer,
        };
        let bytes = entry.answer.len();
        match &self.backend {
            Backend::Memory(m) => {
                if !m.put(plan.key, Arc::new(entry)) {
                    stats::fault("too_large");
                    return;
                }
                stats::set_resident(m.resident_bytes());
            }
            Backend::Redis(r) => {
                if now < r.resting_until_ms.load(Ordering::Relaxed) {
                    stats::fault("redis_resting");
                    return;
                }
                let Ok(bytes) = entry.encode() else {
                    stats::fault("encode");
                    return;
                };
                if let Err(e) = r
                    .store
                    .set_bytes(&redis_name(&plan.key), &bytes, Some(ttl))
                    .await
                {
                    r.failed(now, "store", &e.to_string());
                    return;
                }
            }
        }
        stats::stored(bytes);
    }

    /// Counts an answer that was too large to keep.
    pub fn too_large(&self) {
        stats::fault("too_large");
    }

    /// Counts what a request did with the cache.
    pub fn record(&self, status: Status) {
        stats::request(status);
    }

    /// Counts a hit: its bytes, and the tokens and cost it saved.
    pub fn record_hit(&self, entry: &Entry, coalesced: bool) {
        stats::request(Status::Hit);
        if coalesced {
            stats::coalesced();
        }
        let usage = entry.usage.map(TokenUsage::from);
        let usd = usage.as_ref().and_then(|u| {
            self.prices
                .as_ref()
                .and_then(|p| p.cost_micro_usd(&entry.served_model, u))
        });
        stats::hit(entry.answer.len(), usage, usd);
    }

    /// Joins the flight for `key` (see [`coalesce`]); `None` when coalescing is off.
    pub fn join(&self, key: CacheKey) -> Option<Turn> {
        self.policy
            .config
            .coalesce
            .then(|| self.coalescer.join(key))
    }

    /// How long a follower waits for its leader.
    pub fn coalesce_wait(&self) -> Duration {
        self.policy.config.coalesce_wait
    }

    /// Bytes the memory backend holds (0 for Redis).
    pub fn resident_bytes(&self) -> usize {
        match &self.backend {
            Backend::Memory(m) => m.resident_bytes(),
            Backend::Redis(_) => 0,
        }
    }
}

impl RedisBackend {
    fn failed(&self, now_ms: u64, what: &str, error: &str) {
        stats::fault("redis");
        crate::request_metrics::redis_error("cache");
        let rest_ms = u64::try_from(REDIS_REST.as_millis()).unwrap_or(u64::MAX);
        self.resting_until_ms
            .store(now_ms.saturating_add(rest_ms), Ordering::Relaxed);
        tracing::warn!(
            what,
            error,
            "Response cache: Redis failed; requests go upstream uncached for {REDIS_REST:?}"
        );
    }
}

fn redis_name(key: &CacheKey) -> String {
    format!("cache:{}", key.hex())
}

/// `(no-cache, no-store)` from the request's `Cache-Control` headers.
fn cache_control(headers: &HeaderMap) -> (bool, bool) {
    let mut out = (false, false);
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let name = directive.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("no-cache") {
                out.0 = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                out.1 = true;
            }
        }
    }
    out
}

/// The TTL the client asked for, if it did.
fn requested_ttl(headers: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let Some(value) = headers.get(TTL_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Some(Duration::from_secs(secs)))
        .ok_or_else(|| GatewayError::InvalidRequest {
            message: format!("`{TTL_HEADER}` must be a whole number of seconds"),
            param: None,
        })
}

/// A cached stream as the client gets it: each event, the usage-only chunk left out
/// when `strip_usage`, then `data: [DONE]`.
pub fn replay_events(events: &[Bytes], strip_usage: bool) -> Bytes {
    let size: usize = events.iter().map(|e| e.len() + 8).sum();
    let mut out = BytesMut::with_capacity(size + 14);
    for data in events {
        if strip_usage && is_usage_only_chunk(data) {
            continue;
        }
        put_event(data, &mut out);
    }
    out.put_slice(b"data: [DONE]\n\n");
    out.freeze()
}

#[cfg(test)]
mod tests;
