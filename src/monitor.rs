//! The background service that watches upstream endpoints: active health checks and,
//! for `load_aware` pools, load scraping. Each loop holds its pool weakly and ends when
//! the pool is gone (a reload replaced it). The monitor starts the loops of every pool of
//! the current state once, at start and each time a reload says the pools changed
//! ([`PoolsChanged::notify`]); a pool a reload carried over keeps its running loops.

use std::sync::{Arc, Weak};

use crate::upstream::Connector;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::Notify;

use crate::config::Strategy;
use crate::state::State;
use crate::upstream::{Pool, health, load};

pub struct Monitor {
    state: Arc<ArcSwap<State>>,
    changed: PoolsChanged,
}

/// Tells the monitor that a new state was swapped in. A notice sent before the monitor
/// runs is kept, and it looks at the state as it is then, so nothing is missed.
#[derive(Clone, Default)]
pub struct PoolsChanged(Arc<Notify>);

impl PoolsChanged {
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

impl Monitor {
    pub fn new(state: Arc<ArcSwap<State>>) -> Self {
        Monitor {
            state,
            changed: PoolsChanged::default(),
        }
    }

    /// The handle a reload uses after each swap.
    pub fn pools_changed(&self) -> PoolsChanged {
        self.changed.clone()
    }
}

/// Starts the watch loops one pool needs, if any, on the current runtime.
fn watch_pool(pool: &Arc<Pool>, connector: &Arc<Connector>) {
    if pool.is_mock() {
        return;
    }
    if pool.spec.health_check.is_some() {
        tokio::spawn(health::run(Arc::downgrade(pool), connector.clone()));
    }
    if pool.spec.balance.strategy == Strategy::LoadAware {
        tokio::spawn(load::run(Arc::downgrade(pool), connector.clone()));
    }
}

/// The pools whose loops were started. Holding a `Weak` keeps a dropped pool's address
/// from being reused, so pointer equality identifies a pool for as long as it is listed.
#[derive(Default)]
struct Watched(Vec<Weak<Pool>>);

impl Watched {
    /// Starts the loops of the pools of `state` not watched yet; forgets dropped pools.
    fn sync(&mut self, state: &State, connector: &Arc<Connector>) {
        self.0.retain(|w| w.strong_count() > 0);
        for pool in &state.pools {
            let known = self
                .0
                .iter()
                .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(pool)));
            if !known {
                watch_pool(pool, connector);
                self.0.push(Arc::downgrade(pool));
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Probes use their own connections, never the client traffic's pool.
        let connector = Arc::new(Connector::new(None));
        let mut watched = Watched::default();
        loop {
            watched.sync(&self.state.load(), &connector);
            tokio::select! {
                _ = self.changed.0.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pools: &str) -> State {
        let yaml = format!(
            "listeners: [{{address: '127.0.0.1:0'}}]\n\
             models:\n  m:\n    targets: [{{pool: a}}]\n\
             pools:\n{pools}"
        );
        let config =
            crate::config::parse(&yaml, "test.yaml", std::path::Path::new("."), &|_| None).unwrap();
        State::build_for_test(config).unwrap()
    }

    #[tokio::test]
    async fn a_pool_is_watched_once_however_often_the_state_is_synced() {
        let connector = Arc::new(Connector::new(None));
        let s =
            state("  a:\n    provider: openai\n    endpoints: [{url: 'http://127.0.0.1:9/v1'}]\n");
        let mut watched = Watched::default();
        watched.sync(&s, &connector);
        watched.sync(&s, &connector);
        assert_eq!(watched.0.len(), 1);
        // The probe loop holds the pool weakly: one strong reference, ours.
        assert_eq!(Arc::strong_count(&s.pools[0]), 1);

        let replaced =
            state("  a:\n    provider: openai\n    endpoints: [{url: 'http://127.0.0.1:10/v1'}]\n");
        drop(s);
        watched.sync(&replaced, &connector);
        assert_eq!(watched.0.len(), 1, "the dropped pool is forgotten");
        assert!(std::ptr::eq(
            watched.0[0].as_ptr(),
            Arc::as_ptr(&replaced.pools[0])
        ));
    }
}
