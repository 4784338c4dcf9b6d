//! OpenAI chat-completions clients served by an Anthropic pool: the request becomes a
//! Messages request, and the answer, its stream and its errors become OpenAI's.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    AnthropicUsage, assistant_message, error_parts, event_type, openai_tool_call,
    openai_usage_json, request_object, text_of, to_bytes,
};
use crate::adapters::{ClientEvent, StreamAdapter};
use crate::config::AnthropicSettings;
use crate::error::GatewayError;
use crate::openai::{Usage, unix_now};

// === request ===

/// The Messages request for an OpenAI chat-completions body, as `model`.
///
/// System and developer messages become `system`; tool results become `tool_result`
/// blocks of a user turn and tool calls `tool_use` blocks; consecutive turns of one role
/// are merged (Anthropic wants them alternating). Fields Anthropic has no equivalent for
/// are refused with a 400 naming them, rather than dropped silently.
pub fn request(
    body: &[u8],
    model: &str,
    settings: &AnthropicSettings,
) -> Result<Bytes, GatewayError> {
    let req = request_object(body)?;
    let req = &req;
    refuse_unsupported(req)?;

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let (system, messages) = messages(req.get("messages").unwrap_or(&Value::Null))?;
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = match req
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| req.get("max_tokens").filter(|v| !v.is_null()))
    {
        Some(n) => n.as_u64().ok_or_else(|| {
            GatewayError::invalid(
                "`max_tokens` must be a non-negative integer",
                Some("max_tokens"),
            )
        })?,
        None => settings.default_max_tokens,
    };
    out.insert("max_tokens".into(), json!(max_tokens));
    for field in ["temperature", "top_p"] {
        if let Some(x) = req.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), x.clone());
        }
    }
    match req.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            out.insert("stop_sequences".into(), Value::Array(list.clone()));
        }
        Some(_) => {
            return Err(GatewayError::invalid(
                "`stop` must be a string or an array of strings",
                Some("stop"),
            ));
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
    }
    if let Some(tools) = req.get("tools").filter(|v| !v.is_null()) {
        out.insert("tools".into(), self::tools(tools)?);
    }
    let no_parallel = req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    if let Some(choice) = tool_choice(req.get("tool_choice"), no_parallel)? {
        out.insert("tool_choice".into(), choice);
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// OpenAI features Anthropic's Messages API lacks: a 400 naming the field.
fn refuse_unsupported(req: &Map<String, Value>) -> Result<(), GatewayError> {
    let refuse = |field: &'static str, why: &str| {
        Err(GatewayError::invalid(
            format!("`{field}` is not supported by this model's provider (Anthropic): {why}"),
            Some(field),
        ))
    };
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return refuse("n", "it returns one choice per request");
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return refuse("logprobs", "it reports no log probabilities");
    }
    if req.get("top_logprobs").is_some_and(|v| !v.is_null()) {
        return refuse("top_logprobs", "it reports no log probabilities");
    }
    if req
        .get("logit_bias")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
    {
        return refuse("logit_bias", "it has no logit bias");
    }
    for field in ["presence_penalty", "frequency_penalty"] {
        if req
            .get(field)
            .and_then(Value::as_f64)
            .is_some_and(|x| x != 0.0)
        {
            return refuse(
                if field == "presence_penalty" {
                    "presence_penalty"
                } else {
                    "frequency_penalty"
                },
                "it has no repetition penalties",
            );
        }
    }
    if let Some(kind) = req
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        && kind != "text"
    {
        return refuse("response_format", "it has no JSON mode");
    }
    if req.get("audio").is_some_and(|v| !v.is_null()) {
        return refuse("audio", "it produces no audio");
    }
    Ok(())
}

