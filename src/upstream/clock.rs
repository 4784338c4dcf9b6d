//! A monotonic millisecond clock for deadlines kept in atomics (cool-downs, probes).
//! It follows tokio's clock, so tests with paused time control it too.

use std::sync::OnceLock;

use tokio::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (never 0 after the first ms, and
/// never going back).
pub fn now_ms() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(origin).as_millis() as u64 + 1
}
