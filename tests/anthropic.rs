//! Anthropic over real sockets: OpenAI clients served by `provider: anthropic` pools (a
//! mock speaking Anthropic's wire format), and Anthropic clients on `POST /v1/messages`
//! served by OpenAI-compatible pools, Anthropic pools and the built-in mock — with the
//! same usage, cost, retries and fallbacks as any other request.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::openai::*;
use common::*;
use serde_json::{Value, json};

const KEY: &str = "sk-ant-test";

/// Prices of `claude` (USD per 1M tokens): input 3, cached input 1, output 15.
/// Anonymous callers have a token budget, so every request is charged.
const QUOTAS: &str = "quotas:\n  keys:\n    anonymous: {budgets: [{tokens: 1000000, window: lifetime}]}\n  prices:\n    claude: {input: 3, cached_input: 1, output: 15}\n    gpt-4o: {input: 2, output: 10}\n";

fn config(rest: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n{rest}"
    )
}

/// `claude` on an Anthropic pool at `anthropic` (no fallback unless `fallback`), `gpt-4o`
/// on an OpenAI pool at `openai`.
fn gateway(anthropic: &MockUpstream, openai: &MockUpstream, fallback: bool) -> Gateway {
    let fallbacks = if fallback {
        "    fallbacks: [gpt-4o]\n"
    } else {
        ""
    };
    Gateway::start(&config(&format!(
        "models:\n\
         \x20 claude:\n    targets: [{{pool: ant, model: claude-sonnet-4-5}}]\n{fallbacks}\
         \x20 gpt-4o:\n    targets: [{{pool: oai}}]\n\
         pools:\n\
         \x20 ant:\n    provider: anthropic\n    endpoints: [{{url: '{}', api_key: {KEY}, name: ant-1}}]\n    health_check: {{enabled: false}}\n    retry: {{attempts: 1}}\n\
         \x20 oai:\n    provider: openai\n    endpoints: [{{url: '{}', name: oai-1}}]\n    health_check: {{enabled: false}}\n\
         {QUOTAS}",
        anthropic.url(),
        openai.url()
    )))
}

fn anthropic_message(text: &str) -> Value {
    json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 7}
    })
}

/// An Anthropic SSE response of `events` (each framed with its `event:` name), sent in
/// one body: the gateway must still cut and translate it event by event.
fn anthropic_stream(events: &[Value]) -> Behavior {
    let mut body = String::new();
    for e in events {
        let name = e["type"].as_str().unwrap_or("unknown");
        body.push_str(&format!("event: {name}\ndata: {e}\n\n"));
    }
    Behavior::Raw {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: Bytes::from(body),
    }
}

fn text_stream_events() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "brand_new_event", "x": 1}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        json!({"type": "message_stop"}),
    ]
}

