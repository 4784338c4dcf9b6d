//! Upstream pools: where requests go once the model is resolved.
//!
//! A [`Pool`] is built from its config and owns what must live as long as the config:
//! its endpoints with their DNS, health, breaker, load and credential state, and the CA
//! store for TLS. `balance` picks an endpoint, `forward` carries one attempt to it and
//! the answer back over a connection from `connector`, `mock` answers in-process for
//! `mock` pools, `queue` holds requests back while every endpoint is at capacity. Background loops (`health`, `load`) watch
//! the endpoints while the pool lives.

pub mod balance;
pub mod breaker;
mod clock;
mod connector;
mod dns;
mod forward;
pub mod health;
mod keys;
pub mod load;
mod mock;
mod peer;
pub mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::net::SocketAddr;

use http::HeaderValue;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;

use crate::config::{EndpointSpec, PoolSpec, ProviderKind};

pub use balance::Hints;
pub use connector::Connector;
pub use forward::{
    Attempt, Delivery, Exchange, Sent, StreamMode, client_head, deliver_stream, deliver_whole, send,
};
pub use mock::answer as mock_answer;

#[derive(Debug)]
pub struct Pool {
    pub spec: PoolSpec,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: balance::Balancer,
    /// Admission control (the `queue` section); `None`: requests go out at once.
    queue: Option<queue::Queue>,
    /// Trusted CAs for this pool, replacing the system store when set.
    ca: Option<Arc<CaType>>,
}

#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    /// The `host` header, made once.
    host: HeaderValue,
    addrs: Arc<dns::HostAddrs>,
    /// Requests in flight and latency, kept by the request path.
    pub traffic: balance::Traffic,
    /// Up or down per the active health checks.
    pub health: health::Health,
    /// Passive outlier detection; `None` when the pool turns it off.
    pub breaker: Option<breaker::Breaker>,
    /// Latest scraped load (`load_aware` pools).
    pub load: load::LoadCell,
    keys: keys::KeyRing,
    /// Clock value (ms) until which the endpoint takes nothing, after it answered 429 or
    /// 503 with `retry-after` and had no other key to try.
    resting_until: AtomicU64,
}

impl Endpoint {
    /// Whether a request may be sent here now: up, breaker not open, not resting.
    pub fn usable(&self) -> bool {
        self.health.is_up()
            && self
                .breaker
                .as_ref()
                .is_none_or(breaker::Breaker::available)
            && self.resting_until.load(Ordering::Relaxed) <= clock::now_ms()
    }

    /// Takes no traffic for `rest` (an upstream `retry-after`).
    pub fn rest(&self, rest: Duration) {
        let until = clock::now_ms() + rest.as_millis() as u64;
        self.resting_until.fetch_max(until, Ordering::Relaxed);
    }

    /// How long until it takes traffic again after [`Endpoint::rest`]; zero if it does.
    pub fn resting_for(&self) -> Duration {
        Duration::from_millis(
            self.resting_until
                .load(Ordering::Relaxed)
                .saturating_sub(clock::now_ms()),
        )
    }

    pub fn keys(&self) -> &keys::KeyRing {
        &self.keys
    }

    /// The `host` header for requests to this endpoint.
    fn host_header(&self) -> HeaderValue {
        self.host.clone()
    }
}

/// The `host` header: `host[:port]`, the port left out when it is the scheme's.
fn host_header(spec: &EndpointSpec) -> String {
    let default_port = if spec.tls { 443 } else { 80 };
    match (spec.host.contains(':'), spec.port == default_port) {
        (true, true) => format!("[{}]", spec.host),
        (true, false) => format!("[{}]:{}", spec.host, spec.port),
        (false, true) => spec.host.clone(),
        (false, false) => format!("{}:{}", spec.host, spec.port),
    }
}

impl Pool {
    /// Builds the runtime pool. Fails only on unreadable TLS material.
    pub fn build(spec: PoolSpec) -> Result<Pool, String> {
        let ca = match &spec.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("pool `{}`: cannot read {}: {e}", spec.name, path.display())
                })?;
                let certs = openssl::x509::X509::stack_from_pem(&pem).map_err(|e| {
                    format!(
                        "pool `{}`: {} holds no PEM certificate: {e}",
                        spec.name,
                        path.display()
                    )
                })?;
                if certs.is_empty() {
                    return Err(format!(
                        "pool `{}`: {} holds no certificate",
                        spec.name,
                        path.display()
                    ));
                }
                Some(Arc::new(certs.into_boxed_slice()))
            }
            None => None,
        };
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| {
                let host = HeaderValue::try_from(host_header(e)).map_err(|_| {
                    format!(
                        "pool `{}`: endpoint `{}`: `{}` cannot be sent as a host header",
                        spec.name, e.name, e.host
                    )
                })?;
                Ok(Arc::new(Endpoint {
                    host,
                    spec: e.clone(),
                    addrs: dns::HostAddrs::new(&e.host, e.port, spec.dns_refresh),
                    traffic: balance::Traffic::default(),
                    health: health::Health::default(),
                    breaker: spec.breaker.map(breaker::Breaker::new),
                    load: load::LoadCell::default(),
                    keys: keys::KeyRing::new(e.api_keys.clone()),
                    resting_until: AtomicU64::new(0),
                }))
            })
            .collect::<Result<_, String>>()?;
        Ok(Pool {
            balancer: balance::Balancer::new(&spec),
            queue: spec
                .queue
                .clone()
                .map(|settings| queue::Queue::new(settings, spec.endpoints.len())),
            endpoints,
            ca,
            spec,
        })
    }

    /// The Pingora peer for one of this pool's endpoints at `addr`: certificate and
    /// host name checks with the pool's CAs, its connect timeout, and how long an idle
    /// connection is kept.
    fn peer(&self, endpoint: &Endpoint, addr: SocketAddr, idle: Duration) -> peer::UpstreamPeer {
        let mut peer = HttpPeer::new(addr, endpoint.spec.tls, endpoint.spec.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.spec.timeouts.connect);
        // Covers the TLS handshake too.
        o.total_connection_timeout = Some(self.spec.timeouts.connect * 2);
        o.idle_timeout = Some(idle);
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = self.ca.clone();
        peer::UpstreamPeer(peer)
    }

    /// The pool's admission control, when it has a `queue` section.
    pub fn queue(&self) -> Option<&queue::Queue> {
        self.queue.as_ref()
    }

    pub fn is_mock(&self) -> bool {
        self.spec.provider == ProviderKind::Mock
    }

    /// The endpoint for an attempt: picked by the pool's strategy among the usable ones
    /// not in `tried`; if none is left, among the usable ones; `None` if no endpoint is
    /// usable.
    pub fn pick(&self, hints: &Hints, tried: &[usize]) -> Option<usize> {
        let fresh = |i: usize| !tried.contains(&i) && self.endpoints[i].usable();
        self.balancer
            .pick(&self.endpoints, hints, &fresh)
            .or_else(|| {
                self.balancer
                    .pick(&self.endpoints, hints, &|i| self.endpoints[i].usable())
            })
    }

    /// Ready when the pool answers locally or at least one endpoint's address is known.
    pub async fn is_ready(&self) -> bool {
        if self.is_mock() {
            return true;
        }
        for e in &self.endpoints {
            if e.addrs.pick().await.is_ok() {
                return true;
            }
        }
        false
    }
}
