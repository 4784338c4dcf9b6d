//! Configuration: one YAML file, validated in full before anything uses it.
//!
//! `file.rs` is the format operators write; `load.rs` parses and validates it into the
//! runtime [`Config`] below, which is what the rest of the gateway reads. Keeping the two
//! apart lets the file format change without touching the engine.

mod file;
mod load;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use file::ProviderKind;
pub use load::{ConfigError, ConfigErrors, load, parse};

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it was read from, for messages.
    pub source: String,
    pub server: ServerSettings,
    pub listeners: Vec<Listener>,
    pub limits: Limits,
    /// In file order (sorted by name).
    pub models: Vec<Model>,
    /// In file order (sorted by name); targets refer to pools by index.
    pub pools: Vec<PoolSpec>,
}

/// Pingora's server settings, with Tollgate's defaults applied.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub error_log: Option<String>,
    pub upstream_keepalive_pool_size: usize,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub address: String,
    pub tls: Option<ListenerTls>,
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// How long a client may take to send its whole body.
    pub body_read_timeout: Duration,
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub aliases: Vec<String>,
    pub owned_by: String,
    pub targets: Vec<Target>,
}

#[derive(Debug)]
pub struct Target {
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// The model id the upstream expects.
    pub upstream_model: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub provider: ProviderKind,
    pub endpoints: Vec<EndpointSpec>,
    pub timeouts: Timeouts,
    /// Trusted CA certificates (PEM file), replacing the system store for this pool.
    pub ca_file: Option<PathBuf>,
    pub dns_refresh: Duration,
    pub mock: MockSettings,
}

#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// The URL as configured, for logs and response headers.
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix that replaces the client's `/v1`, e.g. `/v1` or `/openai/v1`.
    pub base_path: String,
    pub api_key: Option<Secret>,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct MockSettings {
    pub chunk_delay: Duration,
    pub embedding_dims: usize,
}

/// A credential. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself: only for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

#[cfg(test)]
mod tests;
