use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Hints, prefix_hash, session_hash};
use crate::upstream::Pool;
use crate::upstream::load::Load;

/// A pool of `openai` endpoints named `e0`, `e1`, … with these weights, balanced by
/// `strategy` plus any `extra` balance settings (YAML flow mapping entries).
fn pool(strategy: &str, weights: &[u32], extra: &str) -> Pool {
    let mut endpoints = String::new();
    for (i, w) in weights.iter().enumerate() {
        endpoints.push_str(&format!(
            "      - {{url: 'http://10.0.0.{i}:8000/v1', name: e{i}, weight: {w}}}\n"
        ));
    }
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
    balance: {{strategy: {strategy}{extra}}}
    endpoints:
{endpoints}"
    );
    let config = crate::config::parse(&text, "gw.yaml", Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let spec = config.pools.into_iter().next().expect("one pool");
    Pool::build(spec).expect("pool builds")
}

fn counts(pool: &Pool, picks: usize, hints: &Hints, usable: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let mut c = vec![0; pool.endpoints.len()];
    for _ in 0..picks {
        let i = pool
            .balancer
            .pick(&pool.endpoints, hints, usable)
            .expect("an endpoint");
        assert!(usable(i), "picked unusable endpoint {i}");
        c[i] += 1;
    }
    c
}

fn all(_: usize) -> bool {
    true
}

fn set_load(pool: &Pool, i: usize, waiting: f64, running: f64) {
    pool.endpoints[i].load.set(Load {
        waiting,
        running,
        cache_usage: Some(0.1),
    });
}

/// Picks for `hints` and reports the pick as served, like the request path does.
fn pick_and_serve(pool: &Pool, hints: &Hints) -> usize {
    let i = pool
        .balancer
        .pick(&pool.endpoints, hints, &all)
        .expect("an endpoint");
    pool.balancer.served(hints, i);
    i
}

// === round_robin ===

#[test]
fn round_robin_follows_weights() {
    let p = pool("round_robin", &[1, 3], "");
    let c = counts(&p, 1000, &Hints::default(), &all);
    assert!((200..=300).contains(&c[0]), "{c:?}");
    assert!((700..=800).contains(&c[1]), "{c:?}");
}

#[test]
fn round_robin_skips_unusable_and_keeps_the_others_shares() {
    let p = pool("round_robin", &[1, 3, 4], "");
    let usable = |i: usize| i != 2;
    let c = counts(&p, 1000, &Hints::default(), &usable);
    assert_eq!(c[2], 0);
    // 1:3 of the whole, within 5 %.
    assert!((200..=300).contains(&c[0]), "{c:?}");
    assert!((700..=800).contains(&c[1]), "{c:?}");
}

#[test]
fn nothing_usable_is_none() {
    for strategy in [
        "round_robin",
        "least_in_flight",
        "ewma",
        "consistent_hash",
        "load_aware",
    ] {
        let p = pool(strategy, &[1, 1], "");
        let hints = Hints {
            session: Some(1),
            prefix: Some(2),
        };
        assert_eq!(p.balancer.pick(&p.endpoints, &hints, &|_| false), None);
    }
}

// === least_in_flight ===

#[test]
fn least_in_flight_picks_the_idle_endpoint() {
    let p = pool("least_in_flight", &[1, 1, 1], "");
    p.endpoints[0].traffic.in_flight.store(3, Ordering::Relaxed);
    p.endpoints[2].traffic.in_flight.store(1, Ordering::Relaxed);
    assert_eq!(counts(&p, 50, &Hints::default(), &all), vec![0, 50, 0]);
}

#[test]
fn least_in_flight_shares_ties_and_honours_weights() {
    let p = pool("least_in_flight", &[1, 1, 2], "");
    let c = counts(&p, 300, &Hints::default(), &all);
    assert!(c.iter().all(|&n| (60..=140).contains(&n)), "{c:?}");
    // 2 in flight on weight 2 counts as 1 on weight 1: it beats 2 on weight 1.
    p.endpoints[0].traffic.in_flight.store(2, Ordering::Relaxed);
    p.endpoints[1].traffic.in_flight.store(2, Ordering::Relaxed);
    p.endpoints[2].traffic.in_flight.store(2, Ordering::Relaxed);
    assert_eq!(counts(&p, 10, &Hints::default(), &all), vec![0, 0, 10]);
    let c = counts(&p, 300, &Hints::default(), &|i| i != 2);
    assert!(c[2] == 0 && (100..=200).contains(&c[0]), "{c:?}");
}

// === ewma ===

#[test]
fn ewma_prefers_the_faster_endpoint() {
    let p = pool("ewma", &[1, 1, 1], "");
    p.endpoints[0]
        .traffic
        .record_latency(Duration::from_millis(20));
    p.endpoints[1]
        .traffic
        .record_latency(Duration::from_millis(200));
    p.endpoints[2]
        .traffic
        .record_latency(Duration::from_millis(200));
    let c = counts(&p, 3000, &Hints::default(), &all);
    // The fast one wins every pair it is drawn into: 2/3 of the picks.
    assert!(c[0] > 1800, "{c:?}");
    assert!(c[1] < 700 && c[2] < 700, "{c:?}");
}

