//! Active health checks: a periodic unbilled GET to each endpoint of a pool, marking it
//! down after `unhealthy_after` failed probes and up after `healthy_after` good ones.
//!
//! [`Health`] is the verdict the request path reads (one atomic load); [`run`] is the
//! loop that feeds it, one per pool, started by the monitor. The loop holds its pool
//! weakly and ends once the pool is gone. Probes go through the connector they are given,
//! never the client traffic's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::upstream::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_http::RequestHeader;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::config::HealthCheck;

use super::{Endpoint, Pool};
use crate::adapters::Wire;

/// The most of a probe's response body read; past it the connection is dropped.
const MAX_PROBE_BODY: usize = 64 * 1024;

const USER_AGENT: &str = "tollgate-health-check";

/// An endpoint's health as seen by the active checks. Starts up.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    /// Consecutive probe results; only the probe loop writes them.
    streak: Mutex<Streak>,
}

#[derive(Debug, Default)]
struct Streak {
    ok: u32,
    failed: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            streak: Mutex::new(Streak::default()),
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Counts one probe result; returns the new state when it changed.
    pub fn record_probe(&self, ok: bool, settings: &HealthCheck) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(PoisonError::into_inner);
        if ok {
            streak.failed = 0;
            streak.ok = streak.ok.saturating_add(1);
        } else {
            streak.ok = 0;
            streak.failed = streak.failed.saturating_add(1);
        }
        let up = self.is_up();
        let flips = if ok {
            !up && streak.ok >= settings.healthy_after
        } else {
            up && streak.failed >= settings.unhealthy_after
        };
        if !flips {
            return None;
        }
        self.up.store(!up, Ordering::Relaxed);
        Some(!up)
    }
}

// === the probe loop ===

/// Probes every endpoint of the pool each interval until the pool is dropped.
pub async fn run(pool: Weak<Pool>, connector: Arc<Connector>) {
    let Some((name, settings)) = pool
        .upgrade()
        .and_then(|p| Some((p.spec.name.clone(), Arc::new(p.spec.health_check.clone()?))))
    else {
        return;
    };
    // Pools built together would otherwise probe in lockstep.
    tokio::time::sleep(settings.interval.mul_f64(fastrand::f64())).await;
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            break;
        };
        probe_all(&pool, &connector, &settings).await;
    }
    tracing::debug!(pool = %name, "Health checks stopped: pool replaced");
}

/// One round: every endpoint probed concurrently, each verdict recorded and logged.
async fn probe_all(pool: &Arc<Pool>, connector: &Arc<Connector>, settings: &Arc<HealthCheck>) {
    let mut probes = JoinSet::new();
    for i in 0..pool.endpoints.len() {
        let (pool, connector, settings) = (pool.clone(), connector.clone(), settings.clone());
        probes.spawn(async move {
            let endpoint = &pool.endpoints[i];
            let result = probe(&pool, endpoint, &connector, &settings).await;
            let changed = endpoint.health.record_probe(result.is_ok(), &settings);
            let (pool, endpoint) = (&pool.spec.name, &endpoint.spec.name);
            match (changed, result) {
                (Some(false), Err(reason)) => tracing::warn!(
                    pool = %pool,
                    endpoint = %endpoint,
                    reason = %reason,
                    "Endpoint down: health checks failing"
                ),
                (Some(true), _) => tracing::info!(
                    pool = %pool,
                    endpoint = %endpoint,
                    "Endpoint up: health checks passing again"
                ),
                (None, Err(reason)) => tracing::debug!(
                    pool = %pool,
                    endpoint = %endpoint,
                    reason = %reason,
                    "Health check failed"
                ),
                _ => {}
            }
        });
    }
    while probes.join_next().await.is_some() {}
}

/// One probe: `Ok` when the endpoint answered 2xx within the timeout, else why not.
async fn probe(
    pool: &Pool,
    endpoint: &Endpoint,
    connector: &Connector,
    settings: &HealthCheck,
) -> Result<(), String> {
    tokio::time::timeout(
        settings.timeout,
        exchange(pool, endpoint, connector, settings),
    )
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {:?}", settings.timeout)))
}

