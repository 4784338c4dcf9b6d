//! Circuit breaker per endpoint, fed by live traffic (passive outlier detection).
//!
//! Closed → open when failures cross a threshold (consecutive, or a ratio over a window);
//! open sends no traffic for `open_for`; then half-open lets `half_open_probes` requests
//! through; their success closes it, a failure re-opens it for twice as long (capped).
//!
//! The breaker only counts: it does not know the endpoint's name, so [`Breaker::record`]
//! returns the [`Transition`] it caused and the caller logs it ([`Transition::log`]).
//!
//! Rules for outcomes that arrive out of turn:
//! - An outcome of a request admitted with [`Admit::Yes`] that ends while the breaker is
//!   open or half-open (it was let through before the breaker opened) is ignored: the
//!   failures that opened it are already counted, and a late success says nothing about
//!   the endpoint now.
//! - A probe outcome that arrives when no probe round is waiting for it (the round
//!   already ended on another probe's failure) is ignored too.
//! - A probe whose outcome never comes would hold its slot forever; [`Breaker::cancel`]
//!   frees it, and as a safety net a round whose slots have all been out for
//!   `max_open_for` with no verdict is restarted with fresh slots.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerSettings;

/// Buckets of the sliding failure-ratio window. The window covers the current bucket and
/// the nine before it, so its effective length is between 90% and 100% of `window`.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn as_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
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

/// A change of state caused by [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The breaker opened (from closed, or again after a failed probe): the endpoint takes
    /// no traffic for `open_for`.
    Opened { why: OpenReason, open_for: Duration },
    /// Every half-open probe succeeded: normal traffic again.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpenReason {
    /// This many failures in a row.
    ConsecutiveFailures(u32),
    /// `failed` of the `total` outcomes in the window failed.
    FailureRatio { failed: u32, total: u32 },
    /// A half-open probe failed.
    ProbeFailed,
}

impl fmt::Display for OpenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenReason::ConsecutiveFailures(n) => write!(f, "{n} failures in a row"),
            OpenReason::FailureRatio { failed, total } => {
                write!(f, "{failed} of the last {total} requests failed")
            }
            OpenReason::ProbeFailed => f.write_str("the half-open probe failed"),
        }
    }
}

impl Transition {
    /// Logs the transition: a warning when the breaker opens, info when it closes.
    pub fn log(&self, pool: &str, endpoint: &str) {
        match self {
            Transition::Opened { why, open_for } => tracing::warn!(
                pool,
                endpoint,
                reason = %why,
                open_for = ?open_for,
                "Circuit breaker opened; endpoint takes no traffic"
            ),
            Transition::Closed => tracing::info!(
                pool,
                endpoint,
                "Circuit breaker closed; endpoint takes traffic again"
            ),
        }
    }
}

