//! Rate limits (requests and tokens per minute, requests in flight) and budgets (tokens
//! or USD per hour, day, calendar month or lifetime), for keys, teams, tiers, models and
//! combinations of them.
//!
//! Admission charges every applicable counter in one [`Store::acquire`] (all or nothing,
//! one round trip): one request, its reserved tokens (prompt + `max_tokens`), their cost,
//! and a concurrency lease. Settling trues the token and USD counters up to the real
//! usage and ends the lease, in one [`Store::adjust`]. This module owns the decisions
//! and the answers (429/503 and the `x-ratelimit-*` headers); `config.rs` the section's
//! format, `window.rs` the windows and counter names. It must not know how the store
//! keeps its counters.

mod config;
mod window;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tollgate_plugin::{
    Acquire, Acquired, Adjust, Admission, Clock, Header, HeaderName, HeaderValue, Lease, Outcome,
    Plugin, Principal, Rejection, Release, Request, Settle, Store, StoreError, SystemClock,
    TokenUsage,
};

pub use config::{Budget, Dimension, Price, Quota, QuotaError, Quotas, QuotasConfig, Rule, Window};

use config::{BudgetLimit, Limits, MicroPrice, Unit};
use window::{Span, go_duration, push_part};

/// The limits and budgets plugin.
pub struct LimitsPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    quotas: Quotas,
    /// Per-key limits set at run time, over `quotas.keys`.
    runtime: std::sync::OnceLock<Arc<RuntimeLimits>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Models already warned about for having no price.
    unpriced: Mutex<HashSet<String>>,
}

/// Which scope a counter belongs to, for messages.
#[derive(Debug, Clone, Copy)]
enum Scope {
    Key,
    Team,
    Tier,
    Model,
    Rule(usize),
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Team => "team",
            Scope::Tier => "tier",
            Scope::Model => "model",
            Scope::Rule(_) => "rule",
        }
    }
}

/// What a counter counts.
#[derive(Debug, Clone, Copy)]
enum Metric {
    Requests {
        reset_at_ms: u64,
    },
    Tokens {
        reset_at_ms: u64,
    },
    Concurrency,
    Budget {
        unit: Unit,
        window: Window,
        reset_at_ms: Option<u64>,
    },
}

/// One counter of an admission, beside its [`Acquire`].
#[derive(Debug, Clone, Copy)]
struct Meta {
    scope: Scope,
    metric: Metric,
}

/// Everything one admission charges.
#[derive(Default)]
struct Plan {
    acquires: Vec<Acquire>,
    meta: Vec<Meta>,
}

/// What the request reserves.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    prompt: u64,
    completion: u64,
    micro_usd: u64,
}

impl Reservation {
    fn tokens(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

// === impl LimitsPlugin ===

impl LimitsPlugin {
    /// On the system's wall clock.
    pub fn new(quotas: Quotas, store: Arc<dyn Store>) -> Self {
        Self::with_clock(quotas, store, Arc::new(SystemClock))
    }

    /// On the given clock (tests move it; it should be the store's).
    pub fn with_clock(quotas: Quotas, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        LimitsPlugin {
            inner: Arc::new(Inner {
                quotas,
                runtime: std::sync::OnceLock::new(),
                store,
                clock,
                unpriced: Mutex::new(HashSet::new()),
            }),
        }
    }
}

impl LimitsPlugin {
    /// Takes per-key limits from `runtime` too (they win over the configured ones; once,
    /// later calls are ignored). The engine keeps one [`RuntimeLimits`] for the process
    /// and hands it to each plugin it builds, so runtime limits outlive config reloads.
    pub fn attach_runtime_limits(&self, runtime: Arc<RuntimeLimits>) {
        let _ = self.inner.runtime.set(runtime);
    }

    /// Every counter that applies to `principal` (its key, team and tier; model limits
    /// aside), with what is used and what is left now.
    pub async fn usage(&self, principal: &Principal) -> Result<Vec<UsageLine>, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let headers = tollgate_plugin::HeaderMap::new();
        let request = Request {
            headers: &headers,
            model: "",
            stream: false,
            max_tokens: Some(0),
            prompt_tokens: 0,
            request_id: "",
        };
        let mut reservation = Reservation {
            prompt: 0,
            completion: 0,
            micro_usd: 0,
        };
        let plan = inner.plan(&request, principal, &mut reservation, now);
        let keys: Vec<String> = plan.acquires.iter().map(|a| a.key.clone()).collect();
        let used = inner.store.get(&keys).await?;
        Ok(plan
            .acquires
            .iter()
            .zip(&plan.meta)
            .zip(used)
            .map(|((a, m), used)| {
                let (metric, window) = match m.metric {
                    Metric::Requests { .. } => ("requests_per_minute", None),
                    Metric::Tokens { .. } => ("tokens_per_minute", None),
                    Metric::Concurrency => ("concurrent_requests", None),
                    Metric::Budget {
                        unit: Unit::Tokens,
                        window,
                        ..
                    } => ("budget_tokens", Some(window.name())),
                    Metric::Budget {
                        unit: Unit::MicroUsd,
                        window,
                        ..
                    } => ("budget_micro_usd", Some(window.name())),
                };
                UsageLine {
                    scope: m.scope.name(),
                    metric,
                    window,
                    used,
                    limit: a.limit,
                }
            })
            .collect())
    }
}

/// One counter of [`LimitsPlugin::usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    /// `key`, `team`, `tier` or `rule`.
    pub scope: &'static str,
    /// `requests_per_minute`, `tokens_per_minute`, `concurrent_requests`,
    /// `budget_tokens` or `budget_micro_usd`.
    pub metric: &'static str,
    /// A budget's window (`hour`, `day`, `month`, `lifetime`).
    pub window: Option<&'static str>,
    pub used: u64,
    pub limit: u64,
}