/// `system` texts and the alternating user/assistant turns.
fn messages(list: &Value) -> Result<(Vec<String>, Vec<Value>), GatewayError> {
    let Some(list) = list.as_array() else {
        return Err(GatewayError::invalid(
            "`messages` must be an array of message objects",
            Some("messages"),
        ));
    };
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(text_of(content, ""));
                continue;
            }
            "user" => ("user", content_blocks(content, &at)?),
            "assistant" => {
                let mut blocks = content_blocks(content, &at)?;
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (j, call) in calls.iter().enumerate() {
                        blocks.push(tool_use(call, &format!("{at}.tool_calls[{j}]"))?);
                    }
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        GatewayError::invalid(
                            format!("`{at}.tool_call_id` is required for a tool message"),
                            Some("messages"),
                        )
                    })?;
                let result = match content {
                    Value::String(s) => json!(s),
                    other => Value::Array(content_blocks(other, &at)?),
                };
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": result})],
                )
            }
            other => {
                return Err(GatewayError::invalid(
                    format!(
                        "`{at}.role` `{other}` cannot be sent to Anthropic (system, developer, \
                         user, assistant or tool)"
                    ),
                    Some("messages"),
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect();
    Ok((system, turns))
}

/// A message content (a string or an array of parts) as Anthropic content blocks.
fn content_blocks(content: &Value, at: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| content_part(part, &format!("{at}.content[{j}]")))
            .collect(),
        _ => Err(GatewayError::invalid(
            format!("`{at}.content` must be a string or an array of parts"),
            Some("messages"),
        )),
    }
}

fn content_part(part: &Value, at: &str) -> Result<Value, GatewayError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({
            "type": "text",
            "text": part.get("text").and_then(Value::as_str).unwrap_or(""),
        })),
        Some("image_url") => {
            let url = part
                .pointer("/image_url/url")
                .or_else(|| part.get("image_url"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    GatewayError::invalid(
                        format!("`{at}.image_url.url` is required"),
                        Some("messages"),
                    )
                })?;
            image_source(url, at).map(|source| json!({"type": "image", "source": source}))
        }
        other => Err(GatewayError::invalid(
            format!(
                "`{at}.type` `{}` is not supported by this model's provider (Anthropic): \
                 text and image_url parts only",
                other.unwrap_or("(missing)")
            ),
            Some("messages"),
        )),
    }
}

/// An image URL as Anthropic's image source: a `data:` URL inline, anything else by URL.
fn image_source(url: &str, at: &str) -> Result<Value, GatewayError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(json!({"type": "url", "url": url}));
    };
    match rest.split_once(";base64,") {
        Some((media_type, data)) => Ok(json!({
            "type": "base64",
            "media_type": media_type,
            "data": data,
        })),
        None => Err(GatewayError::invalid(
            format!("`{at}.image_url.url`: a data URL must be base64 (`data:<type>;base64,…`)"),
            Some("messages"),
        )),
    }
}

/// An assistant's tool call as a `tool_use` block; its arguments must be JSON.
fn tool_use(call: &Value, at: &str) -> Result<Value, GatewayError> {
    let function = call.get("function").unwrap_or(&Value::Null);
    let arguments = function
        .get("arguments")
        .and_then(Value::as_str)
        .unwrap_or("");
    let input: Value = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments).map_err(|e| {
            GatewayError::invalid(
                format!("`{at}.function.arguments` is not valid JSON ({e})"),
                Some("messages"),
            )
        })?
    };
    Ok(json!({
        "type": "tool_use",
        "id": call.get("id").and_then(Value::as_str).unwrap_or(""),
        "name": function.get("name").and_then(Value::as_str).unwrap_or(""),
        "input": input,
    }))
}

