//! The YAML file format, exactly as written by operators.
//!
//! Every struct rejects keys it does not know. Values that need checking beyond their
//! type are wrapped in [`Spanned`] so that the validator in `load.rs` can point at the
//! line. Nothing here is used by the engine directly: `load.rs` turns it into the
//! runtime [`super::Config`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

/// A duration such as `5s`, `250ms` or `2m`, longer than zero.
fn positive_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    if value.is_zero() {
        return Err(serde::de::Error::custom("must be longer than zero"));
    }
    Ok(value)
}

/// An optional [`positive_duration`]; absent is `None`.
fn positive_duration_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    positive_duration(d).map(Some)
}

/// A default value, which has no place in the file.
fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    pub listeners: Spanned<Vec<ListenerSection>>,
    #[serde(default)]
    pub limits: LimitsSection,
    pub models: Spanned<BTreeMap<String, ModelSection>>,
    pub pools: Spanned<BTreeMap<String, PoolSection>>,
    #[serde(default)]
    pub routing: RoutingSection,
    /// Who may call (the auth plugin's section); absent: the gateway is open.
    pub auth: Option<tollgate_auth::AuthConfig>,
    /// Rate limits and budgets (the limits plugin's section).
    pub quotas: Option<tollgate_limits::QuotasConfig>,
    /// Where limits and budgets are counted: in process, or in a shared Redis.
    #[serde(default)]
    pub state: crate::store::StateConfig,
    /// The response cache; absent: no caching.
    pub cache: Option<crate::cache::CacheConfig>,
    /// The admin listener (metrics, admin API); absent: none.
    pub admin: Option<AdminSection>,
    /// Where the logs go.
    #[serde(default)]
    pub log: LogSection,
    /// Priority classes of callers, for pools that queue (`pools.*.queue`); absent: one
    /// class for everyone.
    pub priorities: Option<PrioritiesSection>,
}

/// Named priority classes, and which callers belong to which.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrioritiesSection {
    pub classes: Spanned<BTreeMap<String, PriorityClassSection>>,
    /// The class of callers no `keys` or `tiers` entry names; may be left out when there
    /// is one class.
    pub default: Option<Spanned<String>>,
    /// Class by key id (or JWT subject); before `tiers`.
    #[serde(default)]
    pub keys: BTreeMap<String, Spanned<String>>,
    /// Class by the caller's tier.
    #[serde(default)]
    pub tiers: BTreeMap<String, Spanned<String>>,
}

/// One priority class.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityClassSection {
    /// Higher levels are served first; classes may share a level.
    pub level: u32,
    /// Longest wait in a pool's queue (the pool's own `max_wait` bounds it too).
    #[serde(default, deserialize_with = "positive_duration_opt")]
    pub max_wait: Option<Duration>,
    /// Most requests of this class waiting in one pool's queue.
    pub max_queue: Option<Spanned<usize>>,
    /// Refused with 429 rather than 503 when it cannot wait, and may lose its place in
    /// a full queue to a request of a higher level.
    #[serde(default)]
    pub sheddable: bool,
}

/// The gateway's own log and the access log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// The gateway's own log: a `RUST_LOG`-style filter (`RUST_LOG` wins when set).
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: super::LogFormat,
    /// The access log (one JSON line per request): `stderr` (default), `stdout`, `off`,
    /// or a file path (appended to).
    #[serde(default = "default_access_destination")]
    pub access: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: default_log_level(),
            format: super::LogFormat::default(),
            access: default_access_destination(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

fn default_access_destination() -> String {
    "stderr".into()
}

/// A listener apart from client traffic for `/metrics` and the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub address: Spanned<String>,
    /// Bearer token of the admin API (`${ENV}` expanded); absent: only `/metrics`.
    pub token: Option<Spanned<String>>,
    #[serde(default)]
    pub metrics: AdminMetricsSection,
    /// Where keys made by the admin API are kept without Redis; default: beside the
    /// config file, `<name>.keys.json`.
    pub state_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminMetricsSection {
    /// Per key id and team series (`tollgate_key_*`): one series per key.
    #[serde(default)]
    pub per_key: bool,
    /// `/metrics` asks for the admin token too.
    #[serde(default)]
    pub require_token: bool,
}

/// Bounds on what one request may cost in retries and fallbacks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// Upstream attempts per request, first one included, across pools and fallbacks.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: Spanned<u32>,
    /// From the request's arrival to the upstream response header, all attempts and
    /// waits included; no attempt outlives it.
    #[serde(default = "default_deadline", deserialize_with = "positive_duration")]
    pub deadline: Duration,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            max_attempts: default_max_attempts(),
            deadline: default_deadline(),
        }
    }
}

