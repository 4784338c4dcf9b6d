//! The Redis backend of [`Store`]: several gateway instances share exact counts.
//!
//! Every call is one round trip: `acquire`, `adjust` and `get` are each one Lua script
//! (EVALSHA, falling back to loading the script once after a Redis restart), so a
//! script runs atomically with respect to every other gateway's calls.
//!
//! Layout (every key starts with the configured prefix, default `tollgate:`):
//! - a plain counter is a string holding an integer, with `PEXPIREAT` at the counter's
//!   `expires_at_ms` (the caller's clock: the window is part of the counter's name, so
//!   every gateway computes the same value) and no expiry for lifetime counters;
//! - a lease counter is a sorted set of lease ids scored by the lease's end, in Redis
//!   server time (`TIME` in the script). Server time is used so that gateways whose
//!   clocks differ slightly still agree on when a lease ends. The set itself expires
//!   with its last lease, so an idle key does not linger.
//!
//! Limits: counter values must stay below 2^53 (Lua numbers are doubles); a key is
//! either a plain counter or a lease counter, never both (Redis answers `WRONGTYPE`);
//! the scripts touch several keys, so Redis Cluster is not supported (one Redis, or a
//! primary with replicas). Needs Redis 6.0 or later (`SET … KEEPTTL`).
//!
//! A call that times out may still run on Redis after the caller has given up: the
//! charge then stays until its window ends (counters) or its TTL (leases).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tollgate_plugin::{Acquire, Acquired, Adjust, Release, Store, StoreError};

/// Checks every counter, and only when all fit charges them all.
///
/// KEYS: the counters. ARGV: five per key — kind (`c` counter, `l` lease), amount,
/// limit, expiry in unix ms (`-` for none) or the lease id, lease TTL in ms.
/// Returns `{1, value…}` (values after the charge) or `{0, index, current}`.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pending = {}
for i = 1, #KEYS do
  local o = (i - 1) * 5
  local key = KEYS[i]
  local limit = tonumber(ARGV[o + 3])
  local extra = pending[key] or 0
  local current
  local need
  if ARGV[o + 1] == 'l' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    current = redis.call('ZCARD', key)
    if redis.call('ZSCORE', key, ARGV[o + 4]) then need = 0 else need = 1 end
  else
    current = tonumber(redis.call('GET', key) or '0')
    need = tonumber(ARGV[o + 2])
  end
  if current + extra + need > limit then
    return {0, i - 1, current}
  end
  pending[key] = extra + need
end
local out = {1}
for i = 1, #KEYS do
  local o = (i - 1) * 5
  local key = KEYS[i]
  if ARGV[o + 1] == 'l' then
    redis.call('ZADD', key, now + tonumber(ARGV[o + 5]), ARGV[o + 4])
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIREAT', key, last[2])
    out[i + 1] = redis.call('ZCARD', key)
  else
    out[i + 1] = redis.call('INCRBY', key, ARGV[o + 2])
    if ARGV[o + 4] ~= '-' then
      redis.call('PEXPIREAT', key, ARGV[o + 4])
    end
  end
end
return out
"#;

/// Corrections, then lease releases.
///
/// KEYS: the adjusted counters, then the released lease counters. ARGV: the number of
/// adjustments, two per adjustment (delta, expiry in unix ms or `-`), then one lease id
/// per release. A negative delta never takes a counter below 0 and skips a missing one;
/// an existing counter keeps its expiry.
const ADJUST: &str = r#"
local n = tonumber(ARGV[1])
for i = 1, n do
  local key = KEYS[i]
  local raw = ARGV[2 * i]
  local delta = tonumber(raw)
  local value = redis.call('GET', key)
  if value then
    if tonumber(value) + delta < 0 then
      redis.call('SET', key, 0, 'KEEPTTL')
    elseif delta ~= 0 then
      redis.call('INCRBY', key, raw)
    end
  elseif delta > 0 then
    redis.call('INCRBY', key, raw)
    if ARGV[2 * i + 1] ~= '-' then
      redis.call('PEXPIREAT', key, ARGV[2 * i + 1])
    end
  end
end
for i = n + 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[n + i + 1])
end
return 0
"#;

/// Current values: a plain counter's value, a lease counter's live leases, 0 if missing.
const GET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  local kind = redis.call('TYPE', KEYS[i]).ok
  if kind == 'zset' then
    out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
  elseif kind == 'string' then
    out[i] = tonumber(redis.call('GET', KEYS[i]))
  else
    out[i] = 0
  end
end
return out
"#;

fn scripts() -> &'static [Script; 3] {
    static SCRIPTS: OnceLock<[Script; 3]> = OnceLock::new();
    SCRIPTS.get_or_init(|| [Script::new(ACQUIRE), Script::new(ADJUST), Script::new(GET)])
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Put before every counter name, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Bound on each call, connecting included.
    pub timeout: Duration,
}

/// [`Store`] on one Redis server, shared by every gateway that points at it.
pub struct RedisStore {
    client: Client,
    prefix: String,
    timeout: Duration,
    /// Made on first use, inside the runtime that runs the call (the manager spawns its
    /// connection tasks there), so building a store needs no runtime and no Redis.
    /// Dropped after a timeout, so the next call starts on a fresh connection.
    conn: Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: say only where it points.
        f.debug_struct("RedisStore")
            .field("addr", &self.client.get_connection_info().addr())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// Checks the URL; connects lazily, on the first call.
    pub fn new(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let client = Client::open(options.url.as_str())
            .map_err(|e| StoreError(format!("invalid redis url: {e}")))?;
        Ok(RedisStore {
            client,
            prefix: options.key_prefix.clone(),
            timeout: options.timeout,
            conn: Mutex::new(None),
        })
    }

