//! Token accounting over real sockets: the usage the gateway records is the upstream's,
//! streams included, without changing what the client sees.

mod common;

use common::openai::*;
use common::*;
use serde_json::{Value, json};

fn gateway(upstream: &MockUpstream) -> Gateway {
    Gateway::start(&format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        upstream.url()
    ))
}

async fn stream(gw: &Gateway, body: Value) -> String {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The access-log line of the (last) chat completion, once written (it follows the
/// response).
async fn access_line(gw: &Gateway) -> String {
    let logged = |l: &str| l.contains("\"route\":\"chat_completions\"");
    assert!(
        eventually(std::time::Duration::from_secs(5), || gw
            .logs()
            .lines()
            .any(logged))
        .await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    logs.lines().rfind(|l| logged(l)).unwrap().to_owned()
}

#[tokio::test]
async fn usage_is_asked_for_and_kept_from_a_client_that_did_not_ask() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&upstream);
    let body = json!({"model": "gpt-4o", "stream": true, "temperature": 0.5,
        "messages": [{"role": "user", "content": "one two three"}]});
    let text = stream(&gw, body).await;

    // The upstream was asked for usage, and nothing else changed.
    let sent: Value = serde_json::from_slice(&upstream.last_request().body).unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["temperature"], 0.5);
    // The client sees the stream it asked for: no usage chunk, [DONE] at the end.
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
    // The gateway recorded the upstream's usage (the log line follows the response).
    let (prompt, completion) = ECHO_USAGE;
    let line = access_line(&gw).await;
    assert!(
        line.contains(&format!("\"prompt_tokens\":{prompt},")),
        "{line}"
    );
    assert!(
        line.contains(&format!("\"completion_tokens\":{completion},")),
        "{line}"
    );
}

/// Events cut across chunks arrive whole, and the usage-only event is held back even when
/// it is split, shares a chunk with others, or follows `"usage": null` chunks.
#[tokio::test]
async fn the_usage_event_is_held_back_however_the_upstream_cuts_the_stream() {
    let chunk = |text: &str| {
        format!(
            r#"{{"id":"c","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"{text}"}}}}],"usage":null}}"#
        )
    };
    let usage = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":4,"total_tokens":11}}"#;
    let (b, c) = (chunk("B"), chunk("C"));
    let pieces = vec![
        // A whole event: passed on untouched.
        format!("data: {}\n\n", chunk("A")),
        // An event cut in the middle, ...
        format!("data: {}", &b[..20]),
        // ... completed here, beside a whole one and the start of the usage event.
        format!("{}\n\ndata: {c}\n\ndata: {}", &b[20..], &usage[..30]),
        format!("{}\n\n", &usage[30..]),
        format!("data: {}\n\n", chunk("D")),
    ];
    let upstream = MockUpstream::start(Behavior::sse(pieces, std::time::Duration::from_millis(30)));
    let gw = gateway(&upstream);
    let body = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let text = stream(&gw, body).await;

    let events = parse_sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert_eq!(sse_content(&text), "ABCD", "{text}");
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap_or_else(|_| panic!("{e} in {text}"));
        assert!(v["usage"].is_null(), "usage leaked: {e}");
    }
    assert_eq!(events.len(), 5, "{text}");
    // Events keep the upstream's framing.
    assert!(
        text.starts_with(&format!("data: {}\n\n", chunk("A"))),
        "{text}"
    );
    let line = access_line(&gw).await;
    assert!(line.contains("\"prompt_tokens\":7,"), "{line}");
    assert!(line.contains("\"completion_tokens\":4,"), "{line}");
}

#[tokio::test]
async fn a_client_that_asked_for_usage_gets_it_unchanged() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&upstream);
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "one two"}]});
    let text = stream(&gw, body).await;
    let sent: Value = serde_json::from_slice(&upstream.last_request().body).unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let events = parse_sse_data(&text);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], ECHO_USAGE.1);
}

#[tokio::test]
async fn a_stream_cut_short_is_charged_what_was_streamed_counted_by_the_gateway() {
    let upstream = MockUpstream::start(Behavior::SseAbort {
        chunks: vec![
            sse_chat_chunk("c1", "Hello"),
            sse_chat_chunk("c1", " world, this is"),
            sse_chat_chunk("c1", " cut short"),
        ],
        delay_between: std::time::Duration::from_millis(5),
    });
    let gw = Gateway::start(&format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n\
         quotas:\n  keys:\n    anonymous: {{budgets: [{{tokens: 1000000, window: lifetime}}]}}\n",
        upstream.url()
    ));
    let body = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "Hello world"}]});
    let text = stream(&gw, body).await;
    assert_eq!(sse_content(&text), "Hello world, this is cut short");
    let events = parse_sse_data(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"].is_object(), "{text}");

    // Charged: the streamed text counted with o200k ("Hello world, this is cut short"
    // is 7 tokens), the prompt counted exactly (3 per message + "user" 1 + "Hello
    // world" 2 + 3 for the reply = 9), marked estimated.
    let line = access_line(&gw).await;
    assert!(line.contains("\"usage_estimated\":true"), "{line}");
    assert!(line.contains("\"completion_tokens\":7,"), "{line}");
    assert!(line.contains("\"prompt_tokens\":9,"), "{line}");
}
