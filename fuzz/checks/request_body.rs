//! The request body parser and the model rewrite, on arbitrary bytes.
//!
//! Never a panic; and when a body parses, the body sent upstream is the client's body with
//! `model` replaced (and, when usage is asked for, `stream_options.include_usage` true),
//! every other field equal and every byte outside the rewritten values unchanged.

use bytes::Bytes;
use serde_json::{Value, json};
use tollgate::openai::{Api, InferenceRequest};

/// The input, in a layout that seeds can be written by hand: byte 0 the API (`c` chat,
/// `t` text completions, `e` embeddings; any other byte modulo 3), byte 1 `u` to ask for
/// usage (any other byte: its low bit), then the model to rewrite to up to the first
/// newline (empty: keep the client's), then the body.
struct Input<'a> {
    api: Api,
    target: &'a str,
    ask_usage: bool,
    body: &'a [u8],
}

fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&a, rest) = data.split_first()?;
    let (&u, rest) = rest.split_first()?;
    let api = match a {
        b'c' => Api::ChatCompletions,
        b't' => Api::Completions,
        b'e' => Api::Embeddings,
        other => [Api::ChatCompletions, Api::Completions, Api::Embeddings][usize::from(other % 3)],
    };
    let ask_usage = u == b'u' || (u != b'-' && u & 1 == 1);
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let target = std::str::from_utf8(&rest[..nl]).ok()?;
    Some(Input {
        api,
        target,
        ask_usage,
        body: &rest[nl + 1..],
    })
}

/// Runs one input; panics when an invariant breaks.
pub fn check(data: &[u8]) {
    let Some(input) = decode(data) else { return };
    let api = input.api;
    let Ok(req) = InferenceRequest::parse(api, Bytes::copy_from_slice(input.body)) else {
        return;
    };
    assert!(!req.model.is_empty());
    let _ = req.input();
    let target = if input.target.is_empty() {
        req.model.as_str()
    } else {
        input.target
    };
    let ask = input.ask_usage || req.needs_usage_requested();
    let out = req.upstream_body(target, ask);

    if target == req.model && !ask {
        assert_eq!(out, req.body, "nothing to change, yet the body changed");
    }
    // The parser reads fields without recursion; a JSON tree needs a bounded depth. Compare
    // as trees whenever the client's body reads as one.
    let Ok(mut want) = serde_json::from_slice::<Value>(input.body) else {
        return;
    };
    let sent: Value = match serde_json::from_slice(&out) {
        Ok(v) => v,
        Err(e) => panic!(
            "the rewritten body is not JSON ({e}): {}",
            String::from_utf8_lossy(&out)
        ),
    };
    want["model"] = json!(target);
    if ask {
        let options = &mut want["stream_options"];
        if !options.is_object() {
            *options = json!({});
        }
        options["include_usage"] = json!(true);
    }
    assert_eq!(
        sent, want,
        "the rewrite changed more than model and stream_options"
    );
    // And the rewritten body parses again, to the same request.
    let again = match InferenceRequest::parse(api, out) {
        Ok(r) => r,
        Err(e) => panic!("the rewritten body no longer parses: {}", e.message()),
    };
    assert_eq!(again.model, target);
    assert_eq!(again.stream, req.stream);
    assert_eq!(again.user, req.user);
    assert_eq!(again.max_tokens, req.max_tokens);
    assert_eq!(again.input(), req.input());
    assert!(!ask || again.include_usage);
}
