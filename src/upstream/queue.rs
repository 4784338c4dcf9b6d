//! Admission control for a saturated pool: the slots its endpoints have, and the requests
//! waiting for one.
//!
//! A pool with a `queue` section lets at most `max_in_flight_per_endpoint` requests of
//! this gateway be in flight on each endpoint; with `load_signals`, an endpoint whose
//! scraped load is saturated has no room either. An attempt takes a [`Slot`] on a usable
//! endpoint with room before it is sent, and gives it back by dropping it when the
//! attempt ends (a stream: when the stream ends).
//!
//! When no usable endpoint has room, the request waits in the pool's queue ([`Ticket`]):
//! higher priority levels first; within a level, round robin over the callers (keys),
//! each caller's requests in arrival order, so that a heavy caller cannot starve the
//! others. A freed slot goes straight to the next waiter, so a newcomer never takes it
//! first. A waiter that leaves — its wait ran out, or its client went away and the
//! ticket was dropped — leaves the queue at once, and a slot granted to it meanwhile is
//! passed on.
//!
//! Bounds: `max_length` waiters per pool, the class's `max_queue` per class, and the
//! shorter of the pool's and the class's `max_wait`. A full queue makes room for a
//! request of a higher level by shedding a sheddable waiter of the lowest level below it
//! (the newest of the caller with the most waiting).
//!
//! All of it sits behind one mutex, held for bookkeeping only (no I/O, no await). What a
//! refusal looks like to the client is for `dispatch` and `error` to say.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{PriorityClass, QueueSettings};
use crate::error::Saturation;
use crate::metrics::{counter_vec, histogram_vec};

use super::{Hints, Pool, balance};

/// How often a waiter looks again for room that appeared without a slot being given back
/// (an endpoint up again, a breaker half-open, a rest over, a lighter load scraped).
const RECHECK: Duration = Duration::from_millis(250);

/// What a request brings to the queue, for the moment it asks.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'r> {
    /// For the pool's strategy, as for any pick.
    pub hints: Hints,
    /// Endpoints this request already tried; avoided while another has room.
    pub tried: &'r [usize],
    /// Who is asking (the key id): requests of one caller queue behind each other, and
    /// callers of one level take turns.
    pub caller: &'r str,
}

/// The priority class of a request, for as long as it waits.
#[derive(Debug, Clone, Copy)]
pub struct Priority<'a> {
    pub class: &'a PriorityClass,
    /// Its index in `Priorities::classes`.
    pub index: usize,
}

