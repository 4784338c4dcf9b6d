//! Forwarding over real sockets: model rewrite, credentials, bodies of any size, streams,
//! cancellation, TLS both ways.

mod common;

use std::time::{Duration, Instant};

use common::openai::*;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A gateway config with one listener, `models` and `pools` as given (YAML, indented for
/// their section).
fn config(models: &str, pools: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         limits: {{max_body_bytes: 4194304}}\n\
         models:\n{models}\npools:\n{pools}\n"
    )
}

/// One model `public` served by one OpenAI-kind pool at `url` as `upstream_model`.
fn single(public: &str, upstream_model: &str, url: &str, extra_pool_yaml: &str) -> String {
    config(
        &format!("  {public}:\n    targets:\n      - pool: p\n        model: {upstream_model}"),
        &format!(
            "  p:\n    provider: openai\n    endpoints:\n      - url: {url}\n        api_key: ${{UPSTREAM_KEY}}\n{extra_pool_yaml}"
        ),
    )
}

const UPSTREAM_KEY: &str = "sk-upstream-secret";
const CLIENT_KEY: &str = "sk-client-secret";

fn chat_body(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// A gateway whose `gpt-4o` goes to `upstream` as model `m`, with extra pool settings.
fn gateway_for(upstream: &MockUpstream, extra_pool_yaml: &str) -> Gateway {
    Gateway::start_with_env(
        &single("gpt-4o", "m", &upstream.url(), extra_pool_yaml),
        &[("UPSTREAM_KEY", UPSTREAM_KEY)],
    )
}

/// Posts a chat request for `gpt-4o`, streamed or not.
async fn post_chat(gw: &Gateway, stream: bool) -> reqwest::Response {
    let mut body = chat_body("gpt-4o", "hi");
    if stream {
        body["stream"] = json!(true);
    }
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn rewrites_model_swaps_credentials_and_keeps_every_other_byte() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start_with_env(
        &single("gpt-4o", "llama-3-70b", &upstream.url(), ""),
        &[("UPSTREAM_KEY", UPSTREAM_KEY)],
    );
    // Unknown fields, odd spacing, key order and number formats must survive.
    let body = r#"{"messages":[{"role":"user","content":"hi"}],  "model":"gpt-4o","temperature":0.50,"x_vendor":{"nested":[1,2.0,"model"]},"seed":7}"#;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions?api-version=2"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-api-key", CLIENT_KEY)
        .header("openai-organization", "org-client")
        .header("x-custom-trace", "abc")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["model"], "llama-3-70b");

    let seen = upstream.last_request();
    assert_eq!(seen.path, "/v1/chat/completions?api-version=2");
    assert_eq!(
        seen.body_text(),
        body.replace(r#""model":"gpt-4o""#, r#""model":"llama-3-70b""#)
    );
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {UPSTREAM_KEY}"))
    );
    assert_eq!(seen.header("x-custom-trace"), Some("abc"));
    assert_eq!(seen.header("openai-organization"), None);
    assert_eq!(seen.header("x-request-id").map(str::len), Some(32));
    for (name, value) in &seen.headers {
        assert!(
            !value.contains(CLIENT_KEY),
            "client key leaked upstream in {name}"
        );
    }
}

#[tokio::test]
async fn routes_by_model_for_small_and_one_mebibyte_bodies() {
    let a = MockUpstream::start(Behavior::EchoChat);
    let b = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start_with_env(
        &config(
            "  model-a:\n    targets: [{pool: a, model: up-a}]\n  model-b:\n    targets: [{pool: b, model: up-b}]",
            &format!(
                "  a:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n  b:\n    provider: openai\n    endpoints: [{{url: '{}'}}]",
                a.url(),
                b.url()
            ),
        ),
        &[],
    );
    let client = reqwest::Client::new();
    for size in [1024, 1024 * 1024] {
        let prompt = "x".repeat(size);
        let body = serde_json::to_vec(&chat_body("model-b", &prompt)).unwrap();
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{size} bytes");
        let seen = b.last_request();
        assert_eq!(seen.json()["model"], "up-b");
        assert_eq!(
            seen.json()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .len(),
            size
        );
        assert_eq!(seen.body.len(), body.len() - "model-b".len() + "up-b".len());
    }
    assert_eq!(a.request_count(), 0);
    assert_eq!(b.request_count(), 2);
}

