//! Identity, rate limits and budgets over real sockets: gateway processes sharing a real
//! `redis-server`, mock upstreams for the model. The counters are read back from Redis
//! (names from `plugins/limits`: `tollgate:` prefix, then `tg:<kind>:<scope>:<window>`),
//! so every charge is checked to the token and to the micro-dollar.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::openai::*;
use common::*;
use futures_util::future::join_all;
use serde_json::{Value, json};

/// Every request and every wait in this file is bounded by at most this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a settle (one Redis call after the answer went out) may take to show.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// Prices of `gpt-4o` in the configs below, in USD per 1M tokens: input 2, output 10, so
/// one [`ECHO_USAGE`] answer (11 prompt + 7 completion tokens) costs exactly 92 µUSD.
const PRICE_IN_MICRO: u64 = 2;
const PRICE_OUT_MICRO: u64 = 10;
const ECHO_COST: u64 = ECHO_USAGE.0 * PRICE_IN_MICRO + ECHO_USAGE.1 * PRICE_OUT_MICRO;
const ECHO_TOKENS: u64 = ECHO_USAGE.0 + ECHO_USAGE.1;

// === setup ===

/// The API key of key id `id`.
fn secret(id: &str) -> String {
    format!("sk-test-{id}-0123456789abcdef")
}

/// A gateway config: one listener, `gpt-4o` and `llama` on the mock upstream, state in
/// `redis` (failing as `on_error` says), then `rest` (`auth:` and `quotas:` sections).
fn config(upstream: &MockUpstream, redis: &RedisServer, on_error: &str, rest: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n  llama:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n\
         state:\n  backend: redis\n  redis: {{url: '{}', timeout: 2s, on_error: {on_error}}}\n{rest}",
        upstream.url(),
        redis.url(),
    )
}

/// An `auth:` section with one plain key per id.
fn auth_keys(ids: &[&str]) -> String {
    let mut s = String::from("auth:\n  keys:\n");
    for id in ids {
        s.push_str(&format!("    - {{id: {id}, secret: '{}'}}\n", secret(id)));
    }
    s
}

/// `quotas:` with `keys` (YAML lines under `keys:`, indented by 4) and the prices.
fn quotas(keys: &str) -> String {
    format!(
        "quotas:\n  keys:\n{keys}  prices:\n    gpt-4o: {{input: {PRICE_IN_MICRO}, output: {PRICE_OUT_MICRO}}}\n"
    )
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "gpt-4o", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}]})
}