fn default_max_attempts() -> Spanned<u32> {
    unspanned(4)
}

fn default_deadline() -> Duration {
    Duration::from_secs(300)
}

/// Pingora's own server settings. Absent values take Tollgate's defaults, which differ
/// from Pingora's where Pingora's are wrong for a gateway (threads, grace period).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads per service; default: the number of cores.
    pub threads: Option<Spanned<usize>>,
    pub work_stealing: Option<bool>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub error_log: Option<String>,
    /// Idle upstream connections kept per endpoint address (default 128).
    pub upstream_keepalive_pool_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub address: Spanned<String>,
    pub tls: Option<TlsListenerSection>,
    /// Offer HTTP/2 through ALPN (TLS listeners only).
    #[serde(default)]
    pub http2: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerSection {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: Spanned<usize>,
    #[serde(
        default = "default_body_read_timeout",
        deserialize_with = "positive_duration"
    )]
    pub body_read_timeout: Duration,
    /// How long a client may take to send a request head (line and headers): from the
    /// connection's accept for its first request, from the first byte for later ones.
    #[serde(
        default = "default_header_read_timeout",
        deserialize_with = "positive_duration"
    )]
    pub header_read_timeout: Duration,
    /// How long a kept-alive client connection may sit idle between requests.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "positive_duration"
    )]
    pub idle_timeout: Duration,
    /// Largest request head (line and headers); a larger one is refused with 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Spanned<usize>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_body_bytes: default_max_body_bytes(),
            body_read_timeout: default_body_read_timeout(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_header_bytes() -> Spanned<usize> {
    unspanned(64 * 1024)
}

fn default_max_body_bytes() -> Spanned<usize> {
    unspanned(16 * 1024 * 1024)
}

fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
    /// Shown as `owned_by` in `/v1/models`.
    pub owned_by: Option<String>,
    pub targets: Spanned<Vec<TargetSection>>,
    /// Models tried in order when every target of this one failed (or cannot take the
    /// request, see `context_window`).
    #[serde(default)]
    pub fallbacks: Vec<Spanned<String>>,
    /// Tokens the model takes (prompt plus `max_tokens`); a request that cannot fit
    /// skips this model for the next fallback.
    pub context_window: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub pool: Spanned<String>,
    /// The model id sent upstream; defaults to the public model name.
    pub model: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
}

fn default_weight() -> Spanned<u32> {
    unspanned(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any server speaking the OpenAI HTTP API: OpenAI itself, vLLM, SGLang, llama.cpp …
    Openai,
    /// Answers locally, without any network: for the default config, demos and tests.
    Mock,
    /// Anthropic's Messages API: OpenAI chat requests are translated to it and back.
    Anthropic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub provider: ProviderKind,
    #[serde(default = "no_endpoints")]
    pub endpoints: Spanned<Vec<EndpointSection>>,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub tls: PoolTlsSection,
    #[serde(default = "default_dns_refresh", with = "humantime_serde")]
    pub dns_refresh: Duration,
    pub mock: Option<Spanned<MockSection>>,
    /// Settings of `provider: anthropic` pools.
    pub anthropic: Option<Spanned<AnthropicSection>>,
    #[serde(default)]
    pub balance: BalanceSection,
    #[serde(default)]
    pub health_check: HealthCheckSection,
    #[serde(default)]
    pub breaker: BreakerSection,
    #[serde(default)]
    pub retry: RetrySection,
    /// Largest response accepted from an endpoint; a larger one is an upstream failure.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: Spanned<usize>,
    /// Admission control: requests over the endpoints' capacity wait here; absent: every
    /// request is sent at once.
    pub queue: Option<Spanned<QueueSection>>,
}

/// A pool's admission control: how many requests each endpoint takes, and how the rest
/// wait.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    /// Requests in flight per endpoint (from this gateway instance).
    pub max_in_flight_per_endpoint: Option<Spanned<u32>>,
    /// `load_aware` pools: an endpoint whose scraped load is saturated (`max_waiting`,
    /// `max_cache_usage`) counts as full too.
    #[serde(default = "yes")]
    pub load_signals: bool,
    /// Most requests waiting in this pool's queue, all classes together.
    #[serde(default = "default_queue_length")]
    pub max_length: Spanned<usize>,
    /// Longest wait for room, whatever the class.
    #[serde(default = "default_queue_wait", deserialize_with = "positive_duration")]
    pub max_wait: Duration,
    /// `retry-after` on a refusal because the pool is saturated.
    #[serde(
        default = "default_queue_retry_after",
        deserialize_with = "positive_duration"
    )]
    pub retry_after: Duration,
}