#[test]
fn ewma_tries_an_endpoint_without_samples_and_weighs_in_flight() {
    let p = pool("ewma", &[1, 1], "");
    p.endpoints[0]
        .traffic
        .record_latency(Duration::from_millis(20));
    assert_eq!(counts(&p, 20, &Hints::default(), &all), vec![0, 20]);
    p.endpoints[1]
        .traffic
        .record_latency(Duration::from_millis(40));
    p.endpoints[1].traffic.in_flight.store(1, Ordering::Relaxed);
    p.endpoints[0].traffic.in_flight.store(4, Ordering::Relaxed);
    // 20 ms × 5 loses to 40 ms × 2.
    assert_eq!(counts(&p, 20, &Hints::default(), &all), vec![0, 20]);
}

#[tokio::test(start_paused = true)]
async fn latency_average_follows_a_change_faster_after_a_pause() {
    let p = pool("ewma", &[1], "");
    let t = &p.endpoints[0].traffic;
    t.record_latency(Duration::from_millis(100));
    assert_eq!(t.latency(), Some(Duration::from_millis(100)));
    // Back to back: one sample moves the average only a little.
    t.record_latency(Duration::from_millis(900));
    let quick = t.latency().unwrap();
    assert!(quick < Duration::from_millis(200), "{quick:?}");
    // After a long pause the new sample dominates.
    tokio::time::advance(Duration::from_secs(60)).await;
    t.record_latency(Duration::from_millis(900));
    let late = t.latency().unwrap();
    assert!(late > Duration::from_millis(890), "{late:?}");
}

// === consistent_hash ===

#[test]
fn consistent_hash_keeps_sessions_and_moves_only_the_lost_endpoints() {
    let p = pool("consistent_hash", &[1, 2, 1, 1], "");
    let pick = |session: u64, usable: &dyn Fn(usize) -> bool| {
        let hints = Hints {
            session: Some(session),
            prefix: None,
        };
        p.balancer.pick(&p.endpoints, &hints, usable).unwrap()
    };
    let sessions: Vec<u64> = (0..1000)
        .map(|n| session_hash(format!("user-{n}").as_bytes()))
        .collect();
    let before: Vec<usize> = sessions.iter().map(|&s| pick(s, &all)).collect();
    for _ in 0..3 {
        let again: Vec<usize> = sessions.iter().map(|&s| pick(s, &all)).collect();
        assert_eq!(again, before);
    }
    // Weighted: e1 (weight 2) holds about 2/5.
    let on_e1 = before.iter().filter(|&&i| i == 1).count();
    assert!((320..=480).contains(&on_e1), "{on_e1}");

    let without_e1 = |i: usize| i != 1;
    let after: Vec<usize> = sessions.iter().map(|&s| pick(s, &without_e1)).collect();
    for (b, a) in before.iter().zip(&after) {
        if *b == 1 {
            assert_ne!(*a, 1);
        } else {
            assert_eq!(a, b, "a session not on e1 moved");
        }
    }
}

