//! Server-sent events as OpenAI streams them, and the token usage they report.
//!
//! [`SseParser`] cuts a byte stream into events wherever the network split it: an event
//! may span chunks and a chunk may hold many events. Only the `data` payloads are handed
//! out; the bytes themselves are never changed (the gateway forwards the original
//! chunks). [`Usage::find`] reads `usage` from a payload or a whole JSON body, touching
//! JSON only when the text contains a usage object.

use std::sync::LazyLock;

use bytes::BytesMut;
use memchr::memmem::Finder;
use serde::Deserialize;

/// Token counts as reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
}

impl Usage {
    /// The `usage` object of a JSON text (an SSE payload or a whole response body), if it
    /// has a non-null one. Texts without the key are rejected by a substring search alone.
    pub fn find(json: &[u8]) -> Option<Usage> {
        // Streams with `include_usage` carry `"usage":null` in every chunk: parse only
        // when the key holds an object. (A quote inside a JSON string is escaped, so
        // `"usage"` can only be a key.)
        static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
        let has_object = USAGE_KEY.find_iter(json).any(|at| {
            let mut after = json[at + 7..]
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace());
            after.next() == Some(b':') && after.next() == Some(b'{')
        });
        if !has_object {
            return None;
        }
        serde_json::from_slice::<WithUsage>(json).ok()?.usage
    }

    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }

    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .map_or(0, |d| d.reasoning_tokens)
    }

    /// As the plugins see it.
    pub fn tokens(&self) -> tollgate_plugin::TokenUsage {
        tollgate_plugin::TokenUsage {
            prompt: self.prompt_tokens,
            completion: self.completion_tokens,
            cached: self.cached_tokens(),
            reasoning: self.reasoning_tokens(),
        }
    }
}

/// Whether a stream event is the usage-only chunk (`"choices": []` with a usage object)
/// that `stream_options.include_usage` adds at the end.
pub fn is_usage_only_chunk(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
    }
    Usage::find(payload).is_some()
        && serde_json::from_slice::<Chunk>(payload)
            .is_ok_and(|c| c.choices.is_some_and(|ch| ch.is_empty()))
}

/// Appends the text a stream chunk generated (content, reasoning, tool-call arguments,
/// or a legacy completion's `text`) to `out`, to count what a cut-short stream produced.
///
/// Every event of every accounted stream passes here, and the text is needed only when
/// a stream ends without usage, so the payload is not parsed as a document: one pass
/// over its bytes delimits its strings exactly (escapes included, so a key is never
/// mistaken inside a value), and the string value of each key in [`TEXT_KEYS`] is
/// appended. Only an escaped value goes through the JSON parser, to unescape it.
pub fn append_generated_text(payload: &[u8], out: &mut String) {
    let mut strings = JsonStrings::new(payload);
    while let Some((open, close)) = strings.next_string() {
        let after = skip_whitespace(payload, close + 1);
        if payload.get(after) != Some(&b':') || !TEXT_KEYS.contains(&&payload[open + 1..close]) {
            continue; // a value, or a key whose value is not text
        }
        let value = skip_whitespace(payload, after + 1);
        if payload.get(value) != Some(&b'"') {
            continue; // null, a number, an object or an array
        }
        // The value is the next string: only blanks and `:` came between.
        let Some((value_open, value_close)) = strings.next_string() else {
            return;
        };
        debug_assert_eq!(value_open, value);
        push_json_string(&payload[value_open..=value_close], out);
    }
}

/// The keys of a stream chunk whose string values are generated text: a choice's `text`
/// (legacy completions) and, in a choice's `delta`, `content`, `reasoning_content` and a
/// tool call's `function.name` and `function.arguments`.
const TEXT_KEYS: [&[u8]; 5] = [
    b"content",
    b"reasoning_content",
    b"text",
    b"name",
    b"arguments",
];

