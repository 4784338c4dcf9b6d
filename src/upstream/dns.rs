//! Host name resolution for upstream endpoints, cached and refreshed in the background.
//!
//! Pingora connects to socket addresses only, so the gateway resolves names itself. A
//! cached answer older than the refresh interval is still used while one task looks the
//! name up again (stale-while-revalidate): a slow or failing resolver never stalls
//! requests once a name has resolved once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct HostAddrs {
    host: String,
    port: u16,
    refresh: Duration,
    /// Set when the host is an IP literal: nothing to resolve.
    literal: Option<SocketAddr>,
    cached: ArcSwapOption<Resolved>,
    refreshing: AtomicBool,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Resolved {
    addrs: Vec<SocketAddr>,
    at: Instant,
}

impl HostAddrs {
    pub fn new(host: &str, port: u16, refresh: Duration) -> Arc<Self> {
        let literal = host.parse().ok().map(|ip| SocketAddr::new(ip, port));
        Arc::new(HostAddrs {
            host: host.to_owned(),
            port,
            refresh,
            literal,
            cached: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
            next: AtomicUsize::new(0),
        })
    }

    /// One address to connect to, rotating over all the name resolves to.
    pub async fn pick(self: &Arc<Self>) -> Result<SocketAddr, String> {
        if let Some(addr) = self.literal {
            return Ok(addr);
        }
        let cached = self.cached.load_full();
        let resolved = match cached {
            Some(r) => {
                if r.at.elapsed() >= self.refresh {
                    self.refresh_in_background();
                }
                r
            }
            None => self.lookup().await?,
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        resolved
            .addrs
            .get(n % resolved.addrs.len().max(1))
            .copied()
            .ok_or_else(|| format!("`{}` resolved to no address", self.host))
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.lookup().await {
                tracing::warn!(host = %this.host, error = %e, "DNS refresh failed; keeping the previous addresses");
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    async fn lookup(&self) -> Result<Arc<Resolved>, String> {
        let found = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("resolving `{}` timed out", self.host))?
        .map_err(|e| format!("cannot resolve `{}`: {e}", self.host))?;
        let addrs: Vec<SocketAddr> = found.collect();
        if addrs.is_empty() {
            return Err(format!("`{}` resolved to no address", self.host));
        }
        let resolved = Arc::new(Resolved {
            addrs,
            at: Instant::now(),
        });
        self.cached.store(Some(Arc::clone(&resolved)));
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_needs_no_lookup() {
        let h = HostAddrs::new("127.0.0.1", 80, Duration::from_secs(30));
        assert_eq!(h.pick().await.unwrap(), "127.0.0.1:80".parse().unwrap());
    }

    #[tokio::test]
    async fn localhost_resolves_and_is_cached() {
        let h = HostAddrs::new("localhost", 8080, Duration::from_secs(30));
        let a = h.pick().await.unwrap();
        assert!(a.ip().is_loopback());
        assert!(h.cached.load().is_some());
    }

    #[tokio::test]
    async fn a_stale_answer_is_served_while_it_is_looked_up_again() {
        let h = HostAddrs::new("localhost", 8080, Duration::from_millis(1));
        h.pick().await.unwrap();
        let first = h.cached.load_full().unwrap().at;
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Stale now: answered from the cache at once, refreshed in the background.
        h.pick().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.cached.load_full().unwrap().at == first {
            assert!(Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn unknown_host_is_an_error() {
        let h = HostAddrs::new("no-such-host.invalid", 80, Duration::from_secs(30));
        assert!(h.pick().await.is_err());
    }
}
