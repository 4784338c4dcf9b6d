//! Circuit breaker per endpoint, fed by live traffic (passive outlier detection).
//!
//! Closed → open when failures cross a threshold (consecutive, or a ratio over a window);
//! open sends no traffic for `open_for`; then half-open lets `half_open_probes` requests
//! through; their success closes it, a failure re-opens it for twice as long (capped).
//!
//! STUB: always closed. To be replaced by the real state machine.

use crate::config::BreakerSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What `admit` granted; handed back to `record` with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Normal traffic (closed).
    Yes,
    /// One of the half-open probes.
    Probe,
    /// Not now.
    No,
}

#[derive(Debug)]
pub struct Breaker {
    #[allow(dead_code)]
    settings: BreakerSettings,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker { settings }
    }

    /// Whether a request could be sent now, without taking anything (for selection).
    pub fn available(&self) -> bool {
        true
    }

    /// Lets one request through, or not. A half-open breaker hands out its probe slots.
    pub fn admit(&self) -> Admit {
        Admit::Yes
    }

    /// The outcome of a request that `admit` let through.
    pub fn record(&self, _admitted: Admit, _ok: bool) {}

    pub fn state(&self) -> BreakerState {
        BreakerState::Closed
    }
}
