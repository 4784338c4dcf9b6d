use std::path::Path;
use std::time::Duration;

use super::*;
use crate::upstream::load::Load;

/// A pool of `n` endpoints (never contacted) with this `queue` section and balance
/// strategy.
fn pool(n: usize, queue: &str, strategy: &str) -> Pool {
    let endpoints: String = (0..n)
        .map(|i| format!("      - {{url: 'http://10.0.0.{i}:8000/v1', name: e{i}}}\n"))
        .collect();
    let text = format!(
        "\
listeners:
  - address: 127.0.0.1:8080
models:
  m:
    targets:
      - pool: p
pools:
  p:
    provider: openai
    balance: {{strategy: {strategy}}}
    queue: {{{queue}}}
    endpoints:
{endpoints}"
    );
    let config = crate::config::parse(&text, "gw.yaml", Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let spec = config.pools.into_iter().next().expect("one pool");
    Pool::build(spec).expect("pool builds")
}

fn class(name: &str, level: u32, sheddable: bool) -> PriorityClass {
    PriorityClass {
        name: name.to_owned(),
        level,
        max_wait: None,
        max_queue: None,
        sheddable,
    }
}

fn ask(caller: &str) -> Ask<'_> {
    Ask {
        hints: Hints::default(),
        tried: &[],
        caller,
    }
}

fn of(class: &PriorityClass) -> Priority<'_> {
    Priority { class, index: 0 }
}

fn slot(entry: Option<Entry<'_>>) -> Slot<'_> {
    match entry {
        Some(Entry::Slot(s)) => s,
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn ticket(entry: Option<Entry<'_>>) -> Ticket<'_> {
    match entry {
        Some(Entry::Queued(t)) => t,
        other => panic!("expected a place in the queue, got {other:?}"),
    }
}

impl<'a> Ticket<'a> {
    /// What the ticket was granted so far, without waiting.
    fn try_take(&mut self) -> Option<Waited<'a>> {
        let got = self.rx.as_mut()?.try_recv().ok()?;
        self.rx = None;
        Some(self.granted(Ok(got)))
    }

    /// The slot it was granted; panics if none.
    fn slot(&mut self) -> Slot<'a> {
        match self.try_take() {
            Some(Waited::Slot(s)) => s,
            other => panic!("expected a granted slot, got {other:?}"),
        }
    }
}

/// Which of `tickets` holds a grant now (taking it).
fn granted<'a>(tickets: &mut [(&str, Ticket<'a>)]) -> Vec<(String, Slot<'a>)> {
    tickets
        .iter_mut()
        .filter_map(|(name, t)| match t.try_take() {
            Some(Waited::Slot(s)) => Some(((*name).to_owned(), s)),
            Some(other) => panic!("{name}: {other:?}"),
            None => None,
        })
        .collect()
}

#[test]
fn slots_cap_each_endpoint_and_a_returned_slot_goes_to_the_next_waiter() {
    let p = pool(2, "max_in_flight_per_endpoint: 1", "round_robin");
    let c = class("default", 0, false);
    let a = slot(p.admit(&ask("k"), of(&c)));
    let b = slot(p.admit(&ask("k"), of(&c)));
    assert_ne!(a.endpoint(), b.endpoint(), "one slot each");
    let mut waiting = ticket(p.admit(&ask("k"), of(&c)));
    assert!(waiting.try_take().is_none());
    assert_eq!(p.queue().unwrap().waiting(0), 1);
    let freed = a.endpoint();
    drop(a);
    let got = waiting.slot();
    assert_eq!(got.endpoint(), freed);
    assert_eq!(p.queue().unwrap().waiting(0), 0);
    assert_eq!(p.queue().unwrap().held(freed), 1, "handed over, not freed");
    drop((got, b));
    assert_eq!(p.queue().unwrap().held(0) + p.queue().unwrap().held(1), 0);
}