/// The engine's prompt estimate at admission: a quarter of the `messages` JSON bytes,
/// rounded up (`src/tokens.rs`, `estimate`).
fn prompt_estimate(body: &Value) -> u64 {
    (serde_json::to_string(&body["messages"]).unwrap().len() as u64).div_ceil(4)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

async fn post(
    client: &reqwest::Client,
    gw: &Gateway,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret(key))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Status, headers and body (JSON) of an answer.
async fn answer(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
    (status, headers, body)
}

fn hv(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// Checks an OpenAI error body: `type` and `code` as given, a message, `param` present.
fn assert_openai_error(body: &Value, kind: &str, code: &str) {
    let e = &body["error"];
    assert_eq!(e["type"], kind, "{body}");
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e.get("param").is_some(), "{body}");
}

/// `retry-after` (whole seconds, 1..=60) and `retry-after-ms` that agree with it.
fn assert_retry_after(headers: &reqwest::header::HeaderMap, max_secs: u64) {
    let secs: u64 = hv(headers, "retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    let ms: u64 = hv(headers, "retry-after-ms")
        .expect("retry-after-ms")
        .parse()
        .unwrap();
    assert!((1..=max_secs).contains(&secs), "retry-after {secs}");
    assert!((1..=max_secs * 1000).contains(&ms), "retry-after-ms {ms}");
    assert_eq!(
        secs,
        ms.div_ceil(1000).max(1),
        "retry-after {secs} vs {ms} ms"
    );
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// RPM and TPM windows are fixed and aligned to the wall-clock (UTC) minute: the counter's
/// name carries the minute's index, so requests on both sides of a minute boundary land in
/// two counters and no exact count holds across it. When less than `need` is left in this
/// minute, wait for the next one. Returns the index of the minute the test starts in.
async fn fresh_minute(need: Duration) -> u64 {
    let now = now_ms();
    let left = 60_000 - now % 60_000;
    if u128::from(left) < need.as_millis() {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
    now_ms() / 60_000
}

fn rpm_key(id: &str, minute: u64) -> String {
    format!("tollgate:tg:rpm:key:{id}:{minute}")
}

fn tpm_key(id: &str, minute: u64) -> String {
    format!("tollgate:tg:tpm:key:{id}:{minute}")
}

fn usd_key(id: &str) -> String {
    format!("tollgate:tg:usd:lifetime:key:{id}:all")
}

fn tok_key(id: &str) -> String {
    format!("tollgate:tg:tok:lifetime:key:{id}:all")
}

fn conc_key(id: &str) -> String {
    format!("tollgate:tg:conc:key:{id}")
}

/// A Go-style duration (`12ms`, `1.5s`, `1m0s`) in ms.
fn go_duration_ms(s: &str) -> u64 {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().unwrap();
    }
    let (minutes, rest) = match s.split_once('m') {
        Some((m, rest)) => (m.parse::<u64>().unwrap(), rest),
        None => (0, s),
    };
    let secs: f64 = rest.strip_suffix('s').unwrap().parse().unwrap();
    minutes * 60_000 + (secs * 1000.0).round() as u64
}

/// Sends `body` for `key` one request at a time, each after the previous one settled
/// (`counter` shows it), until one is refused; checks that exactly the requests the
/// reservation rule admits got through, and returns (admitted, the refusal).
///
/// The rule: a request is admitted iff `value + reserve <= limit`, and then adds `actual`.
#[allow(clippy::too_many_arguments)]
async fn exhaust(
    client: &reqwest::Client,
    gw: &Gateway,
    redis: &RedisServer,
    key: &str,
    body: &Value,
    counter: &str,
    (limit, reserve, actual): (u64, u64, u64),
) -> (u64, (u16, reqwest::header::HeaderMap, Value)) {
    let start = redis.counter(counter).await;
    let mut expected_admitted = 0;
    let mut v = start;
    while v + reserve <= limit {
        v += actual;
        expected_admitted += 1;
    }
    let mut admitted = 0;
    for _ in 0..=expected_admitted {
        let (status, headers, reply) = answer(post(client, gw, key, body).await).await;
        if status != 200 {
            assert_eq!(
                admitted, expected_admitted,
                "admitted {admitted} before the refusal, the rule says {expected_admitted} \
                 (limit {limit}, reserve {reserve}, actual {actual}, start {start})"
            );
            let after = redis.counter(counter).await;
            assert_eq!(
                after,
                start + admitted * actual,
                "the refusal charged nothing"
            );
            return (admitted, (status, headers, reply));
        }
        admitted += 1;
        let want = start + admitted * actual;
        let got = redis.wait_for_counter(counter, want, SETTLE_WAIT).await;
        assert_eq!(got, want, "{counter} after request {admitted}");
    }
    panic!("{admitted} requests admitted, the rule says {expected_admitted}: no refusal");
}

// === 1. requests per minute, across instances ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_is_exact_across_two_gateways_sharing_redis() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let yaml = config(
        &upstream,
        &redis,
        "fail_closed",
        &(auth_keys(&["alice"]) + &quotas("    alice: {rpm: 50}\n")),
    );
    let gateways = [Gateway::start(&yaml), Gateway::start(&yaml)];
    // The burst takes well under 10 s even on a loaded machine; it must not straddle a
    // minute boundary (see `fresh_minute`).
    let minute = fresh_minute(Duration::from_secs(10)).await;

    let clients = [client(), client()];
    let body = chat(5);
    let requests = (0..200).map(|i| {
        let (gw, client) = (&gateways[i % 2], &clients[i % 2]);
        let body = &body;
        async move { answer(post(client, gw, "alice", body).await).await }
    });
    let answers = join_all(requests).await;
    assert_eq!(
        now_ms() / 60_000,
        minute,
        "the burst straddled a minute boundary"
    );

    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(ok, 50, "exactly the limit got through");
    assert_eq!(refused.len(), 150, "every other request was refused");
    for (_, headers, body) in refused {
        assert_openai_error(body, "requests", "rate_limit_exceeded");
        assert_retry_after(headers, 60);
        assert!(hv(headers, "x-request-id").is_some());
    }
    assert_eq!(redis.counter(&rpm_key("alice", minute)).await, 50);
    assert_eq!(
        upstream.request_count(),
        50,
        "refused requests never reached the model"
    );
}

// === 2. requests in flight ===

/// `n` content chunks, then a usage chunk.
fn slow_chunks(n: usize) -> Vec<String> {
    let mut chunks: Vec<String> = (0..n).map(|_| sse_chat_chunk("c", "x ")).collect();
    chunks.push(sse_usage_chunk("c", MOCK_MODEL, 11, n as u64));
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_and_frees_slots() {
    // The message says how to answer: a long or a short slow stream.
    let upstream = MockUpstream::start(Behavior::custom(|req| {
        let tick = Duration::from_millis(200);
        match req.json()["messages"][0]["content"].as_str() {
            Some("long") => Behavior::sse(slow_chunks(100), tick),
            Some("short") => Behavior::sse(slow_chunks(10), tick),
            _ => Behavior::EchoChat,
        }
    }));
    let redis = RedisServer::start();
    let gw = Gateway::start(&config(
        &upstream,
        &redis,
        "fail_closed",
        &(auth_keys(&["c3"]) + &quotas("    c3: {concurrency: 3}\n")),
    ));
    let client = client();
    let stream = |content: &str| {
        json!({"model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": content}]})
    };
    // Headers arrive with the first chunk: each of these is open when `post` returns.
    let open = |content: &'static str| {
        let (client, gw, body) = (&client, &gw, stream(content));
        async move {
            let resp = post(client, gw, "c3", &body).await;
            assert_eq!(resp.status(), 200, "{content}");
            resp
        }
    };
    let a = open("long").await;
    let b = open("long").await;
    let c = open("short").await;
    assert_eq!(redis.zcard(&conc_key("c3")).await, 3, "three leases");

    let (status, headers, body) = answer(post(&client, &gw, "c3", &stream("long")).await).await;
    assert_eq!(status, 429, "{body}");
    assert_openai_error(&body, "requests", "rate_limit_exceeded");
    assert_eq!(hv(&headers, "retry-after-ms").as_deref(), Some("1000"));
    assert_eq!(hv(&headers, "retry-after").as_deref(), Some("1"));

    // Accepted again within `within` once a slot is free: polls, and keeps the stream open.
    let accepted_within = |within: Duration| {
        let (client, gw) = (&client, &gw);
        async move {
            let deadline = Instant::now() + within;
            loop {
                let resp = post(client, gw, "c3", &stream("long")).await;
                match resp.status().as_u16() {
                    200 => return resp,
                    429 => assert!(Instant::now() < deadline, "no slot freed in {within:?}"),
                    other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // A stream that finishes frees its slot.
    let text = tokio::time::timeout(REQUEST_TIMEOUT, c.text())
        .await
        .expect("the short stream ends")
        .unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let d = accepted_within(Duration::from_secs(10)).await;
    let (status, _, body) = answer(post(&client, &gw, "c3", &stream("long")).await).await;
    assert_eq!(status, 429, "full again: {body}");

    // A client that leaves frees its slot too.
    drop(a);
    assert!(
        upstream
            .wait_for_disconnects(1, Duration::from_secs(10))
            .await,
        "the upstream stream was cancelled"
    );
    let e = accepted_within(Duration::from_secs(10)).await;
    assert_eq!(redis.zcard(&conc_key("c3")).await, 3);

    drop((b, d, e));
    let mut leases = u64::MAX;
    let deadline = Instant::now() + SETTLE_WAIT;
    while Instant::now() < deadline {
        leases = redis.zcard(&conc_key("c3")).await;
        if leases == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leases, 0, "every lease ended");
}

// === 3. budgets and exact spend ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_charge_exact_spend_and_refuse_when_exhausted() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let gw = Gateway::start(&config(
        &upstream,
        &redis,
        "fail_closed",
        &(auth_keys(&["spender", "tokcap", "burst"])
            + &quotas(
                "    spender: {budgets: [{usd: 0.002, window: lifetime}, {tokens: 100000, window: lifetime}]}\n\
                 \x20   tokcap: {budgets: [{tokens: 100, window: lifetime}]}\n\
                 \x20   burst: {budgets: [{usd: 0.001, window: lifetime}]}\n",
            )),
    ));
    let client = client();

    // N requests: spend is N × usage × price, to the token and the micro-dollar.
    let body = chat(10);
    let prompt = prompt_estimate(&body);
    let n = 10;
    for i in 1..=n {
        let resp = post(&client, &gw, "spender", &body).await;
        assert_eq!(resp.status(), 200);
        let want = i * ECHO_COST;
        assert_eq!(
            redis
                .wait_for_counter(&usd_key("spender"), want, SETTLE_WAIT)
                .await,
            want
        );
    }
    assert_eq!(redis.counter(&usd_key("spender")).await, n * ECHO_COST);
    assert_eq!(redis.counter(&tok_key("spender")).await, n * ECHO_TOKENS);

    // Then the USD budget runs out: 429 insufficient_quota, and retrying will not help.
    let reserve_usd = prompt * PRICE_IN_MICRO + 10 * PRICE_OUT_MICRO;
    let (admitted, (status, headers, reply)) = exhaust(
        &client,
        &gw,
        &redis,
        "spender",
        &body,
        &usd_key("spender"),
        (2000, reserve_usd, ECHO_COST),
    )
    .await;
    assert!(admitted > 0);
    assert_eq!(status, 429, "{reply}");
    assert_openai_error(&reply, "insufficient_quota", "insufficient_quota");
    assert_eq!(hv(&headers, "x-should-retry").as_deref(), Some("false"));
    assert_eq!(
        redis.counter(&tok_key("spender")).await,
        (n + admitted) * ECHO_TOKENS,
        "the token budget counted the same requests"
    );

    // A token budget runs out the same way.
    let (_, (status, headers, reply)) = exhaust(
        &client,
        &gw,
        &redis,
        "tokcap",
        &body,
        &tok_key("tokcap"),
        (100, prompt + 10, ECHO_TOKENS),
    )
    .await;
    assert_eq!(status, 429, "{reply}");
    assert_openai_error(&reply, "insufficient_quota", "insufficient_quota");
    assert_eq!(hv(&headers, "x-should-retry").as_deref(), Some("false"));

    // Overshoot: with `max_tokens: 1` a request reserves less than it uses (the upstream
    // reports 7 completion tokens), so admitted requests can take the counter past the
    // budget, but only by what they under-reserved.
    let limit = 1000;
    let small = chat(1);
    let reserve = prompt_estimate(&small) * PRICE_IN_MICRO + PRICE_OUT_MICRO;
    let under = ECHO_COST - reserve;
    let mut before = 0;
    while limit - before >= 200 {
        assert_eq!(post(&client, &gw, "burst", &small).await.status(), 200);
        before += ECHO_COST;
        assert_eq!(
            redis
                .wait_for_counter(&usd_key("burst"), before, SETTLE_WAIT)
                .await,
            before
        );
    }
    let left = limit - before;
    let k = 24;
    let answers = join_all((0..k).map(|_| {
        let (client, gw, small) = (&client, &gw, &small);
        async move { answer(post(client, gw, "burst", small).await).await }
    }))
    .await;
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count() as u64;
    for (status, headers, body) in answers.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_openai_error(body, "insufficient_quota", "insufficient_quota");
        assert_eq!(hv(headers, "x-should-retry").as_deref(), Some("false"));
    }
    // Each admission needs `value + reserve <= limit` and settles only add: at most
    // left / reserve requests of the burst can be admitted.
    let most = left / reserve;
    assert!(
        (1..=most).contains(&ok),
        "{ok} admitted with {left} µUSD left and {reserve} reserved each"
    );
    let want = before + ok * ECHO_COST;
    let spent = redis
        .wait_for_counter(&usd_key("burst"), want, SETTLE_WAIT)
        .await;
    assert_eq!(spent, want, "every admitted request charged its real cost");
    // The bound: the budget plus what the admitted requests under-reserved.
    assert!(
        spent <= limit + ok * under,
        "spent {spent} > limit {limit} + {ok} × {under}"
    );
    let (status, _, reply) = answer(post(&client, &gw, "burst", &small).await).await;
    assert_eq!(
        status, 429,
        "nothing more once the budget is spent: {reply}"
    );
    assert_eq!(redis.counter(&usd_key("burst")).await, spent);
}

