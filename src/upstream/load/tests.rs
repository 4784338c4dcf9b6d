use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::upstream::Connector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Load, parse_metrics, run};
use crate::upstream::Pool;

const VLLM: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 8452.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.17
# HELP vllm:num_requests_waiting_by_reason Requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="x",reason="capacity"} 99.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",note="a } and a \" inside",engine="0"} 1.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 123456.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen2.5-7B-Instruct"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.5
"#;

#[test]
fn parses_vllm_summing_over_models() {
    assert_eq!(
        parse_metrics(VLLM),
        Some(Load {
            waiting: 4.0,
            running: 7.0,
            // The newer name wins over the older; the fullest engine counts.
            cache_usage: Some(0.42),
        })
    );
}

#[test]
fn parses_older_vllm_and_sglang() {
    let older = "\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name=\"m\"} 2
vllm:num_requests_running{model_name=\"m\"} 1 1700000000000
vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5
";
    assert_eq!(
        parse_metrics(older),
        Some(Load {
            waiting: 2.0,
            running: 1.0,
            cache_usage: Some(0.5),
        })
    );
    let sglang = "\
# HELP sglang:num_queue_reqs The number of requests in the waiting queue
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name=\"qwen\"} 6.0
sglang:num_running_reqs{model_name=\"qwen\"} 3.0
sglang:token_usage{model_name=\"qwen\"} 0.25
";
    assert_eq!(
        parse_metrics(sglang),
        Some(Load {
            waiting: 6.0,
            running: 3.0,
            cache_usage: Some(0.25),
        })
    );
}

#[test]
fn no_known_figure_is_none_and_bad_lines_are_skipped() {
    assert_eq!(parse_metrics(""), None);
    assert_eq!(
        parse_metrics("# TYPE up gauge\nup 1\nprocess_open_fds 12\n"),
        None
    );
    assert_eq!(parse_metrics("<html>not metrics</html>"), None);
    let messy = "\
vllm:num_requests_waiting{model_name=\"unterminated} 5
vllm:num_requests_waiting{model_name=\"a\"} NaN
vllm:num_requests_waitingX 7
vllm:num_requests_waiting 
vllm:num_requests_waiting\t2
";
    assert_eq!(
        parse_metrics(messy),
        Some(Load {
            waiting: 2.0,
            running: 0.0,
            cache_usage: None,
        })
    );
}

/// Answers every request on every connection with `body`, counting them.
async fn metrics_server(body: &'static str, hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let ok = head.starts_with("GET /metrics HTTP/1.1");
                        hits.fetch_add(1, Ordering::Relaxed);
                        let (status, body) = if ok {
                            ("200 OK", body)
                        } else {
                            ("404 Not Found", "")
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn load_aware_pool(addr: std::net::SocketAddr) -> Pool {
    let text = format!(
        "\
listeners:
  - address: 127.0.0.1:8080
models:
  m:
    targets:
      - pool: p
pools:
  p:
    provider: openai
    balance: {{strategy: load_aware, scrape_interval: 50ms}}
    endpoints:
      - url: http://{addr}/v1
"
    );
    let config = crate::config::parse(&text, "gw.yaml", Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    Pool::build(config.pools.into_iter().next().unwrap()).unwrap()
}

#[tokio::test]
async fn scrapes_a_live_server_until_the_pool_is_dropped() {
    const BODY: &str = "\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name=\"m\"} 30.0
vllm:num_requests_running{model_name=\"m\"} 8.0
vllm:kv_cache_usage_perc{model_name=\"m\"} 0.5
";
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = metrics_server(BODY, hits.clone()).await;
    let pool = Arc::new(load_aware_pool(addr));
    let task = tokio::spawn(run(Arc::downgrade(&pool), Arc::new(Connector::new(None))));

    let stale_after = Duration::from_secs(5);
    let mut seen = None;
    for _ in 0..250 {
        seen = pool.endpoints[0].load.fresh(stale_after);
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        Some(Load {
            waiting: 30.0,
            running: 8.0,
            cache_usage: Some(0.5),
        })
    );
    // It goes on scraping each interval.
    let before = hits.load(Ordering::Relaxed);
    for _ in 0..250 {
        if hits.load(Ordering::Relaxed) >= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hits.load(Ordering::Relaxed) >= before + 2);

    drop(pool);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends once the pool is gone")
        .unwrap();
}