// === impl Breaker ===

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    /// Mirror of `inner.state`, so the closed state (nearly always) is read without the
    /// lock. Written only while the lock is held.
    state: AtomicU8,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Closed: failures in a row.
    streak: u32,
    /// Closed: outcomes over the last `window`.
    window: Window,
    /// Open: when the first probe may go.
    reopen_at: Instant,
    /// The interval of the next opening: `open_for`, doubled by each failed probe.
    open_for: Duration,
    /// Half-open: probe slots handed out, outcomes received, successes among them.
    probes_out: u32,
    probes_done: u32,
    probes_ok: u32,
    /// Half-open: when the current round (or its last slot) started.
    round_started: Instant,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        let now = Instant::now();
        Breaker {
            settings,
            state: AtomicU8::new(BreakerState::Closed.as_u8()),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                streak: 0,
                window: Window::new(settings.window, now),
                reopen_at: now,
                open_for: settings.open_for,
                probes_out: 0,
                probes_done: 0,
                probes_ok: 0,
                round_started: now,
            }),
        }
    }

    /// Whether a request could be sent now, without taking anything (for selection).
    /// True when closed, when open but `open_for` has passed (a probe could go), and when
    /// half-open with a probe slot free.
    pub fn available(&self) -> bool {
        if self.is_closed_fast() {
            return true;
        }
        let inner = self.lock();
        let now = Instant::now();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => now >= inner.reopen_at,
            BreakerState::HalfOpen => {
                inner.probes_out < self.settings.half_open_probes || self.stalled(&inner, now)
            }
        }
    }

    /// Lets one request through, or not. A half-open breaker hands out its probe slots.
    ///
    /// Every `Yes` or `Probe` should be followed by one [`Breaker::record`] (or
    /// [`Breaker::cancel`]).
    pub fn admit(&self) -> Admit {
        if self.is_closed_fast() {
            return Admit::Yes;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.state {
            BreakerState::Closed => Admit::Yes,
            BreakerState::Open if now < inner.reopen_at => Admit::No,
            BreakerState::Open => {
                self.set_state(&mut inner, BreakerState::HalfOpen);
                start_round(&mut inner, now);
                Admit::Probe
            }
            BreakerState::HalfOpen => {
                if inner.probes_out < self.settings.half_open_probes {
                    inner.probes_out += 1;
                    inner.round_started = now;
                    Admit::Probe
                } else if self.stalled(&inner, now) {
                    start_round(&mut inner, now);
                    Admit::Probe
                } else {
                    Admit::No
                }
            }
        }
    }

    /// The outcome of a request that `admit` let through. Returns the change of state it
    /// caused, for the caller to log ([`Transition::log`]).
    pub fn record(&self, admitted: Admit, ok: bool) -> Option<Transition> {
        match admitted {
            Admit::No => None,
            Admit::Yes => {
                let mut inner = self.lock();
                if inner.state != BreakerState::Closed {
                    // Let through before the breaker opened: see the module docs.
                    return None;
                }
                let now = Instant::now();
                inner.window.add(now, ok);
                if ok {
                    inner.streak = 0;
                    return None;
                }
                inner.streak = inner.streak.saturating_add(1);
                if inner.streak >= self.settings.consecutive_failures {
                    let why = OpenReason::ConsecutiveFailures(inner.streak);
                    return Some(self.open(&mut inner, now, why));
                }
                // The ratio is checked on failures only: the breaker trips on a failure.
                let (failed, total) = inner.window.totals(now);
                if total >= self.settings.min_requests
                    && f64::from(failed) >= self.settings.failure_ratio * f64::from(total)
                {
                    let why = OpenReason::FailureRatio { failed, total };
                    return Some(self.open(&mut inner, now, why));
                }
                None
            }
            Admit::Probe => {
                let mut inner = self.lock();
                if inner.state != BreakerState::HalfOpen || inner.probes_done >= inner.probes_out {
                    return None;
                }
                inner.probes_done += 1;
                if !ok {
                    inner.open_for = inner
                        .open_for
                        .saturating_mul(2)
                        .min(self.settings.max_open_for);
                    return Some(self.open(&mut inner, Instant::now(), OpenReason::ProbeFailed));
                }
                inner.probes_ok += 1;
                if inner.probes_ok < self.settings.half_open_probes {
                    return None;
                }
                self.set_state(&mut inner, BreakerState::Closed);
                inner.streak = 0;
                inner.window.clear();
                inner.open_for = self.settings.open_for;
                Some(Transition::Closed)
            }
        }
    }

    /// A request `admit` let through ended with no outcome to judge the endpoint by (the
    /// client left first): a probe's slot is handed out again.
    pub fn cancel(&self, admitted: Admit) {
        if admitted != Admit::Probe {
            return;
        }
        let mut inner = self.lock();
        if inner.state == BreakerState::HalfOpen && inner.probes_done < inner.probes_out {
            inner.probes_out -= 1;
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn is_closed_fast(&self) -> bool {
        self.state.load(Ordering::Relaxed) == BreakerState::Closed.as_u8()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent at every panic point (there are none under the lock
        // besides arithmetic that saturates), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, inner: &mut Inner, state: BreakerState) {
        inner.state = state;
        self.state.store(state.as_u8(), Ordering::Relaxed);
    }

    fn open(&self, inner: &mut Inner, now: Instant, why: OpenReason) -> Transition {
        self.set_state(inner, BreakerState::Open);
        inner.reopen_at = now + inner.open_for;
        inner.streak = 0;
        inner.window.clear();
        inner.probes_out = 0;
        inner.probes_done = 0;
        inner.probes_ok = 0;
        Transition::Opened {
            why,
            open_for: inner.open_for,
        }
    }

    /// Every probe slot has been out for `max_open_for` with no verdict: the outcomes
    /// are taken as lost.
    fn stalled(&self, inner: &Inner, now: Instant) -> bool {
        inner.probes_out >= self.settings.half_open_probes
            && now >= inner.round_started + self.settings.max_open_for
    }
}

fn start_round(inner: &mut Inner, now: Instant) {
    inner.probes_out = 1;
    inner.probes_done = 0;
    inner.probes_ok = 0;
    inner.round_started = now;
}

// === impl Window ===

/// Outcomes over a sliding window, in [`BUCKETS`] buckets of `window / BUCKETS`.
#[derive(Debug)]
struct Window {
    origin: Instant,
    bucket_nanos: u128,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-long slice of time since `origin` the counts belong to.
    epoch: u64,
    ok: u32,
    failed: u32,
}

impl Window {
    fn new(window: Duration, origin: Instant) -> Self {
        Window {
            origin,
            bucket_nanos: (window.as_nanos() / BUCKETS as u128).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.bucket_nanos).unwrap_or(u64::MAX)
    }

    fn add(&mut self, now: Instant, ok: bool) {
        let epoch = self.epoch(now);
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        if ok {
            bucket.ok = bucket.ok.saturating_add(1);
        } else {
            bucket.failed = bucket.failed.saturating_add(1);
        }
    }

    /// Failed and total outcomes in the buckets still inside the window.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let epoch = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| epoch - b.epoch.min(epoch) < BUCKETS as u64)
            .fold((0u32, 0u32), |(failed, total), b| {
                (
                    failed.saturating_add(b.failed),
                    total.saturating_add(b.failed).saturating_add(b.ok),
                )
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(20),
            half_open_probes: 1,
        }
    }

    /// Records `n` outcomes of normal traffic; returns the last transition.
    fn feed(b: &Breaker, n: u32, ok: bool) -> Option<Transition> {
        let mut last = None;
        for _ in 0..n {
            assert_eq!(b.admit(), Admit::Yes);
            last = b.record(Admit::Yes, ok);
        }
        last
    }

    fn opened(open_for_secs: u64, why: OpenReason) -> Option<Transition> {
        Some(Transition::Opened {
            why,
            open_for: Duration::from_secs(open_for_secs),
        })
    }

    /// Opens a fresh breaker with `consecutive_failures` failures.
    fn open_breaker(s: BreakerSettings) -> Breaker {
        let b = Breaker::new(s);
        feed(&b, s.consecutive_failures, false);
        assert_eq!(b.state(), BreakerState::Open);
        b
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures() {
        let b = Breaker::new(settings());
        assert_eq!(feed(&b, 4, false), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.available());
        assert_eq!(
            feed(&b, 1, false),
            opened(5, OpenReason::ConsecutiveFailures(5))
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.available());
        assert_eq!(b.admit(), Admit::No);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_streak() {
        let b = Breaker::new(settings());
        feed(&b, 4, false);
        feed(&b, 1, true);
        // 8 of 9 failed, but under `min_requests`: only the streak could open it.
        assert_eq!(feed(&b, 4, false), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_ratio_opens_once_min_requests_are_seen() {
        let s = BreakerSettings {
            consecutive_failures: 100,
            ..settings()
        };
        let b = Breaker::new(s);
        // ok, fail, ok, fail, …: half fail, but fewer than 10 outcomes until the tenth.
        for i in 0..9 {
            assert_eq!(feed(&b, 1, i % 2 == 0), None, "outcome {i}");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            feed(&b, 1, false),
            opened(
                5,
                OpenReason::FailureRatio {
                    failed: 5,
                    total: 10
                }
            )
        );
        assert!(!b.available());
    }

    #[tokio::test(start_paused = true)]
    async fn a_ratio_under_the_threshold_stays_closed() {
        let s = BreakerSettings {
            consecutive_failures: 100,
            ..settings()
        };
        let b = Breaker::new(s);
        feed(&b, 11, true);
        assert_eq!(feed(&b, 10, false), None); // 10 of 21
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(feed(&b, 1, false).is_some()); // 11 of 22
    }

    #[tokio::test(start_paused = true)]
    async fn old_window_buckets_expire() {
        let s = BreakerSettings {
            consecutive_failures: 100,
            ..settings()
        };
        // Still inside the window after 8 s: the tenth failure opens it.
        let b = Breaker::new(s);
        feed(&b, 9, false);
        advance(Duration::from_secs(8)).await;
        assert!(feed(&b, 1, false).is_some());

        // A full window later they are gone: one failure of one outcome.
        let b = Breaker::new(s);
        feed(&b, 9, false);
        advance(Duration::from_secs(10)).await;
        assert_eq!(feed(&b, 1, false), None);
        assert_eq!(b.state(), BreakerState::Closed);
        // And bucket slots reused by later epochs hold only the new counts.
        advance(Duration::from_secs(3)).await;
        assert_eq!(feed(&b, 8, false), None);
        assert!(feed(&b, 1, false).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn open_takes_no_traffic_until_open_for_has_passed() {
        let b = open_breaker(settings());
        advance(Duration::from_millis(4_999)).await;
        assert!(!b.available());
        assert_eq!(b.admit(), Admit::No);
        advance(Duration::from_millis(1)).await;
        // Checking takes nothing: still open, and still available.
        assert!(b.available());
        assert!(b.available());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn after_open_for_one_probe_goes_and_a_second_is_refused() {
        let b = open_breaker(settings());
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.available());
        assert_eq!(b.admit(), Admit::No);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_and_resets_the_counters() {
        let b = open_breaker(settings());
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.record(Admit::Probe, true), Some(Transition::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.available());
        assert_eq!(feed(&b, 4, false), None);
        assert_eq!(
            feed(&b, 1, false),
            opened(5, OpenReason::ConsecutiveFailures(5))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_for_twice_as_long_up_to_the_cap() {
        let b = open_breaker(settings());
        for open_for in [10, 20, 20] {
            advance(until_probe(&b)).await;
            assert_eq!(b.admit(), Admit::Probe);
            assert_eq!(
                b.record(Admit::Probe, false),
                opened(open_for, OpenReason::ProbeFailed)
            );
            assert_eq!(b.state(), BreakerState::Open);
            advance(Duration::from_secs(open_for) - Duration::from_millis(1)).await;
            assert_eq!(b.admit(), Admit::No);
            advance(Duration::from_millis(1)).await;
        }
        // Closing brings the interval back to `open_for`.
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.record(Admit::Probe, true), Some(Transition::Closed));
        assert_eq!(
            feed(&b, 5, false),
            opened(5, OpenReason::ConsecutiveFailures(5))
        );
    }

    /// Time left until an open breaker lets a probe through.
    fn until_probe(b: &Breaker) -> Duration {
        b.lock().reopen_at.saturating_duration_since(Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn all_probes_must_succeed_to_close() {
        let s = BreakerSettings {
            half_open_probes: 2,
            ..settings()
        };
        let b = open_breaker(s);
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert!(b.available());
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No);
        assert_eq!(b.record(Admit::Probe, true), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.record(Admit::Probe, true), Some(Transition::Closed));

        // One failure among them re-opens it; the other probe's late outcome is ignored.
        let b = open_breaker(s);
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(
            b.record(Admit::Probe, false),
            opened(10, OpenReason::ProbeFailed)
        );
        assert_eq!(b.record(Admit::Probe, true), None);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_let_through_before_opening_are_ignored() {
        let b = open_breaker(settings());
        assert_eq!(b.record(Admit::Yes, false), None);
        assert_eq!(b.record(Admit::Yes, true), None);
        assert_eq!(b.state(), BreakerState::Open);
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.record(Admit::Yes, false), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.record(Admit::No, false), None);
        assert_eq!(b.record(Admit::Probe, true), Some(Transition::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_its_slot() {
        let b = open_breaker(settings());
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No);
        b.cancel(Admit::Probe);
        assert!(b.available());
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.record(Admit::Probe, true), Some(Transition::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_lost_for_max_open_for_is_replaced() {
        let b = open_breaker(settings());
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(), Admit::Probe);
        advance(Duration::from_millis(19_999)).await;
        assert_eq!(b.admit(), Admit::No);
        advance(Duration::from_millis(1)).await;
        assert!(b.available());
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No);
    }
}
