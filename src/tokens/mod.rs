//! Token counts of a request before it is sent: for context-window checks (and, later,
//! for reserving token budgets at admission).
//!
//! Prompts are counted with the `o200k_base` encoding (GPT-4o and later); for other
//! model families it is an estimate, usually within a few percent. Counting costs CPU,
//! so the cheap bound comes first: a byte-level BPE token is at least one byte, so a
//! request whose input bytes plus `max_tokens` fit a window fits it for sure.

mod bpe;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::openai::{Api, InferenceRequest};

/// Tokens every chat message costs besides its text (role and separators), and the
/// tokens that prime the reply, as OpenAI documents for its chat models.
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMER: u64 = 3;
/// An image part, counted at the low-detail price.
const PER_IMAGE: u64 = 85;

/// Whether the request's prompt plus `max_tokens` fit `window`; `Err(needed)` if not.
/// The prompt is counted at most once per request, into `prompt`.
pub fn fits(req: &InferenceRequest, window: u64, prompt: &mut Option<u64>) -> Result<(), u64> {
    let output = req.max_tokens.unwrap_or(0);
    if prompt.is_none() && req.input().len() as u64 + output <= window {
        return Ok(());
    }
    let needed = prompt
        .get_or_insert_with(|| prompt_tokens(req))
        .saturating_add(output);
    if needed <= window {
        Ok(())
    } else {
        Err(needed)
    }
}

/// The prompt's tokens: message texts plus per-message overhead for chat, the prompt or
/// input texts (or token arrays) otherwise.
pub fn prompt_tokens(req: &InferenceRequest) -> u64 {
    let input = req.input();
    match req.api {
        Api::ChatCompletions | Api::Messages => serde_json::from_slice::<Vec<Message<'_>>>(input)
            .map(|messages| messages.iter().map(Message::tokens).sum::<u64>() + REPLY_PRIMER)
            .unwrap_or_else(|_| bytes_estimate(input)),
        Api::Completions | Api::Embeddings => serde_json::from_slice::<Prompt<'_>>(input)
            .map(|p| p.tokens())
            .unwrap_or_else(|_| bytes_estimate(input)),
    }
}

/// The cheap estimate used at admission (about four bytes a token of input); the
/// reservation it makes is trued up from the real usage afterwards.
pub fn estimate(req: &InferenceRequest) -> u64 {
    bytes_estimate(req.input())
}

/// Tokens of a text (`o200k_base`); estimated from its bytes should the vocabulary be
/// missing.
pub fn count(text: &str) -> u64 {
    bpe::count_o200k(text).map_or_else(|| bytes_estimate(text.as_bytes()), |n| n as u64)
}

/// About four bytes a token, for input that could not be read.
fn bytes_estimate(input: &[u8]) -> u64 {
    (input.len() as u64).div_ceil(4)
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

impl Message<'_> {
    fn tokens(&self) -> u64 {
        let mut n = PER_MESSAGE;
        n += self.role.as_deref().map_or(0, count);
        n += self.name.as_deref().map_or(0, |name| count(name) + 1);
        if let Some(content) = self.content {
            n += content_tokens(content);
        }
        if let Some(calls) = self.tool_calls {
            // Tool calls go to the model as their JSON text.
            n += count(calls.get());
        }
        n
    }
}

/// A message's content: a string, or an array of parts (text, images, …).
fn content_tokens(content: &RawValue) -> u64 {
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        text: Option<std::borrow::Cow<'a, str>>,
    }
    if let Ok(text) = serde_json::from_str::<std::borrow::Cow<'_, str>>(content.get()) {
        return count(&text);
    }
    match serde_json::from_str::<Vec<Part<'_>>>(content.get()) {
        Ok(parts) => parts
            .iter()
            .map(|p| match (p.kind.as_deref(), &p.text) {
                (_, Some(text)) => count(text),
                (Some("image_url" | "input_image" | "image"), None) => PER_IMAGE,
                _ => 0,
            })
            .sum(),
        Err(_) => bytes_estimate(content.get().as_bytes()),
    }
}

/// `prompt` or `input`: a string, strings, token ids, or arrays of token ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
    Texts(#[serde(borrow)] Vec<std::borrow::Cow<'a, str>>),
    Tokens(Vec<u64>),
    TokenLists(Vec<Vec<u64>>),
}

impl Prompt<'_> {
    fn tokens(&self) -> u64 {
        match self {
            Prompt::Text(t) => count(t),
            Prompt::Texts(ts) => ts.iter().map(|t| count(t)).sum(),
            Prompt::Tokens(ids) => ids.len() as u64,
            Prompt::TokenLists(lists) => lists.iter().map(|l| l.len() as u64).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn chat(body: &str) -> InferenceRequest {
        InferenceRequest::parse(Api::ChatCompletions, Bytes::from(body.to_owned())).unwrap()
    }

    #[test]
    fn counts_chat_messages_like_openai() {
        // "Hello world" is 2 tokens, "user" 1: 3 + 1 + 2, plus 3 for the reply.
        let req = chat(r#"{"model":"m","messages":[{"role":"user","content":"Hello world"}]}"#);
        assert_eq!(prompt_tokens(&req), 9);
    }

    #[test]
    fn counts_text_parts_and_images() {
        let req = chat(
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"Hello world"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#,
        );
        assert_eq!(prompt_tokens(&req), 9 + PER_IMAGE);
    }

    #[test]
    fn small_requests_fit_without_counting() {
        let req =
            chat(r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#);
        let mut prompt = None;
        assert_eq!(fits(&req, 1000, &mut prompt), Ok(()));
        assert_eq!(prompt, None, "the byte bound decided");
    }

    #[test]
    fn large_requests_are_counted_once() {
        let text = "word ".repeat(500);
        let body = format!(
            r#"{{"model":"m","max_tokens":100,"messages":[{{"role":"user","content":"{text}"}}]}}"#
        );
        let req = chat(&body);
        let mut prompt = None;
        // 500 words, about 500 tokens: fits 1000, not 400.
        assert_eq!(fits(&req, 1000, &mut prompt), Ok(()));
        let counted = prompt.unwrap();
        assert!((500..=520).contains(&counted), "{counted}");
        assert_eq!(fits(&req, 400, &mut prompt), Err(counted + 100));
    }

    #[test]
    fn completions_prompts_in_every_shape() {
        let parse = |body: &str| {
            InferenceRequest::parse(Api::Completions, Bytes::from(body.to_owned())).unwrap()
        };
        assert_eq!(
            prompt_tokens(&parse(r#"{"model":"m","prompt":"Hello world"}"#)),
            2
        );
        assert_eq!(
            prompt_tokens(&parse(r#"{"model":"m","prompt":["Hello","world"]}"#)),
            2
        );
        assert_eq!(
            prompt_tokens(&parse(r#"{"model":"m","prompt":[1,2,3]}"#)),
            3
        );
        assert_eq!(
            prompt_tokens(&parse(r#"{"model":"m","prompt":[[1,2],[3]]}"#)),
            3
        );
    }
}
