//! Golden tests: recorded-shape request/response pairs (`fixtures/`), both directions,
//! plus the stream adapters fed byte by byte and with events they do not know.

use bytes::Bytes;
use serde_json::{Value, json};

use super::client::{self, StreamToAnthropic};
use super::upstream::{self, StreamToOpenAi};
use super::{Relay, replay_events};
use crate::adapters::{ClientEvent, StreamAdapter, Translation, Wire};
use crate::config::{AnthropicSettings, ProviderKind};
use crate::openai::{Api, SseParser};

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// `created` changes with the clock: left out of comparisons.
fn without_created(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("created");
    }
    v
}

const SETTINGS: AnthropicSettings = AnthropicSettings {
    default_max_tokens: 4096,
};

// === OpenAI clients, Anthropic pools ===

#[test]
fn chat_requests_become_messages_requests() {
    for text in [
        include_str!("fixtures/chat_request_text.json"),
        include_str!("fixtures/chat_request_tools.json"),
        include_str!("fixtures/chat_request_image.json"),
    ] {
        let f = fixture(text);
        let body = serde_json::to_vec(&f["openai"]).unwrap();
        let out = upstream::request(&body, "claude-sonnet-4-5", &SETTINGS).unwrap();
        assert_eq!(json_of(&out), f["anthropic"], "{}", f["about"]);
    }
}

#[test]
fn untranslatable_chat_requests_are_400_naming_the_field() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (extra, param, mentions) in [
        (json!({"n": 2}), "n", "`n`"),
        (json!({"logprobs": true}), "logprobs", "`logprobs`"),
        (json!({"top_logprobs": 2}), "top_logprobs", "`top_logprobs`"),
        (
            json!({"logit_bias": {"1": 5}}),
            "logit_bias",
            "`logit_bias`",
        ),
        (
            json!({"presence_penalty": 0.5}),
            "presence_penalty",
            "`presence_penalty`",
        ),
        (
            json!({"frequency_penalty": 1}),
            "frequency_penalty",
            "`frequency_penalty`",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
            "`response_format`",
        ),
        (json!({"stop": 7}), "stop", "`stop`"),
        (
            json!({"tool_choice": "sometimes"}),
            "tool_choice",
            "`tool_choice`",
        ),
        (
            json!({"tools": [{"type": "web_search"}]}),
            "tools",
            "`tools[0]`",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}),
            "messages",
            "`messages[0].tool_calls[0].function.arguments` is not valid JSON",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            "messages",
            "`messages[0].content[0].type` `input_audio`",
        ),
        (
            json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}),
            "messages",
            "`messages[0].role` `function`",
        ),
    ] {
        let mut body = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let e = upstream::request(&serde_json::to_vec(&body).unwrap(), "c", &SETTINGS).unwrap_err();
        assert_eq!(e.status(), 400, "{extra}");
        let v = json_of(&e.body());
        assert_eq!(v["error"]["param"], param, "{extra}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{extra}: {message}");
    }
    // Zero penalties, text format, n = 1, logprobs false: nothing to refuse.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1,
        "logprobs": false, "presence_penalty": 0, "frequency_penalty": 0.0,
        "response_format": {"type": "text"}});
    upstream::request(&serde_json::to_vec(&body).unwrap(), "c", &SETTINGS).unwrap();
}

#[test]
fn messages_answers_become_chat_completions() {
    for text in [
        include_str!("fixtures/chat_response_text.json"),
        include_str!("fixtures/chat_response_tool_use.json"),
    ] {
        let f = fixture(text);
        let out = upstream::response(&serde_json::to_vec(&f["anthropic"]).unwrap()).unwrap();
        let out = json_of(&out);
        assert!(out["created"].as_u64().unwrap() > 0);
        assert_eq!(without_created(out), f["openai"], "{}", f["about"]);
    }
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
    ] {
        let body = json!({"id": "m", "model": "c", "content": [{"type": "text", "text": "x"}],
            "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}});
        let out = json_of(&upstream::response(&serde_json::to_vec(&body).unwrap()).unwrap());
        assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
    }
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        assert_eq!(super::stop_reason(Some(finish)), stop);
    }
}

#[test]
fn broken_messages_answers_are_upstream_errors_not_panics() {
    for body in [&b"not json"[..], b"{}", b"{\"content\": 7}", b"[]"] {
        let e = upstream::response(body).unwrap_err();
        assert_eq!(e.status(), 502, "{}", String::from_utf8_lossy(body));
    }
    // Unknown blocks are skipped, missing fields defaulted.
    let out = upstream::response(
        br#"{"content":[{"type":"server_tool_use"},{"type":"text","text":"ok"}]}"#,
    )
    .unwrap();
    let v = json_of(&out);
    assert_eq!(v["choices"][0]["message"]["content"], "ok");
    assert_eq!(v["usage"]["total_tokens"], 0);
}