// === 4. streams charged with the upstream's usage ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_charged_the_upstream_usage_the_client_did_not_ask_for() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let gw = Gateway::start(&config(
        &upstream,
        &redis,
        "fail_closed",
        &(auth_keys(&["streamer"])
            + &quotas(
                "    streamer: {budgets: [{usd: 1, window: lifetime}, {tokens: 100000, window: lifetime}]}\n",
            )),
    ));
    let client = client();
    let body = json!({"model": "gpt-4o", "stream": true, "max_tokens": 50,
        "messages": [{"role": "user", "content": "one two three"}]});
    let resp = post(&client, &gw, "streamer", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();

    let sent = upstream.last_request().json();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sse_content(&text), ECHO_STREAM_PIECES.concat());
    let events = parse_sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(
            v.get("usage").is_none_or(Value::is_null),
            "usage leaked: {e}"
        );
        assert!(!v["choices"].as_array().unwrap().is_empty(), "{e}");
    }
    assert_eq!(
        redis
            .wait_for_counter(&tok_key("streamer"), ECHO_TOKENS, SETTLE_WAIT)
            .await,
        ECHO_TOKENS
    );
    assert_eq!(redis.counter(&usd_key("streamer")).await, ECHO_COST);

    // A client that asks for usage gets it, and is charged the same.
    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let text = post(&client, &gw, "streamer", &asked)
        .await
        .text()
        .await
        .unwrap();
    let events = parse_sse_data(&text);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], ECHO_TOKENS);
    assert_eq!(
        redis
            .wait_for_counter(&tok_key("streamer"), 2 * ECHO_TOKENS, SETTLE_WAIT)
            .await,
        2 * ECHO_TOKENS
    );
    assert_eq!(redis.counter(&usd_key("streamer")).await, 2 * ECHO_COST);
}

