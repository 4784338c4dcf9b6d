//! Everything that goes wrong gets the right status, an OpenAI-shaped error body and an
//! `x-request-id`, is logged once, and leaves the gateway serving the next request.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::openai::*;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

const LIMIT: usize = 64 * 1024;

/// Mock-backed `gpt-4o`, plus `remote` served by an OpenAI-kind pool at `url` with the
/// given timeouts.
fn config(url: &str, timeouts: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         limits: {{max_body_bytes: {LIMIT}, body_read_timeout: 2s}}\n\
         models:\n  gpt-4o: {{targets: [{{pool: local}}]}}\n  remote: {{targets: [{{pool: remote, model: up}}]}}\n\
         pools:\n  local: {{provider: mock}}\n  remote:\n    provider: openai\n    endpoints: [{{url: '{url}'}}]\n    timeouts: {{{timeouts}}}\n"
    )
}

fn mock_only() -> Gateway {
    Gateway::start(&config("http://127.0.0.1:9/v1", "connect: 1s"))
}

/// Checks the OpenAI error shape and returns `(code, request_id)`.
async fn openai_error(resp: reqwest::Response, status: u16) -> (String, String) {
    assert_eq!(resp.status(), status);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    assert!(err["param"].is_string() || err["param"].is_null(), "{body}");
    let code = err["code"].as_str().expect("code is a string").to_owned();
    (code, id)
}

fn post(gw: &Gateway, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(gw.url(path))
        .header("content-type", "application/json")
}

fn lines_with(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

/// The gateway's log once it mentions every id: a request's log line is written after
/// its response, so it may trail the client by a moment.
fn logs_mentioning(gw: &Gateway, ids: &[String]) -> String {
    assert!(
        wait_until(Duration::from_secs(5), || {
            let logs = gw.logs();
            ids.iter().all(|id| logs.contains(id.as_str()))
        }),
        "not every request was logged:\n{}",
        gw.logs()
    );
    gw.logs()
}

#[tokio::test]
async fn bad_bodies_get_400_are_logged_once_and_the_gateway_keeps_serving() {
    let gw = mock_only();
    let cases: &[(&str, &str)] = &[
        ("", "invalid_request"),
        ("{\"model\": \"gpt-4o\", \"messages\": [", "invalid_json"),
        ("not json at all", "invalid_json"),
        ("[{\"model\": \"gpt-4o\"}]", "invalid_request"),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
            "invalid_request",
        ),
        (
            "{\"model\": 42, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
            "invalid_request",
        ),
        (
            "{\"model\": \"gpt-4o\", \"stream\": \"yes\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
            "invalid_request",
        ),
        ("{\"model\": \"gpt-4o\"}", "invalid_request"),
    ];
    let mut ids = Vec::new();
    for (body, want) in cases {
        let resp = post(&gw, "/v1/chat/completions")
            .body(*body)
            .send()
            .await
            .unwrap();
        let (code, id) = openai_error(resp, 400).await;
        assert_eq!(code, *want, "body: {body}");
        ids.push(id);
    }
    let invalid_utf8 =
        b"{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}"
            .to_vec();
    let resp = post(&gw, "/v1/chat/completions")
        .body(invalid_utf8)
        .send()
        .await
        .unwrap();
    ids.push(openai_error(resp, 400).await.1);

    let ok = post(&gw, "/v1/chat/completions")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "still here"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let logs = logs_mentioning(&gw, &ids);
    for id in ids {
        assert_eq!(
            lines_with(&logs, &id),
            1,
            "request {id} should be logged once:\n{logs}"
        );
    }
}

#[tokio::test]
async fn unknown_models_routes_and_methods() {
    let gw = mock_only();
    let client = reqwest::Client::new();
    let resp = post(&gw, "/v1/chat/completions")
        .json(&json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(resp, 404).await.0, "model_not_found");
    let resp = client.get(gw.url("/v1/models/gpt-9")).send().await.unwrap();
    assert_eq!(openai_error(resp, 404).await.0, "model_not_found");
    let resp = client
        .get(gw.url("/v1/models/..%2F..%2Fetc%2Fpasswd"))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(resp, 404).await.0, "model_not_found");
    let resp = client.post(gw.url("/v1/assistants")).send().await.unwrap();
    assert_eq!(openai_error(resp, 404).await.0, "unknown_url");
    let resp = client
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(openai_error(resp, 405).await.0, "method_not_allowed");
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_before_it_is_sent() {
    let gw = mock_only();
    let mut conn = TcpStream::connect(gw.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Headers only: the 10 MB body never comes, yet the answer must.
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    )
    .unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = String::from_utf8_lossy(&response);
    assert_eq!(raw_status(&response), Some(413), "{text}");
    assert!(text.contains("request_too_large"), "{text}");
    assert!(text.to_ascii_lowercase().contains("x-request-id"), "{text}");
}

