//! The inference request body: parsed once, checked, and patched in place.
//!
//! Only the fields the gateway acts on are read; everything else stays as the client
//! wrote it. Rewriting `model` splices the new value into the original bytes instead of
//! re-serializing, so unknown fields, key order, number formats and whitespace reach the
//! upstream byte for byte.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// Which inference API a body is for; decides which fields are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API (`POST /v1/messages`), for Anthropic clients.
    Messages,
}

impl Api {
    /// The path after the API prefix, e.g. `/chat/completions`.
    pub fn path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/chat/completions",
            Api::Completions => "/completions",
            Api::Embeddings => "/embeddings",
            Api::Messages => "/messages",
        }
    }

    /// A conversation of messages (OpenAI's chat or Anthropic's Messages).
    pub fn is_chat(self) -> bool {
        matches!(self, Api::ChatCompletions | Api::Messages)
    }

    /// The field that carries the input, which must be present.
    fn input_field(self) -> &'static str {
        match self {
            Api::ChatCompletions | Api::Messages => "messages",
            Api::Completions => "prompt",
            Api::Embeddings => "input",
        }
    }
}

/// What the gateway knows about a request body after one parse.
#[derive(Debug, Clone)]
pub struct InferenceRequest {
    pub api: Api,
    /// The body exactly as the client sent it.
    pub body: Bytes,
    /// The requested model, unescaped.
    pub model: String,
    /// Byte range of the `model` value (with its quotes) in `body`.
    model_span: Range<usize>,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `user`, when a string.
    pub user: Option<String>,
    /// `max_completion_tokens`, else `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// Byte range of the input (`messages`, `prompt` or `input`) in `body`.
    input_span: Range<usize>,
    /// Byte range of the `stream_options` value, when present (`null` included: asking
    /// for usage replaces it, rather than adding a second `stream_options` key).
    stream_options_span: Option<Range<usize>>,
}

/// The fields read by the gateway, borrowed from the body. Unknown fields are skipped,
/// but still checked to be valid JSON.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Present<'a>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
}

/// A field's raw value whenever the key is there, `null` included: an `Option<&RawValue>`
/// reads `null` as a missing key.
#[derive(Default)]
struct Present<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Present<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|raw| Present(Some(raw)))
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