// === 5. tokens per minute ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_refuses_with_kind_tokens_and_trues_up_to_real_usage() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let gw = Gateway::start(&config(
        &upstream,
        &redis,
        "fail_closed",
        &(auth_keys(&["small", "big"])
            + &quotas("    small: {tpm: 100}\n    big: {tpm: 100000}\n")),
    ));
    let client = client();
    // Everything below happens within one minute window (see `fresh_minute`).
    let minute = fresh_minute(Duration::from_secs(20)).await;

    // A request larger than the whole limit: waiting cannot help.
    let (status, headers, reply) = answer(post(&client, &gw, "small", &chat(200)).await).await;
    assert_eq!(status, 429, "{reply}");
    assert_openai_error(&reply, "tokens", "rate_limit_exceeded");
    assert_eq!(hv(&headers, "x-should-retry").as_deref(), Some("false"));
    assert_eq!(redis.counter(&tpm_key("small", minute)).await, 0);

    // A few requests, then the next one does not fit the minute.
    let body = chat(20);
    let (_, (status, headers, reply)) = exhaust(
        &client,
        &gw,
        &redis,
        "small",
        &body,
        &tpm_key("small", minute),
        (100, prompt_estimate(&body) + 20, ECHO_TOKENS),
    )
    .await;
    assert_eq!(status, 429, "{reply}");
    assert_openai_error(&reply, "tokens", "rate_limit_exceeded");
    assert_retry_after(&headers, 60);

    // True-up: a large `max_tokens` is reserved, the real usage is what stays.
    let body = chat(5000);
    let reserve = prompt_estimate(&body) + 5000;
    let resp = post(&client, &gw, "big", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-tokens"),
        Some((100_000 - reserve).to_string())
    );
    let key = tpm_key("big", minute);
    assert_eq!(
        redis.wait_for_counter(&key, ECHO_TOKENS, SETTLE_WAIT).await,
        ECHO_TOKENS
    );
    let resp = post(&client, &gw, "big", &body).await;
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-tokens"),
        Some((100_000 - ECHO_TOKENS - reserve).to_string())
    );
    assert_eq!(
        redis
            .wait_for_counter(&key, 2 * ECHO_TOKENS, SETTLE_WAIT)
            .await,
        2 * ECHO_TOKENS
    );
    assert_eq!(
        now_ms() / 60_000,
        minute,
        "the test straddled a minute boundary"
    );
}

