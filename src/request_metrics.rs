//! What every request records in Prometheus, and the upstream endpoints' state, read at
//! scrape time. Labels are bounded: routes, configured models and pools, status classes,
//! error codes; per-key and per-team series only when `admin.metrics.per_key` is on.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

use crate::error::GatewayError;
use crate::handler::RequestCtx;
use crate::metrics::{counter_vec, float_counter_vec, gauge, gauge_vec, histogram_vec};
use crate::state::State;
use crate::upstream::breaker::BreakerState;

const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const GAP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    overhead: HistogramVec,
    ttft: HistogramVec,
    inter_chunk: HistogramVec,
    tokens: IntCounterVec,
    cost: prometheus::CounterVec,
    rejections: IntCounterVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
    fallbacks: IntCounterVec,
    in_flight: IntGauge,
    key_requests: IntCounterVec,
    key_tokens: IntCounterVec,
    endpoint_up: IntGaugeVec,
    endpoint_breaker: IntGaugeVec,
    endpoint_in_flight: IntGaugeVec,
    queue_length: IntGaugeVec,
    redis_errors: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requests: counter_vec(
        "tollgate_requests_total",
        "Requests answered, by route, model (the configured one asked for; empty when unknown), serving pool and status class.",
        &["route", "model", "pool", "status"],
    ),
    duration: histogram_vec(
        "tollgate_request_duration_seconds",
        "From the request's arrival to the end of its response.",
        &["route", "model"],
        DURATION_BUCKETS,
    ),
    overhead: histogram_vec(
        "tollgate_gateway_overhead_seconds",
        "Time a request spent in the gateway itself: its duration less the time spent on upstream attempts and their answers (parse, auth, limits, cache, settle).",
        &["route"],
        OVERHEAD_BUCKETS,
    ),
    ttft: histogram_vec(
        "tollgate_upstream_ttft_seconds",
        "Streams: from sending the upstream request to its first body chunk.",
        &["pool"],
        TTFT_BUCKETS,
    ),
    inter_chunk: histogram_vec(
        "tollgate_upstream_inter_chunk_seconds",
        "Streams: time between successive body chunks from the upstream.",
        &["pool"],
        GAP_BUCKETS,
    ),
    tokens: counter_vec(
        "tollgate_tokens_total",
        "Tokens charged, by model that served and kind (prompt, completion, cached; cached is part of prompt).",
        &["model", "kind"],
    ),
    cost: float_counter_vec(
        "tollgate_cost_usd_total",
        "Cost charged at the configured prices, by model that served.",
        &["model"],
    ),
    rejections: counter_vec(
        "tollgate_rejections_total",
        "Requests refused by the gateway before any upstream answered, by reason (auth, model_not_allowed, rate_limit, budget, state_unavailable, body_too_large, invalid_request, unknown_model, context_too_long, method_not_allowed, unknown_url, timeout, queue_full, queue_timeout, queue_shed).",
        &["reason"],
    ),
    errors: counter_vec(
        "tollgate_upstream_failures_total",
        "Requests that failed because of the upstream side, by error code.",
        &["code"],
    ),
    retries: counter_vec(
        "tollgate_retries_total",
        "Upstream attempts beyond a request's first, by pool of the retried attempt.",
        &["pool"],
    ),
    fallbacks: counter_vec(
        "tollgate_fallbacks_total",
        "Requests answered by another model than the one asked for, by model asked.",
        &["model"],
    ),
    in_flight: gauge("tollgate_requests_in_flight", "Requests being handled now."),
    key_requests: counter_vec(
        "tollgate_key_requests_total",
        "Requests by key id and team (only with admin.metrics.per_key).",
        &["key", "team"],
    ),
    key_tokens: counter_vec(
        "tollgate_key_tokens_total",
        "Tokens charged by key id, team and kind (only with admin.metrics.per_key).",
        &["key", "team", "kind"],
    ),
    endpoint_up: gauge_vec(
        "tollgate_endpoint_up",
        "1 when the endpoint passes its health checks (or has none), else 0.",
        &["pool", "endpoint"],
    ),
    endpoint_breaker: gauge_vec(
        "tollgate_endpoint_breaker_state",
        "Circuit breaker: 0 closed, 1 half-open, 2 open.",
        &["pool", "endpoint"],
    ),
    endpoint_in_flight: gauge_vec(
        "tollgate_endpoint_in_flight",
        "Requests in flight on the endpoint.",
        &["pool", "endpoint"],
    ),
    queue_length: gauge_vec(
        "tollgate_queue_length",
        "Requests waiting for a slot in a pool's queue, by pool and priority class.",
        &["pool", "priority"],
    ),
    redis_errors: counter_vec(
        "tollgate_redis_errors_total",
        "Redis calls that failed or timed out, by component (limits, cache).",
        &["component"],
    ),
});

/// Registers every series (so a scrape shows them before the first request).
pub fn init() {
    LazyLock::force(&METRICS);
    crate::upstream::queue::init_metrics();
}

/// Counts a request in flight for as long as it lives.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> InFlight {
        METRICS.in_flight.inc();
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
    }
}

/// A stream's timings, per pool.
pub struct StreamTimer {
    ttft: Histogram,
    gap: Histogram,
}

impl StreamTimer {
    pub fn new(pool: &str) -> Self {
        StreamTimer {
            ttft: METRICS.ttft.with_label_values(&[pool]),
            gap: METRICS.inter_chunk.with_label_values(&[pool]),
        }
    }