#[tokio::test]
async fn stream_chunks_reach_the_client_as_the_upstream_sends_them() {
    let events = vec![
        sse_chat_chunk("c1", "first"),
        sse_chat_chunk("c1", "second"),
    ];
    let upstream = MockUpstream::start(Behavior::sse(events, Duration::from_millis(300)));
    let gw = gateway_for(&upstream, "");
    let resp = post_chat(&gw, true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if first_at.is_none() && text.contains("first") {
            first_at = Some(Instant::now());
        }
    }
    let log = &upstream.streams()[0];
    assert!(
        first_at.unwrap() < log.chunk_sent_at[1],
        "the first chunk arrived only after the second was sent"
    );
    assert_eq!(sse_content(&text), "firstsecond");
    assert!(text.ends_with(SSE_DONE));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_request() {
    let events: Vec<String> = (0..20)
        .map(|i| sse_chat_chunk("c", &format!("t{i}")))
        .collect();
    let upstream = MockUpstream::start(Behavior::sse(events, Duration::from_millis(100)));
    let gw = gateway_for(&upstream, "");
    let resp = post_chat(&gw, true).await;
    let mut stream = resp.bytes_stream();
    let _first = stream.next().await.unwrap().unwrap();
    drop(stream);
    let left_at = Instant::now();
    assert!(
        upstream
            .wait_for_disconnects(1, Duration::from_secs(3))
            .await,
        "the upstream never saw its connection close"
    );
    // Well before the 2 s the full stream would take.
    assert!(left_at.elapsed() < Duration::from_millis(1500));
    let log = &upstream.streams()[0];
    assert!(log.peer_closed && !log.completed);
}

#[tokio::test]
async fn upstream_errors_pass_through_with_their_status_and_body() {
    let body = json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}});
    let upstream = MockUpstream::start(Behavior::json(429, body.clone()));
    let gw = gateway_for(&upstream, "");
    let resp = post_chat(&gw, false).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("x-request-id").is_some());
    assert_eq!(resp.json::<Value>().await.unwrap(), body);
}

#[tokio::test]
async fn keeps_using_pooled_upstream_connections() {
    assert_upstream_connections_are_reused(Behavior::EchoChat, false).await;
}

/// Five requests in a row reach the upstream over at most two connections.
async fn assert_upstream_connections_are_reused(behavior: Behavior, stream: bool) {
    let upstream = MockUpstream::start(behavior);
    let gw = gateway_for(&upstream, "");
    for _ in 0..5 {
        let resp = post_chat(&gw, stream).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(!stream || text.ends_with(SSE_DONE), "{text}");
    }
    assert_eq!(upstream.request_count(), 5);
    let connections = upstream.connection_count();
    assert!(connections <= 2, "{connections} connections");
}

#[tokio::test]
async fn reaches_a_tls_upstream_by_host_name_verifying_it_with_the_pool_ca() {
    let (upstream, ca) = MockUpstream::start_tls(Behavior::EchoChat);
    assert!(upstream.url().starts_with("https://localhost:"));
    let ca_path = ca.ca_pem_path().display().to_string();
    let gw = gateway_for(&upstream, &format!("    tls: {{ca_file: '{ca_path}'}}\n"));
    let resp = post_chat(&gw, false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream.last_request().header("host"),
        Some(&*format!("localhost:{}", upstream.port()))
    );
}

