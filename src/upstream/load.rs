//! Load of self-hosted inference servers (vLLM, SGLang), scraped from their Prometheus
//! metrics for the `load_aware` strategy.
//!
//! [`run`] fetches each endpoint's metrics every `scrape_interval` and stores the figures
//! in the endpoint's [`LoadCell`], which the balancer reads without blocking. A failed
//! scrape changes nothing: the last figures simply go stale, and a stale endpoint is
//! balanced on the gateway's own in-flight count.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::upstream::Connector;
use arc_swap::ArcSwapOption;
use pingora_http::RequestHeader;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Endpoint, Pool};

/// Longest a scrape may take, whatever the interval.
const MAX_SCRAPE_TIME: Duration = Duration::from_secs(2);

/// Largest metrics body read; vLLM's is some tens of KiB.
const MAX_METRICS_BYTES: usize = 4 << 20;

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

// === impl LoadCell ===

/// The latest figures of one endpoint.
#[derive(Debug, Default)]
pub struct LoadCell {
    latest: ArcSwapOption<Taken>,
}

#[derive(Debug)]
struct Taken {
    load: Load,
    at: Instant,
}

impl LoadCell {
    /// The latest figures, if younger than `stale_after`.
    pub fn fresh(&self, stale_after: Duration) -> Option<Load> {
        let guard = self.latest.load();
        let taken = guard.as_ref()?;
        (Instant::now().saturating_duration_since(taken.at) <= stale_after).then_some(taken.load)
    }

    /// Stores figures taken now.
    pub fn set(&self, load: Load) {
        self.latest.store(Some(Arc::new(Taken {
            load,
            at: Instant::now(),
        })));
    }
}

// === parse_metrics ===

/// Figures of interest in a Prometheus text exposition, each summed over its label sets
/// (a server may serve several models), except cache usage, which is the fullest one
/// (a fraction; several engines do not add up). `None` when none is present.
///
/// vLLM: `vllm:num_requests_waiting`, `vllm:num_requests_running`,
/// `vllm:kv_cache_usage_perc` (else the older `vllm:gpu_cache_usage_perc`).
/// SGLang: `sglang:num_queue_reqs`, `sglang:num_running_reqs`, `sglang:token_usage`.
///
/// The scanner reads only sample lines of these names and skips anything else,
/// malformed lines included, so one odd metric cannot hide the load.
pub fn parse_metrics(text: &str) -> Option<Load> {
    #[derive(Default)]
    struct Seen {
        waiting: Option<f64>,
        running: Option<f64>,
        kv_cache: Option<f64>,
        gpu_cache: Option<f64>,
        token_usage: Option<f64>,
    }
    fn add(slot: &mut Option<f64>, v: f64) {
        *slot = Some(slot.unwrap_or(0.0) + v);
    }
    fn max(slot: &mut Option<f64>, v: f64) {
        *slot = Some(slot.map_or(v, |s| s.max(v)));
    }
    let mut seen = Seen::default();
    for line in text.lines() {
        let Some((name, value)) = sample(line) else {
            continue;
        };
        match name {
            "vllm:num_requests_waiting" | "sglang:num_queue_reqs" => add(&mut seen.waiting, value),
            "vllm:num_requests_running" | "sglang:num_running_reqs" => {
                add(&mut seen.running, value)
            }
            "vllm:kv_cache_usage_perc" => max(&mut seen.kv_cache, value),
            "vllm:gpu_cache_usage_perc" => max(&mut seen.gpu_cache, value),
            "sglang:token_usage" => max(&mut seen.token_usage, value),
            _ => {}
        }
    }
    let cache_usage = seen.kv_cache.or(seen.gpu_cache).or(seen.token_usage);
    if seen.waiting.is_none() && seen.running.is_none() && cache_usage.is_none() {
        return None;
    }
    Some(Load {
        waiting: seen.waiting.unwrap_or(0.0),
        running: seen.running.unwrap_or(0.0),
        cache_usage,
    })
}

/// The metric name and value of one sample line of the text exposition format
/// (`name{label="value",…} value [timestamp]`); `None` for comments, blank, malformed
/// or non-finite samples.
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim_start();
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    if name_len == 0 {
        return None;
    }
    let (name, mut rest) = line.split_at(name_len);
    if let Some(labels) = rest.strip_prefix('{') {
        rest = after_labels(labels)?;
    }
    // At least one blank between the name (or labels) and the value.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    value.is_finite().then_some((name, value))
}

/// What follows the closing `}` of a label set that starts at `labels`; quoted values
/// may hold `}`, `,` and escaped quotes.
fn after_labels(labels: &str) -> Option<&str> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(&labels[i + 1..]),
            _ => {}
        }
    }
    None
}

// === run ===

