//! Retries, fallbacks, circuit breakers and broken upstreams, over real sockets with
//! fault-injecting mock upstreams: a failing backend must cost the client nothing
//! while a healthy one is left, and nothing is retried once the answer has started.

mod common;

use std::time::{Duration, Instant};

use common::openai::*;
use common::*;
use serde_json::{Value, json};

/// A gateway config: one listener, then `rest` (models, pools, routing), as YAML.
fn config(rest: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n{rest}"
    )
}

/// An endpoint list entry for `url`, with a readable name.
fn endpoint(name: &str, url: &str) -> String {
    format!("      - {{url: '{url}', name: {name}}}\n")
}

/// A URL where nothing listens: connections are refused.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}/v1", free_port())
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn chat_requests(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

#[tokio::test]
async fn failing_endpoints_cost_the_client_nothing() {
    let hanging = MockUpstream::start(Behavior::delay(Duration::from_secs(30), Behavior::EchoChat));
    let failing = MockUpstream::start(Behavior::error(500, "boom"));
    let throttled = MockUpstream::start(Behavior::Raw {
        status: 429,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("retry-after".into(), "60".into()),
        ],
        body: error_json("slow down", "rate_limit_error")
            .to_string()
            .into(),
    });
    let healthy = MockUpstream::start(Behavior::EchoChat);
    let pools = [
        endpoint("refusing", &dead_url()),
        endpoint("hanging", &hanging.url()),
        endpoint("failing", &failing.url()),
        endpoint("throttled", &throttled.url()),
        endpoint("healthy", &healthy.url()),
    ]
    .concat();
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p, model: m}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints:\n{pools}\
         \x20   timeouts: {{first_byte: 300ms}}\n\
         \x20   retry: {{attempts: 5, backoff: 1ms, max_backoff: 5ms}}\n\
         \x20   breaker: {{consecutive_failures: 2, open_for: 60s}}\n\
         \x20   health_check: {{enabled: false}}\n\
         routing: {{max_attempts: 5, deadline: 3s}}\n"
    )));

    let mut attempts_seen = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let resp = post(&gw, &chat_body("gpt-4o")).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "within the deadline"
        );
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-tollgate-endpoint"), "healthy");
        assert_eq!(header(&resp, "x-tollgate-pool"), "p");
        attempts_seen.push(header(&resp, "x-tollgate-attempts").parse::<u32>().unwrap());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["model"], "m");
    }
    assert_eq!(
        chat_requests(&healthy),
        20,
        "every request was answered by the healthy endpoint"
    );
    assert!(
        attempts_seen.iter().any(|&n| n > 1),
        "some requests were retried: {attempts_seen:?}"
    );
    // The throttled endpoint rests for its retry-after: asked once only.
    assert_eq!(chat_requests(&throttled), 1);
    // Breakers open after two failures: the broken endpoints stop getting traffic.
    assert!(chat_requests(&failing) <= 2, "{}", chat_requests(&failing));
    assert!(chat_requests(&hanging) <= 2, "{}", chat_requests(&hanging));
    // The access log records every attempt.
    let logs = gw.logs();
    assert!(logs.contains("p/failing=500"), "{logs}");
    assert!(logs.contains("p/throttled=429"), "{logs}");
    assert!(logs.contains("p/refusing=upstream_unreachable"), "{logs}");
    assert!(logs.contains("p/hanging=upstream_timeout"), "{logs}");
}

#[tokio::test]
async fn fallback_chain_reaches_another_model_and_pool() {
    let overloaded = MockUpstream::start(Behavior::error(503, "overloaded"));
    let local = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&format!(
        "models:\n\
         \x20 gpt-4o:\n    targets: [{{pool: cloud, model: gpt-4o-2024}}]\n    fallbacks: [gpt-4o-mini, llama]\n\
         \x20 gpt-4o-mini:\n    targets: [{{pool: cloud, model: mini}}]\n\
         \x20 llama:\n    targets: [{{pool: local, model: meta-llama/Llama-3.1-8B}}]\n\
         pools:\n\
         \x20 cloud:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    retry: {{attempts: 1}}\n    health_check: {{enabled: false}}\n\
         \x20 local:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        overloaded.url(),
        local.url()
    )));
    let resp = post(&gw, &chat_body("gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-model"), "llama");
    assert_eq!(header(&resp, "x-tollgate-pool"), "local");
    assert_eq!(header(&resp, "x-tollgate-attempts"), "3");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "meta-llama/Llama-3.1-8B");
    // Each step rewrote `model` for its own upstream.
    let asked: Vec<String> = overloaded
        .requests()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["model"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(asked, ["gpt-4o-2024", "mini"]);
}