fn tools(tools: &Value) -> Result<Value, GatewayError> {
    let Some(list) = tools.as_array() else {
        return Err(GatewayError::invalid(
            "`tools` must be an array",
            Some("tools"),
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let function = match (t.get("type").and_then(Value::as_str), t.get("function")) {
                (Some("function") | None, Some(f)) => f,
                _ => {
                    return Err(GatewayError::invalid(
                        format!(
                            "`tools[{i}]`: only function tools can be sent to this model's \
                             provider (Anthropic)"
                        ),
                        Some("tools"),
                    ));
                }
            };
            let mut out = Map::new();
            out.insert(
                "name".into(),
                function.get("name").cloned().unwrap_or(json!("")),
            );
            if let Some(d) = function.get("description").filter(|d| !d.is_null()) {
                out.insert("description".into(), d.clone());
            }
            out.insert(
                "input_schema".into(),
                function
                    .get("parameters")
                    .filter(|p| !p.is_null())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            );
            Ok(Value::Object(out))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn tool_choice(choice: Option<&Value>, no_parallel: bool) -> Result<Option<Value>, GatewayError> {
    let mut out = match choice {
        None | Some(Value::Null) if no_parallel => json!({"type": "auto"}),
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => {
                return Err(GatewayError::invalid(
                    format!("`tool_choice` `{other}` is not one of auto, none, required"),
                    Some("tool_choice"),
                ));
            }
        },
        Some(obj) => match obj.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => {
                return Err(GatewayError::invalid(
                    "`tool_choice` must name a function: {\"type\": \"function\", \
                     \"function\": {\"name\": …}}",
                    Some("tool_choice"),
                ));
            }
        },
    };
    if no_parallel
        && out["type"] != "none"
        && let Some(o) = out.as_object_mut()
    {
        o.insert("disable_parallel_tool_use".into(), json!(true));
    }
    Ok(Some(out))
}

// === response ===

/// A Messages answer as a `chat.completion`.
pub fn response(body: &[u8]) -> Result<Bytes, GatewayError> {
    let broken = |detail: String| GatewayError::UpstreamProtocol {
        pool: "anthropic".into(),
        detail,
    };
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| broken(format!("the Anthropic answer is not JSON: {e}")))?;
    let Some(content) = v.get("content").and_then(Value::as_array) else {
        return Err(broken("the Anthropic answer has no `content` array".into()));
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in content {
        match event_type(block) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""))
            }
            Some("tool_use") => calls.push(openai_tool_call(block)),
            Some("redacted_thinking") => {}
            other => {
                tracing::warn!(block_type = ?other, "Unknown Anthropic content block skipped");
            }
        }
    }
    let mut message = assistant_message(text, calls);
    message.insert("refusal".into(), Value::Null);
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), json!(reasoning));
    }
    let usage = v
        .get("usage")
        .and_then(|u| AnthropicUsage::deserialize(u).ok())
        .unwrap_or_default()
        .to_openai();
    let out = json!({
        "id": v.get("id").cloned().unwrap_or(json!("")),
        "object": "chat.completion",
        "created": unix_now(),
        "model": v.get("model").cloned().unwrap_or(json!("")),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": super::finish_reason(v.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": openai_usage_json(&usage),
    });
    Ok(to_bytes(&out))
}

// === errors ===

/// An Anthropic error response as OpenAI's: `overloaded_error` (529) becomes a 503,
/// which OpenAI clients know to retry.
pub fn error(status: u16, body: &[u8]) -> (u16, Bytes) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let (kind, message) = error_parts(&v);
    let kind = kind.unwrap_or("api_error");
    let message = message
        .map(str::to_owned)
        .unwrap_or_else(|| format!("The upstream answered {status}."));
    let status = if status == 529 { 503 } else { status };
    let (openai_type, code) = match kind {
        "overloaded_error" => ("server_error", "overloaded"),
        "rate_limit_error" => ("requests", "rate_limit_exceeded"),
        "authentication_error" => ("invalid_request_error", "invalid_api_key"),
        "permission_error" => ("invalid_request_error", "permission_denied"),
        "not_found_error" => ("invalid_request_error", "not_found"),
        "request_too_large" => ("invalid_request_error", "request_too_large"),
        "invalid_request_error" => ("invalid_request_error", "invalid_request"),
        _ if status >= 500 => ("server_error", "upstream_error"),
        _ => ("invalid_request_error", "upstream_error"),
    };
    (
        status,
        crate::error::error_body(&message, openai_type, None, Some(code)),
    )
}

// === stream ===

/// Anthropic's typed events as `chat.completion.chunk`s, ending in the usage-only chunk
/// and `[DONE]`. The usage chunk is always made, as an OpenAI upstream is always asked
/// for it: the engine keeps it from a client that did not ask (and caches it).
#[derive(Debug)]
pub struct StreamToOpenAi {
    /// The client asked for usage (`stream_options.include_usage`): every chunk has
    /// `"usage": null` but the last, as OpenAI streams them.
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    started: bool,
    usage: AnthropicUsage,
    /// OpenAI's tool-call index of each content block that is a tool call.
    tool_blocks: Vec<(u64, usize)>,
    finish_reason: Option<&'static str>,
    finished: bool,
}

impl StreamToOpenAi {
    pub fn new(include_usage: bool) -> Self {
        StreamToOpenAi {
            include_usage,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            started: false,
            usage: AnthropicUsage::default(),
            tool_blocks: Vec::new(),
            finish_reason: None,
            finished: false,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> ClientEvent {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if self.include_usage
            && let Some(o) = c.as_object_mut()
        {
            o.insert("usage".into(), Value::Null);
        }
        ClientEvent::data(to_bytes(&c))
    }

    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tool_blocks
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, i)| *i)
    }
}