    /// The connection manager (it reconnects by itself after a dropped connection).
    /// Must be called from within a Tokio runtime.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError("redis: connection lock poisoned".into()))?;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        // One connection attempt per reconnect: when Redis is down the caller
        // (`ResilientStore`) decides how often to try again, and a call must not queue
        // behind a long backoff.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.timeout.max(Duration::from_secs(1))));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(redis_error)?;
        *conn = Some(manager.clone());
        Ok(manager)
    }

    /// A timed-out call says nothing of the connection to the manager, which only
    /// replaces a connection that reports an error: an unanswering one (a network
    /// partition, a frozen server) would be kept forever. So start afresh.
    fn forget_connection(&self) {
        if let Ok(mut conn) = self.conn.lock() {
            *conn = None;
        }
    }

    fn key(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + name.len());
        key.push_str(&self.prefix);
        key.push_str(name);
        key
    }

    /// Runs one script invocation within the timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(async {
            let mut conn = self.connection()?;
            match invocation.invoke_async::<T>(&mut conn).await {
                // A refused connection sent nothing, so trying once more is safe; it is
                // what brings a restarted Redis back on the first call instead of the
                // second (the manager hands out its last failed connect once, then
                // reconnects).
                Err(e) if e.is_connection_refusal() => invocation
                    .invoke_async::<T>(&mut conn)
                    .await
                    .map_err(redis_error),
                result => result.map_err(redis_error),
            }
        })
        .await
    }

    /// Runs one command within the timeout, as [`Self::run`] does a script.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        self.bounded(async {
            let mut conn = self.connection()?;
            match cmd.query_async::<T>(&mut conn).await {
                Err(e) if e.is_connection_refusal() => {
                    cmd.query_async::<T>(&mut conn).await.map_err(redis_error)
                }
                result => result.map_err(redis_error),
            }
        })
        .await
    }

    /// The bytes stored under `name` (prefixed like every key), if any.
    pub async fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(name));
        self.query(cmd).await
    }

    /// Stores `value` under `name` for `ttl` (at least a millisecond), or for good.
    pub async fn set_bytes(
        &self,
        name: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(name)).arg(value);
        if let Some(ttl) = ttl {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            cmd.arg("PX").arg(ms);
        }
        self.query(cmd).await
    }

    /// Removes `name`.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(name));
        self.query::<i64>(cmd).await.map(drop)
    }

    /// `call` within the timeout; a timed-out call drops the connection.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                self.forget_connection();
                Err(StoreError(format!(
                    "redis timed out after {:?}",
                    self.timeout
                )))
            }
        }
    }
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

// === impl Store for RedisStore ===

#[async_trait]
impl Store for RedisStore {
    async fn acquire(&self, items: &[Acquire]) -> Result<Acquired, StoreError> {
        if items.is_empty() {
            return Ok(Acquired::Granted(Vec::new()));
        }
        let mut invocation = scripts()[0].prepare_invoke();
        for item in items {
            invocation.key(self.key(&item.key));
            match &item.lease {
                Some(lease) => {
                    invocation
                        .arg("l")
                        .arg(1u64)
                        .arg(item.limit)
                        .arg(lease.id.as_str())
                        .arg(lease.ttl_ms);
                }
                None => {
                    invocation.arg("c").arg(item.amount).arg(item.limit);
                    match item.expires_at_ms {
                        Some(at) => invocation.arg(at),
                        None => invocation.arg("-"),
                    };
                    invocation.arg(0u64);
                }
            }
        }
        let reply: Vec<u64> = self.run(invocation).await?;
        match reply.as_slice() {
            [1, values @ ..] if values.len() == items.len() => {
                Ok(Acquired::Granted(values.to_vec()))
            }
            [0, index, current] => Ok(Acquired::Refused {
                index: usize::try_from(*index)
                    .map_err(|_| StoreError("redis: bad acquire reply".into()))?,
                current: *current,
            }),
            _ => Err(StoreError(format!("redis: bad acquire reply {reply:?}"))),
        }
    }

    async fn adjust(&self, adjust: &[Adjust], release: &[Release]) -> Result<(), StoreError> {
        if adjust.is_empty() && release.is_empty() {
            return Ok(());
        }
        let mut invocation = scripts()[1].prepare_invoke();
        invocation.arg(adjust.len());
        for item in adjust {
            invocation.key(self.key(&item.key)).arg(item.delta);
            match item.expires_at_ms {
                Some(at) => invocation.arg(at),
                None => invocation.arg("-"),
            };
        }
        for item in release {
            invocation
                .key(self.key(&item.key))
                .arg(item.lease_id.as_str());
        }
        self.run::<i64>(invocation).await.map(drop)
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = scripts()[2].prepare_invoke();
        for key in keys {
            invocation.key(self.key(key));
        }
        let values: Vec<u64> = self.run(invocation).await?;
        if values.len() != keys.len() {
            return Err(StoreError(format!("redis: bad get reply {values:?}")));
        }
        Ok(values)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