// === 6. x-ratelimit-* headers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_headers_only_for_keys_with_limits() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let gw = Gateway::start(&config(
        &upstream,
        &redis,
        "fail_closed",
        &(auth_keys(&["limited", "plain"]) + &quotas("    limited: {rpm: 100, tpm: 10000}\n")),
    ));
    let client = client();
    let minute = fresh_minute(Duration::from_secs(10)).await;
    let body = chat(10);
    let reserve = prompt_estimate(&body) + 10;

    let resp = post(&client, &gw, "limited", &body).await;
    assert_eq!(resp.status(), 200);
    let h = |name: &str| header(&resp, name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(h("x-ratelimit-limit-requests"), "100");
    assert_eq!(h("x-ratelimit-remaining-requests"), "99");
    assert_eq!(h("x-ratelimit-limit-tokens"), "10000");
    assert_eq!(
        h("x-ratelimit-remaining-tokens"),
        (10_000 - reserve).to_string()
    );
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        let ms = go_duration_ms(&h(name));
        assert!(ms <= 60_000, "{name}: {}", h(name));
    }
    assert_eq!(
        redis
            .wait_for_counter(&tpm_key("limited", minute), ECHO_TOKENS, SETTLE_WAIT)
            .await,
        ECHO_TOKENS
    );

    // A stream carries them too, counting on.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let resp = post(&client, &gw, "limited", &stream).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("98")
    );
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-tokens"),
        Some((10_000 - ECHO_TOKENS - reserve).to_string())
    );
    resp.text().await.unwrap();

    for body in [body, stream] {
        let resp = post(&client, &gw, "plain", &body).await;
        assert_eq!(resp.status(), 200);
        let leaked: Vec<_> = resp
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("x-ratelimit"))
            .collect();
        assert!(leaked.is_empty(), "no limits, no headers: {leaked:?}");
        resp.text().await.unwrap();
    }
    assert_eq!(
        now_ms() / 60_000,
        minute,
        "the test straddled a minute boundary"
    );
}

