//! The cache's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{Counter, IntCounter, IntCounterVec, IntGauge};
use tollgate_plugin::TokenUsage;

use super::Status;
use crate::metrics::{counter, counter_vec, float_counter, gauge};

struct Metrics {
    requests: IntCounterVec,
    coalesced: IntCounter,
    hit_bytes: IntCounter,
    stored: IntCounter,
    stored_bytes: IntCounter,
    saved_tokens: IntCounterVec,
    saved_usd: Counter,
    faults: IntCounterVec,
    resident: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requests: counter_vec(
        "tollgate_cache_requests_total",
        "Cacheable-route requests by what the response cache did (hit, miss, bypass).",
        &["result"],
    ),
    coalesced: counter(
        "tollgate_cache_coalesced_total",
        "Hits served after waiting for an identical request in flight.",
    ),
    hit_bytes: counter(
        "tollgate_cache_hit_bytes_total",
        "Answer bytes served from the cache.",
    ),
    stored: counter(
        "tollgate_cache_stores_total",
        "Answers stored in the cache.",
    ),
    stored_bytes: counter(
        "tollgate_cache_stored_bytes_total",
        "Answer bytes stored in the cache.",
    ),
    saved_tokens: counter_vec(
        "tollgate_cache_saved_tokens_total",
        "Upstream tokens that cache hits did not spend, by kind (prompt, completion).",
        &["kind"],
    ),
    saved_usd: float_counter(
        "tollgate_cache_saved_usd_total",
        "Upstream cost that cache hits did not spend, at the configured prices.",
    ),
    faults: counter_vec(
        "tollgate_cache_faults_total",
        "Cache operations that failed and were answered as uncached, by reason.",
        &["reason"],
    ),
    resident: gauge(
        "tollgate_cache_memory_bytes",
        "Bytes of answers held by the in-memory cache.",
    ),
});

/// Registers the metrics (so they show before the first request).
pub fn init() {
    LazyLock::force(&METRICS);
}

pub fn request(status: Status) {
    let label = match status {
        Status::Hit => "hit",
        Status::Miss => "miss",
        Status::Bypass => "bypass",
    };
    METRICS.requests.with_label_values(&[label]).inc();
}

pub fn coalesced() {
    METRICS.coalesced.inc();
}

pub fn hit(bytes: usize, usage: Option<TokenUsage>, micro_usd: Option<u64>) {
    METRICS.hit_bytes.inc_by(bytes as u64);
    if let Some(u) = usage {
        METRICS
            .saved_tokens
            .with_label_values(&["prompt"])
            .inc_by(u.prompt);
        METRICS
            .saved_tokens
            .with_label_values(&["completion"])
            .inc_by(u.completion);
    }
    if let Some(micro) = micro_usd {
        METRICS.saved_usd.inc_by(micro as f64 / 1e6);
    }
}

pub fn stored(bytes: usize) {
    METRICS.stored.inc();
    METRICS.stored_bytes.inc_by(bytes as u64);
}

pub fn fault(reason: &'static str) {
    METRICS.faults.with_label_values(&[reason]).inc();
}

pub fn set_resident(bytes: usize) {
    METRICS
        .resident
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}