/// Feeds `events` (as an upstream frames them) to `adapter` through the SSE parser,
/// one byte at a time; returns the client events.
fn run_stream(adapter: &mut dyn StreamAdapter, wire_bytes: &[u8]) -> Vec<ClientEvent> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for byte in wire_bytes.chunks(1) {
        parser.feed(byte, |data| adapter.event(data, &mut out).unwrap());
    }
    out
}

fn anthropic_wire(events: &[Value]) -> Vec<u8> {
    let mut wire = Vec::new();
    for e in events {
        let name = e["type"].as_str().unwrap_or("unknown");
        wire.extend_from_slice(format!("event: {name}\ndata: {e}\n\n").as_bytes());
    }
    wire
}

#[test]
fn anthropic_streams_become_chunks_ending_in_done() {
    for text in [
        include_str!("fixtures/chat_stream_text.json"),
        include_str!("fixtures/chat_stream_tool_call.json"),
    ] {
        let f = fixture(text);
        let include_usage = f["include_usage"].as_bool().unwrap_or(true);
        let mut adapter = StreamToOpenAi::new(include_usage);
        let events: Vec<Value> = f["anthropic_events"].as_array().unwrap().clone();
        let out = run_stream(&mut adapter, &anthropic_wire(&events));
        let got: Vec<Value> = out
            .iter()
            .map(|e| {
                assert_eq!(e.name, None);
                if e.is_done() {
                    json!("[DONE]")
                } else {
                    without_created(json_of(&e.data))
                }
            })
            .collect();
        assert_eq!(Value::Array(got), f["openai_chunks"], "{}", f["about"]);
        assert!(adapter.finished());
        let usage = adapter.usage().unwrap();
        let expected = match f.get("usage") {
            Some(u) => u.clone(),
            None => f["openai_chunks"][4]["usage"].clone(),
        };
        assert_eq!(super::openai_usage_json(&usage), expected);
    }
}

#[test]
fn a_stream_error_event_or_a_cut_is_never_a_quiet_end() {
    let mut adapter = StreamToOpenAi::new(false);
    let mut out = Vec::new();
    adapter
        .event(br#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":3}}}"#, &mut out)
        .unwrap();
    let e = adapter
        .event(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut out,
        )
        .unwrap_err();
    assert!(e.to_string().contains("overloaded_error"), "{e}");
    assert!(!adapter.finished());
    // Malformed events are skipped (and logged); without message_stop the stream is
    // not finished, so the engine ends it with an error.
    let mut adapter = StreamToOpenAi::new(false);
    let mut out = Vec::new();
    for data in [
        &b"{not json"[..],
        b"[1,2]",
        b"{\"type\":7}",
        b"{\"type\":\"content_block_delta\"}",
    ] {
        adapter.event(data, &mut out).unwrap();
    }
    assert!(!adapter.finished());
    assert_eq!(adapter.usage(), None, "no usage before message_delta");
}

#[test]
fn anthropic_errors_become_openai_errors() {
    let f = fixture(include_str!("fixtures/errors.json"));
    for case in f["anthropic_to_openai"].as_array().unwrap() {
        let body = match &case["anthropic"] {
            Value::String(s) => s.as_bytes().to_vec(),
            v => serde_json::to_vec(v).unwrap(),
        };
        let (status, out) = upstream::error(case["status"].as_u64().unwrap() as u16, &body);
        assert_eq!(status as u64, case["openai_status"].as_u64().unwrap());
        assert_eq!(json_of(&out), case["openai"]);
    }
    for case in f["openai_to_anthropic"].as_array().unwrap() {
        let body = serde_json::to_vec(&case["openai"]).unwrap();
        let status = case["status"].as_u64().unwrap() as u16;
        let (out_status, out) = client::error(status, &body);
        assert_eq!(out_status, status);
        assert_eq!(json_of(&out), case["anthropic"]);
    }
}

// === Anthropic clients, OpenAI-compatible pools ===

#[test]
fn messages_requests_become_chat_requests() {
    let f = fixture(include_str!("fixtures/messages_request.json"));
    let body = serde_json::to_vec(&f["anthropic"]).unwrap();
    let out = client::request(&body, "gpt-4o-mini").unwrap();
    assert_eq!(json_of(&out), f["openai"]);
}

#[test]
fn untranslatable_messages_requests_are_400_naming_the_field() {
    for (body, mentions) in [
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "`messages[0].content[0].type` `document`",
        ),
        (
            json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}),
            "`messages[0].role`",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}}),
            "`tool_choice.type`",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305"}]}),
            "`tools[0]`",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}),
            "`messages[0].content[0].source.type`",
        ),
    ] {
        let e = client::request(&serde_json::to_vec(&body).unwrap(), "g").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message().contains(mentions), "{}", e.message());
    }
}