#[tokio::test]
async fn refuses_a_tls_upstream_whose_certificate_does_not_verify() {
    // The system store does not trust the test CA.
    let (upstream, _ca) = MockUpstream::start_tls(Behavior::EchoChat);
    let gw = gateway_for(&upstream, "");
    let resp = post_chat(&gw, false).await;
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "upstream_unreachable");
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn tls_listener_speaks_http2_and_http1_through_alpn() {
    let ca = TestCa::new();
    let cert = ca.issue_localhost();
    let tls_port = free_port();
    let yaml = format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}'}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n  - address: 127.0.0.1:{tls_port}\n    tls: {{cert_file: '{}', key_file: '{}'}}\n    http2: true\n\
         models:\n  gpt-4o: {{targets: [{{pool: m}}]}}\n\
         pools:\n  m: {{provider: mock}}\n",
        cert.cert_path.display(),
        cert.key_path.display()
    );
    let _gw = Gateway::start(&yaml);
    let url = format!("https://localhost:{tls_port}/v1/chat/completions");
    let h2 = ca.reqwest_client();
    let resp = h2
        .post(&url)
        .json(&chat_body("gpt-4o", "over h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("over h2")
    );

    let root = reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap();
    let h1 = reqwest::Client::builder()
        .add_root_certificate(root)
        .http1_only()
        .build()
        .unwrap();
    let resp = h1
        .post(&url)
        .json(&chat_body("gpt-4o", "over h1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    let gw = Gateway::start(&config(
        "  gpt-4o: {targets: [{pool: m}]}",
        "  m: {provider: mock}",
    ));
    let client = reqwest::Client::new();
    let id_for = |value: Option<&'static str>| {
        let mut req = client.get(gw.url("/v1/models/nope"));
        if let Some(v) = value {
            req = req.header("x-request-id", v);
        }
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 404);
            resp.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(id_for(Some("trace-123.abc")).await, "trace-123.abc");
    let generated = id_for(Some("bad id with spaces")).await;
    assert_eq!(generated.len(), 32);
    assert_ne!(id_for(None).await, generated);
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = Gateway::start(&config(
        "  gpt-4o: {targets: [{pool: m}]}\n  other: {targets: [{pool: dead}]}",
        "  m: {provider: mock}\n  dead:\n    provider: openai\n    endpoints: [{url: 'http://no-such-host.invalid/v1'}]",
    ));
    let client = reqwest::Client::new();
    let health = client.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(gw.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["pools_without_address"], json!(["dead"]));
}

#[tokio::test]
async fn keeps_using_pooled_upstream_connections_after_streams() {
    let events = vec![sse_chat_chunk("c", "one"), sse_chat_chunk("c", "two")];
    assert_upstream_connections_are_reused(Behavior::sse(events, Duration::from_millis(1)), true)
        .await;
}

#[tokio::test]
async fn pipelined_requests_are_both_answered_in_order() {
    // The second request is on the wire while the first is still upstream: its bytes
    // must wait for it, not be read as the first client having left.
    let upstream = MockUpstream::start(Behavior::delay(
        Duration::from_millis(100),
        Behavior::EchoChat,
    ));
    let gw = gateway_for(&upstream, "");
    let body = serde_json::to_string(&chat_body("gpt-4o", "hi")).unwrap();
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let last = one.replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n");
    let response = raw_request(gw.addr(), format!("{one}{last}").as_bytes());
    let text = String::from_utf8_lossy(&response);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn streams_end_with_their_last_chunk_and_keep_the_connection() {
    let events = vec![sse_chat_chunk("c", "one")];
    let upstream = MockUpstream::start(Behavior::sse(events, Duration::from_millis(1)));
    let yaml = config(
        "  remote: {targets: [{pool: p}]}\n  local: {targets: [{pool: m}]}",
        &format!(
            "  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n  m: {{provider: mock}}",
            upstream.url()
        ),
    );
    let gw = Gateway::start(&yaml);
    for model in ["remote", "local"] {
        let mut body = chat_body(model, "hi");
        body["stream"] = json!(true);
        let body = body.to_string();
        let one = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let last = one.replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n");
        let response = raw_request(gw.addr(), format!("{one}{last}").as_bytes());
        let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
        assert_eq!(
            text.matches("transfer-encoding: chunked").count(),
            2,
            "{model}: {text}"
        );
        assert_eq!(text.matches("data: [done]").count(), 2, "{model}: {text}");
    }
}