/// Per-key limits set at run time (by the admin API), over the configured `quotas.keys`.
#[derive(Default)]
pub struct RuntimeLimits {
    keys: std::sync::RwLock<Arc<HashMap<String, Limits>>>,
}

impl RuntimeLimits {
    /// Replaces every runtime limit; checked like `quotas.keys` (paths under `keys`).
    pub fn replace(&self, keys: BTreeMap<String, Quota>) -> Result<(), Vec<QuotaError>> {
        let built = QuotasConfig {
            keys,
            ..QuotasConfig::default()
        }
        .build()?;
        let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(built.keys);
        Ok(())
    }

    fn current(&self) -> Arc<HashMap<String, Limits>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Plugin for LimitsPlugin {
    fn name(&self) -> &'static str {
        "limits"
    }

    async fn admit(
        &self,
        request: &Request<'_>,
        principal: &Principal,
    ) -> Result<Admission, Rejection> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let q = &inner.quotas;
        let completion = request.max_tokens.unwrap_or(q.default_max_tokens);
        let mut reservation = Reservation {
            prompt: request.prompt_tokens,
            completion,
            micro_usd: 0,
        };
        let plan = inner.plan(request, principal, &mut reservation, now);
        if plan.acquires.is_empty() {
            return Ok(Admission::default());
        }
        let values = match inner.store.acquire(&plan.acquires).await {
            Ok(Acquired::Granted(values)) => values,
            Ok(Acquired::Refused { index, current }) => {
                return Err(inner.refusal(&plan, index, current, request, principal, now));
            }
            Err(e) => return Err(unavailable(&e)),
        };
        let headers = rate_headers(&plan, &values, now);
        let settle = Settlement::new(inner, &plan, request, reservation);
        Ok(Admission {
            headers,
            settle: settle.map(|s| Box::new(s) as Box<dyn Settle>),
        })
    }
}

// === impl Inner ===