#[test]
fn consistent_hash_hashes_are_stable() {
    // Pinned: replicas and restarts must agree.
    assert_eq!(session_hash(b"alice"), session_hash(b"alice"));
    assert_ne!(session_hash(b"alice"), session_hash(b"bob"));
    assert_eq!(prefix_hash(b"abc"), session_hash(b"abc"));
    let a = pool("consistent_hash", &[1, 1, 1], "");
    let b = pool("consistent_hash", &[1, 1, 1], "");
    for n in 0..100u64 {
        let hints = Hints {
            session: Some(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            prefix: None,
        };
        assert_eq!(
            a.balancer.pick(&a.endpoints, &hints, &all),
            b.balancer.pick(&b.endpoints, &hints, &all)
        );
    }
}

#[test]
fn consistent_hash_without_session_is_round_robin() {
    let p = pool("consistent_hash", &[1, 1], "");
    assert_eq!(counts(&p, 100, &Hints::default(), &all), vec![50, 50]);
}

// === load_aware ===

#[test]
fn load_aware_avoids_a_saturated_endpoint() {
    let p = pool("load_aware", &[1, 1, 1], ", max_waiting: 16");
    set_load(&p, 0, 20.0, 8.0);
    set_load(&p, 1, 0.0, 6.0);
    set_load(&p, 2, 1.0, 2.0);
    let c = counts(&p, 300, &Hints::default(), &all);
    assert!(
        c[0] == 0 && (100..=200).contains(&c[1]),
        "ties share: {c:?}"
    );
    // A full KV cache saturates too.
    p.endpoints[2].load.set(Load {
        waiting: 0.0,
        running: 1.0,
        cache_usage: Some(0.99),
    });
    assert_eq!(counts(&p, 20, &Hints::default(), &all), vec![0, 20, 0]);
    // All saturated: the least loaded still takes requests.
    set_load(&p, 1, 30.0, 8.0);
    let c = counts(&p, 20, &Hints::default(), &all);
    assert_eq!(c, vec![0, 0, 20]);
}

#[test]
fn load_aware_without_fresh_load_uses_in_flight() {
    let p = pool("load_aware", &[1, 1], "");
    p.endpoints[0].traffic.in_flight.store(5, Ordering::Relaxed);
    assert_eq!(counts(&p, 10, &Hints::default(), &all), vec![0, 10]);
}

#[tokio::test(start_paused = true)]
async fn load_aware_ignores_stale_load() {
    let p = pool("load_aware", &[1, 1], ", stale_after: 5s");
    set_load(&p, 0, 30.0, 8.0);
    assert_eq!(counts(&p, 10, &Hints::default(), &all), vec![0, 10]);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(p.endpoints[0].load.fresh(Duration::from_secs(5)).is_none());
    let c = counts(&p, 100, &Hints::default(), &all);
    assert!(c[0] >= 20 && c[1] >= 20, "{c:?}");
}

#[test]
fn load_aware_keeps_a_prefix_on_one_endpoint_until_it_is_much_busier() {
    let p = pool("load_aware", &[1, 1, 1], ", affinity_slack: 4");
    for i in 0..3 {
        set_load(&p, i, 0.0, 2.0);
    }
    let hints = Hints {
        session: None,
        prefix: Some(prefix_hash(b"You are a helpful assistant. Answer briefly.")),
    };
    let owner = pick_and_serve(&p, &hints);
    for _ in 0..50 {
        assert_eq!(pick_and_serve(&p, &hints), owner);
    }
    // Somewhat busier (within the slack): the prefix stays.
    set_load(&p, owner, 0.0, 5.0);
    for _ in 0..20 {
        assert_eq!(pick_and_serve(&p, &hints), owner);
    }
    // Much busier: it moves, and stays on its new endpoint.
    set_load(&p, owner, 2.0, 8.0);
    let moved = pick_and_serve(&p, &hints);
    assert_ne!(moved, owner);
    for _ in 0..20 {
        assert_eq!(pick_and_serve(&p, &hints), moved);
    }
    // Other prefixes spread over the idle endpoints.
    let mut seen = [false; 3];
    for n in 0..60 {
        let other = Hints {
            session: None,
            prefix: Some(prefix_hash(format!("prompt {n}").as_bytes())),
        };
        seen[p.balancer.pick(&p.endpoints, &other, &all).unwrap()] = true;
    }
    assert!(seen[(owner + 1) % 3] && seen[(owner + 2) % 3], "{seen:?}");
    assert!(!seen[owner], "the busy endpoint takes no new prefix");
}

#[test]
fn load_aware_leaves_an_unusable_or_saturated_owner() {
    let p = pool("load_aware", &[1, 1], ", max_waiting: 16");
    let hints = Hints {
        session: None,
        prefix: Some(prefix_hash(b"shared system prompt")),
    };
    let owner = pick_and_serve(&p, &hints);
    let other = 1 - owner;
    assert_eq!(
        p.balancer
            .pick(&p.endpoints, &hints, &|i| i != owner)
            .unwrap(),
        other
    );
    // Saturated, even with a score close to the other's.
    p.endpoints[owner].load.set(Load {
        waiting: 0.0,
        running: 1.0,
        cache_usage: Some(0.99),
    });
    set_load(&p, other, 0.0, 1.0);
    assert_eq!(p.balancer.pick(&p.endpoints, &hints, &all).unwrap(), other);
}

#[test]
fn load_aware_new_prefix_goes_to_the_same_endpoint_on_every_replica() {
    let a = pool("load_aware", &[1, 1, 1, 1], "");
    let b = pool("load_aware", &[1, 1, 1, 1], "");
    for n in 0..100 {
        let hints = Hints {
            session: None,
            prefix: Some(prefix_hash(format!("prompt {n}").as_bytes())),
        };
        assert_eq!(
            a.balancer.pick(&a.endpoints, &hints, &all),
            b.balancer.pick(&b.endpoints, &hints, &all)
        );
    }
}

#[test]
fn affinity_table_is_bounded_and_checks_tags() {
    let p = pool("load_aware", &[1, 1], "");
    let table = p.balancer.affinity.as_ref().unwrap();
    assert_eq!(table.slots.len(), super::AFFINITY_SLOTS);
    table.record(7, 1);
    assert_eq!(table.owner(7), Some(1));
    // Same slot, different tag: not the owner of 7's prefix.
    let clash = 7 + (1 << 20);
    assert_eq!(table.owner(clash), None);
    table.record(clash, 0);
    assert_eq!(table.owner(clash), Some(0));
    assert_eq!(table.owner(7), None);
}