/// What the queue said to a request.
#[derive(Debug)]
pub enum Entry<'a> {
    /// Room at once.
    Slot(Slot<'a>),
    /// In the queue: wait on the ticket.
    Queued(Ticket<'a>),
    /// No endpoint is usable at all (down, open, resting): waiting for room cannot help.
    NoUsableEndpoint,
    /// The queue is full.
    Refused(Saturation),
}

/// How a wait in the queue ended.
#[derive(Debug)]
pub enum Waited<'a> {
    Slot(Slot<'a>),
    /// No endpoint is usable any more: waiting for room cannot help.
    NoUsableEndpoint,
    Refused(Saturation),
}

/// Slot accounting and the waiting requests of one pool.
#[derive(Debug)]
pub struct Queue {
    settings: QueueSettings,
    book: Mutex<Book>,
}

impl Queue {
    pub fn new(settings: QueueSettings, endpoints: usize) -> Queue {
        Queue {
            settings,
            book: Mutex::new(Book {
                held: vec![0; endpoints],
                levels: Vec::new(),
                waiting: 0,
                per_class: Vec::new(),
                next_id: 0,
            }),
        }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Requests of class `class_index` waiting now.
    pub fn waiting(&self, class_index: usize) -> usize {
        self.lock().per_class.get(class_index).copied().unwrap_or(0)
    }

    /// Slots held now on endpoint `i`.
    pub fn held(&self, i: usize) -> u32 {
        self.lock().held.get(i).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives endpoint `i`'s slot back and passes it on.
    fn release(&self, pool: &Pool, i: usize) {
        let mut book = self.lock();
        book.release(i);
        book.grant(pool, &self.settings);
    }
}

// === impl Pool ===

impl Pool {
    /// Admission for one attempt on this pool; `None` when the pool has no queue (the
    /// request is sent at once, as ever).
    pub fn admit<'a>(&'a self, ask: &Ask<'_>, priority: Priority<'a>) -> Option<Entry<'a>> {
        let queue = self.queue.as_ref()?;
        let class = priority.class;
        let level = class.level;
        let entry = {
            let mut book = queue.lock();
            if !self.endpoints.iter().any(|e| e.usable()) {
                return Some(Entry::NoUsableEndpoint);
            }
            if !book.has_waiters_at(level)
                && let Some(i) = book.pick_room(self, &queue.settings, &ask.hints, ask.tried)
            {
                book.held[i] += 1;
                Entry::Slot(Slot {
                    pool: self,
                    queue,
                    endpoint: i,
                })
            } else {
                match book.join(self, &queue.settings, ask, priority) {
                    Ok((id, rx)) => Entry::Queued(Ticket {
                        pool: self,
                        queue,
                        id,
                        class,
                        since: Instant::now(),
                        rx: Some(rx),
                        outcome: Outcome::Abandoned,
                    }),
                    Err(cause) => Entry::Refused(cause),
                }
            }
        };
        match &entry {
            Entry::Slot(_) => observe_wait(self, class, Outcome::Served, Duration::ZERO),
            Entry::Refused(cause) => count_refusal(self, class, *cause),
            Entry::Queued(_) | Entry::NoUsableEndpoint => {}
        }
        Some(entry)
    }

    /// Hands free slots to waiters after something other than a returned slot made room
    /// (a scrape, a recovery); whether any endpoint is usable at all.
    pub fn recheck_queue(&self) -> bool {
        if let Some(queue) = &self.queue {
            let mut book = queue.lock();
            if book.waiting > 0 {
                book.grant(self, &queue.settings);
            }
        }
        self.endpoints.iter().any(|e| e.usable())
    }
}

// === impl Slot ===

/// Room for one request on one endpoint, held until dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    pool: &'a Pool,
    queue: &'a Queue,
    endpoint: usize,
}

impl Slot<'_> {
    /// The endpoint's index in the pool.
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.queue.release(self.pool, self.endpoint);
    }
}

// === impl Ticket ===

/// A place in the queue. Dropping it leaves the queue at once.
#[derive(Debug)]
pub struct Ticket<'a> {
    pool: &'a Pool,
    queue: &'a Queue,
    id: u64,
    class: &'a PriorityClass,
    since: Instant,
    /// `None` once the grant (a slot, or being shed) was taken.
    rx: Option<oneshot::Receiver<Grant>>,
    /// How the wait ended, for the metric recorded when the ticket is dropped.
    outcome: Outcome,
}

