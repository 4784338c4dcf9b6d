//! `bench-client`: the small measuring client of the load harness (bench/run.sh), for the
//! figures a load generator does not give.
//!
//! - `ttft`: sends `--requests` chat completions over `--concurrency` keep-alive
//!   connections and prints, as JSON, percentiles of time to first byte (the response
//!   header), time to first token (the first complete SSE event, `data: …\n\n`) and time
//!   to the end of the response.
//! - `hold-streams`: opens `--count` concurrent streams (against a slow upstream), waits
//!   until each has delivered its first event, holds them all open for `--hold-secs`,
//!   then closes them, sampling the resident memory of the `--watch-pid` processes
//!   before, during and after; prints the figures as JSON.
//!
//! Raw HTTP/1.1 over TCP, loopback targets only, every wait bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

#[derive(Parser, Debug)]
#[command(
    name = "bench-client",
    about = "TTFB/TTFT and open-stream measurements"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Percentiles of time to first byte / first SSE event / end of response.
    Ttft(TtftArgs),
    /// Hold many slow streams open and sample the memory of the given processes.
    HoldStreams(HoldArgs),
}

#[derive(Args, Debug)]
struct Target {
    /// `http://127.0.0.1:PORT/path` (loopback only).
    #[arg(long)]
    url: String,
    /// Model name put in the request body.
    #[arg(long, default_value = "bench-fast")]
    model: String,
    /// Ask for a non-streamed answer instead of an SSE stream.
    #[arg(long)]
    no_stream: bool,
}

#[derive(Args, Debug)]
struct TtftArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 200)]
    requests: usize,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Requests sent (and not measured) first on each connection.
    #[arg(long, default_value_t = 2)]
    warmup_per_connection: usize,
    /// Give up (and report what was measured) after this long.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(Args, Debug)]