impl Inner {
    /// Every counter that applies to this request, budgets first (so that a request
    /// refused for both a budget and a rate limit learns that retrying will not help).
    fn plan(
        &self,
        request: &Request<'_>,
        principal: &Principal,
        reservation: &mut Reservation,
        now: u64,
    ) -> Plan {
        let q = &self.quotas;
        let runtime = self.runtime.get().map(|r| r.current());
        let mut scoped: Vec<(Scope, &Limits, String)> = Vec::new();
        let scope_name = |kind: &str, id: &str| {
            // One allocation for most names (ids longer than 48 bytes are hashed).
            let mut name = String::with_capacity(64);
            name.push_str(kind);
            push_part(&mut name, id);
            name
        };
        if let Some(l) = runtime
            .as_deref()
            .and_then(|r| r.get(&principal.id))
            .or_else(|| q.keys.get(&principal.id))
        {
            scoped.push((Scope::Key, l, scope_name("key", &principal.id)));
        }
        if let Some(team) = &principal.team
            && let Some(l) = q.teams.get(team)
        {
            scoped.push((Scope::Team, l, scope_name("team", team)));
        }
        if let Some(tier) = &principal.tier
            && let Some(l) = q.tiers.get(tier)
        {
            // A tier's limits apply to each of its keys on their own.
            let mut name = scope_name("tier", tier);
            name.push_str(":key");
            push_part(&mut name, &principal.id);
            scoped.push((Scope::Tier, l, name));
        }
        if let Some(l) = q.models.get(request.model) {
            scoped.push((Scope::Model, l, scope_name("model", request.model)));
        }

        let mut plan = Plan::default();
        let lease_ttl = q.lease_ttl_ms;
        // Budgets.
        let mut usd_priced = false;
        for (scope, limits, name) in &scoped {
            for b in &limits.budgets {
                if b.model.as_deref().is_some_and(|m| m != request.model) {
                    continue;
                }
                if b.unit == Unit::MicroUsd && !usd_priced {
                    reservation.micro_usd = self.reserved_cost(request.model, reservation);
                    usd_priced = true;
                }
                plan.push_budget(*scope, name, b, reservation, now, lease_ttl);
            }
        }
        // Rate limits: the scopes, then the rules.
        let mut rules: Vec<(Scope, Limits, String)> = Vec::new();
        for (i, rule) in q.rules.iter().enumerate() {
            let mut name = String::from("rule");
            let applies = rule.per.iter().all(|d| {
                let id = match d {
                    Dimension::Key => Some(principal.id.as_str()),
                    Dimension::Team => principal.team.as_deref(),
                    Dimension::Tier => principal.tier.as_deref(),
                    Dimension::Model => Some(request.model),
                };
                if let Some(id) = id {
                    name.push(':');
                    name.push_str(d.name());
                    push_part(&mut name, id);
                }
                id.is_some()
            });
            if applies {
                let limits = Limits {
                    rpm: rule.rpm,
                    tpm: rule.tpm,
                    concurrency: rule.concurrency,
                    budgets: Vec::new(),
                };
                rules.push((Scope::Rule(i), limits, name));
            }
        }
        let minute = window::minute(now);
        let minute_expiry = window::expiry(&minute, window::length_ms(None), lease_ttl);
        let all = scoped
            .iter()
            .map(|(s, l, n)| (*s, *l, n.as_str()))
            .chain(rules.iter().map(|(s, l, n)| (*s, l, n.as_str())));
        for (scope, limits, name) in all {
            let reset_at_ms = minute.end_ms.unwrap_or(now);
            if let Some(limit) = limits.tpm {
                plan.push(
                    Acquire {
                        key: ["tg:tpm", name, &minute.label].join(":"),
                        amount: reservation.tokens(),
                        limit,
                        expires_at_ms: minute_expiry,
                        lease: None,
                    },
                    scope,
                    Metric::Tokens { reset_at_ms },
                );
            }
            if let Some(limit) = limits.rpm {
                plan.push(
                    Acquire {
                        key: ["tg:rpm", name, &minute.label].join(":"),
                        amount: 1,
                        limit,
                        expires_at_ms: minute_expiry,
                        lease: None,
                    },
                    scope,
                    Metric::Requests { reset_at_ms },
                );
            }
            if let Some(limit) = limits.concurrency {
                plan.push(
                    Acquire {
                        key: ["tg:conc", name].join(":"),
                        amount: 1,
                        limit,
                        expires_at_ms: None,
                        lease: Some(Lease {
                            id: request.request_id.to_owned(),
                            ttl_ms: lease_ttl,
                        }),
                    },
                    scope,
                    Metric::Concurrency,
                );
            }
        }
        plan
    }

    fn price(&self, model: &str) -> MicroPrice {
        match self.quotas.prices.get(model) {
            Some(p) => *p,
            None => {
                let mut warned = self.unpriced.lock().unwrap_or_else(|p| p.into_inner());
                if !warned.contains(model) {
                    warned.insert(model.to_owned());
                    tracing::warn!(model, "No price for this model: its usage costs 0 USD");
                }
                MicroPrice {
                    input: 0,
                    output: 0,
                    cached_input: 0,
                }
            }
        }
    }

    /// The most the reservation can cost: the prompt at the input price (none of it
    /// assumed cached), the completion at the output price.
    fn reserved_cost(&self, model: &str, r: &Reservation) -> u64 {
        let p = self.price(model);
        micro_usd(&[(r.prompt, p.input), (r.completion, p.output)])
    }

    fn actual_cost(&self, model: &str, usage: &TokenUsage) -> u64 {
        self.price(model).cost(usage)
    }

