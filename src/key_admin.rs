//! Gateway keys managed at run time through the admin API: create, disable or enable,
//! rotate, change limits and budgets, delete — effective at once, without a restart.
//!
//! One [`KeyRegistry`] lives as long as the process: it holds the records, applies them to
//! the auth plugin ([`RuntimeKeys`]) and the limits plugin ([`RuntimeLimits`]) of every
//! config it builds, and persists them — in Redis (`state.backend: redis`, one JSON value
//! shared by every instance) or else in a state file (`admin.state_file`, written
//! atomically) — and reads them back at start. With Redis, each instance reads them again
//! every [`REFRESH_EVERY`], so a key made on one instance works on all of them.
//!
//! A record either is a runtime key (it has the SHA-256 of its secret; the secret itself
//! is shown once, when made) or overrides a configured key's `enabled` and limits.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tollgate_auth::{RuntimeKey, RuntimeKeys};
use tollgate_limits::{Quota, RuntimeLimits};

use crate::store::{RedisOptions, RedisStore};

/// The Redis key (after the prefix) holding every record.
const REDIS_NAME: &str = "admin:keys";

/// What the registry keeps per key id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// A runtime key's secret, hashed; absent for an override of a configured key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A `quotas.keys` entry (rpm, tpm, concurrency, budgets) for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
}

fn yes() -> bool {
    true
}

impl Default for KeyRecord {
    /// An enabled record that changes nothing.
    fn default() -> Self {
        KeyRecord {
            sha256: None,
            team: None,
            tier: None,
            models: None,
            expires: None,
            enabled: true,
            limits: None,
        }
    }
}

/// Where records are kept.
pub enum Persist {
    Redis(RedisOptions),
    File(PathBuf),
    /// Nowhere: there is no admin API to make any.
    Nowhere,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The change is not valid (400): which field, and why.
    Invalid(String),
    NotFound(String),
    Conflict(String),
    /// It could not be persisted (503); nothing changed.
    Unavailable(String),
}

pub struct KeyRegistry {
    records: Mutex<BTreeMap<String, KeyRecord>>,
    pub keys: Arc<RuntimeKeys>,
    pub limits: Arc<RuntimeLimits>,
    persist: Persist,
    /// Connected on first use, inside the runtime that serves the admin API.
    redis: Option<RedisStore>,
}

impl KeyRegistry {
    /// Reads the records persisted (blocking: call before the server runs) and applies
    /// them. A store that cannot be read is an error: starting without the keys an
    /// operator made would refuse their callers, or let disabled ones in.
    pub fn load(persist: Persist) -> Result<KeyRegistry, String> {
        let records = match &persist {
            Persist::File(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not a key state file: {e}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            },
            Persist::Nowhere => BTreeMap::new(),
            Persist::Redis(options) => {
                // A store of its own on a runtime of its own: the connection it makes
                // belongs to that runtime.
                let store = RedisStore::new(options).map_err(|e| e.to_string())?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                match runtime.block_on(store.get_bytes(REDIS_NAME)) {
                    Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                        .map_err(|e| format!("redis {REDIS_NAME}: not key records: {e}"))?,
                    Ok(None) => BTreeMap::new(),
                    Err(e) => return Err(format!("reading runtime keys from Redis: {e}")),
                }
            }
        };
        let redis = match &persist {
            Persist::Redis(options) => Some(RedisStore::new(options).map_err(|e| e.to_string())?),
            Persist::File(_) | Persist::Nowhere => None,
        };
        let registry = KeyRegistry {
            records: Mutex::new(BTreeMap::new()),
            keys: Arc::default(),
            limits: Arc::default(),
            persist,
            redis,
        };
        registry
            .apply(&records)
            .map_err(|e| format!("runtime keys: {e:?}"))?;
        if !records.is_empty() {
            tracing::info!(keys = records.len(), "Runtime keys loaded");
        }
        *registry.records.try_lock().map_err(|e| e.to_string())? = records;
        Ok(registry)
    }