    pub fn first_chunk(&self, ttft: Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    pub fn next_chunk(&self, gap: Duration) {
        self.gap.observe(gap.as_secs_f64());
    }
}

/// A Redis call of `component` failed.
pub fn redis_error(component: &'static str) {
    METRICS.redis_errors.with_label_values(&[component]).inc();
}

/// Records a finished request (after its response, beside the access-log line).
pub fn record(ctx: &RequestCtx, status: u16, per_key: bool) {
    let m = &*METRICS;
    let model = ctx.resolved_model.as_deref().unwrap_or("");
    let pool = ctx
        .attempts
        .last()
        .map_or("", |a| a.pool.spec.name.as_str());
    let class = match status {
        0 => "none",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    m.requests
        .with_label_values(&[ctx.route, model, pool, class])
        .inc();
    let elapsed = ctx.started.elapsed();
    m.duration
        .with_label_values(&[ctx.route, model])
        .observe(elapsed.as_secs_f64());
    m.overhead
        .with_label_values(&[ctx.route])
        .observe(elapsed.saturating_sub(ctx.upstream_time).as_secs_f64());
    if ctx.attempts.len() > 1 {
        for a in &ctx.attempts[1..] {
            m.retries.with_label_values(&[&a.pool.spec.name]).inc();
        }
    }
    if let (Some(asked), Some(served)) = (&ctx.resolved_model, &ctx.served_model)
        && asked != served
    {
        m.fallbacks.with_label_values(&[asked]).inc();
    }
    let served = ctx.served_model.as_deref().unwrap_or(model);
    let usage = ctx.usage();
    if let Some(u) = usage {
        for (kind, n) in [
            ("prompt", u.prompt),
            ("completion", u.completion),
            ("cached", u.cached),
        ] {
            if n > 0 {
                m.tokens.with_label_values(&[served, kind]).inc_by(n);
            }
        }
    }
    if let Some(micro) = ctx.cost_micro_usd.filter(|c| *c > 0) {
        m.cost
            .with_label_values(&[served])
            .inc_by(micro as f64 / 1e6);
    }
    if let Some(e) = &ctx.error {
        match rejection_reason(e) {
            Some(reason) => m.rejections.with_label_values(&[reason]).inc(),
            None => m.errors.with_label_values(&[e.code()]).inc(),
        }
    }
    if per_key && let Some(p) = &ctx.principal {
        let team = p.team.as_deref().unwrap_or("");
        m.key_requests.with_label_values(&[&p.id, team]).inc();
        if let Some(u) = usage {
            for (kind, n) in [("prompt", u.prompt), ("completion", u.completion)] {
                if n > 0 {
                    m.key_tokens
                        .with_label_values(&[&p.id, team, kind])
                        .inc_by(n);
                }
            }
        }
    }
}

/// The rejection label of a refusal by the gateway itself; `None` for failures on the
/// upstream side.
fn rejection_reason(e: &GatewayError) -> Option<&'static str> {
    Some(match e {
        GatewayError::Rejected(r) => r.reason,
        GatewayError::BodyTooLarge { .. } => "body_too_large",
        GatewayError::HeaderTooLarge { .. } => "header_too_large",
        GatewayError::BadFraming(_) => "invalid_framing",
        GatewayError::InvalidRequest { .. }
        | GatewayError::InvalidJson(_)
        | GatewayError::BodyIncomplete(_) => "invalid_request",
        GatewayError::UnknownModel(_) => "unknown_model",
        GatewayError::ContextTooLong { .. } => "context_too_long",
        GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
        GatewayError::UnknownRoute { .. } => "unknown_url",
        GatewayError::BodyTimeout => "timeout",
        GatewayError::PoolSaturated { cause, .. } => cause.as_str(),
        GatewayError::UpstreamUnreachable { .. }
        | GatewayError::UpstreamProtocol { .. }
        | GatewayError::UpstreamTimeout { .. }
        | GatewayError::NoHealthyUpstream { .. }
        | GatewayError::Internal(_) => return None,
    })
}

/// Sets the endpoint gauges from `state` (called before each scrape); endpoints of pools
/// no longer configured disappear.
pub fn observe_endpoints(state: &State) {
    let m = &*METRICS;
    m.endpoint_up.reset();
    m.endpoint_breaker.reset();
    m.endpoint_in_flight.reset();
    m.queue_length.reset();
    for pool in &state.pools {
        if let Some(queue) = pool.queue() {
            for (i, class) in state.config.priorities.classes.iter().enumerate() {
                let waiting = i64::try_from(queue.waiting(i)).unwrap_or(i64::MAX);
                m.queue_length
                    .with_label_values(&[pool.spec.name.as_str(), class.name.as_str()])
                    .set(waiting);
            }
        }
        if pool.is_mock() {
            continue;
        }
        for e in &pool.endpoints {
            let labels = [pool.spec.name.as_str(), e.spec.name.as_str()];
            m.endpoint_up
                .with_label_values(&labels)
                .set(i64::from(e.health.is_up()));
            let breaker = match e.breaker.as_ref().map(|b| b.state()) {
                None | Some(BreakerState::Closed) => 0,
                Some(BreakerState::HalfOpen) => 1,
                Some(BreakerState::Open) => 2,
            };
            m.endpoint_breaker.with_label_values(&labels).set(breaker);
            m.endpoint_in_flight
                .with_label_values(&labels)
                .set(i64::from(
                    e.traffic
                        .in_flight
                        .load(std::sync::atomic::Ordering::Relaxed),
                ));
        }
    }
}
