//! The background service that watches upstream endpoints: active health checks and,
//! for `load_aware` pools, load scraping. Each loop holds its pool weakly and ends when
//! the pool is gone (a reload replaced it); `watch` starts the loops of a new state.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::Strategy;
use crate::state::State;
use crate::upstream::{health, load};

pub struct Monitor {
    state: Arc<ArcSwap<State>>,
}

impl Monitor {
    pub fn new(state: Arc<ArcSwap<State>>) -> Self {
        Monitor { state }
    }
}

/// Starts the watch loops for every pool of `state` on the current runtime.
pub fn watch(state: &State, connector: &Arc<Connector>) {
    for pool in &state.pools {
        if pool.is_mock() {
            continue;
        }
        if pool.spec.health_check.is_some() {
            tokio::spawn(health::run(Arc::downgrade(pool), connector.clone()));
        }
        if pool.spec.balance.strategy == Strategy::LoadAware {
            tokio::spawn(load::run(Arc::downgrade(pool), connector.clone()));
        }
    }
}

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Probes use their own connections, never the client traffic's pool.
        let connector = Arc::new(Connector::new(None));
        watch(&self.state.load(), &connector);
        let _ = shutdown.changed().await;
    }
}
