//! Active health checks: a periodic unbilled GET to each endpoint of a pool, marking it
//! down after `unhealthy_after` failed probes and up after `healthy_after` good ones.
//!
//! STUB: endpoints are always up and nothing is probed.

use std::sync::{Arc, Weak};

use pingora_core::connectors::http::Connector;

use crate::config::HealthCheck;

use super::Pool;

/// An endpoint's health as seen by the active checks. Starts up.
#[derive(Debug, Default)]
pub struct Health {}

impl Health {
    pub fn is_up(&self) -> bool {
        true
    }

    /// Counts one probe result; returns the new state when it changed.
    pub fn record_probe(&self, _ok: bool, _settings: &HealthCheck) -> Option<bool> {
        None
    }
}

/// Probes every endpoint of the pool each interval until the pool is dropped.
pub async fn run(_pool: Weak<Pool>, _connector: Arc<Connector>) {}