fn default_queue_length() -> Spanned<usize> {
    unspanned(100)
}
fn default_queue_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_queue_retry_after() -> Duration {
    Duration::from_secs(1)
}

fn default_max_response_bytes() -> Spanned<usize> {
    unspanned(64 * 1024 * 1024)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight (relative to its weight).
    LeastInFlight,
    /// Power of two random choices, scored by latency (EWMA) times load.
    Ewma,
    /// The same session key always reaches the same endpoint while it is available.
    ConsistentHash,
    /// vLLM/SGLang: scraped queue and KV-cache load, with prompt-prefix affinity.
    LoadAware,
}

/// How a pool picks an endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceSection {
    #[serde(default)]
    pub strategy: Strategy,
    /// `consistent_hash`: where the session key comes from, first present wins:
    /// `header:<name>` or `body:user`. Requests without one are spread by round robin.
    #[serde(default = "default_hash_on")]
    pub hash_on: Vec<Spanned<String>>,
    /// `load_aware`: path of each endpoint's Prometheus metrics.
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    #[serde(
        default = "default_scrape_interval",
        deserialize_with = "positive_duration"
    )]
    pub scrape_interval: Duration,
    /// Load figures older than this are unknown.
    #[serde(
        default = "default_stale_after",
        deserialize_with = "positive_duration"
    )]
    pub stale_after: Duration,
    /// An endpoint with this many requests waiting is saturated.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: Spanned<f64>,
    /// An endpoint whose KV cache is this full (0–1) is saturated.
    #[serde(default = "default_max_cache_usage")]
    pub max_cache_usage: Spanned<f64>,
    /// Leading bytes of the prompt that identify its prefix.
    #[serde(default = "default_prefix_bytes")]
    pub prefix_bytes: Spanned<usize>,
    /// The prefix's endpoint is kept unless its load exceeds the least loaded one's by
    /// more than this many requests.
    #[serde(default = "default_affinity_slack")]
    pub affinity_slack: Spanned<f64>,
}

impl Default for BalanceSection {
    fn default() -> Self {
        BalanceSection {
            strategy: Strategy::default(),
            hash_on: default_hash_on(),
            metrics_path: default_metrics_path(),
            scrape_interval: default_scrape_interval(),
            stale_after: default_stale_after(),
            max_waiting: default_max_waiting(),
            max_cache_usage: default_max_cache_usage(),
            prefix_bytes: default_prefix_bytes(),
            affinity_slack: default_affinity_slack(),
        }
    }
}

fn default_hash_on() -> Vec<Spanned<String>> {
    vec![
        unspanned("header:x-session-id".to_owned()),
        unspanned("body:user".to_owned()),
    ]
}
fn default_metrics_path() -> String {
    "/metrics".to_owned()
}
fn default_scrape_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_stale_after() -> Duration {
    Duration::from_secs(5)
}
fn default_max_waiting() -> Spanned<f64> {
    unspanned(16.0)
}
fn default_max_cache_usage() -> Spanned<f64> {
    unspanned(0.95)
}
fn default_prefix_bytes() -> Spanned<usize> {
    unspanned(1024)
}
fn default_affinity_slack() -> Spanned<f64> {
    unspanned(4.0)
}

/// Active health checks: a periodic unbilled request to each endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Absolute path probed with GET; default: the endpoint's API prefix + `/models`
    /// (e.g. `/v1/models`). vLLM also serves `/health`.
    pub path: Option<Spanned<String>>,
    #[serde(
        default = "default_check_interval",
        deserialize_with = "positive_duration"
    )]
    pub interval: Duration,
    #[serde(
        default = "default_check_timeout",
        deserialize_with = "positive_duration"
    )]
    pub timeout: Duration,
    /// Consecutive failed probes that mark an endpoint down.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: Spanned<u32>,
    /// Consecutive good probes that mark it up again.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: Spanned<u32>,
}