    /// A registry with no keys, keeping nothing (no admin API).
    pub fn nowhere() -> KeyRegistry {
        KeyRegistry {
            records: Mutex::new(BTreeMap::new()),
            keys: Arc::default(),
            limits: Arc::default(),
            persist: Persist::Nowhere,
            redis: None,
        }
    }

    /// Whether other instances may change the records (they are kept in a shared Redis).
    pub fn is_shared(&self) -> bool {
        matches!(self.persist, Persist::Redis(_))
    }

    /// Reads the records again from the shared Redis and applies them if another instance
    /// changed them. A failure is logged and leaves the records as they are.
    pub async fn refresh(&self) {
        let Some(redis) = &self.redis else { return };
        let stored = match redis.get_bytes(REDIS_NAME).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(error = %e, "Runtime keys: Redis unreachable; keeping the current ones");
                return;
            }
        };
        let next: BTreeMap<String, KeyRecord> = match stored {
            None => BTreeMap::new(),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(error = %e, "Runtime keys in Redis do not decode; keeping the current ones");
                    return;
                }
            },
        };
        let mut records = self.records.lock().await;
        if *records == next {
            return;
        }
        match self.apply(&next) {
            Ok(()) => {
                tracing::info!(
                    keys = next.len(),
                    "Runtime keys changed by another instance: applied"
                );
                *records = next;
            }
            Err(e) => {
                tracing::warn!(error = ?e, "Runtime keys in Redis are invalid; keeping the current ones")
            }
        }
    }

    /// Every record, by id.
    pub async fn records(&self) -> BTreeMap<String, KeyRecord> {
        self.records.lock().await.clone()
    }

    /// Applies `change` to the records, checks and persists the result, then makes it
    /// effective; on any failure nothing changes. Returns what `change` returned.
    pub async fn change<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, KeyRecord>) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let mut records = self.records.lock().await;
        // Shared records: start from what is stored now, so that a change made on
        // another instance since the last refresh is not written over.
        let mut next = match &self.redis {
            Some(redis) => {
                let stored = redis
                    .get_bytes(REDIS_NAME)
                    .await
                    .map_err(|e| KeyError::Unavailable(format!("reading from Redis: {e}")))?;
                match stored {
                    Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                        KeyError::Unavailable(format!(
                            "the key records in Redis do not decode: {e}"
                        ))
                    })?,
                    None => BTreeMap::new(),
                }
            }
            None => records.clone(),
        };
        let out = change(&mut next)?;
        self.check(&next)?;
        self.save(&next).await?;
        self.apply(&next)?;
        *records = next;
        Ok(out)
    }

    fn check(&self, records: &BTreeMap<String, KeyRecord>) -> Result<(), KeyError> {
        // Building both tables checks globs, dates, digests and limits.
        let scratch_keys = RuntimeKeys::default();
        let scratch_limits = RuntimeLimits::default();
        let (keys, disabled, limits) = split(records)?;
        scratch_keys
            .replace(&keys, disabled)
            .map_err(KeyError::Invalid)?;
        scratch_limits.replace(limits).map_err(|problems| {
            KeyError::Invalid(
                problems
                    .iter()
                    .map(|p| format!("{}: {}", p.path.replacen("quotas.keys.", "", 1), p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }

    fn apply(&self, records: &BTreeMap<String, KeyRecord>) -> Result<(), KeyError> {
        let (keys, disabled, limits) = split(records)?;
        self.keys
            .replace(&keys, disabled)
            .map_err(KeyError::Invalid)?;
        self.limits
            .replace(limits)
            .map_err(|p| KeyError::Invalid(format!("{p:?}")))
    }

    async fn save(&self, records: &BTreeMap<String, KeyRecord>) -> Result<(), KeyError> {
        let bytes = serde_json::to_vec_pretty(records)
            .map_err(|e| KeyError::Unavailable(format!("encoding the key records: {e}")))?;
        match (&self.persist, &self.redis) {
            (Persist::Redis(_), Some(redis)) => redis
                .set_bytes(REDIS_NAME, &bytes, None)
                .await
                .map_err(|e| KeyError::Unavailable(format!("saving to Redis: {e}"))),
            (Persist::File(path), _) => write_atomically(path, &bytes)
                .await
                .map_err(|e| KeyError::Unavailable(format!("{}: {e}", path.display()))),
            (Persist::Redis(_), None) => Err(KeyError::Unavailable("no Redis store".into())),
            (Persist::Nowhere, _) => Err(KeyError::Unavailable("no admin API".into())),
        }
    }
}

/// The runtime keys, the ids switched off, and the limits, from the records.
type Split = (Vec<RuntimeKey>, HashSet<String>, BTreeMap<String, Quota>);

fn split(records: &BTreeMap<String, KeyRecord>) -> Result<Split, KeyError> {
    let mut keys = Vec::new();
    let mut disabled = HashSet::new();
    let mut limits = BTreeMap::new();
    for (id, r) in records {
        match &r.sha256 {
            Some(sha256) => keys.push(RuntimeKey {
                id: id.clone(),
                sha256: sha256.clone(),
                team: r.team.clone(),
                tier: r.tier.clone(),
                models: r.models.clone(),
                enabled: r.enabled,
                expires: r.expires.clone(),
            }),
            None if !r.enabled => {
                disabled.insert(id.clone());
            }
            None => {}
        }
        if let Some(value) = &r.limits {
            let quota: Quota = serde_json::from_value(value.clone())
                .map_err(|e| KeyError::Invalid(format!("`{id}`: limits: {e}")))?;
            limits.insert(id.clone(), quota);
        }
    }
    Ok((keys, disabled, limits))
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: a
/// crash leaves the old file or the new one, never half of one.
async fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// A new secret: `tg-` and 40 random hex digits (160 bits).
pub fn new_secret() -> String {
    let mut s = String::from("tg-");
    for _ in 0..5 {
        s.push_str(&format!("{:08x}", fastrand::u32(..)));
    }
    s
}

/// The lower-case hex SHA-256 of `secret`.
pub fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How often an instance reads the shared records again.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The background service that keeps an instance's runtime keys in step with the others
/// sharing its Redis.
pub struct KeyRefresher(pub Arc<KeyRegistry>);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        if !self.0.is_shared() {
            return;
        }
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.refresh().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(dir: &tempfile::TempDir) -> KeyRegistry {
        KeyRegistry::load(Persist::File(dir.path().join("keys.json"))).unwrap()
    }

    #[tokio::test]
    async fn records_survive_a_restart_and_bad_changes_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(&dir);
        r.change(|m| {
            m.insert(
                "k".into(),
                KeyRecord {
                    sha256: Some(sha256_hex("tg-secret")),
                    limits: Some(serde_json::json!({"rpm": 5})),
                    ..KeyRecord::default()
                },
            );
            m.insert(
                "configured".into(),
                KeyRecord {
                    enabled: false,
                    ..KeyRecord::default()
                },
            );
            Ok(())
        })
        .await
        .unwrap();
        assert!(r.keys.is_disabled("configured"));

        // A bad change is refused whole.
        for bad in [
            serde_json::json!({"rpm": "many"}),
            serde_json::json!({"budgets": [{"tokens": 5}]}),
        ] {
            let refused = r
                .change(|m| {
                    m.get_mut("k").unwrap().limits = Some(bad.clone());
                    m.remove("configured");
                    Ok(())
                })
                .await;
            assert!(matches!(refused, Err(KeyError::Invalid(_))), "{refused:?}");
        }
        assert!(r.keys.is_disabled("configured"));

        let again = registry(&dir);
        assert_eq!(again.records().await, r.records().await);
        assert!(again.keys.is_disabled("configured"));
    }

    #[test]
    fn secrets_are_long_and_hashed() {
        let s = new_secret();
        assert!(s.starts_with("tg-") && s.len() == 43, "{s}");
        assert_ne!(s, new_secret());
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
