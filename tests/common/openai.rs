//! OpenAI wire shapes for the mock upstream and for assertions: chat completion bodies,
//! streamed `chat.completion.chunk` events, and a parser for received SSE text.

use serde_json::{Value, json};

/// The assistant text of [`crate::common::Behavior::EchoChat`] replies.
pub const ECHO_REPLY: &str = "Hello from the mock upstream.";
/// The pieces [`crate::common::Behavior::EchoChat`] streams; they concatenate to [`ECHO_REPLY`].
pub const ECHO_STREAM_PIECES: [&str; 3] = ["Hello", " from the", " mock upstream."];
/// `usage` of every echo reply: (prompt_tokens, completion_tokens); total is their sum.
pub const ECHO_USAGE: (u64, u64) = (11, 7);
/// The model named in chunks built by [`sse_chat_chunk`].
pub const MOCK_MODEL: &str = "mock-model";
/// The event that ends an OpenAI stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// A `usage` object.
pub fn usage_json(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// A complete non-streamed `chat.completion` with one assistant choice and [`ECHO_USAGE`].
pub fn chat_completion_json(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": usage_json(ECHO_USAGE.0, ECHO_USAGE.1),
    })
}

/// An OpenAI error body: `{"error": {"message", "type", "code"}}`.
pub fn error_json(message: &str, kind: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

/// `data: {json}\n\n`.
pub fn sse_event(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// One streamed content delta as a full SSE event, model [`MOCK_MODEL`].
pub fn sse_chat_chunk(id: &str, content: &str) -> String {
    sse_chat_chunk_for_model(id, MOCK_MODEL, content)
}

/// One streamed content delta as a full SSE event.
pub fn sse_chat_chunk_for_model(id: &str, model: &str, content: &str) -> String {
    sse_event(&chunk_json(
        id,
        model,
        json!({"content": content}),
        Value::Null,
    ))
}

/// The last choice chunk of a stream: an empty delta with `finish_reason`.
pub fn sse_finish_chunk(id: &str, model: &str, finish_reason: &str) -> String {
    sse_event(&chunk_json(id, model, json!({}), json!(finish_reason)))
}

/// The usage-only chunk sent when `stream_options.include_usage` is set.
pub fn sse_usage_chunk(
    id: &str,
    model: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> String {
    sse_event(&json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [],
        "usage": usage_json(prompt_tokens, completion_tokens),
    }))
}

fn chunk_json(id: &str, model: &str, delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

/// The events [`crate::common::Behavior::EchoChat`] streams for a request (before
/// `[DONE]`): the pieces of [`ECHO_REPLY`], a finish chunk, and a usage chunk if asked for.
pub fn echo_stream_events(model: &str, include_usage: bool) -> Vec<String> {
    let id = "chatcmpl-mock-stream";
    let mut events: Vec<String> = ECHO_STREAM_PIECES
        .iter()
        .map(|piece| sse_chat_chunk_for_model(id, model, piece))
        .collect();
    events.push(sse_finish_chunk(id, model, "stop"));
    if include_usage {
        events.push(sse_usage_chunk(id, model, ECHO_USAGE.0, ECHO_USAGE.1));
    }
    events
}

/// The `data:` payloads of SSE text, in order (multi-line data joined with `\n`;
/// comments and other fields skipped). `[DONE]` is returned as the string `[DONE]`.
pub fn parse_sse_data(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|value| value.strip_prefix(' ').unwrap_or(value))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The concatenated `choices[0].delta.content` of the JSON events in SSE text.
pub fn sse_content(text: &str) -> String {
    parse_sse_data(text)
        .iter()
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|event| {
            event["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}
