//! Gateway API keys: the table of key digests and the lookup on every request's path.
//!
//! Only SHA-256 digests are kept. A presented key is hashed and its digest looked up in a
//! map: the lookup's timing depends on the digest, which tells an attacker nothing about
//! any configured key, and the final equality check is constant-time anyway.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tollgate_plugin::{ModelFilter, Principal, PrincipalKind};

use crate::config::KeyConfig;
use crate::problem::Problems;

pub(crate) type KeyDigest = [u8; 32];

pub(crate) struct KeyEntry {
    digest: KeyDigest,
    /// Its place in `auth.keys`, for messages.
    config_index: usize,
    pub principal: Principal,
    pub enabled: bool,
    /// Unix seconds from which the key is refused.
    pub expires_at: Option<i64>,
}

/// What a presented key turned out to be.
pub(crate) enum KeyLookup<'a> {
    Valid(&'a KeyEntry),
    Disabled(&'a KeyEntry),
    Expired(&'a KeyEntry),
    Unknown,
}

#[derive(Default)]
pub(crate) struct KeyTable {
    entries: Vec<KeyEntry>,
    by_digest: HashMap<KeyDigest, usize>,
}

impl KeyTable {
    pub fn build(keys: &[serde_saphyr::Spanned<KeyConfig>], p: &mut Problems<'_>) -> KeyTable {
        let mut table = KeyTable::default();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, spanned) in keys.iter().enumerate() {
            let k = &spanned.value;
            let path = format!("auth.keys[{i}]");
            let id = k.id.value.trim();
            if id.is_empty() {
                p.at(k.id.referenced, format!("{path}.id"), "must not be empty");
            } else if let Some(first) = ids.insert(id, i) {
                p.at(
                    k.id.referenced,
                    format!("{path}.id"),
                    format!("duplicate id `{id}` (also auth.keys[{first}].id)"),
                );
            }
            let digest = match (&k.secret, &k.sha256) {
                (Some(_), Some(h)) => {
                    p.at(
                        h.referenced,
                        &path,
                        "give either `secret` or `sha256`, not both",
                    );
                    None
                }
                (None, None) => {
                    p.at(spanned.referenced, &path, "needs `secret` or `sha256`");
                    None
                }
                (Some(s), None) if s.value.expose().is_empty() => {
                    p.at(s.referenced, format!("{path}.secret"), "must not be empty");
                    None
                }
                (Some(s), None) => Some(digest_of(s.value.expose().as_bytes())),
                (None, Some(h)) => {
                    let mut out = [0u8; 32];
                    match hex::decode_to_slice(h.value.trim(), &mut out) {
                        Ok(()) => Some(out),
                        Err(_) => {
                            p.at(
                                h.referenced,
                                format!("{path}.sha256"),
                                "must be 64 hex digits",
                            );
                            None
                        }
                    }
                }
            };
            let models = match &k.models {
                None => ModelFilter::any(),
                Some(m) if m.value.is_empty() => {
                    p.at(
                        m.referenced,
                        format!("{path}.models"),
                        "lists no model; leave it out to allow every model",
                    );
                    ModelFilter::any()
                }
                Some(m) => ModelFilter::new(&m.value).unwrap_or_else(|e| {
                    p.at(
                        m.referenced,
                        format!("{path}.models"),
                        format!("bad glob {e}"),
                    );
                    ModelFilter::any()
                }),
            };
            let expires_at = k.expires.as_ref().and_then(|e| {
                match OffsetDateTime::parse(e.value.trim(), &Rfc3339) {
                    Ok(t) => Some(t.unix_timestamp()),
                    Err(err) => {
                        p.at(
                            e.referenced,
                            format!("{path}.expires"),
                            format!("not an RFC 3339 timestamp (e.g. 2026-01-31T00:00:00Z): {err}"),
                        );
                        None
                    }
                }
            });
            let Some(digest) = digest else { continue };
            if let Some(&other) = table.by_digest.get(&digest) {
                p.at(
                    spanned.referenced,
                    &path,
                    format!(
                        "the same key as auth.keys[{}] (`{}`)",
                        table.entries[other].config_index, table.entries[other].principal.id
                    ),
                );
                continue;
            }
            table.by_digest.insert(digest, table.entries.len());
            table.entries.push(KeyEntry {
                digest,
                config_index: i,
                principal: Principal {
                    kind: PrincipalKind::ApiKey,
                    id: id.to_owned(),
                    team: k.team.clone(),
                    tier: k.tier.clone(),
                    models,
                },
                enabled: k.enabled,
                expires_at,
            });
        }
        table
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn principals(&self) -> Vec<(Principal, bool)> {
        self.entries
            .iter()
            .map(|e| (e.principal.clone(), e.enabled))
            .collect()
    }

    pub fn has_id(&self, id: &str) -> bool {
        self.entries.iter().any(|e| e.principal.id == id)
    }

    /// Looks a presented key up. Its cost is one SHA-256 of the key and one map lookup.
    pub fn lookup(&self, presented: &[u8]) -> KeyLookup<'_> {
        let digest = digest_of(presented);
        let Some(&index) = self.by_digest.get(&digest) else {
            return KeyLookup::Unknown;
        };
        let entry = &self.entries[index];
        if !bool::from(entry.digest.ct_eq(&digest)) {
            return KeyLookup::Unknown;
        }
        if !entry.enabled {
            return KeyLookup::Disabled(entry);
        }
        if entry.expires_at.is_some_and(|at| now_unix() >= at) {
            return KeyLookup::Expired(entry);
        }
        KeyLookup::Valid(entry)
    }
}

pub(crate) fn digest_of(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
