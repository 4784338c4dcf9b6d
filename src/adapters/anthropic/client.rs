//! Anthropic clients (`POST /v1/messages`) served by an OpenAI-compatible pool: the
//! Messages request becomes a chat-completions request, and the answer, its stream and
//! its errors become Anthropic's.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    AnthropicUsage, assistant_message, event_type, openai_tool_call, request_object, text_of,
    to_bytes,
};
use crate::adapters::{ClientEvent, StreamAdapter};
use crate::error::GatewayError;
use crate::openai::Usage;

// === request ===

/// The chat-completions request for a Messages body, as `model`. A stream always asks
/// for usage (Anthropic streams report it; the adapter turns it into `message_delta`).
pub fn request(body: &[u8], model: &str) -> Result<Bytes, GatewayError> {
    let req = request_object(body)?;
    let req = &req;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(system @ (Value::String(_) | Value::Array(_))) => {
            messages.push(json!({"role": "system", "content": text_of(system, "")}));
        }
        Some(_) => {
            return Err(GatewayError::invalid(
                "`system` must be a string or an array of text blocks",
                Some("system"),
            ));
        }
    }
    let Some(turns) = req.get("messages").and_then(Value::as_array) else {
        return Err(GatewayError::invalid(
            "`messages` must be an array of message objects",
            Some("messages"),
        ));
    };
    for (i, m) in turns.iter().enumerate() {
        turn(m, &format!("messages[{i}]"), &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_tokens").filter(|v| !v.is_null()) {
        out.insert("max_tokens".into(), n.clone());
    }
    for field in ["temperature", "top_p", "top_k"] {
        if let Some(x) = req.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), x.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), stop.clone());
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(choice) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let name = choice.get("name").and_then(Value::as_str);
        let mapped = match (event_type(choice), name) {
            (Some("auto"), _) => json!("auto"),
            (Some("any"), _) => json!("required"),
            (Some("none"), _) => json!("none"),
            (Some("tool"), Some(name)) => json!({"type": "function", "function": {"name": name}}),
            _ => {
                return Err(GatewayError::invalid(
                    "`tool_choice.type` must be auto, any, none, or tool with a `name`",
                    Some("tool_choice"),
                ));
            }
        };
        if choice
            .get("disable_parallel_tool_use")
            .and_then(Value::as_bool)
            == Some(true)
        {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
        out.insert("tool_choice".into(), mapped);
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array)
        && !tools.is_empty()
    {
        let tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                    GatewayError::invalid(
                        format!(
                            "`tools[{i}]`: only custom tools (with a `name` and an \
                             `input_schema`) can be sent to this model's provider"
                        ),
                        Some("tools"),
                    )
                })?;
                let mut function = Map::new();
                function.insert("name".into(), json!(name));
                if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                    function.insert("description".into(), d.clone());
                }
                function.insert(
                    "parameters".into(),
                    t.get("input_schema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                Ok(json!({"type": "function", "function": function}))
            })
            .collect::<Result<Vec<_>, GatewayError>>()?;
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// One Anthropic turn as OpenAI messages: a user turn's tool results become `tool`
/// messages (first, as OpenAI wants them right after the assistant's calls), an
/// assistant turn's `tool_use` blocks become its `tool_calls`.
fn turn(m: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").unwrap_or(&Value::Null);
    let blocks: Vec<Value> = match content {
        Value::String(s) => {
            out.push(json!({"role": role_of(role, at)?, "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks.clone(),
        _ => {
            return Err(GatewayError::invalid(
                format!("`{at}.content` must be a string or an array of content blocks"),
                Some("messages"),
            ));
        }
    };
    let role = role_of(role, at)?;
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        match event_type(block) {
            Some("text") => parts.push(json!({
                "type": "text",
                "text": block.get("text").and_then(Value::as_str).unwrap_or(""),
            })),
            Some("image") if role == "user" => {
                let source = block.get("source").unwrap_or(&Value::Null);
                let url = match event_type(source) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source
                            .get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        source.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    Some("url") => source
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    _ => {
                        return Err(GatewayError::invalid(
                            format!("`{bat}.source.type` must be base64 or url"),
                            Some("messages"),
                        ));
                    }
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_use") if role == "assistant" => calls.push(openai_tool_call(block)),
            Some("tool_result") if role == "user" => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let mut text = text_of(block.get("content").unwrap_or(&Value::Null), "");
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            // Reasoning of earlier turns is not sent back to another provider.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(GatewayError::invalid(
                    format!(
                        "`{bat}.type` `{}` cannot be sent to this model's provider \
                         (OpenAI-compatible): text, image, tool_use and tool_result only",
                        other.unwrap_or("(missing)")
                    ),
                    Some("messages"),
                ));
            }
        }
    }
    if role == "assistant" {
        if parts.is_empty() && calls.is_empty() {
            return Ok(());
        }
        let text = text_of(&Value::Array(parts), "");
        out.push(Value::Object(assistant_message(text, calls)));
    } else if !parts.is_empty() {
        let only_text = parts.len() == 1 && parts[0]["type"] == "text";
        let content = if only_text {
            parts[0]["text"].clone()
        } else {
            Value::Array(parts)
        };
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

fn role_of(role: &str, at: &str) -> Result<&'static str, GatewayError> {
    match role {
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        other => Err(GatewayError::invalid(
            format!("`{at}.role` must be user or assistant, not `{other}`"),
            Some("messages"),
        )),
    }
}

// === response ===

/// A `chat.completion` as a Messages answer.
pub fn response(body: &[u8]) -> Result<Bytes, GatewayError> {
    let broken = |detail: String| GatewayError::UpstreamProtocol {
        pool: "openai".into(),
        detail,
    };
    let v: Value =
        serde_json::from_slice(body).map_err(|e| broken(format!("the answer is not JSON: {e}")))?;
    let Some(choice) = v.pointer("/choices/0") else {
        return Err(broken("the answer has no choice".into()));
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    let text = text_of(message.get("content").unwrap_or(&Value::Null), "");
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(tool_use_block(call));
    }
    let usage = Usage::find(body).unwrap_or_default();
    let out = json!({
        "id": v.get("id").cloned().unwrap_or(json!("")),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").cloned().unwrap_or(json!("")),
        "content": content,
        "stop_reason": super::stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": AnthropicUsage::from_openai(&usage).to_json(),
    });
    Ok(to_bytes(&out))
}

/// An OpenAI tool call as a `tool_use` block; arguments that are not JSON are kept as a
/// string under `input._raw` (with a warning) rather than lost.
fn tool_use_block(call: &Value) -> Value {
    let function = call.get("function").unwrap_or(&Value::Null);
    let arguments = function
        .get("arguments")
        .and_then(Value::as_str)
        .unwrap_or("");
    json!({
        "type": "tool_use",
        "id": call.get("id").cloned().unwrap_or(json!("")),
        "name": function.get("name").cloned().unwrap_or(json!("")),
        "input": parse_arguments(arguments),
    })
}

fn parse_arguments(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Tool-call arguments that are not JSON kept as `_raw`");
        json!({"_raw": arguments})
    })
}