impl<'a> Ticket<'a> {
    /// Waits for a slot, at most the shorter of the pool's and the class's `max_wait`
    /// and `left` (what is left of the request's deadline). Not cancel-safe in the sense
    /// of keeping the place: dropping the future leaves the queue.
    pub async fn wait(mut self, left: Duration) -> Waited<'a> {
        let limit = self
            .queue
            .settings
            .max_wait
            .min(self.class.max_wait.unwrap_or(Duration::MAX))
            .min(left);
        // `left` is within the request's deadline, which is a valid instant.
        let deadline = self.since.checked_add(limit).unwrap_or(self.since);
        loop {
            let Some(rx) = self.rx.as_mut() else {
                // Taken already; `wait` consumes the ticket, so this does not happen.
                return self.timed_out();
            };
            let look_again = (Instant::now() + RECHECK).min(deadline);
            let got = tokio::select! {
                got = rx => Some(got),
                _ = tokio::time::sleep_until(look_again) => None,
            };
            if let Some(got) = got {
                self.rx = None;
                return self.granted(got);
            }
            if Instant::now() >= deadline {
                // A grant may have come at the last moment.
                if let Some(Ok(grant)) = self.rx.as_mut().map(|rx| rx.try_recv()) {
                    self.rx = None;
                    return self.granted(Ok(grant));
                }
                return self.timed_out();
            }
            if !self.pool.recheck_queue() {
                self.outcome = Outcome::Unusable;
                return Waited::NoUsableEndpoint;
            }
        }
    }

    fn granted(&mut self, got: Result<Grant, oneshot::error::RecvError>) -> Waited<'a> {
        let waited = self.since.elapsed();
        match got {
            Ok(Grant::Slot(endpoint)) => {
                self.outcome = Outcome::Served;
                observe_wait(self.pool, self.class, Outcome::Served, waited);
                Waited::Slot(Slot {
                    pool: self.pool,
                    queue: self.queue,
                    endpoint,
                })
            }
            Ok(Grant::Shed) => {
                observe_wait(self.pool, self.class, Outcome::Shed, waited);
                count_refusal(self.pool, self.class, Saturation::Shed);
                Waited::Refused(Saturation::Shed)
            }
            // The queue dropped the waiter without a word; it never does.
            Err(_) => {
                observe_wait(self.pool, self.class, Outcome::Timeout, waited);
                count_refusal(self.pool, self.class, Saturation::QueueTimeout);
                Waited::Refused(Saturation::QueueTimeout)
            }
        }
    }

    /// Gives up the place (dropping the ticket leaves the queue).
    fn timed_out(&mut self) -> Waited<'a> {
        self.outcome = Outcome::Timeout;
        count_refusal(self.pool, self.class, Saturation::QueueTimeout);
        Waited::Refused(Saturation::QueueTimeout)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        {
            let mut book = self.queue.lock();
            if book.remove(self.class.level, self.id).is_none()
                && let Ok(Grant::Slot(i)) = rx.try_recv()
            {
                // Granted while leaving: the slot goes to the next waiter.
                book.release(i);
                book.grant(self.pool, &self.queue.settings);
            }
        }
        observe_wait(self.pool, self.class, self.outcome, self.since.elapsed());
    }
}

// === impl Book ===

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    /// A slot on this endpoint, already counted as held.
    Slot(usize),
    /// Its place went to a request of a higher level.
    Shed,
}

/// The queue's state.
#[derive(Debug)]
struct Book {
    /// Slots held per endpoint.
    held: Vec<u32>,
    /// Levels with waiters, highest first.
    levels: Vec<Level>,
    /// Waiters, all levels.
    waiting: usize,
    /// Waiters per class index.
    per_class: Vec<usize>,
    next_id: u64,
}

/// The waiters of one priority level: a turn for each caller in order.
#[derive(Debug)]
struct Level {
    level: u32,
    /// The caller at the front is served next, then goes to the back if it still waits.
    lanes: VecDeque<Lane>,
}

/// One caller's waiters at one level, in arrival order.
#[derive(Debug)]
struct Lane {
    caller: String,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    class: usize,
    sheddable: bool,
    hints: Hints,
    tried: Vec<usize>,
    tx: oneshot::Sender<Grant>,
}

impl Book {
    /// Whether endpoint `i` can take one more request now: usable, under the slot cap,
    /// and (with load signals) not saturated by its scraped load.
    fn has_room(&self, pool: &Pool, settings: &QueueSettings, i: usize) -> bool {
        let (Some(e), Some(&held)) = (pool.endpoints.get(i), self.held.get(i)) else {
            return false;
        };
        settings
            .max_in_flight_per_endpoint
            .is_none_or(|max| held < max)
            && e.usable()
            && !(settings.load_signals && balance::saturated(e, &pool.spec.balance.load))
    }