#[test]
fn higher_levels_are_served_first() {
    let p = pool(1, "max_in_flight_per_endpoint: 1", "round_robin");
    let (low, high) = (class("batch", 1, true), class("interactive", 10, false));
    let held = slot(p.admit(&ask("a"), of(&low)));
    let mut tickets: Vec<(&str, Ticket<'_>)> = vec![
        ("low-1", ticket(p.admit(&ask("a"), of(&low)))),
        ("low-2", ticket(p.admit(&ask("a"), of(&low)))),
        ("high", ticket(p.admit(&ask("b"), of(&high)))),
    ];
    let mut order = Vec::new();
    let mut current = held;
    for _ in 0..3 {
        drop(current);
        let mut got = granted(&mut tickets);
        assert_eq!(got.len(), 1, "one slot, one grant");
        let (name, s) = got.pop().unwrap();
        order.push(name);
        current = s;
    }
    assert_eq!(order, ["high", "low-1", "low-2"]);
}

#[test]
fn callers_of_one_level_take_turns() {
    let p = pool(
        1,
        "max_in_flight_per_endpoint: 1, max_length: 50",
        "round_robin",
    );
    let c = class("default", 0, false);
    let mut current = slot(p.admit(&ask("heavy"), of(&c)));
    let mut tickets: Vec<(&str, Ticket<'_>)> = Vec::new();
    for _ in 0..5 {
        tickets.push(("heavy", ticket(p.admit(&ask("heavy"), of(&c)))));
    }
    for _ in 0..2 {
        tickets.push(("light", ticket(p.admit(&ask("light"), of(&c)))));
    }
    let mut order = Vec::new();
    for _ in 0..7 {
        drop(current);
        let mut got = granted(&mut tickets);
        assert_eq!(got.len(), 1);
        let (name, s) = got.pop().unwrap();
        order.push(name);
        current = s;
    }
    assert_eq!(
        order,
        [
            "heavy", "light", "heavy", "light", "heavy", "heavy", "heavy"
        ]
    );
}

#[test]
fn a_full_queue_refuses_or_sheds_a_lower_sheddable_waiter() {
    let p = pool(
        1,
        "max_in_flight_per_endpoint: 1, max_length: 2",
        "round_robin",
    );
    let batch = class("batch", 1, true);
    let interactive = class("interactive", 10, false);
    let _held = slot(p.admit(&ask("a"), of(&batch)));
    let mut first = ticket(p.admit(&ask("a"), of(&batch)));
    let mut newest = ticket(p.admit(&ask("a"), of(&batch)));
    assert!(matches!(
        p.admit(&ask("b"), of(&batch)),
        Some(Entry::Refused(Saturation::QueueFull))
    ));
    // A higher level takes the newest sheddable place.
    let _high = ticket(p.admit(&ask("c"), of(&interactive)));
    assert!(matches!(
        newest.try_take(),
        Some(Waited::Refused(Saturation::Shed))
    ));
    assert!(first.try_take().is_none(), "the older one keeps its place");
    assert_eq!(p.queue().unwrap().lock().waiting, 2);
    // Nothing below `interactive` is sheddable now but `first`; then nothing is.
    let _high2 = ticket(p.admit(&ask("c"), of(&interactive)));
    assert!(matches!(
        first.try_take(),
        Some(Waited::Refused(Saturation::Shed))
    ));
    assert!(matches!(
        p.admit(&ask("c"), of(&interactive)),
        Some(Entry::Refused(Saturation::QueueFull))
    ));
}

#[test]
fn a_class_has_its_own_bound() {
    let p = pool(1, "max_in_flight_per_endpoint: 1", "round_robin");
    let mut small = class("small", 0, false);
    small.max_queue = Some(1);
    let other = class("other", 0, false);
    let _held = slot(p.admit(&ask("a"), of(&other)));
    let _one = ticket(p.admit(
        &ask("a"),
        Priority {
            class: &small,
            index: 1,
        },
    ));
    assert!(matches!(
        p.admit(
            &ask("b"),
            Priority {
                class: &small,
                index: 1
            }
        ),
        Some(Entry::Refused(Saturation::QueueFull))
    ));
    let _fine = ticket(p.admit(&ask("b"), of(&other)));
    assert_eq!(p.queue().unwrap().waiting(1), 1);
    assert_eq!(p.queue().unwrap().waiting(0), 1);
}

#[test]
fn a_dropped_ticket_leaves_at_once_and_passes_on_a_late_grant() {
    let p = pool(1, "max_in_flight_per_endpoint: 1", "round_robin");
    let c = class("default", 0, false);
    let q = p.queue().unwrap();
    let held = slot(p.admit(&ask("a"), of(&c)));
    let gone = ticket(p.admit(&ask("a"), of(&c)));
    drop(gone);
    assert_eq!(q.waiting(0), 0, "left at once");

    // Granted, but dropped before taking it: the slot goes on to the next.
    let late = ticket(p.admit(&ask("a"), of(&c)));
    let mut next = ticket(p.admit(&ask("a"), of(&c)));
    drop(held);
    assert_eq!(q.held(0), 1, "granted to `late`");
    drop(late);
    assert_eq!(q.held(0), 1, "passed to `next`");
    let s = next.slot();
    drop(s);
    assert_eq!((q.held(0), q.waiting(0)), (0, 0), "nothing leaked");
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_bounded_by_the_class_and_the_pool() {
    let p = pool(
        1,
        "max_in_flight_per_endpoint: 1, max_wait: 30s",
        "round_robin",
    );
    let mut c = class("default", 0, false);
    c.max_wait = Some(Duration::from_secs(2));
    let _held = slot(p.admit(&ask("a"), of(&c)));
    let started = Instant::now();
    let t = ticket(p.admit(&ask("a"), of(&c)));
    assert!(matches!(
        t.wait(Duration::from_secs(60)).await,
        Waited::Refused(Saturation::QueueTimeout)
    ));
    assert_eq!(started.elapsed().as_secs(), 2);
    // The request's own deadline, when shorter.
    let t = ticket(p.admit(&ask("a"), of(&c)));
    let started = Instant::now();
    assert!(matches!(
        t.wait(Duration::from_millis(500)).await,
        Waited::Refused(Saturation::QueueTimeout)
    ));
    assert_eq!(started.elapsed().as_millis(), 500);
    assert_eq!(p.queue().unwrap().waiting(0), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_a_slot_returned_while_it_waits() {
    let p = pool(1, "max_in_flight_per_endpoint: 1", "round_robin");
    let c = class("default", 0, false);
    let held = slot(p.admit(&ask("a"), of(&c)));
    let t = ticket(p.admit(&ask("a"), of(&c)));
    let release = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
    };
    let (waited, ()) = tokio::join!(t.wait(Duration::from_secs(60)), release);
    assert!(matches!(waited, Waited::Slot(ref s) if s.endpoint() == 0));
}

#[tokio::test(start_paused = true)]
async fn load_signals_make_a_saturated_endpoint_full() {
    let p = pool(1, "load_signals: true", "load_aware");
    let c = class("default", 0, false);
    let load = |waiting| Load {
        waiting,
        running: 1.0,
        cache_usage: Some(0.1),
    };
    // Unknown load: no bound.
    let free = slot(p.admit(&ask("a"), of(&c)));
    drop(free);
    p.endpoints[0].load.set(load(16.0));
    let t = ticket(p.admit(&ask("a"), of(&c)));
    let lighter = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.endpoints[0].load.set(load(2.0));
        // As the scrape loop does after each round.
        p.recheck_queue();
    };
    let (waited, ()) = tokio::join!(t.wait(Duration::from_secs(60)), lighter);
    assert!(matches!(waited, Waited::Slot(_)));
}

#[test]
fn no_usable_endpoint_is_not_queued() {
    let p = pool(1, "max_in_flight_per_endpoint: 1", "round_robin");
    let c = class("default", 0, false);
    p.endpoints[0].rest(Duration::from_secs(30));
    assert!(matches!(
        p.admit(&ask("a"), of(&c)),
        Some(Entry::NoUsableEndpoint)
    ));
    assert_eq!(p.queue().unwrap().waiting(0), 0);
}

#[test]
fn a_tried_endpoint_is_avoided_while_another_has_room() {
    let p = pool(2, "max_in_flight_per_endpoint: 2", "round_robin");
    let c = class("default", 0, false);
    let retry = Ask {
        hints: Hints::default(),
        tried: &[0],
        caller: "a",
    };
    let on_one: Vec<Slot<'_>> = (0..2).map(|_| slot(p.admit(&retry, of(&c)))).collect();
    assert!(on_one.iter().all(|s| s.endpoint() == 1), "{on_one:?}");
    // Endpoint 1 is full: the tried one is better than waiting.
    let s = slot(p.admit(&retry, of(&c)));
    assert_eq!(s.endpoint(), 0);
}