    fn refusal(
        &self,
        plan: &Plan,
        index: usize,
        current: u64,
        request: &Request<'_>,
        principal: &Principal,
        now: u64,
    ) -> Rejection {
        let (Some(acquire), Some(meta)) = (plan.acquires.get(index), plan.meta.get(index)) else {
            // The store named a counter we did not give it.
            return unavailable(&StoreError(format!("refused unknown counter {index}")));
        };
        let model = request.model;
        let scope = describe(meta.scope, &self.quotas, principal, model);
        let limit = acquire.limit;
        match meta.metric {
            Metric::Requests { reset_at_ms } => {
                let wait = reset_at_ms.saturating_sub(now);
                rate_limited(
                    "requests",
                    format!(
                        "Rate limit reached for {model} in {scope} on requests per min (RPM): \
                         Limit {limit}, Used {current}, Requested 1. Please try again in {}.",
                        go_duration(wait)
                    ),
                    Some(wait),
                )
            }
            Metric::Tokens { reset_at_ms } => {
                let requested = acquire.amount;
                if requested > limit {
                    // Waiting cannot help: say so.
                    return rate_limited(
                        "tokens",
                        format!(
                            "Request too large for {model} in {scope} on tokens per min (TPM): \
                             Limit {limit}, Requested {requested}. The input or output tokens \
                             must be reduced in order to run successfully."
                        ),
                        None,
                    );
                }
                let wait = reset_at_ms.saturating_sub(now);
                rate_limited(
                    "tokens",
                    format!(
                        "Rate limit reached for {model} in {scope} on tokens per min (TPM): \
                         Limit {limit}, Used {current}, Requested {requested}. Please try again \
                         in {}.",
                        go_duration(wait)
                    ),
                    Some(wait),
                )
            }
            Metric::Concurrency => {
                let wait = self.quotas.concurrency_retry_ms;
                rate_limited(
                    "requests",
                    format!(
                        "Concurrency limit reached for {model} in {scope}: Limit {limit} requests \
                         in flight, Used {current}. Please try again in {}.",
                        go_duration(wait)
                    ),
                    Some(wait),
                )
            }
            Metric::Budget {
                unit,
                window,
                reset_at_ms,
            } => {
                let amount = |v: u64| match unit {
                    Unit::Tokens => format!("{v} tokens"),
                    Unit::MicroUsd => format_usd(v),
                };
                let period = match window {
                    Window::Hour => "hourly",
                    Window::Day => "daily",
                    Window::Month => "monthly",
                    Window::Lifetime => "lifetime",
                };
                let reset = match reset_at_ms {
                    Some(at) => format!(" It resets in {}.", go_duration(at.saturating_sub(now))),
                    None => String::new(),
                };
                Rejection {
                    status: 429,
                    kind: "insufficient_quota",
                    code: "insufficient_quota",
                    message: format!(
                        "You exceeded your current quota: the {period} budget of {scope} is \
                         {}, {} used, and this request may need up to {}.{reset}",
                        amount(limit),
                        amount(current),
                        amount(acquire.amount),
                    ),
                    headers: vec![do_not_retry()],
                    reason: "budget",
                }
            }
        }
    }
}

// === impl Plan ===

impl Plan {
    fn push(&mut self, acquire: Acquire, scope: Scope, metric: Metric) {
        self.acquires.push(acquire);
        self.meta.push(Meta { scope, metric });
    }

    fn push_budget(
        &mut self,
        scope: Scope,
        scope_name: &str,
        b: &BudgetLimit,
        r: &Reservation,
        now: u64,
        lease_ttl: u64,
    ) {
        let span: Span = window::calendar(b.window, now);
        let (unit_name, amount) = match b.unit {
            Unit::Tokens => ("tg:tok", r.tokens()),
            Unit::MicroUsd => ("tg:usd", r.micro_usd),
        };
        let mut key = [unit_name, b.window.name(), scope_name].join(":");
        if let Some(model) = &b.model {
            key.push_str(":for");
            push_part(&mut key, model);
        }
        key.push(':');
        key.push_str(&span.label);
        let expires_at_ms = window::expiry(&span, window::length_ms(Some(b.window)), lease_ttl);
        self.push(
            Acquire {
                key,
                amount,
                limit: b.limit,
                expires_at_ms,
                lease: None,
            },
            scope,
            Metric::Budget {
                unit: b.unit,
                window: b.window,
                reset_at_ms: span.end_ms,
            },
        );
    }
}

