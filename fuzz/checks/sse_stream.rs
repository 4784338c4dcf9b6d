//! The SSE parser and usage extraction, on arbitrary bytes cut into reads at arbitrary
//! points.
//!
//! Never a panic; the events (and so the usage found in them) do not depend on where the
//! network cut the stream; and usage found in an event is the event's own `usage` object.

use tollgate::openai::{SseParser, Usage, append_generated_text, is_usage_only_chunk};

/// The input, in a layout that seeds can be written by hand: byte 0 the number of cuts
/// (`0`-`9` as digits, any other byte modulo 17), that many two-byte positions, then the
/// stream.
struct Input<'a> {
    cuts: Vec<u16>,
    stream: &'a [u8],
}

fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&n, rest) = data.split_first()?;
    let n = usize::from(if n.is_ascii_digit() { n - b'0' } else { n % 17 });
    if rest.len() < 2 * n {
        return None;
    }
    let (cuts, stream) = rest.split_at(2 * n);
    let cuts = cuts
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(Input { cuts, stream })
}

/// Every event's data, the stream fed in pieces cut at `cuts` (positions, any order).
fn events(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (bytes.len() + 1))
        .collect();
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

/// Runs one input; panics when an invariant breaks.
pub fn check(data: &[u8]) {
    let Some(input) = decode(data) else { return };
    let whole = events(input.stream, &[]);
    let cut = events(input.stream, &input.cuts);
    assert_eq!(cut, whole, "the events depend on how the stream was cut");
    // One byte at a time, the worst case for the boundary search.
    if input.stream.len() <= 512 {
        let every: Vec<u16> = (0..input.stream.len() as u16).collect();
        assert_eq!(
            events(input.stream, &every),
            whole,
            "byte-by-byte reads differ"
        );
    }
    for data in &whole {
        let usage = Usage::find(data);
        if let Some(u) = usage {
            // What the gateway accounts is what the event says. (serde_json skips the
            // fields it does not read without checking their UTF-8, so an event with a
            // broken string elsewhere still has its usage read: compare with a lossy
            // reading of the text.)
            let text = String::from_utf8_lossy(data);
            let v: serde_json::Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => panic!("usage found in a payload that is not JSON: {e}"),
            };
            assert_eq!(
                v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                u.prompt_tokens
            );
            assert_eq!(
                v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                u.completion_tokens
            );
            let _ = (u.cached_tokens(), u.reasoning_tokens(), u.tokens());
        }
        if is_usage_only_chunk(data) {
            assert!(usage.is_some(), "a usage-only chunk without usage");
        }
        let mut text = String::new();
        append_generated_text(data, &mut text);
    }
}
