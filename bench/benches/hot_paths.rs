//! Micro-benchmarks of the per-request hot paths. Run: `cargo bench -p tollgate-bench`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate::openai::{Api, InferenceRequest, SseParser, Usage};

/// A chat request of about `size` bytes.
fn chat_body(size: usize) -> Bytes {
    let filler = "lorem ipsum ".repeat(size / 12 + 1);
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": &filler[..size.min(filler.len())]},
        ],
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

fn parse_and_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_parse_and_model_rewrite");
    for size in [1024, 16 * 1024, 1024 * 1024] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let req =
                    InferenceRequest::parse(Api::ChatCompletions, black_box(body.clone())).unwrap();
                black_box(req.body_with_model("llama-3.1-8b-instruct"))
            })
        });
    }
    group.finish();
}

/// A 20-token stream as an upstream sends it, cut into network-sized chunks.
fn stream_chunks() -> Vec<Vec<u8>> {
    let mut text = Vec::new();
    for i in 0..20 {
        text.extend_from_slice(format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ).as_bytes());
    }
    text.extend_from_slice(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":20,\"total_tokens\":31}}\n\ndata: [DONE]\n\n");
    text.chunks(300).map(<[u8]>::to_vec).collect()
}

fn sse_parse_with_usage(c: &mut Criterion) {
    let chunks = stream_chunks();
    let total: usize = chunks.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("sse_parse_with_usage");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("20_token_stream", |b| {
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut usage = None;
            for chunk in &chunks {
                parser.feed(black_box(chunk), |data| {
                    if let Some(u) = Usage::find(data) {
                        usage = Some(u);
                    }
                });
            }
            assert_eq!(usage.map(|u| u.completion_tokens), Some(20));
        })
    });
    group.finish();
}

criterion_group!(benches, parse_and_rewrite, sse_parse_with_usage);
criterion_main!(benches);