/// Scrapes every endpoint of a `load_aware` pool until the pool is dropped.
pub async fn run(pool: Weak<Pool>, connector: Arc<Connector>) {
    let (interval, endpoints) = match pool.upgrade() {
        Some(p) => (p.spec.balance.load.scrape_interval, p.endpoints.len()),
        None => return,
    };
    let time_limit = interval.min(MAX_SCRAPE_TIME);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Per endpoint: whether its last answer failed to parse, so that is warned once.
    let mut unparsable = vec![false; endpoints];
    loop {
        ticks.tick().await;
        let Some(p) = pool.upgrade() else {
            return;
        };
        let mut scrapes = JoinSet::new();
        for i in 0..p.endpoints.len() {
            let (p, connector) = (Arc::clone(&p), Arc::clone(&connector));
            scrapes.spawn(async move {
                let e = &p.endpoints[i];
                let got = tokio::time::timeout(time_limit, scrape(&p, e, &connector))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ScrapeError::Fetch(format!(
                            "timed out after {time_limit:?}"
                        )))
                    });
                (i, got)
            });
        }
        while let Some(done) = scrapes.join_next().await {
            let Ok((i, got)) = done else {
                continue;
            };
            let e = &p.endpoints[i];
            match got {
                Ok(load) => {
                    if std::mem::take(&mut unparsable[i]) {
                        tracing::info!(pool = %p.spec.name, endpoint = %e.spec.name, "Load metrics parse again");
                    }
                    e.load.set(load);
                }
                Err(ScrapeError::Fetch(error)) => {
                    tracing::debug!(pool = %p.spec.name, endpoint = %e.spec.name, %error, "Load scrape failed");
                }
                Err(ScrapeError::Unparsable) => {
                    if !std::mem::replace(&mut unparsable[i], true) {
                        tracing::warn!(
                            pool = %p.spec.name,
                            endpoint = %e.spec.name,
                            path = %p.spec.balance.load.metrics_path,
                            "Load metrics hold no vLLM or SGLang queue figures; balancing on in-flight requests"
                        );
                    }
                }
            }
        }
        // Requests waiting for room may fit now.
        p.recheck_queue();
        // Not held across the wait: a reload may drop the pool meanwhile.
        drop(p);
    }
}

#[derive(Debug)]
enum ScrapeError {
    /// No answer, or not a 200 with a body of bounded size.
    Fetch(String),
    /// An answer without any figure `parse_metrics` knows.
    Unparsable,
}

/// One GET of the endpoint's metrics.
async fn scrape(
    pool: &Pool,
    endpoint: &Endpoint,
    connector: &Connector,
) -> Result<Load, ScrapeError> {
    let fetch = |what: &str, e: &dyn std::fmt::Display| ScrapeError::Fetch(format!("{what}: {e}"));
    let addr = endpoint
        .addrs
        .pick()
        .await
        .map_err(|e| fetch("resolving", &e))?;
    let peer = pool.peer(endpoint, addr, pool.spec.balance.load.scrape_interval * 2);
    let (mut session, _reused) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| fetch("connecting", &e))?;
    let request = metrics_request(endpoint, &pool.spec.balance.load.metrics_path)
        .map_err(|e| fetch("building the request", &e))?;
    session
        .write_request_header(Box::new(request))
        .await
        .map_err(|e| fetch("sending", &e))?;
    session
        .finish_request_body()
        .await
        .map_err(|e| fetch("sending", &e))?;
    session
        .read_response_header()
        .await
        .map_err(|e| fetch("reading the header", &e))?;
    let status = session.response_header().map(|h| h.status.as_u16());
    if status != Some(200) {
        return Err(ScrapeError::Fetch(format!("status {status:?}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| fetch("reading the body", &e))?
    {
        if body.len() + chunk.len() > MAX_METRICS_BYTES {
            return Err(ScrapeError::Fetch(format!(
                "body over {MAX_METRICS_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if session.response_done() {
        // Kept for the next round, a little longer than the interval.
        let idle = pool.spec.balance.load.scrape_interval * 2;
        connector.release_http_session(session, &peer, idle).await;
    }
    parse_metrics(&String::from_utf8_lossy(&body)).ok_or(ScrapeError::Unparsable)
}

/// The peer for metrics: the endpoint's address and TLS settings, with the pool's
/// connect timeout.
/// `GET <metrics_path>` with the endpoint's host. No credential: it is not an API call.
fn metrics_request(endpoint: &Endpoint, path: &str) -> pingora_error::Result<RequestHeader> {
    let mut req = RequestHeader::build("GET", path.as_bytes(), Some(3))?;
    req.insert_header("host", endpoint.host_header())?;
    req.insert_header("accept", "text/plain")?;
    req.insert_header(
        "user-agent",
        concat!("tollgate/", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(req)
}

#[cfg(test)]
mod tests;