// === errors ===

/// An OpenAI error response as Anthropic's.
pub fn error(status: u16, body: &[u8]) -> (u16, Bytes) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // OpenAI's error body has the same `error.message` as Anthropic's.
    let message = super::error_parts(&v)
        .1
        .map(str::to_owned)
        .unwrap_or_else(|| format!("The upstream answered {status}."));
    (status, super::error_body(status, &message))
}

// === stream ===

/// Which content block is open in the Anthropic stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    /// A tool call, by OpenAI's tool-call index.
    Tool(u64),
}

/// `chat.completion.chunk`s as Anthropic's typed events: `message_start`, a
/// `content_block_start` / `_delta`s / `_stop` per text or tool call, `message_delta`
/// with the stop reason and usage, `message_stop`.
#[derive(Debug)]
pub struct StreamToAnthropic {
    started: bool,
    open: Open,
    /// Index of the open block (the next one's, once closed).
    block: u64,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    finished: bool,
}

impl Default for StreamToAnthropic {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamToAnthropic {
    pub fn new() -> Self {
        StreamToAnthropic {
            started: false,
            open: Open::None,
            block: 0,
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<ClientEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(ClientEvent::named(
            "message_start",
            to_bytes(&json!({
                "type": "message_start",
                "message": {
                    "id": chunk.get("id").cloned().unwrap_or(json!("")),
                    "type": "message",
                    "role": "assistant",
                    "model": chunk.get("model").cloned().unwrap_or(json!("")),
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            })),
        ));
    }

    fn close(&mut self, out: &mut Vec<ClientEvent>) {
        if self.open != Open::None {
            out.push(ClientEvent::named(
                "content_block_stop",
                to_bytes(&json!({"type": "content_block_stop", "index": self.block})),
            ));
            self.block += 1;
            self.open = Open::None;
        }
    }

    fn open(&mut self, open: Open, block: Value, out: &mut Vec<ClientEvent>) {
        self.close(out);
        self.open = open;
        out.push(ClientEvent::named(
            "content_block_start",
            to_bytes(&json!({
                "type": "content_block_start",
                "index": self.block,
                "content_block": block,
            })),
        ));
    }

    fn delta(&self, delta: Value, out: &mut Vec<ClientEvent>) {
        out.push(ClientEvent::named(
            "content_block_delta",
            to_bytes(&json!({
                "type": "content_block_delta",
                "index": self.block,
                "delta": delta,
            })),
        ));
    }

    fn end(&mut self, out: &mut Vec<ClientEvent>) {
        self.start(&Value::Null, out);
        self.close(out);
        let usage = AnthropicUsage::from_openai(&self.usage.unwrap_or_default());
        out.push(ClientEvent::named(
            "message_delta",
            to_bytes(&json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": super::stop_reason(self.finish_reason.as_deref()),
                    "stop_sequence": null,
                },
                "usage": usage.to_json(),
            })),
        ));
        out.push(ClientEvent::named(
            "message_stop",
            Bytes::from_static(br#"{"type":"message_stop"}"#),
        ));
        self.finished = true;
    }
}

impl StreamAdapter for StreamToAnthropic {
    fn event(&mut self, data: &[u8], out: &mut Vec<ClientEvent>) -> Result<(), GatewayError> {
        if data == b"[DONE]" {
            self.end(out);
            return Ok(());
        }
        let chunk: Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, data = %String::from_utf8_lossy(&data[..data.len().min(200)]), "Unreadable stream chunk skipped");
                return Ok(());
            }
        };
        if let Some(err) = chunk.get("error") {
            return Err(GatewayError::UpstreamProtocol {
                pool: "openai".into(),
                detail: format!("the stream failed: {err}"),
            });
        }
        if let Some(u) = Usage::find(data) {
            self.usage = Some(u);
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return Ok(());
        };
        self.start(&chunk, out);
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str)
            && !text.is_empty()
        {
            if self.open != Open::Text {
                self.open(Open::Text, json!({"type": "text", "text": ""}), out);
            }
            self.delta(json!({"type": "text_delta", "text": text}), out);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if self.open != Open::Tool(index) {
                self.open(
                    Open::Tool(index),
                    json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(json!("")),
                        "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                        "input": {},
                    }),
                    out,
                );
            }
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str)
                && !args.is_empty()
            {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": args}),
                    out,
                );
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}
