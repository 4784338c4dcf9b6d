//! Keys managed at run time (the admin API): created, disabled and rotated without a
//! restart, beside the configured ones.
//!
//! The engine keeps one [`RuntimeKeys`] for the process, fills it from what it persisted,
//! and hands it to every [`crate::AuthPlugin`] it builds, so runtime keys outlive config
//! reloads. Each change replaces the whole table at once, under a write lock: a request
//! sees the old or the new one, never half of each.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tollgate_plugin::{ModelFilter, Principal, PrincipalKind};

use crate::keys::{KeyDigest, digest_of};

/// A key as the admin API stores it: never its secret, only the secret's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeKey {
    pub id: String,
    /// Lower-case hex SHA-256 of the secret.
    pub sha256: String,
    pub team: Option<String>,
    pub tier: Option<String>,
    /// Model globs; `None`: every model.
    pub models: Option<Vec<String>>,
    pub enabled: bool,
    /// RFC 3339.
    pub expires: Option<String>,
}

pub(crate) struct Entry {
    digest: KeyDigest,
    pub principal: Principal,
    pub enabled: bool,
    pub expires_at: Option<i64>,
}

#[derive(Default)]
struct Table {
    by_digest: HashMap<KeyDigest, Arc<Entry>>,
    /// Ids (configured keys included) switched off at run time.
    disabled: HashSet<String>,
}

#[derive(Default)]
pub struct RuntimeKeys {
    table: RwLock<Table>,
}

impl RuntimeKeys {
    /// Replaces every runtime key, and the set of ids switched off; the first problem
    /// found (naming the key) leaves the table as it was.
    pub fn replace(&self, keys: &[RuntimeKey], disabled: HashSet<String>) -> Result<(), String> {
        let mut table = Table {
            by_digest: HashMap::with_capacity(keys.len()),
            disabled,
        };
        for k in keys {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(k.sha256.trim(), &mut digest)
                .map_err(|_| format!("key `{}`: sha256 must be 64 hex digits", k.id))?;
            let models = match &k.models {
                None => ModelFilter::any(),
                Some(m) => {
                    ModelFilter::new(m).map_err(|e| format!("key `{}`: models: {e}", k.id))?
                }
            };
            let expires_at = match &k.expires {
                None => None,
                Some(e) => Some(
                    OffsetDateTime::parse(e.trim(), &Rfc3339)
                        .map_err(|err| format!("key `{}`: expires: {err}", k.id))?
                        .unix_timestamp(),
                ),
            };
            let entry = Entry {
                digest,
                principal: Principal {
                    kind: PrincipalKind::ApiKey,
                    id: k.id.clone(),
                    team: k.team.clone(),
                    tier: k.tier.clone(),
                    models,
                },
                enabled: k.enabled,
                expires_at,
            };
            if table.by_digest.insert(digest, Arc::new(entry)).is_some() {
                return Err(format!("key `{}`: the same secret as another key", k.id));
            }
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime key presented, if any (no hashing while there is none).
    pub(crate) fn lookup(&self, presented: &[u8]) -> Option<Arc<Entry>> {
        let table = self.read();
        if table.by_digest.is_empty() {
            return None;
        }
        let digest = digest_of(presented);
        let entry = table.by_digest.get(&digest)?.clone();
        bool::from(entry.digest.ct_eq(&digest)).then_some(entry)
    }

    /// Whether `id` was switched off at run time.
    pub fn is_disabled(&self, id: &str) -> bool {
        let table = self.read();
        !table.disabled.is_empty() && table.disabled.contains(id)
    }
}
