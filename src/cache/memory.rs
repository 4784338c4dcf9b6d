//! The in-process backend: TinyUFO (Pingora's cache algorithm) bounded in bytes.
//!
//! TinyUFO weighs entries in `u16` units; an entry weighs its size in
//! [`WEIGHT_UNIT`]-byte units, rounded up. Expired entries are dropped when looked up,
//! and otherwise give way under pressure like any other.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tinyufo::TinyUfo;

use super::entry::Entry;
use super::key::CacheKey;

pub const WEIGHT_UNIT: usize = 64;

/// Entries are guessed at this size to size TinyUFO's frequency sketch.
const TYPICAL_ENTRY: usize = 4 * 1024;

pub struct MemoryBackend {
    ufo: TinyUfo<CacheKey, Arc<Entry>>,
    /// Bytes held (in weight units), from what went in and what was evicted.
    resident_units: AtomicUsize,
    limit_units: usize,
}

impl MemoryBackend {
    pub fn new(max_bytes: usize) -> Self {
        let limit_units = (max_bytes / WEIGHT_UNIT).max(1);
        MemoryBackend {
            ufo: TinyUfo::new(limit_units, (max_bytes / TYPICAL_ENTRY).max(16)),
            resident_units: AtomicUsize::new(0),
            limit_units,
        }
    }

    pub fn get(&self, key: &CacheKey, now_ms: u64) -> Option<Arc<Entry>> {
        let entry = self.ufo.get(key)?;
        // Indexed by a 64-bit hash of the key: a different entry is a collision.
        if entry.key != key.0 {
            return None;
        }
        if entry.is_expired(now_ms) {
            if let Some(gone) = self.ufo.remove(key) {
                self.resident_units
                    .fetch_sub(units(gone.size()), Ordering::Relaxed);
            }
            return None;
        }
        Some(entry)
    }

    /// Stores `entry` unless it is larger than one weight can say (see
    /// [`super::config::MAX_ENTRY_BYTES`]); TinyUFO may still decline it in favour of
    /// more often used entries. Whether it was offered.
    pub fn put(&self, key: CacheKey, entry: Arc<Entry>) -> bool {
        let n = units(entry.size());
        let Ok(weight) = u16::try_from(n) else {
            return false;
        };
        if let Some(old) = self.ufo.remove(&key) {
            self.resident_units
                .fetch_sub(units(old.size()), Ordering::Relaxed);
        }
        self.resident_units.fetch_add(n, Ordering::Relaxed);
        for gone in self.ufo.put(key, entry, weight) {
            self.resident_units
                .fetch_sub(usize::from(gone.weight), Ordering::Relaxed);
        }
        true
    }

    /// Bytes of entries held (rounded up to weight units).
    pub fn resident_bytes(&self) -> usize {
        self.resident_units.load(Ordering::Relaxed) * WEIGHT_UNIT
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_units * WEIGHT_UNIT
    }
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(WEIGHT_UNIT)
}