/// `x-ratelimit-*` for the tightest request limit and the tightest token limit (the
/// fewest remaining), when the request has such limits.
fn rate_headers(plan: &Plan, values: &[u64], now: u64) -> Vec<Header> {
    let mut requests: Option<(u64, u64, u64)> = None;
    let mut tokens: Option<(u64, u64, u64)> = None;
    for ((acquire, meta), value) in plan.acquires.iter().zip(&plan.meta).zip(values) {
        let (slot, reset_at_ms) = match meta.metric {
            Metric::Requests { reset_at_ms } => (&mut requests, reset_at_ms),
            Metric::Tokens { reset_at_ms } => (&mut tokens, reset_at_ms),
            _ => continue,
        };
        let remaining = acquire.limit.saturating_sub(*value);
        if slot.is_none_or(|(_, r, _)| remaining < r) {
            *slot = Some((acquire.limit, remaining, reset_at_ms.saturating_sub(now)));
        }
    }
    let mut headers = Vec::new();
    let mut push = |[limit_name, remaining_name, reset_name]: &[HeaderName; 3],
                    (limit, remaining, reset): (u64, u64, u64)| {
        headers.push((limit_name.clone(), HeaderValue::from(limit)));
        headers.push((remaining_name.clone(), HeaderValue::from(remaining)));
        headers.push((reset_name.clone(), duration_value(reset)));
    };
    if let Some(r) = requests {
        push(&REQUEST_HEADERS, r);
    }
    if let Some(t) = tokens {
        push(&TOKEN_HEADERS, t);
    }
    headers
}

const REQUEST_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKEN_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// `x-should-retry: false`: waiting will not help.
fn do_not_retry() -> Header {
    (SHOULD_RETRY, HeaderValue::from_static("false"))
}

/// A duration as Go prints it (`1m30s`), as a header value. The text is digits, `.` and
/// unit letters, which a header value always takes.
fn duration_value(ms: u64) -> HeaderValue {
    HeaderValue::try_from(go_duration(ms)).unwrap_or_else(|_| HeaderValue::from(ms))
}

/// A 429 for a rate limit; `wait_ms` is when it resets, `None` when waiting cannot help.
fn rate_limited(kind: &'static str, message: String, wait_ms: Option<u64>) -> Rejection {
    let headers = match wait_ms {
        Some(ms) => {
            let ms = ms.max(1);
            vec![
                (RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1))),
                (RETRY_AFTER_MS, HeaderValue::from(ms)),
            ]
        }
        None => vec![do_not_retry()],
    };
    Rejection {
        status: 429,
        kind,
        code: "rate_limit_exceeded",
        message,
        headers,
        reason: "rate_limit",
    }
}

fn unavailable(e: &StoreError) -> Rejection {
    tracing::warn!(error = %e, "Rate limits unavailable: request refused");
    Rejection {
        status: 503,
        kind: "server_error",
        code: "rate_limit_unavailable",
        message: "Rate limits cannot be checked right now. Please try again shortly.".to_owned(),
        headers: Vec::new(),
        reason: "state_unavailable",
    }
}

/// Who a counter belongs to, in words.
fn describe(scope: Scope, quotas: &Quotas, principal: &Principal, model: &str) -> String {
    let part = |d: Dimension| match d {
        Dimension::Key => format!("key {}", principal.id),
        Dimension::Team => format!("team {}", principal.team.as_deref().unwrap_or("")),
        Dimension::Tier => format!("tier {}", principal.tier.as_deref().unwrap_or("")),
        Dimension::Model => format!("model {model}"),
    };
    match scope {
        Scope::Key => part(Dimension::Key),
        Scope::Team => part(Dimension::Team),
        Scope::Tier => format!("{} (key {})", part(Dimension::Tier), principal.id),
        Scope::Model => format!("model {model} (shared by all callers)"),
        Scope::Rule(i) => quotas.rules.get(i).map_or_else(String::new, |r| {
            r.per
                .iter()
                .map(|d| part(*d))
                .collect::<Vec<_>>()
                .join(", ")
        }),
    }
}