    /// An endpoint with room, by the pool's strategy: one not tried yet if possible.
    fn pick_room(
        &self,
        pool: &Pool,
        settings: &QueueSettings,
        hints: &Hints,
        tried: &[usize],
    ) -> Option<usize> {
        let room = |i: usize| self.has_room(pool, settings, i);
        pool.balancer
            .pick(&pool.endpoints, hints, &|i| !tried.contains(&i) && room(i))
            .or_else(|| pool.balancer.pick(&pool.endpoints, hints, &room))
    }

    /// Whether anyone waits at `level` or above (and so goes first).
    fn has_waiters_at(&self, level: u32) -> bool {
        self.levels.first().is_some_and(|l| l.level >= level)
    }

    /// Queues a request, within the bounds; its grant comes through the receiver.
    fn join(
        &mut self,
        pool: &Pool,
        settings: &QueueSettings,
        ask: &Ask<'_>,
        priority: Priority<'_>,
    ) -> Result<(u64, oneshot::Receiver<Grant>), Saturation> {
        let class = priority.class;
        let of_class = self.per_class.get(priority.index).copied().unwrap_or(0);
        if class.max_queue.is_some_and(|max| of_class >= max) {
            return Err(Saturation::QueueFull);
        }
        if self.waiting >= settings.max_length {
            let shed = self.shed_below(class.level).ok_or(Saturation::QueueFull)?;
            // Gone already if its receiver is: nothing to tell.
            let _ = shed.tx.send(Grant::Shed);
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        self.push(
            class.level,
            ask.caller,
            Waiter {
                id,
                class: priority.index,
                sheddable: class.sheddable,
                hints: ask.hints,
                tried: ask.tried.to_vec(),
                tx,
            },
        );
        // Room may have appeared since the last grant (a recovery): serve in order.
        self.grant(pool, settings);
        Ok((id, rx))
    }

    fn push(&mut self, level: u32, caller: &str, w: Waiter) {
        self.waiting += 1;
        if self.per_class.len() <= w.class {
            self.per_class.resize(w.class + 1, 0);
        }
        self.per_class[w.class] += 1;
        let at = self.levels.partition_point(|l| l.level > level);
        if self.levels.get(at).is_none_or(|l| l.level != level) {
            self.levels.insert(
                at,
                Level {
                    level,
                    lanes: VecDeque::new(),
                },
            );
        }
        let lanes = &mut self.levels[at].lanes;
        match lanes.iter_mut().find(|lane| lane.caller == caller) {
            Some(lane) => lane.waiters.push_back(w),
            None => lanes.push_back(Lane {
                caller: caller.to_owned(),
                waiters: VecDeque::from([w]),
            }),
        }
    }

    /// Counts a waiter out.
    fn left(&mut self, class: usize) {
        self.waiting = self.waiting.saturating_sub(1);
        if let Some(n) = self.per_class.get_mut(class) {
            *n = n.saturating_sub(1);
        }
    }

    /// Drops level `li`'s lane `k` if empty, and the level if it has no lane left.
    fn tidy(&mut self, li: usize, k: usize) {
        let Some(level) = self.levels.get_mut(li) else {
            return;
        };
        if level
            .lanes
            .get(k)
            .is_some_and(|lane| lane.waiters.is_empty())
        {
            level.lanes.remove(k);
        }
        if level.lanes.is_empty() {
            self.levels.remove(li);
        }
    }

    /// Hands slots to waiters, in order, while an endpoint has room.
    fn grant(&mut self, pool: &Pool, settings: &QueueSettings) {
        loop {
            let Some(head) = self
                .levels
                .first()
                .and_then(|l| l.lanes.front())
                .and_then(|lane| lane.waiters.front())
            else {
                return;
            };
            let Some(i) = self.pick_room(pool, settings, &head.hints, &head.tried) else {
                return;
            };
            let Some(w) = self.pop_next() else {
                return;
            };
            self.held[i] += 1;
            if w.tx.send(Grant::Slot(i)).is_err() {
                // Its ticket is gone (it removes itself under this lock, so this does
                // not happen); the slot stays free.
                self.release(i);
            }
        }
    }

    /// The next waiter: the highest level's caller whose turn it is, who then goes to
    /// the back of that level's turns.
    fn pop_next(&mut self) -> Option<Waiter> {
        let level = self.levels.first_mut()?;
        let mut lane = level.lanes.pop_front()?;
        let w = lane.waiters.pop_front();
        if !lane.waiters.is_empty() {
            level.lanes.push_back(lane);
        }
        if level.lanes.is_empty() {
            self.levels.remove(0);
        }
        if let Some(w) = &w {
            self.left(w.class);
        }
        w
    }

    /// Takes waiter `id` of `level` out; `None` if it is not waiting (any more).
    fn remove(&mut self, level: u32, id: u64) -> Option<Waiter> {
        let li = self.levels.iter().position(|l| l.level == level)?;
        let (k, at) = self.levels[li]
            .lanes
            .iter()
            .enumerate()
            .find_map(|(k, lane)| {
                lane.waiters
                    .iter()
                    .position(|w| w.id == id)
                    .map(|at| (k, at))
            })?;
        let w = self.levels[li].lanes[k].waiters.remove(at)?;
        self.tidy(li, k);
        self.left(w.class);
        Some(w)
    }

    /// Takes out the newest waiter of the longest sheddable lane of the lowest level
    /// below `level`, to make room for a request of `level`.
    fn shed_below(&mut self, level: u32) -> Option<Waiter> {
        for li in (0..self.levels.len()).rev() {
            if self.levels[li].level >= level {
                return None;
            }
            let longest = self.levels[li]
                .lanes
                .iter()
                .enumerate()
                .filter(|(_, lane)| lane.waiters.back().is_some_and(|w| w.sheddable))
                .max_by_key(|(k, lane)| (lane.waiters.len(), std::cmp::Reverse(*k)))
                .map(|(k, _)| k);
            if let Some(k) = longest {
                let w = self.levels[li].lanes[k].waiters.pop_back()?;
                self.tidy(li, k);
                self.left(w.class);
                return Some(w);
            }
        }
        None
    }

    fn release(&mut self, i: usize) {
        if let Some(held) = self.held.get_mut(i) {
            *held = held.saturating_sub(1);
        }
    }
}

// === metrics ===

/// How a request's stay in the queue ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It got a slot (at once: a wait of zero).
    Served,
    Timeout,
    Shed,
    /// Its client went away.
    Abandoned,
    /// No endpoint was usable any more; it went on without a slot.
    Unusable,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Timeout => "timeout",
            Outcome::Shed => "shed",
            Outcome::Abandoned => "abandoned",
            Outcome::Unusable => "unusable",
        }
    }
}