#[tokio::test]
async fn a_chunked_body_is_refused_once_it_passes_the_limit() {
    let gw = mock_only();
    // A stream body makes reqwest send it chunked, with no Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..32).map(|_| Ok(vec![b' '; 8 * 1024])).collect();
    let resp = post(&gw, "/v1/chat/completions")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(resp, 413).await.0, "request_too_large");
    // Just under the limit is fine (and reaches the parser).
    let body = format!(
        "{{\"model\":\"gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "y".repeat(LIMIT - 200)
    );
    let resp = post(&gw, "/v1/chat/completions")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_truncated_body_does_not_stop_the_gateway() {
    let gw = mock_only();
    let mut conn = TcpStream::connect(gw.addr()).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{{\"model\":\"gpt-4o\""
    )
    .unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    if !response.is_empty() {
        assert_eq!(raw_status(&response), Some(400));
    }
    let resp = post(&gw, "/v1/chat/completions")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "next"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(wait_until(Duration::from_secs(2), || gw
        .logs()
        .contains("incomplete_body")));
}

#[tokio::test]
async fn a_body_sent_too_slowly_gets_408() {
    let gw = mock_only();
    let mut conn = TcpStream::connect(gw.addr()).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"model\""
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    assert_eq!(
        raw_status(&response),
        Some(408),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let closed = free_port();
    let gw = Gateway::start(&config(
        &format!("http://127.0.0.1:{closed}/v1"),
        "connect: 1s",
    ));
    let resp = post(&gw, "/v1/chat/completions")
        .json(&json!({"model": "remote", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let (code, id) = openai_error(resp, 502).await;
    assert_eq!(code, "upstream_unreachable");
    // The client learns which pool failed, the log also learns where.
    let logs = logs_mentioning(&gw, std::slice::from_ref(&id));
    let line = logs.lines().find(|l| l.contains(&id)).unwrap();
    assert!(line.contains(&format!("127.0.0.1:{closed}")), "{line}");
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_504() {
    let upstream = MockUpstream::start(Behavior::delay(Duration::from_secs(5), Behavior::EchoChat));
    let gw = Gateway::start(&config(&upstream.url(), "first_byte: 300ms"));
    let started = Instant::now();
    let resp = post(&gw, "/v1/chat/completions")
        .json(&json!({"model": "remote", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(resp, 504).await.0, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_client_that_leaves_before_the_first_byte_cancels_the_upstream() {
    let upstream =
        MockUpstream::start(Behavior::delay(Duration::from_secs(10), Behavior::EchoChat));
    let gw = Gateway::start(&config(&upstream.url(), "first_byte: 60s"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = client
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "remote", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert!(result.is_err(), "the client timed out");
    assert!(
        upstream
            .wait_for_disconnects(1, Duration::from_secs(3))
            .await,
        "the upstream kept waiting on a request nobody wants"
    );
}

/// Reads a whole SSE response body as text.
async fn sse_text(resp: reqwest::Response) -> String {
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => break,
        }
    }
    text
}

#[tokio::test]
async fn a_stream_that_stalls_ends_with_an_error_event() {
    let events = vec![sse_chat_chunk("c", "one"), sse_chat_chunk("c", "two")];
    let upstream = MockUpstream::start(Behavior::sse(events, Duration::from_secs(3)));
    let gw = Gateway::start(&config(&upstream.url(), "idle: 500ms"));
    let resp = post(&gw, "/v1/chat/completions")
        .json(&json!({"model": "remote", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = sse_text(resp).await;
    let events = parse_sse_data(&text);
    assert_eq!(sse_content(&text), "one");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn an_upstream_that_dies_mid_stream_ends_the_stream_with_an_error_event() {
    let events = vec![sse_chat_chunk("c", "partial")];
    let upstream = MockUpstream::start(Behavior::SseAbort {
        chunks: events,
        delay_between: Duration::from_millis(50),
    });
    let gw = Gateway::start(&config(&upstream.url(), "idle: 5s"));
    let resp = post(&gw, "/v1/chat/completions")
        .json(&json!({"model": "remote", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let text = sse_text(resp).await;
    assert_eq!(sse_content(&text), "partial");
    let last: Value = serde_json::from_str(parse_sse_data(&text).last().unwrap()).unwrap();
    assert!(last["error"]["code"].is_string(), "{text}");
}

#[tokio::test]
async fn an_unread_body_is_never_taken_for_the_next_request() {
    let gw = mock_only();
    let smuggled = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!(
        "POST /v1/nope HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let response = raw_request(gw.addr(), request.as_bytes());
    let text = String::from_utf8_lossy(&response);
    assert_eq!(raw_status(&response), Some(404), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(!text.contains("\"object\":\"list\""), "{text}");
}