async fn exchange(
    pool: &Pool,
    endpoint: &Endpoint,
    connector: &Connector,
    settings: &HealthCheck,
) -> Result<(), String> {
    let addr = endpoint.addrs.pick().await?;
    // Probes come every `interval`: keep the connection for the next one.
    let keep = settings.interval + settings.timeout;
    let peer = pool.peer(endpoint, addr, keep);
    let request = probe_request(endpoint, settings, Wire::of_provider(pool.spec.provider))?;

    // A pooled connection the upstream closed while idle fails on first use; such a
    // failure, before any answer, is retried once on a fresh connection.
    let mut conn = None;
    for _ in 0..2 {
        let (mut c, reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        match send(&mut c, request.clone()).await {
            Ok(()) => {
                conn = Some(c);
                break;
            }
            Err(e) if reused => {
                tracing::debug!(error = %e, "Reused probe connection failed; trying a new one");
            }
            Err(e) => return Err(format!("GET {}: {e}", request.uri)),
        }
    }
    let Some(mut conn) = conn else {
        return Err(format!("GET {}: pooled connections failed", request.uri));
    };
    let status = conn
        .response_header()
        .map(|h| h.status)
        .ok_or_else(|| "response header missing after read".to_owned())?;

    let mut read = 0;
    while let Some(chunk) = conn
        .read_response_body()
        .await
        .map_err(|e| format!("reading the body of a {status} response: {e}"))?
    {
        read += chunk.len();
        if read > MAX_PROBE_BODY {
            break;
        }
    }
    if read <= MAX_PROBE_BODY && conn.response_done() {
        connector.release_http_session(conn, &peer, keep).await;
    }
    // A throttled endpoint is alive: rate limits are the request path's business.
    if status.is_success() || status == 429 {
        Ok(())
    } else {
        Err(format!("GET {} answered {status}", request.uri))
    }
}

async fn send(conn: &mut HttpSession, request: RequestHeader) -> pingora_error::Result<()> {
    conn.write_request_header(Box::new(request)).await?;
    conn.finish_request_body().await?;
    conn.read_response_header().await
}

/// `GET <prefix>/models` (or the configured path) with the pool's credential, as its
/// wire sends it: Anthropic serves `GET /v1/models` too, with `x-api-key`.
fn probe_request(
    endpoint: &Endpoint,
    settings: &HealthCheck,
    wire: Wire,
) -> Result<RequestHeader, String> {
    let spec = &endpoint.spec;
    let path = match &settings.path {
        Some(path) => path.clone(),
        None => format!("{}/models", spec.base_path),
    };
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.uri = http::Uri::try_from(path.as_str())
        .map_err(|e| format!("building the probe request: path `{path}`: {e}"))?;
    let h = &mut head.headers;
    h.insert(http::header::HOST, endpoint.host_header());
    h.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    );
    wire.authorize(h, endpoint.keys().pick().map(|(_, key)| key))
        .map_err(|_| "building the probe request: the key is not a valid header value")?;
    Ok(RequestHeader::from(head))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    use super::*;
    use crate::config::parse;

    fn checks(unhealthy_after: u32, healthy_after: u32) -> HealthCheck {
        HealthCheck {
            path: None,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            unhealthy_after,
            healthy_after,
        }
    }

    #[test]
    fn starts_up() {
        assert!(Health::default().is_up());
    }

    #[test]
    fn goes_down_after_unhealthy_after_failures_in_a_row() {
        let s = checks(3, 2);
        let h = Health::default();
        assert_eq!(h.record_probe(false, &s), None);
        assert_eq!(h.record_probe(false, &s), None);
        // A success breaks the run.
        assert_eq!(h.record_probe(true, &s), None);
        assert_eq!(h.record_probe(false, &s), None);
        assert_eq!(h.record_probe(false, &s), None);
        assert!(h.is_up());
        assert_eq!(h.record_probe(false, &s), Some(false));
        assert!(!h.is_up());
        // Further failures change nothing.
        assert_eq!(h.record_probe(false, &s), None);
    }

    #[test]
    fn comes_back_after_healthy_after_successes_in_a_row() {
        let s = checks(1, 3);
        let h = Health::default();
        assert_eq!(h.record_probe(false, &s), Some(false));
        assert_eq!(h.record_probe(true, &s), None);
        assert_eq!(h.record_probe(true, &s), None);
        // A failure breaks the run.
        assert_eq!(h.record_probe(false, &s), None);
        assert_eq!(h.record_probe(true, &s), None);
        assert_eq!(h.record_probe(true, &s), None);
        assert!(!h.is_up());
        assert_eq!(h.record_probe(true, &s), Some(true));
        assert!(h.is_up());
        assert_eq!(h.record_probe(true, &s), None);
    }

    #[test]
    fn probe_request_uses_the_api_prefix_or_the_configured_path() {
        let pool = pool_for("http://10.0.0.1:8000/openai/v1", "");
        let e = &pool.endpoints[0];
        let mut s = checks(1, 1);
        let req = probe_request(e, &s, Wire::OpenAi).unwrap();
        assert_eq!(req.uri, "/openai/v1/models");
        assert_eq!(req.headers["host"], "10.0.0.1:8000");
        assert_eq!(req.headers["user-agent"], USER_AGENT);
        assert_eq!(req.headers["authorization"], "Bearer sk-probe");
        s.path = Some("/health".into());
        assert_eq!(probe_request(e, &s, Wire::OpenAi).unwrap().uri, "/health");
        // Anthropic pools: the same path, Anthropic's credential headers.
        let req = probe_request(e, &s, Wire::Anthropic).unwrap();
        assert_eq!(req.headers["x-api-key"], "sk-probe");
        assert_eq!(req.headers["anthropic-version"], "2023-06-01");
        assert!(req.headers.get("authorization").is_none());
    }

    /// A one-endpoint pool for `url`, with `extra` YAML appended to the pool.
    fn pool_for(url: &str, extra: &str) -> Arc<Pool> {
        let text = format!(
            "\
listeners:
  - address: 127.0.0.1:8080
models:
  m:
    targets:
      - pool: local
pools:
  local:
    provider: openai
    endpoints:
      - url: {url}
        api_key: sk-probe
{extra}"
        );
        let config = parse(&text, "gw.yaml", Path::new("."), &|_| None).unwrap();
        Arc::new(Pool::build(config.pools[0].clone()).unwrap())
    }

    /// A tiny HTTP/1.1 upstream: 200 while `healthy`, else 500; keeps connections open.
    struct Upstream {
        addr: SocketAddr,
        healthy: Arc<AtomicBool>,
        probes: Arc<AtomicUsize>,
        last_request: Arc<Mutex<String>>,
    }

    async fn upstream() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            healthy: Arc::new(AtomicBool::new(true)),
            probes: Arc::new(AtomicUsize::new(0)),
            last_request: Arc::new(Mutex::new(String::new())),
        };
        let (healthy, probes, last) = (
            up.healthy.clone(),
            up.probes.clone(),
            up.last_request.clone(),
        );
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, healthy.clone(), probes.clone(), last.clone()));
            }
        });
        up
    }

    async fn serve(
        mut sock: TcpStream,
        healthy: Arc<AtomicBool>,
        probes: Arc<AtomicUsize>,
        last: Arc<Mutex<String>>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            *last.lock().unwrap() = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            probes.fetch_add(1, Ordering::SeqCst);
            let (status, body) = if healthy.load(Ordering::SeqCst) {
                ("200 OK", r#"{"object":"list","data":[]}"#)
            } else {
                ("500 Internal Server Error", r#"{"error":"down"}"#)
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if sock.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Polls `cond` every 10 ms until it holds; fails after 5 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn probes_mark_an_endpoint_down_and_up_and_stop_with_the_pool() {
        let up = upstream().await;
        let pool = pool_for(
            &format!("http://{}/v1", up.addr),
            "    health_check:
      interval: 50ms
      timeout: 500ms
      unhealthy_after: 2
      healthy_after: 1
",
        );
        let connector = Arc::new(Connector::new(None));
        let checks = tokio::spawn(run(Arc::downgrade(&pool), connector));
        let endpoint = pool.endpoints[0].clone();

        eventually("probed twice", || up.probes.load(Ordering::SeqCst) >= 2).await;
        assert!(endpoint.health.is_up());
        let request = up.last_request.lock().unwrap().clone();
        assert!(
            request.starts_with("GET /v1/models HTTP/1.1\r\n"),
            "{request}"
        );
        let request = request.to_ascii_lowercase();
        assert!(request.contains("user-agent: tollgate-health-check\r\n"));
        assert!(request.contains("authorization: bearer sk-probe\r\n"));
        assert!(request.contains(&format!("host: {}\r\n", up.addr)));

        up.healthy.store(false, Ordering::SeqCst);
        eventually("down", || !endpoint.health.is_up()).await;
        up.healthy.store(true, Ordering::SeqCst);
        eventually("up again", || endpoint.health.is_up()).await;

        drop(pool);
        tokio::time::timeout(Duration::from_secs(5), checks)
            .await
            .expect("the loop should end once the pool is dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_fails_the_probe() {
        // Bind then drop, so the port is very likely closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = pool_for(&format!("http://{addr}/v1"), "");
        let connector = Connector::new(None);
        let result = probe(&pool, &pool.endpoints[0], &connector, &checks(1, 1)).await;
        assert!(result.unwrap_err().contains("connecting"));
    }
}
