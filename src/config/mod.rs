//! Configuration: one YAML file, validated in full before anything uses it.
//!
//! `file.rs` is the format operators write; `load.rs` parses and validates it into the
//! runtime [`Config`] below, which is what the rest of the gateway reads. Keeping the two
//! apart lets the file format change without touching the engine.

mod file;
mod load;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use tollgate_plugin::Principal;

pub use file::{ProviderKind, Strategy};
pub use load::{ConfigError, ConfigErrors, load, parse};
pub use tollgate_plugin::Secret;

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it was read from, for messages.
    pub source: String,
    /// The file's text as read (`${VAR}` not expanded), for the admin API's view.
    pub text: String,
    pub server: ServerSettings,
    pub listeners: Vec<Listener>,
    pub limits: Limits,
    /// In file order (sorted by name).
    pub models: Vec<Model>,
    /// In file order (sorted by name); targets refer to pools by index.
    pub pools: Vec<PoolSpec>,
    pub routing: Routing,
    /// The authentication plugin, built and checked; `None`: no `auth` section.
    pub auth: Option<Auth>,
    /// Rate limits and budgets, checked; `None`: none configured.
    pub quotas: Option<tollgate_limits::Quotas>,
    pub state: crate::store::StateConfig,
    /// The response cache's settings, checked; `None`: no caching.
    pub cache: Option<crate::cache::Policy>,
    /// The admin listener; `None`: none.
    pub admin: Option<Admin>,
    /// Who waits ahead of whom in a pool's queue.
    pub priorities: Priorities,
    pub log: LogSettings,
}

/// Where the logs go (set up once, at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    pub access: LogDestination,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDestination {
    Stderr,
    Stdout,
    Off,
    File(PathBuf),
}

/// The admin listener's settings.
#[derive(Debug, Clone)]
pub struct Admin {
    pub address: String,
    /// `None`: the admin API is off; only `/metrics` is served.
    pub token: Option<Secret>,
    /// Per-key and per-team metric series.
    pub per_key_metrics: bool,
    pub metrics_require_token: bool,
    /// Where runtime keys are kept when there is no shared Redis.
    pub state_file: PathBuf,
}

/// The default key state file of the config at `source`: `<dir>/<stem>.keys.json`.
pub fn default_key_state_file(source: &str) -> PathBuf {
    let path = std::path::Path::new(source);
    let stem = path.file_stem().map_or_else(
        || "tollgate".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    path.with_file_name(format!("{stem}.keys.json"))
}

/// The built authentication plugin (it holds key digests and JWT keys, never shown).
#[derive(Clone)]
pub struct Auth(pub std::sync::Arc<tollgate_auth::AuthPlugin>);

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Auth(..)")
    }
}

/// Per-request bounds on retries and fallbacks.
#[derive(Debug, Clone, Copy)]
pub struct Routing {
    /// Upstream attempts per request, the first included.
    pub max_attempts: u32,
    /// From arrival to the upstream response header, over all attempts.
    pub deadline: Duration,
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
    /// How long a client may take to send a request head (see `header_deadline`).
    pub header_read_timeout: Duration,
    /// Longest idle wait between two requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Largest request head, line and headers (431 above).
    pub max_header_bytes: usize,
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub aliases: Vec<String>,
    pub owned_by: String,
    pub targets: Vec<Target>,
    /// Indexes into [`Config::models`], tried in order after this model's targets.
    pub fallbacks: Vec<usize>,
    /// Prompt plus `max_tokens` the model takes, when configured.
    pub context_window: Option<u64>,
}

#[derive(Debug)]
pub struct Target {
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// The model id the upstream expects.
    pub upstream_model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub provider: ProviderKind,
    pub endpoints: Vec<EndpointSpec>,
    pub timeouts: Timeouts,
    /// Trusted CA certificates (PEM file), replacing the system store for this pool.
    pub ca_file: Option<PathBuf>,
    pub dns_refresh: Duration,
    pub mock: MockSettings,
    pub anthropic: AnthropicSettings,
    pub balance: Balance,
    /// `None` when active health checks are off.
    pub health_check: Option<HealthCheck>,
    /// `None` when the circuit breaker is off.
    pub breaker: Option<BreakerSettings>,
    pub retry: RetryPolicy,
    pub max_response_bytes: usize,
    /// Admission control; `None`: requests are sent at once.
    pub queue: Option<QueueSettings>,
}

