//! The `quotas:` section of the gateway config, as operators write it ([`QuotasConfig`]),
//! and its checked runtime form ([`Quotas`]).
//!
//! [`QuotasConfig::build`] checks everything and reports every problem with its key path
//! (`quotas.keys.alice.budgets[1].usd`); what it returns is what the plugin reads. Model
//! names cannot be checked here (the catalog is the engine's): the engine checks those
//! listed by [`QuotasConfig::referenced_models`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// The `quotas:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// Per gateway key id (the principal's id: a key's configured id, a JWT subject, or
    /// `anonymous` without authentication).
    #[serde(default)]
    pub keys: BTreeMap<String, Quota>,
    /// Per team: shared by every key of the team.
    #[serde(default)]
    pub teams: BTreeMap<String, Quota>,
    /// Per tier: each key of the tier gets its own counters with these limits.
    #[serde(default)]
    pub tiers: BTreeMap<String, Quota>,
    /// Per public model: shared by every caller of the model.
    #[serde(default)]
    pub models: BTreeMap<String, Quota>,
    /// Limits on combinations, e.g. per key per model.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// USD per 1M tokens, per public model, for USD budgets.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// Completion tokens reserved for a request that does not set `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// How long a concurrency slot is held at most if the request's end is never
    /// seen (a crashed gateway): slots cannot leak for longer.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// What a request refused for concurrency is told to wait (`retry-after-ms`).
    #[serde(default = "default_concurrency_retry_after", with = "humantime_serde")]
    pub concurrency_retry_after: Duration,
}

fn default_max_tokens() -> u64 {
    4096
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_concurrency_retry_after() -> Duration {
    Duration::from_secs(1)
}

impl Default for QuotasConfig {
    fn default() -> Self {
        QuotasConfig {
            keys: BTreeMap::new(),
            teams: BTreeMap::new(),
            tiers: BTreeMap::new(),
            models: BTreeMap::new(),
            rules: Vec::new(),
            prices: BTreeMap::new(),
            default_max_tokens: default_max_tokens(),
            lease_ttl: default_lease_ttl(),
            concurrency_retry_after: default_concurrency_retry_after(),
        }
    }
}

/// Limits for one scope. Every limit is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per minute (fixed window, aligned to the UTC minute).
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u64>,
    /// Requests in flight.
    pub concurrency: Option<u64>,
    #[serde(default)]
    pub budgets: Vec<Budget>,
}

/// A spending cap over a calendar window: `tokens` or `usd`, not both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub tokens: Option<u64>,
    pub usd: Option<f64>,
    pub window: Window,
    /// Only requests for this public model count (and are capped).
    pub model: Option<String>,
}

/// A budget's window, aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Hour,
    Day,
    /// The calendar month.
    Month,
    /// Never resets.
    Lifetime,
}

impl Window {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
            Window::Lifetime => "lifetime",
        }
    }
}

/// A limit on each combination of the listed dimensions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub per: Vec<Dimension>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Key,
    Team,
    Tier,
    Model,
}

impl Dimension {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dimension::Key => "key",
            Dimension::Team => "team",
            Dimension::Tier => "tier",
            Dimension::Model => "model",
        }
    }
}

/// USD per 1M tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens served from the provider's cache; default: `input`.
    pub cached_input: Option<f64>,
}

/// One problem in the `quotas:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaError {
    /// Dotted key path from the top of the gateway config, e.g. `quotas.rules[0].per`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for QuotaError {}

// === The checked form ===

/// The checked `quotas:` section, ready for [`crate::LimitsPlugin::new`].
#[derive(Debug, Clone)]
pub struct Quotas {
    pub(crate) keys: HashMap<String, Limits>,
    pub(crate) teams: HashMap<String, Limits>,
    pub(crate) tiers: HashMap<String, Limits>,
    pub(crate) models: HashMap<String, Limits>,
    pub(crate) rules: Vec<RuleLimits>,
    pub(crate) prices: HashMap<String, MicroPrice>,
    pub(crate) default_max_tokens: u64,
    pub(crate) lease_ttl_ms: u64,
    pub(crate) concurrency_retry_ms: u64,
}