struct HoldArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// How long all streams are held open once the last one delivered its first event.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Longest wait for all streams to open.
    #[arg(long, default_value_t = 60)]
    open_timeout_secs: u64,
    /// How long memory is sampled after the streams are closed.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 1000)]
    open_parallel: usize,
    /// Processes whose resident memory is sampled (summed); repeat for several.
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-client: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ttft(args) => ttft(args).await,
            Command::HoldStreams(args) => hold_streams(args).await,
        }
    });
    match result {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// --- the request ------------------------------------------------------------------------

/// A parsed `http://host:port/path` URL whose host is a loopback address.
#[derive(Debug, Clone)]
struct Endpoint {
    addr: SocketAddr,
    host_header: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = authority.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = host_port
        .parse()
        .map_err(|e| format!("{url}: expected http://IP:PORT/path ({e})"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{url}: benchmark traffic goes to loopback only"));
    }
    Ok(Endpoint {
        addr,
        host_header: authority.to_owned(),
        path: path.to_owned(),
    })
}

fn request_bytes(endpoint: &Endpoint, target: &Target) -> Vec<u8> {
    let body = json!({
        "model": target.model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "stream": !target.no_stream,
    })
    .to_string();
    let mut req = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         authorization: Bearer bench-key\r\ncontent-length: {}\r\n\r\n",
        endpoint.path,
        endpoint.host_header,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

// --- reading one response ---------------------------------------------------------------

/// Times of one exchange, from the moment the request was written.
#[derive(Debug, Clone, Copy)]
struct Timing {
    first_byte: Duration,
    first_event: Option<Duration>,
    total: Duration,
    status: u16,
    keep_alive: bool,
    /// The body had neither `content-length` nor chunked encoding: it ended with the
    /// connection.
    close_delimited: bool,
}

/// A keep-alive connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
        })
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes; an error if the peer closed.
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Sends `request` and reads the whole response, timing it. `on_first_event` runs
    /// once, when the first complete SSE event has arrived (used by `hold-streams`).
    async fn exchange(
        &mut self,
        request: &[u8],
        mut on_first_event: Option<&mut (dyn FnMut() + Send)>,
        until_first_event_only: bool,
    ) -> Result<Timing, String> {
        let start = Instant::now();
        self.stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;

        // Header.
        let mut first_byte = None;
        let head_end = loop {
            if let Some(i) = find(self.pending(), b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await.map_err(|e| format!("header: {e}"))?;
            first_byte.get_or_insert_with(|| start.elapsed());
        };
        let first_byte = first_byte.unwrap_or_else(|| start.elapsed());
        let head = std::str::from_utf8(&self.pending()[..head_end])
            .map_err(|_| "header is not UTF-8".to_owned())?
            .to_ascii_lowercase();
        self.pos += head_end;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                (n.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
        let keep_alive = header("connection").is_none_or(|v| v != "close");

        // Body: de-chunked as it arrives; the first "\n\n" ends the first SSE event.
        let mut first_event = None;
        let mut tail = [0u8; 2]; // last two body bytes, to see "\n\n" across chunks
        let mut seen = |data: &[u8], first_event: &mut Option<Duration>| {
            if first_event.is_some() {
                return;
            }
            let mut joined = tail.to_vec();
            joined.extend_from_slice(data);
            if find(&joined, b"\n\n").is_some() {
                *first_event = Some(start.elapsed());
            }
            let n = joined.len();
            if n >= 2 {
                tail = [joined[n - 2], joined[n - 1]];
            }
        };
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(self.pending(), b"\r\n") {
                        break i;
                    }
                    self.fill().await.map_err(|e| format!("chunk size: {e}"))?;
                };
                let size_text = std::str::from_utf8(&self.pending()[..line_end])
                    .map_err(|_| "bad chunk size".to_owned())?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                self.pos += line_end + 2;
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    loop {
                        if let Some(i) = find(self.pending(), b"\r\n") {
                            self.pos += i + 2;
                            if i == 0 {
                                break;
                            }
                            continue;
                        }
                        self.fill().await.map_err(|e| format!("trailer: {e}"))?;
                    }
                    break;
                }
                while self.pending().len() < size + 2 {
                    self.fill().await.map_err(|e| format!("chunk: {e}"))?;
                }
                let had_event = first_event.is_some();
                let data = self.pending()[..size].to_vec();
                seen(&data, &mut first_event);
                self.pos += size + 2;
                if !had_event && first_event.is_some() {
                    if let Some(cb) = on_first_event.take() {
                        cb();
                    }
                    if until_first_event_only {
                        break;
                    }
                }
            }
        } else if let Some(len) = length {
            while self.pending().len() < len {
                self.fill().await.map_err(|e| format!("body: {e}"))?;
            }
            let data = self.pending()[..len].to_vec();
            seen(&data, &mut first_event);
            self.pos += len;
        } else {
            // Neither length nor chunks: the body ends when the server closes (RFC 9112
            // §6.3), whatever its `connection` header says.
            loop {
                let had_event = first_event.is_some();
                let data = self.pending().to_vec();
                seen(&data, &mut first_event);
                self.pos = self.buf.len();
                if !had_event && first_event.is_some() {
                    if let Some(cb) = on_first_event.take() {
                        cb();
                    }
                    if until_first_event_only {
                        break;
                    }
                }
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(format!("body until close: {e}")),
                }
            }
            return Ok(Timing {
                first_byte,
                first_event,
                total: start.elapsed(),
                status,
                keep_alive: false,
                close_delimited: true,
            });
        }
        Ok(Timing {
            first_byte,
            first_event,
            total: start.elapsed(),
            status,
            keep_alive,
            close_delimited: false,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// --- ttft -------------------------------------------------------------------------------

async fn ttft(args: TtftArgs) -> Result<Value, String> {
    let endpoint = parse_url(&args.target.url)?;
    let request = Arc::new(request_bytes(&endpoint, &args.target));
    let concurrency = args.concurrency.clamp(1, 10_000);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let started = Instant::now();

    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let request = Arc::clone(&request);
        let next = Arc::clone(&next);
        let addr = endpoint.addr;
        let total = args.requests;
        let warmup = args.warmup_per_connection;
        tasks.push(tokio::spawn(async move {
            let mut timings = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            let mut conn: Option<Conn> = None;
            let mut warm_left = warmup;
            let mut close_delimited = 0usize;
            while Instant::now() < deadline {
                // Every attempt, failed or not, uses up a warm-up turn or a request.
                let warming = warm_left > 0;
                if warming {
                    warm_left -= 1;
                } else if next.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                if conn.is_none() {
                    match Conn::open(addr).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            errors.push(format!("connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, c.exchange(&request, None, false)).await {
                    Ok(Ok(t)) => {
                        if !t.keep_alive {
                            conn = None;
                        }
                        if warming {
                            continue;
                        }
                        close_delimited += usize::from(t.close_delimited);
                        if (200..300).contains(&t.status) {
                            timings.push(t);
                        } else {
                            errors.push(format!("status {}", t.status));
                        }
                    }
                    Ok(Err(e)) => {
                        if !warming {
                            errors.push(e);
                        }
                        conn = None;
                    }
                    Err(_) => {
                        errors.push("timed out".into());
                        break;
                    }
                }
            }
            (timings, errors, close_delimited)
        }));
    }
    let mut timings = Vec::new();
    let mut errors = Vec::new();
    let mut close_delimited = 0;
    for task in tasks {
        let (t, e, c) = task.await.map_err(|e| format!("worker failed: {e}"))?;
        timings.extend(t);
        errors.extend(e);
        close_delimited += c;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let first_byte: Vec<f64> = timings.iter().map(|t| ms(t.first_byte)).collect();
    let first_event: Vec<f64> = timings
        .iter()
        .filter_map(|t| t.first_event.map(ms))
        .collect();
    let total: Vec<f64> = timings.iter().map(|t| ms(t.total)).collect();
    let mut error_kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in &errors {
        *error_kinds.entry(e.clone()).or_default() += 1;
    }
    Ok(json!({
        "url": args.target.url,
        "model": args.target.model,
        "stream": !args.target.no_stream,
        "concurrency": concurrency,
        "requests_ok": timings.len(),
        "errors": errors.len(),
        "error_kinds": error_kinds,
        // Responses whose body ended with the connection (no keep-alive after them).
        "close_delimited_responses": close_delimited,
        "elapsed_s": elapsed,
        "ttfb_ms": percentiles(first_byte),
        "ttft_ms": percentiles(first_event),
        "total_ms": percentiles(total),
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentiles of `values` (milliseconds).
fn percentiles(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    json!({
        "n": values.len(),
        "min": values[0],
        "p50": at(50.0),
        "p90": at(90.0),
        "p99": at(99.0),
        "max": values[values.len() - 1],
        "mean": mean,
    })
}

// --- hold-streams -----------------------------------------------------------------------

/// Sum of a `/proc/PID/status` field (in kB) over `pids`, in MiB; None if any is gone.
fn proc_status_mib(pids: &[u32], field: &str) -> Option<f64> {
    let mut kb = 0u64;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        kb += line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())?;
    }
    Some(kb as f64 / 1024.0)
}

fn rss_mib(pids: &[u32]) -> Option<f64> {
    proc_status_mib(pids, "VmRSS:")
}

async fn hold_streams(args: HoldArgs) -> Result<Value, String> {
    let endpoint = parse_url(&args.target.url)?;
    if args.target.no_stream {
        return Err("hold-streams needs streamed responses".into());
    }
    let request = Arc::new(request_bytes(&endpoint, &args.target));
    let pids = args.watch_pids.clone();
    let rss_before = rss_mib(&pids);

    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let ended_early = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.open_parallel.max(1)));
    let open_started = Instant::now();
    let mut first_events: Vec<tokio::task::JoinHandle<Option<Duration>>> =
        Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let request = Arc::clone(&request);
        let opened = Arc::clone(&opened);
        let failed = Arc::clone(&failed);
        let ended_early = Arc::clone(&ended_early);
        let gate = Arc::clone(&gate);
        let mut release = release_rx.clone();
        let addr = endpoint.addr;
        first_events.push(tokio::spawn(async move {
            // Only connecting and waiting for the first event are limited in parallel.
            let permit = gate.acquire_owned().await.ok()?;
            let mut conn = match Conn::open(addr).await {
                Ok(c) => c,
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            let mut mark_open = || {
                opened.fetch_add(1, Ordering::Relaxed);
            };
            let timing = conn.exchange(&request, Some(&mut mark_open), true).await;
            drop(permit);
            let first_event = match timing {
                Ok(t) if t.first_event.is_some() => t.first_event,
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            // Keep reading the stream until released; the connection is dropped then.
            loop {
                tokio::select! {
                    _ = release.changed() => break,
                    more = conn.fill() => {
                        // The stream ended (or broke) before the release: not held.
                        if more.is_err() || find(&conn.buf, b"[DONE]").is_some() {
                            ended_early.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // Only liveness matters here: drop what was read but its last
                        // bytes, so that a `[DONE]` split over two reads is still seen.
                        let keep = conn.buf.len().saturating_sub(8);
                        conn.buf.drain(..keep);
                        conn.pos = 0;
                    }
                }
            }
            first_event
        }));
    }

    // Wait (bounded) until every stream is open or has failed.
    let open_deadline = Instant::now() + Duration::from_secs(args.open_timeout_secs);
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.count
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_s = open_started.elapsed().as_secs_f64();
    let opened_count = opened.load(Ordering::Relaxed);
    eprintln!(
        "bench-client: {opened_count}/{} streams open after {open_s:.1}s",
        args.count
    );

    // Hold, sampling memory twice a second.
    let mut during = Vec::new();
    let hold_until = Instant::now() + Duration::from_secs(args.hold_secs);
    while Instant::now() < hold_until {
        if let Some(r) = rss_mib(&pids) {
            during.push(r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let still_open = opened_count - ended_early.load(Ordering::Relaxed).min(opened_count);
    let hwm_during = proc_status_mib(&pids, "VmHWM:");

    // Close every stream, then watch memory settle.
    let _ = release_tx.send(true);
    let mut ttft = Vec::new();
    for task in first_events {
        if let Ok(Ok(Some(t))) = tokio::time::timeout(Duration::from_secs(10), task).await {
            ttft.push(ms(t));
        }
    }
    let closed_at = Instant::now();
    let mut after = Vec::new();
    let settle_until = closed_at + Duration::from_secs(args.settle_secs);
    while Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(r) = rss_mib(&pids) {
            after.push(r);
        }
    }
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    Ok(json!({
        "url": args.target.url,
        "model": args.target.model,
        "requested": args.count,
        "opened": opened_count,
        "failed": failed.load(Ordering::Relaxed),
        "ended_before_release": ended_early.load(Ordering::Relaxed),
        "open_all_s": open_s,
        "held_open_at_release": still_open,
        "hold_s": args.hold_secs,
        "watched_pids": pids,
        "rss_before_mib": rss_before,
        "rss_during_max_mib": max(&during),
        "rss_during_samples_mib": during,
        "hwm_during_mib": hwm_during,
        "rss_after_mib": after.last().copied(),
        "rss_after_samples_mib": after,
        "ttft_ms": percentiles(ttft),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback() {
        assert!(parse_url("http://127.0.0.1:8080/v1/chat/completions").is_ok());
        assert!(parse_url("http://localhost:8080/x").is_ok());
        assert!(parse_url("http://10.0.0.1:8080/x").is_err());
        assert!(parse_url("https://127.0.0.1:8080/x").is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!(p["p50"], 50.0);
        assert_eq!(p["p99"], 99.0);
        assert_eq!(p["max"], 100.0);
    }
}