#[test]
fn chat_completions_become_messages_answers() {
    let f = fixture(include_str!("fixtures/messages_response.json"));
    for case in f["cases"].as_array().unwrap() {
        let out = client::response(&serde_json::to_vec(&case["openai"]).unwrap()).unwrap();
        assert_eq!(json_of(&out), case["anthropic"]);
    }
}

#[test]
fn chunk_streams_become_typed_events() {
    let f = fixture(include_str!("fixtures/messages_stream.json"));
    let mut wire = Vec::new();
    for c in f["openai_chunks"].as_array().unwrap() {
        let data = match c {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        wire.extend_from_slice(format!("data: {data}\n\n").as_bytes());
    }
    let mut adapter = StreamToAnthropic::new();
    let out = run_stream(&mut adapter, &wire);
    let got: Vec<Value> = out
        .iter()
        .map(|e| json!([e.name.unwrap(), json_of(&e.data)]))
        .collect();
    assert_eq!(Value::Array(got), f["anthropic_events"]);
    assert!(adapter.finished());
    assert_eq!(adapter.usage().unwrap().total_tokens, 52);

    // Framed for an Anthropic client: `event:` then `data:`.
    let mut framed = bytes::BytesMut::new();
    Wire::Anthropic.frame(&out[0], &mut framed);
    assert!(
        framed.starts_with(b"event: message_start\ndata: {"),
        "{framed:?}"
    );
    assert!(framed.ends_with(b"}\n\n"));
}

#[test]
fn a_chunk_stream_without_done_is_not_finished() {
    let mut adapter = StreamToAnthropic::new();
    let mut out = Vec::new();
    adapter
        .event(
            br#"{"id":"c","model":"g","choices":[{"index":0,"delta":{"content":"hi"}}]}"#,
            &mut out,
        )
        .unwrap();
    adapter.event(b"garbage", &mut out).unwrap();
    assert!(!adapter.finished());
    let e = adapter
        .event(
            br#"{"error":{"message":"boom","type":"server_error"}}"#,
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e.status(), 502);
}

// === Anthropic clients, Anthropic pools ===

#[test]
fn relayed_streams_report_usage_and_replay_with_event_names() {
    let f = fixture(include_str!("fixtures/chat_stream_text.json"));
    let events: Vec<Value> = f["anthropic_events"].as_array().unwrap().clone();
    let mut relay = Relay::default();
    let out = run_stream(&mut relay, &anthropic_wire(&events));
    assert!(out.is_empty(), "a relay passes the bytes on itself");
    assert!(relay.finished());
    let u = relay.usage().unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens()),
        (30, 15, 5)
    );

    let stored: Vec<Bytes> = events.iter().map(|e| Bytes::from(e.to_string())).collect();
    let replay = replay_events(&stored);
    let text = String::from_utf8(replay.to_vec()).unwrap();
    assert!(text.starts_with("event: message_start\ndata: "), "{text}");
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert!(text.contains(
        "event: some_future_event\ndata: {\"detail\":\"ignored\",\"type\":\"some_future_event\"}\n\n"
    ));
    let odd = replay_events(&[Bytes::from_static(b"{\"type\":\"a\\nb\"}")]);
    assert_eq!(&odd[..], b"data: {\"type\":\"a\\nb\"}\n\n");
    assert!(!text.contains("[DONE]"));
}

#[test]
fn translations_by_client_and_pool() {
    let t = Translation::new(Api::ChatCompletions, ProviderKind::Anthropic);
    assert_eq!((t.client, t.upstream), (Wire::OpenAi, Wire::Anthropic));
    assert_eq!(t.upstream.path(Api::ChatCompletions), "/messages");
    let t = Translation::new(Api::Messages, ProviderKind::Openai);
    assert_eq!(t.upstream.path(Api::Messages), "/chat/completions");
    assert!(Translation::new(Api::Embeddings, ProviderKind::Openai).is_identity());
    // Whole-answer usage is read in the upstream's shape.
    let t = Translation::new(Api::Messages, ProviderKind::Anthropic);
    let u = t
        .usage(
            br#"{"usage":{"input_tokens":5,"cache_creation_input_tokens":10,"output_tokens":2}}"#,
        )
        .unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens()),
        (15, 2, 0)
    );
}
