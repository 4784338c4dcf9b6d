//! Upstream pools: where requests go once the model is resolved.
//!
//! A [`Pool`] is built from its config and owns what must live as long as the config:
//! its endpoints, their DNS state and the CA store for TLS. `forward` carries one request
//! to an endpoint and the answer back; `mock` answers in-process for `mock` pools.

mod dns;
mod forward;
mod mock;

use std::sync::Arc;

use pingora_core::protocols::tls::CaType;

use crate::config::{EndpointSpec, PoolSpec, ProviderKind};
use crate::weighted::WeightedRing;

pub use forward::{Forwarded, forward};
pub use mock::answer as mock_answer;

#[derive(Debug)]
pub struct Pool {
    pub spec: PoolSpec,
    endpoints: Vec<Endpoint>,
    ring: WeightedRing,
    /// Trusted CAs for this pool, replacing the system store when set.
    ca: Option<Arc<CaType>>,
}

#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    addrs: Arc<dns::HostAddrs>,
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
        let weights: Vec<u32> = spec.endpoints.iter().map(|e| e.weight).collect();
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| Endpoint {
                spec: e.clone(),
                addrs: dns::HostAddrs::new(&e.host, e.port, spec.dns_refresh),
            })
            .collect();
        Ok(Pool {
            ring: WeightedRing::new(&weights),
            endpoints,
            ca,
            spec,
        })
    }

    pub fn is_mock(&self) -> bool {
        self.spec.provider == ProviderKind::Mock
    }

    /// The endpoint for the next request (weighted round robin).
    pub fn next_endpoint(&self) -> Option<&Endpoint> {
        self.endpoints.get(self.ring.next())
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
