//! Builds the Pingora server from a validated config: server settings, listeners (plain
//! HTTP/1.1, or TLS with ALPN h2 and HTTP/1.1), the gateway service, and the background
//! services beside it: the upstream monitor and the config reload.

use std::sync::Arc;

use crate::upstream::Connector;
use arc_swap::ArcSwap;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::listeners::ListenerConfig;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::Server;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::services::background::background_service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::header_deadline::HeadDeadlineApp;
use crate::key_admin::{KeyRefresher, KeyRegistry, Persist};
use crate::monitor::Monitor;
use crate::reload::{ConfigSource, Reloader};
use crate::state::State;
use crate::store::{Backend, RedisOptions};

/// How the process was asked to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartMode {
    /// Take the listening sockets over from a running instance (zero-downtime upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

/// The server for `config`, read from `source` (which the reload service watches).
pub fn build(config: Config, source: ConfigSource, mode: StartMode) -> Result<Server, String> {
    let s = &config.server;
    let conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        error_log: s.error_log.clone(),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        daemon: mode.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: mode.upgrade,
        daemon: mode.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let listeners = config.listeners.clone();
    let admin = config.admin.clone();
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let registry = Arc::new(KeyRegistry::load(key_persistence(&config))?);
    let state = Arc::new(ArcSwap::from_pointee(State::build(
        config,
        registry.clone(),
    )?));
    let gateway = Gateway::new(state.clone(), connector);
    let mut service = pingora_core::services::listening::Service::new(
        "tollgate".to_owned(),
        HeadDeadlineApp::new(gateway, state.clone()),
    );
    for l in &listeners {
        match &l.tls {
            // Unbuffered reads: Pingora reads request heads and bodies into buffers of
            // its own, so the 64 KiB read buffer it gives each connection by default only
            // adds a copy and a page or two per open connection. TLS keeps it (record-
            // sized reads).
            None => service.add_listener(
                ListenerConfig::tcp(l.address.as_str())
                    .l4_buffer(L4BufferSettings::default().read(0)),
            ),
            Some(tls) => {
                let mut settings = TlsSettings::intermediate(&tls.cert_file, &tls.key_file)
                    .map_err(|e| format!("listener {}: TLS setup failed: {e}", l.address))?;
                if l.http2 {
                    settings.enable_h2();
                }
                service.add_tls_with_settings(&l.address, None, settings);
            }
        }
        tracing::info!(address = %l.address, tls = l.tls.is_some(), "listening");
    }
    server.add_service(service);
    if let Some(admin) = &admin {
        let mut service = pingora_core::services::listening::Service::new(
            "tollgate admin".to_owned(),
            AdminApp::new(state.clone(), registry.clone()),
        );
        service.add_tcp(&admin.address);
        tracing::info!(address = %admin.address, api = admin.token.is_some(), "admin listening");
        server.add_service(service);
    }
    let monitor = Monitor::new(state.clone());
    let reloader = Reloader::new(source, state, monitor.pools_changed());
    server.add_service(background_service("upstream monitor", monitor));
    server.add_service(background_service("config reload", reloader));
    server.add_service(background_service("runtime keys", KeyRefresher(registry)));
    Ok(server)
}

/// Where the keys managed at run time are kept: the shared Redis when limits are counted
/// there, else the admin state file; nowhere without an admin listener.
fn key_persistence(config: &Config) -> Persist {
    if config.admin.is_none() {
        return Persist::Nowhere;
    }
    if config.state.backend == Backend::Redis {
        let r = &config.state.redis;
        return Persist::Redis(RedisOptions {
            url: r.url.clone(),
            key_prefix: r.key_prefix.clone(),
            timeout: r.timeout.max(std::time::Duration::from_secs(2)),
        });
    }
    match &config.admin {
        Some(admin) => Persist::File(admin.state_file.clone()),
        None => Persist::Nowhere,
    }
}