impl InferenceRequest {
    pub fn parse(api: Api, body: Bytes) -> Result<Self, GatewayError> {
        let text = body.as_ref();
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::invalid(
                "The request body is empty; it must be a JSON object.",
                None,
            ));
        }
        let fields: Fields<'_> = serde_json::from_slice(text).map_err(|e| {
            if e.is_data() {
                GatewayError::invalid(
                    format!("The request body must be a JSON object ({e})."),
                    None,
                )
            } else {
                GatewayError::InvalidJson(e.to_string())
            }
        })?;

        let raw_model = fields.model.filter(|m| m.get() != "null").ok_or_else(|| {
            GatewayError::invalid("you must provide a model parameter", Some("model"))
        })?;
        let model: String = serde_json::from_str(raw_model.get())
            .map_err(|_| GatewayError::invalid("`model` must be a string", Some("model")))?;
        if model.is_empty() {
            return Err(GatewayError::invalid(
                "`model` must not be empty",
                Some("model"),
            ));
        }
        let model_span = span_of(text, raw_model.get());

        let stream = match fields.stream.map(RawValue::get) {
            None | Some("null") | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(GatewayError::invalid(
                    "`stream` must be a boolean",
                    Some("stream"),
                ));
            }
        };
        let stream_options_span = fields.stream_options.0.map(|raw| span_of(text, raw.get()));
        let include_usage = match fields.stream_options.0.map(RawValue::get) {
            None | Some("null") => false,
            Some(raw) => serde_json::from_str::<StreamOptions>(raw)
                .map_err(|_| {
                    GatewayError::invalid(
                        "`stream_options` must be an object with a boolean `include_usage`",
                        Some("stream_options"),
                    )
                })?
                .include_usage
                .unwrap_or(false),
        };

        let input = match api {
            Api::ChatCompletions | Api::Messages => fields.messages,
            Api::Completions => fields.prompt,
            Api::Embeddings => fields.input,
        };
        let field = api.input_field();
        let input_span = input.map_or(0..0, |raw| span_of(text, raw.get()));
        let user = fields
            .user
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        let max_tokens = match fields.max_completion_tokens.or(fields.max_tokens) {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
                GatewayError::invalid(
                    "`max_tokens` must be a non-negative integer",
                    Some("max_tokens"),
                )
            })?),
        };
        match input.map(RawValue::get) {
            None | Some("null") => {
                return Err(GatewayError::invalid(
                    format!("Missing required parameter: '{field}'."),
                    Some(field),
                ));
            }
            Some(raw) if api.is_chat() && !raw.starts_with('[') => {
                return Err(GatewayError::invalid(
                    "`messages` must be an array of message objects",
                    Some("messages"),
                ));
            }
            Some(raw) if api.is_chat() && is_empty_array(raw) => {
                return Err(GatewayError::invalid(
                    "`messages` must contain at least one message",
                    Some("messages"),
                ));
            }
            Some(_) => {}
        }

        Ok(InferenceRequest {
            api,
            body,
            model,
            model_span,
            stream,
            include_usage,
            user,
            max_tokens,
            input_span,
            stream_options_span,
        })
    }

    /// Whether the gateway must ask the upstream for usage itself: a stream whose client
    /// did not ask for it (`stream_options.include_usage`). Anthropic streams always
    /// report usage.
    pub fn needs_usage_requested(&self) -> bool {
        self.stream
            && !self.include_usage
            && matches!(self.api, Api::ChatCompletions | Api::Completions)
    }

    /// The input (`messages`, `prompt` or `input`) as raw JSON bytes.
    pub fn input(&self) -> &[u8] {
        &self.body[self.input_span.clone()]
    }

    /// The body with `model` replaced; the original bytes everywhere else. Returns the
    /// original buffer (no copy) when the model does not change.
    pub fn body_with_model(&self, model: &str) -> Bytes {
        self.upstream_body(model, false)
    }

    /// The body for an upstream: `model` replaced and, with `ask_usage`,
    /// `stream_options.include_usage` set to true (other stream options kept); every other
    /// byte as the client sent it. No copy when nothing changes.
    pub fn upstream_body(&self, model: &str, ask_usage: bool) -> Bytes {
        let new_model = (model != self.model)
            // A Rust string always serializes to a JSON string.
            .then(|| serde_json::to_string(model).unwrap_or_default());
        let usage_patch = ask_usage.then(|| self.stream_options_with_usage());
        if new_model.is_none() && usage_patch.is_none() {
            return self.body.clone();
        }
        // Splices in body order; the two spans never overlap.
        let mut splices: Vec<(Range<usize>, &[u8])> = Vec::with_capacity(2);
        if let Some(m) = &new_model {
            splices.push((self.model_span.clone(), m.as_bytes()));
        }
        if let Some((range, text)) = &usage_patch {
            splices.push((range.clone(), text.as_bytes()));
        }
        splices.sort_by_key(|(r, _)| r.start);
        let extra: usize = splices.iter().map(|(_, t)| t.len()).sum();
        let mut out = BytesMut::with_capacity(self.body.len() + extra);
        let mut at = 0;
        for (range, text) in splices {
            out.extend_from_slice(&self.body[at..range.start]);
            out.extend_from_slice(text);
            at = range.end;
        }
        out.extend_from_slice(&self.body[at..]);
        out.freeze()
    }

    /// Where to splice, and what, so that `stream_options.include_usage` is true: a new
    /// member right after the body's opening brace, or the existing object rewritten.
    fn stream_options_with_usage(&self) -> (Range<usize>, String) {
        const ADDED: &str = r#""stream_options":{"include_usage":true},"#;
        match &self.stream_options_span {
            Some(span) => {
                let mut options: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&self.body[span.clone()]).unwrap_or_default();
                options.insert("include_usage".into(), serde_json::Value::Bool(true));
                let text = serde_json::to_string(&options).unwrap_or_default();
                (span.clone(), text)
            }
            None => {
                // The body parsed as a JSON object, so its first non-blank byte is `{`.
                let open = self
                    .body
                    .iter()
                    .position(|&b| b == b'{')
                    .map_or(0, |i| i + 1);
                (open..open, ADDED.to_owned())
            }
        }
    }
}