#[tokio::test]
async fn context_window_skips_models_the_request_cannot_fit() {
    let small = MockUpstream::start(Behavior::EchoChat);
    let large = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&format!(
        "models:\n\
         \x20 small:\n    targets: [{{pool: a}}]\n    context_window: 100\n    fallbacks: [large]\n\
         \x20 large:\n    targets: [{{pool: b}}]\n    context_window: 100000\n\
         pools:\n\
         \x20 a:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n\
         \x20 b:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        small.url(),
        large.url()
    )));
    // About 300 tokens: too long for `small`.
    let long =
        json!({"model": "small", "messages": [{"role": "user", "content": "word ".repeat(300)}]});
    let resp = post(&gw, &long).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-model"), "large");
    assert_eq!(small.request_count(), 0);
    // A short one fits the first choice.
    let resp = post(&gw, &chat_body("small")).await;
    assert_eq!(header(&resp, "x-tollgate-model"), "small");
    // Too long for every model: OpenAI's error.
    let huge = json!({"model": "small", "max_tokens": 200000, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&gw, &huge).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn upstream_death_mid_stream_ends_with_an_error_event_and_no_retry() {
    let dying = MockUpstream::start(Behavior::SseAbort {
        chunks: vec![sse_chat_chunk("c1", "Hel"), sse_chat_chunk("c1", "lo")],
        delay_between: Duration::from_millis(10),
    });
    let healthy = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    balance: {{strategy: round_robin}}\n    endpoints:\n{}{}\
         \x20   health_check: {{enabled: false}}\n",
        endpoint("dying", &dying.url()),
        endpoint("healthy", &healthy.url()),
    )));
    // Round robin starts at the first endpoint.
    let mut body = chat_body("gpt-4o");
    body["stream"] = json!(true);
    let resp = post(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-endpoint"), "dying");
    let text = resp.text().await.unwrap();
    let events = parse_sse_data(&text);
    assert_eq!(sse_content(&text), "Hello", "{text}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{text}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(
        healthy.request_count(),
        0,
        "nothing is retried once the stream started"
    );
}

#[tokio::test]
async fn broken_answers_are_failures_and_retried_before_the_client_sees_them() {
    let cases: Vec<(&str, Behavior)> = vec![
        (
            "invalid JSON",
            Behavior::Raw {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: "{\"id\": \"x\", \"choices\": [".into(),
            },
        ),
        (
            "HTML instead of JSON",
            Behavior::Raw {
                status: 200,
                headers: vec![("content-type".into(), "text/html".into())],
                body: "<html>proxy error</html>".into(),
            },
        ),
        (
            "too large",
            Behavior::json(200, json!({"pad": "x".repeat(8192)})),
        ),
        ("closed", Behavior::Close),
        (
            "truncated",
            Behavior::Truncated {
                declared: 400,
                body: r#"{"id":"chatcmpl-1","object":"chat.completion","choices":["#.into(),
            },
        ),
    ];
    for (what, behavior) in cases {
        let broken = MockUpstream::start(behavior);
        let healthy = MockUpstream::start(Behavior::EchoChat);
        let yaml = |urls: &[&str]| {
            config(&format!(
                "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
                 pools:\n  p:\n    provider: openai\n    endpoints:\n{}\
                 \x20   max_response_bytes: 4096\n    retry: {{backoff: 1ms}}\n    health_check: {{enabled: false}}\n",
                urls.iter()
                    .map(|u| format!("      - url: '{u}'\n"))
                    .collect::<String>()
            ))
        };
        // Alone, the broken endpoint gives a clear OpenAI error.
        let gw = Gateway::start(&yaml(&[&broken.url()]));
        let resp = post(&gw, &chat_body("gpt-4o")).await;
        assert_eq!(resp.status(), 502, "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "server_error", "{what}");
        assert!(
            ["upstream_protocol_error", "upstream_unreachable"]
                .contains(&body["error"]["code"].as_str().unwrap()),
            "{what}: {body}"
        );
        // Retried three times (the pool's attempts), each counted.
        assert_eq!(broken.request_count(), 3, "{what}");
        drop(gw);
        // With a healthy endpoint beside it, the client never knows.
        let gw = Gateway::start(&yaml(&[&broken.url(), &healthy.url()]));
        for _ in 0..4 {
            let resp = post(&gw, &chat_body("gpt-4o")).await;
            assert_eq!(resp.status(), 200, "{what}");
        }
        assert_eq!(healthy.request_count(), 4, "{what}");
    }
}

#[tokio::test]
async fn a_stream_without_done_ends_with_an_error_event() {
    let upstream = MockUpstream::start(Behavior::Raw {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: sse_chat_chunk("c1", "partial").into(),
    });
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        upstream.url()
    )));
    let mut body = chat_body("gpt-4o");
    body["stream"] = json!(true);
    let text = post(&gw, &body).await.text().await.unwrap();
    assert_eq!(sse_content(&text), "partial");
    let events = parse_sse_data(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_protocol_error", "{text}");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let refusing = MockUpstream::start(Behavior::error(400, "bad temperature"));
    let other = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints:\n{}{}    health_check: {{enabled: false}}\n",
        endpoint("a", &refusing.url()),
        endpoint("b", &other.url()),
    )));
    let resp = post(&gw, &chat_body("gpt-4o")).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-tollgate-attempts"), "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "bad temperature",
        "the upstream's own error"
    );
    assert_eq!(other.request_count(), 0);
}