/// Micro-dollars for `(tokens, micro-dollars per 1M tokens)` pairs, rounded up (a
/// request never costs less than it should).
pub(crate) fn micro_usd(parts: &[(u64, u64)]) -> u64 {
    let total: u128 = parts
        .iter()
        .map(|&(tokens, price)| u128::from(tokens) * u128::from(price))
        .sum();
    u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn format_usd(micro: u64) -> String {
    let cents_exact = micro.is_multiple_of(10_000);
    if cents_exact {
        format!("${}.{:02}", micro / 1_000_000, (micro % 1_000_000) / 10_000)
    } else {
        format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
    }
}

// === Settlement ===

/// Trues up the token and USD counters of one admission and ends its leases.
struct Settlement {
    inner: Arc<Inner>,
    asked_model: String,
    reservation: Reservation,
    /// Token counters (TPM and token budgets), with their expiry.
    tokens: Vec<(String, Option<u64>)>,
    /// USD budget counters.
    usd: Vec<(String, Option<u64>)>,
    /// Leases still held; emptied once released.
    releases: Vec<Release>,
}

impl Settlement {
    fn new(
        inner: &Arc<Inner>,
        plan: &Plan,
        request: &Request<'_>,
        reservation: Reservation,
    ) -> Option<Self> {
        let mut s = Settlement {
            inner: inner.clone(),
            asked_model: request.model.to_owned(),
            reservation,
            tokens: Vec::new(),
            usd: Vec::new(),
            releases: Vec::new(),
        };
        for (a, meta) in plan.acquires.iter().zip(&plan.meta) {
            let counter = (a.key.clone(), a.expires_at_ms);
            match meta.metric {
                Metric::Tokens { .. }
                | Metric::Budget {
                    unit: Unit::Tokens, ..
                } => s.tokens.push(counter),
                Metric::Budget {
                    unit: Unit::MicroUsd,
                    ..
                } => s.usd.push(counter),
                Metric::Concurrency => s.releases.push(Release {
                    key: a.key.clone(),
                    lease_id: request.request_id.to_owned(),
                }),
                Metric::Requests { .. } => {}
            }
        }
        let nothing_to_do = s.tokens.is_empty() && s.usd.is_empty() && s.releases.is_empty();
        (!nothing_to_do).then_some(s)
    }

    fn corrections(&self, outcome: &Outcome<'_>) -> Vec<Adjust> {
        let r = &self.reservation;
        let (token_delta, usd_delta) = match &outcome.usage {
            Some(usage) => {
                let tokens = usage.prompt.saturating_add(usage.completion);
                let usd = if self.usd.is_empty() {
                    0
                } else {
                    let model = outcome.served_model.unwrap_or(&self.asked_model);
                    self.inner.actual_cost(model, usage)
                };
                (delta(tokens, r.tokens()), delta(usd, r.micro_usd))
            }
            None => (delta(0, r.tokens()), delta(0, r.micro_usd)),
        };
        let mut out = Vec::new();
        for (counters, delta) in [(&self.tokens, token_delta), (&self.usd, usd_delta)] {
            if delta == 0 {
                continue;
            }
            for (key, expires_at_ms) in counters {
                out.push(Adjust {
                    key: key.clone(),
                    delta,
                    expires_at_ms: *expires_at_ms,
                });
            }
        }
        out
    }
}

fn delta(actual: u64, reserved: u64) -> i64 {
    if actual >= reserved {
        i64::try_from(actual - reserved).unwrap_or(i64::MAX)
    } else {
        i64::try_from(reserved - actual).map_or(i64::MIN, |d| -d)
    }
}

#[async_trait]
impl Settle for Settlement {
    async fn settle(mut self: Box<Self>, outcome: &Outcome<'_>) {
        let adjust = self.corrections(outcome);
        if adjust.is_empty() && self.releases.is_empty() {
            return;
        }
        // Until the store has answered, `Drop` still owns the releases: a settle that is
        // cancelled midway still ends its leases.
        let releases = self.releases.clone();
        match self.inner.store.adjust(&adjust, &releases).await {
            Ok(()) => self.releases.clear(),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    model = %self.asked_model,
                    "Settling usage failed: reservations stand, leases end at their TTL"
                );
                self.releases.clear();
            }
        }
    }
}

impl Drop for Settlement {
    /// Never settled (a panic, a lost path): end the leases so no concurrency slot leaks.
    /// The reservation stands as the charge, since what was used is unknown.
    fn drop(&mut self) {
        if self.releases.is_empty() {
            return;
        }
        let releases = std::mem::take(&mut self.releases);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run on: the leases end at their TTL.
            return;
        };
        let store = self.inner.store.clone();
        runtime.spawn(async move {
            if let Err(e) = store.adjust(&[], &releases).await {
                tracing::warn!(error = %e, "Releasing leases failed: they end at their TTL");
            }
        });
    }
}
