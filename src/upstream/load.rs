//! Load of self-hosted inference servers (vLLM, SGLang), scraped from their Prometheus
//! metrics for the `load_aware` strategy.
//!
//! STUB: nothing is scraped; load is always unknown.

use std::sync::{Arc, Weak};
use std::time::Duration;

use pingora_core::connectors::http::Connector;

use super::Pool;

/// One scrape's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Requests queued (`vllm:num_requests_waiting`).
    pub waiting: f64,
    /// Requests running (`vllm:num_requests_running`).
    pub running: f64,
    /// KV cache usage 0–1 (`vllm:kv_cache_usage_perc` or `vllm:gpu_cache_usage_perc`).
    pub cache_usage: Option<f64>,
}

/// The latest figures of one endpoint.
#[derive(Debug, Default)]
pub struct LoadCell {}

impl LoadCell {
    /// The latest figures, if younger than `stale_after`.
    pub fn fresh(&self, _stale_after: Duration) -> Option<Load> {
        None
    }
}

/// Scrapes every endpoint of a `load_aware` pool until the pool is dropped.
pub async fn run(_pool: Weak<Pool>, _connector: Arc<Connector>) {}