#[tokio::test]
async fn retry_after_is_waited_out_when_no_other_endpoint_is_left() {
    let upstream = MockUpstream::start(Behavior::Sequence(vec![
        Behavior::Raw {
            status: 429,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after-ms".into(), "300".into()),
            ],
            body: error_json("slow down", "rate_limit_error")
                .to_string()
                .into(),
        },
        Behavior::EchoChat,
    ]));
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        upstream.url()
    )));
    let started = Instant::now();
    let resp = post(&gw, &chat_body("gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(header(&resp, "x-tollgate-attempts"), "2");
}

#[tokio::test]
async fn a_long_retry_after_goes_back_to_the_client() {
    let upstream = MockUpstream::start(Behavior::Raw {
        status: 429,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("retry-after".into(), "120".into()),
        ],
        body: error_json("slow down", "rate_limit_error")
            .to_string()
            .into(),
    });
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        upstream.url()
    )));
    let started = Instant::now();
    let resp = post(&gw, &chat_body("gpt-4o")).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "120");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "slow down");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn keys_rotate_on_429_and_401() {
    let upstream = MockUpstream::start(Behavior::Custom(std::sync::Arc::new(|r| {
        match r.header("authorization").unwrap_or("") {
            "Bearer k1" => Behavior::error(429, "key 1 is over its quota"),
            "Bearer k2" => Behavior::error(401, "key 2 was revoked"),
            _ => Behavior::EchoChat,
        }
    })));
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints:\n      - url: '{}'\n        api_keys: [k1, k2, k3]\n\
         \x20   retry: {{backoff: 1ms}}\n    health_check: {{enabled: false}}\n",
        upstream.url()
    )));
    let resp = post(&gw, &chat_body("gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    let used: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(used, ["Bearer k1", "Bearer k2", "Bearer k3"]);
    // The next request goes straight to the key that works.
    let resp = post(&gw, &chat_body("gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream.last_request().header("authorization"),
        Some("Bearer k3")
    );
    assert_eq!(upstream.request_count(), 4);
}

#[tokio::test]
async fn large_bodies_are_retried_whole() {
    let failing = MockUpstream::start(Behavior::error(502, "bad gateway"));
    let healthy = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&format!(
        "limits: {{max_body_bytes: 4194304}}\n\
         models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints:\n{}{}    retry: {{backoff: 1ms}}\n    health_check: {{enabled: false}}\n",
        endpoint("failing", &failing.url()),
        endpoint("healthy", &healthy.url()),
    )));
    let big = "a".repeat(1024 * 1024);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": big}]});
    let resp = post(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let sent = serde_json::to_vec(&body).unwrap();
    assert_eq!(failing.last_request().body, sent);
    assert_eq!(
        healthy.last_request().body,
        sent,
        "the whole body, byte for byte, on the retry"
    );
}

#[tokio::test]
async fn breaker_stops_traffic_then_lets_a_probe_through() {
    let flaky = MockUpstream::start(Behavior::error(500, "down"));
    let healthy = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&format!(
        "models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints:\n{}{}\
         \x20   retry: {{backoff: 1ms}}\n\
         \x20   breaker: {{consecutive_failures: 3, open_for: 500ms}}\n\
         \x20   health_check: {{enabled: false}}\n",
        endpoint("flaky", &flaky.url()),
        endpoint("healthy", &healthy.url()),
    )));
    for _ in 0..20 {
        assert_eq!(post(&gw, &chat_body("gpt-4o")).await.status(), 200);
    }
    assert_eq!(chat_requests(&flaky), 3, "open after three failures");
    assert!(
        gw.logs().contains("Circuit breaker opened"),
        "{}",
        gw.logs()
    );
    // Once the open interval is over, one probe goes through; it recovers and closes.
    flaky.set_behavior(Behavior::EchoChat);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..10 {
        assert_eq!(post(&gw, &chat_body("gpt-4o")).await.status(), 200);
    }
    assert!(
        chat_requests(&flaky) >= 5,
        "closed again: traffic is shared: {}",
        chat_requests(&flaky)
    );
}
