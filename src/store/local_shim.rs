//! TEMPORARY: a stand-in for `tollgate_plugin::LocalStore`, which is being written on
//! another branch. It exists only so that this module compiles and its tests run; once
//! `LocalStore` lands, delete this file and use `tollgate_plugin::LocalStore` in
//! `super::local_store()`.
//!
//! Same semantics as the trait describes, nothing more: one mutex over one map.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tollgate_plugin::{Acquire, Acquired, Adjust, Release, Store, StoreError};

enum Entry {
    Counter {
        value: u64,
        expires_at_ms: Option<u64>,
    },
    /// Lease id → end (unix ms).
    Leases(HashMap<String, u64>),
}

#[derive(Default)]
pub struct LocalShim {
    entries: Mutex<HashMap<String, Entry>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LocalShim {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Entry>>, StoreError> {
        self.entries
            .lock()
            .map_err(|_| StoreError("local store poisoned".into()))
    }
}

/// The entry's value now; drops what has expired.
fn live(entries: &mut HashMap<String, Entry>, key: &str, now: u64) -> u64 {
    let expired = match entries.get_mut(key) {
        None => return 0,
        Some(Entry::Counter {
            expires_at_ms: Some(at),
            ..
        }) if *at <= now => true,
        Some(Entry::Counter { value, .. }) => return *value,
        Some(Entry::Leases(leases)) => {
            leases.retain(|_, end| *end > now);
            return leases.len() as u64;
        }
    };
    if expired {
        entries.remove(key);
    }
    0
}

#[async_trait]
impl Store for LocalShim {
    async fn acquire(&self, items: &[Acquire]) -> Result<Acquired, StoreError> {
        let now = now_ms();
        let mut entries = self.lock()?;
        let mut pending: HashMap<&str, u64> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let current = live(&mut entries, &item.key, now);
            let need = match (&item.lease, entries.get(&item.key)) {
                (Some(lease), Some(Entry::Leases(leases))) if leases.contains_key(&lease.id) => 0,
                (Some(_), _) => 1,
                (None, _) => item.amount,
            };
            let extra = pending.get(item.key.as_str()).copied().unwrap_or(0);
            if current.saturating_add(extra).saturating_add(need) > item.limit {
                return Ok(Acquired::Refused { index, current });
            }
            pending.insert(&item.key, extra + need);
        }
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            let entry = entries
                .entry(item.key.clone())
                .or_insert_with(|| match item.lease {
                    Some(_) => Entry::Leases(HashMap::new()),
                    None => Entry::Counter {
                        value: 0,
                        expires_at_ms: None,
                    },
                });
            match (entry, &item.lease) {
                (Entry::Leases(leases), Some(lease)) => {
                    leases.insert(lease.id.clone(), now.saturating_add(lease.ttl_ms));
                    values.push(leases.len() as u64);
                }
                (
                    Entry::Counter {
                        value,
                        expires_at_ms,
                    },
                    None,
                ) => {
                    *value = value.saturating_add(item.amount);
                    *expires_at_ms = item.expires_at_ms;
                    values.push(*value);
                }
                _ => return Err(StoreError(format!("{}: wrong kind of counter", item.key))),
            }
        }
        Ok(Acquired::Granted(values))
    }

    async fn adjust(&self, adjust: &[Adjust], release: &[Release]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut entries = self.lock()?;
        for item in adjust {
            live(&mut entries, &item.key, now);
            match entries.get_mut(&item.key) {
                Some(Entry::Counter { value, .. }) => {
                    *value = value.saturating_add_signed(item.delta);
                }
                Some(Entry::Leases(_)) => {}
                None if item.delta > 0 => {
                    entries.insert(
                        item.key.clone(),
                        Entry::Counter {
                            value: item.delta.unsigned_abs(),
                            expires_at_ms: item.expires_at_ms,
                        },
                    );
                }
                None => {}
            }
        }
        for item in release {
            if let Some(Entry::Leases(leases)) = entries.get_mut(&item.key) {
                leases.remove(&item.lease_id);
            }
        }
        Ok(())
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        let now = now_ms();
        let mut entries = self.lock()?;
        Ok(keys.iter().map(|k| live(&mut entries, k, now)).collect())
    }

    fn backend(&self) -> &'static str {
        "local"
    }
}
