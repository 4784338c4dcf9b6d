//! The `mock` provider: answers in-process, with no network and no key, in the exact
//! shapes OpenAI uses. Chat and completions echo the prompt back (streamed word by word
//! when asked), embeddings are deterministic unit vectors derived from the input text.
//! It exists so the default config runs anywhere and demos and tests need no provider.

use std::hash::{Hash, Hasher};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::Delivery;
use super::Pool;
use crate::adapters::anthropic::{self, client::StreamToAnthropic};
use crate::adapters::{StreamAdapter, Wire};
use crate::error::GatewayError;
use crate::gateway::Session;
use crate::openai::{Api, InferenceRequest, Usage, unix_now};
use crate::respond;

/// Longest echo, in words: the reply stays small whatever the prompt size.
const MAX_REPLY_WORDS: usize = 64;

/// Answers `req` (already routed to `upstream_model`) on `session`, with `extra`
/// response headers; records the usage it reports in `out`, as for a real upstream.
pub async fn answer(
    session: &mut Session,
    pool: &Pool,
    req: &InferenceRequest,
    upstream_model: &str,
    request_id: &str,
    extra: &[crate::headers::Header],
    out: &mut Delivery,
) -> Result<(), GatewayError> {
    // The gateway checked the body is JSON; a full parse can still refuse it (nesting
    // deeper than 128), as a real upstream would.
    let body: Value = serde_json::from_slice(&req.body).map_err(|e| {
        GatewayError::invalid(
            format!("The mock provider cannot read this body: {e}"),
            None,
        )
    })?;
    let settings = pool.spec.mock;
    let id = format!("mock-{request_id}");
    let write_err =
        |e: Box<pingora_error::Error>| GatewayError::BodyIncomplete(format!("client gone: {e}"));
    match req.api {
        Api::Embeddings => {
            let response = embeddings(&body, upstream_model, settings.embedding_dims)?;
            out.usage = Usage::find(&response);
            out.response_bytes = response.len() as u64;
            out.response_started = true;
            respond::json_with(session, 200, response, request_id, extra)
                .await
                .map_err(write_err)
        }
        Api::ChatCompletions | Api::Completions | Api::Messages => {
            // An Anthropic client gets the same answer, through the same adapter as
            // from an OpenAI-compatible upstream.
            let translated;
            let (req, body, wire) = if req.api == Api::Messages {
                let chat_body = anthropic::client::request(&req.body, upstream_model)?;
                translated = InferenceRequest::parse(Api::ChatCompletions, chat_body)?;
                let body: Value = serde_json::from_slice(&translated.body).unwrap_or_default();
                (&translated, body, Wire::Anthropic)
            } else {
                (req, body, Wire::OpenAi)
            };
            check_messages(&body)?;
            let prompt = prompt_text(req.api, &body);
            let words = reply_words(&prompt);
            let counted = Usage {
                prompt_tokens: count_tokens(&prompt) as u64,
                completion_tokens: words.len() as u64,
                total_tokens: (count_tokens(&prompt) + words.len()) as u64,
                ..Usage::default()
            };
            out.usage = Some(counted);
            let usage = json!({
                "prompt_tokens": counted.prompt_tokens,
                "completion_tokens": counted.completion_tokens,
                "total_tokens": counted.total_tokens,
            });
            if req.stream {
                let chunks = stream_chunks(req, &id, upstream_model, &words, usage);
                out.event_stream = true;
                respond::sse_start(session, request_id, extra)
                    .await
                    .map_err(write_err)?;
                out.response_started = true;
                let mut adapter = (wire == Wire::Anthropic).then(StreamToAnthropic::new);
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 && !settings.chunk_delay.is_zero() {
                        tokio::time::sleep(settings.chunk_delay).await;
                    }
                    match adapter.as_mut() {
                        None => respond::sse_event(session, chunk)
                            .await
                            .map_err(write_err)?,
                        Some(a) => write_translated(session, a, chunk).await?,
                    }
                }
                match adapter.as_mut() {
                    None => respond::sse_done(session).await.map_err(write_err),
                    Some(a) => {
                        write_translated(session, a, b"[DONE]").await?;
                        session
                            .write_response_body(Bytes::new(), true)
                            .await
                            .map_err(write_err)
                    }
                }
            } else {
                let mut response = complete(req.api, &id, upstream_model, &words.concat(), usage);
                if wire == Wire::Anthropic {
                    response = anthropic::client::response(&response)?;
                }
                out.response_bytes = response.len() as u64;
                out.response_started = true;
                respond::json_with(session, 200, response, request_id, extra)
                    .await
                    .map_err(write_err)
            }
        }
    }
}

/// One OpenAI chunk of the mock's stream, written as the Anthropic events it makes.
async fn write_translated(
    session: &mut Session,
    adapter: &mut StreamToAnthropic,
    chunk: &[u8],
) -> Result<(), GatewayError> {
    let mut events = Vec::new();
    adapter.event(chunk, &mut events)?;
    let mut framed = bytes::BytesMut::new();
    for e in &events {
        Wire::Anthropic.frame(e, &mut framed);
    }
    if framed.is_empty() {
        return Ok(());
    }
    session
        .write_response_body(framed.freeze(), false)
        .await
        .map_err(|e| GatewayError::BodyIncomplete(format!("client gone: {e}")))
}

/// The text the reply echoes: the last user message, or the prompt.
fn prompt_text(api: Api, body: &Value) -> String {
    match api {
        Api::ChatCompletions => body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .map(|m| content_text(&m["content"]))
            .unwrap_or_default(),
        _ => match &body["prompt"] {
            Value::Array(items) => items.first().map(content_text).unwrap_or_default(),
            other => content_text(other),
        },
    }
}

