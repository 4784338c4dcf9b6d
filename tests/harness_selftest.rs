//! Self-tests of the integration-test harness in `tests/common` (mock upstream, TLS test
//! CA, helpers). They do not run the gateway.

mod common;

use std::time::{Duration, Instant};

use common::openai::{self, ECHO_REPLY, ECHO_USAGE};
use common::*;
use futures_util::StreamExt;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

#[tokio::test]
async fn json_behavior_answers_and_records_the_request() {
    let upstream = MockUpstream::start(Behavior::json(201, json!({"ok": true})));
    let response = client()
        .post(format!("{}/chat/completions?x=1", upstream.url()))
        .header("Authorization", "Bearer sk-test")
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let port = upstream.port().to_string();
    assert_eq!(response.headers()["x-mock-upstream"], port.as_str());
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"ok": true})
    );

    assert_eq!(upstream.request_count(), 1);
    let request = upstream.last_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions?x=1");
    assert_eq!(request.header("AUTHORIZATION"), Some("Bearer sk-test"));
    assert_eq!(request.json()["model"], "m");
}

#[tokio::test]
async fn echo_chat_echoes_the_model_and_reports_usage() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let body: serde_json::Value = client()
        .post(format!("{}/chat/completions", upstream.url()))
        .json(&json!({"model": "my-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "my-model");
    assert_eq!(body["choices"][0]["message"]["content"], ECHO_REPLY);
    assert_eq!(body["usage"]["total_tokens"], ECHO_USAGE.0 + ECHO_USAGE.1);
}

#[tokio::test]
async fn echo_chat_streams_when_asked() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let response = client()
        .post(format!("{}/chat/completions", upstream.url()))
        .json(&json!({"model": "s", "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert_eq!(openai::sse_content(&text), ECHO_REPLY);
    let data = parse_sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], ECHO_USAGE.0);
    assert_eq!(usage["model"], "s");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let pipelined = b"GET /v1/a HTTP/1.1\r\nHost: a\r\n\r\n\
                      POST /v1/b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}\
                      GET /v1/c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let response = String::from_utf8(raw_request(upstream.addr(), pipelined)).unwrap();
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 3, "{response}");
    assert_eq!(upstream.connection_count(), 1);
    let seen: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| (r.index, r.connection, r.path.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, 0, "/v1/a".into()),
            (1, 0, "/v1/b".into()),
            (2, 0, "/v1/c".into())
        ]
    );
}

#[test]
fn chunked_request_bodies_are_decoded() {
    let upstream = MockUpstream::start(Behavior::json(200, json!({})));
    let request = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                    5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let response = raw_request(upstream.addr(), request);
    assert_eq!(
        raw_status(&response),
        Some(200),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(upstream.last_request().body_text(), "hello world");
}

#[tokio::test]
async fn sse_sends_each_chunk_before_sleeping_for_the_next() {
    let chunks: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|c| sse_chat_chunk("id1", c))
        .collect();
    let upstream = MockUpstream::start(Behavior::sse(chunks.clone(), Duration::from_millis(150)));
    let response = client()
        .get(format!("{}/stream", upstream.url()))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_arrived = Instant::now();
    assert_eq!(first.as_ref(), chunks[0].as_bytes());
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(piece) = body.next().await {
        text.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }

    // `completed` is set just after the last write, so the client may see the end first.
    assert!(eventually(WAIT, || upstream.streams()[0].completed).await);
    let log = &upstream.streams()[0];
    assert!(
        first_arrived < log.chunk_sent_at[1],
        "chunk 1 arrived only after chunk 2 was sent"
    );
    assert!(log.chunk_sent_at[2] - log.chunk_sent_at[1] >= Duration::from_millis(150));
    assert!(!log.peer_closed);
    assert_eq!(openai::sse_content(&text), "abc");
    assert_eq!(
        parse_sse_data(&text).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(upstream.disconnects(), 0);
}

#[tokio::test]
async fn sse_notices_the_client_hanging_up_mid_stream() {
    let chunks: Vec<String> = (0..5)
        .map(|i| sse_chat_chunk("id", &i.to_string()))
        .collect();
    let upstream = MockUpstream::start(Behavior::sse(chunks, Duration::from_millis(200)));
    let response = client()
        .get(format!("{}/stream", upstream.url()))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);

    assert!(
        upstream.wait_for_disconnects(1, WAIT).await,
        "upstream never saw the hang-up"
    );
    let log = &upstream.streams()[0];
    assert!(log.peer_closed && !log.completed);
    assert!(log.chunk_sent_at.len() < 5);
}

