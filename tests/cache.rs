//! The response cache over real sockets, on both backends: hits are byte-identical and
//! never reach the upstream, tenants are kept apart, streams replay whole, broken
//! streams are never stored, identical requests in flight coalesce, and hits cost
//! nothing against budgets unless configured to.

mod common;

use std::time::Duration;

use common::openai::*;
use common::*;
use serde_json::{Value, json};

const SETTLE_WAIT: Duration = Duration::from_secs(10);

fn secret(id: &str) -> String {
    format!("sk-test-{id}-0123456789abcdef")
}

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug)]
enum On {
    Memory,
    Redis,
}

/// A gateway with keys `a1`, `a2` (team `a`) and `b1` (team `b`), `gpt-4o` on
/// `upstream`, the cache on `on` with `cache` extra settings (YAML lines indented by 2),
/// then `rest`.
fn gateway(
    upstream: &MockUpstream,
    on: On,
    redis: Option<&RedisServer>,
    cache: &str,
    rest: &str,
) -> Gateway {
    let state = match redis {
        Some(r) => format!(
            "state:\n  backend: redis\n  redis: {{url: '{}', timeout: 2s}}\n",
            r.url()
        ),
        None => String::new(),
    };
    let backend = match on {
        On::Memory => "memory",
        On::Redis => "redis",
    };
    Gateway::start(&format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n\
         auth:\n  keys:\n\
         \x20   - {{id: a1, team: a, secret: '{}'}}\n\
         \x20   - {{id: a2, team: a, secret: '{}'}}\n\
         \x20   - {{id: b1, team: b, secret: '{}'}}\n\
         cache:\n  backend: {backend}\n{cache}{state}{rest}",
        upstream.url(),
        secret("a1"),
        secret("a2"),
        secret("b1"),
    ))
}

fn redis_for(on: On) -> Option<RedisServer> {
    match on {
        On::Memory => None,
        On::Redis => Some(RedisServer::start()),
    }
}

struct Reply {
    status: u16,
    cache: String,
    body: bytes::Bytes,
}

async fn send(gw: &Gateway, key: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut req = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret(key))
        .json(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.bytes().await.unwrap();
    Reply {
        status,
        cache,
        body,
    }
}

fn chat(content: &str) -> Value {
    json!({"model": "gpt-4o", "temperature": 0, "seed": 7,
        "messages": [{"role": "user", "content": content}]})
}

async fn hits_are_exact_and_scoped(on: On) {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = redis_for(on);
    let gw = gateway(&upstream, on, redis.as_ref(), "", "");
    let body = chat("hello");

    let first = send(&gw, "a1", &body, &[]).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    let second = send(&gw, "a1", &body, &[]).await;
    assert_eq!((second.status, second.cache.as_str()), (200, "HIT"));
    assert_eq!(second.body, first.body, "a hit is byte-identical");
    assert_eq!(
        upstream.request_count(),
        1,
        "the hit never reached the upstream"
    );

    // Field order and spacing do not matter; the same team shares the entry.
    let reordered = r#"{"messages": [{"content": "hello", "role": "user"}],
        "seed": 7, "model": "gpt-4o", "temperature": 0.0}"#;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret("a2"))
        .header("content-type", "application/json")
        .body(reordered)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-cache"], "HIT");
    assert_eq!(resp.bytes().await.unwrap(), first.body);
    assert_eq!(upstream.request_count(), 1);

    // What changes the answer changes the key; another team never sees it.
    let mut warmer = body.clone();
    warmer["temperature"] = json!(0.5);
    let mut with_tools = body.clone();
    with_tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    for (what, key, b) in [
        ("temperature", "a1", &warmer),
        ("tools", "a1", &with_tools),
        ("another team", "b1", &body),
    ] {
        let r = send(&gw, key, b, &[]).await;
        assert_eq!((r.status, r.cache.as_str()), (200, "MISS"), "{what}");
    }
    assert_eq!(upstream.request_count(), 4);

    // A request that does not ask for a repeatable answer is not cached.
    let sampled = json!({"model": "gpt-4o", "temperature": 0.9,
        "messages": [{"role": "user", "content": "hello"}]});
    for _ in 0..2 {
        let r = send(&gw, "a1", &sampled, &[]).await;
        assert_eq!((r.status, r.cache.as_str()), (200, "BYPASS"));
    }
    assert_eq!(upstream.request_count(), 6);

    // no-cache goes upstream and refreshes; no-store answers from the cache but does
    // not store what it fetches.
    let r = send(&gw, "a1", &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(r.cache, "BYPASS");
    assert_eq!(upstream.request_count(), 7);
    assert_eq!(send(&gw, "a1", &body, &[]).await.cache, "HIT");
    let fresh = chat("not stored");
    let r = send(&gw, "a1", &fresh, &[("cache-control", "no-store")]).await;
    assert_eq!(r.cache, "MISS");
    assert_eq!(send(&gw, "a1", &fresh, &[]).await.cache, "MISS");
    assert_eq!(upstream.request_count(), 9);

    // A malformed TTL header is the client's error.
    let r = send(&gw, "a1", &body, &[("x-tollgate-cache-ttl", "soon")]).await;
    assert_eq!(r.status, 400);
    let e: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-tollgate-cache-ttl"),
        "{e}"
    );
}