impl Default for HealthCheckSection {
    fn default() -> Self {
        HealthCheckSection {
            enabled: true,
            path: None,
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            unhealthy_after: default_unhealthy_after(),
            healthy_after: default_healthy_after(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_unhealthy_after() -> Spanned<u32> {
    unspanned(2)
}
fn default_healthy_after() -> Spanned<u32> {
    unspanned(2)
}

/// Passive outlier detection from live traffic, feeding a circuit breaker per endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures in a row that open the breaker.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: Spanned<u32>,
    /// Share of failed requests over `window` that opens it (with `min_requests`).
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: Spanned<f64>,
    #[serde(
        default = "default_breaker_window",
        deserialize_with = "positive_duration"
    )]
    pub window: Duration,
    #[serde(default = "default_min_requests")]
    pub min_requests: Spanned<u32>,
    /// How long an open breaker sends no traffic before a probe; doubles after each
    /// failed probe, up to `max_open_for`.
    #[serde(default = "default_open_for", deserialize_with = "positive_duration")]
    pub open_for: Duration,
    #[serde(
        default = "default_max_open_for",
        deserialize_with = "positive_duration"
    )]
    pub max_open_for: Duration,
    /// Requests let through while half-open; all must succeed to close it.
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: Spanned<u32>,
}

impl Default for BreakerSection {
    fn default() -> Self {
        BreakerSection {
            enabled: true,
            consecutive_failures: default_consecutive_failures(),
            failure_ratio: default_failure_ratio(),
            window: default_breaker_window(),
            min_requests: default_min_requests(),
            open_for: default_open_for(),
            max_open_for: default_max_open_for(),
            half_open_probes: default_half_open_probes(),
        }
    }
}

fn default_consecutive_failures() -> Spanned<u32> {
    unspanned(5)
}
fn default_failure_ratio() -> Spanned<f64> {
    unspanned(0.5)
}
fn default_breaker_window() -> Duration {
    Duration::from_secs(30)
}
fn default_min_requests() -> Spanned<u32> {
    unspanned(20)
}
fn default_open_for() -> Duration {
    Duration::from_secs(5)
}
fn default_max_open_for() -> Duration {
    Duration::from_secs(60)
}
fn default_half_open_probes() -> Spanned<u32> {
    unspanned(1)
}

/// Retries within one pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Attempts on this pool per request, first one included; then the next target or
    /// fallback is tried.
    #[serde(default = "default_pool_attempts")]
    pub attempts: Spanned<u32>,
    /// First backoff before a retry; doubles each time, with full jitter.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The longest upstream `retry-after` the gateway waits out itself when no other
    /// endpoint can take the request.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            attempts: default_pool_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

fn default_pool_attempts() -> Spanned<u32> {
    unspanned(3)
}
fn default_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(5)
}

fn no_endpoints() -> Spanned<Vec<EndpointSection>> {
    unspanned(Vec::new())
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// Base URL up to and including the API prefix, e.g. `https://api.openai.com/v1`.
    pub url: Spanned<String>,
    /// Credential sent upstream as `Authorization: Bearer …`; usually `${ENV_VAR}`.
    pub api_key: Option<Spanned<String>>,
    /// Several credentials instead of one: the next is used when one gets 429, 401 or 403.
    #[serde(default)]
    pub api_keys: Vec<Spanned<String>>,
    /// Shown in response headers and logs; default `host:port`.
    pub name: Option<Spanned<String>>,
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    #[serde(default = "default_connect", deserialize_with = "positive_duration")]
    pub connect: Duration,
    /// From sending the request to the first byte of the response header.
    #[serde(default = "default_first_byte", deserialize_with = "positive_duration")]
    pub first_byte: Duration,
    /// Longest silence between two body chunks.
    #[serde(default = "default_idle", deserialize_with = "positive_duration")]
    pub idle: Duration,
    /// Whole exchange, streams included.
    #[serde(default = "default_total", deserialize_with = "positive_duration")]
    pub total: Duration,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            connect: default_connect(),
            first_byte: default_first_byte(),
            idle: default_idle(),
            total: default_total(),
        }
    }
}

fn default_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_first_byte() -> Duration {
    Duration::from_secs(120)
}
fn default_idle() -> Duration {
    Duration::from_secs(120)
}
fn default_total() -> Duration {
    Duration::from_secs(900)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTlsSection {
    /// PEM file of the CA certificates trusted for this pool, instead of the system store
    /// (for private CAs, e.g. an internal vLLM fleet).
    pub ca_file: Option<Spanned<String>>,
}

/// A `provider: anthropic` pool's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicSection {
    /// `max_tokens` sent when an OpenAI request gives none (Anthropic requires it).
    #[serde(default = "default_anthropic_max_tokens")]
    pub default_max_tokens: Spanned<u64>,
}

fn default_anthropic_max_tokens() -> Spanned<u64> {
    unspanned(4096)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockSection {
    /// Pause between two streamed chunks.
    #[serde(default, with = "humantime_serde")]
    pub chunk_delay: Duration,
    /// Length of the vectors returned by `/v1/embeddings`.
    pub embedding_dims: Option<usize>,
}