/// The strings of a JSON text, in order, from one pass over its bytes. (A chunk's
/// strings are a few bytes long: a `memchr` search per string, or per quote, costs more
/// in set-up than a plain loop over them.)
struct JsonStrings<'a> {
    json: &'a [u8],
    at: usize,
}

impl<'a> JsonStrings<'a> {
    fn new(json: &'a [u8]) -> Self {
        JsonStrings { json, at: 0 }
    }

    /// The indices of the next string's opening and closing quotes; none at the end of
    /// the text or of an unterminated string.
    fn next_string(&mut self) -> Option<(usize, usize)> {
        let json = self.json;
        let mut i = self.at;
        while *json.get(i)? != b'"' {
            i += 1;
        }
        let open = i;
        i += 1;
        loop {
            match *json.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some((open, i));
                }
                // The escaped byte is never a delimiter.
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
    }
}

fn skip_whitespace(json: &[u8], from: usize) -> usize {
    from + json.get(from..).map_or(0, |rest| {
        rest.iter().take_while(|b| b.is_ascii_whitespace()).count()
    })
}

/// Appends a JSON string literal (quotes included) unescaped; an invalid one adds nothing.
fn push_json_string(literal: &[u8], out: &mut String) {
    let inner = &literal[1..literal.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        if let Ok(text) = std::str::from_utf8(inner) {
            out.push_str(text);
        }
    } else if let Ok(text) = serde_json::from_slice::<String>(literal) {
        out.push_str(&text);
    }
}

/// Incremental SSE splitter.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The start of an event whose end has not arrived yet.
    partial: BytesMut,
}

/// Longest event kept while waiting for its end; a longer one is dropped (and counted by
/// the caller as unreadable), so a broken upstream cannot grow this buffer without bound.
const MAX_EVENT: usize = 4 * 1024 * 1024;

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; calls `on_data` with the data of each event completed by it
    /// (multi-line data joined with `\n`, as the SSE spec says).
    pub fn feed(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            // Only look for the end where it can be: the boundary may straddle chunks.
            let overlap = self.partial.len().min(3);
            self.partial.extend_from_slice(chunk);
            let search_from = self.partial.len() - chunk.len() - overlap;
            let Some((end, sep)) = event_end(&self.partial[search_from..]) else {
                if self.partial.len() > MAX_EVENT {
                    self.partial.clear();
                }
                return;
            };
            let event_len = search_from + end;
            let consumed_from_chunk =
                (event_len + sep).saturating_sub(self.partial.len() - chunk.len());
            emit_data(&self.partial[..event_len], &mut on_data);
            self.partial.clear();
            rest = &chunk[consumed_from_chunk..];
        }
        while let Some((end, sep)) = event_end(rest) {
            emit_data(&rest[..end], &mut on_data);
            rest = &rest[end + sep..];
        }
        if !rest.is_empty() && rest.len() <= MAX_EVENT {
            self.partial.extend_from_slice(rest);
        }
    }
}

/// The lines of `text` between `\n`s, as `text.split(|&b| b == b'\n')` gives them, found
/// with `memchr` (a stream's every event passes here).
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut ends = memchr::memchr_iter(b'\n', text);
    let mut start = Some(0);
    std::iter::from_fn(move || {
        let from = start?;
        match ends.next() {
            Some(end) => {
                start = Some(end + 1);
                Some(&text[from..end])
            }
            None => {
                start = None;
                Some(&text[from..])
            }
        }
    })
}

