//! Properties of the parsers that see untrusted bytes, over generated inputs (proptest):
//! the request body parser and model rewrite, and the SSE parser with usage extraction.
//! Each must never panic, whatever the bytes, and must not depend on how a stream was cut
//! into reads.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Api, InferenceRequest, SseParser, Usage};

/// Every event's data for `bytes` fed in pieces cut at `cuts` (positions, any order).
fn events(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for w in at.windows(2) {
        parser.feed(&bytes[w[0]..w[1]], |data| out.push(data.to_vec()));
    }
    out
}

/// An SSE stream of `chunks` (each a JSON payload), CRLF or LF line ends, then [DONE].
fn stream(payloads: &[String], crlf: bool) -> Vec<u8> {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut s = String::new();
    for p in payloads {
        s.push_str("data: ");
        s.push_str(p);
        s.push_str(nl);
        s.push_str(nl);
    }
    s.push_str("data: [DONE]");
    s.push_str(nl);
    s.push_str(nl);
    s.into_bytes()
}

fn chunk_payload() -> impl Strategy<Value = String> {
    (
        "[a-zA-Z0-9 \u{e9}\u{4e2d}\"\\\\]{0,40}",
        0u64..1000,
        any::<bool>(),
    )
        .prop_map(|(text, n, with_usage)| {
            let mut v = json!({"choices": [{"index": 0, "delta": {"content": text}}]});
            if with_usage {
                v["usage"] = json!({"prompt_tokens": n, "completion_tokens": n + 1,
                    "total_tokens": 2 * n + 1});
            }
            v.to_string()
        })
}

/// The generated text of a chunk as a JSON parser reads it: the reference that
/// `append_generated_text`'s scan must agree with. The scan appends in document order,
/// and `serde_json` writes keys sorted, so this reads them in sorted order.
fn generated_text_parsed(payload: &str) -> String {
    let v: Value = serde_json::from_str(payload).unwrap();
    let mut out = String::new();
    for choice in v["choices"].as_array().into_iter().flatten() {
        let d = &choice["delta"];
        out.extend(d["content"].as_str());
        out.extend(d["reasoning_content"].as_str());
        for call in d["tool_calls"].as_array().into_iter().flatten() {
            out.extend(call["function"]["arguments"].as_str());
            out.extend(call["function"]["name"].as_str());
        }
        out.extend(choice["text"].as_str());
    }
    out
}

/// A stream chunk with generated text in any of its places, and strings elsewhere that
/// look like those keys (which must not count).
fn text_chunk() -> impl Strategy<Value = String> {
    let text = "[a-zA-Z \u{e9}\u{4e2d}\"\\\\:{},\n]{0,24}";
    (
        text,
        text,
        text,
        text,
        0usize..5,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, decoy, place, pretty, null_usage)| {
            let decoy = format!("\"content\": \"{decoy}\", \"text\":");
            let delta = match place {
                0 => json!({"role": "assistant", "content": a}),
                1 => json!({"content": a, "reasoning_content": b}),
                2 => json!({"tool_calls": [{"index": 0, "id": decoy, "type": "function",
                    "function": {"name": a, "arguments": b}}]}),
                3 => json!({"content": null, "refusal": decoy, "tool_calls": [
                    {"index": 0, "function": {"arguments": a}},
                    {"index": 1, "function": {"name": b, "arguments": c}}]}),
                _ => json!({}),
            };
            let mut choice = json!({"index": 0, "delta": delta, "finish_reason": null,
                "logprobs": {"content": [{"token": decoy, "logprob": -0.5}]}});
            if place == 4 {
                choice["text"] = json!(a);
            }
            let mut v = json!({"id": decoy, "object": "chat.completion.chunk",
                "model": "m", "choices": [choice]});
            if null_usage {
                v["usage"] = Value::Null;
            }
            if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                v.to_string()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn sse_events_do_not_depend_on_how_reads_cut_the_stream(
        payloads in prop::collection::vec(chunk_payload(), 0..8),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let bytes = stream(&payloads, crlf);
        let whole = events(&bytes, &[]);
        prop_assert_eq!(&events(&bytes, &cuts), &whole);
        let mut want: Vec<Vec<u8>> = payloads.iter().map(|p| p.clone().into_bytes()).collect();
        want.push(b"[DONE]".to_vec());
        prop_assert_eq!(whole, want);
        for p in &payloads {
            let v: Value = serde_json::from_str(p).unwrap();
            let found = Usage::find(p.as_bytes()).map(|u| u.prompt_tokens);
            prop_assert_eq!(found, v["usage"]["prompt_tokens"].as_u64());
        }
    }

    #[test]
    fn generated_text_is_what_a_json_parser_reads(payload in text_chunk()) {
        let mut text = String::new();
        super::append_generated_text(payload.as_bytes(), &mut text);
        prop_assert_eq!(text, generated_text_parsed(&payload));
    }

    #[test]
    fn lines_are_what_splitting_at_newlines_gives(
        text in prop::collection::vec(prop::sample::select(b"ab\n\r ".to_vec()), 0..64),
    ) {
        let ours: Vec<&[u8]> = super::sse::lines(&text).collect();
        let split: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        prop_assert_eq!(ours, split);
    }

    #[test]
    fn an_event_put_reads_back_as_its_data(
        data in prop::collection::vec(prop::sample::select(b"ab\n {}".to_vec()), 0..64),
    ) {
        let mut framed = bytes::BytesMut::new();
        super::put_event(&data, &mut framed);
        prop_assert_eq!(events(&framed, &[]), vec![data]);
    }

    #[test]
    fn arbitrary_bytes_never_break_the_sse_parser(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        for data in events(&bytes, &cuts) {
            let _ = Usage::find(&data);
            let _ = super::is_usage_only_chunk(&data);
            let mut text = String::new();
            super::append_generated_text(&data, &mut text);
        }
    }

    #[test]
    fn arbitrary_bytes_never_break_the_request_parser(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        for api in [Api::ChatCompletions, Api::Completions, Api::Embeddings] {
            if let Ok(req) = InferenceRequest::parse(api, Bytes::from(bytes.clone())) {
                let _ = req.upstream_body("x", true);
            }
        }
    }

    #[test]
    fn the_model_rewrite_changes_the_model_and_nothing_else(
        model in "[a-zA-Z0-9._:/\u{e9}\"\\\\-]{1,30}",
        target in "[a-zA-Z0-9._:/\u{e9}\"\\\\-]{1,30}",
        content in "[ -~\u{e9}\u{4e2d}]{0,60}",
        temperature in 0.0f64..2.0,
        stream in any::<bool>(),
        spaced in any::<bool>(),
    ) {
        let body = json!({"model": model, "temperature": temperature, "stream": stream,
            "messages": [{"role": "user", "content": content}]});
        let text = if spaced { serde_json::to_string_pretty(&body).unwrap() } else { body.to_string() };
        // What the client sent, as a JSON reader sees it (numbers read back from text).
        let mut want: Value = serde_json::from_str(&text).unwrap();
        let req = InferenceRequest::parse(Api::ChatCompletions, Bytes::from(text)).unwrap();
        prop_assert_eq!(&req.model, &model);
        let sent: Value = serde_json::from_slice(&req.upstream_body(&target, stream)).unwrap();
        want["model"] = json!(target);
        if stream {
            want["stream_options"] = json!({"include_usage": true});
        }
        prop_assert_eq!(sent, want);
    }
}