/// Text of a message content: a string, or the text parts of an array of parts.
fn content_text(content: &Value) -> String {
    anthropic::text_of(content, " ")
}

/// The reply as stream pieces: the first word bare, each next one with its space, so
/// that concatenating the pieces gives the non-stream text.
fn reply_words(prompt: &str) -> Vec<String> {
    let mut words = vec!["Mock".to_owned(), " reply:".to_owned()];
    words.extend(
        prompt
            .split_whitespace()
            .take(MAX_REPLY_WORDS)
            .map(|w| format!(" {w}")),
    );
    words
}

/// A rough count (about four characters a token), deterministic and cheap.
fn count_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4).max(1)
}

fn complete(api: Api, id: &str, model: &str, text: &str, usage: Value) -> Bytes {
    let body = match api {
        Api::ChatCompletions => json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
            "system_fingerprint": "tollgate-mock",
        }),
        _ => json!({
            "id": id,
            "object": "text_completion",
            "created": unix_now(),
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }),
    };
    Bytes::from(body.to_string())
}

/// Every event of a streamed answer, `[DONE]` excluded.
fn stream_chunks(
    req: &InferenceRequest,
    id: &str,
    model: &str,
    words: &[String],
    usage: Value,
) -> Vec<Vec<u8>> {
    let created = unix_now();
    let chat = req.api == Api::ChatCompletions;
    let chunk = |choice: Value| {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut c = json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": [choice],
        });
        if req.include_usage {
            c["usage"] = Value::Null;
        }
        c.to_string().into_bytes()
    };
    let mut out = Vec::with_capacity(words.len() + 3);
    if chat {
        out.push(chunk(json!({
            "index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": null, "finish_reason": null,
        })));
    }
    for w in words {
        out.push(chunk(if chat {
            json!({"index": 0, "delta": {"content": w}, "logprobs": null, "finish_reason": null})
        } else {
            json!({"index": 0, "text": w, "logprobs": null, "finish_reason": null})
        }));
    }
    out.push(chunk(if chat {
        json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"})
    }));
    if req.include_usage {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        out.push(
            json!({
                "id": id, "object": object, "created": created, "model": model,
                "choices": [], "usage": usage,
            })
            .to_string()
            .into_bytes(),
        );
    }
    out
}

fn embeddings(body: &Value, model: &str, dims: usize) -> Result<Bytes, GatewayError> {
    let inputs = embedding_inputs(&body["input"]).ok_or_else(|| {
        GatewayError::invalid(
            "`input` must be a string, an array of strings, an array of token ids, \
             or an array of arrays of token ids",
            Some("input"),
        )
    })?;
    if inputs.is_empty() {
        return Err(GatewayError::invalid(
            "`input` must not be empty",
            Some("input"),
        ));
    }
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(GatewayError::invalid(
                format!("`encoding_format` must be `float` or `base64`, not `{other}`"),
                Some("encoding_format"),
            ));
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = unit_vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| count_tokens(t)).sum();
    Ok(Bytes::from(
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })
        .to_string(),
    ))
}

/// The texts to embed, as OpenAI reads `input`; token ids stand for themselves.
fn embedding_inputs(input: &Value) -> Option<Vec<String>> {
    let tokens = |v: &Value| -> Option<String> {
        let ids = v.as_array()?;
        ids.iter().all(Value::is_u64).then(|| v.to_string())
    };
    match input {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
        ),
        Value::Array(items) if items.iter().all(Value::is_u64) => Some(vec![tokens(input)?]),
        Value::Array(items) => items.iter().map(tokens).collect(),
        _ => None,
    }
}

/// Checks each message has a known role, as an upstream would.
fn check_messages(body: &Value) -> Result<(), GatewayError> {
    const ROLES: &[&str] = &[
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
        "function",
    ];
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        if !role.is_some_and(|r| ROLES.contains(&r)) {
            return Err(GatewayError::invalid(
                format!(
                    "Invalid value for 'messages[{i}].role': expected one of {}.",
                    ROLES.join(", ")
                ),
                Some("messages"),
            ));
        }
    }
    Ok(())
}

/// A deterministic unit vector for `text`.
fn unit_vector(text: &str, dims: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims)
        .map(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (text, i).hash(&mut h);
            // Map the hash to [-1, 1).
            (h.finish() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_pieces_concatenate_to_the_full_text() {
        let w = reply_words("hello  big\nworld");
        assert_eq!(w.concat(), "Mock reply: hello big world");
    }

    #[test]
    fn embedding_inputs_follow_openai() {
        let inputs = |v: Value| embedding_inputs(&v);
        assert_eq!(inputs(json!("a")), inputs(json!(["a"])));
        assert_eq!(inputs(json!(["a", "b"])).unwrap().len(), 2);
        assert_eq!(inputs(json!([1, 2, 3])).unwrap().len(), 1);
        assert_eq!(inputs(json!([[1, 2], [3]])).unwrap().len(), 2);
        assert_eq!(inputs(json!([{"not": "text"}])), None);
        assert_eq!(inputs(json!(["a", 1])), None);
        assert_eq!(inputs(json!(7)), None);
    }

    #[test]
    fn messages_need_a_known_role() {
        assert!(check_messages(&json!({"messages": [{"role": "user", "content": "x"}]})).is_ok());
        assert!(check_messages(&json!({"messages": [{"content": "x"}]})).is_err());
        assert!(check_messages(&json!({"messages": [{"role": "robot"}]})).is_err());
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = unit_vector("x", 16);
        assert_eq!(a, unit_vector("x", 16));
        assert_ne!(a, unit_vector("y", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