/// A pool's admission control (its `queue` section).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Requests in flight per endpoint; `None`: bounded by the load signals only.
    pub max_in_flight_per_endpoint: Option<u32>,
    /// An endpoint whose scraped load is saturated counts as full.
    pub load_signals: bool,
    /// Most requests waiting, all classes together.
    pub max_length: usize,
    pub max_wait: Duration,
    /// `retry-after` on a refusal.
    pub retry_after: Duration,
}

/// Priority classes and who belongs to which.
#[derive(Debug, Clone)]
pub struct Priorities {
    /// In file order (sorted by name); never empty.
    pub classes: Vec<PriorityClass>,
    /// Index into `classes` of callers no rule names.
    pub default: usize,
    /// Class index by key id (or JWT subject).
    pub keys: HashMap<String, usize>,
    /// Class index by tier.
    pub tiers: HashMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityClass {
    pub name: String,
    /// Higher is served first.
    pub level: u32,
    pub max_wait: Option<Duration>,
    pub max_queue: Option<usize>,
    /// Refused with 429 (else 503), and may give its place to a higher level.
    pub sheddable: bool,
}

/// The one class when the config names none.
static DEFAULT_CLASS: LazyLock<PriorityClass> = LazyLock::new(|| PriorityClass {
    name: "default".to_owned(),
    level: 0,
    max_wait: None,
    max_queue: None,
    sheddable: false,
});

impl Default for Priorities {
    fn default() -> Self {
        Priorities {
            classes: vec![DEFAULT_CLASS.clone()],
            default: 0,
            keys: HashMap::new(),
            tiers: HashMap::new(),
        }
    }
}

impl Priorities {
    /// The caller's class and its index: by key id, else by tier, else the default.
    pub fn class_of(&self, principal: Option<&Principal>) -> (usize, &PriorityClass) {
        let named = principal.and_then(|p| {
            self.keys.get(&p.id).or_else(|| {
                p.tier
                    .as_ref()
                    .and_then(|tier| self.tiers.get(tier.as_str()))
            })
        });
        let i = named.copied().unwrap_or(self.default);
        match self.classes.get(i) {
            Some(class) => (i, class),
            None => (0, &DEFAULT_CLASS),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub strategy: Strategy,
    /// `consistent_hash`: session key sources, first present wins.
    pub hash_on: Vec<HashSource>,
    pub load: LoadAware,
}

/// Where a session key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// A request header (lower-case name).
    Header(String),
    /// The body's `user` field.
    BodyUser,
}

/// Settings of the `load_aware` strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadAware {
    pub metrics_path: String,
    pub scrape_interval: Duration,
    pub stale_after: Duration,
    pub max_waiting: f64,
    pub max_cache_usage: f64,
    pub prefix_bytes: usize,
    pub affinity_slack: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Absolute path probed with GET; `None`: each endpoint's API prefix + `/models`.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts on one pool per request, the first included.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    /// The URL as configured, for logs.
    pub url: String,
    /// Shown in response headers and logs: configured, or `host:port`.
    pub name: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix that replaces the client's `/v1`, e.g. `/v1` or `/openai/v1`.
    pub base_path: String,
    /// Credentials, used in turn when one is refused or rate-limited; may be empty.
    pub api_keys: Vec<Secret>,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MockSettings {
    pub chunk_delay: Duration,
    pub embedding_dims: usize,
}

/// What a `provider: anthropic` pool adds to a translated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnthropicSettings {
    /// `max_tokens` when the request gives none (Anthropic requires one).
    pub default_max_tokens: u64,
}

impl Default for AnthropicSettings {
    fn default() -> Self {
        AnthropicSettings {
            default_max_tokens: 4096,
        }
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