const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

struct Metrics {
    wait: HistogramVec,
    refusals: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    wait: histogram_vec(
        "tollgate_queue_wait_seconds",
        "Time requests spent waiting for a slot in a pool's queue (0 when admitted at once), by pool, priority class and outcome (served, timeout, shed, abandoned, unusable).",
        &["pool", "priority", "outcome"],
        WAIT_BUCKETS,
    ),
    refusals: counter_vec(
        "tollgate_queue_rejections_total",
        "Requests a saturated pool refused, by pool, priority class and reason (queue_full, queue_timeout, queue_shed).",
        &["pool", "priority", "reason"],
    ),
});

/// Registers the queue's series.
pub fn init_metrics() {
    LazyLock::force(&METRICS);
}

fn observe_wait(pool: &Pool, class: &PriorityClass, outcome: Outcome, waited: Duration) {
    METRICS
        .wait
        .with_label_values(&[pool.spec.name.as_str(), &class.name, outcome.as_str()])
        .observe(waited.as_secs_f64());
}

fn count_refusal(pool: &Pool, class: &PriorityClass, cause: Saturation) {
    METRICS
        .refusals
        .with_label_values(&[pool.spec.name.as_str(), &class.name, cause.as_str()])
        .inc();
}

#[cfg(test)]
mod tests;