/// Where `part`, a sub-slice borrowed from `whole`, sits in it.
fn span_of(whole: &[u8], part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

fn is_empty_array(raw: &str) -> bool {
    raw.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| inner.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<InferenceRequest, GatewayError> {
        InferenceRequest::parse(Api::ChatCompletions, Bytes::from(body.to_owned()))
    }

    #[test]
    fn rewrites_only_the_model_value() {
        let body = r#"{ "messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o",
            "temperature": 0.70, "x_custom": {"model": "keep"} }"#;
        let req = chat(body).unwrap();
        assert_eq!(req.model, "gpt-4o");
        let out = req.body_with_model("llama-3-8b");
        let expected = body.replacen(r#""gpt-4o""#, r#""llama-3-8b""#, 1);
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    }

    #[test]
    fn escaped_model_names_are_unescaped_and_reescaped() {
        let req =
            chat(r#"{"model":"a\"b\u00e9","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(req.model, "a\"bé");
        let out = req.body_with_model("q\"x");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "q\"x");
    }

    #[test]
    fn same_model_reuses_the_buffer() {
        let req = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        let out = req.body_with_model("m");
        assert_eq!(out.as_ptr(), req.body.as_ptr());
    }

    #[test]
    fn usage_is_requested_without_touching_anything_else() {
        let body = r#" {"model":"a","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let req = chat(body).unwrap();
        assert!(req.needs_usage_requested());
        let out = req.upstream_body("b", true);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            r#" {"stream_options":{"include_usage":true},"model":"b","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
        );
        // Existing options are kept.
        let body = r#"{"stream_options":{"continuous_usage_stats":true,"include_usage":false},"model":"a","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
        let req = chat(body).unwrap();
        assert!(req.needs_usage_requested());
        let v: serde_json::Value = serde_json::from_slice(&req.upstream_body("a", true)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["continuous_usage_stats"], true);
        assert_eq!(v["model"], "a");
        // A client that asked gets nothing added.
        let req = chat(r#"{"model":"a","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert!(!req.needs_usage_requested());
        // Nothing to change: the same buffer.
        let req = chat(r#"{"model":"a","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(req.upstream_body("a", false).as_ptr(), req.body.as_ptr());
    }

    #[test]
    fn a_null_stream_options_is_replaced_not_duplicated() {
        // Found by fuzz/request_body: the usage request was added as a second
        // `stream_options` key in front of the client's `null`, and JSON readers that keep
        // the last duplicate (most do) saw no usage request.
        let body = r#"{"model":"m","stream":true,"stream_options":null,"messages":[1]}"#;
        let req = chat(body).unwrap();
        assert!(req.needs_usage_requested());
        let out = req.upstream_body("m", true);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[1]}"#
        );
    }

    #[test]
    fn stream_flags() {
        let req = chat(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        assert!(req.stream && req.include_usage);
        let e = chat(r#"{"model":"m","stream":"yes","messages":[]}"#).unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn bad_bodies_are_400_with_a_reason() {
        for (body, code) in [
            ("", "invalid_request"),
            ("   ", "invalid_request"),
            ("{", "invalid_json"),
            ("{\"model\":\"m\",}", "invalid_json"),
            ("[1,2]", "invalid_request"),
            ("\"model\"", "invalid_request"),
            ("{\"messages\":[{}]}", "invalid_request"),
            ("{\"model\":7,\"messages\":[{}]}", "invalid_request"),
            ("{\"model\":null,\"messages\":[{}]}", "invalid_request"),
            ("{\"model\":\"\",\"messages\":[{}]}", "invalid_request"),
            ("{\"model\":\"m\"}", "invalid_request"),
            ("{\"model\":\"m\",\"messages\":{}}", "invalid_request"),
            ("{\"model\":\"m\",\"messages\":[ ]}", "invalid_request"),
            (
                "{\"model\":\"m\",\"model\":\"n\",\"messages\":[{}]}",
                "invalid_request",
            ),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.code(), code, "{body}");
        }
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        // Fields the gateway does not read are skipped by an iterative scanner: any
        // depth is safe here, and the upstream decides whether it accepts it.
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(chat(&body).unwrap().model, "m");
        let unbalanced = format!(r#"{{"model":"m","x":{}}}"#, "[".repeat(100_000));
        assert_eq!(chat(&unbalanced).unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut body = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#""}]}"#);
        let e = InferenceRequest::parse(Api::ChatCompletions, Bytes::from(body)).unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn other_apis_require_their_input() {
        let e = InferenceRequest::parse(Api::Embeddings, Bytes::from_static(br#"{"model":"m"}"#))
            .unwrap_err();
        assert!(e.message().contains("input"));
        InferenceRequest::parse(
            Api::Completions,
            Bytes::from_static(br#"{"model":"m","prompt":"hi"}"#),
        )
        .unwrap();
    }
}