/// Writes `data` as one SSE event: a `data: ` line for each of its lines, then the blank
/// line that ends the event.
pub fn put_event(data: &[u8], out: &mut BytesMut) {
    out.reserve(data.len() + 8);
    for line in lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// Where the first event in `buf` ends, and the length of the blank-line separator.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    // Built once: building a searcher costs more than searching a typical event.
    static LF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
    static CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
    let lf = LF.find(buf).map(|i| (i, 2));
    // CRLF framing is rare; only search for it when a CR is present at all.
    let crlf = if memchr::memchr(b'\r', buf).is_some() {
        CRLF.find(buf).map(|i| (i, 4))
    } else {
        None
    };
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn emit_data(event: &[u8], on_data: &mut impl FnMut(&[u8])) {
    let mut data: Option<Vec<u8>> = None;
    let mut single: Option<&[u8]> = None;
    for line in lines(event) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match (&mut data, single) {
            (None, None) => single = Some(value),
            (None, Some(first)) => {
                let mut joined = first.to_vec();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                data = Some(joined);
            }
            (Some(joined), _) => {
                joined.push(b'\n');
                joined.extend_from_slice(value);
            }
        }
    }
    match (data, single) {
        (Some(joined), _) => on_data(&joined),
        (None, Some(value)) => on_data(value),
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_only_chunks_and_generated_text() {
        let usage = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"completion_tokens_details":{"reasoning_tokens":1}}}"#;
        assert!(is_usage_only_chunk(usage));
        assert_eq!(Usage::find(usage).unwrap().reasoning_tokens(), 1);
        let content = br#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi \"there\""}}],"usage":null}"#;
        assert!(!is_usage_only_chunk(content));
        let mut text = String::new();
        append_generated_text(content, &mut text);
        append_generated_text(
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
            &mut text,
        );
        append_generated_text(br#"{"choices":[{"text":" done"}]}"#, &mut text);
        append_generated_text(b"not json", &mut text);
        assert_eq!(text, r#"Hi "there"f{"a":1} done"#);
    }

    #[test]
    fn usage_is_found_only_in_a_whole_json_text() {
        // The engine relies on this: an answer whose usage was found is valid JSON.
        let whole = br#"{"choices":[],"usage":{"prompt_tokens":1}}"#;
        assert_eq!(Usage::find(whole).map(|u| u.prompt_tokens), Some(1));
        for broken in [
            &br#"{"choices":[],"usage":{"prompt_tokens":1}} trailing"#[..],
            br#"{"choices":[],"usage":{"prompt_tokens":1}"#,
            br#"{"choices":[,"usage":{"prompt_tokens":1}}"#,
        ] {
            assert_eq!(
                Usage::find(broken),
                None,
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |d| out.push(String::from_utf8_lossy(d).into_owned()));
        }
        out
    }

    #[test]
    fn splits_events_wherever_the_chunks_break() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n: comment\n\ndata: [DONE]\n\n";
        let whole = events(&[stream]);
        assert_eq!(whole, vec!["{\"a\":1}", "{\"b\":2}", "[DONE]"]);
        // Every split point, including inside the blank-line separator.
        for cut in 0..stream.len() {
            assert_eq!(
                events(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
    }

    #[test]
    fn crlf_framing_and_multiline_data() {
        assert_eq!(
            events(&[b"data: x\r\n\r\nevent: e\ndata: 1\ndata: 2\n\n"]),
            vec!["x", "1\n2"]
        );
    }

    #[test]
    fn usage_is_found_only_when_present_and_not_null() {
        let last = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        let u = Usage::find(last).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens()),
            (11, 7, 3)
        );
        assert_eq!(
            Usage::find(br#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#),
            None
        );
        assert_eq!(
            Usage::find(br#"{"choices":[{"delta":{"content":"usage"}}]}"#),
            None
        );
        assert_eq!(Usage::find(b"[DONE]"), None);
        let spaced = br#"{"usage" : {"prompt_tokens": 2, "completion_tokens": 1}}"#;
        assert_eq!(Usage::find(spaced).map(|u| u.prompt_tokens), Some(2));
    }

    #[test]
    fn an_endless_event_does_not_grow_the_buffer_forever() {
        let mut p = SseParser::new();
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..10 {
            p.feed(&chunk, |_| panic!("no event ends"));
        }
        assert!(p.partial.len() <= MAX_EVENT + chunk.len());
    }
}
