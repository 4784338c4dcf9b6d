//! The cache on both backends (a real `redis-server` for Redis), time moved by hand.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tollgate_plugin::{ManualClock, Principal, TokenUsage};

use super::*;
use crate::store::test_redis::RedisServer;
use crate::store::{Backend as StateBackend, RedisConfig};

const T0: u64 = 1_700_000_000_000;

fn policy(yaml: &str) -> Policy {
    Policy::build(serde_saphyr::from_str(yaml).unwrap()).unwrap()
}

fn state(url: Option<String>) -> StateConfig {
    StateConfig {
        backend: StateBackend::Local,
        redis: RedisConfig {
            url: url.unwrap_or_else(|| "redis://127.0.0.1:1".into()),
            timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        },
    }
}

fn cache(yaml: &str, url: Option<String>) -> (ResponseCache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let c = ResponseCache::build(policy(yaml), &state(url), None, clock.clone()).unwrap();
    (c, clock)
}

fn principal(id: &str, team: Option<&str>) -> Principal {
    Principal {
        id: id.into(),
        team: team.map(Into::into),
        ..Principal::anonymous()
    }
}

const BODY: &[u8] = br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;

fn plan_for(c: &ResponseCache, body: &[u8], headers: &HeaderMap) -> Option<Plan> {
    c.plan(
        Api::ChatCompletions,
        "m",
        body,
        false,
        &principal("k1", Some("t1")),
        headers,
    )
    .unwrap()
}

fn answer(n: usize) -> Answer {
    Answer::Json(Bytes::from(format!("{{\"x\":\"{}\"}}", "a".repeat(n))))
}

const USAGE: TokenUsage = TokenUsage {
    prompt: 3,
    completion: 5,
    cached: 0,
    reasoning: 0,
};

/// Stores, expires and forgets an entry on whichever backend `c` has.
async fn ttl_is_kept(c: &ResponseCache, clock: &ManualClock) {
    let plan = plan_for(c, BODY, &HeaderMap::new()).unwrap();
    assert!(c.lookup(&plan.key).await.is_none());
    c.store(&plan, answer(10), "m", Some(USAGE)).await;
    let got = c.lookup(&plan.key).await.expect("stored");
    assert_eq!(got.answer, answer(10));
    assert_eq!(got.usage, Some(USAGE.into()));
    assert_eq!(got.served_model, "m");
    clock.set(T0 + 3_599_999);
    assert!(c.lookup(&plan.key).await.is_some(), "alive until the TTL");
    clock.set(T0 + 3_600_000);
    assert!(c.lookup(&plan.key).await.is_none(), "gone at the TTL");

    // A per-request TTL.
    let mut h = HeaderMap::new();
    h.insert(TTL_HEADER, "5".parse().unwrap());
    let short = plan_for(c, BODY, &h).unwrap();
    assert_eq!(short.store.unwrap().0, Duration::from_secs(5));
    c.store(&short, answer(1), "m", None).await;
    clock.set(T0 + 3_600_000 + 4_999);
    assert!(c.lookup(&short.key).await.is_some());
    clock.set(T0 + 3_600_000 + 5_000);
    assert!(c.lookup(&short.key).await.is_none());
}

#[tokio::test]
async fn memory_entries_live_for_their_ttl() {
    let (c, clock) = cache("ttl: 1h", None);
    ttl_is_kept(&c, &clock).await;
}

#[tokio::test]
async fn redis_entries_live_for_their_ttl() {
    let server = RedisServer::start();
    let (c, clock) = cache("backend: redis\nttl: 1h", Some(server.url()));
    assert_eq!(c.backend_name(), "redis");
    ttl_is_kept(&c, &clock).await;
}