impl StreamAdapter for StreamToOpenAi {
    fn event(&mut self, data: &[u8], out: &mut Vec<ClientEvent>) -> Result<(), GatewayError> {
        let v: Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, data = %String::from_utf8_lossy(&data[..data.len().min(200)]), "Unreadable Anthropic stream event skipped");
                return Ok(());
            }
        };
        match event_type(&v) {
            Some("message_start") => {
                let m = v.get("message").unwrap_or(&Value::Null);
                self.id = m
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.model = m
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some(u) = m
                    .get("usage")
                    .and_then(|u| AnthropicUsage::deserialize(u).ok())
                {
                    self.usage.update(&u);
                }
                self.started = true;
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Some("content_block_start") => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match event_type(block) {
                    Some("tool_use") => {
                        let i = self.tool_blocks.len();
                        self.tool_blocks.push((index, i));
                        out.push(self.chunk(
                            json!({"tool_calls": [{
                                "index": i,
                                "id": block.get("id").cloned().unwrap_or(json!("")),
                                "type": "function",
                                "function": {
                                    "name": block.get("name").cloned().unwrap_or(json!("")),
                                    "arguments": "",
                                },
                            }]}),
                            None,
                        ));
                    }
                    Some("text") => {
                        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            out.push(self.chunk(json!({"content": text}), None));
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = v.get("delta").unwrap_or(&Value::Null);
                let str_of = |key: &str| delta.get(key).and_then(Value::as_str).unwrap_or("");
                match event_type(delta) {
                    Some("text_delta") => {
                        out.push(self.chunk(json!({"content": str_of("text")}), None));
                    }
                    Some("input_json_delta") => match self.tool_index(index) {
                        Some(i) => out.push(self.chunk(
                            json!({"tool_calls": [{
                                "index": i,
                                "function": {"arguments": str_of("partial_json")},
                            }]}),
                            None,
                        )),
                        None => tracing::warn!(
                            index,
                            "Anthropic tool arguments for a block that is no tool call skipped"
                        ),
                    },
                    Some("thinking_delta") => {
                        out.push(self.chunk(json!({"reasoning_content": str_of("thinking")}), None))
                    }
                    Some("signature_delta" | "citations_delta") => {}
                    other => {
                        tracing::warn!(delta_type = ?other, "Unknown Anthropic content delta skipped");
                    }
                }
            }
            Some("message_delta") => {
                if let Some(u) = v
                    .get("usage")
                    .and_then(|u| AnthropicUsage::deserialize(u).ok())
                {
                    self.usage.update(&u);
                }
                let reason =
                    super::finish_reason(v.pointer("/delta/stop_reason").and_then(Value::as_str));
                self.finish_reason = Some(reason);
                out.push(self.chunk(json!({}), Some(reason)));
            }
            Some("message_stop") => {
                if self.finish_reason.is_none() {
                    tracing::warn!("Anthropic stream stopped without a stop_reason");
                    self.finish_reason = Some("stop");
                    out.push(self.chunk(json!({}), Some("stop")));
                }
                let usage = self.usage.to_openai();
                out.push(ClientEvent::data(to_bytes(&json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": openai_usage_json(&usage),
                }))));
                out.push(ClientEvent::data(Bytes::from_static(b"[DONE]")));
                self.finished = true;
            }
            Some("content_block_stop" | "ping") => {}
            Some("error") => {
                let (kind, message) = error_parts(&v);
                let (kind, message) = (kind.unwrap_or("error"), message.unwrap_or(""));
                return Err(GatewayError::UpstreamProtocol {
                    pool: "anthropic".into(),
                    detail: format!("the stream failed: {kind}: {message}"),
                });
            }
            other => {
                tracing::warn!(event_type = ?other, "Unknown Anthropic stream event skipped");
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.finished
    }

    /// Known once `message_delta` gave the output count; a stream cut short before
    /// that is counted by the gateway instead.
    fn usage(&self) -> Option<Usage> {
        (self.started && self.finish_reason.is_some()).then(|| self.usage.to_openai())
    }
}
