//! Anthropic's Messages API, both ways:
//!
//! - [`upstream`]: OpenAI chat-completions clients served by `provider: anthropic` pools
//!   (the request to Anthropic's shape, the answer, stream and errors back);
//! - [`client`]: Anthropic clients on `POST /v1/messages` served by OpenAI-compatible
//!   pools (the same four translations the other way round).
//!
//! Anthropic clients on Anthropic pools pass through untouched; [`Relay`] only reads the
//! usage from their stream. Shared here: usage, stop reasons and error shapes.

pub mod client;
pub mod upstream;

#[cfg(test)]
mod golden;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ClientEvent, StreamAdapter};
use crate::error::GatewayError;
use crate::openai::{PromptDetails, Usage};

/// The `anthropic-version` sent when the client did not choose one.
pub const API_VERSION: &str = "2023-06-01";

/// Anthropic's token counts. Every field may be missing or null in a given event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Counts given by a later event replace earlier ones (`message_delta` after
    /// `message_start`).
    pub fn update(&mut self, later: &AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// As OpenAI counts: the prompt is every input token, cached or not, and
    /// `cached_tokens` those read from the cache.
    pub fn to_openai(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens.unwrap_or(0) + read + created;
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: (read + created > 0).then_some(PromptDetails {
                cached_tokens: read,
            }),
            completion_tokens_details: None,
        }
    }

    /// From OpenAI's counts: `input_tokens` leaves out what was read from the cache.
    pub fn from_openai(u: &Usage) -> AnthropicUsage {
        let cached = u.cached_tokens();
        AnthropicUsage {
            input_tokens: Some(u.prompt_tokens.saturating_sub(cached)),
            output_tokens: Some(u.completion_tokens),
            cache_creation_input_tokens: Some(0),
            cache_read_input_tokens: Some(cached),
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens.unwrap_or(0),
            "cache_creation_input_tokens": self.cache_creation_input_tokens.unwrap_or(0),
            "cache_read_input_tokens": self.cache_read_input_tokens.unwrap_or(0),
            "output_tokens": self.output_tokens.unwrap_or(0),
        })
    }
}

/// OpenAI's `usage` object.
pub fn openai_usage_json(u: &Usage) -> Value {
    let mut v = json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    });
    if let (Some(d), Some(obj)) = (u.prompt_tokens_details, v.as_object_mut()) {
        obj.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": d.cached_tokens}),
        );
    }
    v
}

/// The usage of a whole Messages answer, as OpenAI counts it.
pub fn usage_of_message(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Message {
        usage: Option<AnthropicUsage>,
    }
    serde_json::from_slice::<Message>(body)
        .ok()?
        .usage
        .map(AnthropicUsage::to_openai)
}

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("end_turn" | "stop_sequence" | "pause_turn") => "stop",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        other => {
            tracing::warn!(
                stop_reason = ?other,
                "Unknown Anthropic stop_reason; reported as `stop`"
            );
            "stop"
        }
    }
}

/// OpenAI's `finish_reason` as Anthropic's `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        Some("stop") | None => "end_turn",
        Some(other) => {
            tracing::warn!(
                finish_reason = other,
                "Unknown OpenAI finish_reason; reported as `end_turn`"
            );
            "end_turn"
        }
    }
}

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// `{"type":"error","error":{"type":…,"message":…}}`, as Anthropic shapes errors.
pub fn error_body(status: u16, message: &str) -> Bytes {
    Bytes::from(
        json!({"type": "error", "error": {"type": error_type(status), "message": message}})
            .to_string(),
    )
}

/// The `type` of an event's data, if it is a JSON object with one.
fn event_type(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// Frames stored Anthropic stream events for a replay (from the response cache): each
/// event named by its data's `type`, and no `[DONE]` (Anthropic streams have none).
pub fn replay_events(events: &[Bytes]) -> Bytes {
    use bytes::BufMut;
    let mut out = bytes::BytesMut::new();
    for data in events {
        let v = serde_json::from_slice::<Value>(data).unwrap_or_default();
        // A name that could break the framing is left out (the data still has it).
        if let Some(name) =
            event_type(&v).filter(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            out.put_slice(b"event: ");
            out.put_slice(name.as_bytes());
            out.put_slice(b"\n");
        }
        // The `data:` lines, framed as any event without a name.
        super::Wire::OpenAi.frame(&ClientEvent::data(data.clone()), &mut out);
    }
    out.freeze()
}

/// Anthropic's stream relayed to an Anthropic client untouched: reads the usage of
/// `message_start` and `message_delta`, and knows the end (`message_stop`, or an
/// `error` event, which is how Anthropic ends a stream that failed).
#[derive(Debug, Default)]
pub struct Relay {
    usage: Option<AnthropicUsage>,
    /// `message_delta` gave the final output count.
    counted: bool,
    finished: bool,
}

impl StreamAdapter for Relay {
    fn event(&mut self, data: &[u8], _out: &mut Vec<ClientEvent>) -> Result<(), GatewayError> {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            tracing::warn!(
                data = %String::from_utf8_lossy(&data[..data.len().min(200)]),
                "Unreadable Anthropic stream event relayed as is"
            );
            return Ok(());
        };
        let usage = match event_type(&v) {
            Some("message_start") => v.pointer("/message/usage"),
            Some("message_delta") => {
                self.counted = true;
                v.get("usage")
            }
            Some("message_stop" | "error") => {
                self.finished = true;
                None
            }
            _ => None,
        };
        if let Some(u) = usage.and_then(|u| AnthropicUsage::deserialize(u).ok()) {
            self.usage.get_or_insert_default().update(&u);
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.finished
    }

    /// Known once `message_delta` came; a stream cut short before is counted by the
    /// gateway instead.
    fn usage(&self) -> Option<Usage> {
        self.usage
            .filter(|_| self.counted)
            .map(AnthropicUsage::to_openai)
    }

    fn relays(&self) -> bool {
        true
    }
}

/// A request body to translate: a JSON object (the gateway parsed it once already, so
/// this refuses only what a full parse does, such as nesting too deep).
fn request_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GatewayError::invalid(
            "The body must be a JSON object.",
            None,
        )),
        Err(e) => Err(GatewayError::invalid(
            format!("The body cannot be read: {e}"),
            None,
        )),
    }
}

/// A JSON text of `v` as bytes (serializing a `Value` cannot fail).
fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The text of an OpenAI or Anthropic message content: a string, or its text parts
/// joined with `sep`.
pub fn text_of(content: &Value, sep: &str) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(sep),
        _ => String::new(),
    }
}

/// An Anthropic `tool_use` block as an OpenAI tool call (its input as JSON text).
fn openai_tool_call(block: &Value) -> Value {
    json!({
        "id": block.get("id").cloned().unwrap_or(json!("")),
        "type": "function",
        "function": {
            "name": block.get("name").cloned().unwrap_or(json!("")),
            "arguments": serde_json::to_string(block.get("input").unwrap_or(&json!({})))
                .unwrap_or_default(),
        },
    })
}

/// An OpenAI assistant message: its text (null when it only calls tools) and calls.
fn assistant_message(text: String, calls: Vec<Value>) -> serde_json::Map<String, Value> {
    let mut message = serde_json::Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            json!(text)
        },
    );
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    message
}

/// The `type` and `message` of an Anthropic error body or event, if it has them.
fn error_parts(v: &Value) -> (Option<&str>, Option<&str>) {
    (
        v.pointer("/error/type").and_then(Value::as_str),
        v.pointer("/error/message").and_then(Value::as_str),
    )
}
