//! Micro-benchmarks of the per-request hot paths. Run: `cargo bench -p tollgate-bench`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate::openai::{Api, InferenceRequest, SseParser, Usage, append_generated_text};

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
            let mut text = String::new();
            // What the gateway does with each event of an accounted stream: look for the
            // usage, and keep the generated text in case the stream is cut short.
            for chunk in &chunks {
                parser.feed(black_box(chunk), |data| {
                    if let Some(u) = Usage::find(data) {
                        usage = Some(u);
                    }
                    append_generated_text(data, &mut text);
                });
            }
            assert_eq!(usage.map(|u| u.completion_tokens), Some(20));
            assert!(!text.is_empty());
        })
    });
    group.finish();
}

/// Identifying a caller by API key among 1,000 configured keys (hash, map lookup,
/// constant-time compare), the way every request starts when auth is on.
fn key_lookup(c: &mut Criterion) {
    let mut yaml = String::from("keys:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - {{id: key-{i}, secret: sk-bench-{i:06}-abcdefghijklmnop, team: t{}}}\n",
            i % 10
        ));
    }
    let config: tollgate_auth::AuthConfig = serde_saphyr::from_str(&yaml).unwrap();
    let plugin = tollgate_auth::AuthPlugin::build(&config, std::path::Path::new(".")).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "authorization",
        "Bearer sk-bench-000777-abcdefghijklmnop".parse().unwrap(),
    );
    c.bench_function("key_lookup_1000_keys", |b| {
        b.iter(|| black_box(plugin.authenticate(black_box(&headers)).unwrap().unwrap()))
    });
}

/// One admission and its settlement with the in-process store: RPM, TPM, concurrency
/// and a USD budget on the key, a token budget on its team — one acquire, one adjust.
fn limiter_check(c: &mut Criterion) {
    use std::sync::Arc;
    use tollgate_plugin::{Outcome, Plugin, Principal, PrincipalKind, Request, TokenUsage};

    let yaml = "
keys:
  k1: {rpm: 1000000000, tpm: 1000000000000, concurrency: 100000, budgets: [{usd: 1000000000, window: day}]}
teams:
  t1: {budgets: [{tokens: 1000000000000, window: month}]}
prices:
  gpt-4o: {input: 2.5, output: 10, cached_input: 1.25}
";
    let config: tollgate_limits::QuotasConfig = serde_saphyr::from_str(yaml).unwrap();
    let store = Arc::new(tollgate_plugin::LocalStore::new());
    let plugin = tollgate_limits::LimitsPlugin::new(config.build().unwrap(), store);
    let principal = Principal {
        kind: PrincipalKind::ApiKey,
        id: "k1".into(),
        team: Some("t1".into()),
        tier: None,
        models: tollgate_plugin::ModelFilter::any(),
    };
    let headers = http::HeaderMap::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let usage = TokenUsage {
        prompt: 120,
        completion: 80,
        cached: 0,
        reasoning: 0,
    };
    c.bench_function("limiter_admit_and_settle", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request {
                headers: &headers,
                model: "gpt-4o",
                stream: false,
                max_tokens: Some(256),
                prompt_tokens: 120,
                request_id: "bench-request",
            };
            let admission = plugin.admit(&request, &principal).await.unwrap();
            let outcome = Outcome {
                usage: Some(usage),
                estimated: false,
                served_model: Some("gpt-4o"),
            };
            if let Some(s) = admission.settle {
                s.settle(&outcome).await;
            }
        })
    });
}

/// Counting a prompt's or a cut stream's tokens (`o200k_base`): prose and code, and one
/// piece longer than any token (a run of one letter), which only merging can count.
fn token_count(c: &mut Criterion) {
    let prose = concat!(
        include_str!("../../README.md"),
        include_str!("../../src/tokens/mod.rs")
    );
    let run = "a".repeat(10_000);
    let mut group = c.benchmark_group("token_count_o200k");
    for (name, text) in [("prose_and_code", prose), ("one_long_piece", run.as_str())] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| tollgate::tokens::count(black_box(text)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    parse_and_rewrite,
    sse_parse_with_usage,
    token_count,
    key_lookup,
    limiter_check
);
criterion_main!(benches);