async fn post(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` to `path`: the status and the JSON answer.
async fn call(gw: &Gateway, path: &str, body: &Value) -> (u16, Value) {
    let resp = post(gw, path, body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// The access-log line of the last request on `route`, once written.
async fn logged(gw: &Gateway, route: &str) -> Value {
    let needle = format!("\"route\":\"{route}\"");
    assert!(
        eventually(Duration::from_secs(5), || gw.logs().contains(&needle)).await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let line = logs.lines().rfind(|l| l.contains(&needle)).unwrap();
    serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap()
}

/// The logged cost is `micro_usd` millionths of a dollar.
fn assert_cost(line: &Value, micro_usd: u64) {
    let cost = line["cost_usd"].as_f64().unwrap_or(-1.0);
    assert!(
        (cost * 1e6 - micro_usd as f64).abs() < 1e-6,
        "cost {cost} USD, not {micro_usd} µUSD: {line}"
    );
}

/// Events of an SSE text: `(event name, data)`.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = Vec::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

// === OpenAI clients, Anthropic pools ===

#[tokio::test]
async fn an_openai_client_gets_openai_answers_from_an_anthropic_pool() {
    let ant = MockUpstream::start(Behavior::json(200, anthropic_message("Hi there")));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let resp = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "claude", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-pool"), "ant");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hi there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
            "prompt_tokens_details": {"cached_tokens": 100}})
    );

    // What Anthropic received: its path, its headers, its body shape.
    let sent = ant.last_request();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.json(),
        json!({"model": "claude-sonnet-4-5", "system": "Be brief.", "max_tokens": 4096,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]})
    );

    // Usage and cost are the upstream's: 20 uncached input at 3, 100 cached at 1, 7 output
    // at 15 µUSD per token = 60 + 100 + 105.
    let line = logged(&gw, "chat_completions").await;
    assert_eq!(line["prompt_tokens"], 120);
    assert_eq!(line["cached_tokens"], 100);
    assert_eq!(line["completion_tokens"], 7);
    assert_eq!(line["usage_estimated"], false);
    assert_cost(&line, 265);
}

#[tokio::test]
async fn an_anthropic_stream_becomes_openai_chunks_with_usage() {
    let mut events = text_stream_events();
    // A malformed event is skipped with a warning, not a panic or a cut.
    events.insert(3, json!("not an object"));
    let ant = MockUpstream::start(anthropic_stream(&events));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let body = json!({"model": "claude", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hello"}]});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    assert_eq!(sse_content(&text), "Hello there");
    let data = parse_sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 120);
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    let finish: Value = serde_json::from_str(&data[data.len() - 3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(ant.last_request().json()["stream"] == true);

    // A client that did not ask for usage gets none, and is still accounted.
    let body = json!({"model": "claude", "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let text = post(&gw, "/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    for d in parse_sse_data(&text) {
        assert!(!d.contains("\"usage\""), "{d}");
    }
    let line = logged(&gw, "chat_completions").await;
    assert_eq!(line["prompt_tokens"], 120);
    assert_eq!(line["completion_tokens"], 7);
    assert!(gw.logs().contains("Unknown Anthropic stream event skipped"));
}

#[tokio::test]
async fn streamed_tool_arguments_arrive_as_tool_call_deltas() {
    let events = vec![
        json!({"type": "message_start", "message": {"id": "msg_t", "model": "claude-sonnet-4-5", "usage": {"input_tokens": 50, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "ty\":\"Oslo\"}"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
        json!({"type": "message_stop"}),
    ];
    let ant = MockUpstream::start(anthropic_stream(&events));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let body = json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required"});
    let text = post(&gw, "/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let chunks: Vec<Value> = parse_sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut args = String::new();
    for c in &chunks {
        for call in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            args.push_str(call["function"]["arguments"].as_str().unwrap());
        }
    }
    assert_eq!(args, "{\"city\":\"Oslo\"}");
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"],
        "toolu_9"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let sent = ant.last_request().json();
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));
    assert_eq!(sent["tools"][0]["input_schema"], json!({"type": "object"}));
}

#[tokio::test]
async fn an_overloaded_anthropic_endpoint_falls_back_to_an_openai_pool() {
    let overloaded = Behavior::json(
        529,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    );
    let ant = MockUpstream::start(overloaded);
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, true);
    for stream in [false, true] {
        let body = json!({"model": "claude", "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]});
        let resp = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200, "stream {stream}");
        assert_eq!(header(&resp, "x-tollgate-model"), "gpt-4o");
        assert_eq!(header(&resp, "x-tollgate-attempts"), "2");
        let text = resp.text().await.unwrap();
        if stream {
            assert_eq!(sse_content(&text), ECHO_STREAM_PIECES.concat());
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], ECHO_REPLY);
        }
    }
    assert_eq!(ant.request_count(), 2);
    assert_eq!(oai.request_count(), 2);
}

#[tokio::test]
async fn without_a_fallback_an_overloaded_anthropic_is_an_openai_503() {
    let ant = MockUpstream::start(Behavior::json(
        529,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let (status, v) = call(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "claude", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        v,
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
    );

    // A 400 from Anthropic is final, in OpenAI's shape.
    ant.set_behavior(Behavior::json(
        400,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"}}),
    ));
    let (status, v) = call(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "claude", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["message"], "messages: roles must alternate");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_request_anthropic_cannot_take_is_a_400_naming_the_field() {
    let ant = MockUpstream::start(Behavior::json(200, anthropic_message("x")));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let (status, v) = call(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "claude", "n": 3, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "n");
    assert!(v["error"]["message"].as_str().unwrap().contains("`n`"));
    assert_eq!(ant.request_count(), 0);
}

#[tokio::test]
async fn an_anthropic_stream_cut_short_ends_with_an_error_event() {
    let mut events = text_stream_events();
    events.truncate(4);
    let ant = MockUpstream::start(anthropic_stream(&events));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let body =
        json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let text = post(&gw, "/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(sse_content(&text), "Hello");
    let data = parse_sse_data(&text);
    assert_ne!(data.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_protocol_error");
}

// === Anthropic clients ===

#[tokio::test]
async fn messages_to_an_openai_pool_are_translated_both_ways() {
    let ant = MockUpstream::start(Behavior::json(200, anthropic_message("x")));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let body = json!({"model": "gpt-4o", "max_tokens": 64, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hello"}]});
    let resp = post(&gw, "/v1/messages", &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"], json!([{"type": "text", "text": ECHO_REPLY}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], ECHO_USAGE.0);
    assert_eq!(v["usage"]["output_tokens"], ECHO_USAGE.1);
    let sent = oai.last_request();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.json()["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
    );
    let line = logged(&gw, "messages").await;
    assert_eq!(line["prompt_tokens"], ECHO_USAGE.0);
    assert_eq!(line["completion_tokens"], ECHO_USAGE.1);
    // 11 × 2 + 7 × 10 µUSD.
    assert_cost(&line, 92);

    // Streamed: the typed event sequence, usage in message_delta.
    let body = json!({"model": "gpt-4o", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let resp = post(&gw, "/v1/messages", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names[..3],
        [
            "message_start",
            "content_block_start",
            "content_block_delta"
        ]
    );
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let text_out: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text_out, ECHO_STREAM_PIECES.concat());
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(delta["usage"]["output_tokens"], ECHO_USAGE.1);
    assert!(!text.contains("[DONE]"));
    assert_eq!(
        oai.last_request().json()["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn messages_to_an_anthropic_pool_pass_through() {
    let events = text_stream_events();
    let ant = MockUpstream::start(Behavior::json(200, anthropic_message("Hi")));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = gateway(&ant, &oai, false);
    let body = json!({"model": "claude", "max_tokens": 10, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]});
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, anthropic_message("Hi"));
    let sent = ant.last_request();
    let mut expected = body.clone();
    expected["model"] = json!("claude-sonnet-4-5");
    assert_eq!(sent.json(), expected, "only the model changes");
    assert_eq!(
        sent.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    let line = logged(&gw, "messages").await;
    assert_eq!(line["prompt_tokens"], 120);
    assert_eq!(line["cached_tokens"], 100);

    // Streams are relayed as they are, usage read on the way.
    ant.set_behavior(anthropic_stream(&events));
    let mut body = body;
    body["stream"] = json!(true);
    let text = post(&gw, "/v1/messages", &body).await.text().await.unwrap();
    let mut want = String::new();
    for e in &events {
        want.push_str(&format!(
            "event: {}\ndata: {e}\n\n",
            e["type"].as_str().unwrap()
        ));
    }
    assert_eq!(text, want);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .logs()
            .matches("\"route\":\"messages\"")
            .count()
            == 2)
        .await
    );
    let line = logged(&gw, "messages").await;
    assert_eq!(
        (
            line["prompt_tokens"].clone(),
            line["completion_tokens"].clone()
        ),
        (json!(120), json!(7))
    );
}

#[tokio::test]
async fn messages_errors_have_anthropics_shape() {
    let ant = MockUpstream::start(Behavior::json(200, anthropic_message("x")));
    let oai = MockUpstream::start(Behavior::error(429, "slow down"));
    let gw = gateway(&ant, &oai, false);
    let (status, v) = call(
        &gw,
        "/v1/messages",
        &json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    let (status, v) = call(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "claude"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["type"], "not_found_error");

    let (status, v) = call(&gw, "/v1/messages", &json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]})).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[0].content[0]")
    );

    // An OpenAI upstream's error, reshaped.
    let (status, v) = call(&gw, "/v1/messages", &json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(status, 429);
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    );
}

#[tokio::test]
async fn messages_use_the_same_keys_as_chat() {
    let gw = Gateway::start_with_env(
        &config(
            "models:\n  m:\n    targets: [{pool: local}]\n\
             pools:\n  local:\n    provider: mock\n\
             auth:\n  keys:\n    - {id: alice, secret: '${ALICE_KEY}'}\n",
        ),
        &[("ALICE_KEY", "sk-alice")],
    );
    let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "one two"}]});
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    // The Anthropic SDK sends its key as `x-api-key`.
    let resp = client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "sk-alice")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "Mock reply: one two");
    assert_eq!(v["stop_reason"], "end_turn");
    // The built-in mock streams Anthropic events too.
    let mut body = body;
    body["stream"] = json!(true);
    let text = client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "sk-alice")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    assert_eq!(events.first().unwrap().0.as_deref(), Some("message_start"));
    assert_eq!(events.last().unwrap().0.as_deref(), Some("message_stop"));
}

#[tokio::test]
async fn messages_answers_are_cached_and_replayed_in_anthropics_shape() {
    let ant = MockUpstream::start(Behavior::custom(|r| {
        if r.json()["stream"] == true {
            anthropic_stream(&text_stream_events())
        } else {
            Behavior::json(200, anthropic_message("Hi"))
        }
    }));
    let oai = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&format!(
        "models:\n\
         \x20 claude:\n    targets: [{{pool: ant}}]\n\
         \x20 gpt-4o:\n    targets: [{{pool: oai}}]\n\
         pools:\n\
         \x20 ant:\n    provider: anthropic\n    endpoints: [{{url: '{}', api_key: {KEY}}}]\n    health_check: {{enabled: false}}\n\
         \x20 oai:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n\
         cache:\n  backend: memory\n",
        ant.url(),
        oai.url()
    )));
    for model in ["claude", "gpt-4o"] {
        for stream in [false, true] {
            let body = json!({"model": model, "max_tokens": 16, "temperature": 0, "stream": stream,
                "messages": [{"role": "user", "content": "cache me"}]});
            let first = post(&gw, "/v1/messages", &body).await;
            assert_eq!(header(&first, "x-cache"), "MISS", "{model} stream {stream}");
            let first = first.text().await.unwrap();
            let second = post(&gw, "/v1/messages", &body).await;
            assert_eq!(header(&second, "x-cache"), "HIT", "{model} stream {stream}");
            let second = second.text().await.unwrap();
            if stream {
                // Replayed with its `event:` names, and no `[DONE]`.
                let names = |t: &str| -> Vec<Option<String>> {
                    sse_events(t).into_iter().map(|(n, _)| n).collect()
                };
                let known: Vec<_> = names(&first).into_iter().filter(|n| n.is_some()).collect();
                assert_eq!(
                    names(&second)
                        .into_iter()
                        .filter(|n| n.is_some())
                        .collect::<Vec<_>>(),
                    known
                );
                assert_eq!(known.last().unwrap().as_deref(), Some("message_stop"));
                assert!(!second.contains("[DONE]"), "{second}");
            } else {
                assert_eq!(first, second);
                let v: Value = serde_json::from_str(&second).unwrap();
                assert_eq!(v["type"], "message");
            }
        }
    }
    assert_eq!(ant.request_count(), 2);
    assert_eq!(oai.request_count(), 2);
}