// === 7. Redis going away and coming back ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_or_closed_and_recovers() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let mut redis = RedisServer::start();
    let rest = auth_keys(&["ko", "kc", "tight"])
        + &quotas("    ko: {rpm: 1000}\n    kc: {rpm: 1000}\n    tight: {rpm: 3}\n");
    let open = Gateway::start(&config(&upstream, &redis, "fail_open", &rest));
    let closed = Gateway::start(&config(&upstream, &redis, "fail_closed", &rest));
    let client = client();
    // `tight` counts 4 requests in one minute window (see `fresh_minute`).
    let minute = fresh_minute(Duration::from_secs(20)).await;
    let body = chat(5);

    assert_eq!(post(&client, &open, "ko", &body).await.status(), 200);
    assert_eq!(post(&client, &closed, "kc", &body).await.status(), 200);
    assert_eq!(redis.counter(&rpm_key("ko", minute)).await, 1);
    assert_eq!(redis.counter(&rpm_key("kc", minute)).await, 1);

    redis.stop();
    let served = upstream.request_count();
    for _ in 0..5 {
        let (status, _, reply) = answer(post(&client, &open, "ko", &body).await).await;
        assert_eq!(status, 200, "fail_open serves while Redis is down: {reply}");
    }
    for _ in 0..3 {
        let (status, headers, reply) = answer(post(&client, &closed, "kc", &body).await).await;
        assert_eq!(status, 503, "{reply}");
        assert_openai_error(&reply, "server_error", "rate_limit_unavailable");
        assert!(hv(&headers, "x-request-id").is_some());
    }
    assert_eq!(
        upstream.request_count(),
        served + 5,
        "refused requests were not sent"
    );
    // Fail-open still enforces limits, on this instance's own counters.
    for i in 0..3 {
        let status = post(&client, &open, "tight", &body).await.status();
        assert_eq!(status, 200, "tight request {i}");
    }
    let (status, _, reply) = answer(post(&client, &open, "tight", &body).await).await;
    assert_eq!(status, 429, "local limits hold: {reply}");
    assert_openai_error(&reply, "requests", "rate_limit_exceeded");
    assert!(
        open.logs().contains("failing open to local limits"),
        "{}",
        open.logs()
    );
    assert!(
        closed.logs().contains("failing closed"),
        "{}",
        closed.logs()
    );

    // Back on the same port: both use it again within a few of the store's 1 s retries.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = post(&client, &closed, "kc", &body).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "fail_closed never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        assert_eq!(post(&client, &open, "ko", &body).await.status(), 200);
        let shared = redis.snapshot("tollgate:tg:rpm:key:ko:*").await;
        if !shared.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fail_open never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!redis.snapshot("tollgate:tg:rpm:key:kc:*").await.is_empty());
    for gw in [&open, &closed] {
        assert!(
            eventually(Duration::from_secs(5), || gw
                .logs()
                .contains("Redis is back"))
            .await,
            "{}",
            gw.logs()
        );
    }
}