#[tokio::test]
async fn sse_abort_truncates_the_stream() {
    let chunks = vec![sse_chat_chunk("id", "x")];
    let upstream = MockUpstream::start(Behavior::SseAbort {
        chunks,
        delay_between: Duration::ZERO,
    });
    let response = client()
        .get(format!("{}/stream", upstream.url()))
        .send()
        .await
        .unwrap();
    assert!(
        response.bytes().await.is_err(),
        "a truncated chunked body must be an error"
    );
}

#[tokio::test]
async fn delay_notices_the_client_giving_up() {
    let upstream =
        MockUpstream::start(Behavior::delay(Duration::from_secs(10), Behavior::EchoChat));
    let started = Instant::now();
    let result = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .get(upstream.url())
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    assert!(upstream.wait_for_disconnects(1, WAIT).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(upstream.wait_for_requests(1, WAIT).await);
}

#[tokio::test]
async fn sequence_then_custom_behaviors() {
    let upstream = MockUpstream::start(Behavior::Sequence(vec![
        Behavior::error(503, "busy"),
        Behavior::custom(|request| Behavior::json(200, json!({"path": request.path}))),
    ]));
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .get(upstream.url())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![503, 200, 200]);

    upstream.set_behavior(Behavior::Close);
    assert!(client.get(upstream.url()).send().await.is_err());
}

#[test]
fn close_behavior_answers_nothing() {
    let upstream = MockUpstream::start(Behavior::Close);
    let response = raw_request(upstream.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(response.is_empty());
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn tls_upstream_is_trusted_through_the_test_ca() {
    let (upstream, ca) = MockUpstream::start_tls(Behavior::EchoChat);
    assert_eq!(
        upstream.url(),
        format!("https://localhost:{}/v1", upstream.port())
    );
    assert!(
        std::fs::read_to_string(ca.ca_pem_path())
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let body: serde_json::Value = ca
        .reqwest_client()
        .post(format!("{}/chat/completions", upstream.url()))
        .json(&json!({"model": "tls-model"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["model"], "tls-model");

    // Untrusted without the CA.
    assert!(client().get(upstream.url()).send().await.is_err());
}

#[test]
fn placeholders_are_filled() {
    let dir = std::path::Path::new("/tmp/x");
    let yaml = "listeners:\n  - address: 127.0.0.1:{PORT}\nserver: {pid_file: {PID_FILE}, upgrade_sock: {UPGRADE_SOCK}}";
    let filled = common::fill_placeholders(yaml, 4242, dir);
    assert_eq!(
        filled,
        "listeners:\n  - address: 127.0.0.1:4242\nserver: {pid_file: /tmp/x/tollgate.pid, upgrade_sock: /tmp/x/upgrade.sock}"
    );
}

#[test]
fn sse_parsing_and_helpers() {
    let text = format!(
        "{}: comment\n\n{}{}",
        sse_chat_chunk("i", "he"),
        sse_chat_chunk("i", "y"),
        openai::SSE_DONE
    );
    assert_eq!(parse_sse_data(&text).len(), 3);
    assert_eq!(openai::sse_content(&text), "hey");
    assert_eq!(
        raw_status(b"HTTP/1.1 413 Payload Too Large\r\n\r\n"),
        Some(413)
    );
    assert!(wait_until(Duration::from_millis(50), || true));
    assert!(!wait_until(Duration::from_millis(20), || false));
    assert_ne!(free_port(), 0);
}