impl Quotas {
    /// No limit and no budget anywhere: the plugin would do nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.teams.is_empty()
            && self.tiers.is_empty()
            && self.models.is_empty()
            && self.rules.is_empty()
    }

    /// What `usage` of `model` costs in micro-dollars at the configured prices; `None`
    /// when the model has no price.
    pub fn cost_micro_usd(&self, model: &str, usage: &tollgate_plugin::TokenUsage) -> Option<u64> {
        self.prices.get(model).map(|p| p.cost(usage))
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u64>,
    pub budgets: Vec<BudgetLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Tokens,
    /// Micro-dollars.
    MicroUsd,
}

#[derive(Debug, Clone)]
pub(crate) struct BudgetLimit {
    pub unit: Unit,
    pub limit: u64,
    pub window: Window,
    pub model: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RuleLimits {
    /// Sorted, without repeats: the order counter names use.
    pub per: Vec<Dimension>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u64>,
}

/// A price in micro-dollars per 1M tokens (integers, so that costs are exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MicroPrice {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

impl MicroPrice {
    /// Micro-dollars for `usage`: cached prompt tokens at the cached-input price.
    pub(crate) fn cost(&self, usage: &tollgate_plugin::TokenUsage) -> u64 {
        let cached = usage.cached.min(usage.prompt);
        crate::micro_usd(&[
            (usage.prompt - cached, self.input),
            (cached, self.cached_input),
            (usage.completion, self.output),
        ])
    }
}

/// The largest USD amount accepted (a budget or a price per 1M tokens): far above any
/// real one, and far below where micro-dollars stop fitting in a `u64`.
const MAX_USD: f64 = 1e12;

// === impl QuotasConfig ===

impl QuotasConfig {
    /// Every problem, each with its key path under `quotas`.
    pub fn validate(&self) -> Vec<QuotaError> {
        let mut v = Checker::default();
        for (section, map) in [
            ("keys", &self.keys),
            ("teams", &self.teams),
            ("tiers", &self.tiers),
            ("models", &self.models),
        ] {
            for (name, quota) in map {
                let path = format!("quotas.{section}.{name}");
                if name.is_empty() {
                    v.error(&path, "the name is empty");
                }
                v.quota(&path, quota, section == "models");
            }
        }
        let mut seen: HashMap<Vec<Dimension>, usize> = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("quotas.rules[{i}]");
            if rule.per.is_empty() {
                v.error(&format!("{path}.per"), "lists no dimension");
            }
            let per = sorted_dimensions(&rule.per);
            if per.len() != rule.per.len() {
                v.error(&format!("{path}.per"), "lists a dimension twice");
            }
            if !per.is_empty() {
                if let Some(first) = seen.get(&per) {
                    v.error(
                        &format!("{path}.per"),
                        format!(
                            "the same dimensions as `quotas.rules[{first}]`: \
                             merge the two rules"
                        ),
                    );
                } else {
                    seen.insert(per, i);
                }
            }
            if rule.rpm.is_none() && rule.tpm.is_none() && rule.concurrency.is_none() {
                v.error(&path, "sets no limit: give rpm, tpm or concurrency");
            }
            v.limit(&format!("{path}.rpm"), rule.rpm);
            v.limit(&format!("{path}.tpm"), rule.tpm);
            v.limit(&format!("{path}.concurrency"), rule.concurrency);
        }
        for (model, price) in &self.prices {
            let path = format!("quotas.prices.{model}");
            v.usd(&format!("{path}.input"), price.input, true);
            v.usd(&format!("{path}.output"), price.output, true);
            if let Some(cached) = price.cached_input {
                v.usd(&format!("{path}.cached_input"), cached, true);
            }
        }
        if self.default_max_tokens == 0 {
            v.error("quotas.default_max_tokens", "must be at least 1");
        }
        if self.lease_ttl.is_zero() {
            v.error("quotas.lease_ttl", "must be longer than zero");
        }
        if self.concurrency_retry_after.is_zero() {
            v.error("quotas.concurrency_retry_after", "must be longer than zero");
        }
        v.errors
    }

    /// The public model names this section refers to, each with its key path, for the
    /// engine to check against its catalog.
    pub fn referenced_models(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for model in self.models.keys() {
            out.push((format!("quotas.models.{model}"), model.as_str()));
        }
        for model in self.prices.keys() {
            out.push((format!("quotas.prices.{model}"), model.as_str()));
        }
        for (section, map) in [
            ("keys", &self.keys),
            ("teams", &self.teams),
            ("tiers", &self.tiers),
        ] {
            for (name, quota) in map {
                for (i, b) in quota.budgets.iter().enumerate() {
                    if let Some(model) = &b.model {
                        let path = format!("quotas.{section}.{name}.budgets[{i}].model");
                        out.push((path, model.as_str()));
                    }
                }
            }
        }
        out
    }