#[tokio::test]
async fn hits_are_exact_and_scoped_in_memory() {
    hits_are_exact_and_scoped(On::Memory).await;
}

#[tokio::test]
async fn hits_are_exact_and_scoped_in_redis() {
    hits_are_exact_and_scoped(On::Redis).await;
}

async fn streams_replay_whole_and_broken_ones_are_not_kept(on: On) {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = redis_for(on);
    let gw = gateway(&upstream, on, redis.as_ref(), "", "");
    let mut body = chat("stream me");
    body["stream"] = json!(true);

    let first = send(&gw, "a1", &body, &[]).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    let second = send(&gw, "a1", &body, &[]).await;
    assert_eq!((second.status, second.cache.as_str()), (200, "HIT"));
    assert_eq!(upstream.request_count(), 1);
    let text = |r: &Reply| String::from_utf8(r.body.to_vec()).unwrap();
    let events = parse_sse_data(&text(&second));
    assert_eq!(
        events,
        parse_sse_data(&text(&first)),
        "every chunk replayed"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(sse_content(&text(&second)), ECHO_STREAM_PIECES.concat());
    assert!(
        !text(&second).contains("\"usage\":{"),
        "usage not asked for"
    );

    // A client that asks for usage gets it from the same entry.
    let mut with_usage = body.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let r = send(&gw, "a1", &with_usage, &[]).await;
    assert_eq!(r.cache, "HIT");
    assert!(text(&r).contains(&format!("\"prompt_tokens\":{}", ECHO_USAGE.0)));
    // The non-stream shape is its own entry.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    assert_eq!(send(&gw, "a1", &whole, &[]).await.cache, "MISS");
    assert_eq!(upstream.request_count(), 2);

    // An upstream that dies mid-stream leaves nothing cached.
    upstream.set_behavior(Behavior::SseAbort {
        chunks: vec![sse_chat_chunk("x", "partial")],
        delay_between: Duration::from_millis(10),
    });
    let mut doomed = chat("dies midway");
    doomed["stream"] = json!(true);
    let cut = send(&gw, "a1", &doomed, &[]).await;
    assert_eq!(cut.cache, "MISS");
    assert!(!text(&cut).contains("[DONE]"), "{}", text(&cut));
    upstream.set_behavior(Behavior::EchoChat);
    let again = send(&gw, "a1", &doomed, &[]).await;
    assert_eq!(again.cache, "MISS", "the broken stream was not stored");
    assert_eq!(send(&gw, "a1", &doomed, &[]).await.cache, "HIT");
    assert_eq!(upstream.request_count(), 4);
}

#[tokio::test]
async fn streams_replay_whole_and_broken_ones_are_not_kept_in_memory() {
    streams_replay_whole_and_broken_ones_are_not_kept(On::Memory).await;
}

#[tokio::test]
async fn streams_replay_whole_and_broken_ones_are_not_kept_in_redis() {
    streams_replay_whole_and_broken_ones_are_not_kept(On::Redis).await;
}

async fn identical_requests_in_flight_coalesce(on: On) {
    let upstream = MockUpstream::start(Behavior::delay(
        Duration::from_millis(500),
        Behavior::EchoChat,
    ));
    let redis = redis_for(on);
    let gw = gateway(&upstream, on, redis.as_ref(), "", "");
    let body = chat("twenty at once");
    let replies =
        futures_util::future::join_all((0..20).map(|_| send(&gw, "a1", &body, &[]))).await;
    assert_eq!(upstream.request_count(), 1, "one went upstream");
    let first = &replies[0].body;
    let mut misses = 0;
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(&r.body, first, "all got the same answer");
        misses += usize::from(r.cache == "MISS");
    }
    assert_eq!(misses, 1, "one leader, 19 served its answer");
}

