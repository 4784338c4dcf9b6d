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
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_body_bytes: default_max_body_bytes(),
            body_read_timeout: default_body_read_timeout(),
        }
    }
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockSection {
    /// Pause between two streamed chunks.
    #[serde(default, with = "humantime_serde")]
    pub chunk_delay: Duration,
    /// Length of the vectors returned by `/v1/embeddings`.
    pub embedding_dims: Option<usize>,
}