#[tokio::test]
async fn memory_stays_within_its_bound_when_filled_past_it() {
    let max = 64 * 1024;
    let (c, _) = cache(&format!("max_bytes: {max}\nmax_entry_bytes: 4096"), None);
    let mut keys = Vec::new();
    for i in 0..200 {
        let body = format!(r#"{{"temperature":0,"messages":[{{"role":"user","content":"{i}"}}]}}"#);
        let plan = plan_for(&c, body.as_bytes(), &HeaderMap::new()).unwrap();
        c.store(&plan, answer(1000), "m", None).await;
        assert!(
            c.resident_bytes() <= max,
            "{} bytes held after {i} entries, bound {max}",
            c.resident_bytes()
        );
        keys.push(plan.key);
    }
    // 200 × ~1.1 KiB were offered; about 64 KiB worth are held, and are served.
    let mut held = 0;
    for k in &keys {
        if c.lookup(k).await.is_some() {
            held += 1;
        }
    }
    assert!((20..=60).contains(&held), "{held} entries held");
    assert!(c.resident_bytes() > max / 2, "{}", c.resident_bytes());
}

#[tokio::test]
async fn a_corrupted_redis_entry_is_a_miss_and_is_removed() {
    let server = RedisServer::start();
    let (c, _) = cache("backend: redis", Some(server.url()));
    let plan = plan_for(&c, BODY, &HeaderMap::new()).unwrap();
    c.store(&plan, answer(10), "m", None).await;
    let name = format!("tollgate:cache:{}", plan.key.hex());
    let mut raw = server.raw().await;
    let stored: Vec<u8> = ::redis::AsyncCommands::get(&mut raw, &name).await.unwrap();
    for broken in [stored[..stored.len() / 2].to_vec(), b"garbage".to_vec(), {
        let mut b = stored.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        b
    }] {
        let _: () = ::redis::AsyncCommands::set(&mut raw, &name, broken)
            .await
            .unwrap();
        assert!(c.lookup(&plan.key).await.is_none(), "served a broken entry");
        let exists: bool = ::redis::AsyncCommands::exists(&mut raw, &name)
            .await
            .unwrap();
        assert!(!exists, "the broken entry is removed");
    }
    // Stored again, it is served again.
    c.store(&plan, answer(10), "m", None).await;
    assert!(c.lookup(&plan.key).await.is_some());
}

#[tokio::test]
async fn redis_down_is_a_miss_and_recovers() {
    let mut server = RedisServer::start();
    let (c, clock) = cache("backend: redis", Some(server.url()));
    let plan = plan_for(&c, BODY, &HeaderMap::new()).unwrap();
    c.store(&plan, answer(10), "m", None).await;
    assert!(c.lookup(&plan.key).await.is_some());
    server.stop();
    assert!(c.lookup(&plan.key).await.is_none());
    // Left alone for a while: no call (and no timeout) on the request path.
    let started = std::time::Instant::now();
    c.store(&plan, answer(10), "m", None).await;
    assert!(c.lookup(&plan.key).await.is_none());
    assert!(started.elapsed() < Duration::from_millis(50));
    server.restart();
    clock.set(T0 + 1_000);
    assert!(
        c.lookup(&plan.key).await.is_none(),
        "the restarted Redis is empty"
    );
    c.store(&plan, answer(10), "m", None).await;
    assert!(c.lookup(&plan.key).await.is_some());
}

#[test]
fn what_a_request_asks_of_the_cache() {
    let (c, _) = cache(
        "models:\n  hot: {deterministic_only: false}\n  off: {enabled: false}\nkeys:\n  nocache: {enabled: false}\n",
        None,
    );
    let none = HeaderMap::new();
    let p = plan_for(&c, BODY, &none).unwrap();
    assert!(p.lookup);
    assert_eq!(p.store, Some((Duration::from_secs(3600), 1024 * 1024)));

    // Not deterministic: bypassed, unless the model's rule says otherwise.
    let warm = br#"{"temperature":0.7,"messages":[]}"#;
    assert!(plan_for(&c, warm, &none).is_none());
    let who = principal("k1", None);
    let hot = c
        .plan(Api::ChatCompletions, "hot", warm, false, &who, &none)
        .unwrap();
    assert!(hot.is_some());
    let off = c
        .plan(Api::ChatCompletions, "off", BODY, false, &who, &none)
        .unwrap();
    assert!(off.is_none());
    let by_key = c
        .plan(
            Api::ChatCompletions,
            "m",
            BODY,
            false,
            &principal("nocache", None),
            &none,
        )
        .unwrap();
    assert!(by_key.is_none());

    let with = |value: &str| {
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, value.parse().unwrap());
        plan_for(&c, BODY, &h)
    };
    let refresh = with("no-cache").unwrap();
    assert!(!refresh.lookup && refresh.store.is_some());
    let read_only = with("No-Store").unwrap();
    assert!(read_only.lookup && read_only.store.is_none());
    assert!(with("no-cache, no-store").is_none());
    assert!(with("max-age=0").unwrap().lookup);

    let ttl = |value: &str| {
        let mut h = HeaderMap::new();
        h.insert(TTL_HEADER, value.parse().unwrap());
        c.plan(Api::ChatCompletions, "m", BODY, false, &who, &h)
    };
    assert_eq!(
        ttl("90").unwrap().unwrap().store.unwrap().0,
        Duration::from_secs(90)
    );
    assert_eq!(
        ttl("999999999").unwrap().unwrap().store.unwrap().0,
        Duration::from_secs(24 * 3600),
        "capped at max_ttl"
    );
    assert!(ttl("0").unwrap().unwrap().store.is_none(), "0: not stored");
    for bad in ["-1", "1.5", "soon", ""] {
        assert!(
            matches!(ttl(bad), Err(GatewayError::InvalidRequest { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn scopes_keep_tenants_apart() {
    let key = |scope: &str, id: &str, team: Option<&str>| {
        let (c, _) = cache(&format!("scope: {scope}"), None);
        c.plan(
            Api::ChatCompletions,
            "m",
            BODY,
            false,
            &principal(id, team),
            &HeaderMap::new(),
        )
        .unwrap()
        .unwrap()
        .key
    };
    // Team scope: keys of a team share, teams do not; a key without a team is alone.
    assert_eq!(key("team", "a", Some("t")), key("team", "b", Some("t")));
    assert_ne!(key("team", "a", Some("t")), key("team", "a", Some("u")));
    assert_ne!(key("team", "a", None), key("team", "b", None));
    assert_ne!(key("key", "a", Some("t")), key("key", "b", Some("t")));
    assert_eq!(key("shared", "a", Some("t")), key("shared", "b", Some("u")));
}

#[test]
fn replayed_streams_end_with_done_and_hide_usage_unless_asked() {
    let events = vec![
        Bytes::from_static(br#"{"choices":[{"delta":{"content":"a"}}]}"#),
        Bytes::from_static(
            br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
        ),
    ];
    let all = replay_events(&events, false);
    assert_eq!(
        all,
        Bytes::from(format!(
            "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
            std::str::from_utf8(&events[0]).unwrap(),
            std::str::from_utf8(&events[1]).unwrap()
        ))
    );
    let stripped = replay_events(&events, true);
    assert_eq!(
        stripped,
        Bytes::from(format!(
            "data: {}\n\ndata: [DONE]\n\n",
            std::str::from_utf8(&events[0]).unwrap()
        ))
    );
}
