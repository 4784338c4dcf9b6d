//! The process's Prometheus registry. Each part of the gateway registers its own
//! collectors here, once (they outlive config reloads).

use std::sync::LazyLock;

use prometheus::{
    Counter, CounterVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

pub fn registry() -> &'static Registry {
    &REGISTRY
}

// The constructors below take literal names and label sets, which either always work or
// never do: a mistake panics in the first test that touches the metric, not in
// production. Each registers what it builds.

/// A counter.
#[allow(clippy::expect_used)]
pub fn counter(name: &'static str, help: &'static str) -> IntCounter {
    register(IntCounter::new(name, help).expect("a valid metric"))
}

/// A counter with labels.
#[allow(clippy::expect_used)]
pub fn counter_vec(name: &'static str, help: &'static str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"))
}

/// A counter of a real quantity (e.g. dollars).
#[allow(clippy::expect_used)]
pub fn float_counter(name: &'static str, help: &'static str) -> Counter {
    register(Counter::new(name, help).expect("a valid metric"))
}

/// A counter of a real quantity, with labels.
#[allow(clippy::expect_used)]
pub fn float_counter_vec(name: &'static str, help: &'static str, labels: &[&str]) -> CounterVec {
    register(CounterVec::new(Opts::new(name, help), labels).expect("a valid metric"))
}

/// A gauge with labels.
#[allow(clippy::expect_used)]
pub fn gauge_vec(name: &'static str, help: &'static str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric"))
}

/// A histogram with labels and the given bucket bounds.
#[allow(clippy::expect_used)]
pub fn histogram_vec(
    name: &'static str,
    help: &'static str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(HistogramVec::new(opts, labels).expect("a valid metric"))
}

/// A gauge.
#[allow(clippy::expect_used)]
pub fn gauge(name: &'static str, help: &'static str) -> IntGauge {
    register(IntGauge::new(name, help).expect("a valid metric"))
}

#[allow(clippy::expect_used)]
fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    registry()
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry().gather(), &mut out) {
        tracing::warn!(error = %e, "Encoding the metrics failed");
    }
    out
}