#[tokio::test]
async fn identical_requests_in_flight_coalesce_in_memory() {
    identical_requests_in_flight_coalesce(On::Memory).await;
}

#[tokio::test]
async fn identical_requests_in_flight_coalesce_in_redis() {
    identical_requests_in_flight_coalesce(On::Redis).await;
}

#[tokio::test]
async fn without_coalescing_each_goes_upstream() {
    let upstream = MockUpstream::start(Behavior::delay(
        Duration::from_millis(300),
        Behavior::EchoChat,
    ));
    let gw = gateway(&upstream, On::Memory, None, "  coalesce: false\n", "");
    let body = chat("five at once");
    let replies = futures_util::future::join_all((0..5).map(|_| send(&gw, "a1", &body, &[]))).await;
    assert!(replies.iter().all(|r| r.status == 200 && r.cache == "MISS"));
    assert_eq!(upstream.request_count(), 5);
}

/// Tokens charged to `a1`'s lifetime budget after a miss and a hit.
async fn charged_after_a_miss_and_a_hit(charge_hits: bool) -> u64 {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let gw = gateway(
        &upstream,
        On::Memory,
        Some(&redis),
        &format!("  charge_hits: {charge_hits}\n"),
        "quotas:\n  keys:\n    a1: {budgets: [{tokens: 1000000, window: lifetime}]}\n",
    );
    let body = chat("budgeted");
    assert_eq!(send(&gw, "a1", &body, &[]).await.cache, "MISS");
    assert_eq!(send(&gw, "a1", &body, &[]).await.cache, "HIT");
    assert_eq!(upstream.request_count(), 1);
    let key = "tollgate:tg:tok:lifetime:key:a1:all";
    let want = if charge_hits { 2 } else { 1 } * (ECHO_USAGE.0 + ECHO_USAGE.1);
    // Settling follows the response.
    redis.wait_for_counter(key, want, SETTLE_WAIT).await
}

#[tokio::test]
async fn a_hit_costs_nothing_against_budgets_unless_configured() {
    let tokens = ECHO_USAGE.0 + ECHO_USAGE.1;
    assert_eq!(charged_after_a_miss_and_a_hit(false).await, tokens);
    assert_eq!(charged_after_a_miss_and_a_hit(true).await, 2 * tokens);
}

#[tokio::test]
async fn redis_unreachable_means_uncached_not_failed() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let mut redis = RedisServer::start();
    let gw = gateway(&upstream, On::Redis, Some(&redis), "", "");
    let body = chat("redis goes away");
    assert_eq!(send(&gw, "a1", &body, &[]).await.cache, "MISS");
    assert_eq!(send(&gw, "a1", &body, &[]).await.cache, "HIT");
    redis.stop();
    for _ in 0..3 {
        let r = send(&gw, "a1", &body, &[]).await;
        assert_eq!((r.status, r.cache.as_str()), (200, "MISS"));
    }
    assert_eq!(upstream.request_count(), 4);
    assert!(
        eventually(SETTLE_WAIT, || gw
            .logs()
            .contains("Response cache: Redis failed"))
        .await,
        "the fault is logged"
    );
}

#[tokio::test]
async fn an_answer_over_the_entry_limit_is_served_but_not_kept() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&upstream, On::Memory, None, "  max_entry_bytes: 100\n", "");
    let body = chat("too big to keep");
    for _ in 0..2 {
        let r = send(&gw, "a1", &body, &[]).await;
        assert_eq!((r.status, r.cache.as_str()), (200, "MISS"));
        assert!(r.body.len() > 100);
    }
    assert_eq!(upstream.request_count(), 2);
}