    /// Checks and converts; every problem on failure.
    pub fn build(self) -> Result<Quotas, Vec<QuotaError>> {
        let errors = self.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let convert = |map: BTreeMap<String, Quota>| -> HashMap<String, Limits> {
            map.into_iter().map(|(name, q)| (name, limits(q))).collect()
        };
        Ok(Quotas {
            keys: convert(self.keys),
            teams: convert(self.teams),
            tiers: convert(self.tiers),
            models: convert(self.models),
            rules: self
                .rules
                .into_iter()
                .map(|r| RuleLimits {
                    per: sorted_dimensions(&r.per),
                    rpm: r.rpm,
                    tpm: r.tpm,
                    concurrency: r.concurrency,
                })
                .collect(),
            prices: self
                .prices
                .into_iter()
                .map(|(model, p)| {
                    let price = MicroPrice {
                        input: micro(p.input),
                        output: micro(p.output),
                        cached_input: micro(p.cached_input.unwrap_or(p.input)),
                    };
                    (model, price)
                })
                .collect(),
            default_max_tokens: self.default_max_tokens,
            lease_ttl_ms: millis(self.lease_ttl),
            concurrency_retry_ms: millis(self.concurrency_retry_after).max(1),
        })
    }
}

fn limits(q: Quota) -> Limits {
    Limits {
        rpm: q.rpm,
        tpm: q.tpm,
        concurrency: q.concurrency,
        budgets: q
            .budgets
            .into_iter()
            .map(|b| {
                let (unit, limit) = match (b.tokens, b.usd) {
                    (Some(tokens), _) => (Unit::Tokens, tokens),
                    (None, usd) => (Unit::MicroUsd, micro(usd.unwrap_or(0.0))),
                };
                BudgetLimit {
                    unit,
                    limit,
                    window: b.window,
                    model: b.model,
                }
            })
            .collect(),
    }
}

fn sorted_dimensions(per: &[Dimension]) -> Vec<Dimension> {
    let mut per = per.to_vec();
    per.sort();
    per.dedup();
    per
}

/// USD → micro-dollars, for a value already checked to be finite and in range.
fn micro(usd: f64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked finite, non-negative and at most MAX_USD by `validate`"
    )]
    let micro = (usd * 1e6).round() as u64;
    micro
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Checker {
    errors: Vec<QuotaError>,
}

impl Checker {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(QuotaError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn limit(&mut self, path: &str, value: Option<u64>) {
        if value == Some(0) {
            self.error(path, "must be at least 1 (leave it out for no limit)");
        }
    }

    fn usd(&mut self, path: &str, value: f64, zero_ok: bool) {
        if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) {
            let least = if zero_ok {
                "zero or more"
            } else {
                "more than zero"
            };
            self.error(path, format!("must be a number of USD, {least}"));
        } else if value > MAX_USD {
            self.error(path, format!("must be at most {MAX_USD:e} USD"));
        }
    }

    fn quota(&mut self, path: &str, quota: &Quota, for_a_model: bool) {
        self.limit(&format!("{path}.rpm"), quota.rpm);
        self.limit(&format!("{path}.tpm"), quota.tpm);
        self.limit(&format!("{path}.concurrency"), quota.concurrency);
        let mut seen: HashMap<(bool, Window, Option<&str>), usize> = HashMap::new();
        for (i, b) in quota.budgets.iter().enumerate() {
            let path = format!("{path}.budgets[{i}]");
            match (b.tokens, b.usd) {
                (Some(_), Some(_)) => self.error(&path, "give `tokens` or `usd`, not both"),
                (None, None) => self.error(&path, "give `tokens` or `usd`"),
                (Some(tokens), None) => self.limit(&format!("{path}.tokens"), Some(tokens)),
                (None, Some(usd)) => self.usd(&format!("{path}.usd"), usd, false),
            }
            if for_a_model && b.model.is_some() {
                self.error(
                    &format!("{path}.model"),
                    "a model's budgets are that model's already: leave `model` out",
                );
            }
            let id = (b.usd.is_some(), b.window, b.model.as_deref());
            if let Some(first) = seen.get(&id) {
                self.error(
                    &path,
                    format!(
                        "the same unit, window and model as `budgets[{first}]`: \
                         keep the smaller one"
                    ),
                );
            } else {
                seen.insert(id, i);
            }
        }
    }
}