// === 8. identity over sockets, and nothing charged for a refusal ===

/// A refused request: what it is, its headers, its body, the status and `error.code`
/// expected.
type Case = (
    String,
    Vec<(&'static str, Vec<u8>)>,
    Value,
    u16,
    Option<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refusals_over_sockets_charge_nothing() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let limits = "{rpm: 1000, tpm: 1000000, concurrency: 5, budgets: [{usd: 1, window: lifetime}, {tokens: 1000000, window: lifetime}]}";
    let rest = format!(
        "auth:\n  keys:\n\
         \x20   - {{id: good, secret: '{}', models: ['gpt-4o*']}}\n\
         \x20   - {{id: off, secret: '{}', enabled: false}}\n\
         \x20   - {{id: old, secret: '{}', expires: '2020-01-01T00:00:00Z'}}\n\
         \x20 jwt: {{algorithms: [HS256], hs256_secret: 'a-test-hmac-secret-of-at-least-32-bytes'}}\n{}",
        secret("good"),
        secret("off"),
        secret("old"),
        quotas(&format!(
            "    good: {limits}\n    off: {limits}\n    old: {limits}\n"
        )),
    );
    let gw = Gateway::start(&config(&upstream, &redis, "fail_closed", &rest));
    let client = client();
    let url = gw.url("/v1/chat/completions");
    let body = chat(10);
    let send = |headers: Vec<(&'static str, Vec<u8>)>, body: Value| {
        let mut req = client.post(&url).json(&body);
        for (name, value) in headers {
            req = req.header(
                name,
                reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
            );
        }
        async move { answer(req.send().await.unwrap()).await }
    };
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}").into_bytes())];

    // Accepted three ways.
    let good = secret("good");
    for headers in [
        bearer(&good),
        vec![("api-key", good.clone().into_bytes())],
        vec![("x-api-key", good.clone().into_bytes())],
    ] {
        let (status, _, reply) = send(headers, body.clone()).await;
        assert_eq!(status, 200, "{reply}");
    }
    // Settling follows the response: wait until every request has settled (the token
    // count alone can read its final value early, when a reservation equals the usage).
    assert!(
        redis.wait_for_no_leases(SETTLE_WAIT).await,
        "requests left unsettled"
    );
    assert_eq!(redis.counter(&tok_key("good")).await, 3 * ECHO_TOKENS);
    let before = redis.snapshot("*").await;
    assert!(!before.is_empty());
    let served = upstream.request_count();

    // Under limits.max_header_bytes (64 KiB), so it reaches the key check.
    let long_key = "k".repeat(40 * 1024);
    let huge_key = "k".repeat(100 * 1024);
    let long_jwt = format!(
        "{}.{}.{}",
        "a".repeat(8000),
        "b".repeat(8000),
        "c".repeat(8000)
    );
    let garbage_jwts = [
        "aaa.bbb.ccc",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJnb29kIiwiZXhwIjo0MTAyNDQ0ODAwfQ.AAAA",
        "_-_-.-_-_.----",
        long_jwt.as_str(),
    ];
    let mut cases: Vec<Case> = vec![
        (
            "missing".into(),
            vec![],
            body.clone(),
            401,
            Some("missing_api_key"),
        ),
        (
            "unknown".into(),
            bearer("sk-nobody"),
            body.clone(),
            401,
            Some("invalid_api_key"),
        ),
        (
            "disabled".into(),
            bearer(&secret("off")),
            body.clone(),
            401,
            Some("invalid_api_key"),
        ),
        (
            "expired".into(),
            bearer(&secret("old")),
            body.clone(),
            401,
            Some("invalid_api_key"),
        ),
        (
            "model not allowed".into(),
            bearer(&good),
            json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]}),
            403,
            Some("model_not_allowed"),
        ),
        (
            "40 KiB key".into(),
            bearer(&long_key),
            body.clone(),
            401,
            None,
        ),
        (
            "40 KiB api-key".into(),
            vec![("api-key", long_key.clone().into_bytes())],
            body.clone(),
            401,
            None,
        ),
        (
            "100 KiB key".into(),
            bearer(&huge_key),
            body.clone(),
            431,
            Some("request_header_too_large"),
        ),
    ];
    for auth in [
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic Zm9vOmJhcg==",
        "Token sk-test-good-0123456789abcdef",
        "Bearer sk-test-good-0123456789abcdef extra",
        "Bearersk-test-good-0123456789abcdef",
    ] {
        cases.push((
            format!("authorization `{auth}`"),
            vec![("authorization", auth.as_bytes().to_vec())],
            body.clone(),
            401,
            Some("invalid_api_key"),
        ));
    }
    cases.push((
        "non-UTF-8 authorization".into(),
        vec![("authorization", b"Bearer sk-\xff\xfe".to_vec())],
        body.clone(),
        401,
        Some("invalid_api_key"),
    ));
    cases.push((
        "non-UTF-8 x-api-key".into(),
        vec![("x-api-key", b"\xc3\x28key".to_vec())],
        body.clone(),
        401,
        Some("invalid_api_key"),
    ));
    for jwt in garbage_jwts {
        let shown: String = jwt.chars().take(40).collect();
        cases.push((
            format!("jwt `{shown}`"),
            bearer(jwt),
            body.clone(),
            401,
            None,
        ));
    }
    for bad in [
        json!(-1),
        json!("abc"),
        json!(1.5),
        json!(-0.5),
        json!([1]),
        json!({}),
    ] {
        let mut b = body.clone();
        b["max_tokens"] = bad.clone();
        cases.push((format!("max_tokens {bad}"), bearer(&good), b, 400, None));
    }
    let mut b = body.clone();
    b["max_completion_tokens"] = json!(-5);
    cases.push((
        "max_completion_tokens -5".into(),
        bearer(&good),
        b,
        400,
        None,
    ));

    for (name, headers, body, want, code) in cases {
        let (status, headers, reply) = send(headers, body).await;
        assert_eq!(status, want, "{name}: {reply}");
        let e = &reply["error"];
        assert!(
            e["type"].as_str().is_some_and(|t| !t.is_empty())
                && e["code"].is_string()
                && e["message"].is_string(),
            "{name}: an OpenAI error: {reply}"
        );
        if let Some(code) = code {
            assert_eq!(reply["error"]["code"], code, "{name}: {reply}");
        }
        assert!(hv(&headers, "x-request-id").is_some(), "{name}");
        // Nothing of a presented key comes back beyond the 4 + 4 characters shown.
        let text = reply.to_string();
        assert!(
            !text.contains("0123456789abcdef"),
            "{name}: key echoed: {text}"
        );
        // The gateway is still up and serving.
        let health = client.get(gw.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "after {name}");
    }

    // Nothing was charged or sent for any refusal.
    let after = redis.snapshot("*").await;
    assert_eq!(before, after, "counters moved for refused requests");
    assert_eq!(
        upstream.request_count(),
        served,
        "a refused request reached the model"
    );

    // And the good key still works.
    let (status, _, reply) = send(bearer(&good), body.clone()).await;
    assert_eq!(status, 200, "{reply}");
}

// === a client-chosen request id ===

/// The concurrency lease is named by the request id, and the gateway takes the client's
/// `x-request-id` when it is sane: two requests sent with the same id share one lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_for_requests_sharing_an_x_request_id() {
    let upstream = MockUpstream::start(Behavior::sse(slow_chunks(100), Duration::from_millis(200)));
    let redis = RedisServer::start();
    let gw = Gateway::start(&config(
        &upstream,
        &redis,
        "fail_closed",
        &(auth_keys(&["one"]) + &quotas("    one: {concurrency: 1}\n")),
    ));
    let client = client();
    let body = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "long"}]});
    let send = || {
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(secret("one"))
            .header("x-request-id", "same-id")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = send().await.unwrap();
    let status = second.status();
    drop((first, second));
    assert_eq!(
        status, 429,
        "a second stream in flight for a key limited to one"
    );
}
